"""Sandbox mode runs no handler at all, whatever path would start one.

Regression: ``[execution] sandbox = true`` was consulted only when a plan was routed, so a
plan decided before the switch ran its real handler when it was approved (or confirmed,
resolved, claimed by a worker, rolled back by its TTL) under sandbox mode.

"Switching sandbox on" is a new ``GatewayOptions`` on the same gateway, as a restart with
the changed setting would give.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from proctor import Proctor
from proctor.app._outcomes import SANDBOX_ON
from proctor.app.executor import Executor
from proctor.core.catalog import Catalog
from proctor.core.lifecycle import PlanStatus, StepStatus
from proctor.errors import ConflictError
from proctor.testing import FrozenClock, RecordingTool, make_plan

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}


class Route:
    """A policy engine (a fake, not a mock): each action's outcome, default ``execute``."""

    version = "sha256:route-1"

    def __init__(self, **outcomes: str) -> None:
        self.outcomes = outcomes

    def evaluate(self, input: Any) -> Any:
        steps = {}
        for s in input["steps"]:
            outcome = self.outcomes.get(s["action"].replace(".", "_"), "execute")
            d: dict[str, Any] = {"outcome": outcome, "undo_window": 600, "rollback_ttl": 300}
            if outcome == "approve":
                d |= {"approvals": 1, "approver_roles": ["finance"]}
            steps[s["id"]] = d
        return {"steps": steps, "plan": {"deny": [], "adjustments": []}}


class Crash(BaseException):
    """Stands for the process dying inside a handler: nothing after it runs."""


def make(clock: FrozenClock, **outcomes: str) -> tuple[Proctor, dict[str, RecordingTool]]:
    p = Proctor.in_memory(catalog=Catalog(), policy=Route(**outcomes), clock=clock)
    tools = {"refund": RecordingTool(), "book": RecordingTool(), "cancel": RecordingTool()}
    p.action("pay.refund", category="financial", baselines=LOW)(tools["refund"])
    p.action(
        "shop.book", category="booking", baselines=LOW, reversible=True, compensate=tools["cancel"]
    )(tools["book"])
    return p, tools


def sandbox(p: Proctor, on: bool = True, **opts: Any) -> None:
    """Switch sandbox mode (as a restart with the changed setting would)."""
    p.gateway.options = dataclasses.replace(p.gateway.options, sandbox=on, **opts)


def types(p: Proctor, plan_id: str) -> list[str]:
    return [e.type for e in p.events(plan_id=plan_id)]


@pytest.fixture
def clock():
    return FrozenClock()


class TestWaitingPlans:
    def test_an_approval_under_sandbox_is_refused_and_the_plan_keeps_waiting(self, clock):
        """The approval is not recorded, no handler runs; after the switch it runs."""
        p, tools = make(clock, pay_refund="approve")
        p.submit(make_plan([("pay.refund", {})], plan_id="pay-1"))
        sandbox(p)

        with pytest.raises(ConflictError) as refused:
            p.approve("pay-1", "fred", roles=["finance"])

        assert SANDBOX_ON in refused.value.message
        assert tools["refund"].calls == []
        rec = p.get("pay-1")
        assert (rec.status, rec.approvals) == (PlanStatus.AWAITING_APPROVAL, ())
        assert "approval.granted" not in types(p, "pay-1")
        sandbox(p, on=False)
        assert p.approve("pay-1", "fred", roles=["finance"]).status is PlanStatus.SUCCEEDED
        assert tools["refund"].keys == ["pay-1:s1"]
        assert p.verify().ok

    def test_a_confirmation_under_sandbox_is_refused(self, clock):
        """The user's confirmation runs nothing; the plan still awaits it."""
        p, tools = make(clock, shop_book="confirm")
        p.submit(make_plan([("shop.book", {})], plan_id="c-1"))
        sandbox(p)

        with pytest.raises(ConflictError, match="sandbox"):
            p.confirm("c-1", "alice")

        assert tools["book"].calls == []
        assert p.get("c-1").status is PlanStatus.AWAITING_CONFIRMATION

    def test_an_approval_for_a_plan_another_process_runs_is_refused_too(self, clock):
        """A plan this process would only queue (its runner is served elsewhere) waits too."""
        p, _ = make(clock, shop_remote="approve")
        remote = RecordingTool()
        p.action("shop.remote", category="general", baselines=LOW, runner="r")(remote)
        p.submit(make_plan([("shop.remote", {})], plan_id="r-1"))
        sandbox(p)

        with pytest.raises(ConflictError, match="sandbox"):
            p.approve("r-1", "fred", roles=["finance"])

        assert p.get("r-1").status is PlanStatus.AWAITING_APPROVAL

    def test_a_submission_cannot_lift_sandbox_mode(self, clock):
        """``submit(sandbox=False)`` under the instance's sandbox mode still only simulates."""
        p, tools = make(clock)
        sandbox(p)

        rec = p.submit(make_plan([("shop.book", {})]), sandbox=False)

        assert (rec.status, rec.sandbox) == (PlanStatus.SIMULATED, True)
        assert tools["book"].calls == []


