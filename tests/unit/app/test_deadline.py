"""No step starts after its plan's deadline (``Executor.start_checked``).

A step past the deadline fails unstarted, in the transaction that would have recorded its
``step.started``, and the plan goes on as after any failed step (the later steps skipped, the
completed ones compensated). Regression: the step was started (``step.started`` recorded,
an attempt counted) and only then failed by the check before its handler, so the log showed
a start for a step whose handler never ran: the next step of a plan, a takeover of an
interrupted step, a plan held by a kill switch past its deadline and then released.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from proctor import Proctor
from proctor.app.executor import Executor
from proctor.app.gateway import GatewayOptions
from proctor.core.catalog import Catalog
from proctor.core.lifecycle import PlanStatus, StepStatus
from proctor.testing import FrozenClock, RecordingTool, make_plan

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}
DEADLINE = timedelta(minutes=15)


class Crash(BaseException):
    """Stands for the process dying inside a handler: nothing after it runs."""


class Crashing:
    """Crashes the first call (the process 'dies'), then records and succeeds."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, params: Any, call: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise Crash
        return {"ok": True}


class Everything:
    """A policy engine that executes every step (a fake, not a mock)."""

    version = "sha256:everything-1"

    def evaluate(self, input: Any) -> Any:
        steps = {s["id"]: {"outcome": "execute", "undo_window": 600} for s in input["steps"]}
        return {"steps": steps, "plan": {"deny": [], "adjustments": []}}


@pytest.fixture(params=["memory", "sqlite"])
def url(request, tmp_path):
    """The memory store, and a real SQLite file."""
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'd.db'}"


def make(url: str, clock: FrozenClock) -> Proctor:
    return Proctor.in_memory(
        catalog=Catalog(),
        policy=Everything(),
        clock=clock,
        database_url=url,
        options=GatewayOptions(retry_backoff=timedelta(milliseconds=1), plan_deadline=DEADLINE),
    )


def register(p: Proctor, name: str, fn: Any, **kw: Any) -> None:
    kw.setdefault("category", "general")
    kw.setdefault("baselines", LOW)
    p.action(name, **kw)(fn)


def events(p: Proctor, plan_id: str) -> list[tuple[str, str | None, dict[str, Any]]]:
    """The plan's audit events: (type, step id, data)."""
    return [
        (e.type, e.step_id, json.loads(e.body).get("data") or {}) for e in p.events(plan_id=plan_id)
    ]


def assert_failed_unstarted(p: Proctor, plan_id: str, step_id: str, started: int) -> None:
    """The step failed with the deadline's reason and no ``step.started`` after ``started``."""
    log = events(p, plan_id)
    starts = [i for i, (t, s, _) in enumerate(log) if t == "step.started" and s == step_id]
    assert len(starts) == started
    fails = [(i, d) for i, (t, s, d) in enumerate(log) if t == "step.failed" and s == step_id]
    assert len(fails) == 1
    at, data = fails[0]
    assert all(i < at for i in starts)
    deadline = p.get(plan_id).deadline
    assert deadline is not None
    assert data["error"] == f"not started: the plan's deadline passed at {deadline.isoformat()}"
    assert data["deadline"] == deadline.isoformat()
    assert log[-1][0] == "plan.finished"


