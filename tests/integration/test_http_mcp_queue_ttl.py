"""A remote MCP proxy's call confirmed elsewhere, retried before or after its start-by.

Confirmed in the console (or ``proctor confirm``), the call's plan is queued for the proxy
(runner ``mcp``) until the agent retries the call. A retry past ``queue_ttl`` is answered with
the expired plan, not ``running`` (which would make the proxy forward it at a surprising
time); a retry in time hands the call over, and no timer expires the plan while the proxy
makes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import httpx
import pytest

from proctor import Proctor
from proctor.app.tokens import TokenService
from proctor.core.catalog import Catalog
from proctor.core.lifecycle import PlanStatus
from proctor.http import create_app
from proctor.testing import FrozenClock

pytestmark = pytest.mark.anyio

TTL = timedelta(hours=1)  # the default queue_ttl
SLOW = timedelta(seconds=59)  # an upstream call just within the default step timeout (60 s)


class Confirm:
    """A policy engine that asks the user to confirm every step (a fake, not a mock)."""

    version = "sha256:confirm-1"

    def evaluate(self, input: Mapping[str, Any]) -> Any:
        steps = {s["id"]: {"outcome": "confirm"} for s in input["steps"]}
        return {"steps": steps, "plan": {"deny": [], "adjustments": []}}


CALL = {
    "agent_id": "desk",
    "client": "test 1",
    "on_behalf_of": "alice",
    "server": "fs",
    "tool": {"name": "write_file", "inputSchema": {"type": "object"}},
    "arguments": {"path": "/tmp/x"},
}


def served() -> tuple[Proctor, FrozenClock, dict[str, str], httpx.ASGITransport]:
    clock = FrozenClock()
    proctor = Proctor.in_memory(catalog=Catalog(), policy=Confirm(), clock=clock)
    token = TokenService(proctor.gateway.store, clock).create(name="desk", roles=("agent",))
    headers = {"Authorization": f"Bearer {token.token}"}
    return proctor, clock, headers, httpx.ASGITransport(app=create_app(proctor))


async def test_a_retry_after_the_start_by_is_told_the_plan_expired():
    """Confirmed, then retried 61 minutes later: the answer is the expired plan, not running."""
    proctor, clock, headers, transport = served()
    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as http:
        first = await http.post("/v1/mcp/calls", json=CALL, headers=headers)
        plan_id = first.json()["plan_id"]
        proctor.confirm(plan_id, "alice")
        clock.advance(TTL + timedelta(minutes=1))

        retry = await http.post("/v1/mcp/calls", json=CALL, headers=headers)
        report = {"step_id": "s1", "result": {"content": [{"type": "text", "text": "ok"}]}}
        late = await http.post(f"/v1/mcp/plans/{plan_id}/outcome", json=report, headers=headers)
        fresh = await http.post("/v1/mcp/calls", json=CALL, headers=headers)

    assert first.json()["status"] == "awaiting_confirmation"
    assert retry.status_code == 200, retry.text
    assert retry.json()["status"] == "expired" and retry.json()["plan_id"] == plan_id
    assert "queue_ttl_seconds" in retry.json()["error"]
    assert late.status_code == 409  # nothing to record: the call was never handed over
    # The same call again is a new plan, decided (and confirmed) afresh.
    assert fresh.status_code == 201 and fresh.json()["plan_id"] != plan_id
    assert fresh.json()["status"] == "awaiting_confirmation"
    events = [e.type for e in proctor.gateway.store.read_events(plan_id=plan_id)]
    assert events[-1] == "plan.expired" and "step.started" not in events


async def test_a_retry_in_time_hands_the_call_over_and_no_timer_expires_it():
    """Retried in time: "running", and the outcome reported after the start-by is recorded."""
    proctor, clock, headers, transport = served()
    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as http:
        first = await http.post("/v1/mcp/calls", json=CALL, headers=headers)
        plan_id = first.json()["plan_id"]
        proctor.confirm(plan_id, "alice")
        clock.advance(TTL - timedelta(seconds=1))

        retry = await http.post("/v1/mcp/calls", json=CALL, headers=headers)
        clock.advance(SLOW)  # the upstream call is slow: the start-by passes meanwhile
        fired = proctor.tick()
        report = {"step_id": "s1", "result": {"content": [{"type": "text", "text": "ok"}]}}
        done = await http.post(f"/v1/mcp/plans/{plan_id}/outcome", json=report, headers=headers)

    assert retry.status_code == 200 and retry.json()["status"] == "running"
    assert fired == []
    assert done.status_code == 200, done.text
    assert proctor.get(plan_id).status is PlanStatus.SUCCEEDED


async def test_a_call_confirmed_while_it_waited_is_handed_over_before_it_is_made():
    """``/start`` in time: running, off the timer; the outcome after the start-by is recorded."""
    proctor, clock, headers, transport = served()
    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as http:
        first = await http.post("/v1/mcp/calls", json=CALL, headers=headers)
        plan_id = first.json()["plan_id"]
        proctor.confirm(plan_id, "alice")  # relayed from the client's form by the proxy
        clock.advance(TTL - timedelta(seconds=30))
        start = await http.post(
            f"/v1/mcp/plans/{plan_id}/start", json={"step_id": "s1"}, headers=headers
        )
        clock.advance(SLOW)  # the upstream call is slow: the start-by passes meanwhile
        fired = proctor.tick()
        report = {"step_id": "s1", "result": {"content": [{"type": "text", "text": "ok"}]}}
        done = await http.post(f"/v1/mcp/plans/{plan_id}/outcome", json=report, headers=headers)

    assert start.status_code == 200, start.text
    assert start.json()["status"] == "running" and start.json()["steps"][0]["status"] == "pending"
    assert fired == []
    assert done.status_code == 200, done.text
    assert proctor.get(plan_id).status is PlanStatus.SUCCEEDED


async def test_a_hand_over_past_the_start_by_is_told_the_plan_expired():
    """``/start`` after the start-by: the plan expires there and then, never made."""
    proctor, clock, headers, transport = served()
    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as http:
        first = await http.post("/v1/mcp/calls", json=CALL, headers=headers)
        plan_id = first.json()["plan_id"]
        proctor.confirm(plan_id, "alice")
        clock.advance(TTL)
        start = await http.post(
            f"/v1/mcp/plans/{plan_id}/start", json={"step_id": "s1"}, headers=headers
        )

    assert start.status_code == 200, start.text
    assert start.json()["status"] == "expired"
    assert "queue_ttl_seconds" in start.json()["error"]
    events = [e.type for e in proctor.gateway.store.read_events(plan_id=plan_id)]
    assert events[-1] == "plan.expired" and "step.started" not in events


async def test_only_the_plans_agent_may_take_its_call_and_only_its_step():
    """Another agent's token is refused (404, as for a plan that does not exist), a wrong step
    id too (409); nothing changes."""
    proctor, _clock, headers, transport = served()
    other = TokenService(proctor.gateway.store, proctor.gateway.clock).create(
        name="rogue", roles=("agent",)
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as http:
        first = await http.post("/v1/mcp/calls", json=CALL, headers=headers)
        plan_id = first.json()["plan_id"]
        proctor.confirm(plan_id, "alice")
        rogue = await http.post(
            f"/v1/mcp/plans/{plan_id}/start",
            json={"step_id": "s1"},
            headers={"Authorization": f"Bearer {other.token}"},
        )
        wrong = await http.post(
            f"/v1/mcp/plans/{plan_id}/start", json={"step_id": "s2"}, headers=headers
        )

    assert rogue.status_code == 404, rogue.text
    assert wrong.status_code == 409 and wrong.json()["field"] == "step_id", wrong.text
    assert proctor.get(plan_id).start_by is not None  # still on its timer
