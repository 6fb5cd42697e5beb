"""Plans per second and latency with 1, 2 and 3 ``proctor serve`` replicas on PostgreSQL,
and one SQLite process for comparison.

Each configuration gets a fresh instance (a new PostgreSQL schema, or a new SQLite file),
its replicas on free ports of 127.0.0.1, and 16 client threads spread round-robin over the
replicas, each submitting single-step ``execute`` plans with an agent's token. On a 2-core
machine the clients and every replica share the same two cores: these figures show
contention, not scaling.

Usage: python bench/replicas.py [--plans 2000] [--seconds 30] [--clients 16]
       [--postgres postgresql://postgres@127.0.0.1:5432/test]
Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py shadows the standard library's http package for scripts run from bench/.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import threading
import time
from typing import Any
from urllib.parse import quote

import httpx
import psycopg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exe() -> str:
    return str(Path(sys.executable).with_name("proctor"))


def run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def manifest(i: int) -> dict[str, Any]:
    return {
        "actor": {"type": "agent", "name": "bench", "model_version": "b-1", "agent_id": "bench"},
        "on_behalf_of": "alice",
        "intent": f"bench plan {i}",
        "steps": [
            {
                "id": "s1",
                "action": "travel.search",
                "params": {"destination": "Lisbon", "date": "2027-03-12"},
            }
        ],
    }


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def start(home: Path, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            exe(),
            "serve",
            "--home",
            str(home),
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            sys.exit(f"the server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def drive(bases: list[str], token: str, opts: argparse.Namespace) -> dict[str, Any]:
    lock = threading.Lock()
    latencies: list[float] = []
    errors = {"n": 0}
    issued = {"n": 0}
    warm = 100
    total = warm + opts.plans
    gate = threading.Barrier(opts.clients + 1)
    began = {"t": 0.0}
    stop = {"t": float("inf")}

    def worker(w: int) -> None:
        base = bases[w % len(bases)]
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as c:
            gate.wait()
            while True:
                with lock:
                    if issued["n"] >= total or time.monotonic() > stop["t"]:
                        return
                    issued["n"] += 1
                    n = issued["n"]
                    if n == warm + 1:
                        began["t"] = time.perf_counter()
                t0 = time.perf_counter()
                try:
                    r = c.post("/v1/plans", json=manifest(n))
                    ok = r.status_code == 201 and r.json()["status"] == "succeeded"
                except httpx.HTTPError:
                    ok = False
                dt = (time.perf_counter() - t0) * 1000
                with lock:
                    if n > warm:
                        if ok:
                            latencies.append(dt)
                        else:
                            errors["n"] += 1

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(opts.clients)]
    for t in threads:
        t.start()
    gate.wait()
    stop["t"] = time.monotonic() + opts.seconds
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began["t"]
    return {
        "plans": len(latencies),
        "errors": errors["n"],
        "plans_per_s": round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": round(pct(latencies, 0.5), 2),
        "p99_ms": round(pct(latencies, 0.99), 2),
    }


def configuration(
    name: str, replicas: int, url: str | None, opts: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCTOR_")}
    home = tmp / name
    run([exe(), "init", "--home", str(home)], env)
    if url is not None:
        cfg = (home / "config.toml").read_text()
        (home / "config.toml").write_text(
            cfg.replace('url = "sqlite:///proctor.db"', f'url = "{url}"')
        )
        run([exe(), "db", "upgrade", "--home", str(home)], env)
    token = json.loads(
        run(
            [
                exe(),
                "tokens",
                "create",
                "--home",
                str(home),
                "--name",
                "bench",
                "--role",
                "agent",
                "--json",
            ],
            env,
        )
    )["token"]
    log = tmp / f"{name}.log"
    servers = [start(home, env, log) for _ in range(replicas)]
    try:
        result = drive([b for _, b in servers], token, opts)
    finally:
        for proc, _ in servers:
            proc.send_signal(signal.SIGTERM)
        for proc, _ in servers:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    return {"name": name, "replicas": replicas, **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument(
        "--postgres",
        default=os.environ.get(
            "PROCTOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    opts = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="proctor-bench-replicas-") as tmp_s:
        tmp = Path(tmp_s)
        rows.append(configuration("sqlite-1", 1, None, opts, tmp))
        admin = psycopg.connect(opts.postgres, autocommit=True)
        try:
            for n in (1, 2, 3):
                schema = "bench_" + secrets.token_hex(4)
                admin.execute(f"CREATE SCHEMA {schema}")
                sep = "&" if "?" in opts.postgres else "?"
                url = f"{opts.postgres}{sep}options={quote(f'-csearch_path={schema}')}"
                try:
                    rows.append(configuration(f"postgres-{n}", n, url, opts, tmp))
                finally:
                    admin.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            admin.close()
    print(f"{opts.clients} clients, single-step execute plans, durable commits; 2 cores shared")
    print(f"{'configuration':<14} {'plans/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for r in rows:
        print(
            f"{r['name']:<14} {r['plans_per_s']:>9} {r['p50_ms']:>8} {r['p99_ms']:>8}"
            f" {r['errors']:>7}"
        )
    print(json.dumps({"bench": "replicas", "clients": opts.clients, "results": rows}))


if __name__ == "__main__":
    main()
