"""The proxy in this process (memory streams to the client, the test server over stdio).

Faster than a ``proctor mcp`` subprocess, and it lets the test act as the approver while
a call waits.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.shared.memory import create_client_server_memory_streams

from proctor import Proctor
from proctor.app.gateway import GatewayOptions
from proctor.core.catalog import Catalog
from proctor.core.lifecycle import PlanStatus
from proctor.errors import ConfigError
from proctor.mcp import McpProxy, UpstreamConfig
from proctor.policy import RegoPolicyEngine

pytestmark = [pytest.mark.slow]

FLAKY = Path(__file__).parent / "servers" / "flaky.py"
EXAMPLE = Path(__file__).parent.parent.parent / "src" / "proctor" / "mcp" / "examples" / "mcp.rego"


def instance(execute=()):
    policy = RegoPolicyEngine.from_sources(
        {"mcp.rego": EXAMPLE.read_text()},
        {"mcp": {"roots": ["/nowhere"], "approver_roles": ["ops"], "execute": list(execute)}},
    )
    return Proctor.in_memory(catalog=Catalog(()), policy=policy)


def text(result):
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def connected(
    p: Proctor,
    stack: AsyncExitStack,
    mask_result=(),
    message_handler=None,
    upstreams=None,
    **options,
) -> tuple[McpProxy, ClientSession]:
    """The proxy over ``upstreams`` (the flaky server by default) and a client session."""
    if upstreams is None:
        upstreams = [
            UpstreamConfig(
                name="flaky", command=sys.executable, args=(str(FLAKY),), mask_result=mask_result
            )
        ]
    proxy = McpProxy(p, upstreams, **options)
    await proxy.connect(stack)
    server = proxy.server()
    client_streams, server_streams = await stack.enter_async_context(
        create_client_server_memory_streams()
    )
    tg = await stack.enter_async_context(anyio.create_task_group())
    stack.callback(tg.cancel_scope.cancel)
    tg.start_soon(
        lambda: server.run(
            server_streams[0], server_streams[1], server.create_initialization_options()
        )
    )
    session = await stack.enter_async_context(
        ClientSession(client_streams[0], client_streams[1], message_handler=message_handler)
    )
    await session.initialize()
    return proxy, session


def test_an_approval_given_while_the_call_waits_runs_it():
    """With --approval-wait, an approver's decision in time lets the waiting call return."""
    p = instance()

    def approver():
        for _ in range(300):
            pending = [
                r for r in p.gateway.store.list_plans() if r.status is PlanStatus.AWAITING_APPROVAL
            ]
            if pending:
                p.approve(pending[0].plan_id, "olga", roles=["ops"])
                return
            threading.Event().wait(0.05)

    async def go():
        async with AsyncExitStack() as stack:
            _, s = await connected(p, stack, approval_wait=30)
            helper = threading.Thread(target=approver)
            helper.start()
            result = await s.call_tool("ok", {})
            helper.join()
            return result

    result = anyio.run(go)

    assert not result.is_error and text(result).startswith("fine")


def test_killed_and_unlisted_actions_are_hidden():
    """A kill switch or an agent whitelist removes the tools from tools/list."""
    p = instance(execute=["mcp.flaky.ok"])

    async def go():
        async with AsyncExitStack() as stack:
            _, s = await connected(p, stack, agent_id="bot")
            everything = {t.name for t in (await s.list_tools()).tools}
            p.gateway.guards.kill("action", "mcp.flaky.crash", by="ops")
            after_kill = {t.name for t in (await s.list_tools()).tools}
            p.gateway.guards.set_whitelist("bot", ["mcp.flaky.ok", "mcp.flaky.fail"], by="ops")
            after_list = {t.name for t in (await s.list_tools()).tools}
            killed = await s.call_tool("crash", {})  # hidden, and the gateway still refuses it
            return everything, after_kill, after_list, killed

    everything, after_kill, after_list, killed = anyio.run(go)

    assert everything == {"ok", "numbers", "fail", "hang", "crash", "garbage", "malformed", "grow"}
    assert "crash" not in after_kill and "hang" in after_kill
    assert after_list == {"ok", "fail"}
    assert killed.is_error and "denied" in text(killed)


