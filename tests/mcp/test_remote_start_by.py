"""A remote proxy's call cleared while it waits, then an upstream slower than the queue TTL.

Confirmed in the client (relayed with the user's token) or approved during the long poll,
the call's plan is queued for the proxy with a start-by time. The proxy hands it over
(``POST /v1/mcp/plans/{id}/start``) before it forwards the call, so a timer firing while the
upstream call runs finds nothing to expire and the outcome is recorded: the call either ran
and is recorded, or expired and never ran. The server (an ASGI app with a frozen clock) and
the proxy run in this process; the upstream is the test server over stdio.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.shared.memory import create_client_server_memory_streams

from proctor import Proctor
from proctor.app.gateway import GatewayOptions
from proctor.app.tokens import TokenService
from proctor.core.catalog import Catalog
from proctor.core.lifecycle import PlanStatus
from proctor.http import create_app
from proctor.mcp import UpstreamConfig
from proctor.mcp.remote import RemoteMcpProxy
from proctor.testing import FrozenClock

pytestmark = [pytest.mark.slow]

FLAKY = Path(__file__).parent / "servers" / "flaky.py"
# A queue TTL shorter than the step timeout (60 s): an upstream call within its timeout
# outlasts the start-by (and never its report-by, the timeout plus a grace).
TTL = timedelta(seconds=30)
SLOW = timedelta(seconds=45)


class Outcome:
    """A policy engine that gives every step one outcome (a fake, not a mock)."""

    version = "sha256:one-outcome-1"

    def __init__(self, outcome: dict[str, Any]) -> None:
        self.outcome = outcome

    def evaluate(self, input: Mapping[str, Any]) -> Any:
        steps = {s["id"]: dict(self.outcome) for s in input["steps"]}
        return {"steps": steps, "plan": {"deny": [], "adjustments": []}}


class SlowUpstream(RemoteMcpProxy):
    """A proxy whose upstream calls last past the queue TTL, within their timeout: the
    frozen clock moves on and the server's timers fire while the call is in flight, then the
    real call is made."""

    proctor: Any  # the server's instance (set by the test)
    fired: list[Any]

    async def _forward(self, server, tool, arguments, call, group=None):
        clock = self.proctor.gateway.clock
        clock.advance(SLOW)
        self.fired.extend(self.proctor.tick())
        return await super()._forward(server, tool, arguments, call, group)


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def served_proxy(
    stack: AsyncExitStack, outcome: dict[str, Any], **options: Any
) -> tuple[Proctor, SlowUpstream, ClientSession]:
    clock = FrozenClock()
    proctor = Proctor.in_memory(
        catalog=Catalog(),
        policy=Outcome(outcome),
        clock=clock,
        options=GatewayOptions(queue_ttl=TTL),
    )
    tokens = TokenService(proctor.gateway.store, clock)
    agent = tokens.create(name="desk", roles=("agent",)).token
    user = tokens.create(name="alice", roles=("user",)).token
    upstream = UpstreamConfig(name="flaky", command=sys.executable, args=(str(FLAKY),))
    proxy = SlowUpstream(
        "http://proctor",
        agent,
        [upstream],
        agent_id="desk",
        on_behalf_of="alice",
        user_token=user,
        **options,
    )
    proxy.proctor, proxy.fired = proctor, []
    # The proxy's requests reach the app in this process (the frozen clock is the server's).
    transport = httpx.ASGITransport(app=create_app(proctor))
    for api, token in ((proxy.api, agent), (proxy.user_api, user)):
        assert api is not None
        await api._http.aclose()
        api._http = httpx.AsyncClient(
            transport=transport,
            base_url="http://proctor",
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        )
    await proxy.connect(stack)

    async def elicit(context, params):
        return types.ElicitResult(action="accept", content={})

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
        ClientSession(client_streams[0], client_streams[1], elicitation_callback=elicit)
    )
    await session.initialize()
    return proctor, proxy, session


def outcome_of(proctor: Proctor) -> tuple[Any, list[str]]:
    (plan,) = proctor.gateway.store.list_plans()
    return plan, [e.type for e in proctor.gateway.store.read_events(plan_id=plan.plan_id)]


def test_a_call_confirmed_in_the_client_is_recorded_however_long_the_upstream_takes():
    """Confirmed in the form, forwarded, the start-by passes meanwhile: still recorded."""

    async def go():
        async with AsyncExitStack() as stack:
            proctor, proxy, session = await served_proxy(stack, {"outcome": "confirm"})
            result = await session.call_tool("ok", {})
            return proctor, proxy, result

    proctor, proxy, result = anyio.run(go)

    assert not result.is_error and text(result).startswith("fine"), text(result)
    plan, events = outcome_of(proctor)
    assert proxy.fired == []  # the timer found nothing to expire: the call was handed over
    assert plan.status is PlanStatus.SUCCEEDED, (plan.status, plan.error)
    assert "confirmation.granted" in events and "plan.expired" not in events
    assert events[-3:] == ["step.started", "step.succeeded", "plan.finished"], events


def test_a_call_approved_during_the_long_poll_is_recorded_however_long_the_upstream_takes():
    """Approved while the proxy waits, forwarded, the start-by passes meanwhile: recorded."""
    approval = {"outcome": "approve", "approvals": 1, "approver_roles": ["ops"]}

    async def approve(proctor: Proctor) -> None:
        while True:
            waiting = [
                p
                for p in proctor.gateway.store.list_plans()
                if p.status is PlanStatus.AWAITING_APPROVAL
            ]
            if waiting:
                plan_id = waiting[0].plan_id
                await anyio.to_thread.run_sync(
                    functools.partial(proctor.approve, plan_id, "olga", roles=["ops"])
                )
                return
            await anyio.sleep(0.02)

    async def go():
        async with AsyncExitStack() as stack:
            proctor, proxy, session = await served_proxy(stack, approval, approval_wait=30)
            async with anyio.create_task_group() as tg:
                tg.start_soon(approve, proctor)
                result = await session.call_tool("ok", {})
            return proctor, proxy, result

    proctor, proxy, result = anyio.run(go)

    assert not result.is_error and text(result).startswith("fine"), text(result)
    plan, events = outcome_of(proctor)
    assert proxy.fired == []
    assert plan.status is PlanStatus.SUCCEEDED, (plan.status, plan.error)
    assert "plan.expired" not in events
    assert events[-3:] == ["step.started", "step.succeeded", "plan.finished"], events
