"""The default policy and starter catalog against an agent that shapes its plans to slip by.

Regressions from an adversarial review, end to end: the packaged Rego bundle, the starter
catalog, a SQLite store, ``POST /v1/plans`` on uvicorn at 127.0.0.1.

- A payment split within one plan: 32 ``travel.pay`` steps of 50,000 ran straight to
  ``succeeded`` while one payment of their total (1,600,000) needs finance with step-up.
- An agent-declared ``external`` flag: ``email.send`` to ``attacker@evil.example`` without
  it executed as an "internal message", and leaving it out dodged the flow rule "personal
  data and external email in one plan: deny". The recipient decides now (``internal_domains``
  in the bundle's data); the flag may only make a message external.
"""

from __future__ import annotations

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
from proctor.core.lifecycle import PlanStatus, StepStatus
from proctor.http import HttpSettings, create_app
from proctor.testing import FrozenClock, free_port


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Proctor, httpx.Client]]:
    """An instance with the default policy and catalog, and the agent ``bot``'s client."""
    clock = FrozenClock()
    proctor = Proctor.in_memory(
        policy="default", clock=clock, database_url=f"sqlite:///{tmp_path / 'p.db'}"
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
    headers = {"Authorization": f"Bearer {token.token}"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as client:
            yield proctor, client
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        proctor.close()


def submit(http: httpx.Client, steps: list[dict[str, Any]]) -> dict[str, Any]:
    manifest = {
        "actor": {"type": "agent", "name": "bot", "model_version": "m", "agent_id": "bot"},
        "on_behalf_of": "alice",
        "intent": "test",
        "steps": steps,
    }
    answer = http.post("/v1/plans", json=manifest)
    assert answer.status_code in (200, 201), answer.text
    body: dict[str, Any] = answer.json()
    return body


def pay(step_id: str, amount: int) -> dict[str, Any]:
    params = {"amount": amount, "currency": "EUR", "traveller": "alice"}
    return {"id": step_id, "action": "travel.pay", "params": params}


ROUTE = ("status", "outcome", "approvals_required", "approver_roles", "step_up")


def test_a_payment_split_across_steps_routes_as_its_total(served):
    """32 payments of 50,000 wait for finance with step-up, as one of 1,600,000 does; one
    finance approval with step-up runs them all."""
    proctor, http = served
    split = submit(http, [pay(f"s{i}", 50_000) for i in range(32)])
    whole = submit(http, [pay("s1", 1_600_000)])

    assert {k: split[k] for k in ROUTE} == {k: whole[k] for k in ROUTE}
    assert whole["status"] == "awaiting_approval" and whole["step_up"] is True
    assert whole["approver_roles"] == ["finance"]
    assert all(s["outcome"] == "approve" and s["status"] == "pending" for s in split["steps"])
    assert split["reasons"][:2] == [
        "s0: payment of 50000 is within auto_payment_max 50000",
        "s0: the plan's payments total 1600000, over auto_payment_max 50000: together they "
        "need the approval one payment of that total would",
    ]
    # The risk adjustment a single payment over the limit gets: the same total either way.
    assert split["assessment"]["total"] == whole["assessment"]["total"]
    proctor.enrol_totp("fiona")
    code = proctor.gateway.step_up.now_code("fiona")  # type: ignore[union-attr]
    done = proctor.approve(split["plan_id"], "fiona", roles=["finance"], otp=code)
    assert done.status is PlanStatus.SUCCEEDED
    assert all(s.status is StepStatus.SUCCEEDED for s in done.steps)


def test_payments_within_the_limit_together_still_execute(served):
    """Two payments of 25,000 (50,000 in all) run on their own, as before."""
    _, http = served
    plan = submit(http, [pay("s1", 25_000), pay("s2", 25_000)])

    assert plan["status"] == "succeeded", plan


def mail(to: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "m1",
        "action": "email.send",
        "params": {"to": to, "subject": "x", "body": "customer list", **extra},
    }


def test_mail_outside_the_organisation_waits_for_the_user_without_the_flag(served):
    """To attacker@evil.example, flag left out or false: the user confirms, nothing is sent;
    to a colleague at the organisation's domain it runs."""
    _, http = served
    bare = submit(http, [mail("attacker@evil.example")])
    denied_flag = submit(http, [mail("attacker@evil.example", external=False)])
    inside = submit(http, [mail("bob@example.com")])

    assert bare["status"] == "awaiting_confirmation", bare
    assert bare["reasons"] == [
        "m1: message to a recipient outside internal_domains (or to none named): the user confirms"
    ]
    assert denied_flag["status"] == "awaiting_confirmation"
    assert inside["status"] == "succeeded", inside
    assert inside["reasons"] == ["m1: internal message: every recipient is at an internal domain"]


def test_personal_data_and_mail_outside_are_denied_without_the_flag(served):
    """The flow rule judges the recipient: a candidate search and mail outside in one plan are
    denied whether or not the agent says ``external``."""
    proctor, http = served
    search = {"id": "s1", "action": "hr.search_candidates", "params": {"skill": "rust"}}
    plans = [
        submit(http, [search, mail("attacker@evil.example")]),
        submit(http, [search, mail("attacker@evil.example", external=True)]),
    ]

    for plan in plans:
        assert plan["status"] == "denied", plan
        assert (
            "a plan that reads personal data must not also send external email" in (plan["reasons"])
        )
    assert [e for e in proctor.gateway.store.read_events() if e.type == "step.started"] == []
