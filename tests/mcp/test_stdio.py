"""``proctor mcp`` over stdio in front of the npm filesystem and everything servers.

Driven by the SDK's client like a desktop client would: the example policy and catalog
(``src/proctor/mcp/examples``) decide, the audit log records every call and its outcome.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

# The first test installs the npm servers (npm ci, once per lock file) in its setup.
pytestmark = [pytest.mark.slow, pytest.mark.cli, pytest.mark.timeout(600)]


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def proxy(exe: str, home: Path, config: Path, kit, *extra: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=exe,
        args=["mcp", "--config", str(config), "--home", str(home), "--agent", "desk", *extra],
        env=kit.clean_env(),
    )


@pytest.fixture
def config(home, roots, npm_servers, kit) -> Path:
    return kit.write_config(
        home,
        "stdio.json",
        {
            "fs": {"command": "node", "args": [str(npm_servers.filesystem), str(roots)]},
            "everything": {"command": "node", "args": [str(npm_servers.everything)]},
        },
    )


def test_governed_calls_and_the_audit_log(cli, proctor_exe, home, roots, config, kit):
    """Reads inside the roots run, writes outside are denied, bad calls are refused: audited."""

    async def go():
        async with (
            stdio_client(proxy(proctor_exe, home, config, kit)) as (r, w),
            ClientSession(r, w) as s,
        ):
            await s.initialize()
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert {"read_text_file", "write_file", "move_file", "echo", "get-sum"} <= set(tools)
            assert tools["read_text_file"].annotations.read_only_hint is True
            assert tools["write_file"].annotations.destructive_hint is True

            ok = await s.call_tool("read_text_file", {"path": str(roots / "notes.txt")})
            assert not ok.is_error and "hello from the allowed root" in text(ok)
            outside = await s.call_tool(
                "write_file", {"path": "/tmp/proctor-evil.txt", "content": "x"}
            )
            assert outside.is_error and "a path outside the allowed roots" in text(outside)
            sneaky = await s.call_tool("read_text_file", {"path": f"{roots}/../../etc/passwd"})
            assert sneaky.is_error and "outside the allowed roots" in text(sneaky)
            # A write inside asks the user; this client cannot be asked: confirm elsewhere.
            change = await s.call_tool(
                "write_file", {"path": str(roots / "new.txt"), "content": "secret-42"}
            )
            assert change.is_error and "needs confirmation mcp-" in text(change)
            assert "proctor confirm mcp-" in text(change)
            bad = await s.call_tool("read_text_file", {"pathh": "x"})
            assert bad.is_error and "refused: invalid call" in text(bad), text(bad)
            summed = await s.call_tool("get-sum", {"a": 2, "b": 40})
            assert not summed.is_error and "42" in text(summed)
            with pytest.raises(MCPError) as unknown:
                await s.call_tool("no_such_tool", {})
            assert unknown.value.code == types.INVALID_PARAMS
            assert "no_such_tool" in unknown.value.message
            return text(change).split("needs confirmation ")[1].split(":")[0]

    plan_id = anyio.run(go)
    assert not Path("/tmp/proctor-evil.txt").exists()
    assert not (roots / "new.txt").exists()
    log = kit.events(cli, home)
    kinds = [(e["type"], (e.get("actions_attempted") or [{}])[0].get("api")) for e in log]
    assert ("step.succeeded", "mcp.fs.read_text_file") in kinds
    assert ("step.succeeded", "mcp.everything.get_sum") in kinds
    read = next(
        e
        for e in log
        if e["type"] == "step.succeeded"
        and e["actions_attempted"][0]["api"] == "mcp.fs.read_text_file"
    )
    assert "hello from the allowed root" in json.dumps(
        read["data"]["result"]
    )  # the upstream's answer
    denied = [e for e in log if e["type"] == "plan.routed" and e["data"]["status"] == "denied"]
    assert len(denied) == 2
    rejected = [e for e in log if e["type"] == "plan.rejected"]
    assert any("pathh" in json.dumps(e) or "path" in json.dumps(e["data"]) for e in rejected)
    assert any("not-listed.no_such_tool" in json.dumps(e) for e in rejected)  # the unknown tool
    assert "secret-42" not in json.dumps(log)  # the write's content is masked
    assert cli("audit", "verify", home=home).code == 0
    # The user confirms in another process; the agent's retry runs the confirmed plan.
    r = cli("confirm", plan_id, "--as", "mcp-user", "--json", home=home)
    assert r.code in (0, 1), r.err
    assert r.json()["status"] == "running"  # queued for the proxy: only it reaches the server

    async def retry():
        async with (
            stdio_client(proxy(proctor_exe, home, config, kit)) as (r, w),
            ClientSession(r, w) as s,
        ):
            await s.initialize()
            done = await s.call_tool(
                "write_file", {"path": str(roots / "new.txt"), "content": "secret-42"}
            )
            assert not done.is_error, text(done)

    anyio.run(retry)
    assert (roots / "new.txt").read_text() == "secret-42"
    steps = [
        e
        for e in kit.events(cli, home)
        if e.get("plan_id") == plan_id and e["type"] == "step.succeeded"
    ]
    assert len(steps) == 1


def test_no_confirm_in_client_never_asks_the_client(cli, proctor_exe, home, roots, config, kit):
    """--no-confirm-in-client: a client that would accept in code is never asked; the call
    waits for the user's confirmation elsewhere and nothing is written."""
    asked: list[str] = []

    async def elicit(context, params):
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={})

    async def go():
        params = proxy(proctor_exe, home, config, kit, "--no-confirm-in-client")
        async with (
            stdio_client(params) as (r, w),
            ClientSession(r, w, elicitation_callback=elicit) as s,
        ):
            await s.initialize()
            return await s.call_tool(
                "write_file", {"path": str(roots / "auto.txt"), "content": "x"}
            )

    result = anyio.run(go)
    assert result.is_error and "needs confirmation mcp-" in text(result), text(result)
    assert asked == []
    assert not (roots / "auto.txt").exists()
    log = kit.events(cli, home)
    assert not [e for e in log if e["type"] == "confirmation.granted"]


