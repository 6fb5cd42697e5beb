"""``proctor mcp --http`` in front of an HTTP upstream (server-everything) and a stdio one.

Elicitation for ``confirm`` (accepted and declined), progress notifications relayed, and a
client's cancellation reaching the upstream call (audited as a failed step).
"""

from __future__ import annotations

import json
import time

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

# The first test installs the npm servers (npm ci, once per lock file) in its setup.
pytestmark = [pytest.mark.slow, pytest.mark.cli, pytest.mark.server, pytest.mark.timeout(600)]


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def test_elicitation_progress_and_cancellation_over_http(
    cli, proctor_exe, home, roots, npm_servers, kit, spawn
):
    """Confirm through elicitation; progress and cancellation pass through the proxy."""
    up_port, proxy_port = kit.free_port(), kit.free_port()
    upstream = spawn(
        ["node", str(npm_servers.everything), "streamableHttp"],
        env=kit.clean_env(PORT=str(up_port)),
    )
    kit.wait_port(up_port, upstream, "server-everything")
    config = kit.write_config(
        home,
        "http.json",
        {
            "everything": {"url": f"http://127.0.0.1:{up_port}/mcp"},
            "fs": {"command": "node", "args": [str(npm_servers.filesystem), str(roots)]},
        },
    )
    proxy = spawn(
        [
            *(proctor_exe, "mcp", "--config", str(config), "--home", str(home)),
            *("--http", f"127.0.0.1:{proxy_port}", "--agent", "framework"),
        ]
    )
    kit.wait_port(proxy_port, proxy, "proctor mcp --http")
    answers = iter(["accept", "decline"])
    asked: list[str] = []
    progress: list[float] = []

    async def elicit(context, params):
        asked.append(params.message)
        return types.ElicitResult(action=next(answers), content={})

    async def on_progress(value, total, message):
        progress.append(value)

    async def go():
        url = f"http://127.0.0.1:{proxy_port}/mcp"
        async with (
            streamable_http_client(url) as (r, w, *_),
            ClientSession(r, w, elicitation_callback=elicit) as s,
        ):
            await s.initialize()
            names = {t.name for t in (await s.list_tools()).tools}
            assert {"echo", "write_file"} <= names
            trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            yes = await s.call_tool(
                "write_file",
                {"path": str(roots / "yes.txt"), "content": "confirmed"},
                meta={"traceparent": trace},
            )
            assert not yes.is_error, text(yes)
            no = await s.call_tool("write_file", {"path": str(roots / "no.txt"), "content": "x"})
            assert no.is_error and "rejected" in text(no)
            long = await s.call_tool(
                "trigger-long-running-operation",
                {"duration": 1, "steps": 4},
                progress_callback=on_progress,
            )
            assert not long.is_error, text(long)
            with anyio.move_on_after(2):  # the client cancels: so does the upstream call
                await s.call_tool("trigger-long-running-operation", {"duration": 30, "steps": 3})
            summed = await s.call_tool("get-sum", {"a": 1, "b": 2})
            assert not summed.is_error and "3" in text(summed)

    anyio.run(go)
    assert (roots / "yes.txt").read_text() == "confirmed"
    assert not (roots / "no.txt").exists()
    assert asked and f"Write {roots / 'yes.txt'}" in asked[0]  # the action's plain summary
    assert progress == [1, 2, 3, 4]
    deadline = time.monotonic() + 60
    while True:  # the cancellation reaches the proxy after the client moved on
        log = kit.events(cli, home)
        failed = [json.dumps(e["data"]) for e in log if e["type"] == "step.failed"]
        if any("cancelled by the client" in f for f in failed) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert any("cancelled by the client" in f for f in failed)
    granted = [e for e in log if e["type"] == "confirmation.granted"]
    assert len(granted) == 1 and granted[0]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert any(e["type"] == "approval.rejected" for e in log)
    actors = {e["actor"]["name"] for e in log if e["type"] == "plan.submitted"}
    assert all(a.startswith("framework via ") for a in actors)
    assert cli("audit", "verify", home=home).code == 0
