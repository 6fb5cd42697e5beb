"""Latency that the MCP governance proxy adds to a ``tools/call``.

The same ``echo`` call of ``@modelcontextprotocol/server-everything`` (from the npm registry,
installed with ``npm ci`` from tests/mcp/npm into ~/.cache/proctor-tests, as the tests do), made
by the SDK's client directly to the server and through ``proctor mcp``, over stdio and over
streamable HTTP. Through the proxy every call is a governed plan that the policy executes:
validated, scored, decided by Rego, audited with signed events, durably committed (SQLite,
synchronous=FULL).

Usage: python bench/mcp.py [--calls 300] [--synchronous FULL|NORMAL] [--store sqlite|memory]
Prints a table, then one JSON object as the last line. Target: <= 3 ms added at p50.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py shadows the standard library's http package for scripts run from bench/.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "tests/mcp/npm/package-lock.json"
CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "proctor-tests"
    / f"mcp-npm-{hashlib.sha256(LOCK.read_bytes()).hexdigest()[:16]}"
)
EVERYTHING = CACHE / "node_modules/@modelcontextprotocol/server-everything/dist/index.js"
CATALOG = """
[actions."mcp.everything.echo"]
summary = "Echo {message}"
runner = "mcp"
category = "read"
idempotent = true
baselines = { risk = 1, auditability = 1, ux = 1, recovery = 1, cost = 1 }
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def measure(session: ClientSession, calls: int) -> list[float]:
    for _ in range(30):
        await session.call_tool("echo", {"message": "warm"})
    out = []
    for i in range(calls):
        t0 = time.perf_counter()
        result = await session.call_tool("echo", {"message": f"m{i}"})
        out.append((time.perf_counter() - t0) * 1000)
        if result.is_error:
            sys.exit(f"echo failed: {result.content}")
    return out


@asynccontextmanager
async def stdio_session(command: str, args: list[str], env: dict[str, str]) -> Any:
    params = StdioServerParameters(command=command, args=args, env=env)
    async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
        await s.initialize()
        yield s


@asynccontextmanager
async def http_session(url: str) -> Any:
    async with streamable_http_client(url) as (r, w, *_), ClientSession(r, w) as s:
        await s.initialize()
        yield s


