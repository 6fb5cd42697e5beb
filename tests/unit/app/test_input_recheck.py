"""The configuration a decision was made from, checked again before a waiting plan runs.

Regression: a confirmation or approval re-checked the policy bundle's version and the params,
but not the facts the policy decided from: an action moved to another category (whose
approvers differ), or a lower ``hybrid_max`` (which sends the plan to approvers), and the plan
decided under the old facts still ran on the old decision.

A "restart with other settings" is a second instance on the same SQLite database; a catalog
change in a running process is ``Proctor.add_action(..., replace=True)``, as MCP proxies do.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pyotp
import pytest

from proctor import Proctor
from proctor.app.gateway import GatewayOptions
from proctor.core.assessment import Thresholds
from proctor.core.lifecycle import PlanStatus, StepStatus
from proctor.errors import ConflictError
from proctor.testing import FrozenClock, make_plan

BIG_PAYMENT = ("travel.pay", {"amount": 640_000, "currency": "EUR", "traveller": "alice"})
SUBSCRIPTION = ("billing.change_subscription", {"customer": "cust-42", "plan": "pro"})


class Instances:
    """Instances (default policy, starter catalog) on one SQLite database, one after another."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.clock = FrozenClock()
        self.open: list[Proctor] = []

    def start(self, **opts: Any) -> Proctor:
        for p in self.open:
            p.close()
        p = Proctor.in_memory(
            clock=self.clock, database_url=self.url, options=GatewayOptions(**opts)
        )
        self.open = [p]
        return p


@pytest.fixture
def instances(tmp_path):
    inst = Instances(f"sqlite:///{tmp_path}/proctor.db")
    yield inst
    for p in inst.open:
        p.close()


@pytest.fixture
def world():
    """One instance (default policy, starter catalog) and fiona's step-up enrolment."""
    clock = FrozenClock()
    p = Proctor.in_memory(clock=clock)
    secret, _ = p.enrol_totp("fiona")
    yield p, clock, pyotp.TOTP(secret)
    p.close()


def reload(p: Proctor, name: str, **changes: Any) -> None:
    """Replace an action's entry in the running catalog (as a reload would)."""
    spec = p.gateway.catalog.require(name)
    p.add_action(dataclasses.replace(spec, **changes), replace=True)


def types(p: Proctor, plan_id: str) -> list[str]:
    return [e.type for e in p.events(plan_id=plan_id)]


def strip_digest(p: Proctor, plan_id: str) -> None:
    """Store the plan as a version before the input digest did (no ``input_digest``)."""
    rec = p.get(plan_id)
    decision = {k: v for k, v in rec.decision.items() if k != "input_digest"}
    with p.gateway.store.transaction() as tx:
        tx.save_plan(dataclasses.replace(rec, decision=decision))


class TestTheDigest:
    def test_a_decision_stores_the_digest_of_what_it_was_made_from(self, world):
        """Same configuration, same digest; another category, another digest."""
        p, _, _ = world
        a = p.submit(make_plan([BIG_PAYMENT], agent_id="bot"))
        b = p.submit(make_plan([BIG_PAYMENT], agent_id="other-bot", intent="again"))

        reload(p, "travel.pay", category="pii")
        now = p.gateway._input_digest_now([(s.action, s.params) for s in a.steps])

        assert a.decision["input_digest"].startswith("sha256:")
        assert a.decision["input_digest"] == b.decision["input_digest"]
        assert now != a.decision["input_digest"]


