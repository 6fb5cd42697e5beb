"""A remote MCP proxy's reported outcome under a kill switch (``/v1/mcp``, in process).

The server answers a queued call ``running`` and the proxy makes the upstream call; a kill
switch engaged before the proxy reports back cannot undo that call. The outcome is recorded
(a claim that only records a call made elsewhere asks no guard), so a retry of the call
finds the plan finished instead of queued, and is not forwarded a second time. Sandbox mode
(no handler runs at all) is held to the same answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
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


class Everything:
    """A policy engine that executes every step (a fake, not a mock)."""

    version = "sha256:everything-1"

    def evaluate(self, input: Mapping[str, Any]) -> Any:
        steps = {s["id"]: {"outcome": "execute"} for s in input["steps"]}
        return {"steps": steps, "plan": {"deny": [], "adjustments": []}}


CALL = {
    "agent_id": "desk",
    "client": "test 1",
    "on_behalf_of": "desk",
    "server": "fs",
    "tool": {"name": "write_file", "inputSchema": {"type": "object"}},
    "arguments": {"path": "/tmp/x"},
}


def served() -> tuple[Proctor, dict[str, str], dict[str, Any], httpx.ASGITransport]:
    """An instance that executes every call, the agent ``desk``'s headers, one call, the app."""
    clock = FrozenClock()
    proctor = Proctor.in_memory(catalog=Catalog(), policy=Everything(), clock=clock)
    token = TokenService(proctor.gateway.store, clock).create(name="desk", roles=("agent",))
    headers = {"Authorization": f"Bearer {token.token}"}
    return proctor, headers, dict(CALL), httpx.ASGITransport(app=create_app(proctor))


async def test_an_outcome_reported_after_a_kill_switch_is_recorded():
    """Queued, answered running, then killed: the reported outcome still ends the plan."""
    proctor, headers, call, transport = served()
    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as http:
        queued = await http.post("/v1/mcp/calls", json=call, headers=headers)
        plan_id = queued.json()["plan_id"]
        proctor.kill("global", by="admin", reason="incident")
        report = {"step_id": "s1", "result": {"content": [{"type": "text", "text": "ok"}]}}

        done = await http.post(f"/v1/mcp/plans/{plan_id}/outcome", json=report, headers=headers)

    assert queued.status_code == 201 and queued.json()["status"] == "running"
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "succeeded"
    assert proctor.get(plan_id).status is PlanStatus.SUCCEEDED
    events = [e.type for e in proctor.gateway.store.read_events(plan_id=plan_id)]
    assert "guard.killed" not in events and events[-1] == "plan.finished"


async def test_a_retry_of_a_queued_call_under_a_kill_switch_is_not_answered_running():
    """Queued for the proxy, then a kill switch: the proxy's retry gets 409 with the reason,
    not "running" (which would make it forward the call), and the plan still waits."""
    proctor, headers, call, transport = served()
    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as http:
        queued = await http.post("/v1/mcp/calls", json=call, headers=headers)
        plan_id = queued.json()["plan_id"]
        proctor.kill("global", by="admin", reason="incident")

        retry = await http.post("/v1/mcp/calls", json=call, headers=headers)
        again = await http.post("/v1/mcp/calls", json=call, headers=headers)
        proctor.unkill("global", by="admin")
        released = await http.post("/v1/mcp/calls", json=call, headers=headers)

    assert queued.status_code == 201 and queued.json()["status"] == "running"
    assert retry.status_code == 409, retry.text
    assert retry.json()["code"] == "conflict" and retry.json()["field"] == "plan_id"
    # The words a local proxy's client reads in the same case (governance.not_run_now).
    assert retry.json()["message"] == (
        f"plan {plan_id} is not run now: kill switch global is engaged: incident"
    )
    assert retry.json()["hint"].startswith("The call was not made: the plan keeps waiting.")
    assert again.status_code == 409
    assert released.status_code == 200 and released.json()["status"] == "running"
    assert released.json()["plan_id"] == plan_id
    events = [e.type for e in proctor.gateway.store.read_events(plan_id=plan_id)]
    assert events.count("guard.killed") == 1  # recorded once, not per retry
    assert "step.started" not in events


async def test_a_remote_proxys_client_reads_what_a_local_proxys_reads():
    """The 409 becomes, in the remote proxy, the tool error a local proxy gives at once."""
    pytest.importorskip("mcp")
    from proctor.client import error_from_response
    from proctor.mcp.errors import tool_error_text
    from proctor.mcp.governance import not_run_now
    from proctor.mcp.remote import _refusal

    proctor, headers, call, transport = served()
    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as http:
        plan_id = (await http.post("/v1/mcp/calls", json=call, headers=headers)).json()["plan_id"]
        proctor.kill("global", by="admin", reason="incident")
        retry = await http.post("/v1/mcp/calls", json=call, headers=headers)

    remote = _refusal(error_from_response(retry.status_code, retry.content))

    local = tool_error_text(not_run_now(plan_id, "kill switch global is engaged: incident"))
    assert remote == local
    assert "The call was not made" in remote


def sandbox(proctor: Proctor, on: bool) -> None:
    """Switch sandbox mode (as a restart with the changed setting would)."""
    proctor.gateway.options = dataclasses.replace(proctor.gateway.options, sandbox=on)


async def test_a_retry_of_a_queued_call_under_sandbox_mode_is_not_answered_running():
    """Queued before sandbox mode: the retry gets 409 naming it, not "running" (which would
    make the proxy make the call); after the switch the same call is answered running."""
    proctor, headers, call, transport = served()
    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as http:
        queued = await http.post("/v1/mcp/calls", json=call, headers=headers)
        plan_id = queued.json()["plan_id"]
        sandbox(proctor, True)

        retry = await http.post("/v1/mcp/calls", json=call, headers=headers)
        sandbox(proctor, False)
        released = await http.post("/v1/mcp/calls", json=call, headers=headers)

    assert queued.status_code == 201 and queued.json()["status"] == "running"
    assert retry.status_code == 409, retry.text
    assert retry.json()["message"] == (
        f"plan {plan_id} is not run now: sandbox mode is on ([execution] sandbox): no handler runs"
    )
    assert released.status_code == 200 and released.json()["status"] == "running"
    events = [e.type for e in proctor.gateway.store.read_events(plan_id=plan_id)]
    assert "step.started" not in events


async def test_an_outcome_reported_under_sandbox_mode_is_recorded():
    """A call the proxy made before sandbox mode is recorded: recording it runs no handler."""
    proctor, headers, call, transport = served()
    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as http:
        queued = await http.post("/v1/mcp/calls", json=call, headers=headers)
        plan_id = queued.json()["plan_id"]
        sandbox(proctor, True)
        report = {"step_id": "s1", "result": {"content": [{"type": "text", "text": "ok"}]}}

        done = await http.post(f"/v1/mcp/plans/{plan_id}/outcome", json=report, headers=headers)

    assert done.status_code == 200, done.text
    assert done.json()["status"] == "succeeded"
