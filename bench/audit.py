"""Audit log throughput: append, verify (full and fast), export, and proofs at 1M leaves.

(a) Append: events sealed by ``Journal`` (Ed25519 signature per event) with an ``AuditLog``
    attached, so each transaction also writes the Merkle nodes and, every 1,000 events, a
    signed checkpoint; one transaction per batch on a real SQLite store (WAL,
    synchronous=FULL by default), batch sizes 1, 10 and 100. Together they make the log.
(b) Verify the whole log with ``verify_log``: full (every signature; worker processes on
    2+ cores, and in this process only for comparison) and fast (chain + Merkle tree +
    checkpoints, no per-event signature). Reading the rows from SQLite is timed apart.
(c) Export the log with ``export_log``, then ``verify_export`` the bundle (fast).
(d) Inclusion and consistency proof generation on a ``MerkleTree`` over ``MemoryNodes``
    with 1,000,000 leaves (as ``bench/merkle.py``), p50/p99 in microseconds.

Usage: PYTHONPATH=src python bench/audit.py [--events 100000] [--synchronous FULL|NORMAL]
Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py shadows the standard library's http package for scripts run from bench/.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import gc
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from proctor.app.auditlog import AuditLog, CheckpointPolicy
from proctor.app.journal import Journal
from proctor.audit.events import KeyInfo
from proctor.audit.export import export_log, verify_export
from proctor.audit.keys import KeyEntry, LocalSigner
from proctor.audit.merkle import MerkleTree, leaf_hash
from proctor.audit.verify import verify_log
from proctor.bootstrap import SystemClock
from proctor.storage import open_store

TARGETS = {
    "append_batched_events_per_s": 3_000,
    "verify_full_events_per_s": 8_000,
    "verify_fast_events_per_s": 200_000,
    "proof_p99_us_at_1m": 1_000,
}
ACTOR = {"type": "service", "name": "bench-agent", "model_version": "bench-1"}


def _pct(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)

    def at(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))] / 1000

    return {"p50_us": at(0.50), "p99_us": at(0.99), "mean_us": statistics.fmean(s) / 1000}


def append(store: Any, log: AuditLog, signer: LocalSigner, total: int, batch: int) -> float:
    """Append ``total`` events in transactions of ``batch``; return the seconds taken."""
    clock = log.clock
    start = time.perf_counter()
    for first in range(0, total, batch):
        with store.transaction() as tx:
            journal = Journal(tx, signer, clock, log=log)
            for i in range(first, min(first + batch, total)):
                journal.emit(
                    "step.succeeded",
                    actions=[
                        {
                            "api": "bench.noop",
                            "payload_hash": "sha256:" + f"{i:064x}",
                            "status": "succeeded",
                        }
                    ],
                    data={"i": i, "batch": batch},
                    user_id="bench-user",
                    actor=ACTOR,
                )
            journal.flush()
    return time.perf_counter() - start


def timed(fn: Any) -> tuple[Any, float]:
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def proofs(leaves: int, samples: int) -> dict[str, Any]:
    rng = random.Random(6962)
    hashes = [leaf_hash(i.to_bytes(8, "big")) for i in range(leaves)]
    tree, build_s = timed(lambda: MerkleTree.from_leaf_hashes(hashes))
    incl, cons = [], []
    for _ in range(samples):
        size = rng.randint(1, leaves)
        index = rng.randrange(size)
        t0 = time.perf_counter_ns()
        tree.inclusion_proof(index, size)
        incl.append(time.perf_counter_ns() - t0)
        a, b = rng.randint(1, leaves), rng.randint(1, leaves)
        t0 = time.perf_counter_ns()
        tree.consistency_proof(min(a, b), max(a, b))
        cons.append(time.perf_counter_ns() - t0)
    # The latest tree size: what a client asks right after an event is logged.
    latest = []
    for _ in range(samples):
        index = rng.randrange(leaves)
        t0 = time.perf_counter_ns()
        tree.inclusion_proof(index, leaves)
        latest.append(time.perf_counter_ns() - t0)
    return {
        "leaves": leaves,
        "build_s": round(build_s, 2),
        "inclusion": _pct(incl),
        "inclusion_latest": _pct(latest),
        "consistency": _pct(cons),
    }


def log_part(total: int, plan: dict[int, int], synchronous: str) -> dict[str, Any]:
    """Append, verify and export; return the raw measurements."""
    with tempfile.TemporaryDirectory(prefix="proctor-bench-audit-") as tmp:
        root = Path(tmp)
        store = open_store(f"sqlite:///{root / 'audit.db'}", synchronous=synchronous)
        signer = LocalSigner.generate()
        clock = SystemClock()
        start = clock.now()
        origin = "bench.example/audit"
        log = AuditLog(store, signer, clock, origin=origin, policy=CheckpointPolicy(every=1000))
        log.open()

        appended: dict[int, dict[str, float]] = {}
        for batch, count in plan.items():
            seconds = append(store, log, signer, count, batch)
            appended[batch] = {"events": count, "s": seconds, "events_per_s": count / seconds}
        log.checkpoint()

        rows, read_s = timed(lambda: list(store.iter_events()))
        notes = [c.note for c in store.checkpoints()]
        n = len(rows)
        assert n == total, (n, total)
        mean_bytes = statistics.fmean(len(r.body) for r in rows)
        keys = {signer.key_id: KeyInfo(signer.public_key, start, None)}
        workers = min(2, os.cpu_count() or 1)

        def verify(full: bool, w: int | None = None) -> float:
            report, seconds = timed(
                lambda: verify_log(rows, notes, keys, origin=origin, full=full, workers=w)
            )
            assert report.ok, report
            return seconds

        fast_s = statistics.median(verify(False) for _ in range(3))  # median of 3 runs
        full_s = verify(True)
        full_1_s = verify(True, 1) if workers > 1 else full_s

        entries = [KeyEntry(key_id=signer.key_id, public_key=signer.public_key, created_at=start)]
        bundle = root / "export"
        _, export_s = timed(
            lambda: export_log(store, keys=entries, origin=origin, directory=bundle)
        )
        report, vexport_s = timed(lambda: verify_export(bundle, full=False))
        assert report.ok, report
        bundle_mb = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) / 1e6
        store.close()

    return {
        "appended": appended,
        "read_s": read_s,
        "n": n,
        "notes": len(notes),
        "mean_bytes": mean_bytes,
        "workers": workers,
        "fast_s": fast_s,
        "full_s": full_s,
        "full_1_s": full_1_s,
        "export_s": export_s,
        "vexport_s": vexport_s,
        "bundle_mb": bundle_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=2_000)
    args = parser.parse_args()
    total = args.events
    # Most events go in the largest batch; the small batches are timed on a slice, as a
    # commit per event is bound by fsync.
    plan = {1: min(2_000, total // 50), 10: min(10_000, total // 10)}
    plan[100] = total - plan[1] - plan[10]

    m = log_part(total, plan, args.synchronous)
    appended, read_s, n, mean_bytes = m["appended"], m["read_s"], m["n"], m["mean_bytes"]
    workers, fast_s, full_s, full_1_s = m["workers"], m["fast_s"], m["full_s"], m["full_1_s"]
    export_s, vexport_s, bundle_mb = m["export_s"], m["vexport_s"], m["bundle_mb"]
    proof = proofs(args.leaves, args.samples)

    results: dict[str, Any] = {
        "bench": "audit",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "events": total,
        "event_bytes_mean": round(mean_bytes),
        "checkpoints": m["notes"],
        "synchronous": args.synchronous,
        "append": {
            f"batch_{b}": {
                "events": a["events"],
                "s": round(a["s"], 2),
                "events_per_s": round(a["events_per_s"]),
            }
            for b, a in appended.items()
        },
        "read_rows_s": round(read_s, 3),
        "verify_full_events_per_s": round(n / full_s),
        "verify_full_workers": workers,
        "verify_full_1_process_events_per_s": round(n / full_1_s),
        "verify_fast_events_per_s": round(n / fast_s),
        "export_events_per_s": round(n / export_s),
        "export_mb": round(bundle_mb, 1),
        "verify_export_fast_events_per_s": round(n / vexport_s),
        "proof": {
            k: ({q: round(v, 1) for q, v in p.items()} if isinstance(p, dict) else p)
            for k, p in proof.items()
        },
    }
    batched = max(appended[10]["events_per_s"], appended[100]["events_per_s"])
    proof_p99 = max(proof["inclusion"]["p99_us"], proof["consistency"]["p99_us"])
    results["targets"] = {
        "append_batched_events_per_s": [round(batched), TARGETS["append_batched_events_per_s"]],
        "verify_full_events_per_s": [round(n / full_s), TARGETS["verify_full_events_per_s"]],
        "verify_fast_events_per_s": [round(n / fast_s), TARGETS["verify_fast_events_per_s"]],
        "proof_p99_us_at_1m": [round(proof_p99, 1), TARGETS["proof_p99_us_at_1m"]],
    }
    results["targets_met"] = (
        batched >= TARGETS["append_batched_events_per_s"]
        and n / full_s >= TARGETS["verify_full_events_per_s"]
        and n / fast_s >= TARGETS["verify_fast_events_per_s"]
        and proof_p99 <= TARGETS["proof_p99_us_at_1m"]
    )

    print(
        f"Audit log, {total:,} events (~{mean_bytes:.0f} B), {m['notes']} checkpoints,"
        f" SQLite synchronous={args.synchronous}, Python {platform.python_version()},"
        f" {os.cpu_count()} CPUs"
    )
    print(f"{'measure':<44} {'value':>14}  target")
    for b, a in appended.items():
        target = "" if b == 1 else f">= {TARGETS['append_batched_events_per_s']:,}"
        label = f"append, batch {b} ({a['events']:,} events)"
        print(f"{label:<44} {a['events_per_s']:>10,.0f} ev/s  {target}")
    table = [
        ("read rows from SQLite", f"{read_s:>12.2f} s", ""),
        (
            f"verify full ({workers} processes)",
            f"{n / full_s:>10,.0f} ev/s",
            f">= {TARGETS['verify_full_events_per_s']:,}",
        ),
        ("verify full (1 process)", f"{n / full_1_s:>10,.0f} ev/s", ""),
        (
            "verify fast",
            f"{n / fast_s:>10,.0f} ev/s",
            f">= {TARGETS['verify_fast_events_per_s']:,}",
        ),
        ("export", f"{n / export_s:>10,.0f} ev/s", f"({bundle_mb:.1f} MB)"),
        ("verify_export fast (read + verify)", f"{n / vexport_s:>10,.0f} ev/s", ""),
    ]
    for label, value, target in table:
        print(f"{label:<44} {value:>14}  {target}")
    for name in ("inclusion", "inclusion_latest", "consistency"):
        pct = proof[name]
        label = f"{name} proof at {args.leaves:,} leaves p50/p99"
        value = f"{pct['p50_us']:.1f}/{pct['p99_us']:.1f} µs"
        print(f"{label:<44} {value:>14}  p99 <= {TARGETS['proof_p99_us_at_1m']:,} µs")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