def test_a_call_whose_plan_a_kill_switch_holds_is_answered_at_once(tmp_path, roots, npm_servers):
    """Confirmed elsewhere, then a kill switch: the retry is told why at once, not forwarded.

    Regression: the proxy polled the held plan as if another owner ran it, and answered
    only after the step timeout plus 5 s (65 s by default). The plan keeps waiting: the
    same call after the release runs it, under the same plan id.
    """
    db = f"sqlite:///{tmp_path / 'proctor.db'}"
    data = {"mcp": {"roots": [str(roots)], "approver_roles": ["ops"]}}

    def opened(**options):
        policy = RegoPolicyEngine.from_sources({"mcp.rego": EXAMPLE.read_text()}, data)
        return Proctor.in_memory(
            catalog=Catalog(()), policy=policy, database_url=db, options=GatewayOptions(**options)
        )

    # The step timeout the old code waited for (plus 5 s): short, so that it fails in time.
    p, console = opened(step_timeout=20.0), opened()  # the proxy's process, and the console's
    target = roots / "held.txt"
    args = {"path": str(target), "content": "written after the release"}
    fs = UpstreamConfig(name="fs", command="node", args=(str(npm_servers.filesystem), str(roots)))

    async def go():
        async with AsyncExitStack() as stack:
            _, s = await connected(p, stack, upstreams=[fs], confirm_in_client=False)
            asked = await s.call_tool("write_file", args)
            (plan,) = p.gateway.store.list_plans()
            console.confirm(plan.plan_id, "mcp-user")  # queued: the console has no runner mcp
            console.kill("global", by="admin", reason="incident")
            began = anyio.current_time()
            held = await s.call_tool("write_file", args)
            took = anyio.current_time() - began
            written_while_held = target.exists()
            events_while_held = types_of(p, plan.plan_id)
            assert console.unkill("global", by="admin")
            done = await s.call_tool("write_file", args)
            return plan.plan_id, asked, held, took, written_while_held, events_while_held, done

    try:
        plan_id, asked, held, took, written, held_events, done = anyio.run(go)
        rec = p.get(plan_id)
        after = types_of(p, plan_id)
    finally:
        p.close()
        console.close()

    assert asked.is_error and f"needs confirmation {plan_id}" in text(asked)
    assert held.is_error
    assert text(held) == (
        f"refused: conflict: plan {plan_id} is not run now: kill switch global is engaged: "
        "incident (field: plan_id) The call was not made: the plan keeps waiting. Call the "
        "tool again with the same arguments once the guard allows it (`proctor guards`): "
        "that call runs it."
    )
    assert took < 10.0  # at once: well under the step timeout (20 s) the old code waited for
    assert not written  # nothing reached the server
    assert "step.started" not in held_events and held_events.count("guard.killed") == 1
    assert not done.is_error, text(done)
    assert target.read_text() == "written after the release"
    assert rec.status is PlanStatus.SUCCEEDED  # the same plan, run by the call after release
    assert after.count("step.started") == 1 and after[-1] == "plan.finished"


