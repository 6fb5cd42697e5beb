"""Guards end to end through the gateway, on memory and SQLite stores."""

from __future__ import annotations

from datetime import timedelta

import pytest

from proctor import Proctor
from proctor.app.gateway import GatewayOptions
from proctor.core.catalog import Catalog
from proctor.core.guards import (
    AnomalySettings,
    AutonomySettings,
    BreakerSettings,
    Budget,
    GuardSettings,
    RateLimit,
)
from proctor.core.lifecycle import PlanStatus
from proctor.errors import ConflictError, InvalidRequestError, NotFoundError
from proctor.testing import FrozenClock, RecordingTool, make_plan

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}
AMOUNT = {
    "type": "object",
    "properties": {"amount": {"type": "integer", "minimum": 0}},
    "additionalProperties": False,
}


class Scripted:
    """Executes everything, except actions listed as confirm/approve (a fake, not a mock)."""

    version = "sha256:scripted-guards"

    def __init__(self, outcomes=None):
        self.outcomes = outcomes or {}
        self.inputs = []

    def evaluate(self, input):
        self.inputs.append(input)
        steps = {}
        for s in input["steps"]:
            o = self.outcomes.get(s["action"], "execute")
            d = {"outcome": o, "reasons": [f"{s['action']}: {o}"]}
            if o == "approve":
                d |= {"approvals": 1, "approver_roles": ["finance"]}
            steps[s["id"]] = d
        return {"steps": steps, "plan": {}}


@pytest.fixture(params=["memory", "sqlite"])
def url(request, tmp_path):
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'g.db'}"


def make(url, clock=None, policy=None, **guards):
    p = Proctor.in_memory(
        catalog=Catalog(),
        policy=policy or Scripted(),
        clock=clock or FrozenClock(),
        options=GatewayOptions(),
        database_url=url,
        guards=GuardSettings(**guards),
    )
    tools = {}
    for name in ("shop.buy", "shop.read", "shop.flaky"):
        tools[name] = RecordingTool(
            fail_with=RuntimeError("down") if name == "shop.flaky" else None
        )
        p.action(name, category="general", baselines=LOW, params=AMOUNT, amount_param="amount")(
            tools[name]
        )
    return p, tools


def plan(action="shop.buy", amount=0, agent="bot", user="alice", n=1):
    return make_plan([(action, {"amount": amount})] * n, agent_id=agent, on_behalf_of=user)


def types(p, plan_id=None):
    return [e.type for e in p.gateway.store.read_events(plan_id=plan_id, limit=100_000)]


class TestKillSwitch:
    def test_global_agent_and_action_switches(self, url):
        p, tools = make(url)
        p.kill("global", by="ops", reason="incident 42")
        rec = p.submit(plan())
        assert rec.status is PlanStatus.DENIED
        assert rec.decision["plan_reasons"] == ["kill switch global is engaged: incident 42"]
        assert tools["shop.buy"].calls == []
        assert p.unkill("global", by="ops") is True
        assert p.unkill("global", by="ops") is False
        p.kill("agent", "bot", by="ops")
        assert p.submit(plan()).status is PlanStatus.DENIED
        assert p.submit(plan(agent="other")).status is PlanStatus.SUCCEEDED
        p.kill("action", "shop.read", by="ops")
        assert p.submit(plan("shop.read", agent="other")).status is PlanStatus.DENIED
        assert {"kill.engaged", "kill.released", "guard.killed"} <= set(types(p))
        assert p.verify().ok

    def test_kill_between_approval_and_execution_stops_it(self, url):
        p, _tools = make(url, policy=Scripted({"shop.buy": "approve"}))
        rec = p.submit(plan())
        assert rec.status is PlanStatus.AWAITING_APPROVAL
        p.kill("action", "shop.buy", by="ops")
        with pytest.raises(ConflictError, match="kill switch"):
            p.approve(rec.plan_id, "fiona", roles=["finance"])
        assert p.get(rec.plan_id).status is PlanStatus.AWAITING_APPROVAL
        p.unkill("action", "shop.buy", by="ops")
        assert p.approve(rec.plan_id, "fiona", roles=["finance"]).status is PlanStatus.SUCCEEDED

    def test_bad_switch_names_the_field(self, url):
        p, _ = make(url)
        with pytest.raises(InvalidRequestError) as e:
            p.kill("agent", None, by="ops")
        assert e.value.field == "key"  # the name is what is missing, not the scope


class TestWhitelist:
    def test_an_agent_limited_to_some_actions(self, url):
        p, _ = make(url)
        p.guards.set_whitelist("bot", ["shop.read"], by="ops")
        assert p.submit(plan("shop.read")).status is PlanStatus.SUCCEEDED
        denied = p.submit(plan("shop.buy"))
        assert denied.status is PlanStatus.DENIED
        assert "guard.whitelist_denied" in types(p, denied.plan_id)
        p.guards.set_whitelist("bot", None, by="ops")
        assert p.submit(plan("shop.buy")).status is PlanStatus.SUCCEEDED
        with pytest.raises(InvalidRequestError):
            p.guards.set_whitelist("bot", ["no.such"], by="ops")


