"""Durable execution: retries, timeouts, leases, takeover, unknown steps, canary, saga resume."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from proctor import Proctor
from proctor.app.executor import Executor, owner_alive, process_owner_id
from proctor.app.gateway import GatewayOptions
from proctor.core.catalog import Catalog
from proctor.core.lifecycle import PlanStatus, StepStatus
from proctor.errors import ConflictError, RetryableError
from proctor.testing import FrozenClock, RecordingTool, make_plan

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}


class Crash(BaseException):
    """Stands for the process dying inside a handler: nothing after it runs."""


class Flaky:
    """Fails with a retryable error ``failures`` times, then succeeds."""

    def __init__(self, failures, error=RetryableError):
        self.failures = failures
        self.error = error
        self.keys = []

    def __call__(self, params, call):
        self.keys.append(call.idempotency_key)
        if len(self.keys) <= self.failures:
            raise self.error("try again")
        return {"done": len(self.keys)}


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
    """A policy engine that executes every step with the given extras (a fake, not a mock)."""

    version = "sha256:everything-1"

    def __init__(self, **extra):
        self.extra = extra

    def evaluate(self, input):
        steps = {s["id"]: {"outcome": "execute", **self.extra} for s in input["steps"]}
        return {"steps": steps, "plan": {"deny": [], "adjustments": []}}


def make(clock=None, policy=None, **opts):
    opts.setdefault("retry_backoff", timedelta(milliseconds=1))
    return Proctor.in_memory(
        catalog=Catalog(),
        policy=policy or Everything(undo_window=600),
        clock=clock or FrozenClock(),
        options=GatewayOptions(**opts),
    )


def wait_for(p, plan_id, done, timeout=10.0):
    """Poll until ``done(record)`` holds (the plan may not exist yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = p.gateway.store.get_plan(plan_id)
        if rec is not None and done(rec):
            return rec
        time.sleep(0.02)
    raise AssertionError(f"plan {plan_id} never reached the expected state")


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


class TestRetries:
    def test_retryable_error_is_retried_with_the_same_key(self):
        p = make()
        tool = Flaky(2)
        register(p, "shop.flaky", tool, idempotent=True)
        rec = p.submit(make_plan([("shop.flaky", {})], plan_id="r-1"))
        assert rec.status is PlanStatus.SUCCEEDED
        assert tool.keys == ["r-1:s1"] * 3
        assert rec.steps[0].attempts == 3
        assert types(p, "r-1").count("step.retrying") == 2
        assert p.verify().ok

    def test_retries_stop_at_max_attempts(self):
        p = make(max_attempts=2)
        tool = Flaky(5)
        register(p, "shop.flaky", tool, idempotent=True)
        rec = p.submit(make_plan([("shop.flaky", {})]))
        assert rec.status is PlanStatus.FAILED
        assert len(tool.keys) == 2
        assert "RetryableError" in rec.steps[0].error

    def test_plain_error_is_not_retried(self):
        p = make()
        tool = Flaky(1, error=ValueError)
        register(p, "shop.flaky", tool, idempotent=True)
        rec = p.submit(make_plan([("shop.flaky", {})]))
        assert rec.status is PlanStatus.FAILED
        assert len(tool.keys) == 1

    def test_connection_error_is_retried_only_for_idempotent_tools(self):
        p = make()
        idem, once = Flaky(1, error=ConnectionError), Flaky(1, error=ConnectionError)
        register(p, "shop.idem", idem, idempotent=True)
        register(p, "shop.once", once, idempotent=False)
        assert p.submit(make_plan([("shop.idem", {})])).status is PlanStatus.SUCCEEDED
        assert p.submit(make_plan([("shop.once", {})])).status is PlanStatus.FAILED
        assert (len(idem.keys), len(once.keys)) == (2, 1)

    def test_no_retry_past_the_deadline(self):
        clock = FrozenClock()
        p = make(clock, plan_deadline=timedelta(seconds=1), retry_backoff=timedelta(seconds=5))
        tool = Flaky(1)
        register(p, "shop.flaky", tool, idempotent=True)
        rec = p.submit(make_plan([("shop.flaky", {})]))
        assert rec.status is PlanStatus.FAILED
        assert len(tool.keys) == 1


class TestTimeouts:
    def test_a_hung_idempotent_step_is_retried_after_its_timeout(self):
        p = make()
        release = threading.Event()
        calls = []

        def slow(params, call):
            calls.append(call.idempotency_key)
            if len(calls) == 1:
                release.wait(10)  # hangs past the timeout; returns late
                return {"late": True}
            return {"attempt": len(calls)}

        register(p, "ops.slow", slow, idempotent=True, timeout=0.2)
        done = {}
        t = threading.Thread(
            target=lambda: done.setdefault(
                "r", p.submit(make_plan([("ops.slow", {})], plan_id="t-1"))
            )
        )
        t.start()
        rec = wait_for(p, "t-1", lambda r: r.status is PlanStatus.SUCCEEDED)
        assert rec.steps[0].result == {"attempt": 2}
        release.set()
        t.join(10)
        # The first attempt's late return changed nothing but is on the record.
        assert p.get("t-1").steps[0].result == {"attempt": 2}
        assert "step.timed_out" in types(p, "t-1")
        assert "step.late_result" in types(p, "t-1")
        assert p.verify().ok

    def test_a_hung_non_idempotent_step_needs_attention(self):
        p = make()
        release = threading.Event()

        def slow(params, call):
            release.wait(10)
            return {"late": True}

        register(p, "ops.once", slow, idempotent=False, timeout=0.2)
        t = threading.Thread(target=lambda: p.submit(make_plan([("ops.once", {})], plan_id="t-2")))
        t.start()
        rec = wait_for(p, "t-2", lambda r: r.status is not PlanStatus.RUNNING)
        release.set()
        t.join(10)
        assert rec.status is PlanStatus.NEEDS_ATTENTION
        assert rec.steps[0].status is StepStatus.UNKNOWN
        assert "TimeoutError" in rec.steps[0].error


class TestTakeover:
    def test_interrupted_idempotent_step_is_rerun_by_another_worker(self):
        clock = FrozenClock()
        p = make(clock)
        tool = Crashing()
        register(p, "shop.idem", tool, idempotent=True)
        crash_submit(p, make_plan([("shop.idem", {})], plan_id="c-1"))
        held = p.get("c-1")
        assert held.status is PlanStatus.RUNNING
        assert held.lease_owner.startswith(p.gateway.executor.owner + "#")
        w = other_worker(p)
        assert w.resume("c-1") is None  # the lease is live: not ours to take
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))
        rec = w.resume("c-1")
        assert rec.status is PlanStatus.SUCCEEDED
        assert tool.keys == ["c-1:s1"]  # the same idempotency key on the rerun
        assert rec.steps[0].attempts == 2
        assert rec.lease_owner is None
        assert "plan.resumed" in types(p, "c-1")
        assert p.verify().ok

    def test_interrupted_non_idempotent_step_is_never_rerun(self):
        clock = FrozenClock()
        p = make(clock)
        tool = Crashing()
        register(p, "pay.once", tool, idempotent=False)
        crash_submit(p, make_plan([("pay.once", {})], plan_id="c-2"))
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))
        rec = other_worker(p).resume("c-2")
        assert rec.status is PlanStatus.NEEDS_ATTENTION
        assert rec.steps[0].status is StepStatus.UNKNOWN
        assert tool.calls == 1
        assert "step.unknown" in types(p, "c-2")

    def test_resolve_unknown_as_succeeded_runs_the_rest(self):
        clock = FrozenClock()
        p = make(clock)
        register(p, "pay.once", Crashing(), idempotent=False)
        after = RecordingTool()
        register(p, "shop.after", after)
        crash_submit(p, make_plan([("pay.once", {}), ("shop.after", {})], plan_id="c-3"))
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))
        other_worker(p).resume("c-3")
        with pytest.raises(ConflictError):
            p.resolve("c-3", "s2", succeeded=True, principal="ops")
        rec = p.resolve("c-3", "s1", succeeded=True, principal="ops", comment="checked the bank")
        assert rec.status is PlanStatus.SUCCEEDED
        assert after.keys == ["c-3:s2"]
        assert "step.resolved" in types(p, "c-3")

    def test_resolve_unknown_as_failed_compensates(self):
        clock = FrozenClock()
        p = make(clock)
        undo = RecordingTool()
        register(p, "shop.first", RecordingTool(), reversible=True, compensate=undo)
        register(p, "pay.once", Crashing(), idempotent=False)
        crash_submit(p, make_plan([("shop.first", {}), ("pay.once", {})], plan_id="c-4"))
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))
        other_worker(p).resume("c-4")
        rec = p.resolve("c-4", "s2", succeeded=False, principal="ops")
        assert rec.status is PlanStatus.COMPENSATED
        assert undo.keys == ["c-4:s1"]

    def test_dead_local_owner_is_taken_over_before_its_lease_lapses(self):
        p = make()
        tool = Crashing()
        register(p, "shop.idem", tool, idempotent=True)
        crash_submit(p, make_plan([("shop.idem", {})], plan_id="c-5"))
        # Pretend the owner was another process on this host that has exited.
        import dataclasses

        with p.gateway.store.transaction() as tx:
            rec = tx.get_plan("c-5")
            host = process_owner_id().split(":")[0]
            tx.save_plan(dataclasses.replace(rec, lease_owner=f"{host}:999999999:1:dead"))
        assert p.recover() == 1
        wait_for(p, "c-5", lambda r: r.status is PlanStatus.SUCCEEDED)

    def test_stale_owner_cannot_record_after_takeover(self):
        clock = FrozenClock()
        p = make(clock)
        gate, entered = threading.Event(), threading.Event()
        calls = []

        def slow(params, call):
            calls.append(1)
            if len(calls) == 1:
                entered.set()
                gate.wait(10)
                return {"stale": True}
            return {"fresh": True}

        register(p, "shop.idem", slow, idempotent=True, timeout=None)
        t = threading.Thread(target=lambda: p.submit(make_plan([("shop.idem", {})], plan_id="c-6")))
        t.start()
        assert entered.wait(10)
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))
        rec = other_worker(p).resume("c-6")  # the first owner looks dead: its lease lapsed
        assert rec.steps[0].result == {"fresh": True}
        gate.set()
        t.join(10)
        final = p.get("c-6")
        assert final.steps[0].result == {"fresh": True}
        assert "step.late_result" in types(p, "c-6")
        assert p.verify().ok


