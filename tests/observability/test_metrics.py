"""Prometheus counters fed by audit events, and gauges read from the store at scrape."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import timedelta
from typing import ClassVar

import orjson
import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from proctor import Proctor
from proctor.app.gateway import GatewayOptions
from proctor.app.metrics import MetricsListener, StoreCollector
from proctor.core.catalog import Catalog
from proctor.core.guards import Budget, GuardSettings, RateLimit
from proctor.core.notifications import Delivery, DeliveryStatus
from proctor.errors import ConflictError
from proctor.testing import FrozenClock, RecordingTool, make_plan

from .conftest import LOW, T0, History


def value(name: str, **labels: str) -> float:
    """The current value of a sample of the default registry (0 when absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Snapshot:
    """Counter values before a workload, to compare deltas (the registry is per process)."""

    def __init__(self, *samples: tuple[str, dict[str, str]]) -> None:
        self.samples = samples
        self.before = {i: value(n, **lab) for i, (n, lab) in enumerate(samples)}

    def deltas(self) -> list[float]:
        return [value(n, **lab) - self.before[i] for i, (n, lab) in enumerate(self.samples)]


class TestListenerOnHandBuiltEvents:
    def test_each_event_type_feeds_its_counter_with_its_labels(self):
        """Decisions, guards, breakers, budgets, kills, anomalies, steps, ends, false signals."""
        h = History()
        h.ev(
            "policy.decided",
            "p1",
            data={"decision": {"outcome": "approve"}, "assessment": {"pattern": "orchestrator"}},
        )
        h.ev("guard.rate_limited", "p2", data={"scope": "agent", "key": "bot"})
        h.ev("guard.whitelist_denied", "p3", data={"actions": ["x"]})
        h.ev("guard.killed", "p4", data={"switch": "global"})
        h.ev("budget.exceeded", "p5", data={"budget": "b", "then": "deny"})
        h.ev("budget.exceeded", "p6", data={"budget": "b", "then": "approve"})  # escalates
        h.ev("budget.exceeded", "p7", data={"budget": "b", "then": "recorded"})  # after the fact
        h.ev("breaker.opened", "p8", data={"breaker": "action:t.x", "reason": "errors"})
        h.ev("breaker.half_open", "p8", data={"breaker": "action:t.x"})
        h.ev("breaker.closed", "p8", data={"breaker": "action:t.x"})
        spent = "budget:agent:t-bot"
        h.ev("budget.reserved", "p9", data={"reservations": [{"budget": spent, "amount": 700}]})
        h.ev("budget.settled", "p9", data={"settled": [{"budget": spent, "spent": 650}]})
        h.ev("budget.released", "p9", data={"released": [{"budget": spent, "amount": 50}]})
        h.ev("kill.engaged", data={"switch": "agent:t-bot", "by": "ops"})
        h.ev("kill.released", data={"switch": "agent:t-bot", "by": "ops"})
        h.ev("anomaly.detected", "p10", data={"agent_id": "t-bot"})
        for kind in ("step.succeeded", "step.failed", "step.unknown", "step.retrying"):
            h.ev(kind, "p11")
        h.ev("plan.finished", "p11", data={"status": "compensated"})
        h.ev("undo.requested", "p12", data={"by": "alice"})
        h.ev("undo.requested", "p13", data={"by": "proctor:rollback-ttl"})
        h.ev("review.marked", "p14", data={"verdict": "wrong", "reviewer": "r"})
        h.ev("review.marked", "p15", data={"verdict": "fine", "reviewer": "r"})
        h.ev("complaint.filed", "p16", data={"by": "alice", "reason": "no"})
        snap = Snapshot(
            ("proctor_decisions_total", {"outcome": "approve", "pattern": "orchestrator"}),
            ("proctor_rate_limit_rejections_total", {"scope": "agent"}),
            ("proctor_guard_denials_total", {"guard": "rate_limit"}),
            ("proctor_guard_denials_total", {"guard": "whitelist"}),
            ("proctor_guard_denials_total", {"guard": "kill_switch"}),
            ("proctor_guard_denials_total", {"guard": "budget"}),
            ("proctor_breaker_trips_total", {"breaker": "action:t.x"}),
            ("proctor_breaker_transitions_total", {"breaker": "action:t.x", "state": "open"}),
            ("proctor_breaker_transitions_total", {"breaker": "action:t.x", "state": "half_open"}),
            ("proctor_breaker_transitions_total", {"breaker": "action:t.x", "state": "closed"}),
            ("proctor_budget_amount_total", {"budget": "agent:*", "kind": "reserved"}),
            ("proctor_budget_amount_total", {"budget": "agent:*", "kind": "settled"}),
            ("proctor_budget_amount_total", {"budget": "agent:*", "kind": "released"}),
            ("proctor_kill_switch_changes_total", {"switch": "agent:t-bot", "change": "engaged"}),
            ("proctor_kill_switch_changes_total", {"switch": "agent:t-bot", "change": "released"}),
            ("proctor_anomalies_total", {"agent": "t-bot"}),
            ("proctor_steps_total", {"outcome": "unknown"}),
            ("proctor_steps_total", {"outcome": "retrying"}),
            ("proctor_plans_finished_total", {"status": "compensated"}),
            ("proctor_false_action_signals_total", {"kind": "undo"}),
            ("proctor_false_action_signals_total", {"kind": "rollback"}),
            ("proctor_false_action_signals_total", {"kind": "review_wrong"}),
            ("proctor_false_action_signals_total", {"kind": "complaint"}),
            ("proctor_audit_events_total", {"type": "budget.exceeded"}),
        )

        MetricsListener(budgets=[Budget(scope="agent", key="*", limit=1000)]).on_events(
            None, h.rows()
        )

        assert snap.deltas() == [1] * 10 + [700, 650, 50] + [1] * 10 + [3]

    def test_a_resolved_step_counts_with_its_resolution(self):
        """A human's resolution of a step of unknown outcome ends the step, as the KPIs say."""
        h = History()
        h.ev("step.resolved", "p1", data={"by": "ops", "succeeded": True})
        h.ev("step.resolved", "p2", data={"by": "ops", "succeeded": False})
        h.ev("step.resolved", "p3", data={"by": "ops", "succeeded": "yes"})  # not True
        snap = Snapshot(
            ("proctor_steps_total", {"outcome": "resolved_succeeded"}),
            ("proctor_steps_total", {"outcome": "resolved_failed"}),
        )

        MetricsListener().on_events(None, h.rows())

        assert snap.deltas() == [1, 2]

    def test_odd_data_never_raises_and_labels_a_question_mark(self):
        """A listener runs inside the appending transaction: it must not fail it."""
        h = History()
        h.ev("policy.decided", "p1", data=None)
        h.ev("guard.rate_limited", "p1")
        h.ev("budget.settled", "p1", data={"settled": [{"budget": "odd", "spent": "12"}]})
        h.events[0]["data"] = ["not", "a", "mapping"]
        snap = Snapshot(
            ("proctor_decisions_total", {"outcome": "?", "pattern": "?"}),
            ("proctor_rate_limit_rejections_total", {"scope": "?"}),
            ("proctor_budget_amount_total", {"budget": "?", "kind": "settled"}),
        )

        MetricsListener().on_events(None, h.rows())

        assert snap.deltas() == [1, 1, 0]


LIMITS = GuardSettings(
    rate_limits=(RateLimit(scope="agent", key="*", limit=3, per_seconds=60),),
    budgets=(Budget(scope="global", key="*", limit=10_000, period="day", on_exceed="deny"),),
)


class Everything:
    version = "sha256:everything"
    outcome: ClassVar[dict] = {"outcome": "execute"}

    def evaluate(self, input):
        steps = {s["id"]: self.outcome for s in input["steps"]}
        return {"steps": steps, "plan": {}}


class Approve(Everything):
    outcome: ClassVar[dict] = {"outcome": "approve", "approvals": 1, "approver_roles": ["ops"]}


class Confirm(Everything):
    outcome: ClassVar[dict] = {"outcome": "confirm"}


def _live(guards=LIMITS, clock=None, policy=None):
    p = Proctor.in_memory(
        catalog=Catalog(),
        policy=policy or Everything(),
        clock=clock or FrozenClock(),
        options=GatewayOptions(),
        guards=guards,
    )
    p.action("shop.buy", category="general", baselines=LOW, cost=400)(RecordingTool())
    p.action("shop.fail", category="general", baselines=LOW)(
        RecordingTool(fail_with=RuntimeError("down"))
    )
    listener = MetricsListener(budgets=guards.budgets)
    p.gateway.listeners.append(listener)
    return p


class TestCountersAgreeWithTheLog:
    def test_a_guarded_workload_counts_exactly_what_the_log_records(self):
        """Per event type, per decision and per guard: counter deltas equal the log's counts."""
        p = _live()
        types_before = {
            t: value("proctor_audit_events_total", type=t)
            for t in ("plan.submitted", "guard.rate_limited", "budget.reserved", "kill.engaged")
        }
        snap = Snapshot(
            ("proctor_rate_limit_rejections_total", {"scope": "agent"}),
            ("proctor_budget_amount_total", {"budget": "global:*", "kind": "reserved"}),
            ("proctor_budget_amount_total", {"budget": "global:*", "kind": "settled"}),
            ("proctor_decisions_total", {"outcome": "execute", "pattern": "agentic"}),
            ("proctor_steps_total", {"outcome": "failed"}),
        )

        for _ in range(2):
            p.submit(make_plan([("shop.buy", {})], agent_id="bot"))
        p.submit(make_plan([("shop.fail", {})], agent_id="bot"))
        limited = p.submit(make_plan([("shop.buy", {})], agent_id="bot"))
        p.guards.kill("action", "shop.buy", by="ops", reason="drill")
        p.guards.unkill("action", "shop.buy", by="ops")

        bodies = [orjson.loads(r.body) for r in p.gateway.store.iter_events()]
        types = Counter(b["type"] for b in bodies)
        decided = Counter(
            (b["data"]["decision"]["outcome"], b["data"]["assessment"]["pattern"])
            for b in bodies
            if b["type"] == "policy.decided"
        )
        reserved = sum(
            r["amount"]
            for b in bodies
            if b["type"] == "budget.reserved"
            for r in b["data"]["reservations"]
        )
        assert limited.status.value == "denied"
        assert types["guard.rate_limited"] == 1
        assert reserved == 800
        assert {
            t: value("proctor_audit_events_total", type=t) - v for t, v in types_before.items()
        } == {t: types[t] for t in types_before}
        assert snap.deltas() == [
            1,
            reserved,
            800,
            decided[("execute", "agentic")],
            types["step.failed"],
        ]


class TestStoreGauges:
    def _scrape(self, p) -> dict:
        registry = CollectorRegistry()
        registry.register(StoreCollector(p.gateway))
        from prometheus_client import generate_latest

        out = {}
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def test_waiting_plans_their_age_and_the_log_size(self):
        """Known answers: two plans waiting, the oldest for 90 s; the log's event count."""
        clock = FrozenClock()
        p = Proctor.in_memory(
            catalog=Catalog(), policy=Approve(), clock=clock, options=GatewayOptions()
        )
        p.action("shop.buy", category="general", baselines=LOW)(RecordingTool())
        p.submit(make_plan([("shop.buy", {})]))
        clock.advance(60)
        p.submit(make_plan([("shop.buy", {})]))
        clock.advance(30)

        m = self._scrape(p)

        assert m[("proctor_approvals_pending", (("kind", "approval"),))] == 2
        assert m[("proctor_approvals_pending", (("kind", "confirm"),))] == 0
        assert m[("proctor_approvals_oldest_seconds", (("kind", "approval"),))] == 90
        assert m[("proctor_audit_log_events", ())] == p.gateway.store.event_count()
        assert m[("proctor_webhook_outbox", (("status", "pending"),))] == 0

    def test_a_checkpoint_has_an_age_and_a_size(self):
        """After a signed checkpoint, its age grows with the clock and its size is the log's."""
        clock = FrozenClock()
        p = _live(guards=GuardSettings(), clock=clock)
        p.submit(make_plan([("shop.buy", {})]))
        assert p.checkpoint() is not None
        clock.advance(timedelta(minutes=2))

        m = self._scrape(p)

        assert m[("proctor_checkpoint_age_seconds", ())] == 120
        assert m[("proctor_checkpoint_size", ())] == p.gateway.store.event_count()

    def test_guard_gauges_show_budget_use_and_kill_switches(self):
        """The global budget's use is the cost settled; an engaged switch counts one."""
        p = _live()
        p.submit(make_plan([("shop.buy", {})]))
        p.guards.kill("agent", "other-bot", by="ops", allow_unknown=True)

        m = self._scrape(p)

        budget = {k: v for k, v in m.items() if k[0] == "proctor_budget_used"}
        assert list(budget.values()) == [400]
        assert m[("proctor_kill_switches", ())] == 1

    def test_a_backlog_beyond_ten_thousand_counts_every_plan_and_the_oldest(self):
        """10,001 plans waiting: all are counted, and the oldest is 20 h old, not the
        10,000th newest (review t10: the gauges read only the newest 10,000)."""
        clock = FrozenClock()
        p = _live(guards=GuardSettings(), clock=clock, policy=Approve())
        first = p.submit(make_plan([("shop.buy", {})]))
        clock.advance(timedelta(hours=19))
        record = p.gateway.store.get_plan(first.plan_id)
        with p.gateway.store.transaction() as tx:
            for i in range(10_000):
                tx.save_plan(
                    dataclasses.replace(record, plan_id=f"later-{i:05}", created_at=clock.now())
                )
        clock.advance(timedelta(hours=1))

        m = self._scrape(p)

        assert m[("proctor_approvals_pending", (("kind", "approval"),))] == 10_001
        assert m[("proctor_approvals_oldest_seconds", (("kind", "approval"),))] == 20 * 3600
        assert m[("proctor_approvals_oldest_seconds", (("kind", "confirm"),))] == 0

    def test_the_outbox_gauge_counts_past_the_old_cap(self):
        """100,001 pending deliveries are 100,001, not the 100,000 a listing returned."""
        p = _live(guards=GuardSettings())
        base = Delivery(
            delivery_id="d",
            event="plan.decided",
            target="hook",
            payload=b"{}",
            created_at=T0,
            next_at=T0,
        )
        with p.gateway.store.transaction() as tx:
            tx.enqueue([dataclasses.replace(base, delivery_id=f"d{i}") for i in range(100_001)])
            tx.save_delivery(
                dataclasses.replace(base, delivery_id="d0", status=DeliveryStatus.DEAD)
            )

        m = self._scrape(p)

        assert m[("proctor_webhook_outbox", (("status", "pending"),))] == 100_000
        assert m[("proctor_webhook_outbox", (("status", "dead"),))] == 1

    def test_budget_gauges_keep_their_series_from_one_period_to_the_next(self):
        """The period label is the budget's period (day), not today's date: the next day
        reports the same series, with the new day's use."""
        clock = FrozenClock()
        p = _live(clock=clock)
        p.submit(make_plan([("shop.buy", {})]))

        today = self._scrape(p)
        clock.advance(timedelta(days=1))
        tomorrow = self._scrape(p)

        def budget(m):
            return {k: v for k, v in m.items() if k[0].startswith("proctor_budget_")}

        labels = (("budget", "global:*"), ("period", "day"))
        assert budget(today) == {
            ("proctor_budget_used", labels): 400,
            ("proctor_budget_limit", labels): 10_000,
        }
        assert budget(tomorrow) == {
            ("proctor_budget_used", labels): 0,
            ("proctor_budget_limit", labels): 10_000,
        }


def _label_values(metric: str, label: str) -> set[str]:
    return {
        s.labels[label] for family in REGISTRY.collect() for s in family.samples if s.name == metric
    }


class TestLabelsAgentsCannotChoose:
    def test_a_user_budget_is_labelled_with_the_budget_never_the_claimed_user(self):
        """Under a user:* budget, the users an agent names are not label values: every
        amount goes to budget="user:*" (review t6 b: one series per made-up user)."""
        guards = GuardSettings(budgets=(Budget(scope="user", key="*", limit=100_000),))
        p = _live(guards=guards)
        snap = Snapshot(("proctor_budget_amount_total", {"budget": "user:*", "kind": "reserved"}))

        for k in range(5):
            p.submit(make_plan([("shop.buy", {})], on_behalf_of=f"made-up-user-{k}"))

        assert snap.deltas() == [5 * 400]
        assert not any(
            "made-up" in v for v in _label_values("proctor_budget_amount_total", "budget")
        )

    def test_a_budget_for_one_key_is_labelled_with_that_key(self):
        """A budget configured for alice alone is "user:alice"; another user's spend under
        the "*" budget is "user:*"; a counter no budget keeps is "?"."""
        h = History()
        for counter in ("budget:user:alice", "budget:user:bob", "budget:agent:bot", "junk"):
            h.ev("budget.reserved", "p1", data={"reservations": [{"budget": counter, "amount": 1}]})
        budgets = [
            Budget(scope="user", key="alice", limit=10),
            Budget(scope="user", key="*", limit=10),
        ]
        snap = Snapshot(
            *(
                ("proctor_budget_amount_total", {"budget": b, "kind": "reserved"})
                for b in ("user:alice", "user:*", "?")
            )
        )

        MetricsListener(budgets=budgets).on_events(None, h.rows())

        assert snap.deltas() == [1, 1, 2]
        assert not {"user:bob", "agent:bot", "budget:user:bob"} & _label_values(
            "proctor_budget_amount_total", "budget"
        )


class TestKillSwitchDenials:
    def test_refused_confirmations_of_a_held_plan_are_events_not_denials(self):
        """A plan held by a kill switch records each refused confirmation (then "wait") but
        is not a denial; a plan submitted under the switch is denied once (then "deny")
        (review t7: each refused attempt counted as a denial)."""
        p = _live(guards=GuardSettings(), policy=Confirm())
        held = p.submit(make_plan([("shop.buy", {})], plan_id="held"))
        snap = Snapshot(("proctor_guard_denials_total", {"guard": "kill_switch"}))

        p.kill("global", by="ops", reason="incident")
        for _ in range(3):
            with pytest.raises(ConflictError):
                p.confirm("held", "alice")
        denied = p.submit(make_plan([("shop.buy", {})], plan_id="denied"))
        p.gateway.guards.unkill("global", None, by="ops")
        done = p.confirm("held", "alice")

        killed = [
            (b["plan_id"], b["data"].get("then"))
            for r in p.gateway.store.iter_events()
            if (b := orjson.loads(r.body))["type"] == "guard.killed"
        ]
        assert snap.deltas() == [1]
        assert held.status.value == "awaiting_confirmation"
        assert done.status.value == "succeeded"
        assert denied.status.value == "denied"
        assert killed == [("held", "wait")] * 3 + [("denied", "deny")]

    def test_a_whitelist_denial_says_deny(self):
        """The whitelist's event says what followed too; a denial at submission counts."""
        p = _live(guards=GuardSettings())
        p.gateway.guards.set_whitelist("test-agent", ["shop.fail"], by="ops")
        snap = Snapshot(("proctor_guard_denials_total", {"guard": "whitelist"}))

        denied = p.submit(make_plan([("shop.buy", {})]))

        events = [orjson.loads(r.body) for r in p.gateway.store.iter_events()]
        data = [e["data"] for e in events if e["type"] == "guard.whitelist_denied"]
        assert denied.status.value == "denied"
        assert data == [{"actions": ["shop.buy"], "then": "deny"}]
        assert snap.deltas() == [1]


def _bucket(stage: str, le: str) -> float:
    return value("proctor_stage_seconds_bucket", stage=stage, le=le)


class TestHumanWaits:
    def test_an_approval_after_six_hours_lands_in_a_bucket_below_infinity(self):
        """Approvals wait up to a day: 4 h, 1 day and 2 day buckets place a 6 h wait
        (review t9: everything past an hour was +Inf)."""
        clock = FrozenClock()
        p = _live(guards=GuardSettings(), clock=clock, policy=Approve())
        p.gateway.telemetry.enable_metrics()
        rec = p.submit(make_plan([("shop.buy", {})]))
        before = [_bucket("approval_wait", le) for le in ("14400.0", "86400.0", "172800.0")]
        clock.advance(timedelta(hours=6))

        p.approve(rec.plan_id, "olga", roles=["ops"])

        after = [_bucket("approval_wait", le) for le in ("14400.0", "86400.0", "172800.0")]
        assert [a - b for a, b in zip(after, before, strict=True)] == [0, 1, 1]

    def test_a_confirmation_is_its_own_stage(self):
        """A confirmation's wait is confirm_wait, not approval_wait."""
        clock = FrozenClock()
        p = _live(guards=GuardSettings(), clock=clock, policy=Confirm())
        p.gateway.telemetry.enable_metrics()
        rec = p.submit(make_plan([("shop.buy", {})]))
        snap = Snapshot(
            ("proctor_stage_seconds_count", {"stage": "confirm_wait"}),
            ("proctor_stage_seconds_count", {"stage": "approval_wait"}),
            ("proctor_stage_seconds_sum", {"stage": "confirm_wait"}),
        )
        clock.advance(30)

        p.confirm(rec.plan_id, "alice")

        assert snap.deltas() == [1, 0, 30]
