"""Takeover and resolve against the guards, the deadline and the runners (``recovery.py``).

A plan a process claims (queued for its runner, or taken over from a dead worker) and a
plan a human resolves go on without a human clearing it right then: these tests check that
a kill switch stops the step such a start would run, and that a resolution keeps the
budgets, the deadline and the runner as the normal path does. Two processes on one store
are two ``Proctor`` instances on one SQLite file.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from proctor import Proctor
from proctor.app.executor import Executor
from proctor.app.gateway import GatewayOptions
from proctor.core.catalog import Catalog
from proctor.core.guards import Budget, GuardSettings, period_bucket
from proctor.core.lifecycle import PlanStatus, StepStatus
from proctor.errors import ConflictError
from proctor.testing import FrozenClock, RecordingTool, make_plan

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}


class Crash(BaseException):
    """Stands for the process dying inside a handler: nothing after it runs."""


class Crashing:
    """Crashes the first ``times`` calls (the process 'dies'), then records and succeeds."""

    def __init__(self, times=1):
        self.times = times
        self.calls = 0
        self.keys = []

    def __call__(self, params, call):
        self.calls += 1
        if self.calls <= self.times:
            raise Crash
        self.keys.append(call.idempotency_key)
        return {"ok": True}


class Everything:
    """A policy engine that executes every step (a fake, not a mock)."""

    version = "sha256:everything-1"

    def evaluate(self, input):
        steps = {s["id"]: {"outcome": "execute", "undo_window": 600} for s in input["steps"]}
        return {"steps": steps, "plan": {"deny": [], "adjustments": []}}


@pytest.fixture(params=["memory", "sqlite"])
def url(request, tmp_path):
    """The memory store, and a real SQLite file."""
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'r.db'}"


AMOUNT = {"type": "object", "properties": {"amount": {"type": "integer"}}}


def make(url="memory://", clock=None, guards=None, **opts):
    opts.setdefault("retry_backoff", timedelta(milliseconds=1))
    return Proctor.in_memory(
        catalog=Catalog(),
        policy=Everything(),
        clock=clock or FrozenClock(),
        options=GatewayOptions(**opts),
        database_url=url,
        guards=guards,
    )


def register(p, name, fn, **kw):
    kw.setdefault("category", "general")
    kw.setdefault("baselines", LOW)
    p.action(name, **kw)(fn)


def crash_submit(p, plan):
    with pytest.raises(Crash):
        p.submit(plan)


def other_worker(p):
    """A second worker on the same store (another process, as far as leases go)."""
    return Executor(p.gateway, owner="elsewhere:1:1:abc")


def types(p, plan_id):
    return [e.type for e in p.gateway.store.read_events(plan_id=plan_id)]


def two_processes(tmp_path, clock, tool):
    """An API process that serves no runner, and a runner process serving "mcp"."""
    db = f"sqlite:///{tmp_path / 'two.db'}"
    api = make(db, clock)
    runner = make(db, clock, runners=frozenset({"mcp"}))
    for p in (api, runner):
        register(p, "ops.ping", tool, runner="mcp", idempotent=True)
    return api, runner


class TestKillSwitchAtClaim:
    def test_a_queued_plan_waits_for_the_release_then_runs_once(self, tmp_path):
        """Queued for its runner, then killed: the runner's claim starts nothing until unkill."""
        clock = FrozenClock()
        tool = RecordingTool()
        api, runner = two_processes(tmp_path, clock, tool)
        queued = api.submit(make_plan([("ops.ping", {})], plan_id="k-1", agent_id="bot"))
        api.kill("global", by="admin", reason="incident")

        first = runner.gateway.executor.resume("k-1")
        again = runner.gateway.executor.resume("k-1")  # the worker's next pass

        assert queued.status is PlanStatus.RUNNING and queued.lease_owner is None
        assert first is None and again is None
        assert tool.calls == []
        held = runner.get("k-1")
        assert held.status is PlanStatus.RUNNING and held.lease_owner is None
        assert held.steps[0].status is StepStatus.PENDING
        assert held.error == "waiting: kill switch global is engaged: incident"
        assert types(runner, "k-1").count("guard.killed") == 1  # once, not once a pass
        assert api.unkill("global", by="admin")
        done = runner.gateway.executor.resume("k-1")
        assert done.status is PlanStatus.SUCCEEDED and done.error is None
        assert tool.keys == ["k-1:s1"]

    def test_an_action_switch_stops_only_plans_it_covers(self, tmp_path):
        """A switch on another action leaves the queued plan alone."""
        clock = FrozenClock()
        tool = RecordingTool()
        api, runner = two_processes(tmp_path, clock, tool)
        api.submit(make_plan([("ops.ping", {})], plan_id="k-2", agent_id="bot"))
        api.kill("action", "ops.other", by="admin", allow_unknown=True)  # not in its catalog

        done = runner.gateway.executor.resume("k-2")

        assert done.status is PlanStatus.SUCCEEDED
        assert tool.keys == ["k-2:s1"]
        assert "guard.killed" not in types(runner, "k-2")

    def test_a_takeover_does_not_rerun_or_go_on_while_killed(self, url):
        """A dead worker's idempotent step is not re-run, nor the next step started, until unkill."""
        clock = FrozenClock()
        p = make(url, clock)
        first = Crashing()
        deploy = RecordingTool()
        register(p, "ops.first", first, idempotent=True)
        register(p, "ops.deploy", deploy)
        crash_submit(
            p, make_plan([("ops.first", {}), ("ops.deploy", {})], plan_id="kr-1", agent_id="bot")
        )
        p.kill("agent", "bot", by="admin", reason="stop everything")
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))
        w = other_worker(p)

        assert w.resume("kr-1") is None

        held = p.get("kr-1")
        assert first.calls == 1 and deploy.calls == []
        assert held.status is PlanStatus.RUNNING and held.lease_owner is None
        assert held.steps[0].status is StepStatus.RUNNING and held.steps[0].attempts == 1
        assert held.error == "waiting: kill switch agent:bot is engaged: stop everything"
        assert "plan.resumed" not in types(p, "kr-1")
        assert p.unkill("agent", "bot", by="admin")
        done = w.resume("kr-1")
        assert done.status is PlanStatus.SUCCEEDED
        assert first.keys == ["kr-1:s1"] and deploy.keys == ["kr-1:s2"]
        assert p.verify().ok

    def test_a_whitelist_narrowed_meanwhile_holds_a_takeover(self, url):
        """The agent's whitelist, like a kill switch, stops what a claim would start."""
        clock = FrozenClock()
        p = make(url, clock)
        first = Crashing()
        register(p, "ops.first", first, idempotent=True)
        register(p, "ops.read", RecordingTool(), category="read")
        crash_submit(p, make_plan([("ops.first", {})], plan_id="kw-1", agent_id="bot"))
        p.guards.set_whitelist("bot", ["ops.read"], by="admin")
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))

        assert other_worker(p).resume("kw-1") is None

        assert first.calls == 1
        assert p.get("kw-1").error == "waiting: agent 'bot' may not use ops.first"
        assert "guard.whitelist_denied" in types(p, "kw-1")

    def test_an_interrupted_non_idempotent_step_still_needs_attention(self, url):
        """A kill switch starts nothing, so marking a step unknown goes on as usual."""
        clock = FrozenClock()
        p = make(url, clock)
        pay = Crashing()
        register(p, "pay.once", pay, idempotent=False)
        crash_submit(p, make_plan([("pay.once", {})], plan_id="kn-1"))
        p.kill("global", by="admin")
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))

        rec = other_worker(p).resume("kn-1")

        assert rec.status is PlanStatus.NEEDS_ATTENTION
        assert rec.steps[0].status is StepStatus.UNKNOWN
        assert pay.calls == 1
        assert "guard.killed" not in types(p, "kn-1")