def test_approval_in_another_process_then_retry(cli, proctor_exe, home, roots, config, kit):
    """An approval given with `proctor approve` lets the agent's identical retry run it once."""
    params = {"source": str(roots / "notes.txt"), "destination": str(roots / "moved.txt")}

    async def call(wait: str = "0"):
        async with (
            stdio_client(proxy(proctor_exe, home, config, kit, "--approval-wait", wait)) as (r, w),
            ClientSession(r, w) as s,
        ):
            await s.initialize()
            return await s.call_tool("move_file", params)

    first = anyio.run(call)
    assert first.is_error and "pending approval mcp-" in text(first)
    plan_id = text(first).split("pending approval ")[1].split(":")[0]
    again = anyio.run(call)  # the same call again: the same plan, still pending
    assert again.is_error and plan_id in text(again)
    assert (roots / "notes.txt").exists()
    r = cli("approve", plan_id, "--as", "olga", "--role", "ops", "--json", home=home)
    assert r.json()["status"] == "running", r.out + r.err
    done = anyio.run(call)
    assert not done.is_error, text(done)
    assert (roots / "moved.txt").exists() and not (roots / "notes.txt").exists()
    log = kit.events(cli, home)
    mine = [e["type"] for e in log if e.get("plan_id") == plan_id]
    assert mine.count("plan.submitted") == 1
    assert "approval.granted" in mine and mine.count("step.succeeded") == 1
    # Once done, the same arguments are a new call (a new plan), not a replay of the old one.
    (roots / "notes.txt").write_text("again")
    fresh = anyio.run(call)
    assert fresh.is_error and "pending approval" in text(fresh) and plan_id not in text(fresh)


def test_resources_prompts_templates_completions_and_logs_pass_through(
    proctor_exe, home, config, kit
):
    """What is not a tool call reaches the upstream that has it, unchanged."""
    logs = []
    updated = []

    async def on_log(params):
        logs.append(params)

    async def on_message(message):
        note = getattr(message, "root", message)
        if isinstance(note, types.ResourceUpdatedNotification):
            updated.append(str(note.params.uri))

    async def go():
        async with (
            stdio_client(proxy(proctor_exe, home, config, kit)) as (r, w),
            ClientSession(r, w, logging_callback=on_log, message_handler=on_message) as s,
        ):
            await s.initialize()
            await s.send_ping()
            resources = (await s.list_resources()).resources
            assert resources
            first = await s.read_resource(resources[0].uri)
            assert first.contents
            templates = (await s.list_resource_templates()).resource_templates
            assert any("{" in t.uri_template for t in templates)
            prompts = {p.name: p for p in (await s.list_prompts()).prompts}
            assert "simple-prompt" in prompts
            got = await s.get_prompt("simple-prompt")
            assert got.messages
            prompt = prompts["completable-prompt"]
            done = await s.complete(
                types.PromptReference(type="ref/prompt", name=prompt.name),
                {"name": prompt.arguments[0].name, "value": ""},
            )
            assert done.completion.values
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)  # for 2026-07-28 only
                await s.set_logging_level("debug")
            toggled = await s.call_tool("toggle-simulated-logging", {})
            assert not toggled.is_error, text(toggled)
            with anyio.fail_after(60):
                while not logs:
                    await anyio.sleep(0.1)
            # Subscriptions: the upstream's resource-updated notifications reach the client.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)  # for 2026-07-28 only
                subscribed = s.subscribe_resource(resources[0].uri)
                unsubscribed = s.unsubscribe_resource(resources[0].uri)
            await subscribed
            started = await s.call_tool("toggle-subscriber-updates", {})
            assert not started.is_error, text(started)
            with anyio.fail_after(60):
                while not updated:
                    await anyio.sleep(0.1)
            assert updated[0] == str(resources[0].uri)
            await unsubscribed
            structured = await s.call_tool("get-structured-content", {"location": "New York"})
            assert not structured.is_error, text(structured)
            assert isinstance(structured.structured_content["temperature"], (int, float))

    anyio.run(go)
    assert logs[0].level


def test_namespacing_and_hidden_tools(proctor_exe, home, roots, npm_servers, kit):
    """Configured namespacing names tools server.tool; hidden tools are neither listed nor run."""
    config = kit.write_config(
        home,
        "spaced.json",
        {
            "fs": {
                "command": "node",
                "args": [str(npm_servers.filesystem), str(roots)],
                "proctor": {"namespace": True, "hide": ["move_file"]},
            },
            "everything": {"command": "node", "args": [str(npm_servers.everything)]},
        },
    )

    async def go():
        async with (
            stdio_client(proxy(proctor_exe, home, config, kit)) as (r, w),
            ClientSession(r, w) as s,
        ):
            await s.initialize()
            names = {t.name for t in (await s.list_tools()).tools}
            assert "fs.read_text_file" in names and "read_text_file" not in names
            assert "fs.move_file" not in names and "echo" in names
            ok = await s.call_tool("fs.read_text_file", {"path": str(roots / "notes.txt")})
            assert not ok.is_error
            with pytest.raises(MCPError):
                await s.call_tool("fs.move_file", {"source": "a", "destination": "b"})

    anyio.run(go)
