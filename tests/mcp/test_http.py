"""``proctor mcp --http`` in front of an HTTP upstream (server-everything) and a stdio one.

Elicitation for ``confirm`` (accepted and declined), progress notifications relayed, and a
client's cancellation reaching the upstream call (audited as a failed step).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

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
                # Not "confirmed": the content is masked, and a masked value is redacted
                # wherever it appears in an event, the confirmation's comment included.
                {"path": str(roots / "yes.txt"), "content": "the user said yes"},
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
    assert (roots / "yes.txt").read_text() == "the user said yes"
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
    # The log says which client took the user's answer.
    client = next(iter(actors)).split(" via ", 1)[1]
    assert granted[0]["data"]["comment"] == f"confirmed in the MCP client {client}"
    assert cli("audit", "verify", home=home).code == 0


def test_denied_resources_prompts_and_an_approval_then_retry_over_http(
    cli, proctor_exe, home, roots, npm_servers, kit, spawn
):
    """Over streamable HTTP too: a denied call, pass-through, an approval elsewhere, a retry."""
    config = kit.write_config(
        home,
        "http2.json",
        {"fs": {"command": "node", "args": [str(npm_servers.filesystem), str(roots)]}},
    )
    everything = kit.write_config(
        home,
        "everything.json",
        {"everything": {"command": "node", "args": [str(npm_servers.everything)]}},
    )
    port = kit.free_port()
    proxy = spawn(
        [
            *(proctor_exe, "mcp", "--config", str(config), "--home", str(home)),
            *("--http", f"127.0.0.1:{port}", "--agent", "framework"),
        ]
    )
    kit.wait_port(port, proxy, "proctor mcp --http")
    other = kit.free_port()
    proxy2 = spawn(
        [
            *(proctor_exe, "mcp", "--config", str(everything), "--home", str(home)),
            *("--http", f"127.0.0.1:{other}"),
        ]
    )
    kit.wait_port(other, proxy2, "proctor mcp --http (everything)")
    move = {"source": str(roots / "notes.txt"), "destination": str(roots / "moved.txt")}

    async def session(at: int, fn):
        async with (
            streamable_http_client(f"http://127.0.0.1:{at}/mcp") as (r, w, *_),
            ClientSession(r, w) as s,
        ):
            await s.initialize()
            return await fn(s)

    async def first(s):
        evil = await s.call_tool("write_file", {"path": "/tmp/proctor-evil-http", "content": "x"})
        assert evil.is_error and "denied by policy" in text(evil)
        return await s.call_tool("move_file", move)

    async def passthrough(s):
        resources = (await s.list_resources()).resources
        assert resources and (await s.read_resource(resources[0].uri)).contents
        assert (await s.get_prompt("simple-prompt")).messages
        await s.send_ping()

    async def retry(s):
        return await s.call_tool("move_file", move)

    pending = anyio.run(session, port, first)
    assert pending.is_error and "pending approval mcp-" in text(pending)
    plan_id = text(pending).split("pending approval ")[1].split(":")[0]
    anyio.run(session, other, passthrough)
    r = cli("approve", plan_id, "--as", "olga", "--role", "ops", "--json", home=home)
    assert r.json()["status"] == "running", r.out + r.err
    done = anyio.run(session, port, retry)
    assert not done.is_error, text(done)
    assert (roots / "moved.txt").exists() and not (roots / "notes.txt").exists()
    from pathlib import Path

    assert not Path("/tmp/proctor-evil-http").exists()
    mine = [e["type"] for e in kit.events(cli, home) if e.get("plan_id") == plan_id]
    assert mine.count("step.succeeded") == 1 and "approval.granted" in mine


def test_json_responses_answer_calls_ask_the_user_and_drop_progress(
    cli, proctor_exe, home, roots, npm_servers, kit, spawn
):
    """--json-response: calls and elicitation work (on the GET stream); progress is dropped."""
    config = kit.write_config(
        home,
        "json.json",
        {
            "fs": {"command": "node", "args": [str(npm_servers.filesystem), str(roots)]},
            "everything": {"command": "node", "args": [str(npm_servers.everything)]},
        },
    )
    port = kit.free_port()
    proxy = spawn(
        [
            *(proctor_exe, "mcp", "--config", str(config), "--home", str(home)),
            *("--http", f"127.0.0.1:{port}", "--json-response"),
        ]
    )
    kit.wait_port(port, proxy, "proctor mcp --http --json-response")
    asked = []

    async def elicit(context, params):
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={})

    async def go():
        async with (
            streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (r, w, *_),
            ClientSession(r, w, elicitation_callback=elicit) as s,
        ):
            await s.initialize()
            summed = await s.call_tool("get-sum", {"a": 20, "b": 22})
            assert not summed.is_error and "42" in text(summed)
            change = await s.call_tool("write_file", {"path": str(roots / "j.txt"), "content": "j"})
            assert not change.is_error, text(change)
            long = await s.call_tool(
                "trigger-long-running-operation",
                {"duration": 1, "steps": 2},
                progress_callback=on_progress,
            )
            assert not long.is_error, text(long)

    progress = []

    async def on_progress(value, total, message):
        progress.append(value)

    anyio.run(go)
    assert asked == [f"Allow this action? Write {roots / 'j.txt'}"]
    assert (roots / "j.txt").read_text() == "j"
    # A JSON body has no room for notifications about the request: the SDK drops them.
    assert progress == []
    r = cli("mcp", "--config", str(config), "--json-response", home=home)
    assert r.code == 2 and "--http" in r.err  # JSON bodies are an HTTP matter


class _CountingRelay:
    """A TCP relay on 127.0.0.1 that counts the connections it accepts (to one target port)."""

    def __init__(self, target: int) -> None:
        import socket
        import threading

        self.accepted = 0
        self._target = target
        self._sockets: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            self.accepted += 1
            upstream = socket.create_connection(("127.0.0.1", self._target))
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        import socket

        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._server.close()
        for s in self._sockets:
            s.close()


def test_calls_to_an_http_upstream_reuse_their_connections(
    cli, proctor_exe, home, npm_servers, kit, spawn
):
    """The SDK closes an SSE answer before its end; the proxy still keeps the connection.

    Before, every call to an HTTP upstream opened a new TCP connection to it.
    """
    up_port, proxy_port = kit.free_port(), kit.free_port()
    upstream = spawn(
        ["node", str(npm_servers.everything), "streamableHttp"],
        env=kit.clean_env(PORT=str(up_port)),
    )
    kit.wait_port(up_port, upstream, "server-everything")
    relay = _CountingRelay(up_port)
    config = kit.write_config(
        home, "relay.json", {"everything": {"url": f"http://127.0.0.1:{relay.port}/mcp"}}
    )
    proxy = spawn(
        [
            *(proctor_exe, "mcp", "--config", str(config), "--home", str(home)),
            *("--http", f"127.0.0.1:{proxy_port}"),
        ]
    )
    kit.wait_port(proxy_port, proxy, "proctor mcp --http")

    async def go() -> int:
        async with (
            streamable_http_client(f"http://127.0.0.1:{proxy_port}/mcp") as (r, w, *_),
            ClientSession(r, w) as s,
        ):
            await s.initialize()
            await s.call_tool("get-sum", {"a": 0, "b": 0})  # the policy executes get-sum
            before = relay.accepted
            for i in range(12):
                result = await s.call_tool("get-sum", {"a": i, "b": 1000})
                assert not result.is_error and str(i + 1000) in text(result), text(result)
            return relay.accepted - before

    try:
        opened = anyio.run(go)
    finally:
        relay.close()
    assert opened <= 3, f"{opened} new connections to the upstream for 12 calls"


def test_a_2026_client_reaches_a_handshake_era_upstream_without_its_envelope(
    cli, proctor_exe, home, kit, spawn
):
    """A 2026-07-28 client's reserved _meta keys stay at the proxy; the upstream answers."""
    flaky = Path(__file__).parent / "servers" / "flaky.py"
    data = json.loads((home / "policy" / "data.json").read_text())
    data["mcp"]["execute"].append("mcp.flaky.whoami")
    (home / "policy" / "data.json").write_text(json.dumps(data))
    config = kit.write_config(
        home,
        "modern.json",
        {
            "flaky": {
                "command": sys.executable,
                "args": [str(flaky)],
                "env": {"FLAKY_EXTRA": "whoami", "FLAKY_NAME": "flaky"},
            }
        },
    )
    port = kit.free_port()
    proxy = spawn(
        [
            *(proctor_exe, "mcp", "--config", str(config), "--home", str(home)),
            *("--http", f"127.0.0.1:{port}", "--agent", "bot"),
        ]
    )
    kit.wait_port(port, proxy, "proctor mcp --http")

    async def go():
        async with (
            streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (r, w, *_),
            ClientSession(r, w) as s,
        ):
            await s.discover()  # the 2026-07-28 era: no initialize, an envelope per request
            return await s.call_tool("whoami", {}, meta={"example.com/trace": "t1"})

    result = anyio.run(go)

    assert not result.is_error, text(result)
    assert text(result) == "whoami on flaky"
    # The client's own keys pass; none of the reserved envelope's does.
    assert result.structured_content == {"meta": ["example.com/trace"]}