class TestRateLimits:
    def test_per_agent_limit_in_a_sliding_window(self, url):
        clock = FrozenClock()
        p, _ = make(url, clock, rate_limits=(RateLimit(scope="agent", key="*", limit=2),))
        assert p.submit(plan()).status is PlanStatus.SUCCEEDED
        assert p.submit(plan()).status is PlanStatus.SUCCEEDED
        third = p.submit(plan())
        assert third.status is PlanStatus.DENIED
        assert "guard.rate_limited" in types(p, third.plan_id)
        assert p.submit(plan(agent="other")).status is PlanStatus.SUCCEEDED  # per agent
        clock.advance(timedelta(minutes=2))
        assert p.submit(plan()).status is PlanStatus.SUCCEEDED

    def test_per_action_limit_counts_steps(self, url):
        p, _ = make(url, rate_limits=(RateLimit(scope="action", key="shop.buy", limit=3),))
        assert p.submit(plan(n=3)).status is PlanStatus.SUCCEEDED
        assert p.submit(plan()).status is PlanStatus.DENIED
        assert p.submit(plan("shop.read")).status is PlanStatus.SUCCEEDED


class TestBudgets:
    def test_over_budget_routes_to_approval_and_releases_on_reject(self, url):
        p, _tools = make(url, budgets=(Budget(scope="agent", key="*", limit=1000),))
        assert p.submit(plan(amount=600)).status is PlanStatus.SUCCEEDED
        over = p.submit(plan(amount=600))
        assert over.status is PlanStatus.AWAITING_APPROVAL
        assert any("budget budget:agent:bot" in r for r in over.decision["steps"][0]["reasons"])
        assert "budget.exceeded" in types(p, over.plan_id)
        # Its reservation holds until it ends: a small plan now also exceeds.
        assert p.submit(plan(amount=300)).status is PlanStatus.AWAITING_APPROVAL
        p.reject(over.plan_id, "fiona", roles=["supervisor"])
        assert "budget.released" in types(p, over.plan_id)
        spent = p.guards.store.counter_sum(
            "budget:agent:bot", p.gateway.clock.now().strftime("%Y-%m-%d")
        )
        assert spent[1] == 600 + 300  # the rejected 600 was released; the waiting 300 holds

    def test_deny_on_exceed_and_a_global_budget(self, url):
        p, _ = make(
            url,
            budgets=(Budget(scope="global", key="*", limit=500, on_exceed="deny"),),
        )
        assert p.submit(plan(amount=400, agent="a")).status is PlanStatus.SUCCEEDED
        assert p.submit(plan(amount=200, agent="b")).status is PlanStatus.DENIED
        assert p.submit(plan(amount=100, agent="b")).status is PlanStatus.SUCCEEDED

    @pytest.mark.parametrize("amount", [2000.0, 1e9])
    def test_a_float_amount_cannot_slip_past_a_budget(self, url, amount):
        """A float amount is refused, not counted as 0 against a deny budget.

        Regression: 2000.0 passed the schema's integer type and spent nothing of the budget.
        """
        p, tools = make(
            url, budgets=(Budget(scope="agent", key="*", limit=1000, on_exceed="deny"),)
        )

        with pytest.raises(InvalidRequestError) as ei:
            p.submit(plan(amount=amount))

        assert ei.value.field == "steps[0].params.amount"
        assert tools["shop.buy"].calls == []
        assert types(p) == ["plan.rejected"]

    def test_failed_step_releases_and_tool_cost_settles(self, url):
        p, tools = make(url, budgets=(Budget(scope="user", key="alice", limit=1000),))
        tools["shop.buy"].result = {"ok": True, "cost": 250}  # what it really cost
        assert p.submit(plan(amount=400)).status is PlanStatus.SUCCEEDED
        failed = p.submit(plan("shop.flaky", amount=500))
        assert failed.status is PlanStatus.FAILED
        day = p.gateway.clock.now().strftime("%Y-%m-%d")
        assert p.guards.store.counter_sum("budget:user:alice", day)[1] == 250
        assert {"budget.reserved", "budget.released"} <= set(types(p, failed.plan_id))


