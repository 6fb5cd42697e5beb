"""``/v1/mcp``: a remote proxy's queued call and the catalog as it is when it is retried.

Regression: a call approved on the server was answered "running" to the proxy's retry (which
then forwards it upstream) even when the tool's schema, registered again with that retry,
refused its arguments. In process through ``ASGITransport``; no upstream server is needed:
the test plays the proxy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from proctor import Proctor
from proctor.app.tokens import TokenService
from proctor.core.catalog import Catalog
from proctor.http import create_app
from proctor.testing import FrozenClock

pytestmark = pytest.mark.anyio

LOOSE = {"type": "object", "properties": {"to": {"type": "string"}}}
STRICT = {"type": "object", "properties": {"to": {"enum": ["home"]}}}


class Approve:
    """A policy engine (a fake, not a mock): every step needs one ``ops`` approval."""

    version = "sha256:approve-1"

    def evaluate(self, input: Any) -> Any:
        steps = {
            s["id"]: {"outcome": "approve", "approvals": 1, "approver_roles": ["ops"]}
            for s in input["steps"]
        }
        return {"steps": steps, "plan": {"deny": [], "adjustments": []}}


@dataclasses.dataclass
class Server:
    client: httpx.AsyncClient
    proctor: Proctor
    token: str

    async def call(self, schema: dict[str, Any]) -> httpx.Response:
        """The proxy's ``tools/call`` of fs.move, its tool described with ``schema``."""
        body = {
            "agent_id": "desk",
            "client": "test-client 1.0",
            "on_behalf_of": "alice",
            "server": "fs",
            "tool": {"name": "move", "inputSchema": schema},
            "arguments": {"to": "anywhere"},
        }
        return await self.post("/v1/mcp/calls", body)

    async def post(
        self, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        sent = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        return await self.client.post(path, json=body, headers=sent)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    clock = FrozenClock()
    proctor = Proctor.in_memory(catalog=Catalog(), policy=Approve(), clock=clock)
    token = TokenService(proctor.gateway.store, clock).create(name="desk", roles=("agent",)).token
    transport = httpx.ASGITransport(app=create_app(proctor))
    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as client:
        yield Server(client, proctor, token)
    proctor.close()


async def approved(server: Server) -> str:
    """Submit the call, approve it on the server: queued for the proxy's retry."""
    first = await server.call(LOOSE)
    assert first.status_code == 201, first.text
    assert first.json()["status"] == "awaiting_approval"
    plan_id: str = first.json()["plan_id"]
    rec = server.proctor.approve(plan_id, "olga", roles=["ops"])
    assert (rec.status.value, rec.lease_owner) == ("running", None)
    return plan_id


class TestRetryOfAQueuedCall:
    async def test_the_retry_is_told_to_run_when_the_catalog_still_accepts_it(self, server):
        """The baseline: "running", the proxy forwards and reports, the plan succeeds."""
        plan_id = await approved(server)

        retry = await server.call(LOOSE)
        report = await server.post(
            f"/v1/mcp/plans/{plan_id}/outcome", {"step_id": "s1", "result": {"ok": True}}
        )

        assert (retry.status_code, retry.json()["status"]) == (200, "running")
        assert report.status_code == 200, report.text
        assert report.json()["status"] == "succeeded"

    async def test_the_retry_fails_the_plan_when_the_tool_now_refuses_the_arguments(self, server):
        """The plan fails naming the field; nothing is answered "running"; no report lands."""
        plan_id = await approved(server)

        retry = await server.call(STRICT)
        report = await server.post(
            f"/v1/mcp/plans/{plan_id}/outcome", {"step_id": "s1", "result": {"ok": True}}
        )

        assert retry.status_code == 200, retry.text
        doc = retry.json()
        assert doc["status"] == "failed"
        assert "steps[0].params.to" in doc["steps"][0]["error"]
        assert report.status_code == 409
        kinds = [e.type for e in server.proctor.events(plan_id=plan_id)]
        assert "step.started" not in kinds
        assert kinds[-1] == "plan.finished"
        assert server.proctor.verify().ok

    async def test_a_report_is_recorded_as_it_happened(self, server):
        """Once "running" was answered the call was made: its report is not refused."""
        plan_id = await approved(server)
        retry = await server.call(LOOSE)
        assert retry.json()["status"] == "running"
        spec = server.proctor.gateway.catalog.require("mcp.fs.move")
        server.proctor.add_action(dataclasses.replace(spec, params_schema=STRICT), replace=True)

        report = await server.post(
            f"/v1/mcp/plans/{plan_id}/outcome", {"step_id": "s1", "result": {"ok": True}}
        )

        assert report.status_code == 200, report.text
        assert report.json()["status"] == "succeeded"


class TestTraceparent:
    async def test_the_outcome_report_joins_the_agents_trace(self, server):
        """The step the report records carries the trace of the call it reports."""
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        plan_id = await approved(server)

        report = await server.post(
            f"/v1/mcp/plans/{plan_id}/outcome",
            {"step_id": "s1", "result": {"ok": True}},
            headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
        )

        assert report.status_code == 200, report.text
        recorded = [
            orjson.loads(e.body)
            for e in server.proctor.events(plan_id=plan_id)
            if e.type in ("step.started", "step.succeeded", "plan.finished")
        ]
        assert [e["trace_id"] for e in recorded] == [trace_id] * 3


@pytest.mark.parametrize("name", ["jos\u00e9", "\u0430lice", "", "bob smith", "-bob", "b" * 129])
async def test_a_malformed_on_behalf_of_is_refused_as_plans_refuse_it(server: Server, name: str):
    """A call for ``josé`` (or a Cyrillic a (U+0430), a space, 129 characters): 422 on the field
    with the words and hint of ``POST /v1/plans`` (ASCII; the login or e-mail address), not
    pydantic's "should match pattern"; no plan, no event."""
    body = {
        "agent_id": "desk",
        "client": "test-client 1.0",
        "on_behalf_of": name,
        "server": "fs",
        "tool": {"name": "move", "inputSchema": LOOSE},
        "arguments": {"to": "anywhere"},
    }
    manifest = {
        "actor": {"type": "agent", "name": "desk", "model_version": "m", "agent_id": "desk"},
        "on_behalf_of": name,
        "intent": "move a file",
        "steps": [{"id": "s1", "action": "fs.move", "params": {}}],
    }

    call = await server.post("/v1/mcp/calls", body)
    plan = await server.post("/v1/plans", manifest)

    assert call.status_code == 422, call.text
    assert call.json()["field"] == "on_behalf_of"
    assert "ASCII" in call.json()["message"] and "e-mail address" in call.json()["hint"]
    assert "pattern" not in call.json()["message"]
    assert plan.status_code == 422, plan.text
    assert {k: call.json()[k] for k in ("code", "message", "field", "hint")} == {
        k: plan.json()[k] for k in ("code", "message", "field", "hint")
    }
    assert not [p for p in server.proctor.gateway.store.list_plans() if p.agent_id == "desk"]
