"""Rollback TTLs: each undoes its own step when it passes (policy ``steps.<id>.rollback_ttl``)."""

from __future__ import annotations

import time
from datetime import timedelta

import orjson
import pytest

from proctor import Proctor
from proctor.app.executor import Executor
from proctor.app.gateway import GatewayOptions
from proctor.app.worker import Worker
from proctor.core.catalog import Catalog
from proctor.core.lifecycle import PlanStatus, StepStatus
from proctor.testing import FrozenClock, RecordingTool, make_plan

REASON = "undone by proctor:rollback-ttl: the rollback TTL of s1 passed"
LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}


class Crash(BaseException):
    """Stands for the process dying inside a handler: nothing after it runs."""


class PerAction:
    """Executes every step, with the undo window and rollback TTL given for its action."""

    version = "sha256:per-action-1"

    def __init__(self, **by_action):
        self.by_action = by_action

    def evaluate(self, input):
        steps = {
            s["id"]: {"outcome": "execute", **self.by_action.get(s["action"], {})}
            for s in input["steps"]
        }
        return {"steps": steps, "plan": {"deny": [], "adjustments": []}}


def make(clock, **by_action):
    return Proctor.in_memory(
        catalog=Catalog(),
        policy=PerAction(**by_action),
        clock=clock,
        options=GatewayOptions(retry_backoff=timedelta(milliseconds=1)),
    )


def register(p, name, fn, **kw):
    p.action(name, category="general", baselines=LOW, **kw)(fn)


def wait_for(p, plan_id, done, timeout=10.0):
    """Poll until ``done(record)`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = p.gateway.store.get_plan(plan_id)
        if done(rec):
            return rec
        time.sleep(0.02)
    raise AssertionError(f"plan {plan_id} never reached the expected state")


def statuses(rec):
    return [s.status for s in rec.steps]


def events(p, plan_id, type_):
    """The ``data`` of the plan's audit events of one type, in order."""
    rows = p.gateway.store.read_events(plan_id=plan_id)
    return [orjson.loads(e.body)["data"] for e in rows if e.type == type_]


@pytest.fixture
def clock():
    return FrozenClock()


