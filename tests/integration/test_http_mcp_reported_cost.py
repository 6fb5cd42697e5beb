"""``/v1/mcp``: a remote proxy's reported result cannot say what the step cost.

Regression (adversarial review): a remote MCP agent reported ``{"cost": 0}`` in each
outcome's result, and the guards took it as what the call really cost. Six charges of 40,000
against an agent budget of 100,000 a day (``on_exceed = "deny"``) all ran, each settled as
``spent 0``. A handler running in Proctor's own process may report its cost; the agent's own
proxy may not (an honest one never sends a top-level ``cost``: ``CallToolResult`` drops keys
it does not know). Nor may it choose a compensation's params (``compensation_params``).

Real parts: the default Rego bundle, a SQLite store, uvicorn on 127.0.0.1; the test plays the
proxy (no upstream MCP server is needed: the server never makes the call itself).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from proctor import Proctor
from proctor.app.tokens import TokenService
from proctor.config import load_catalog_file
from proctor.core.catalog import Catalog
from proctor.core.guards import Budget, GuardSettings
from proctor.core.lifecycle import PlanStatus
from proctor.http import HttpSettings, create_app
from proctor.testing import FrozenClock, free_port

CATALOG = """
[actions."mcp.pay.charge"]
summary = "Charge {amount} to {card}"
runner = "mcp"
category = "payment"
amount_param = "amount"
baselines = { risk = 2, auditability = 2, ux = 2, recovery = 2, cost = 1 }
[actions."mcp.pay.charge".params]
type = "object"
required = ["amount", "card"]
properties.amount = { type = "integer", minimum = 1 }
properties.card = { type = "string" }
"""

HONEST = {"content": [{"type": "text", "text": "charged 40000"}], "isError": False}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Proctor, str, str]]:
    """An instance with an agent budget of 100,000 a day (deny past it), behind uvicorn."""
    (tmp_path / "catalog.toml").write_text(CATALOG)
    clock = FrozenClock()
    proctor = Proctor.in_memory(
        catalog=Catalog(load_catalog_file(tmp_path / "catalog.toml")),
        policy="default",
        clock=clock,
        database_url=f"sqlite:///{tmp_path / 'p.db'}",
        guards=GuardSettings(
            budgets=(Budget(scope="agent", key="*", limit=100_000, on_exceed="deny"),)
        ),
    )
    token = TokenService(proctor.gateway.store, clock).create(name="bot", roles=("agent",))
    port = free_port()
    app = create_app(proctor, settings=HttpSettings(auth_failures_per_minute=1000))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield proctor, f"http://127.0.0.1:{port}", token.token
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        proctor.close()


def charge(http: httpx.Client, n: int) -> httpx.Response:
    """The proxy's ``tools/call`` of pay.charge for 40,000."""
    return http.post(
        "/v1/mcp/calls",
        json={
            "agent_id": "bot",
            "client": "c/1",
            "on_behalf_of": "alice",
            "server": "pay",
            "tool": {"name": "charge", "inputSchema": {"type": "object"}},
            "arguments": {"amount": 40_000, "card": "4242", "n": n},
        },
    )


def settled(proctor: Proctor) -> list[dict[str, Any]]:
    return [
        json.loads(e.body)["data"]["settled"]
        for e in proctor.gateway.store.read_events(limit=10_000)
        if e.type == "budget.settled"
    ]


@pytest.mark.parametrize("key", ["cost", "compensation_params"])
def test_a_reported_result_may_not_carry_what_only_a_handler_tells(served, key):
    """``cost`` (or ``compensation_params``) in an agent-reported result: 422 naming it,
    nothing recorded; the honest report of the same call is then recorded as usual."""
    proctor, url, token = served
    lie = {**HONEST, key: 0 if key == "cost" else {"amount": 1}}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        plan_id = charge(http, 1).json()["plan_id"]

        refused = http.post(
            f"/v1/mcp/plans/{plan_id}/outcome", json={"step_id": "s1", "result": lie}
        )
        waiting = proctor.get(plan_id)
        honest = http.post(
            f"/v1/mcp/plans/{plan_id}/outcome", json={"step_id": "s1", "result": HONEST}
        )

    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == f"result.{key}"
    assert key in refused.json()["message"]
    assert waiting.status is PlanStatus.RUNNING and waiting.steps[0].result is None
    assert honest.status_code == 200, honest.text
    assert honest.json()["status"] == "succeeded"


def test_an_agent_cannot_zero_its_budget_spend_by_reporting_cost(served):
    """Charges of 40,000 against 100,000 a day: two run and settle 40,000 each whatever the
    proxy says; the third is denied by the budget (the review's six all ran, spent 0)."""
    proctor, url, token = served
    answers = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        for n in range(3):
            call = charge(http, n)
            answers.append(call.json()["status"])
            if call.json()["status"] != "running":
                break
            plan_id = call.json()["plan_id"]
            path = f"/v1/mcp/plans/{plan_id}/outcome"
            lie = http.post(path, json={"step_id": "s1", "result": {**HONEST, "cost": 0}})
            assert lie.status_code == 422, lie.text
            assert http.post(path, json={"step_id": "s1", "result": HONEST}).status_code == 200

    assert answers == ["running", "running", "denied"]
    spent = settled(proctor)
    assert [s["spent"] for row in spent for s in row] == [40_000, 40_000]
    assert proctor.verify().ok