def test_a_queued_call_under_sandbox_mode_is_answered_at_once_and_not_made(
    tmp_path, roots, npm_servers
):
    """Confirmed elsewhere before the proxy's sandbox mode: the retry is refused, not forwarded.

    Regression: sandbox mode was consulted only when a plan was routed; a plan decided before
    it ran its real handler. The plan keeps waiting: the same call after the switch runs it.
    """
    db = f"sqlite:///{tmp_path / 'proctor.db'}"
    data = {"mcp": {"roots": [str(roots)], "approver_roles": ["ops"]}}

    def opened():
        policy = RegoPolicyEngine.from_sources({"mcp.rego": EXAMPLE.read_text()}, data)
        return Proctor.in_memory(catalog=Catalog(()), policy=policy, database_url=db)

    p, console = opened(), opened()  # the proxy's process, and the console's
    target = roots / "sandboxed.txt"
    args = {"path": str(target), "content": "written after sandbox mode"}
    fs = UpstreamConfig(name="fs", command="node", args=(str(npm_servers.filesystem), str(roots)))

    def sandbox(on):
        p.gateway.options = dataclasses.replace(p.gateway.options, sandbox=on)

    async def go():
        async with AsyncExitStack() as stack:
            _, s = await connected(p, stack, upstreams=[fs], confirm_in_client=False)
            await s.call_tool("write_file", args)
            (plan,) = p.gateway.store.list_plans()
            console.confirm(plan.plan_id, "mcp-user")  # queued: the console has no runner mcp
            sandbox(True)
            began = anyio.current_time()
            held = await s.call_tool("write_file", args)
            took = anyio.current_time() - began
            written_while_held = target.exists()
            events_while_held = types_of(p, plan.plan_id)
            sandbox(False)
            done = await s.call_tool("write_file", args)
            return plan.plan_id, held, took, written_while_held, events_while_held, done

    try:
        plan_id, held, took, written, held_events, done = anyio.run(go)
        rec = p.get(plan_id)
    finally:
        p.close()
        console.close()

    assert held.is_error
    assert f"plan {plan_id} cannot run now: sandbox mode is on" in text(held)
    assert took < 10.0
    assert not written
    assert "step.started" not in held_events
    assert not done.is_error, text(done)
    assert target.read_text() == "written after sandbox mode"
    assert rec.status is PlanStatus.SUCCEEDED


def types_of(p, plan_id):
    return [e.type for e in p.gateway.store.read_events(plan_id=plan_id)]


def test_identical_concurrent_calls_share_one_plan_and_distinct_ones_do_not():
    """Two identical calls at once are one plan; different arguments are another."""
    p = instance(execute=["mcp.flaky.ok"])

    async def go():
        async with AsyncExitStack() as stack:
            _, s = await connected(p, stack)
            results = []

            async def call(args):
                results.append(await s.call_tool("ok", args))

            async with anyio.create_task_group() as tg:
                tg.start_soon(call, {"n": 1})
                tg.start_soon(call, {"n": 1})
                tg.start_soon(call, {"n": 2})
            return results

    results = anyio.run(go)

    assert all(not r.is_error for r in results), [text(r) for r in results]
    plans = p.gateway.store.list_plans()
    assert sorted(len(r.steps) for r in plans) == [1, 1]
    assert {tuple(r.steps[0].params.items()) for r in plans} == {(("n", 1),), (("n", 2),)}


def test_a_lone_call_runs_in_the_event_loop_and_concurrent_calls_in_threads():
    """Calls one at a time take no thread hop; calls at once are governed in threads, all audited."""
    p = instance(execute=["mcp.flaky.ok"])
    hops = []

    async def go():
        async with AsyncExitStack() as stack:
            proxy, s = await connected(p, stack)
            await s.list_tools()  # (governed in a thread: not a call)
            submit = proxy._pool.submit

            def counted(fn, *args, **kwargs):
                hops.append(fn)
                return submit(fn, *args, **kwargs)

            proxy._pool.submit = counted
            alone = [await s.call_tool("ok", {"n": n}) for n in range(3)]
            hops_alone = len(hops)
            together = []

            async def call(n):
                together.append(await s.call_tool("ok", {"n": n}))

            async with anyio.create_task_group() as tg:
                for n in range(10, 14):
                    tg.start_soon(call, n)
            return alone, hops_alone, together

    alone, hops_alone, together = anyio.run(go)

    assert all(not r.is_error for r in alone + together), [text(r) for r in alone + together]
    assert hops_alone == 0
    assert hops  # the concurrent calls went through the pool
    plans = p.gateway.store.list_plans()
    assert len(plans) == 7 and all(r.status is PlanStatus.SUCCEEDED for r in plans)
    for r in plans:
        kinds = [json.loads(e.body)["type"] for e in p.gateway.store.read_events(plan_id=r.plan_id)]
        assert kinds[-2:] == ["step.succeeded", "plan.finished"], kinds