class TestOwnerIds:
    def test_own_process_is_alive_and_a_gone_pid_is_not(self):
        me = process_owner_id()
        assert owner_alive(me)
        host = me.split(":")[0]
        assert not owner_alive(f"{host}:999999999:1:x")
        assert owner_alive("some-other-host:1:1:x")  # only its lease can free it


class TestDurableCompensation:
    def test_crash_mid_undo_resumes_and_finishes_undone(self):
        clock = FrozenClock()
        p = make(clock)
        undo = Crashing()
        register(p, "trip.book", RecordingTool(), reversible=True, compensate=undo, idempotent=True)
        rec = p.submit(make_plan([("trip.book", {})], plan_id="u-1"))
        assert rec.status is PlanStatus.SUCCEEDED
        with pytest.raises(Crash):
            p.undo("u-1", "alice")
        mid = p.get("u-1")
        assert mid.status is PlanStatus.COMPENSATING
        assert mid.steps[0].status is StepStatus.COMPENSATING
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))
        rec = other_worker(p).resume("u-1")
        assert rec.status is PlanStatus.UNDONE
        assert undo.keys == ["u-1:s1"]
        assert p.verify().ok

    def test_a_failed_step_and_the_start_of_its_saga_commit_together(self):
        clock = FrozenClock()
        p = make(clock)
        undo = Crashing()
        register(p, "trip.book", RecordingTool(), reversible=True, compensate=undo, idempotent=True)
        register(p, "trip.fail", RecordingTool(fail_with=ValueError("no seats")))
        with pytest.raises(Crash):
            p.submit(make_plan([("trip.book", {}), ("trip.fail", {})], plan_id="u-4"))
        mid = p.get("u-4")
        assert mid.status is PlanStatus.COMPENSATING
        assert [s.status for s in mid.steps] == [StepStatus.COMPENSATING, StepStatus.FAILED]
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))
        rec = other_worker(p).resume("u-4")
        assert rec.status is PlanStatus.COMPENSATED
        assert "no seats" in rec.error

    def test_non_idempotent_compensation_is_not_rerun(self):
        clock = FrozenClock()
        p = make(clock)
        undo = Crashing()
        register(p, "trip.book", RecordingTool(), reversible=True, compensate=undo)
        p.submit(make_plan([("trip.book", {})], plan_id="u-2"))
        with pytest.raises(Crash):
            p.undo("u-2", "alice")
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))
        rec = other_worker(p).resume("u-2")
        assert rec.status is PlanStatus.FAILED
        assert rec.steps[0].status is StepStatus.COMPENSATION_FAILED
        assert undo.calls == 1

    def test_two_concurrent_undos_one_wins(self):
        p = make()
        undo = RecordingTool()
        register(p, "trip.book", RecordingTool(), reversible=True, compensate=undo)
        p.submit(make_plan([("trip.book", {})], plan_id="u-3"))
        first = p.undo("u-3", "alice")
        assert first.status is PlanStatus.UNDONE
        with pytest.raises(ConflictError):
            p.undo("u-3", "alice")
        assert len(undo.calls) == 1


