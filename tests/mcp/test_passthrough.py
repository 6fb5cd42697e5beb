"""What the proxy passes through besides tools: to which upstream, for whom, how long.

Two (or more) instances of the probe server (``servers/probe.py``) record every request
that reaches them, so a test sees which upstream got a resource read, a subscription, a
prompt or a completion, and which did not.
"""

from __future__ import annotations

import json
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.memory import create_client_server_memory_streams

from proctor import Proctor
from proctor.core.catalog import Catalog
from proctor.mcp import McpProxy, UpstreamConfig
from proctor.policy import RegoPolicyEngine

pytestmark = [
    pytest.mark.slow,
    # The client's calls (subscribe, setLevel) are 2025-11-25 methods, as the servers'.
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

SERVERS = Path(__file__).parent / "servers"
ALLOW = """package proctor
import rego.v1
decision := {"steps": {s.id: {"outcome": "execute", "reasons": ["ok"]} | some s in input.steps},
             "plan": {}}
"""


def probe(name: str, log: Path, hang: str = "") -> UpstreamConfig:
    env = {"PROBE_NAME": name, "PROBE_LOG": str(log), "PROBE_HANG": hang}
    return UpstreamConfig(
        name=name, command=sys.executable, args=(str(SERVERS / "probe.py"),), env=env
    )


def reached(log: Path, event: str) -> list[tuple[str, Any]]:
    """(server, what) of each ``event`` the probes recorded."""
    lines = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return [
        (e["server"], e.get("uri") or e.get("name") or e.get("ref") or e.get("level"))
        for e in lines
        if e["event"] == event
    ]


async def connected(
    stack: AsyncExitStack, upstreams: list[UpstreamConfig], **options: Any
) -> tuple[McpProxy, ClientSession, list[Any]]:
    """The proxy (allow-all policy) and a client session; the notifications it receives."""
    policy = RegoPolicyEngine.from_sources({"p.rego": ALLOW}, {})
    proxy = McpProxy(Proctor.in_memory(catalog=Catalog(()), policy=policy), upstreams, **options)
    await proxy.connect(stack)
    server = proxy.server()
    client_streams, server_streams = await stack.enter_async_context(
        create_client_server_memory_streams()
    )
    tg = await stack.enter_async_context(anyio.create_task_group())
    stack.callback(tg.cancel_scope.cancel)
    options = server.create_initialization_options()
    tg.start_soon(lambda: server.run(server_streams[0], server_streams[1], options))
    received: list[Any] = []

    async def on_message(message: Any) -> None:
        received.append(getattr(message, "root", message))

    session = await stack.enter_async_context(
        ClientSession(client_streams[0], client_streams[1], message_handler=on_message)
    )
    await session.initialize()
    return proxy, session, received


def test_requests_go_to_the_upstream_that_lists_the_uri_template_or_prompt(tmp_path):
    """Reads, subscriptions, prompts and completions reach their owner, and nobody else."""
    log = tmp_path / "probe.log"

    async def go():
        async with AsyncExitStack() as stack:
            _, s, received = await connected(stack, [probe("alpha", log), probe("beta", log)])
            with anyio.fail_after(60):
                # Before any list: the proxy reads the lists to find the owner.
                first = await s.read_resource("probe://beta/r3")
                listed = [str(r.uri) for r in (await s.list_resources()).resources]
                read = await s.read_resource("probe://beta/r1")
                templated = await s.read_resource("probe://beta/t/7")  # no list names it
                await s.subscribe_resource("probe://beta/r1")
                while not any(isinstance(n, types.ResourceUpdatedNotification) for n in received):
                    await anyio.sleep(0.05)
                await s.unsubscribe_resource("probe://beta/r1")
                prompts = sorted(p.name for p in (await s.list_prompts()).prompts)
                got = await s.get_prompt("beta.args-prompt")
                by_prompt = await s.complete(
                    types.PromptReference(type="ref/prompt", name="beta.args-prompt"),
                    {"name": "x", "value": ""},
                )
                by_template = await s.complete(
                    types.ResourceTemplateReference(type="ref/resource", uri="probe://beta/t/{id}"),
                    {"name": "id", "value": ""},
                )
                with pytest.raises(MCPError) as unknown:
                    await s.get_prompt("args-prompt")  # two upstreams have it: no such name
            return first, listed, read, templated, prompts, got, by_prompt, by_template, unknown

    first, listed, read, templated, prompts, got, by_prompt, by_template, unknown = anyio.run(go)

    assert first.contents[0].text == "probe://beta/r3 from beta"
    assert len(listed) == 10  # both upstreams, every page
    assert read.contents[0].text == "probe://beta/r1 from beta"
    assert templated.contents[0].text == "probe://beta/t/7 from beta"
    assert reached(log, "read") == [
        ("beta", "probe://beta/r3"),
        ("beta", "probe://beta/r1"),
        ("beta", "probe://beta/t/7"),
    ]
    assert reached(log, "subscribe") == [("beta", "probe://beta/r1")]
    assert reached(log, "unsubscribe") == [("beta", "probe://beta/r1")]
    assert prompts == ["alpha.args-prompt", "beta.args-prompt"]
    assert got.messages[0].content.text == "prompt from beta"
    assert reached(log, "get_prompt") == [("beta", "args-prompt")]  # the upstream's own name
    assert by_prompt.completion.values == by_template.completion.values == ["beta-value"]
    assert [server for server, _ in reached(log, "complete")] == ["beta", "beta"]
    assert reached(log, "complete")[0][1]["name"] == "args-prompt"
    assert unknown.value.code == types.INVALID_PARAMS


def test_a_hung_or_crashing_upstream_is_left_out_of_merged_lists_and_named_in_errors(tmp_path):
    """Merged lists answer within the bound, without the upstream that hangs; a request
    to one upstream that hangs or crashes is a -32603 naming it; the others still work."""
    log = tmp_path / "probe.log"
    upstreams = [
        probe("hung", log, hang="list"),
        probe("slow", log, hang="get"),
        probe("crash", log, hang="crash"),
        probe("good", log),
    ]

    async def go():
        async with AsyncExitStack() as stack:
            _, s, _ = await connected(stack, upstreams, passthrough_timeout=1.0)
            with anyio.fail_after(60):
                start = anyio.current_time()
                resources = [str(r.uri) for r in (await s.list_resources()).resources]
                prompts = sorted(p.name for p in (await s.list_prompts()).prompts)
                templates = (await s.list_resource_templates()).resource_templates
                took = anyio.current_time() - start
                good = await s.get_prompt("good.args-prompt")
                errors = {}
                for name, call in {
                    "slow": lambda: s.get_prompt("slow.args-prompt"),
                    "crash": lambda: s.read_resource("probe://crash/r0"),
                }.items():
                    with pytest.raises(MCPError) as caught:
                        await call()
                    errors[name] = caught.value
                again = await s.get_prompt("good.args-prompt")
            return took, resources, prompts, templates, good, errors, again

    took, resources, prompts, templates, good, errors, again = anyio.run(go)

    assert took < 8  # three lists, the hung upstream's bounded at 1 s each (concurrently)
    assert {u.split("/")[2] for u in resources} == {"slow", "crash", "good"}
    assert prompts == ["crash.args-prompt", "good.args-prompt", "slow.args-prompt"]
    assert {t.uri_template.split("/")[2] for t in templates} == {"slow", "crash", "good"}
    assert good.messages[0].content.text == again.messages[0].content.text == "prompt from good"
    slow, crash = errors["slow"], errors["crash"]
    assert slow.code == types.INTERNAL_ERROR
    assert str(slow) == "MCP server 'slow' did not answer prompts/get within 1 s"
    assert crash.code == types.INTERNAL_ERROR and "'crash' closed the connection" in str(crash)
    assert reached(log, "read") == [("crash", "probe://crash/r0")]  # nobody else saw it


def test_capabilities_are_those_of_the_upstreams(tmp_path):
    """A tools-only upstream: the proxy offers tools only; subscribe is 'method not found'."""

    async def go():
        async with AsyncExitStack() as stack:
            flaky = UpstreamConfig(
                name="flaky", command=sys.executable, args=(str(SERVERS / "flaky.py"),)
            )
            _, alone, _ = await connected(stack, [flaky])
            with pytest.raises(MCPError) as refused:
                await alone.subscribe_resource("probe://x/r0")
            _, both, _ = await connected(stack, [flaky, probe("p", tmp_path / "p.log")])
            return alone.server_capabilities, refused.value, both.server_capabilities

    alone, refused, both = anyio.run(go)

    assert alone.model_dump(exclude_none=True) == {"tools": {"list_changed": True}}
    assert refused.code == types.METHOD_NOT_FOUND
    assert both.resources is not None and both.resources.subscribe is True
    assert both.resources.list_changed is False  # the probe does not announce list changes
    assert both.prompts is not None and both.logging is not None
    assert both.completions is not None


@pytest.mark.cli
@pytest.mark.server
@pytest.mark.timeout(600)
def test_over_http_a_session_gets_its_own_updates_and_the_logs_of_its_level(
    cli, proctor_exe, home, kit, spawn, tmp_path
):
    """Two client sessions on one upstream: each gets the updates of its own subscriptions
    and the log messages at its own level; the upstream is unsubscribed with the last."""
    log = tmp_path / "probe.log"
    data = json.loads((home / "policy" / "data.json").read_text())
    data["mcp"]["execute"] += ["mcp.probe.log", "mcp.probe.touch"]
    (home / "policy" / "data.json").write_text(json.dumps(data))
    env = {"PROBE_NAME": "probe", "PROBE_LOG": str(log)}
    server = {"command": sys.executable, "args": [str(SERVERS / "probe.py")], "env": env}
    config = kit.write_config(home, "probe.json", {"probe": server})
    port = kit.free_port()
    proxy = spawn(
        [
            *(proctor_exe, "mcp", "--config", str(config), "--home", str(home)),
            *("--http", f"127.0.0.1:{port}", "--passthrough-timeout", "3"),
        ]
    )
    kit.wait_port(port, proxy, "proctor mcp --http")
    got: dict[str, list[tuple[str, Any]]] = {"A": [], "B": []}

    def handlers(who: str) -> dict[str, Any]:
        async def on_log(params: types.LoggingMessageNotificationParams) -> None:
            got[who].append(("log", params.data))

        async def on_message(message: Any) -> None:
            note = getattr(message, "root", message)
            if isinstance(note, types.ResourceUpdatedNotification):
                got[who].append(("updated", note.params.uri))

        return {"logging_callback": on_log, "message_handler": on_message}

    async def until(who: str, item: tuple[str, Any]) -> None:
        with anyio.fail_after(20):
            while item not in got[who]:
                await anyio.sleep(0.05)
        await anyio.sleep(0.5)  # what should not come has had its chance

    async def go() -> None:
        url = f"http://127.0.0.1:{port}/mcp"
        async with AsyncExitStack() as stack:
            sessions = {}
            for who in ("A", "B"):
                r, w, *_ = await stack.enter_async_context(streamable_http_client(url))
                s = await stack.enter_async_context(ClientSession(r, w, **handlers(who)))
                await s.initialize()
                sessions[who] = s
            a, b = sessions["A"], sessions["B"]
            await b.set_logging_level("error")
            await a.set_logging_level("debug")
            await a.subscribe_resource("probe://probe/r1")  # the probe sends an update
            await b.subscribe_resource("probe://probe/r2")
            await a.call_tool("log", {})  # a warning
            await until("A", ("log", {"from": "probe"}))
            await until("A", ("updated", "probe://probe/r1"))
            await until("B", ("updated", "probe://probe/r2"))
            assert sorted(got["A"], key=str) == [
                ("log", {"from": "probe"}),
                ("updated", "probe://probe/r1"),
            ]
            assert got["B"] == [("updated", "probe://probe/r2")]  # no log: below its level
            got["A"].clear()
            got["B"].clear()
            await a.subscribe_resource("probe://probe/r2")  # already subscribed upstream
            await b.unsubscribe_resource("probe://probe/r2")  # A still is: kept upstream
            await a.call_tool("touch", {"uri": "probe://probe/r2"})
            await until("A", ("updated", "probe://probe/r2"))
            assert got == {"A": [("updated", "probe://probe/r2")], "B": []}
            await a.unsubscribe_resource("probe://probe/r2")  # the last: unsubscribed upstream

    anyio.run(go)

    assert reached(log, "subscribe") == [
        ("probe", "probe://probe/r1"),
        ("probe", "probe://probe/r2"),
    ]
    assert reached(log, "unsubscribe") == [("probe", "probe://probe/r2")]
    # The upstream sends what the most verbose session wants; each session filters.
    assert reached(log, "setLevel") == [("probe", "error"), ("probe", "debug")]