def test_the_client_gets_the_exact_result_and_the_log_a_masked_copy():
    """Floats reach the client as numbers; the log masks the configured pointers."""
    p = instance(execute=["mcp.flaky.numbers"])

    async def go():
        async with AsyncExitStack() as stack:
            _, s = await connected(p, stack, mask_result=("/structuredContent/ratio",))
            return await s.call_tool("numbers", {})

    result = anyio.run(go)

    assert result.structured_content == {"ratio": 0.25, "big": 1.5e300, "n": 3}
    (plan,) = p.gateway.store.list_plans()
    bodies = [json.loads(e.body) for e in p.gateway.store.read_events(plan_id=plan.plan_id)]
    (done,) = [b for b in bodies if b["type"] == "step.succeeded"]
    logged = done["data"]["result"]
    assert logged["structuredContent"]["ratio"] == "***"
    assert logged["structuredContent"]["n"] == 3
    # Keyed with the instance's payload key: the log alone cannot test a guess of the ratio.
    assert logged["unmasked_hmac_sha256"] == p.gateway.keyed_hash(
        {"result": result.model_dump(mode="json", by_alias=True, exclude_none=True)}
    )


def test_the_default_policy_asks_approval_for_an_undeclared_tool():
    """No catalog entry, the packaged policy: the call waits for an approver (fail closed)."""
    p = Proctor.in_memory(catalog=Catalog(()), policy="default")

    async def go():
        async with AsyncExitStack() as stack:
            _, s = await connected(p, stack)
            return await s.call_tool("ok", {})

    result = anyio.run(go)

    assert result.is_error and "pending approval mcp-" in text(result)
    (plan,) = p.gateway.store.list_plans()
    assert plan.status is PlanStatus.AWAITING_APPROVAL


def test_a_tools_list_change_passes_through_and_new_tools_are_governed():
    """The upstream's list_changed reaches the client; its new tool is listed and governed."""
    p = instance(execute=["mcp.flaky.grow"])
    changed = anyio.Event()

    async def on_message(message):
        if isinstance(getattr(message, "root", message), types.ToolListChangedNotification):
            changed.set()

    async def go():
        async with AsyncExitStack() as stack:
            _, s = await connected(p, stack, message_handler=on_message)
            assert s.server_capabilities.tools.list_changed is True
            before = {t.name for t in (await s.list_tools()).tools}
            grown = await s.call_tool("grow", {})
            with anyio.fail_after(30):
                await changed.wait()
            after = {t.name for t in (await s.list_tools()).tools}
            extra = await s.call_tool("extra", {})
            return before, grown, after, extra

    before, grown, after, extra = anyio.run(go)

    assert "extra" not in before and not grown.is_error
    assert "extra" in after
    assert extra.is_error and "pending approval" in text(extra)  # undeclared: approval


def test_a_tool_error_is_masked_like_a_result():
    """An ``isError`` result's text goes into ``step.failed`` masked by ``maskResult``."""
    p = instance(execute=["mcp.flaky.fail"])

    async def go():
        async with AsyncExitStack() as stack:
            _, s = await connected(p, stack, mask_result=("/content",))
            return await s.call_tool("fail", {})

    result = anyio.run(go)

    assert result.is_error and "kaput" in text(result)  # the client gets the tool's own error
    (plan,) = p.gateway.store.list_plans()
    raw = b"".join(e.body for e in p.gateway.store.read_events(plan_id=plan.plan_id))
    assert b"kaput" not in raw
    bodies = [json.loads(e.body) for e in p.gateway.store.read_events(plan_id=plan.plan_id)]
    (failed,) = [b for b in bodies if b["type"] == "step.failed"]
    assert failed["data"]["error"].endswith("the upstream tool failed: ***")


ALLOW_ALL = """package proctor
import rego.v1
decision := {"steps": {s.id: {"outcome": "execute", "reasons": ["ok"]} | some s in input.steps},
    "plan": {}}
"""