class TestKillSwitchAtResolve:
    def test_resolving_as_succeeded_is_refused_while_the_next_step_would_start(self, url):
        """As a confirmation is: the plan keeps needing attention; after unkill it goes on."""
        clock = FrozenClock()
        p = make(url, clock)
        register(p, "pay.once", Crashing(), idempotent=False)
        ship = RecordingTool()
        register(p, "shop.ship", ship)
        crash_submit(p, make_plan([("pay.once", {}), ("shop.ship", {})], plan_id="kv-1"))
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))
        other_worker(p).resume("kv-1")
        p.kill("global", by="admin", reason="incident")

        with pytest.raises(ConflictError, match="kill switch global is engaged: incident"):
            p.resolve("kv-1", "s1", succeeded=True, principal="ops")

        waiting = p.get("kv-1")
        assert waiting.status is PlanStatus.NEEDS_ATTENTION
        assert waiting.steps[0].status is StepStatus.UNKNOWN
        assert ship.calls == []
        assert "guard.killed" in types(p, "kv-1") and "step.resolved" not in types(p, "kv-1")
        p.unkill("global", by="admin")
        done = p.resolve("kv-1", "s1", succeeded=True, principal="ops")
        assert done.status is PlanStatus.SUCCEEDED
        assert ship.keys == ["kv-1:s2"]

    def test_a_resolution_that_starts_nothing_is_not_refused(self, url):
        """The last step resolved as succeeded, or a step resolved as failed, runs no action."""
        clock = FrozenClock()
        p = make(url, clock)
        undo = RecordingTool()
        register(p, "shop.first", RecordingTool(), reversible=True, compensate=undo)
        register(p, "pay.once", Crashing(times=2), idempotent=False)
        for plan_id in ("kl-1", "kl-2"):
            crash_submit(p, make_plan([("shop.first", {}), ("pay.once", {})], plan_id=plan_id))
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))
        for plan_id in ("kl-1", "kl-2"):
            other_worker(p).resume(plan_id)
        p.kill("global", by="admin")

        last = p.resolve("kl-1", "s2", succeeded=True, principal="ops")
        failed = p.resolve("kl-2", "s2", succeeded=False, principal="ops")

        assert last.status is PlanStatus.SUCCEEDED
        assert failed.status is PlanStatus.COMPENSATED
        assert undo.keys == ["kl-2:s1"]


