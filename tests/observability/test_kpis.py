"""KPIs against hand-built event histories with known answers, a live instance and HTTP."""

from __future__ import annotations

import random
from datetime import timedelta

import httpx
import orjson
import pytest

from proctor import Proctor
from proctor.app.executor import Executor
from proctor.app.gateway import GatewayOptions
from proctor.app.kpis import compute, from_store, relevant
from proctor.app.tokens import TokenService
from proctor.core.catalog import Catalog
from proctor.http import HttpSettings, create_app
from proctor.testing import FrozenClock, RecordingTool, make_plan

from .conftest import LOW, T0, History

MONTH = T0 + timedelta(days=30)


def kpis(events, by=None, since=T0, until=MONTH):
    return compute(events, since=since, until=until, by=by)


class TestKnownAnswers:
    def test_a_plan_submitted_before_the_period_runs_in_it_with_full_provenance(self):
        """A long approval: its step counts in the period (covered), its proposal does not."""
        h = History()
        h.at(-60 * 24 * 10).plan("old", run=False)
        h.at(60 * 24).steps("old")

        k = kpis(h.events)["all"]

        assert k["counts"]["executed_steps"] == 1
        assert k["counts"]["covered_steps"] == 1
        assert k["audit_coverage"] == 1.0
        assert k["counts"]["proposed"] == 0
        assert k["counts"]["executed_plans"] == 0
        assert kpis(h.events, since=T0 - timedelta(days=30), until=T0)["all"]["counts"] == {
            **kpis([], since=T0 - timedelta(days=30), until=T0)["all"]["counts"],
            "proposed": 1,
        }

    def test_recovery_runs_from_the_first_detection_to_the_revert(self):
        """A complaint at 10 min, an undo at 30, undone at 31: 21 minutes to recover."""
        h = History()
        h.at(0).plan("p")
        h.at(10).ev("complaint.filed", "p", data={"reason": "not what I asked"})
        h.at(30).ev("undo.requested", "p", data={"by": "alice"})
        h.at(31).ev("plan.finished", "p", data={"status": "undone"})

        k = kpis(h.events)["all"]

        assert k["time_to_recovery_s"] == {"median": 1260.0, "max": 1260.0, "count": 1}
        assert k["counts"]["false_actions"] == 1  # one plan, two signals
        assert k["counts"]["false_signals"] == {"complaint": 1, "undo": 1}
        assert k["acceptance_rate"] == 0.0

    def test_recovery_does_not_start_at_step_trouble_the_plan_overcame(self):
        """A timeout its retry fixed, then an undo two days later: recovered in 1 minute."""
        h = History()
        h.at(0).ev("plan.submitted", "p", actions=("shop.buy",))
        h.ev("policy.decided", "p")
        h.ev("plan.routed", "p", data={"sandbox": False})
        h.at(1).ev("step.timed_out", "p", actions=("shop.buy",))
        h.at(2).steps("p")
        h.at(60 * 48).ev("undo.requested", "p", data={"by": "alice"})
        h.at(60 * 48 + 1).ev("plan.finished", "p", data={"status": "undone"})

        k = kpis(h.events)["all"]

        assert k["time_to_recovery_s"] == {"median": 60.0, "max": 60.0, "count": 1}

    def test_recovery_runs_from_step_trouble_the_plan_did_not_overcome(self):
        """A step failed at 5 min and the plan was compensated at 7: 2 minutes to recover."""
        h = History()
        h.at(0).ev("plan.submitted", "p", actions=("a.one", "a.two"))
        h.ev("policy.decided", "p")
        h.ev("plan.routed", "p", data={"sandbox": False})
        h.at(1).ev("step.succeeded", "p", actions=("a.one",))
        h.at(5).ev("step.failed", "p", actions=("a.two",))
        h.at(6).ev("complaint.filed", "p")
        h.at(7).ev("plan.finished", "p", data={"status": "compensated"})

        k = kpis(h.events)["all"]

        assert k["time_to_recovery_s"] == {"median": 120.0, "max": 120.0, "count": 1}

    def test_the_last_review_verdict_wins(self):
        """``wrong`` corrected to ``fine`` is no false action; ``fine`` corrected to ``wrong`` is."""
        h = History()
        h.at(0).plan("corrected")
        h.plan("confirmed")
        h.at(10).ev("review.marked", "corrected", data={"verdict": "wrong"})
        h.ev("review.marked", "confirmed", data={"verdict": "fine"})
        h.at(20).ev("review.marked", "corrected", data={"verdict": "fine"})
        h.ev("review.marked", "confirmed", data={"verdict": "wrong"})

        k = kpis(h.events)["all"]

        assert k["counts"]["false_signals"] == {"review_wrong": 1}
        assert k["false_action_rate"] == 0.5
        assert k["acceptance_rate"] == 0.5

    def test_a_rollback_ttl_is_a_false_action_a_compensated_failure_is_not(self):
        """Rollback TTL undo: false (rollback). A failed step compensated: recovered, not false."""
        h = History()
        h.at(0).plan("ttl")
        h.at(60).ev("undo.requested", "ttl", data={"by": "proctor:rollback-ttl"})
        h.at(61).ev("plan.finished", "ttl", data={"status": "undone"})
        h.at(100).ev("plan.submitted", "f", actions=("a.one", "a.two"))
        h.ev("policy.decided", "f")
        h.ev("plan.routed", "f", data={"sandbox": False})
        h.ev("step.succeeded", "f", actions=("a.one",))
        h.at(105).ev("step.failed", "f", actions=("a.two",))
        h.at(106).ev("plan.finished", "f", data={"status": "compensated"})

        k = kpis(h.events)["all"]

        assert k["counts"]["executed_plans"] == 2
        assert k["counts"]["false_signals"] == {"rollback": 1}
        assert k["false_action_rate"] == 0.5
        assert k["acceptance_rate"] == 0.0
        assert sorted([k["time_to_recovery_s"]["median"], k["time_to_recovery_s"]["max"]]) == [
            60.0,
            60.0,
        ]
        assert k["time_to_recovery_s"]["count"] == 2

    def test_a_partial_rollback_is_a_recovery(self):
        """A rollback TTL that undid one step of two (``plan.rolled_back``) ends the clock."""
        h = History()
        h.at(0).plan("part")
        h.at(60).ev("undo.requested", "part", data={"by": "proctor:rollback-ttl"})
        h.at(62).ev("plan.rolled_back", "part", data={"status": "succeeded", "steps": ["s1"]})

        k = kpis(h.events)["all"]

        assert k["time_to_recovery_s"] == {"median": 120.0, "max": 120.0, "count": 1}
        assert k["counts"]["false_signals"] == {"rollback": 1}

    def test_coverage_says_what_is_missing(self):
        """Steps without a trace or a signature are not covered, and are counted by gap."""
        h = History()
        h.plan("a")
        h.plan("b", trace_id=None)
        h.plan("c", signature=None, trace_id="")

        k = kpis(h.events)["all"]

        assert k["audit_coverage"] == round(1 / 3, 4)
        assert k["counts"]["uncovered"] == {"signature": 1, "trace": 2}

    def test_a_step_of_a_plan_whose_submission_is_not_in_the_log_is_not_covered(self):
        """Provenance needs the plan's submission and decision in the log."""
        h = History()
        h.steps("ghost")

        k = kpis(h.events)["all"]

        assert k["counts"]["executed_steps"] == 1
        assert k["counts"]["uncovered"] == {"decision": 1, "submission": 1}

    def test_anomalies_follow_their_plan_to_a_user_and_an_action(self):
        """Per user and action an anomaly counts through its plan; one without a plan only overall."""
        h = History()
        h.plan("p", user="u1", actions=("a.x",))
        h.at(5).ev("anomaly.detected", "p", data={"agent_id": "bot"})
        h.at(6).ev("anomaly.detected", None, data={"agent_id": "bot"})
        h.at(-60 * 24).ev("anomaly.detected", "p", data={"agent_id": "bot"})  # period before

        assert kpis(h.events)["all"]["anomaly_delta"] == 2 - 1
        assert kpis(h.events, by="agent")["bot"]["counts"]["anomalies"] == 2
        assert kpis(h.events, by="user")["u1"]["counts"]["anomalies"] == 1
        assert kpis(h.events, by="action")["a.x"]["counts"]["anomalies_before"] == 1

    def test_signals_after_the_period_do_not_rewrite_it(self):
        """A complaint after ``until`` counts for nothing in that period."""
        h = History()
        h.plan("p")
        h.at(60 * 24 * 31).ev("complaint.filed", "p")

        assert kpis(h.events)["all"]["false_action_rate"] == 0.0
        assert kpis(h.events, until=MONTH + timedelta(days=2))["all"]["false_action_rate"] == 1.0

    def test_an_empty_or_inverted_period_is_refused(self):
        """since must come before until."""
        with pytest.raises(ValueError, match="since must be before until"):
            kpis([], since=MONTH, until=T0)