def allow_all():
    policy = RegoPolicyEngine.from_sources({"p.rego": ALLOW_ALL}, {})
    return Proctor.in_memory(catalog=Catalog(()), policy=policy)


def flaky(name, extra=(), **kw):
    env = {"FLAKY_NAME": name, "FLAKY_EXTRA": ",".join(extra)}
    return UpstreamConfig(name=name, command=sys.executable, args=(str(FLAKY),), env=env, **kw)


def test_tools_whose_names_slug_alike_each_get_their_own_action():
    """``echo``/``Echo`` and servers ``Up``/``up``: each call reaches its own tool and plan."""
    p = allow_all()
    ups = [flaky("Up", ["echo", "Echo", "get-sum", "get_sum"]), flaky("up", ["echo"]), flaky("z")]

    async def go():
        async with AsyncExitStack() as stack:
            proxy, s = await connected(p, stack, upstreams=ups)
            listed = {t.name for t in (await s.list_tools()).tools}
            answers = {
                name: text(await s.call_tool(name, {}))
                for name in ("Up.echo", "Echo", "up.echo", "get-sum", "get_sum")
            }
            return proxy, listed, answers

    proxy, listed, answers = anyio.run(go)

    assert {"Up.echo", "Echo", "up.echo", "get-sum", "get_sum"} <= listed
    assert answers == {
        "Up.echo": "echo on Up",
        "Echo": "Echo on Up",
        "up.echo": "echo on up",
        "get-sum": "get-sum on Up",
        "get_sum": "get_sum on Up",
    }
    assert len(set(proxy._actions.values())) == len(proxy._actions)
    echoes = [proxy._actions[pair] for pair in (("Up", "echo"), ("Up", "Echo"), ("up", "echo"))]
    # None keeps the plain name (a catalog entry for it must not govern the other).
    assert all(a.startswith("mcp.up.echo-") and len(a) == len("mcp.up.echo-") + 8 for a in echoes)
    assert proxy._actions[("Up", "get-sum")].startswith("mcp.up.get_sum-")
    assert proxy._actions[("z", "ok")] == "mcp.z.ok"  # no clash: the name it always had
    plans = p.gateway.store.list_plans()
    assert len(plans) == 5 and all(r.status is PlanStatus.SUCCEEDED for r in plans)
    assert len({r.steps[0].action for r in plans}) == 5


def test_a_tool_name_that_is_another_tools_namespaced_name_is_namespaced_too():
    """Server ``x``'s tool ``a.b`` next to server ``a``'s ``b`` (namespaced): neither is lost."""
    p = allow_all()
    ups = [flaky("a", ["b"], namespace=True), flaky("x", ["a.b"])]

    async def go():
        async with AsyncExitStack() as stack:
            _, s = await connected(p, stack, upstreams=ups)
            listed = {t.name for t in (await s.list_tools()).tools}
            return listed, text(await s.call_tool("a.b", {})), text(await s.call_tool("x.a.b", {}))

    listed, ab, xab = anyio.run(go)

    assert {"a.b", "x.a.b"} <= listed
    assert (ab, xab) == ("b on a", "a.b on x")