class TestCanaryAndDrift:
    def test_canary_passes_then_runs_for_real(self):
        p = make()
        tool = RecordingTool({"healthy": True})
        register(
            p,
            "ops.deploy",
            tool,
            canary={
                "param": "env",
                "staging": "staging",
                "check": lambda a, c: {"ok": a["result"]["healthy"], "output": "200 OK"},
            },
        )
        rec = p.submit(make_plan([("ops.deploy", {"env": "prod"})], plan_id="k-1"))
        assert rec.status is PlanStatus.SUCCEEDED
        assert [c[0]["env"] for c in tool.calls] == ["staging", "prod"]
        assert tool.keys == ["k-1:s1:staging", "k-1:s1"]
        assert rec.steps[0].canary["ok"] is True
        assert "canary.checked" in types(p, "k-1")

    def test_failed_canary_never_reaches_production(self):
        p = make()
        tool = RecordingTool({"healthy": False})
        register(
            p,
            "ops.deploy",
            tool,
            canary={
                "param": "env",
                "staging": "staging",
                "check": lambda a, c: {"ok": False, "output": "5xx rate 12%"},
            },
        )
        rec = p.submit(make_plan([("ops.deploy", {"env": "prod"})]))
        assert rec.status is PlanStatus.FAILED
        assert [c[0]["env"] for c in tool.calls] == ["staging"]
        assert "5xx rate 12%" in rec.steps[0].error
        assert rec.steps[0].canary["output"] == "5xx rate 12%"

    def test_drift_between_prediction_and_outcome_is_recorded(self):
        p = make(policy=Everything(dry_run=True))
        register(
            p,
            "shop.order",
            RecordingTool({"items": 3, "total": 900}),
            simulate=lambda params, call: {"effects": {"items": 3, "total": 1000}},
        )
        rec = p.submit(make_plan([("shop.order", {})], plan_id="d-1"))
        assert rec.status is PlanStatus.SUCCEEDED, rec.error
        d = rec.steps[0].drift
        assert d["compared"] == 2 and d["matched"] == 1
        assert d["differences"] == {"total": {"predicted": 1000, "actual": 900}}


class TestRunners:
    def test_a_plan_for_another_runner_waits_for_it(self):
        clock = FrozenClock()
        p = make(clock)
        tool = RecordingTool()
        register(p, "mcp.call", tool, runner="mcp")
        rec = p.submit(make_plan([("mcp.call", {})], plan_id="m-1"))
        assert rec.status is PlanStatus.RUNNING and rec.lease_owner is None
        assert tool.calls == []
        assert p.gateway.executor.resume("m-1") is None  # this process does not serve "mcp"
        p.gateway.options = GatewayOptions(runners=frozenset({"mcp"}))
        rec = p.gateway.executor.resume("m-1")
        assert rec.status is PlanStatus.SUCCEEDED
        assert tool.keys == ["m-1:s1"]
