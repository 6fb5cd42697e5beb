"""Identical ``tools/call`` requests at the same moment: one plan, one upstream call, and
every caller gets the upstream's own result, its progress, and cancels only its own wait.

The proxy runs in this process (memory streams to the client), the test server
(``servers/flaky.py``, its ``slow`` tool: progress each tenth of a second, floats as
structured content) over stdio.
"""

from __future__ import annotations

import json
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.shared.memory import create_client_server_memory_streams

from proctor import Proctor
from proctor.core.catalog import Catalog
from proctor.core.lifecycle import PlanStatus
from proctor.mcp import McpProxy, UpstreamConfig
from proctor.policy import RegoPolicyEngine

pytestmark = [pytest.mark.slow]

FLAKY = Path(__file__).parent / "servers" / "flaky.py"
ALLOW_ALL = """package proctor
import rego.v1
decision := {"steps": {s.id: {"outcome": "execute", "reasons": ["ok"]} | some s in input.steps},
  "plan": {}}
"""
EXACT = {"ratio": 0.25, "big": 1.5e300}


def allow_all() -> Proctor:
    policy = RegoPolicyEngine.from_sources({"p.rego": ALLOW_ALL}, {})
    return Proctor.in_memory(catalog=Catalog(()), policy=policy)


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def connected(p: Proctor, stack: AsyncExitStack, mask_result=()):
    """The proxy over the flaky server (with ``slow``) and a client session."""
    up = UpstreamConfig(
        name="flaky",
        command=sys.executable,
        args=(str(FLAKY),),
        env={"FLAKY_EXTRA": "slow"},
        mask_result=mask_result,
    )
    proxy = McpProxy(p, [up])
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
    session = await stack.enter_async_context(ClientSession(client_streams[0], client_streams[1]))
    await session.initialize()
    return proxy, session


def kinds(p: Proctor, plan_id: str) -> list[str]:
    return [json.loads(e.body)["type"] for e in p.gateway.store.read_events(plan_id=plan_id)]


@pytest.mark.parametrize("masks", [(), ("/content", "/structuredContent")], ids=["plain", "masked"])
def test_identical_calls_at_once_both_get_the_upstreams_own_result(masks):
    """The second caller gets the real result too, not the audit log's (masked) copy.

    Regression: the second caller waited for the first's plan, then answered from its
    ``step.succeeded`` copy: floats turned to strings, or with ``maskResult`` a tool error
    "succeeded (mcp-…); the result is in the audit log".
    """
    p = allow_all()

    async def go():
        async with AsyncExitStack() as stack:
            _, s = await connected(p, stack, mask_result=masks)
            results: dict[int, types.CallToolResult] = {}

            async def call(i: int, delay: float) -> None:
                await anyio.sleep(delay)
                results[i] = await s.call_tool("slow", {"n": 6})

            async with anyio.create_task_group() as tg:
                tg.start_soon(call, 1, 0.0)
                tg.start_soon(call, 2, 0.2)  # while the first's upstream call is in progress
            return results

    results = anyio.run(go)

    for i in (1, 2):
        r = results[i]
        assert not r.is_error, (i, text(r))
        assert text(r) == "slow done"
        assert r.structured_content == {**EXACT, "tenths": 6}, i
    (plan,) = p.gateway.store.list_plans()  # one plan, one upstream call
    assert plan.status is PlanStatus.SUCCEEDED
    assert kinds(p, plan.plan_id).count("step.started") == 1


def test_a_cancelled_caller_does_not_cancel_an_identical_call_that_shares_its_plan():
    """The client cancels the first of two identical calls: the second still gets its
    result and the progress from when it joined; the upstream call runs on, once.

    Regression: the upstream call ran in the first request's task, so its cancellation
    failed the shared plan ("cancelled by the client") for the second caller too, and the
    second caller's progress token was never used.
    """
    p = allow_all()

    async def go():
        async with AsyncExitStack() as stack:
            _, s = await connected(p, stack)
            out: dict[str, object] = {}
            progress: dict[str, list[float]] = {"first": [], "second": []}

            def relay(who: str):
                async def got(value: float, total: float | None, message: str | None) -> None:
                    progress[who].append(value)

                return got

            async def first() -> None:
                with anyio.move_on_after(0.35):
                    await s.call_tool("slow", {"n": 10}, progress_callback=relay("first"))
                    out["first"] = "answered"

            async def second() -> None:
                await anyio.sleep(0.15)
                out["second"] = await s.call_tool(
                    "slow", {"n": 10}, progress_callback=relay("second")
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                tg.start_soon(second)
            return out, progress

    out, progress = anyio.run(go)

    assert "first" not in out  # cancelled by its client
    second = out["second"]
    assert isinstance(second, types.CallToolResult)
    assert not second.is_error, text(second)
    assert text(second) == "slow done" and second.structured_content == {**EXACT, "tenths": 10}
    # Progress went to both while both waited, then to the second alone, up to the end.
    assert progress["first"] and max(progress["first"]) < 10
    assert len(progress["second"]) >= 5 and progress["second"][-1] == 10
    (plan,) = p.gateway.store.list_plans()
    assert plan.status is PlanStatus.SUCCEEDED
    assert kinds(p, plan.plan_id).count("step.started") == 1


def test_the_upstream_call_is_cancelled_when_every_caller_cancelled():
    """Both identical calls cancelled: the upstream call stops; the plan failed, "cancelled
    by the client", long before the tool would have answered."""
    p = allow_all()

    async def go():
        async with AsyncExitStack() as stack:
            _, s = await connected(p, stack)

            async def call(delay: float, wait: float) -> None:
                await anyio.sleep(delay)
                with anyio.move_on_after(wait):
                    await s.call_tool("slow", {"n": 50})  # 5 s

            began = anyio.current_time()
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, 0.0, 0.4)
                tg.start_soon(call, 0.2, 0.4)
            (plan,) = p.gateway.store.list_plans()
            while p.get(plan.plan_id).status is PlanStatus.RUNNING:
                assert anyio.current_time() - began < 4.0, "the upstream call was not cancelled"
                await anyio.sleep(0.05)
            return plan.plan_id

    plan_id = anyio.run(go)

    rec = p.get(plan_id)
    assert rec.status is PlanStatus.FAILED
    assert "cancelled by the client" in (rec.steps[0].error or "")
    assert kinds(p, plan_id).count("step.started") == 1