class TestApprove:
    def test_an_action_moved_to_another_category_expires_the_plan(self, world):
        """travel.pay is now personal data (hr approves): finance's approval must not run it."""
        p, clock, totp = world
        plan = p.submit(make_plan([BIG_PAYMENT], agent_id="bot", plan_id="c-1"))
        assert plan.status is PlanStatus.AWAITING_APPROVAL
        reload(p, "travel.pay", category="pii")

        with pytest.raises(ConflictError) as refused:
            p.approve("c-1", "fiona", roles=["finance"], otp=totp.at(clock.now()))

        assert refused.value.field == "policy_input"
        assert "new plan_id" in (refused.value.hint or "")
        rec = p.get("c-1")
        assert rec.status is PlanStatus.EXPIRED
        assert [s.status for s in rec.steps] == [StepStatus.SKIPPED]
        assert types(p, "c-1")[-1] == "plan.expired"
        assert "approval.granted" not in types(p, "c-1")

    def test_the_step_up_code_is_checked_after_it_and_not_used_up(self, world):
        """The refusal comes before the code is checked: no stepup event, the code unspent."""
        p, clock, totp = world
        plan = p.submit(make_plan([BIG_PAYMENT], agent_id="bot", plan_id="c-2"))
        other = p.submit(make_plan([BIG_PAYMENT], agent_id="bot", plan_id="c-3"))
        code = totp.at(clock.now())
        reload(p, "travel.pay", cost=1)  # the amount the policy reads changes

        with pytest.raises(ConflictError, match="have changed"):
            p.approve(plan.plan_id, "fiona", roles=["finance"], otp=code)
        reload(p, "travel.pay", cost=0)
        done = p.approve(other.plan_id, "fiona", roles=["finance"], otp=code)

        assert done.status is PlanStatus.SUCCEEDED
        assert "stepup.failed" not in [e.type for e in p.events()]

    def test_an_unchanged_configuration_after_a_restart_runs(self, instances):
        """A restart with the same catalog and settings is no change."""
        before = instances.start()
        before.submit(make_plan([SUBSCRIPTION], agent_id="bot", plan_id="c-4"))
        after = instances.start()

        done = after.confirm("c-4", "alice")

        assert done.status is PlanStatus.SUCCEEDED


class TestConfirm:
    def test_a_lower_hybrid_max_after_a_restart_expires_the_plan(self, instances):
        """Total 13 was hybrid under 15 (confirm); under 12 a supervisor must approve."""
        before = instances.start()
        plan = before.submit(make_plan([SUBSCRIPTION], agent_id="bot", plan_id="c-5"))
        assert plan.status is PlanStatus.AWAITING_CONFIRMATION
        after = instances.start(thresholds=Thresholds(hybrid_max=12))

        with pytest.raises(ConflictError) as refused:
            after.confirm("c-5", "alice")

        assert refused.value.field == "policy_input"
        rec = after.get("c-5")
        assert rec.status is PlanStatus.EXPIRED
        assert "confirmation.granted" not in types(after, "c-5")
        assert "step.started" not in types(after, "c-5")


class TestStoredWithoutDigest:
    def test_it_runs_when_the_policy_now_routes_it_the_same(self, instances):
        """A plan of an older version is asked again: no stricter now, it runs."""
        before = instances.start()
        before.submit(make_plan([SUBSCRIPTION], agent_id="bot", plan_id="c-6"))
        strip_digest(before, "c-6")
        after = instances.start()

        done = after.confirm("c-6", "alice")

        assert done.status is PlanStatus.SUCCEEDED

    def test_it_expires_when_the_policy_now_routes_it_stricter(self, instances):
        """Under a lower hybrid_max the policy now wants approvers: the plan expires."""
        before = instances.start()
        before.submit(make_plan([SUBSCRIPTION], agent_id="bot", plan_id="c-7"))
        strip_digest(before, "c-7")
        after = instances.start(thresholds=Thresholds(hybrid_max=12))

        with pytest.raises(ConflictError) as refused:
            after.confirm("c-7", "alice")

        assert refused.value.field == "policy_input"
        assert after.get("c-7").status is PlanStatus.EXPIRED
        reason = [
            json.loads(e.body)["data"]["reason"]
            for e in after.events(plan_id="c-7")
            if e.type == "plan.expired"
        ]
        assert reason == ["the catalog or settings the policy decided from changed"]