LATER = (
    ("step.succeeded", {}),
    ("step.failed", {}),
    ("step.resolved", {"succeeded": True}),
    ("plan.finished", {"status": "succeeded"}),
    ("plan.finished", {"status": "undone"}),
    ("plan.finished", {"status": "compensated"}),
    ("undo.requested", {"by": "alice"}),
    ("undo.requested", {"by": "proctor:rollback-ttl"}),
    ("complaint.filed", {}),
    ("review.marked", {"verdict": "wrong"}),
    ("review.marked", {"verdict": "fine"}),
    ("anomaly.detected", {"agent_id": "b1"}),
)


def _random_history(rng: random.Random) -> History:
    """Plans whose events all follow their submission (as in any real log), and anomalies."""
    h = History()
    for i in range(60):
        pid, who = f"p{i}", {"agent": rng.choice(["b1", "b2"]), "user": rng.choice(["u1", "u2"])}
        actions = (rng.choice(["a.x", "a.y"]),)
        t = rng.uniform(-60 * 24 * 70, 60 * 24 * 70)
        h.at(t).ev("plan.submitted", pid, actions=actions, **who)
        h.ev("policy.decided", pid, **who)
        h.ev("plan.routed", pid, data={"sandbox": rng.random() < 0.1}, **who)
        for _ in range(rng.randrange(6)):
            t += rng.uniform(0, 60 * 24 * 20)
            kind, data = rng.choice(LATER)
            h.at(t).ev(kind, pid, actions=actions, data=data, **who)
    for _ in range(20):
        h.at(rng.uniform(-60 * 24 * 70, 60 * 24 * 70)).ev(
            "anomaly.detected", None, data={"agent_id": rng.choice(["b1", "b2"])}
        )
    h.events.sort(key=lambda b: b["timestamp"])
    return h


