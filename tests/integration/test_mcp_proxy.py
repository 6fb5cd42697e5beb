"""``proctor mcp`` in front of real MCP servers from the npm registry, driven by the SDK client.

The servers (``@modelcontextprotocol/server-filesystem`` and ``server-everything``) are
installed by the first test that needs them with ``npm install`` into ``tests/mcp/npm``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

pytestmark = [pytest.mark.slow, pytest.mark.cli]

HERE = Path(__file__).parent / "mcp_data"
NPM = HERE / "npm"


@pytest.fixture(scope="session")
def servers() -> Path:
    """The npm servers, installed once (skip only where npm itself is missing)."""
    modules = NPM / "node_modules" / "@modelcontextprotocol"
    if not (modules / "server-filesystem").is_dir() or not (modules / "server-everything").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: the MCP tests need Node.js and npm")
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NPM,
            check=True,
            timeout=600,
        )
    return modules


@pytest.fixture
def home(cli, tmp_path: Path, servers: Path) -> Path:
    h = tmp_path / "home"
    assert cli("init", home=h).code == 0
    root = tmp_path / "allowed"
    root.mkdir()
    (root / "notes.txt").write_text("hello from the allowed root\n")
    shutil.copy(HERE / "catalog.toml", h / "catalog.toml")
    for rego in (h / "policy").glob("*.rego"):
        rego.unlink()
    (h / "policy" / "data.json").write_text(json.dumps({"mcp": {"root": str(root)}}))
    shutil.copy(HERE / "policy.rego", h / "policy" / "mcp.rego")
    config = {
        "mcpServers": {
            "fs": {
                "command": "node",
                "args": [str(servers / "server-filesystem" / "dist" / "index.js"), str(root)],
            },
            "everything": {
                "command": "node",
                "args": [str(servers / "server-everything" / "dist" / "index.js")],
            },
        }
    }
    (h / "mcp.json").write_text(json.dumps(config))
    return h


def proxy_params(exe: str, home: Path) -> StdioServerParameters:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCTOR_")}
    return StdioServerParameters(
        command=exe,
        args=["mcp", "--config", str(home / "mcp.json"), "--home", str(home), "--agent", "desk"],
        env=env,
    )


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def run(fn):
    return anyio.run(fn)


def test_tools_calls_and_pass_through(cli, proctor_exe, home, tmp_path):
    root = tmp_path / "allowed"

    async def go():
        async with (
            stdio_client(proxy_params(proctor_exe, home)) as (r, w),
            ClientSession(r, w) as s,
        ):
            await s.initialize()
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert {"read_text_file", "write_file", "echo"} <= set(tools)
            assert tools["read_text_file"].annotations.read_only_hint is True  # passed through
            ok = await s.call_tool("read_text_file", {"path": str(root / "notes.txt")})
            assert not ok.is_error and "hello from the allowed root" in text(ok)
            denied = await s.call_tool("write_file", {"path": "/tmp/evil.txt", "content": "x"})
            assert denied.is_error and "a write outside the allowed root" in text(denied)
            inside = await s.call_tool(
                "write_file", {"path": str(root / "new.txt"), "content": "secret-content-42"}
            )
            assert not inside.is_error, text(inside)
            pending = await s.call_tool("create_directory", {"path": str(root / "sub")})
            assert pending.is_error and "pending approval mcp-" in text(pending)
            confirm = await s.call_tool("echo", {"message": "hi"})
            assert confirm.is_error and "needs confirmation" in text(confirm)
            unknown = await s.call_tool("no_such_tool", {})
            assert unknown.is_error and "unknown tool" in text(unknown)
            # Resources and prompts pass through to the upstream that has them.
            resources = (await s.list_resources()).resources
            assert resources
            first = await s.read_resource(resources[0].uri)
            assert first.contents
            prompts = (await s.list_prompts()).prompts
            assert prompts
            return text(pending).split("pending approval ")[1].split(":")[0]

    plan_id = run(go)
    assert not (root / "sub").exists()  # nothing ran before the approval
    assert not (Path("/tmp/evil.txt")).exists()
    assert (root / "new.txt").read_text() == "secret-content-42"
    # An approver in another process; the agent retries the same call and it runs.
    r = cli("approve", plan_id, "--as", "olga", "--role", "ops", "--json", home=home)
    assert r.code in (0, 1), str(r)
    assert r.json()["status"] == "running"  # queued for the proxy: only it reaches the server

    async def retry():
        async with (
            stdio_client(proxy_params(proctor_exe, home)) as (r, w),
            ClientSession(r, w) as s,
        ):
            await s.initialize()
            done = await s.call_tool("create_directory", {"path": str(root / "sub")})
            assert not done.is_error, text(done)

    run(retry)
    assert (root / "sub").is_dir()
    events = cli("audit", "events", "--json", "--limit", "10000", home=home).json()["events"]
    actions = [(e["type"], (e.get("actions_attempted") or [{}])[0].get("api")) for e in events]
    assert ("step.succeeded", "mcp.fs.read_text_file") in actions
    assert ("step.succeeded", "mcp.fs.create_directory") in actions
    denied = [e for e in events if e["type"] == "plan.routed" and e["data"]["status"] == "denied"]
    assert denied
    # The write's content is masked in the log.
    submitted = [e for e in events if e["type"] == "plan.submitted"]
    assert "secret-content-42" not in json.dumps(submitted)
    assert cli("audit", "verify", home=home).code == 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    import socket
    import time

    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, f"{what} exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.monotonic() < deadline, f"{what} did not listen"
        time.sleep(0.1)


def test_over_streamable_http_with_elicitation_and_trace(cli, proctor_exe, home, servers):
    from mcp.client.streamable_http import streamable_http_client

    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCTOR_")}
    up_port, proxy_port = _free_port(), _free_port()
    upstream = subprocess.Popen(
        ["node", str(servers / "server-everything" / "dist" / "index.js"), "streamableHttp"],
        env={**env, "PORT": str(up_port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    config = {"mcpServers": {"everything": {"url": f"http://127.0.0.1:{up_port}/mcp"}}}
    (home / "http.json").write_text(json.dumps(config))
    try:
        _wait_port(up_port, upstream, "server-everything")
        proxy = subprocess.Popen(
            [
                proctor_exe,
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
        try:
            _wait_port(proxy_port, proxy, "proctor mcp --http")
            answers = iter(["accept", "decline"])

            async def elicit(context, params):
                return types.ElicitResult(action=next(answers), content={})

            async def go():
                url = f"http://127.0.0.1:{proxy_port}/mcp"
                async with (
                    streamable_http_client(url) as (r, w, *_),
                    ClientSession(r, w, elicitation_callback=elicit) as s,
                ):
                    await s.initialize()
                    names = {t.name for t in (await s.list_tools()).tools}
                    assert "echo" in names
                    ok = await s.call_tool(
                        "echo",
                        {"message": "hi"},
                        meta={
                            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                        },
                    )
                    assert not ok.is_error and "hi" in text(ok)
                    no = await s.call_tool("echo", {"message": "again"})
                    assert no.is_error and "rejected" in text(no)

            run(go)
        finally:
            proxy.terminate()
            proxy.wait(20)
    finally:
        upstream.terminate()
        upstream.wait(20)
    events = cli("audit", "events", "--json", "--limit", "10000", home=home).json()["events"]
    confirmed = [e for e in events if e["type"] == "confirmation.granted"]
    assert len(confirmed) == 1
    assert confirmed[0]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert any(e["type"] == "approval.rejected" for e in events)
    assert cli("audit", "verify", home=home).code == 0


def test_an_upstream_that_fails_hangs_and_crashes(cli, proctor_exe, home):
    import sys
    import time

    config = {
        "mcpServers": {
            "flaky": {"command": sys.executable, "args": [str(HERE / "flaky_server.py")]}
        }
    }
    (home / "flaky.json").write_text(json.dumps(config))
    cfg = (
        (home / "config.toml")
        .read_text()
        .replace("step_timeout_seconds = 60", "step_timeout_seconds = 2")
    )
    (home / "config.toml").write_text(cfg)
    params = StdioServerParameters(
        command=proctor_exe,
        args=["mcp", "--config", str(home / "flaky.json"), "--home", str(home)],
        env={k: v for k, v in os.environ.items() if not k.startswith("PROCTOR_")},
    )

    async def go():
        async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
            await s.initialize()
            assert not (await s.call_tool("ok", {})).is_error
            failed = await s.call_tool("fail", {})
            assert failed.is_error and "kaput" in text(failed)
            t0 = time.monotonic()
            hung = await s.call_tool("hang", {})
            assert hung.is_error and time.monotonic() - t0 < 30
            crashed = await s.call_tool("crash", {})
            assert crashed.is_error
            after = await s.call_tool("ok", {})  # the upstream is gone; the proxy is not
            assert after.is_error
            assert {t.name for t in (await s.list_tools()).tools} >= {"ok", "crash"}
            bad = await s.call_tool("ok", {"x": object.__name__})
            assert bad.is_error

    run(go)
    events = cli("audit", "events", "--json", "--limit", "10000", home=home).json()["events"]
    failed = [e["data"].get("error", "") for e in events if e["type"] == "step.failed"]
    assert any("kaput" in f for f in failed)
    assert len(failed) >= 3  # fail, hang (timed out), crash
    assert cli("audit", "verify", home=home).code == 0


def test_templates_completions_and_log_messages_pass_through(proctor_exe, home):
    logs = []

    async def on_log(params):
        logs.append(params)

    async def go():
        async with (
            stdio_client(proxy_params(proctor_exe, home)) as (r, w),
            ClientSession(r, w, logging_callback=on_log) as s,
        ):
            await s.initialize()
            templates = (await s.list_resource_templates()).resource_templates
            assert any("{resourceId}" in t.uri_template for t in templates)
            prompt = next(
                p for p in (await s.list_prompts()).prompts if p.name == "completable-prompt"
            )
            arg = prompt.arguments[0].name
            done = await s.complete(
                types.PromptReference(type="ref/prompt", name=prompt.name),
                {"name": arg, "value": ""},
            )
            assert done.completion.values
            toggled = await s.call_tool("toggle-simulated-logging", {})
            assert not toggled.is_error, text(toggled)
            with anyio.fail_after(30):
                while not logs:
                    await anyio.sleep(0.2)

    run(go)
    assert logs[0].level
