"""The executor's deferred calls (``Executor.deferred``), as the MCP proxy uses them.

The proxy submits a call's plan inside ``deferred()``, makes the upstream call itself in its
event loop (``next_call``), then hands the outcome back (``complete``). These tests drive
that API with a Python action, in process, and check what the audit log records.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from proctor import Proctor
from proctor.app.gateway import GatewayOptions
from proctor.core.lifecycle import PlanStatus
from proctor.errors import RetryableError
from proctor.testing import FrozenClock

BASE = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}


def instance(*, idempotent=False, clock=None, **options):
    p = Proctor.in_memory(
        clock=clock, options=GatewayOptions(retry_backoff=timedelta(0), **options)
    )
    ran = []

    @p.action("test.echo", category="read", baselines=BASE, idempotent=idempotent)
    def echo(params, call):
        ran.append(params)
        return {"echo": params["m"]}

    return p, ran


def plan(m="hi"):
    return {
        "actor": {"type": "agent", "name": "bot", "model_version": "t", "agent_id": "bot"},
        "on_behalf_of": "u",
        "intent": "echo",
        "steps": [{"id": "s1", "action": "test.echo", "params": {"m": m}}],
    }


def started(p):
    """Submit under ``deferred()`` and take the step's call: (executor, plan, call)."""
    ex = p.gateway.executor
    with ex.deferred():
        rec = p.gateway.submit(plan())
    pending = ex.next_call(rec)
    assert pending is not None
    return ex, rec, pending


def types_of(p, plan_id):
    return [json.loads(e.body)["type"] for e in p.gateway.store.read_events(plan_id=plan_id)]


class TestDeferred:
    def test_outside_deferred_the_executor_calls_the_handler_itself(self):
        """Without deferred(), submit runs the step: the handler is called, the plan done."""
        p, ran = instance()

        rec = p.gateway.submit(plan())

        assert rec.status is PlanStatus.SUCCEEDED
        assert ran == [{"m": "hi"}]

    def test_a_deferred_plan_is_started_and_its_call_left_to_the_caller(self):
        """Inside deferred(), the plan comes back running, step started, handler not called."""
        p, ran = instance()
        ex = p.gateway.executor

        with ex.deferred():
            rec = p.gateway.submit(plan())
        pending = ex.next_call(rec)

        assert rec.status is PlanStatus.RUNNING and ex.owns(rec)
        assert ran == []
        assert types_of(p, rec.plan_id)[-1] == "step.started"
        assert pending is not None
        assert pending.handler == "test.echo:handler" and dict(pending.params) == {"m": "hi"}
        assert pending.call.idempotency_key == f"{rec.plan_id}:s1"
        ex.complete(pending, result=None)

    def test_complete_records_the_result_and_finishes_the_plan(self):
        """The caller's result is recorded in step.succeeded and the plan finishes."""
        p, ran = instance()
        ex, rec, pending = started(p)

        done = ex.complete(pending, result={"echo": "from the caller"})

        assert done.status is PlanStatus.SUCCEEDED
        assert done.steps[0].result == {"echo": "from the caller"}
        assert ran == []
        assert types_of(p, rec.plan_id)[-2:] == ["step.succeeded", "plan.finished"]
        assert p.gateway.get(rec.plan_id).status is PlanStatus.SUCCEEDED

    def test_a_failure_is_recorded_with_its_error(self):
        """An error the caller hands back fails the step with that error, audited."""
        p, _ = instance()
        ex, rec, pending = started(p)

        done = ex.complete(pending, error=ValueError("kaput"))

        assert done.status is PlanStatus.FAILED
        assert done.steps[0].error == "ValueError: kaput"
        assert "step.failed" in types_of(p, rec.plan_id)

    @pytest.mark.parametrize("error", [TimeoutError("slow"), RetryableError("again")])
    def test_a_retryable_failure_is_retried_under_the_same_plan(self, error):
        """A timeout (idempotent action) or RetryableError: a new attempt, then success."""
        p, _ = instance(idempotent=True)
        ex, rec, first = started(p)

        again = ex.complete(first, error=error)
        second = ex.next_call(again)
        assert second is not None
        done = ex.complete(second, result={"echo": "hi"})

        assert again.status is PlanStatus.RUNNING and again.steps[0].attempts == 2
        assert second.call.idempotency_key == first.call.idempotency_key
        assert done.status is PlanStatus.SUCCEEDED
        assert "step.retrying" in types_of(p, rec.plan_id)

    def test_a_timeout_of_a_non_idempotent_action_is_not_retried(self):
        """A call that may have happened is never repeated behind the caller's back."""
        p, _ = instance(idempotent=False)
        ex, rec, pending = started(p)

        done = ex.complete(pending, error=TimeoutError("slow"))

        assert done.status is PlanStatus.FAILED
        assert "step.retrying" not in types_of(p, rec.plan_id)

    def test_one_call_at_a_time_per_plan(self):
        """While one caller holds the plan's call, a second next_call gets nothing."""
        p, _ = instance()
        ex, rec, pending = started(p)

        assert ex.next_call(rec) is None
        done = ex.complete(pending, result={"echo": "hi"})
        assert ex.next_call(done) is None  # finished: nothing to call

    def test_a_plan_past_its_deadline_fails_instead_of_being_called(self):
        """A call asked for past the plan's deadline is not handed out: the step fails."""
        clock = FrozenClock()
        p, _ = instance(clock=clock, plan_deadline=timedelta(seconds=10))
        ex = p.gateway.executor
        with ex.deferred():
            rec = p.gateway.submit(plan())
        clock.advance(11)

        assert ex.next_call(rec) is None
        failed = p.gateway.get(rec.plan_id)
        assert failed.status is PlanStatus.FAILED
        assert "deadline passed" in (failed.steps[0].error or "")

    def test_a_canary_step_is_run_by_the_executor_even_when_deferred(self):
        """A canary's staged call, check and real call stay together in run()."""
        p = Proctor.in_memory(options=GatewayOptions(retry_backoff=timedelta(0)))
        ran = []

        def check(params, call):
            return {"ok": params["result"]["target"] == "staging"}

        canary = {"param": "target", "staging": "staging", "check": check}

        @p.action("test.push", category="read", baselines=BASE, canary=canary)
        def push(params, call):
            ran.append(params["target"])
            return {"target": params["target"]}

        doc = plan()
        doc["steps"][0] = {"id": "s1", "action": "test.push", "params": {"target": "prod"}}
        with p.gateway.executor.deferred():
            rec = p.gateway.submit(doc)

        assert rec.status is PlanStatus.SUCCEEDED
        assert ran == ["staging", "prod"]
        assert p.gateway.executor.next_call(rec) is None