class TestRelevantRows:
    @pytest.mark.parametrize("seed", range(25))
    def test_skipping_rows_never_changes_a_figure(self, seed):
        """compute over ``relevant`` rows equals compute over the whole log, for every grouping."""
        h = _random_history(random.Random(seed))
        rows = h.rows()

        kept = [orjson.loads(r.body) for r in relevant(rows, since=T0, until=MONTH)]

        assert len(kept) < len(rows)
        for by in (None, "agent", "action", "user"):
            assert kpis(kept, by=by) == kpis(h.events, by=by), by


class Undoable:
    version = "sha256:undoable"

    def evaluate(self, input):
        d = {"outcome": "execute", "undo_window": 600, "rollback_ttl": 120}
        return {"steps": {s["id"]: d for s in input["steps"]}, "plan": {}}


def _live():
    clock = FrozenClock(T0 + timedelta(days=1))
    p = Proctor.in_memory(
        catalog=Catalog(), policy=Undoable(), clock=clock, options=GatewayOptions()
    )
    p.action(
        "shop.buy",
        category="general",
        baselines=LOW,
        reversible=True,
        compensate=RecordingTool(),
        cost=250,
    )(RecordingTool())
    return p, clock


class Crash(BaseException):
    """Stands for the process dying inside a handler: nothing after it runs."""


