"""Compensations time out as steps do, and a hung one holds up neither the worker nor others."""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import timedelta

import orjson
import pytest

from proctor import Proctor
from proctor.app.gateway import GatewayOptions
from proctor.app.worker import Worker
from proctor.core.catalog import Catalog
from proctor.core.lifecycle import PlanStatus, StepStatus
from proctor.testing import FrozenClock, RecordingTool, make_plan

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}


class Crash(BaseException):
    """Stands for the process dying inside a handler: nothing after it runs."""


class Everything:
    """Executes every step with an undo window and the given rollback TTL."""

    version = "sha256:everything-1"

    def __init__(self, rollback_ttl=0):
        self.rollback_ttl = rollback_ttl

    def evaluate(self, input):
        d = {"outcome": "execute", "undo_window": 600, "rollback_ttl": self.rollback_ttl}
        return {"steps": {s["id"]: d for s in input["steps"]}, "plan": {}}


class Hanging:
    """A compensation whose first ``hangs`` calls never answer (until released)."""

    def __init__(self, hangs=1):
        self.hangs = hangs
        self.keys = []
        self.release = threading.Event()

    def __call__(self, params, call):
        self.keys.append(call.idempotency_key)
        if len(self.keys) <= self.hangs:
            self.release.wait(10)


def make(clock=None, rollback_ttl=0, **opts):
    opts.setdefault("retry_backoff", timedelta(milliseconds=1))
    return Proctor.in_memory(
        catalog=Catalog(),
        policy=Everything(rollback_ttl),
        clock=clock or FrozenClock(),
        options=GatewayOptions(**opts),
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


def types(p, plan_id):
    return [e.type for e in p.gateway.store.read_events(plan_id=plan_id)]


def undo_in_a_thread(p, plan_id):
    t = threading.Thread(target=lambda: p.undo(plan_id, "alice"), daemon=True)
    t.start()
    return t


def settled(rec):
    return rec.status in (PlanStatus.FAILED, PlanStatus.UNDONE)


class TestCompensationTimeouts:
    def test_a_hung_non_idempotent_compensation_fails_after_its_timeout(self):
        """Its effect is unknown: compensation_failed with the timeout, never run again."""
        p = make()
        undo = Hanging()
        register(p, "trip.book", RecordingTool(), reversible=True, compensate=undo, timeout=0.2)
        p.submit(make_plan([("trip.book", {})], plan_id="h-1"))
        caller = undo_in_a_thread(p, "h-1")

        rec = wait_for(p, "h-1", settled)
        undo.release.set()
        caller.join(10)

        assert rec.status is PlanStatus.FAILED
        assert rec.steps[0].status is StepStatus.COMPENSATION_FAILED
        assert "TimeoutError: attempt 1 took longer than 0.2 s" in rec.steps[0].error
        assert "effect is unknown" in rec.steps[0].error
        assert undo.keys == ["h-1:s1"]
        assert "compensation.timed_out" in types(p, "h-1")
        # The stuck call's late return changed nothing on record, and the log says it returned.
        assert p.get("h-1").steps[0] == rec.steps[0]
        late = [e for e in p.gateway.store.read_events(plan_id="h-1") if e.step_id == "s1"][-1]
        assert late.type == "compensation.late_result"
        assert orjson.loads(late.body)["data"] == {
            "attempt": 1,
            "owner": p.gateway.executor.owner,
            "error": None,
            "recorded": "compensation_failed",
        }
        assert p.verify().ok

    def test_a_hung_idempotent_compensation_is_retried_after_its_timeout(self):
        """Run again with the same key, as a hung idempotent step is; the plan ends undone."""
        p = make()
        undo = Hanging()
        register(
            p,
            "trip.book",
            RecordingTool(),
            reversible=True,
            compensate=undo,
            idempotent=True,
            timeout=0.2,
        )
        p.submit(make_plan([("trip.book", {})], plan_id="h-2"))
        caller = undo_in_a_thread(p, "h-2")

        rec = wait_for(p, "h-2", settled)
        undo.release.set()
        caller.join(10)

        assert rec.status is PlanStatus.UNDONE
        assert rec.steps[0].status is StepStatus.COMPENSATED
        assert rec.steps[0].error is None
        assert undo.keys == ["h-2:s1", "h-2:s1"]
        assert rec.compensation["attempts"] == {"s1": 2}
        assert p.get("h-2").status is PlanStatus.UNDONE
        # Both attempts are in the log with their numbers, and which one timed out, which
        # one succeeded, and the first's late return.
        saga = [
            (e.type, orjson.loads(e.body)["data"].get("attempt"))
            for e in p.gateway.store.read_events(plan_id="h-2")
            if e.type.startswith("compensation.")
        ]
        assert saga[:5] == [
            ("compensation.started", None),
            ("compensation.attempt_started", 1),
            ("compensation.timed_out", 1),
            ("compensation.attempt_started", 2),
            ("compensation.succeeded", 2),
        ]
        assert saga[5:] == [("compensation.late_result", 1)]
        assert p.verify().ok

    def test_an_idempotent_compensation_that_keeps_hanging_stops_at_max_attempts(self):
        """Retries stop at max_attempts: compensation_failed, no attempts left."""
        p = make(max_attempts=2)
        undo = Hanging(hangs=5)
        register(
            p,
            "trip.book",
            RecordingTool(),
            reversible=True,
            compensate=undo,
            idempotent=True,
            timeout=0.2,
        )
        p.submit(make_plan([("trip.book", {})], plan_id="h-3"))
        caller = undo_in_a_thread(p, "h-3")

        rec = wait_for(p, "h-3", settled)
        undo.release.set()
        caller.join(10)

        assert rec.status is PlanStatus.FAILED
        assert "no attempts are left (2)" in rec.steps[0].error
        assert undo.keys == ["h-3:s1", "h-3:s1"]
        assert types(p, "h-3").count("compensation.timed_out") == 2

    def test_a_crash_mid_compensation_counts_as_an_attempt(self):
        """An idempotent compensation interrupted by crashes is not re-run past max_attempts."""
        clock = FrozenClock()
        p = make(clock, max_attempts=1)
        calls = []

        def crashing(params, call):
            calls.append(call.idempotency_key)
            raise Crash

        register(
            p, "trip.book", RecordingTool(), reversible=True, compensate=crashing, idempotent=True
        )
        p.submit(make_plan([("trip.book", {})], plan_id="h-4"))
        with pytest.raises(Crash):
            p.undo("h-4", "alice")
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))

        rec = p.gateway.executor.resume("h-4")

        assert rec.status is PlanStatus.FAILED
        assert "no attempts are left (1)" in rec.steps[0].error
        assert calls == ["h-4:s1"]


