"""KPIs against hand-built event histories with known answers, and from a live instance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from proctor import Proctor
from proctor.app.gateway import GatewayOptions
from proctor.app.kpis import compute, from_store, look_back
from proctor.core.catalog import Catalog
from proctor.testing import FrozenClock, RecordingTool, make_plan

T0 = datetime(2026, 11, 1, tzinfo=UTC)
LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}


class History:
    """Builds event bodies the way the journal writes them (only the fields KPIs read)."""

    def __init__(self):
        self.events = []
        self.t = T0

    def at(self, minutes):
        self.t = T0 + timedelta(minutes=minutes)
        return self

    def ev(self, type_, pid=None, *, agent="bot", user="alice", data=None, actions=(), **extra):
        body = {
            "type": type_,
            "timestamp": self.t.isoformat(),
            "plan_id": pid,
            "actor": {"agent_id": agent, "model_version": "m-1"},
            "user_id": user,
            "actions_attempted": [{"api": a} for a in actions],
            "data": data or {},
            "policy_version": "sha256:p",
            "signature": "sig",
            "trace_id": "t" * 32,
        }
        body.update(extra)
        self.events.append(body)

    def plan(
        self,
        pid,
        *,
        actions=("shop.buy",),
        status="succeeded",
        agent="bot",
        user="alice",
        cost=0,
        sandbox=False,
        trace=True,
    ):
        self.ev("plan.submitted", pid, agent=agent, user=user, actions=actions)
        self.ev("policy.decided", pid, agent=agent, user=user)
        self.ev("plan.routed", pid, agent=agent, user=user, data={"sandbox": sandbox})
        if status in ("succeeded", "undone"):
            for a in actions:
                extra = {} if trace else {"trace_id": None}
                self.ev(
                    "step.succeeded",
                    pid,
                    agent=agent,
                    user=user,
                    actions=[a],
                    data={"cost": cost} if cost else {},
                    **extra,
                )
            self.ev("plan.finished", pid, agent=agent, user=user, data={"status": "succeeded"})


def kpis(events, by=None, days=30):
    return compute(events, since=T0, until=T0 + timedelta(days=days), by=by)


class TestKnownAnswers:
    def test_acceptance_false_actions_and_recovery(self):
        h = History()
        for i in range(8):
            h.at(i).plan(f"p{i}")
        h.at(10).plan("p8", status="denied")  # proposed, not accepted
        h.at(11).plan("p9", status="awaiting")  # proposed, not (yet) executed
        h.at(20).ev("undo.requested", "p0")
        h.at(22).ev("plan.finished", "p0", data={"status": "undone"})  # 120 s to recover
        h.at(30).ev("complaint.filed", "p1", data={"reason": "wrong"})
        h.at(31).ev("review.marked", "p2", data={"verdict": "wrong"})
        h.at(32).ev("review.marked", "p3", data={"verdict": "fine"})
        k = kpis(h.events)["all"]
        assert k["counts"]["proposed"] == 10
        assert k["counts"]["accepted"] == 5  # p3..p7
        assert k["acceptance_rate"] == 0.5
        assert k["counts"]["executed_plans"] == 8
        assert k["false_action_rate"] == 3 / 8
        assert k["time_to_recovery_s"] == {"median": 120.0, "max": 120.0, "count": 1}

    def test_coverage_and_cost(self):
        h = History()
        h.plan("a", cost=100)
        h.plan("b", cost=300)
        h.plan("c", trace=False)  # no trace id: not full provenance
        k = kpis(h.events)["all"]
        assert k["counts"]["executed_steps"] == 3
        assert k["audit_coverage"] == round(2 / 3, 4)
        assert k["cost_per_action"] == round(400 / 3, 2)

    def test_groups_by_agent_action_user(self):
        h = History()
        h.plan("a", agent="bot1", user="u1", actions=("x.one",))
        h.plan("b", agent="bot2", user="u2", actions=("x.one", "x.two"))
        h.ev("complaint.filed", "b")
        by_agent = kpis(h.events, by="agent")
        assert set(by_agent) == {"bot1", "bot2"}
        assert by_agent["bot2"]["false_action_rate"] == 1.0
        assert by_agent["bot1"]["false_action_rate"] == 0.0
        by_action = kpis(h.events, by="action")
        assert by_action["x.one"]["counts"]["executed_steps"] == 2
        assert by_action["x.two"]["counts"]["executed_steps"] == 1
        assert set(kpis(h.events, by="user")) == {"u1", "u2"}

    def test_period_bounds_and_anomaly_delta(self):
        h = History()
        h.at(-60 * 24 * 10).ev("anomaly.detected", data={"agent_id": "bot"})  # period before
        h.at(-60 * 24 * 40).ev("anomaly.detected", data={"agent_id": "bot"})  # too early
        h.at(5).ev("anomaly.detected", data={"agent_id": "bot"})
        h.at(6).ev("anomaly.detected", data={"agent_id": "bot"})
        h.at(-5).plan("old")  # before the period: not counted
        h.at(60 * 24 * 31).plan("late")  # after it
        k = kpis(h.events)["all"]
        assert k["anomaly_delta"] == 1
        assert k["counts"]["proposed"] == 0
        assert k["acceptance_rate"] is None

    def test_a_period_reaching_back_to_year_one_is_clamped_not_an_overflow(self):
        """since=0001-01-01: the look-back before it is clamped; the figures are the same."""
        h = History()
        h.at(5).plan("p")
        first = datetime(1, 1, 1, tzinfo=UTC)

        k = compute(h.events, since=first, until=T0 + timedelta(days=30))["all"]

        assert k["counts"]["proposed"] == 1
        assert look_back(first + timedelta(days=4), timedelta(days=30)) == first
        assert look_back(T0, timedelta(days=1)) == T0 - timedelta(days=1)

    def test_empty_period_and_bad_grouping(self):
        assert kpis([])["all"]["acceptance_rate"] is None
        with pytest.raises(ValueError, match="by must be"):
            kpis([], by="planet")


class TestLiveInstance:
    def test_undo_counts_as_a_false_action_with_its_recovery_time(self):
        class Everything:
            version = "sha256:e"

            def evaluate(self, input):
                return {
                    "steps": {
                        s["id"]: {"outcome": "execute", "undo_window": 600} for s in input["steps"]
                    },
                    "plan": {},
                }

        clock = FrozenClock(T0 + timedelta(days=1))
        p = Proctor.in_memory(
            catalog=Catalog(), policy=Everything(), clock=clock, options=GatewayOptions()
        )
        p.action(
            "shop.buy",
            category="general",
            baselines=LOW,
            reversible=True,
            compensate=RecordingTool(),
            cost=250,
        )(RecordingTool())
        first = p.submit(make_plan([("shop.buy", {})]))
        p.submit(make_plan([("shop.buy", {})]))
        clock.advance(30)
        p.undo(first.plan_id, "alice")
        k = from_store(p.gateway.store, since=T0, until=T0 + timedelta(days=2))["all"]
        assert k["counts"]["executed_plans"] == 2
        assert k["false_action_rate"] == 0.5
        assert k["acceptance_rate"] == 0.5
        assert k["cost_per_action"] == 250
        assert k["time_to_recovery_s"]["count"] == 1
        assert k["audit_coverage"] == 0.0  # tracing is off: no trace ids