class TestDeadlineAtStart:
    def test_a_step_before_the_deadline_starts(self, url):
        """At the deadline itself (not past it) the next step still starts and runs."""
        clock = FrozenClock()
        p = make(url, clock)
        second = RecordingTool()
        register(p, "ops.first", lambda params, call: clock.advance(DEADLINE) or {"ok": True})
        register(p, "ops.second", second)

        rec = p.submit(make_plan([("ops.first", {}), ("ops.second", {})], plan_id="d-0"))

        assert rec.status is PlanStatus.SUCCEEDED
        assert second.keys == ["d-0:s2"]

    def test_the_next_step_past_the_deadline_fails_unstarted(self, url):
        """Step 1 ran past the deadline: step 2 fails unstarted, step 1 is compensated."""
        clock = FrozenClock()
        p = make(url, clock)
        undo, second, third = RecordingTool(), RecordingTool(), RecordingTool()

        def first(params: Any, call: Any) -> Any:
            clock.advance(DEADLINE + timedelta(seconds=1))
            return {"ok": True}

        register(p, "ops.first", first, reversible=True, compensate=undo)
        register(p, "ops.second", second)
        register(p, "ops.third", third)

        rec = p.submit(
            make_plan([("ops.first", {}), ("ops.second", {}), ("ops.third", {})], plan_id="d-1")
        )

        assert rec.status is PlanStatus.COMPENSATED
        assert [s.status for s in rec.steps] == [
            StepStatus.COMPENSATED,
            StepStatus.FAILED,
            StepStatus.SKIPPED,
        ]
        assert rec.steps[1].attempts == 0
        assert rec.steps[1].error.startswith("not started: the plan's deadline passed at")
        assert second.calls == [] and third.calls == []
        assert undo.keys == ["d-1:s1"]
        assert_failed_unstarted(p, "d-1", "s2", started=0)
        failed = next(e for e in p.events(plan_id="d-1") if e.type == "step.failed")
        assert json.loads(failed.body)["actions_attempted"][0]["status"] == "refused"
        assert p.verify().ok

    def test_a_takeover_past_the_deadline_fails_the_interrupted_step(self, url):
        """A dead worker's idempotent step is not run again past the deadline: it fails."""
        clock = FrozenClock()
        p = make(url, clock)
        flaky = Crashing()
        register(p, "ops.flaky", flaky, idempotent=True)
        with pytest.raises(Crash):
            p.submit(make_plan([("ops.flaky", {})], plan_id="d-2"))
        clock.advance(DEADLINE + timedelta(seconds=1))

        rec = Executor(p.gateway, owner="elsewhere:1:1:abc").resume("d-2")

        assert rec is not None and rec.status is PlanStatus.FAILED
        assert rec.lease_owner is None
        assert rec.steps[0].status is StepStatus.FAILED and rec.steps[0].attempts == 1
        assert flaky.calls == 1
        assert_failed_unstarted(p, "d-2", "s1", started=1)
        assert p.verify().ok

    def test_a_plan_released_by_a_kill_switch_past_its_deadline_fails(self, url):
        """Held by a switch until past its deadline: on release its step fails unstarted."""
        clock = FrozenClock()
        p = make(url, clock)
        undo = RecordingTool()
        deploy = Crashing()
        register(p, "ops.first", RecordingTool(), reversible=True, compensate=undo)
        register(p, "ops.deploy", deploy, idempotent=True)
        with pytest.raises(Crash):
            p.submit(
                make_plan([("ops.first", {}), ("ops.deploy", {})], plan_id="d-3", agent_id="bot")
            )
        p.kill("agent", "bot", by="admin", reason="incident")
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))
        worker = Executor(p.gateway, owner="elsewhere:1:1:abc")
        assert worker.resume("d-3") is None  # held: waiting for the release
        clock.advance(DEADLINE)
        assert p.unkill("agent", "bot", by="admin")

        rec = worker.resume("d-3")

        assert rec is not None and rec.status is PlanStatus.COMPENSATED
        assert [s.status for s in rec.steps] == [StepStatus.COMPENSATED, StepStatus.FAILED]
        assert deploy.calls == 1
        assert undo.keys == ["d-3:s1"]
        assert_failed_unstarted(p, "d-3", "s2", started=1)
        assert p.verify().ok

    def test_the_worker_fails_a_held_plan_past_its_deadline(self, url):
        """``recover`` (the worker's pass) does the same after the release."""
        clock = FrozenClock()
        p = make(url, clock)
        flaky = Crashing()
        register(p, "ops.flaky", flaky, idempotent=True)
        with pytest.raises(Crash):
            p.submit(make_plan([("ops.flaky", {})], plan_id="d-4", agent_id="bot"))
        p.kill("global", by="admin", reason="incident")
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))
        assert Executor(p.gateway, owner="elsewhere:1:1:abc").resume("d-4") is None
        clock.advance(DEADLINE)
        assert p.unkill("global", by="admin")

        assert p.recover() == 1
        p.gateway.executor.close()  # waits for the worker thread

        assert p.get("d-4").status is PlanStatus.FAILED
        assert flaky.calls == 1
        assert_failed_unstarted(p, "d-4", "s1", started=1)