def governance(home: Path, calls: int) -> list[float]:
    """The same plan submitted in process with a Python handler: the gateway's share."""
    from proctor import Proctor

    p = Proctor.open(home)

    @p.action(
        "bench.echo",
        category="read",
        idempotent=True,
        baselines={"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1},
    )
    def echo(params: dict[str, Any], call: Any) -> dict[str, Any]:
        return {"content": [{"type": "text", "text": params["message"]}]}

    out = []
    for i in range(30 + calls):
        plan = {
            "actor": {"type": "agent", "name": "bench", "model_version": "1", "agent_id": "b"},
            "on_behalf_of": "u",
            "intent": "bench",
            "steps": [{"id": "s1", "action": "bench.echo", "params": {"message": f"m{i}"}}],
        }
        t0 = time.perf_counter()
        record = p.submit(plan)
        if i >= 30:
            out.append((time.perf_counter() - t0) * 1000)
        if record.status.value != "succeeded":
            sys.exit(f"the governed echo did not run: {record.status}")
    p.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    ap.add_argument(
        "--store",
        choices=["sqlite", "memory"],
        default="sqlite",
        help="memory: the proxy's own share, without durable commits",
    )
    opts = ap.parse_args()
    if not EVERYTHING.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        shutil.copy(LOCK.with_name("package.json"), CACHE / "package.json")
        shutil.copy(LOCK, CACHE / "package-lock.json")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=CACHE, check=True)
    exe = str(Path(sys.executable).with_name("proctor"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCTOR_")}
    results: dict[str, list[float]] = {}
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="proctor-bench-mcp-") as tmp:
        home = Path(tmp) / "home"
        subprocess.run([exe, "init", "--home", str(home)], check=True, capture_output=True, env=env)
        (home / "catalog.toml").write_text(CATALOG)
        cfg = (home / "config.toml").read_text()
        (home / "config.toml").write_text(
            cfg.replace('synchronous = "FULL"', f'synchronous = "{opts.synchronous}"').replace(
                'url = "sqlite:///proctor.db"',
                'url = "memory://"' if opts.store == "memory" else 'url = "sqlite:///proctor.db"',
            )
        )
        stdio_cfg = {"mcpServers": {"everything": {"command": "node", "args": [str(EVERYTHING)]}}}
        (home / "stdio.json").write_text(json.dumps(stdio_cfg))
        try:
            up_port, proxy_port = free_port(), free_port()
            procs.append(
                subprocess.Popen(
                    ["node", str(EVERYTHING), "streamableHttp"],
                    env={**env, "PORT": str(up_port)},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_port(up_port)
            http_cfg = {"mcpServers": {"everything": {"url": f"http://127.0.0.1:{up_port}/mcp"}}}
            (home / "http.json").write_text(json.dumps(http_cfg))
            procs.append(
                subprocess.Popen(
                    [
                        exe,
                        "mcp",
                        "--config",
                        str(home / "http.json"),
                        "--home",
                        str(home),
                        "--http",
                        f"127.0.0.1:{proxy_port}",
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_port(proxy_port)

            async def run_all() -> None:
                async with stdio_session("node", [str(EVERYTHING)], env) as s:
                    results["stdio direct"] = await measure(s, opts.calls)
                proxy_args = ["mcp", "--config", str(home / "stdio.json"), "--home", str(home)]
                async with stdio_session(exe, proxy_args, env) as s:
                    results["stdio via proxy"] = await measure(s, opts.calls)
                async with http_session(f"http://127.0.0.1:{up_port}/mcp") as s:
                    results["http direct"] = await measure(s, opts.calls)
                async with http_session(f"http://127.0.0.1:{proxy_port}/mcp") as s:
                    results["http via proxy"] = await measure(s, opts.calls)

            anyio.run(run_all)
            results["governance only"] = governance(home, opts.calls)
        finally:
            for p in procs:
                p.terminate()
                p.wait(20)
    rows = {
        k: {"p50_ms": round(statistics.median(v), 3), "p99_ms": round(pct(v, 0.99), 3)}
        for k, v in results.items()
    }
    added = {
        t: {
            "p50_ms": round(rows[f"{t} via proxy"]["p50_ms"] - rows[f"{t} direct"]["p50_ms"], 3),
            "p99_ms": round(rows[f"{t} via proxy"]["p99_ms"] - rows[f"{t} direct"]["p99_ms"], 3),
        }
        for t in ("stdio", "http")
    }
    print(
        f"tools/call echo, {opts.calls} calls each (store {opts.store}, SQLite synchronous="
        f"{opts.synchronous}, signed audit events)"
    )
    print(f"{'path':<18} {'p50 ms':>8} {'p99 ms':>8}")
    for k, r in rows.items():
        print(f"{k:<18} {r['p50_ms']:>8} {r['p99_ms']:>8}")
    for t, a in added.items():
        print(
            f"added by the proxy over {t}: p50 {a['p50_ms']} ms, p99 {a['p99_ms']} ms"
            " (target p50 <= 3 ms)"
        )
    gov = rows["governance only"]["p50_ms"]
    print(
        f"of which the governed plan itself (gateway, in process): p50 {gov} ms; the proxy's"
        f" own share over stdio: p50 {round(added['stdio']['p50_ms'] - gov, 3)} ms"
    )
    print(
        json.dumps(
            {
                "bench": "mcp",
                "calls": opts.calls,
                "synchronous": opts.synchronous,
                "store": opts.store,
                "results": rows,
                "added": added,
                "target_p50_ms": 3.0,
            }
        )
    )


if __name__ == "__main__":
    main()
