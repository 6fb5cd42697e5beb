"""Taking a plan over: a step whose last attempt timed out or was interrupted, late results."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import orjson
import pytest

from proctor import Proctor
from proctor.app.executor import Executor
from proctor.app.gateway import GatewayOptions
from proctor.app.kpis import from_store
from proctor.app.notify import notifications
from proctor.core.catalog import Catalog
from proctor.core.lifecycle import PlanStatus, StepStatus
from proctor.testing import FrozenClock, RecordingTool, make_plan

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}
HOUR = timedelta(hours=1)


class Crash(BaseException):
    """Stands for the process dying inside a handler: nothing after it runs."""


class Everything:
    """A policy engine that executes every step (a fake, not a mock)."""

    version = "sha256:everything-1"

    def evaluate(self, input):
        steps = {s["id"]: {"outcome": "execute", "undo_window": 600} for s in input["steps"]}
        return {"steps": steps, "plan": {"deny": [], "adjustments": []}}


class Late:
    """A handler that books, but only once ``gate`` opens: after its timeout has passed."""

    def __init__(self):
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.booked = []

    def __call__(self, params, call):
        self.entered.set()
        self.gate.wait(10)
        self.booked.append(call.idempotency_key)
        return {"booked": True}


def make(clock=None, **opts):
    return Proctor.in_memory(
        catalog=Catalog(),
        policy=Everything(),
        clock=clock or FrozenClock(),
        options=GatewayOptions(retry_backoff=timedelta(milliseconds=1), **opts),
    )


def register(p, name, fn, **kw):
    kw.setdefault("category", "general")
    kw.setdefault("baselines", LOW)
    p.action(name, **kw)(fn)


def wait_for(p, plan_id, done, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = p.gateway.store.get_plan(plan_id)
        if rec is not None and done(rec):
            return rec
        time.sleep(0.02)
    raise AssertionError(f"plan {plan_id} never reached the expected state")


def events(p, plan_id, type_=None):
    rows = p.gateway.store.read_events(plan_id=plan_id)
    return [r for r in rows if type_ is None or r.type == type_]


def data(row):
    return orjson.loads(row.body)["data"]


def submit_in_background(p, plan):
    t = threading.Thread(target=lambda: p.submit(plan))
    t.start()
    return t


class TestLastAttempt:
    def test_a_timed_out_last_attempt_leaves_the_step_unknown_not_failed(self):
        """Its late success cannot hide behind a failure: a human resolves the step."""
        p = make(max_attempts=1)
        hold_undo = RecordingTool()
        register(p, "hotel.hold", RecordingTool(), reversible=True, compensate=hold_undo)
        book = Late()
        cancel = RecordingTool()
        register(
            p, "flight.book", book, idempotent=True, reversible=True, compensate=cancel, timeout=0.2
        )
        t = submit_in_background(
            p, make_plan([("hotel.hold", {}), ("flight.book", {})], plan_id="ls-1")
        )

        rec = wait_for(p, "ls-1", lambda r: r.status is not PlanStatus.RUNNING)
        book.gate.set()  # the booking goes through after all
        t.join(10)

        assert rec.status is PlanStatus.NEEDS_ATTENTION
        assert [s.status for s in rec.steps] == [StepStatus.SUCCEEDED, StepStatus.UNKNOWN]
        assert "TimeoutError" in rec.steps[1].error
        assert "ran out of attempts (1 of 1)" in rec.error
        assert hold_undo.calls == []  # nothing compensated on a guess
        assert book.booked == ["ls-1:s2"]
        late = events(p, "ls-1", "step.late_result")
        assert [data(e)["recorded"] for e in late] == ["unknown"]
        assert data(late[0])["error"] is None  # what the resolver needs: it did succeed
        assert events(p, "ls-1", "anomaly.detected") == []  # already waiting for a human

        done = p.resolve("ls-1", "s2", succeeded=True, principal="ops", comment="booked")
        assert done.status is PlanStatus.SUCCEEDED
        assert cancel.calls == []
        assert p.verify().ok

    def test_an_interrupted_last_attempt_leaves_the_step_unknown_not_failed(self):
        """A crash during an idempotent step's last attempt: its effect is unknown too."""
        clock = FrozenClock()
        p = make(clock, max_attempts=1)
        hold_undo = RecordingTool()
        register(p, "hotel.hold", RecordingTool(), reversible=True, compensate=hold_undo)

        def crash(params, call):
            raise Crash

        register(p, "flight.book", crash, idempotent=True)
        with pytest.raises(Crash):
            p.submit(make_plan([("hotel.hold", {}), ("flight.book", {})], plan_id="ls-2"))
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))

        rec = Executor(p.gateway, owner="elsewhere:1:1:abc").resume("ls-2")

        assert rec.status is PlanStatus.NEEDS_ATTENTION
        assert rec.steps[1].status is StepStatus.UNKNOWN
        assert rec.steps[1].error == "interrupted mid-flight"
        assert hold_undo.calls == []
        assert [e.type for e in events(p, "ls-2")][-2:] == ["plan.resumed", "step.unknown"]

        undone = p.resolve("ls-2", "s2", succeeded=False, principal="ops")
        assert undone.status is PlanStatus.COMPENSATED
        assert len(hold_undo.calls) == 1


class TestLateResults:
    def test_a_late_success_for_a_step_recorded_failed_is_escalated(self):
        """The effect nobody will undo reaches a human: an anomaly, in webhooks and KPIs."""
        clock = FrozenClock()
        p = make(clock)
        book = Late()
        register(p, "flight.book", book, idempotent=False, timeout=0.2)
        t = submit_in_background(p, make_plan([("flight.book", {})], plan_id="ls-3"))
        wait_for(p, "ls-3", lambda r: r.status is PlanStatus.NEEDS_ATTENTION)
        # The operator looked too early and found no booking.
        p.resolve("ls-3", "s1", succeeded=False, principal="ops")

        book.gate.set()
        t.join(10)

        assert p.get("ls-3").status is PlanStatus.FAILED  # the record stays as resolved
        late = events(p, "ls-3", "step.late_result")
        assert [data(e)["recorded"] for e in late] == ["failed"]
        anomalies = events(p, "ls-3", "anomaly.detected")
        assert len(anomalies) == 1
        assert anomalies[0].step_id == "s1"
        assert "succeeded late, after it was recorded failed" in data(anomalies[0])["summary"]
        sent = notifications(anomalies)
        assert [(n.event, n.plan_id) for n in sent] == [("anomaly", "ls-3")]
        kpis = from_store(p.gateway.store, since=clock.now() - HOUR, until=clock.now() + HOUR)
        assert kpis["all"]["counts"]["anomalies"] == 1
        assert p.verify().ok

    def test_a_late_failure_for_a_step_recorded_failed_is_only_noted(self):
        """A late failure agrees with the record: an event, no escalation."""
        p = make()
        gate = threading.Event()

        def fails_late(params, call):
            gate.wait(10)
            raise ValueError("no seats")

        register(p, "flight.book", fails_late, idempotent=False, timeout=0.2)
        t = submit_in_background(p, make_plan([("flight.book", {})], plan_id="ls-4"))
        wait_for(p, "ls-4", lambda r: r.status is PlanStatus.NEEDS_ATTENTION)
        p.resolve("ls-4", "s1", succeeded=False, principal="ops")

        gate.set()
        t.join(10)

        late = events(p, "ls-4", "step.late_result")
        assert [data(e)["recorded"] for e in late] == ["failed"]
        assert "no seats" in data(late[0])["error"]
        assert events(p, "ls-4", "anomaly.detected") == []
