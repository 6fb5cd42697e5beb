"""Latency that the MCP governance proxy adds to a ``tools/call``.

The same ``echo`` call of ``@modelcontextprotocol/server-everything`` (from the npm registry,
installed with ``npm ci`` from tests/mcp/npm into ~/.cache/proctor-tests, as the tests do), made
by the SDK's client directly to the server and through ``proctor mcp``, over stdio and over
streamable HTTP. Through the proxy every call is a governed plan that the policy executes:
validated, scored, decided by Rego, audited with signed events, durably committed (SQLite,
synchronous=FULL).

Two more paths attribute the added time: "sdk floor" is a forwarder built on the same SDK
without governance (what any SDK-based proxy adds; on uvloop when it is installed, as
``proctor mcp`` is), "governance only" the proxy's plan submitted in process (the pipeline).
"http via proxy, json" is ``--json-response``. The paths take turns in rounds, so a machine
that gets busier slows them alike.

Usage: python bench/mcp.py [--calls 300] [--rounds 3] [--synchronous FULL|NORMAL]
       [--store sqlite|memory]
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
from contextlib import AsyncExitStack, asynccontextmanager
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


def loop_options() -> dict[str, bool]:
    """uvloop when it is installed, as ``proctor mcp`` runs (``proctor.cli.mcp_cmd``)."""
    try:
        import uvloop  # noqa: F401 - only whether it is there
    except ImportError:
        return {}
    return {"use_uvloop": True}


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
    """The proxy's plan submitted in process with a Python handler: the pipeline's share.

    As the proxy does it: the call's plan id is looked up (``current_plan_id``), then the
    one-step plan is submitted under that id; the handler answers at once.
    """
    from proctor import Proctor
    from proctor.mcp.governance import call_key, current_plan_id, manifest

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
    store = p.gateway.store
    for i in range(30 + calls):
        args = {"message": f"m{i}"}
        t0 = time.perf_counter()
        key = call_key("b", "bench 1", "bench.echo", args)
        plan = manifest(
            plan_id=current_plan_id(key, store.get_plan),
            agent_id="b",
            client="bench 1",
            on_behalf_of="u",
            action="bench.echo",
            tool="echo",
            arguments=args,
        )
        record = p.gateway.submit(plan, derived_id=True)  # an mcp- id, as the proxy's
        if i >= 30:
            out.append((time.perf_counter() - t0) * 1000)
        if record.status.value != "succeeded":
            sys.exit(f"the governed echo did not run: {record.status}")
    p.close()
    return out


async def null_proxy(target: str, port: int | None) -> None:
    """The SDK alone between client and server: a forwarder with no governance.

    Its added latency is the floor any proxy built on the SDK pays (its server and its client
    parse and write every message once more).
    """
    import mcp_types as types
    from mcp.server.lowlevel import Server

    from proctor.mcp.stdio import serve_stdio

    if target.startswith("http"):
        transport: Any = streamable_http_client(target)
    else:
        transport = stdio_client(StdioServerParameters(command="node", args=[target]))
    async with transport as streams, ClientSession(streams[0], streams[1]) as up:
        await up.initialize()
        tools = (await up.list_tools()).tools

        async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
            return types.ListToolsResult(tools=tools)

        async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> Any:
            return await up.call_tool(params.name, params.arguments)

        server = Server("null-proxy", on_list_tools=list_tools, on_call_tool=call_tool)
        if port is None:
            async with serve_stdio() as (r, w):
                await server.run(r, w, server.create_initialization_options())
            return
        import uvicorn

        app = server.streamable_http_app(host="127.0.0.1")
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        await uvicorn.Server(config).serve()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--null-proxy":
        port = int(sys.argv[3]) if len(sys.argv) > 3 else None
        anyio.run(null_proxy, sys.argv[2], port, backend_options=loop_options())
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="the calls of each path are split into rounds, the paths taking turns: a busy "
        "machine then slows every path alike",
    )
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

        def background(argv: list[str], **extra: str) -> int:
            port = free_port()
            procs.append(
                subprocess.Popen(
                    [a.replace("{port}", str(port)) for a in argv],
                    env={**env, **{k: v.replace("{port}", str(port)) for k, v in extra.items()}},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_port(port)
            return port

        try:
            up_port = background(["node", str(EVERYTHING), "streamableHttp"], PORT="{port}")
            upstream = f"http://127.0.0.1:{up_port}/mcp"
            http_cfg = {"mcpServers": {"everything": {"url": upstream}}}
            (home / "http.json").write_text(json.dumps(http_cfg))
            proxy = [exe, "mcp", "--config", str(home / "http.json"), "--home", str(home)]
            ports = {
                "http direct": up_port,
                "http via proxy": background([*proxy, "--http", "127.0.0.1:{port}"]),
                "http via proxy, json": background(
                    [*proxy, "--http", "127.0.0.1:{port}", "--json-response"]
                ),
                "http sdk floor": background(
                    [sys.executable, __file__, "--null-proxy", upstream, "{port}"]
                ),
            }
            stdio = {
                "stdio direct": ("node", [str(EVERYTHING)]),
                "stdio via proxy": (
                    exe,
                    ["mcp", "--config", str(home / "stdio.json"), "--home", str(home)],
                ),
                "stdio sdk floor": (sys.executable, [__file__, "--null-proxy", str(EVERYTHING)]),
            }
            per_round = max(1, opts.calls // opts.rounds)

            async def run_all() -> None:
                async with AsyncExitStack() as stack:
                    sessions = {}
                    for name, (command, args) in stdio.items():
                        sessions[name] = await stack.enter_async_context(
                            stdio_session(command, args, env)
                        )
                    for name, port in ports.items():
                        sessions[name] = await stack.enter_async_context(
                            http_session(f"http://127.0.0.1:{port}/mcp")
                        )
                    for _ in range(opts.rounds):
                        for name, session in sessions.items():
                            results.setdefault(name, []).extend(await measure(session, per_round))
                        # In its turn too (the sessions wait meanwhile): the split below
                        # compares figures taken under the same load.
                        results.setdefault("governance only", []).extend(
                            governance(home, per_round)
                        )

            anyio.run(run_all)
        finally:
            for p in procs:
                p.terminate()
                p.wait(20)
    rows = {
        k: {"p50_ms": round(statistics.median(v), 3), "p99_ms": round(pct(v, 0.99), 3)}
        for k, v in results.items()
    }

    def diff(a: str, b: str) -> dict[str, float]:
        return {q: round(rows[a][q] - rows[b][q], 3) for q in ("p50_ms", "p99_ms")}

    added = {
        "stdio": diff("stdio via proxy", "stdio direct"),
        "http": diff("http via proxy", "http direct"),
        "http, json": diff("http via proxy, json", "http direct"),
    }
    floor = {
        "stdio": diff("stdio sdk floor", "stdio direct"),
        "http": diff("http sdk floor", "http direct"),
    }
    gov = rows["governance only"]["p50_ms"]
    print(
        f"tools/call echo, {opts.calls} calls per path in {opts.rounds} rounds (store "
        f"{opts.store}, SQLite synchronous={opts.synchronous}, signed audit events)"
    )
    print(f"{'path':<22} {'p50 ms':>8} {'p99 ms':>8}")
    for k, r in rows.items():
        print(f"{k:<22} {r['p50_ms']:>8} {r['p99_ms']:>8}")
    for t, a in added.items():
        print(
            f"added by the proxy over {t}: p50 {a['p50_ms']} ms, p99 {a['p99_ms']} ms"
            " (target p50 <= 3 ms)"
        )
    for t in ("stdio", "http"):
        sdk = floor[t]["p50_ms"]
        rest = round(added[t]["p50_ms"] - sdk - gov, 3)
        print(
            f"p50 added over {t}, split: the SDK's floor (a forwarder without governance) "
            f"{sdk} ms + the governed pipeline (in process) {gov} ms + the rest {rest} ms "
            "(the proxy's own work, and what the pipeline and the upstream call cost "
            "alternating in one process rather than in tight loops)"
        )
    print(
        json.dumps(
            {
                "bench": "mcp",
                "calls": opts.calls,
                "rounds": opts.rounds,
                "synchronous": opts.synchronous,
                "store": opts.store,
                "results": rows,
                "added": added,
                "sdk_floor": floor,
                "target_p50_ms": 3.0,
            }
        )
    )


if __name__ == "__main__":
    main()
