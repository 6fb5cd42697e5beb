"""Crash recovery and worker throughput, with real processes on one SQLite home.

1. **Recovery.** A process submits N plans whose handler "crashes" the moment it is called
   (a ``BaseException`` stands for the process dying mid-step), leaving N plans running,
   each with its step in flight and its lease held; then the process exits without any
   cleanup. A new process (the restart) opens the home and starts the worker: we time from
   the start of that process's ``Proctor.open`` until every plan has succeeded. The leases
   have not lapsed: the worker sees their owner process is gone from this host and takes
   them over at once (a replica on another host would wait for the lease TTL).
2. **Steady state.** A process submits M plans of S steps for a runner it does not serve
   (they wait, queued); a worker process serving that runner then executes them: steps/s.

Usage: python bench/recovery.py [--plans 1000] [--queued 300] [--steps 3] [--threads 4]
Prints a table, then one JSON object as the last line. Target: 1,000 resumed within 5 s.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py shadows the standard library's http package for scripts run from bench/.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import os
import subprocess
import tempfile
import textwrap
import time

HERE = Path(__file__).resolve().parent

CATALOG = """
[actions."bench.step"]
summary = "a no-op, idempotent step"
category = "general"
idempotent = true
handler = "recovery_tools:step"
baselines = { risk = 1, auditability = 1, ux = 1, recovery = 1, cost = 1 }

[actions."bench.queued"]
summary = "a no-op step for the bench runner"
category = "general"
idempotent = true
runner = "bench"
handler = "recovery_tools:step"
baselines = { risk = 1, auditability = 1, ux = 1, recovery = 1, cost = 1 }
"""

TOOLS = '''
import os


class Crash(BaseException):
    """The process dies inside the handler."""


def step(params, call):
    if os.environ.get("BENCH_CRASH") == "1":
        raise Crash
    return {"ok": True}
'''

SUBMIT = """
import os, sys
from proctor import Proctor
from proctor.testing import make_plan
home, action, n, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
p = Proctor.open(home)
for i in range(n):
    try:
        p.submit(make_plan([(action, {})] * steps, agent_id="bench"))
    except BaseException as exc:  # the simulated crash inside the handler
        if type(exc).__name__ != "Crash":
            raise
os._exit(0)  # die without closing anything: leases stay held by a process that is gone
"""

RESTART = """
import sqlite3, sys, time, json
t0 = time.perf_counter()
from proctor import Proctor
from proctor.app.worker import Worker
home, n = sys.argv[1], int(sys.argv[2])
p = Proctor.open(home)
opened = time.perf_counter()
w = Worker(p.gateway, interval=1.0)  # as in proctor serve; its first pass runs at once
w.start()
store = p.gateway.store
# Watch from a separate read connection with a cheap count (WAL: readers never block).
watch = sqlite3.connect(f"file:{home}/proctor.db?mode=ro", uri=True)
while watch.execute("SELECT count(*) FROM plans WHERE status = 'running'").fetchone()[0]:
    time.sleep(0.01)
done = time.perf_counter()
succeeded = len(store.list_plans(status="succeeded", limit=10 * n))
w.stop()
p.close()
print(json.dumps({"open_s": opened - t0, "total_s": done - t0, "succeeded": succeeded}))
"""


def run(code: str, *args: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"subprocess failed:\n{out.stderr[-3000:]}")
    return out.stdout


def init(home: Path, threads: int, runners: list[str]) -> None:
    from proctor.bootstrap import init_home

    init_home(home)
    (home / "catalog.toml").write_text(CATALOG)
    cfg = (home / "config.toml").read_text()
    cfg = cfg.replace(
        "[execution]\n",
        f"[execution]\nworker_threads = {threads}\nrunners = {json.dumps(runners)}\n",
    )
    (home / "config.toml").write_text(cfg)


def set_runners(home: Path, runners: list[str]) -> None:
    cfg = (home / "config.toml").read_text()
    lines = [
        f"runners = {json.dumps(runners)}" if line.startswith("runners = ") else line
        for line in cfg.splitlines()
    ]
    (home / "config.toml").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--plans", type=int, default=1000, help="interrupted plans to recover")
    ap.add_argument("--queued", type=int, default=300, help="queued plans for the throughput run")
    ap.add_argument("--steps", type=int, default=3, help="steps per queued plan")
    ap.add_argument("--threads", type=int, default=4, help="worker threads")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tools = Path(tmp) / "tools"
        tools.mkdir()
        (tools / "recovery_tools.py").write_text(textwrap.dedent(TOOLS))
        env = {**os.environ, "PYTHONPATH": str(tools)}

        # 1. Recovery after a crash.
        home = Path(tmp) / "recovery"
        init(home, args.threads, [])
        t = time.perf_counter()
        run(SUBMIT, str(home), "bench.step", str(args.plans), "1", env={**env, "BENCH_CRASH": "1"})
        crash_s = time.perf_counter() - t
        rec = json.loads(run(RESTART, str(home), str(args.plans), env=env).strip().splitlines()[-1])
        assert rec["succeeded"] == args.plans, rec

        # 2. Steady-state worker throughput.
        home2 = Path(tmp) / "throughput"
        init(home2, args.threads, [])
        run(SUBMIT, str(home2), "bench.queued", str(args.queued), str(args.steps), env=env)
        set_runners(home2, ["bench"])
        thr = json.loads(
            run(RESTART, str(home2), str(args.queued), env=env).strip().splitlines()[-1]
        )
        assert thr["succeeded"] == args.queued, thr
        work_s = thr["total_s"] - thr["open_s"]
        steps_per_s = args.queued * args.steps / work_s

    rows = [
        ("interrupted plans", f"{args.plans}"),
        ("time to interrupt them (submit + crash)", f"{crash_s:.2f} s"),
        ("restart: open the home", f"{rec['open_s']:.2f} s"),
        ("restart → all resumed and succeeded", f"{rec['total_s']:.2f} s (target ≤ 5 s)"),
        (
            "worker throughput",
            f"{steps_per_s:,.0f} steps/s ({args.queued} plans x {args.steps} steps)",
        ),
        ("worker threads", f"{args.threads}"),
    ]
    width = max(len(r[0]) for r in rows)
    print("Recovery and worker throughput (SQLite, synchronous=FULL, real processes)")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(
        json.dumps(
            {
                "bench": "recovery",
                "interrupted_plans": args.plans,
                "restart_open_s": round(rec["open_s"], 3),
                "recovery_s": round(rec["total_s"], 3),
                "recovery_target_s": 5.0,
                "worker_steps_per_s": round(steps_per_s, 1),
                "queued_plans": args.queued,
                "steps_per_plan": args.steps,
                "worker_threads": args.threads,
            }
        )
    )


if __name__ == "__main__":
    main()