class TestBreakers:
    def test_errors_open_the_breaker_then_a_trial_closes_it(self, url):
        clock = FrozenClock()
        settings = BreakerSettings(min_calls=3, error_rate=0.5, open_seconds=60, trials=1)
        p, tools = make(url, clock, breaker=settings)
        for _ in range(3):
            assert p.submit(plan("shop.flaky")).status is PlanStatus.FAILED
        assert "breaker.opened" in types(p)
        status = p.guards.status()["breakers"]
        assert status["action:shop.flaky"]["state"] == "open"
        # While open, execute becomes approve (the agent breaker opened too: any action).
        held = p.submit(plan("shop.read"))
        assert held.status is PlanStatus.AWAITING_APPROVAL
        assert any("circuit breaker" in r for r in held.decision["steps"][0]["reasons"])
        clock.advance(61)
        tools["shop.flaky"].fail_with = None
        assert p.submit(plan("shop.flaky")).status is PlanStatus.SUCCEEDED  # the trial
        assert p.guards.status()["breakers"]["action:shop.flaky"]["state"] == "closed"
        assert "breaker.closed" in types(p)

    def test_policy_sees_open_breakers(self, url):
        pol = Scripted()
        p, _ = make(url, policy=pol, breaker=BreakerSettings(min_calls=1, error_rate=0.5))
        p.submit(plan("shop.flaky"))
        p.submit(plan("shop.read"))
        assert pol.inputs[-1]["guards"]["breakers"]["agent:bot"] == "open"
        assert "guards" not in pol.inputs[0]  # nothing applied yet: nothing added


class TestAnomaly:
    def test_a_burst_escalates_once(self, url):
        p, _ = make(url, anomaly=AnomalySettings(rate_factor=2, min_rate=5))
        for _ in range(8):
            p.submit(plan("shop.read"))
        found = [
            e for e in p.gateway.store.read_events(limit=100_000) if e.type == "anomaly.detected"
        ]
        assert len(found) == 1


class TestAutonomy:
    def test_confirm_level_then_promotion_to_auto(self, url):
        p, _tools = make(url, autonomy=AutonomySettings(min_accepted=2, min_rate=1.0))
        p.guards.set_autonomy("alice", "shop.buy", "confirm", by="alice")
        first = p.submit(plan())
        assert first.status is PlanStatus.AWAITING_CONFIRMATION
        p.confirm(first.plan_id, "alice")
        second = p.submit(plan())
        p.confirm(second.plan_id, "alice")
        assert "autonomy.promotion_suggested" in types(p, second.plan_id)
        assert p.guards.status()["promotions"]["alice|shop.buy"]["to"] == "auto"
        assert p.guards.answer_promotion("alice", "shop.buy", accept=True) == "auto"
        assert p.submit(plan()).status is PlanStatus.SUCCEEDED
        with pytest.raises(NotFoundError):
            p.guards.answer_promotion("alice", "shop.buy", accept=True)

    def test_auto_below_a_tolerance(self, url):
        p, _ = make(url)
        p.guards.set_autonomy("alice", "shop.buy", "auto", below=5000, by="alice")
        assert p.submit(plan(amount=4999)).status is PlanStatus.SUCCEEDED
        assert p.submit(plan(amount=5000)).status is PlanStatus.AWAITING_CONFIRMATION
        with pytest.raises(InvalidRequestError) as e:
            p.submit(plan(amount=5000.0))  # once counted as 0, below the tolerance
        assert e.value.field == "steps[0].params.amount"
        with pytest.raises(InvalidRequestError) as e:
            p.guards.set_autonomy("alice", "shop.buy", "yolo", by="alice")
        assert e.value.field == "level"

    @pytest.mark.parametrize("below", [-1, 2**53, 10**30])
    def test_a_tolerance_out_of_the_json_safe_range_is_refused(self, url, below):
        """below is 0..2**53-1: beyond it is an InvalidRequestError naming it, nothing stored."""
        p, _ = make(url)

        with pytest.raises(InvalidRequestError) as e:
            p.guards.set_autonomy("alice", "shop.buy", "auto", below=below, by="alice")

        assert e.value.field == "below"
        assert p.guards.status()["autonomy"] == {}
        p.guards.set_autonomy("alice", "shop.buy", "auto", below=2**53 - 1, by="alice")


class TestReviewAndComplaints:
    def test_mark_a_sampled_plan_and_file_a_complaint(self, url):
        p, _ = make(url)
        rec = p.submit(plan())
        with pytest.raises(ConflictError):
            p.guards.mark_review(rec.plan_id, "wrong", reviewer="rita")  # not sampled
        import dataclasses

        with p.gateway.store.transaction() as tx:
            tx.save_plan(dataclasses.replace(p.get(rec.plan_id), review=True))
        assert [r.plan_id for r in p.guards.review_queue()] == [rec.plan_id]
        p.guards.mark_review(rec.plan_id, "wrong", reviewer="rita", note="wrong customer")
        assert p.get(rec.plan_id).review_verdict == "wrong"
        assert p.guards.review_queue() == []
        p.guards.complain(rec.plan_id, by="alice", reason="I never asked for this")
        assert {"review.marked", "complaint.filed"} <= set(types(p, rec.plan_id))
        with pytest.raises(InvalidRequestError):
            p.guards.mark_review(rec.plan_id, "meh", reviewer="rita")
        assert p.verify().ok
