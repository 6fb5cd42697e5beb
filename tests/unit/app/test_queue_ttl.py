"""A plan a human cleared but no process here runs waits for a runner until its start-by.

Confirmed, approved or resolved through a process that does not serve the plan's runner (the
API), a plan is left queued: running, no lease. Past ``queue_ttl`` it expires unstarted
(``PlanRecord.start_by``, ``Recovery.expire_overdue``) instead of running whenever a runner
finally comes; a claim checks the same time in its own transaction. Two processes on one
store are two ``Proctor`` instances on one database (SQLite, and PostgreSQL when available).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from proctor import Proctor
from proctor.app.executor import Executor
from proctor.app.gateway import GatewayOptions
from proctor.bootstrap import init_home
from proctor.core.catalog import Catalog
from proctor.core.guards import Budget, GuardSettings, period_bucket, user_action_keys
from proctor.core.lifecycle import PlanStatus, StepStatus
from proctor.testing import FrozenClock, RecordingTool, make_plan

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}
AMOUNT = {"type": "object", "properties": {"amount": {"type": "integer"}}}
TTL = timedelta(hours=1)  # the default queue_ttl


class Confirm:
    """A policy engine that asks the user to confirm every step (a fake, not a mock)."""

    version = "sha256:confirm-1"

    def evaluate(self, input):
        steps = {s["id"]: {"outcome": "confirm"} for s in input["steps"]}
        return {"steps": steps, "plan": {"deny": [], "adjustments": []}}


class Everything:
    """A policy engine that executes every step."""

    version = "sha256:everything-1"

    def evaluate(self, input):
        steps = {s["id"]: {"outcome": "execute", "undo_window": 600} for s in input["steps"]}
        return {"steps": steps, "plan": {"deny": [], "adjustments": []}}


class Crash(BaseException):
    """Stands for the process dying inside a handler."""


class Crashing:
    """Crashes the first call (the process 'dies'), then records and succeeds."""

    def __init__(self):
        self.calls = 0

    def __call__(self, params, call):
        self.calls += 1
        if self.calls == 1:
            raise Crash
        return {"ok": True}


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    """One database two processes share: a SQLite file, or a PostgreSQL schema."""
    if request.param == "postgres":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'q.db'}"


def make(url, clock, policy, guards=None, **opts):
    opts.setdefault("retry_backoff", timedelta(milliseconds=1))
    return Proctor.in_memory(
        catalog=Catalog(),
        policy=policy,
        clock=clock,
        options=GatewayOptions(**opts),
        database_url=url,
        guards=guards,
    )


def world(url, *, policy=None, guards=None):
    """An API process (serves no runner) and a runner process (serves "mcp"), one clock."""
    clock = FrozenClock()
    api = make(url, clock, policy or Confirm(), guards)
    runner = make(url, clock, policy or Confirm(), guards, runners=frozenset({"mcp"}))
    tools = {}
    for where, p in (("api", api), ("runner", runner)):
        t = tools[where] = {"pay": RecordingTool(), "undo": RecordingTool()}
        p.action(
            "pay.card",
            category="general",
            baselines=LOW,
            runner="mcp",
            amount_param="amount",
            params=AMOUNT,
        )(t["pay"])
        p.action(
            "fs.first",
            category="general",
            baselines=LOW,
            runner="mcp",
            reversible=True,
            compensate=t["undo"],
        )(RecordingTool())
        p.action("fs.move", category="general", baselines=LOW, runner="mcp")(Crashing())
    return clock, api, runner, tools


def types(p, plan_id):
    return [e.type for e in p.gateway.store.read_events(plan_id=plan_id)]


def confirmed(api, plan_id, amount=100):
    api.submit(make_plan([("pay.card", {"amount": amount})], plan_id=plan_id))
    rec = api.confirm(plan_id, "alice")
    assert rec.status is PlanStatus.RUNNING and rec.lease_owner is None
    return rec


class TestQueuedStartBy:
    def test_a_confirmed_plan_queued_for_its_runner_gets_a_start_by(self, db):
        """Confirmed where its runner is not served: queued, its timer at now + queue_ttl."""
        clock, api, _, _ = world(db)

        rec = confirmed(api, "q-1")

        assert rec.start_by == clock.now() + TTL
        assert rec.timer_at == rec.start_by
        assert api.get("q-1").start_by == clock.now() + TTL  # stored

    def test_the_timer_expires_it_unstarted_and_no_runner_runs_it_later(self, db):
        """Past its start-by the timer ends it expired; a runner appearing then runs nothing."""
        clock, api, runner, tools = world(db)
        confirmed(api, "q-2")
        clock.advance(TTL)

        fired = api.tick()

        assert [p.plan_id for p in fired] == ["q-2"]
        rec = api.get("q-2")
        assert rec.status is PlanStatus.EXPIRED
        assert [s.status for s in rec.steps] == [StepStatus.SKIPPED]
        assert "queue_ttl_seconds = 3600" in rec.error
        assert rec.timer_at is None and rec.lease_owner is None
        events = list(api.gateway.store.read_events(plan_id="q-2"))
        assert events[-1].type == "plan.expired"
        assert runner.gateway.executor.resume("q-2") is None
        assert runner.tick() == []
        assert tools["runner"]["pay"].calls == [] and tools["api"]["pay"].calls == []
        assert api.verify().ok

    def test_a_runner_that_claims_it_in_time_runs_it_and_the_timer_stays_silent(self, db):
        """Claimed a second before the start-by: it runs once, and no timer fires after."""
        clock, api, runner, tools = world(db)
        confirmed(api, "q-3")
        clock.advance(TTL - timedelta(seconds=1))

        done = runner.gateway.executor.resume("q-3")
        clock.advance(timedelta(hours=2))

        assert done.status is PlanStatus.SUCCEEDED and done.start_by is None
        assert api.tick() == [] and runner.tick() == []
        assert tools["runner"]["pay"].keys == ["q-3:s1"]
        assert "plan.expired" not in types(api, "q-3")

    def test_a_claim_after_the_start_by_expires_it_itself(self, db):
        """No timer fired yet (no worker ran): the runner's claim expires it, runs nothing."""
        clock, api, runner, tools = world(db)
        confirmed(api, "q-4")
        clock.advance(TTL + timedelta(seconds=5))

        rec = runner.gateway.executor.resume("q-4")

        assert rec.status is PlanStatus.EXPIRED
        assert tools["runner"]["pay"].calls == []
        assert types(api, "q-4")[-1] == "plan.expired"
        assert "step.started" not in types(api, "q-4")

    def test_an_approved_plan_queued_for_its_runner_expires_too(self, db):
        """Approved where its runner is not served: the same start-by and expiry."""

        class Approve:
            version = "sha256:approve-1"

            def evaluate(self, input):
                steps = {
                    s["id"]: {"outcome": "approve", "approvals": 1, "approver_roles": ["ops"]}
                    for s in input["steps"]
                }
                return {"steps": steps, "plan": {"deny": [], "adjustments": []}}

        clock, api, runner, tools = world(db, policy=Approve())
        api.submit(make_plan([("pay.card", {"amount": 5})], plan_id="q-5"))
        rec = api.approve("q-5", "bob", roles=["ops"])
        assert rec.status is PlanStatus.RUNNING and rec.start_by == clock.now() + TTL
        clock.advance(TTL)

        api.tick()

        assert api.get("q-5").status is PlanStatus.EXPIRED
        assert runner.gateway.executor.resume("q-5") is None
        assert tools["runner"]["pay"].calls == []

    def test_its_budget_reservation_is_released(self, db):
        """The 800 reserved when it was confirmed is released when it expires: 800 more fits."""
        daily = Budget(scope="global", key="*", limit=1000, on_exceed="deny")
        clock, api, _, _ = world(db, guards=GuardSettings(budgets=(daily,)))
        confirmed(api, "q-6", amount=800)
        bucket = period_bucket(clock.now(), "day")
        assert "q-6" in api.gateway.store.list_state("reservation")
        clock.advance(TTL)

        api.tick()

        assert "q-6" not in api.gateway.store.list_state("reservation")
        assert api.gateway.store.counter_sum("budget:global:*", bucket)[1] == 0
        assert "budget.released" in types(api, "q-6")
        again = confirmed(api, "q-7", amount=800)
        assert again.status is PlanStatus.RUNNING

    def test_her_confirmation_still_counts_as_accepted_for_autonomy(self, db):
        """Expired queued after she confirmed: her proposal count says accepted, not declined."""
        clock, api, _, _ = world(db, guards=GuardSettings())
        confirmed(api, "q-9")
        clock.advance(TTL)

        api.tick()

        key = user_action_keys("alice", "pay.card")[0]
        assert api.get("q-9").status is PlanStatus.EXPIRED
        assert api.gateway.store.counter_sum(f"proposals:{key}", "all") == (1, 1)

    def test_a_plan_queued_at_submission_has_no_start_by(self, db):
        """Nobody cleared it (the policy executes it): it waits for its runner as before."""
        clock, api, runner, _ = world(db, policy=Everything())

        rec = api.submit(make_plan([("pay.card", {"amount": 1})], plan_id="q-8"))
        clock.advance(TTL * 3)

        assert rec.status is PlanStatus.RUNNING and rec.start_by is None
        assert api.tick() == []
        assert runner.gateway.executor.resume("q-8").status is PlanStatus.SUCCEEDED