class TestWorker:
    def test_a_hung_rollback_ttl_does_not_stall_the_worker(self):
        """The TTL's compensation runs on a worker thread; the pass goes on and recovers."""
        clock = FrozenClock()
        p = make(clock, rollback_ttl=60, step_timeout=0.3)
        hold = Hanging()
        register(p, "hotel.hold", RecordingTool(), reversible=True, compensate=hold)
        calls = []

        def flaky(params, call):
            calls.append(call.idempotency_key)
            if len(calls) == 1:
                raise Crash  # the process running it dies
            return {"ok": True}

        register(p, "shop.idem", flaky, idempotent=True)
        p.submit(make_plan([("hotel.hold", {})], plan_id="ttl-1"))
        with pytest.raises(Crash):
            p.submit(make_plan([("shop.idem", {})], plan_id="crashed-1"))
        clock.advance(timedelta(minutes=5))  # the TTL is due and the crashed plan's lease lapsed
        worker = Worker(p.gateway, interval=0.1)
        worker.start()
        try:
            crashed = wait_for(p, "crashed-1", lambda r: r.status is not PlanStatus.RUNNING, 5)
            ttl = wait_for(p, "ttl-1", lambda r: r.status is PlanStatus.FAILED, 5)
        finally:
            hold.release.set()
            worker.stop()

        assert crashed.status is PlanStatus.SUCCEEDED
        assert ttl.steps[0].status is StepStatus.COMPENSATION_FAILED
        assert "TimeoutError" in ttl.steps[0].error
        assert hold.keys == ["ttl-1:s1"]

    def test_the_worker_starts_a_rollback_and_leaves_it_to_a_worker_thread(self):
        """tick(wait=False) returns the plan compensating, unleased; a worker thread ends it."""
        clock = FrozenClock()
        p = make(clock, rollback_ttl=60)
        hold = Hanging()
        register(p, "hotel.hold", RecordingTool(), reversible=True, compensate=hold)
        p.submit(make_plan([("hotel.hold", {})], plan_id="ttl-2"))
        clock.advance(61)

        changed = p.gateway.tick(wait=False)
        hold.release.set()

        assert [(c.plan_id, c.status, c.lease_owner) for c in changed] == [
            ("ttl-2", PlanStatus.COMPENSATING, None)
        ]
        wait_for(p, "ttl-2", lambda r: r.status is PlanStatus.UNDONE)
        assert hold.keys == ["ttl-2:s1"]
        assert "plan.resumed" not in types(p, "ttl-2")  # its first claim, not a takeover
        assert p.verify().ok


class TestStepTimeoutOnAWorkerThread:
    def test_a_hung_step_resumed_on_a_worker_thread_is_retried_without_waiting_for_it(self):
        """A queued plan's step hangs on a worker thread: after its timeout the next attempt
        runs on another thread, not once the stuck one comes back (as for compensations)."""
        p = make(max_attempts=2)
        step = Hanging()
        register(p, "q.fetch", step, idempotent=True, timeout=0.2, runner="r")
        rec = p.submit(make_plan([("q.fetch", {})]))
        assert rec.status is PlanStatus.RUNNING and rec.lease_owner is None  # queued
        p.gateway.options = dataclasses.replace(p.gateway.options, runners=frozenset({"r"}))
        ex = p.gateway.executor
        try:
            assert ex.submit_resume(rec.plan_id)
            done = wait_for(p, rec.plan_id, lambda r: r.status is PlanStatus.SUCCEEDED, 5.0)
        finally:
            step.release.set()
        assert done.steps[0].attempts == 2
        assert len(step.keys) == 2
        assert "step.timed_out" in types(p, rec.plan_id)
        p.close()
