"""``@governed`` in process and over HTTP (the real ASGI app through the real client)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn

from proctor import Proctor
from proctor.app.tokens import TokenService
from proctor.client import ProctorClient
from proctor.http import create_app
from proctor.integrations import ApprovalPending, ToolDenied, ToolFailed, governed
from proctor.testing import FrozenClock

SCHEMA = {
    "type": "object",
    "properties": {"amount": {"type": "integer"}, "customer": {"type": "string"}},
    "required": ["amount", "customer"],
    "additionalProperties": False,
}


class Refunds:
    """amount < 100 execute, >= 10,000 deny, else approve (a fake policy engine)."""

    version = "sha256:refunds"

    def evaluate(self, input):
        steps = {}
        for s in input["steps"]:
            amount = s["params"].get("amount", 0)
            if amount < 100:
                steps[s["id"]] = {"outcome": "execute", "reasons": ["small refund"]}
            elif amount >= 10_000:
                steps[s["id"]] = {
                    "outcome": "deny",
                    "reasons": ["refunds of 10,000 or more are not allowed"],
                }
            else:
                steps[s["id"]] = {
                    "outcome": "approve",
                    "reasons": ["refund needs finance"],
                    "approvals": 1,
                    "approver_roles": ["finance"],
                }
        return {"steps": steps, "plan": {}}


@pytest.fixture
def proctor():
    return Proctor.in_memory(policy=Refunds(), clock=FrozenClock())


def test_in_process(proctor):
    calls = []

    @governed(
        proctor,
        action="payments.refund_x",
        agent_id="bot",
        on_behalf_of="alice",
        category="financial",
        params_schema=SCHEMA,
    )
    def refund(amount: int, customer: str) -> dict:
        calls.append((amount, customer))
        return {"refunded": amount}

    assert refund(amount=50, customer="c1") == {"refunded": 50}
    with pytest.raises(ToolDenied, match="10,000 or more"):
        refund(amount=20_000, customer="c1")
    with pytest.raises(ApprovalPending) as pending:
        refund(amount=500, customer="c2")
    assert calls == [(50, "c1")]
    proctor.approve(pending.value.plan_id, "fiona", roles=["finance"])
    assert refund(plan_id=pending.value.plan_id) == {"refunded": 500}
    assert calls == [(50, "c1"), (500, "c2")]
    types = [e.type for e in proctor.events()]
    assert types.count("plan.submitted") == 3 and "step.succeeded" in types
    assert proctor.verify().ok


def test_a_failing_tool_is_a_tool_error(proctor):
    @governed(proctor, action="payments.flaky", agent_id="bot", on_behalf_of="alice")
    def flaky(amount: int) -> None:
        raise RuntimeError("the bank is down")

    with pytest.raises(ToolFailed, match="the bank is down"):
        flaky(amount=1)


@pytest.mark.server
def test_over_http(proctor):
    # The server's catalog holds the action and its handler; the client submits and reads.
    @governed(
        proctor,
        action="payments.refund_x",
        agent_id="bot",
        on_behalf_of="alice",
        params_schema=SCHEMA,
    )
    def refund_server(amount: int, customer: str) -> dict:
        return {"refunded": amount, "by": "server"}

    tokens = TokenService(proctor.gateway.store, proctor.gateway.clock)
    bot = tokens.create(name="bot", roles=["agent"]).token
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(proctor), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.started
    try:
        with ProctorClient(f"http://127.0.0.1:{port}", bot) as remote:

            @governed(remote, action="payments.refund_x", agent_id="bot", on_behalf_of="alice")
            def refund(amount: int, customer: str) -> dict:
                """Runs on the server."""
                raise AssertionError("never called on the client")

            assert refund(amount=7, customer="c9") == {"refunded": 7, "by": "server"}
            with pytest.raises(ToolDenied, match="10,000"):
                refund(amount=50_000, customer="c9")
            with pytest.raises(ApprovalPending) as pending:
                refund(amount=700, customer="c9")
            proctor.approve(pending.value.plan_id, "fiona", roles=["finance"])
            assert refund(plan_id=pending.value.plan_id) == {"refunded": 700, "by": "server"}
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()