class TestClaimVersusTimer:
    """The claim and the timer each re-check in their own transaction: exactly one acts."""

    def test_a_timer_that_read_the_plan_before_a_claim_committed_does_nothing(self, db):
        """The worker found it due, then a runner claimed it first: it runs, nothing expires."""
        clock, api, runner, tools = world(db)
        confirmed(api, "r-1")
        due = api.gateway.store.due_plans(clock.now() + TTL)  # the timer's scan, read early
        assert [p.plan_id for p in due] == ["r-1"]

        done = runner.gateway.executor.resume("r-1")  # commits first
        clock.advance(TTL)
        fired = api.gateway._fire(due[0], clock.now(), True)

        assert fired is None
        assert done.status is PlanStatus.SUCCEEDED
        assert api.get("r-1").status is PlanStatus.SUCCEEDED
        assert tools["runner"]["pay"].calls != [] and len(tools["runner"]["pay"].calls) == 1
        assert "plan.expired" not in types(api, "r-1")

    def test_a_claim_after_the_timer_committed_finds_it_expired(self, db):
        """The timer commits first: the runner's claim, even with a stale view, runs nothing."""
        clock, api, runner, tools = world(db)
        confirmed(api, "r-2")
        clock.advance(TTL)
        stale = Executor(runner.gateway, owner="elsewhere:1:1:abc")

        api.tick()
        claimed = stale.resume("r-2")

        assert claimed is None
        assert api.get("r-2").status is PlanStatus.EXPIRED
        assert tools["runner"]["pay"].calls == []
        assert types(api, "r-2").count("plan.expired") == 1

    def test_at_the_very_start_by_both_agree_it_is_over(self, db):
        """At exactly start_by the claim expires it, as the timer would (one boundary)."""
        clock, api, runner, tools = world(db)
        rec = confirmed(api, "r-3")
        clock.advance(rec.start_by - clock.now())

        claimed = runner.gateway.executor.resume("r-3")
        fired = api.tick()

        assert claimed.status is PlanStatus.EXPIRED and fired == []
        assert tools["runner"]["pay"].calls == []
        assert types(api, "r-3").count("plan.expired") == 1


