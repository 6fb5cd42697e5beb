"""In-process overhead of one governed action, and the floor it stands on.

A single-step plan routed to ``execute`` with a no-op handler, on SQLite with durable commits
(WAL, synchronous=FULL) and an Ed25519 signature on every audit event: validate → assess →
one Rego query → route → execute → audit (plan.submitted, policy.decided, plan.routed,
step.started, step.succeeded, plan.finished), Merkle leaves and periodic checkpoints.

The floor is what one action cannot avoid: one Ed25519 signature, one durable SQLite WAL
commit, one policy evaluation. The ratio p50 / floor says how much is overhead.

Usage: python bench/pipeline.py [--plans 5000] [--synchronous FULL|NORMAL]
Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py shadows the standard library's http package for scripts run from bench/.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import nacl.signing

from proctor import Proctor
from proctor.bootstrap import init_home
from proctor.policy import RegoPolicyEngine, default_bundle_path
from proctor.testing import make_plan

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def floor_sign(n: int = 5000) -> float:
    key = nacl.signing.SigningKey.generate()
    msg = b"x" * 600
    t = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        key.sign(msg)
        t.append((time.perf_counter_ns() - t0) / 1000)
    return statistics.median(t)


def floor_commit(directory: Path, synchronous: str, n: int = 2000) -> float:
    db = sqlite3.connect(directory / "floor.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
    t = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?, ?)", (i, b"x" * 600))
        db.execute("COMMIT")
        t.append((time.perf_counter_ns() - t0) / 1000)
    db.close()
    return statistics.median(t)


def floor_policy(n: int = 3000) -> float:
    engine = RegoPolicyEngine.from_directory(default_bundle_path())
    inp = {
        "contract": 1,
        "plan": {
            "plan_id": None,
            "digest": "sha256:x",
            "on_behalf_of": "u",
            "intent": "i",
            "actor": {"type": "agent", "name": "a", "model_version": "m", "agent_id": "a"},
        },
        "steps": [
            {
                "id": "s1",
                "action": "bench.noop",
                "category": "general",
                "params": {"n": 1},
                "amount": 0,
                "reversible": False,
                "idempotent": True,
            }
        ],
        "baseline": LOW,
        "context": {"sandbox": False, "thresholds": {"agentic_max": 10, "hybrid_max": 15}},
    }
    for _ in range(200):
        engine.evaluate(inp)
    t = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        engine.evaluate(inp)
        t.append((time.perf_counter_ns() - t0) / 1000)
    return statistics.median(t)


def run(plans: int, synchronous: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="proctor-bench-") as tmp:
        home = Path(tmp) / "home"
        init_home(home, instance_id="bench")
        cfg = home / "config.toml"
        cfg.write_text(
            cfg.read_text().replace('synchronous = "FULL"', f'synchronous = "{synchronous}"')
        )
        p = Proctor.open(home)

        @p.action(
            "bench.noop",
            category="general",
            baselines=LOW,
            idempotent=True,
            params={"type": "object", "properties": {"n": {"type": "integer"}}},
        )
        def noop(params, call):
            return None

        for i in range(200):  # warm-up: imports, caches, policy JIT paths
            p.submit(make_plan([("bench.noop", {"n": i})]))
        lat = []
        t_start = time.perf_counter()
        for i in range(plans):
            plan = make_plan([("bench.noop", {"n": i})])
            t0 = time.perf_counter_ns()
            rec = p.submit(plan)
            lat.append((time.perf_counter_ns() - t0) / 1000)
            assert rec.status.value == "succeeded", rec.status
        wall = time.perf_counter() - t_start
        report = p.verify()
        assert report.ok, report
        events = p.gateway.store.event_count()
        p.close()
        floor = {
            "sign_us": floor_sign(),
            "commit_us": floor_commit(Path(tmp), synchronous),
            "policy_us": floor_policy(),
        }
    floor_total = floor["sign_us"] + floor["commit_us"] + floor["policy_us"]
    return {
        "plans": plans,
        "synchronous": synchronous,
        "p50_us": round(statistics.median(lat), 1),
        "p99_us": round(pct(lat, 0.99), 1),
        "max_us": round(max(lat), 1),
        "plans_per_s": round(plans / wall, 1),
        "events": events,
        "floor_sign_us": round(floor["sign_us"], 1),
        "floor_commit_us": round(floor["commit_us"], 1),
        "floor_policy_us": round(floor["policy_us"], 1),
        "floor_total_us": round(floor_total, 1),
        "p50_over_floor": round(statistics.median(lat) / floor_total, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", type=int, default=5000)
    ap.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    args = ap.parse_args()
    r = run(args.plans, args.synchronous)
    print(f"pipeline: {r['plans']} single-step plans, SQLite synchronous={r['synchronous']}")
    print(f"{'figure':<28}{'value':>12}   target")
    rows = [
        ("p50 latency (µs)", r["p50_us"], "<= 1500"),
        ("p99 latency (µs)", r["p99_us"], "<= 5000"),
        ("max latency (µs)", r["max_us"], ""),
        ("throughput (plans/s)", r["plans_per_s"], ">= 600"),
        ("floor: Ed25519 sign (µs)", r["floor_sign_us"], ""),
        ("floor: WAL commit (µs)", r["floor_commit_us"], ""),
        ("floor: policy eval (µs)", r["floor_policy_us"], ""),
        ("floor total (µs)", r["floor_total_us"], ""),
        ("p50 / floor", r["p50_over_floor"], ""),
    ]
    for name, value, target in rows:
        print(f"{name:<28}{value:>12}   {target}")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