class TestLiveInstance:
    def test_a_step_a_human_resolved_as_succeeded_is_executed_with_its_cost(self):
        """Unknown after a crash, resolved as succeeded: executed, 400 spent, a complaint counts."""
        p, clock = _live()
        calls = []

        def dies_once(params, call):
            calls.append(call)
            if len(calls) == 1:
                raise Crash
            return {"ok": True}

        p.action("shop.pay", category="general", baselines=LOW, cost=400)(dies_once)
        with pytest.raises(Crash):
            p.submit(make_plan([("shop.pay", {})], plan_id="crashy", agent_id="bot"))
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))
        taken = Executor(p.gateway, owner="elsewhere:1:1:abc").resume("crashy")
        assert taken is not None and taken.status.value == "needs_attention"

        done = p.resolve("crashy", "s1", succeeded=True, principal="ops")
        p.complain("crashy", by="alice", reason="charged twice")
        k = from_store(p.gateway.store, since=T0, until=MONTH)
        by_action = from_store(p.gateway.store, since=T0, until=MONTH, by="action")

        assert done.status.value == "succeeded" and len(calls) == 1
        rows = p.gateway.store.read_events(plan_id="crashy")
        resolved = [orjson.loads(e.body) for e in rows if e.type == "step.resolved"]
        assert resolved[0]["data"]["cost"] == 400
        counts = k["all"]["counts"]
        assert (counts["executed_plans"], counts["executed_steps"], counts["cost"]) == (1, 1, 400)
        assert k["all"]["false_action_rate"] == 1.0
        assert counts["false_signals"] == {"complaint": 1}
        assert by_action["shop.pay"]["counts"]["executed_steps"] == 1

    def test_a_rollback_ttl_through_the_gateway_is_a_rollback_signal(self):
        """The worker's timer undoes a plan nobody kept: counted as a rollback, recovered."""
        p, clock = _live()
        kept = p.submit(make_plan([("shop.buy", {})], agent_id="bot"))
        p.submit(make_plan([("shop.buy", {})], agent_id="bot"))
        clock.advance(130)

        p.gateway.tick()
        k = from_store(p.gateway.store, since=T0, until=MONTH)["all"]

        assert kept.status.value == "succeeded"
        assert k["counts"]["false_signals"] == {"rollback": 2}
        assert k["counts"]["executed_plans"] == 2
        assert k["time_to_recovery_s"]["count"] == 2
        assert k["cost_per_action"] == 250
        assert k["counts"]["uncovered"] == {"trace": 2}  # no tracing, no agent traceparent


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
class TestHttp:
    async def test_kpis_route_figures_and_bad_input(self):
        """GET /v1/kpis: figures per agent for an auditor; each bad parameter named, 4xx."""
        p, _ = _live()
        p.submit(make_plan([("shop.buy", {})], agent_id="bot"))
        p.gateway.clock.advance(1)  # the period ends now, exclusive
        tokens = TokenService(p.gateway.store, p.gateway.clock)
        aud = tokens.create(name="aud", roles=["auditor"]).token
        app = create_app(p, settings=HttpSettings(auth_failures_per_minute=1000))
        headers = {"Authorization": f"Bearer {aud}"}
        since = T0.isoformat().replace("+00:00", "Z")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://proctor"
        ) as c:
            ok = await c.get(f"/v1/kpis?by=agent&since={since}", headers=headers)
            naive = await c.get("/v1/kpis?since=2026-11-01T00:00:00", headers=headers)
            inverted = await c.get(
                f"/v1/kpis?since=2026-12-01T00:00:00Z&until={since}", headers=headers
            )
            planet = await c.get("/v1/kpis?by=planet", headers=headers)

        assert ok.status_code == 200
        body = ok.json()
        assert body["by"] == "agent"
        assert body["kpis"]["bot"]["counts"]["executed_steps"] == 1
        assert body["kpis"]["bot"]["cost_per_action"] == 250
        assert (naive.status_code, naive.json()["field"]) == (422, "since")
        assert (inverted.status_code, inverted.json()["field"]) == (422, "since")
        assert planet.status_code == 422

    async def test_dates_at_the_ends_of_the_calendar_are_answered_not_a_500(self):
        """since=1000-01-01, since=0001-01-01, until=0001-01-05: 200, the period clamped."""
        p, _ = _live()
        tokens = TokenService(p.gateway.store, p.gateway.clock)
        aud = tokens.create(name="aud", roles=["auditor"]).token
        app = create_app(p, settings=HttpSettings(auth_failures_per_minute=1000))
        headers = {"Authorization": f"Bearer {aud}"}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://proctor"
        ) as c:
            old = await c.get("/v1/kpis?since=1000-01-01T00:00:00Z", headers=headers)
            first = await c.get("/v1/kpis?since=0001-01-01T00:00:00Z", headers=headers)
            early = await c.get("/v1/kpis?until=0001-01-05T00:00:00Z", headers=headers)
            before = await c.get("/v1/kpis?until=0001-01-01T00:00:00%2B01:00", headers=headers)

        assert (old.status_code, first.status_code, early.status_code) == (200, 200, 200)
        assert early.json()["since"] == "0001-01-01T00:00:00+00:00"
        assert (before.status_code, before.json()["field"]) == (422, "until")