class TestRollbackTTL:
    def test_an_irreversible_step_is_left_as_it_is(self, clock):
        """The TTL releases the hold and leaves the sent email: the plan stays succeeded."""
        p = make(clock, **{"hotel.hold": {"undo_window": 600, "rollback_ttl": 3600}})
        release = RecordingTool()
        register(p, "hotel.hold", RecordingTool(), reversible=True, compensate=release)
        register(p, "mail.send", RecordingTool())
        p.submit(make_plan([("hotel.hold", {}), ("mail.send", {})], plan_id="t-1"))
        clock.advance(timedelta(hours=2))

        changed = p.tick()

        rec = p.get("t-1")
        assert [c.plan_id for c in changed] == ["t-1"]
        assert rec.status is PlanStatus.SUCCEEDED
        assert rec.error is None
        assert statuses(rec) == [StepStatus.COMPENSATED, StepStatus.SUCCEEDED]
        assert release.keys == ["t-1:s1"]
        assert events(p, "t-1", "compensation.failed") == []
        assert events(p, "t-1", "undo.requested")[-1]["steps"] == ["s1"]
        assert events(p, "t-1", "plan.rolled_back") == [
            {"status": "succeeded", "reason": REASON, "steps": ["s1"]}
        ]
        assert len(events(p, "t-1", "plan.finished")) == 1  # when it succeeded, not again
        assert rec.timer_at is None  # nothing left to roll back: the timer does not fire again
        assert p.tick() == []
        assert p.verify().ok

    def test_a_later_ttl_fires_at_its_own_time(self, clock):
        """A step whose TTL comes later is not undone by an earlier one; it is at its own."""
        p = make(
            clock,
            **{"hotel.hold": {"rollback_ttl": 60}, "car.hold": {"rollback_ttl": 600}},
        )
        hotel, car = RecordingTool(), RecordingTool()
        register(p, "hotel.hold", RecordingTool(), reversible=True, compensate=hotel)
        register(p, "car.hold", RecordingTool(), reversible=True, compensate=car)
        p.submit(make_plan([("hotel.hold", {}), ("car.hold", {})], plan_id="t-2"))
        clock.advance(61)

        p.tick()

        rec = p.get("t-2")
        assert rec.status is PlanStatus.SUCCEEDED
        assert statuses(rec) == [StepStatus.COMPENSATED, StepStatus.SUCCEEDED]
        assert (hotel.keys, car.keys) == (["t-2:s1"], [])
        assert rec.timer_at == rec.steps[1].rollback_at

        clock.advance(540)
        p.tick()

        rec = p.get("t-2")
        assert rec.status is PlanStatus.UNDONE
        assert statuses(rec) == [StepStatus.COMPENSATED, StepStatus.COMPENSATED]
        assert (hotel.keys, car.keys) == (["t-2:s1"], ["t-2:s2"])
        assert p.verify().ok

    def test_a_step_without_a_ttl_stays_and_its_user_may_still_undo_it(self, clock):
        """A reversible step with only an undo window is not rolled back by another's TTL."""
        p = make(
            clock,
            **{"hotel.hold": {"rollback_ttl": 60}, "shop.pay": {"undo_window": 600}},
        )
        hold, refund = RecordingTool(), RecordingTool()
        register(p, "hotel.hold", RecordingTool(), reversible=True, compensate=hold)
        register(p, "shop.pay", RecordingTool(), reversible=True, compensate=refund)
        p.submit(make_plan([("hotel.hold", {}), ("shop.pay", {})], plan_id="t-3"))
        clock.advance(61)

        p.tick()

        assert statuses(p.get("t-3")) == [StepStatus.COMPENSATED, StepStatus.SUCCEEDED]
        assert refund.calls == []
        rec = p.undo("t-3", "alice")
        assert rec.status is PlanStatus.UNDONE
        assert (hold.keys, refund.keys) == (["t-3:s1"], ["t-3:s2"])

    def test_every_step_due_ends_undone(self, clock):
        """When every completed step's TTL passed, the plan is undone, as before."""
        p = make(clock, **{"a.hold": {"rollback_ttl": 60}, "b.hold": {"rollback_ttl": 30}})
        undo = RecordingTool()
        register(p, "a.hold", RecordingTool(), reversible=True, compensate=undo)
        register(p, "b.hold", RecordingTool(), reversible=True, compensate=undo)
        p.submit(make_plan([("a.hold", {}), ("b.hold", {})], plan_id="t-4"))
        clock.advance(61)

        p.tick()

        rec = p.get("t-4")
        assert rec.status is PlanStatus.UNDONE
        assert undo.keys == ["t-4:s2", "t-4:s1"]  # reverse order

    def test_a_crash_mid_rollback_resumes_only_the_due_steps(self, clock):
        """The steps a TTL undoes are stored with the saga: a takeover undoes no others."""
        p = make(clock, **{"hotel.hold": {"rollback_ttl": 60}, "car.hold": {"undo_window": 600}})
        calls = []

        def release(params, call):
            calls.append(call.idempotency_key)
            if len(calls) == 1:
                raise Crash

        car = RecordingTool()
        register(
            p, "hotel.hold", RecordingTool(), reversible=True, compensate=release, idempotent=True
        )
        register(p, "car.hold", RecordingTool(), reversible=True, compensate=car)
        p.submit(make_plan([("hotel.hold", {}), ("car.hold", {})], plan_id="t-5"))
        clock.advance(61)
        with pytest.raises(Crash):
            p.tick()
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))

        rec = Executor(p.gateway, owner="elsewhere:1:1:abc").resume("t-5")

        assert rec.status is PlanStatus.SUCCEEDED
        assert statuses(rec) == [StepStatus.COMPENSATED, StepStatus.SUCCEEDED]
        assert calls == ["t-5:s1", "t-5:s1"]
        assert car.calls == []
        assert p.verify().ok


def on_disk(tmp_path, clock, policy):
    """One process's instance on a database other processes share."""
    return Proctor.in_memory(
        catalog=Catalog(),
        policy=policy,
        clock=clock,
        options=GatewayOptions(retry_backoff=timedelta(milliseconds=1)),
        database_url=f"sqlite:///{tmp_path / 'shared.db'}",
    )