class TestResolveDeadline:
    def test_a_late_resolution_runs_the_rest_under_a_fresh_deadline(self, url):
        """Resolved 20 minutes on (past the 15-minute deadline): s2 runs, nothing is refunded."""
        clock = FrozenClock()
        p = make(url, clock)
        refunds = RecordingTool()
        register(p, "pay.charge", Crashing(), reversible=True, compensate=refunds)
        ship = RecordingTool()
        register(p, "shop.ship", ship)
        crash_submit(p, make_plan([("pay.charge", {}), ("shop.ship", {})], plan_id="d-1"))
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))
        other_worker(p).resume("d-1")
        clock.advance(timedelta(minutes=20))
        old = p.get("d-1").deadline

        rec = p.resolve("d-1", "s1", succeeded=True, principal="ops", comment="bank says paid")

        assert old < clock.now()
        assert rec.status is PlanStatus.SUCCEEDED
        assert [s.status for s in rec.steps] == [StepStatus.SUCCEEDED, StepStatus.SUCCEEDED]
        assert ship.keys == ["d-1:s2"] and refunds.calls == []
        assert rec.deadline == clock.now() + p.gateway.options.plan_deadline
        log = types(p, "d-1")
        after = log[log.index("step.resolved") + 1 :]
        assert after == ["step.started", "step.succeeded", "plan.finished"]
        assert p.verify().ok


def budgeted(url, clock):
    """An instance with a global budget of 1000 a day (deny over it) and a card payment."""
    daily = Budget(scope="global", key="*", limit=1000, on_exceed="deny")
    p = make(url, clock, guards=GuardSettings(budgets=(daily,)))
    pay = Crashing()
    register(p, "pay.card", pay, amount_param="amount", params=AMOUNT)
    register(p, "mail.receipt", RecordingTool())
    return p, pay


def spent(p, clock):
    return p.gateway.store.counter_sum("budget:global:*", period_bucket(clock.now(), "day"))[1]


def unknown(p, clock, plan):
    """Submit ``plan``, whose first payment dies mid-call; a takeover marks it unknown."""
    crash_submit(p, plan)
    clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))
    assert other_worker(p).resume(plan["plan_id"]).status is PlanStatus.NEEDS_ATTENTION


