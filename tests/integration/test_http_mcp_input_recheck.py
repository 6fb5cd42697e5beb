"""``/v1/mcp``: a queued call is checked against what its decision was made from.

Regression: a remote proxy's call approved on a server that did not have the tool registered
yet (a restarted server, before the proxy's retry registers it again) was queued with the
facts the policy decided from unchecked, and the retry, registering the tool with other
annotations (another category), was answered "running": the proxy then forwarded a call
decided for a read-only tool. The server now checks at the retry, as a claim that starts
the plan would, and expires the plan instead.

Two server processes on one SQLite database, in process through ``ASGITransport``; the test
plays the proxy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from proctor import Proctor
from proctor.app.human_actions import INPUTS_CHANGED
from proctor.app.tokens import TokenService
from proctor.core.catalog import Catalog
from proctor.http import create_app
from proctor.testing import FrozenClock

pytestmark = pytest.mark.anyio

Server = tuple[httpx.AsyncClient, Proctor]


class Approve:
    """A policy engine (a fake, not a mock): every step needs one ``ops`` approval."""

    version = "sha256:approve-1"

    def evaluate(self, input: Any) -> Any:
        steps = {
            s["id"]: {"outcome": "approve", "approvals": 1, "approver_roles": ["ops"]}
            for s in input["steps"]
        }
        return {"steps": steps, "plan": {"deny": [], "adjustments": []}}


def call(read_only: bool) -> dict[str, Any]:
    """The proxy's ``tools/call`` of fs.read, the tool annotated read-only or not."""
    return {
        "agent_id": "desk",
        "client": "test-client 1.0",
        "on_behalf_of": "alice",
        "server": "fs",
        "tool": {"name": "read", "annotations": {"readOnlyHint": read_only}},
        "arguments": {"path": "notes.txt"},
    }


@pytest.fixture
async def servers(tmp_path: Any) -> AsyncIterator[Callable[[], Any]]:
    """Start server processes on one database (each a fresh catalog, no tool registered)."""
    clock = FrozenClock()
    url = f"sqlite:///{tmp_path / 'mcp.db'}"
    async with AsyncExitStack() as stack:

        async def start() -> Server:
            p = Proctor.in_memory(
                catalog=Catalog(), policy=Approve(), clock=clock, database_url=url
            )
            stack.callback(p.close)
            transport = httpx.ASGITransport(app=create_app(p))
            client = httpx.AsyncClient(transport=transport, base_url="http://proctor")
            await stack.enter_async_context(client)
            return client, p

        yield start


async def approved_after_a_restart(servers: Callable[[], Any]) -> tuple[Server, str, str]:
    """Submitted as a read-only tool's call; approved on a restarted server: queued."""
    client, first = await servers()
    token = TokenService(first.gateway.store, first.gateway.clock).create(
        name="desk", roles=("agent",)
    )
    auth = {"Authorization": f"Bearer {token.token}"}
    submitted = await client.post("/v1/mcp/calls", json=call(read_only=True), headers=auth)
    assert submitted.status_code == 201, submitted.text
    assert submitted.json()["status"] == "awaiting_approval"
    plan_id: str = submitted.json()["plan_id"]
    restarted = await servers()

    rec = restarted[1].approve(plan_id, "olga", roles=["ops"])

    assert (rec.status.value, rec.lease_owner) == ("running", None)  # not checked: no tool
    return restarted, plan_id, token.token


class TestRetryAfterARestart:
    async def test_the_same_tool_is_told_to_run(self, servers):
        """The baseline: registered again as it was, the call is handed over."""
        (client, _), plan_id, token = await approved_after_a_restart(servers)

        retry = await client.post(
            "/v1/mcp/calls", json=call(read_only=True), headers={"Authorization": f"Bearer {token}"}
        )

        assert retry.status_code == 200, retry.text
        assert (retry.json()["plan_id"], retry.json()["status"]) == (plan_id, "running")

    async def test_a_tool_no_longer_read_only_expires_the_plan_instead_of_running(self, servers):
        """Its category changed (read -> general): expired with the reason, never "running"."""
        (client, p), plan_id, token = await approved_after_a_restart(servers)

        retry = await client.post(
            "/v1/mcp/calls",
            json=call(read_only=False),
            headers={"Authorization": f"Bearer {token}"},
        )

        assert retry.status_code == 200, retry.text
        assert (retry.json()["plan_id"], retry.json()["status"]) == (plan_id, "expired")
        rec = p.get(plan_id)
        assert rec.error == INPUTS_CHANGED
        kinds = [e.type for e in p.events(plan_id=plan_id)]
        assert kinds[-1] == "plan.expired"
        assert "step.started" not in kinds