class TestTimersOfOtherProcesses:
    def test_a_process_without_the_action_leaves_the_ttl_to_one_that_has_it(self, tmp_path):
        """`proctor worker` lacks the app's Python action: it does not fire its TTL; the app does."""
        clock = FrozenClock()
        policy = PerAction(**{"hotel.hold": {"rollback_ttl": 600}})
        app = on_disk(tmp_path, clock, policy)
        release = RecordingTool()
        register(app, "hotel.hold", RecordingTool(), reversible=True, compensate=release)
        app.submit(make_plan([("hotel.hold", {})], plan_id="u-1"))
        worker = on_disk(tmp_path, clock, policy)
        clock.advance(601)

        assert worker.tick() == []

        untouched = app.get("u-1")
        assert untouched.status is PlanStatus.SUCCEEDED and untouched.lease_owner is None
        assert statuses(untouched) == [StepStatus.SUCCEEDED]
        assert [c.plan_id for c in app.tick()] == ["u-1"]
        assert app.get("u-1").status is PlanStatus.UNDONE
        assert release.keys == ["u-1:s1"]
        assert app.verify().ok

    def test_a_ttl_fired_meanwhile_by_another_process_is_skipped_and_the_rest_fire(self, tmp_path):
        """Two workers race on one TTL: the loser skips it (no conflict) and fires the next."""
        clock = FrozenClock()
        policy = PerAction(**{"a.hold": {"rollback_ttl": 60}, "b.hold": {"rollback_ttl": 60}})
        mine, other = on_disk(tmp_path, clock, policy), on_disk(tmp_path, clock, policy)
        fired_elsewhere = []

        def release_a(params, call):
            # While this worker undoes A, the other one fires the TTLs now due (B's).
            fired_elsewhere.extend(c.plan_id for c in other.tick())

        register(mine, "a.hold", RecordingTool(), reversible=True, compensate=release_a)
        register(mine, "b.hold", RecordingTool(), reversible=True, compensate=RecordingTool())
        register(other, "b.hold", RecordingTool(), reversible=True, compensate=RecordingTool())
        mine.submit(make_plan([("a.hold", {})], plan_id="r-a"))
        clock.advance(1)
        mine.submit(make_plan([("b.hold", {})], plan_id="r-b"))
        clock.advance(1)
        mine.submit(make_plan([("a.hold", {})], plan_id="r-c"))
        clock.advance(60)

        changed = mine.tick()

        assert fired_elsewhere == ["r-b"]
        assert sorted(c.plan_id for c in changed) == ["r-a", "r-c"]
        for plan_id in ("r-a", "r-b", "r-c"):
            assert mine.get(plan_id).status is PlanStatus.UNDONE
        assert len(events(mine, "r-b", "undo.requested")) == 1

    def test_a_worker_pass_recovers_plans_though_a_timer_is_not_its_own(self, tmp_path):
        """A TTL this worker cannot fire does not stop it resuming a plan whose lease lapsed."""
        clock = FrozenClock()
        policy = PerAction(**{"hotel.hold": {"rollback_ttl": 60}})
        app = on_disk(tmp_path, clock, policy)
        register(app, "hotel.hold", RecordingTool(), reversible=True, compensate=RecordingTool())
        app.submit(make_plan([("hotel.hold", {})], plan_id="w-1"))
        worker = on_disk(tmp_path, clock, policy)
        calls = []

        def flaky(params, call):
            calls.append(call.idempotency_key)
            if len(calls) == 1:
                raise Crash  # the process running it dies
            return {"ok": True}

        register(app, "shop.idem", flaky, idempotent=True)
        register(worker, "shop.idem", flaky, idempotent=True)
        with pytest.raises(Crash):
            app.submit(make_plan([("shop.idem", {})], plan_id="w-2"))
        clock.advance(61)  # the TTL is due, and the crashed plan's lease lapsed

        done = Worker(worker.gateway).run_once()

        assert done.plans_resumed == 1
        rec = wait_for(worker, "w-2", lambda r: r.status is not PlanStatus.RUNNING)
        assert rec.status is PlanStatus.SUCCEEDED
        assert calls == ["w-2:s1", "w-2:s1"]
        assert app.get("w-1").status is PlanStatus.SUCCEEDED  # left to the app