class TestResolveBudgets:
    def test_a_step_resolved_as_failed_releases_its_reservation(self, url):
        """The 600 reserved for a payment that did not happen is released: 500 more fits."""
        clock = FrozenClock()
        p, _ = budgeted(url, clock)
        unknown(p, clock, make_plan([("pay.card", {"amount": 600})], plan_id="b-1"))

        rec = p.resolve("b-1", "s1", succeeded=False, principal="ops", comment="not charged")

        assert rec.status is PlanStatus.FAILED
        assert spent(p, clock) == 0
        assert types(p, "b-1")[-3:] == ["step.resolved", "budget.released", "plan.finished"]
        more = p.submit(make_plan([("pay.card", {"amount": 500})], plan_id="b-2"))
        assert more.status is PlanStatus.SUCCEEDED
        assert spent(p, clock) == 500

    def test_a_step_resolved_as_succeeded_is_spent(self, url):
        """A 900 charge the bank confirms counts against the budget: another 900 is denied."""
        clock = FrozenClock()
        p, pay = budgeted(url, clock)
        steps = [("pay.card", {"amount": 900}), ("mail.receipt", {})]
        unknown(p, clock, make_plan(steps, plan_id="s-1"))

        rec = p.resolve("s-1", "s1", succeeded=True, principal="ops", comment="bank shows it")

        assert rec.status is PlanStatus.SUCCEEDED
        assert spent(p, clock) == 900
        log = types(p, "s-1")
        assert log[log.index("step.resolved") + 1] == "budget.settled"
        assert "budget.released" not in log
        again = p.submit(make_plan(steps, plan_id="s-2"))
        assert again.status is PlanStatus.DENIED
        assert pay.calls == 1 and spent(p, clock) == 900

    def test_a_plan_that_ends_at_its_resolution_drops_its_reservation(self, url):
        """Resolving the last step settles it, and the plan's reservation row is cleared."""
        clock = FrozenClock()
        p, _ = budgeted(url, clock)
        unknown(p, clock, make_plan([("pay.card", {"amount": 400})], plan_id="e-1"))

        rec = p.resolve("e-1", "s1", succeeded=True, principal="ops")

        assert rec.status is PlanStatus.SUCCEEDED
        assert spent(p, clock) == 400
        assert "e-1" not in p.gateway.store.list_state("reservation")


class TestResolveRunners:
    """An admin resolves through a process that does not serve the plan's runner (the API)."""

    def world(self, tmp_path, plan):
        clock = FrozenClock()
        db = f"sqlite:///{tmp_path / 'runners.db'}"
        api = make(db, clock)
        runner = make(db, clock, runners=frozenset({"mcp"}))
        tools = {}
        for where, p in (("api", api), ("runner", runner)):
            tools[where] = {
                "first": RecordingTool(),
                "undo": RecordingTool(),
                "write": RecordingTool(),
                "move": Crashing(),
            }
            t = tools[where]
            register(p, "fs.first", t["first"], runner="mcp", reversible=True, compensate=t["undo"])
            register(p, "fs.move_file", t["move"], runner="mcp", idempotent=False)
            register(p, "fs.write_file", t["write"], runner="mcp", idempotent=True)
        crash_submit(runner, plan)
        clock.advance(runner.gateway.options.lease_ttl + timedelta(seconds=1))
        taken = other_worker(runner).resume(plan["plan_id"])
        assert taken.status is PlanStatus.NEEDS_ATTENTION
        return api, runner, tools

    def test_the_rest_is_queued_for_the_runner(self, tmp_path):
        """Resolved as succeeded: s2 waits, queued, and the runner's claim runs it there."""
        plan = make_plan([("fs.move_file", {}), ("fs.write_file", {})], plan_id="rr-1")
        api, runner, tools = self.world(tmp_path, plan)

        rec = api.resolve("rr-1", "s1", succeeded=True, principal="ops", comment="moved")

        assert rec.status is PlanStatus.RUNNING and rec.lease_owner is None
        assert [s.status for s in rec.steps] == [StepStatus.SUCCEEDED, StepStatus.PENDING]
        assert tools["api"]["write"].calls == []
        assert api.gateway.executor.resume("rr-1") is None  # not this process's to run
        done = runner.gateway.executor.resume("rr-1")
        assert done.status is PlanStatus.SUCCEEDED
        assert tools["runner"]["write"].keys == ["rr-1:s2"]
        assert tools["api"]["write"].calls == []

    def test_the_compensation_is_queued_for_the_runner(self, tmp_path):
        """Resolved as failed: the plan is compensating with no lease; the runner undoes s1."""
        plan = make_plan([("fs.first", {}), ("fs.move_file", {})], plan_id="rr-2")
        api, runner, tools = self.world(tmp_path, plan)

        rec = api.resolve("rr-2", "s2", succeeded=False, principal="ops", comment="not moved")

        assert rec.status is PlanStatus.COMPENSATING and rec.lease_owner is None
        assert tools["api"]["undo"].calls == []
        done = runner.gateway.executor.resume("rr-2")
        assert done.status is PlanStatus.COMPENSATED
        assert tools["runner"]["undo"].keys == ["rr-2:s1"]
        assert tools["api"]["undo"].calls == []