class TestWorkerPaths:
    def test_a_queued_plan_is_not_claimed_under_sandbox(self, clock):
        """Approved before the switch, queued for its runner: the runner's claim leaves it."""
        p, _ = make(clock, shop_remote="approve")
        remote = RecordingTool()
        p.action("shop.remote", category="general", baselines=LOW, runner="r")(remote)
        p.submit(make_plan([("shop.remote", {})], plan_id="q-1"))
        rec = p.approve("q-1", "fred", roles=["finance"])
        assert (rec.status, rec.lease_owner) == (PlanStatus.RUNNING, None)
        sandbox(p, runners=frozenset({"r"}))
        before = types(p, "q-1")

        assert p.gateway.executor.resume("q-1") is None
        assert p.recover() == 1
        p.gateway.executor.close()  # waits for the worker thread

        assert remote.calls == []
        rec = p.get("q-1")
        assert (rec.status, rec.lease_owner, rec.steps[0].status) == (
            PlanStatus.RUNNING,
            None,
            StepStatus.PENDING,
        )
        assert types(p, "q-1") == before  # nothing written
        sandbox(p, on=False, runners=frozenset({"r"}))
        assert Executor(p.gateway).resume("q-1").status is PlanStatus.SUCCEEDED
        assert remote.keys == ["q-1:s1"]

    def test_an_interrupted_plan_is_not_resumed_under_sandbox(self, clock):
        """After a crash, a restart under sandbox mode does not run the step again."""
        p, _ = make(clock)
        calls = []

        def crashing(params: Any, call: Any) -> Any:
            calls.append(call.idempotency_key)
            raise Crash

        p.action("shop.idem", category="general", baselines=LOW, idempotent=True)(crashing)
        with pytest.raises(Crash):
            p.submit(make_plan([("shop.idem", {})], plan_id="i-1"))
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))
        sandbox(p)

        assert Executor(p.gateway, owner="elsewhere:1:1:abc").resume("i-1") is None

        assert calls == ["i-1:s1"]
        assert p.get("i-1").steps[0].status is StepStatus.RUNNING

    def test_a_rollback_ttl_waits_for_the_end_of_sandbox_mode(self, clock):
        """A compensation is a handler too: the TTL fires on the first pass after the switch."""
        p, tools = make(clock)
        p.submit(make_plan([("shop.book", {})], plan_id="t-1"))
        sandbox(p)
        clock.advance(301)

        assert p.tick() == []

        assert tools["cancel"].calls == []
        assert p.get("t-1").status is PlanStatus.SUCCEEDED
        sandbox(p, on=False)
        p.tick()
        assert p.get("t-1").status is PlanStatus.UNDONE
        assert tools["cancel"].keys == ["t-1:s1"]

    def test_a_remote_proxy_is_not_told_to_make_a_queued_call(self, clock):
        """``stopped_now`` (what ``/v1/mcp/calls`` asks before answering "running") says why."""
        p, _ = make(clock)
        sandbox(p)

        assert p.gateway.executor.stopped_now("any") == SANDBOX_ON


class TestHumanRepairs:
    def test_an_undo_under_sandbox_is_refused(self, clock):
        """The compensation does not run; nothing is recorded; the plan stays succeeded."""
        p, tools = make(clock)
        p.submit(make_plan([("shop.book", {})], plan_id="u-1"))
        before = types(p, "u-1")
        sandbox(p)

        with pytest.raises(ConflictError, match="sandbox"):
            p.undo("u-1", "alice")

        assert tools["cancel"].calls == []
        assert p.get("u-1").status is PlanStatus.SUCCEEDED
        assert types(p, "u-1") == before

    @pytest.mark.parametrize("succeeded", [True, False], ids=["next-step", "compensation"])
    def test_a_resolution_that_would_run_a_handler_is_refused(self, clock, succeeded):
        """Resolved as succeeded starts the next step; as failed compensates the first."""
        p, tools = make(clock)

        def crashing(params: Any, call: Any) -> Any:
            raise Crash

        p.action("pay.once", category="general", baselines=LOW)(crashing)
        with pytest.raises(Crash):
            p.submit(
                make_plan([("shop.book", {}), ("pay.once", {}), ("shop.book", {})], plan_id="v-1")
            )
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))
        Executor(p.gateway, owner="elsewhere:1:1:abc").resume("v-1")
        assert p.get("v-1").status is PlanStatus.NEEDS_ATTENTION
        sandbox(p)

        with pytest.raises(ConflictError, match="sandbox"):
            p.resolve("v-1", "s2", succeeded=succeeded, principal="ops")

        assert tools["book"].keys == ["v-1:s1"]
        assert tools["cancel"].calls == []
        rec = p.get("v-1")
        assert (rec.status, rec.steps[1].status) == (
            PlanStatus.NEEDS_ATTENTION,
            StepStatus.UNKNOWN,
        )
        assert "step.resolved" not in types(p, "v-1")