class TestResolvedAndCompensations:
    """After a resolved step the rest may be queued; a compensation is never dropped."""

    def needs_attention(self, clock, runner, steps, plan_id):
        with pytest.raises(Crash):
            runner.submit(make_plan(steps, plan_id=plan_id))
        clock.advance(runner.gateway.options.lease_ttl + timedelta(seconds=1))
        taken = Executor(runner.gateway, owner="elsewhere:1:1:abc").resume(plan_id)
        assert taken.status is PlanStatus.NEEDS_ATTENTION

    def test_the_rest_of_a_resolved_plan_is_compensated_not_expired(self, db):
        """s1 done, s2 resolved as succeeded, s3 queued past its start-by: s3 fails unstarted
        and the completed steps are undone by the runner, however late it comes."""
        clock, api, runner, tools = world(db, policy=Everything())
        steps = [("fs.first", {}), ("fs.move", {}), ("pay.card", {"amount": 3})]
        self.needs_attention(clock, runner, steps, "c-1")

        rec = api.resolve("c-1", "s2", succeeded=True, principal="ops", comment="moved")
        assert rec.status is PlanStatus.RUNNING and rec.start_by == clock.now() + TTL
        clock.advance(TTL)
        api.tick()

        rec = api.get("c-1")
        assert rec.status is PlanStatus.COMPENSATING and rec.lease_owner is None
        assert rec.steps[2].status is StepStatus.FAILED
        assert "queue_ttl_seconds" in rec.steps[2].error
        assert rec.timer_at is None  # a compensation has no start-by: it waits for its runner
        clock.advance(timedelta(days=3))
        assert api.tick() == []
        done = runner.gateway.executor.resume("c-1")
        # Failed, not compensated: s2 (moved, irreversible) stands; s1 is undone.
        assert done.status is PlanStatus.FAILED, done.error
        assert tools["runner"]["undo"].keys == ["c-1:s1"]
        assert "compensation.succeeded" in types(api, "c-1")
        assert tools["runner"]["pay"].calls == []

    def test_a_compensation_queued_for_its_runner_never_expires(self, db):
        """Resolved as failed: compensating with no lease and no timer, until the runner."""
        clock, api, runner, tools = world(db, policy=Everything())
        self.needs_attention(clock, runner, [("fs.first", {}), ("fs.move", {})], "c-2")

        rec = api.resolve("c-2", "s2", succeeded=False, principal="ops", comment="not moved")
        clock.advance(timedelta(days=30))

        assert rec.status is PlanStatus.COMPENSATING and rec.start_by is None
        assert api.tick() == []
        done = runner.gateway.executor.resume("c-2")
        assert done.status is PlanStatus.COMPENSATED
        assert tools["runner"]["undo"].keys == ["c-2:s1"]


class TestSetting:
    def test_the_home_config_sets_the_queue_ttl(self, tmp_path):
        """``[execution] queue_ttl_seconds`` in config.toml is the start-by a gateway gives."""
        home = tmp_path / "h"
        init_home(home)
        config = home / "config.toml"
        text = config.read_text()
        assert "queue_ttl_seconds = 3600" in text
        config.write_text(text.replace("queue_ttl_seconds = 3600", "queue_ttl_seconds = 120"))

        with Proctor.open(home) as p:
            assert p.gateway.options.queue_ttl == timedelta(seconds=120)
