"""Latency that the MCP governance proxy adds to a ``tools/call``.

The same ``echo`` call of ``@modelcontextprotocol/server-everything`` (from the npm registry,
installed under tests/integration/mcp_data/npm by the MCP tests or ``npm install`` there), made
by the SDK's client directly to the server and through ``proctor mcp``, over stdio and over
streamable HTTP. Through the proxy every call is a governed plan that the policy executes:
validated, scored, decided by Rego, audited with signed events, durably committed (SQLite,
synchronous=FULL).

Usage: python bench/mcp.py [--calls 300]
Prints a table, then one JSON object as the last line. Target: <= 3 ms added at p50.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py shadows the standard library's http package for scripts run from bench/.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import os
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
NPM = ROOT / "tests/integration/mcp_data/npm/node_modules/@modelcontextprotocol"
EVERYTHING = NPM / "server-everything/dist/index.js"
CATALOG = """
[actions."mcp.everything.echo"]
summary = "Echo {message}"
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    opts = ap.parse_args()
    if not EVERYTHING.exists():
        sys.exit(f"run `npm install` in {EVERYTHING.parents[3]} first")
    exe = str(Path(sys.executable).with_name("proctor"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCTOR_")}
    results: dict[str, list[float]] = {}
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="proctor-bench-mcp-") as tmp:
        home = Path(tmp) / "home"
        subprocess.run([exe, "init", "--home", str(home)], check=True, capture_output=True, env=env)
        (home / "catalog.toml").write_text(CATALOG)
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
    print(f"tools/call echo, {opts.calls} calls each (durable SQLite home, signed audit events)")
    print(f"{'path':<18} {'p50 ms':>8} {'p99 ms':>8}")
    for k, r in rows.items():
        print(f"{k:<18} {r['p50_ms']:>8} {r['p99_ms']:>8}")
    for t, a in added.items():
        print(
            f"added by the proxy over {t}: p50 {a['p50_ms']} ms, p99 {a['p99_ms']} ms"
            " (target p50 <= 3 ms)"
        )
    print(
        json.dumps(
            {
                "bench": "mcp",
                "calls": opts.calls,
                "results": rows,
                "added": added,
                "target_p50_ms": 3.0,
            }
        )
    )


if __name__ == "__main__":
    main()