def test_an_upstream_hanging_on_a_tools_list_refresh_holds_nothing_up(caplog):
    """An upstream that announces a change and then never answers tools/list: within
    --passthrough-timeout the refresh gives up with a warning, its tools stay as listed
    before, the client still hears of the change, and another upstream's new tool is listed."""
    p = allow_all()
    hangs = UpstreamConfig(
        name="stuck",
        command=sys.executable,
        args=(str(FLAKY),),
        env={"FLAKY_NAME": "stuck", "FLAKY_RELIST_HANGS": "1"},
    )
    changes = 0
    changed = anyio.Event()

    async def on_message(message):
        nonlocal changes
        if isinstance(getattr(message, "root", message), types.ToolListChangedNotification):
            changes += 1
            changed.set()

    async def go():
        nonlocal changed
        async with AsyncExitStack() as stack:
            _, s = await connected(
                p,
                stack,
                message_handler=on_message,
                upstreams=[hangs, flaky("fine")],
                passthrough_timeout=1.0,
            )
            before = {t.name for t in (await s.list_tools()).tools}
            assert not (await s.call_tool("stuck.grow", {})).is_error
            with anyio.fail_after(20):
                await changed.wait()
            changed = anyio.Event()
            assert not (await s.call_tool("fine.grow", {})).is_error
            with anyio.fail_after(20):
                await changed.wait()
            after = {t.name for t in (await s.list_tools()).tools}
            still = await s.call_tool("stuck.ok", {})
            return before, after, still

    with caplog.at_level("WARNING", logger="proctor.mcp"):
        before, after, still = anyio.run(go)

    assert "stuck.ok" in before and "stuck.extra" not in before
    assert after == before | {"extra"}  # stuck's old list stays; fine's new tool is in
    assert not still.is_error and text(still).startswith("fine")
    assert changes == 2
    stale = [r.getMessage() for r in caplog.records if "cannot re-read its tools" in r.getMessage()]
    assert stale and "did not answer tools/list within 1 s" in stale[0]


def test_an_upstream_hanging_on_its_first_tools_list_stops_the_start():
    """No tools/list answer at start within --passthrough-timeout: a ConfigError naming the
    server (the CLI's exit 1), not a proxy that waits for ever."""
    p = allow_all()
    mute = UpstreamConfig(
        name="mute", command=sys.executable, args=(str(FLAKY),), env={"FLAKY_LIST_HANGS": "1"}
    )

    async def go():
        async with AsyncExitStack() as stack:
            with pytest.raises(ConfigError) as caught:  # (the test's timeout bounds it)
                await McpProxy(p, [mute], passthrough_timeout=0.5).connect(stack)
        return caught.value

    error = anyio.run(go)

    assert error.field == "mcpServers.mute"
    assert "did not answer tools/list within 0.5 s" in error.message


def test_write_file_with_an_ordinary_file_longer_than_2000_characters(tmp_path, roots, npm_servers):
    """server-filesystem's write_file writes a 12,000-character file through the proxy.

    Regression: every params string over 2,000 characters was refused
    (``steps[0].params.content is 2001 characters; the limit is 2000``), so the proxy could
    not write an ordinary file. Past ``[limits] max_param_string`` the refusal names it.
    """
    db = f"sqlite:///{tmp_path / 'proctor.db'}"
    data = {"mcp": {"roots": [str(roots)], "approver_roles": ["ops"]}}

    def opened():
        policy = RegoPolicyEngine.from_sources({"mcp.rego": EXAMPLE.read_text()}, data)
        return Proctor.in_memory(catalog=Catalog(()), policy=policy, database_url=db)

    p, console = opened(), opened()  # the proxy's process, and the console's
    content = ("# Notes\n" + "Line of a normal markdown file.\n" * 1000)[:12_000]
    args = {"path": str(roots / "n.md"), "content": content}
    fs = UpstreamConfig(name="fs", command="node", args=(str(npm_servers.filesystem), str(roots)))

    async def go():
        async with AsyncExitStack() as stack:
            _, s = await connected(p, stack, upstreams=[fs], confirm_in_client=False)
            asked = await s.call_tool("write_file", args)
            (plan,) = p.gateway.store.list_plans()
            console.confirm(plan.plan_id, "mcp-user")
            wrote = await s.call_tool("write_file", args)
            huge = await s.call_tool(
                "write_file", {"path": str(roots / "huge.md"), "content": "x" * 70_000}
            )
            return asked, wrote, huge

    try:
        asked, wrote, huge = anyio.run(go)
    finally:
        p.close()
        console.close()

    assert asked.is_error and "needs confirmation" in text(asked), text(asked)
    assert not wrote.is_error, text(wrote)
    assert (roots / "n.md").read_text() == content
    assert huge.is_error and "[limits] max_param_string" in text(huge), text(huge)
    assert not (roots / "huge.md").exists()
