"""The catalog as it is now, for plans validated under an earlier one.

A plan is validated against the catalog when it is submitted, then may wait for a human, a
runner or a takeover for any length of time. Regression: once confirmed or approved, claimed
or resumed, its steps ran with params the catalog in force refused (a schema that changed on
a restart, a float amount stored by an older version), and a plan approved in a process that
no longer had its action waited, queued, without a word.

A "restart with another catalog" is a second instance on the same SQLite database; a change
in a running process is ``Proctor.add_action(..., replace=True)``, as MCP proxies do.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from typing import Any

import pytest

from proctor import Proctor
from proctor.app.executor import Executor
from proctor.app.gateway import GatewayOptions
from proctor.core.catalog import Catalog
from proctor.core.lifecycle import PlanStatus, StepStatus
from proctor.errors import ConflictError, RetryableError
from proctor.testing import FrozenClock, RecordingTool, make_plan

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}
ANY = {"type": "object"}
ONLY_HOME = {"type": "object", "properties": {"to": {"enum": ["home"]}}}


class Route:
    """A policy engine (a fake, not a mock): every step gets ``outcome``."""

    version = "sha256:route-1"

    def __init__(self, outcome: str) -> None:
        self.outcome = outcome

    def evaluate(self, input: Any) -> Any:
        extra = {"approvals": 1, "approver_roles": ["ops"]} if self.outcome == "approve" else {}
        steps = {
            s["id"]: {"outcome": self.outcome, "undo_window": 600, **extra} for s in input["steps"]
        }
        return {"steps": steps, "plan": {"deny": [], "adjustments": []}}


class Instances:
    """Instances on one SQLite database, opened one after the other (restarts)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.clock = FrozenClock()
        self.open: list[Proctor] = []

    def start(self, outcome: str = "approve", **opts: Any) -> Proctor:
        for p in self.open:
            p.close()
        p = Proctor.in_memory(
            catalog=Catalog(),
            policy=Route(outcome),
            clock=self.clock,
            database_url=self.url,
            options=GatewayOptions(retry_backoff=timedelta(milliseconds=1), **opts),
        )
        self.open = [p]
        return p


@pytest.fixture
def instances(tmp_path):
    inst = Instances(f"sqlite:///{tmp_path}/proctor.db")
    yield inst
    for p in inst.open:
        p.close()


def in_memory(outcome: str = "execute", **opts: Any) -> Proctor:
    return Proctor.in_memory(
        catalog=Catalog(),
        policy=Route(outcome),
        clock=FrozenClock(),
        options=GatewayOptions(retry_backoff=timedelta(milliseconds=1), **opts),
    )


def register(p: Proctor, name: str, fn: Any, **kw: Any) -> None:
    kw.setdefault("category", "general")
    kw.setdefault("baselines", LOW)
    p.action(name, **kw)(fn)


def reload(p: Proctor, name: str, **changes: Any) -> None:
    """Replace an action's entry in the running catalog (as a reload would)."""
    spec = p.gateway.catalog.require(name)
    p.add_action(dataclasses.replace(spec, **changes), replace=True)


def events(p: Proctor, plan_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [(e.type, json.loads(e.body)["data"]) for e in p.events(plan_id=plan_id)]


def types(p: Proctor, plan_id: str) -> list[str]:
    return [t for t, _ in events(p, plan_id)]


class TestConfirmAndApprove:
    def test_an_approval_is_refused_when_the_restarted_catalog_refuses_the_params(self, instances):
        """The plan expires, the error names the field, and nothing runs."""
        before = instances.start()
        register(before, "shop.ship", RecordingTool(), params=ANY)
        before.submit(make_plan([("shop.ship", {"to": "anywhere"})], plan_id="a-1"))
        after = instances.start()
        ship = RecordingTool()
        register(after, "shop.ship", ship, params=ONLY_HOME)

        with pytest.raises(ConflictError) as refused:
            after.approve("a-1", "olga", roles=["ops"])

        assert refused.value.field == "steps[0].params.to"
        assert "submit the plan again" in (refused.value.hint or "")
        rec = after.get("a-1")
        assert rec.status is PlanStatus.EXPIRED
        assert [s.status for s in rec.steps] == [StepStatus.SKIPPED]
        assert ship.calls == []
        log = events(after, "a-1")
        assert [t for t, _ in log][-1] == "plan.expired"
        assert "steps[0].params.to" in log[-1][1]["reason"]
        assert "approval.granted" not in [t for t, _ in log]

    def test_a_confirmation_is_refused_for_a_float_amount_the_catalog_now_refuses(self):
        """A float amount stored under a catalog without amount rules never runs."""
        p = in_memory("confirm")
        pay = RecordingTool()
        register(p, "shop.pay", pay, category="payment")
        p.submit(make_plan([("shop.pay", {"amount": 640_000.0})], plan_id="a-2"))
        reload(p, "shop.pay", amount_param="amount")

        with pytest.raises(ConflictError) as refused:
            p.confirm("a-2", "alice")

        assert refused.value.field == "steps[0].params.amount"
        assert p.get("a-2").status is PlanStatus.EXPIRED
        assert pay.calls == []
        assert p.verify().ok

    def test_the_first_of_several_approvals_is_refused_too(self, instances):
        """No approval is collected for a plan the catalog refuses (quorum or not)."""
        before = instances.start()
        register(before, "shop.ship", RecordingTool(), params=ANY)
        before.submit(make_plan([("shop.ship", {"to": "anywhere"})], plan_id="a-3"))
        after = instances.start()
        register(after, "shop.ship", RecordingTool(), params=ONLY_HOME)

        with pytest.raises(ConflictError):
            after.approve("a-3", "olga", roles=["ops"])

        assert after.get("a-3").approvals == ()

    def test_params_the_catalog_still_accepts_run_as_before(self, instances):
        """The baseline: a restart with a catalog that accepts the params changes nothing."""
        before = instances.start()
        register(before, "shop.ship", RecordingTool(), params=ANY)
        before.submit(make_plan([("shop.ship", {"to": "home"})], plan_id="a-4"))
        after = instances.start()
        ship = RecordingTool()
        register(after, "shop.ship", ship, params=ONLY_HOME)

        rec = after.approve("a-4", "olga", roles=["ops"])

        assert rec.status is PlanStatus.SUCCEEDED
        assert ship.keys == ["a-4:s1"]

    def test_an_action_this_process_does_not_have_is_queued_and_says_so(self, instances):
        """Queued for a process whose catalog has it, with a plan.queued event naming it."""
        before = instances.start()
        register(before, "shop.ship", RecordingTool())
        before.submit(make_plan([("shop.ship", {"to": "anywhere"})], plan_id="a-5"))
        after = instances.start()  # restarted without shop.ship

        rec = after.approve("a-5", "olga", roles=["ops"])

        assert (rec.status, rec.lease_owner) == (PlanStatus.RUNNING, None)
        log = events(after, "a-5")
        queued = [data for t, data in log if t == "plan.queued"]
        assert [t for t, _ in log][-2:] == ["approval.granted", "plan.queued"]
        assert queued[0]["actions"] == ["shop.ship"]
        assert "not in this process's catalog" in queued[0]["reason"]


class TestStartChecked:
    def test_a_queued_plan_whose_action_came_back_stricter_fails_without_running(self, instances):
        """Claimed by a process with the action again: refused at its start, never run."""
        first = instances.start()
        register(first, "shop.ship", RecordingTool(), params=ANY)
        first.submit(make_plan([("shop.ship", {"to": "anywhere"})], plan_id="b-1"))
        instances.start().approve("b-1", "olga", roles=["ops"])  # queued: no shop.ship
        last = instances.start()
        ship = RecordingTool()
        register(last, "shop.ship", ship, params=ONLY_HOME)

        rec = last.gateway.executor.resume("b-1")

        assert rec is not None and rec.status is PlanStatus.FAILED
        assert rec.lease_owner is None
        step = rec.steps[0]
        assert step.status is StepStatus.FAILED
        assert "steps[0].params.to" in step.error and step.error.startswith("not started")
        assert ship.calls == []
        log = events(last, "b-1")
        assert "step.started" not in [t for t, _ in log]
        failed = next(data for t, data in log if t == "step.failed")
        assert failed["field"] == "steps[0].params.to"
        assert [t for t, _ in log][-1] == "plan.finished"

    def test_the_worker_fails_it_too(self, instances):
        """``recover`` (the worker's pass) claims the queued plan and refuses its step."""
        first = instances.start()
        register(first, "shop.ship", RecordingTool(), params=ANY)
        first.submit(make_plan([("shop.ship", {"to": "anywhere"})], plan_id="b-2"))
        instances.start().approve("b-2", "olga", roles=["ops"])
        last = instances.start()
        ship = RecordingTool()
        register(last, "shop.ship", ship, params=ONLY_HOME)

        assert last.recover() == 1
        last.gateway.executor.close()  # waits for the worker thread

        assert last.get("b-2").status is PlanStatus.FAILED
        assert ship.calls == []

    def test_a_plan_queued_for_a_runner_is_checked_when_the_runner_claims_it(self):
        """The runner's process checks the params against its catalog as it is then."""
        p = in_memory()
        call = RecordingTool()
        register(p, "mcp.call", call, runner="mcp", params=ANY)
        rec = p.submit(make_plan([("mcp.call", {"to": "anywhere"})], plan_id="b-3"))
        assert (rec.status, rec.lease_owner) == (PlanStatus.RUNNING, None)
        reload(p, "mcp.call", params_schema=ONLY_HOME)
        p.gateway.options = GatewayOptions(runners=frozenset({"mcp"}))

        rec = p.gateway.executor.resume("b-3")

        assert rec is not None and rec.status is PlanStatus.FAILED
        assert call.calls == []
        assert p.verify().ok

    def test_a_later_step_the_catalog_now_refuses_is_not_run(self):
        """The catalog changed while step 1 ran: step 2 fails unrun, step 1 is undone."""
        p = in_memory()
        undo = RecordingTool()

        def first(params: Any, call: Any) -> Any:
            reload(p, "shop.second", params_schema=ONLY_HOME)
            return {"ok": True}

        register(p, "shop.first", first, reversible=True, compensate=undo)
        second = RecordingTool()
        register(p, "shop.second", second, params=ANY)

        rec = p.submit(
            make_plan([("shop.first", {}), ("shop.second", {"to": "anywhere"})], plan_id="b-4")
        )

        assert rec.status is PlanStatus.COMPENSATED
        assert [s.status for s in rec.steps] == [StepStatus.COMPENSATED, StepStatus.FAILED]
        assert "steps[1].params.to" in rec.steps[1].error
        assert second.calls == []
        assert undo.keys == ["b-4:s1"]
        assert p.verify().ok

    def test_a_retry_the_catalog_now_refuses_is_not_run(self):
        """A retry is a new start: refused when the catalog changed since the first attempt."""
        p = in_memory()
        calls = []

        def flaky(params: Any, call: Any) -> Any:
            calls.append(params)
            reload(p, "shop.flaky", params_schema=ONLY_HOME)
            raise RetryableError("try again")

        register(p, "shop.flaky", flaky, idempotent=True, params=ANY)

        rec = p.submit(make_plan([("shop.flaky", {"to": "anywhere"})], plan_id="b-5"))

        assert rec.status is PlanStatus.FAILED
        assert len(calls) == 1
        assert types(p, "b-5").count("step.started") == 1
        assert p.verify().ok

    def test_an_interrupted_step_is_checked_before_it_is_run_again(self):
        """A takeover re-runs an idempotent step only if the catalog still accepts it."""
        clock = FrozenClock()
        p = Proctor.in_memory(catalog=Catalog(), policy=Route("execute"), clock=clock)
        calls = []

        class Crash(BaseException):
            """The process dies inside the handler."""

        def crashing(params: Any, call: Any) -> Any:
            calls.append(params)
            raise Crash

        register(p, "shop.idem", crashing, idempotent=True, params=ANY)
        with pytest.raises(Crash):
            p.submit(make_plan([("shop.idem", {"to": "anywhere"})], plan_id="b-6"))
        reload(p, "shop.idem", params_schema=ONLY_HOME)
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))

        rec = Executor(p.gateway, owner="elsewhere:1:1:abc").resume("b-6")

        assert rec is not None and rec.status is PlanStatus.FAILED
        assert len(calls) == 1
        assert p.verify().ok

    def test_the_step_after_a_resolved_one_is_checked(self):
        """A human resolves an unknown step; the next one runs only if the catalog accepts it."""
        clock = FrozenClock()
        p = Proctor.in_memory(catalog=Catalog(), policy=Route("execute"), clock=clock)

        class Crash(BaseException):
            """The process dies inside the handler."""

        def crashing(params: Any, call: Any) -> Any:
            raise Crash

        register(p, "pay.once", crashing, idempotent=False)
        after = RecordingTool()
        register(p, "shop.after", after, params=ANY)
        with pytest.raises(Crash):
            p.submit(
                make_plan([("pay.once", {}), ("shop.after", {"to": "anywhere"})], plan_id="b-7")
            )
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))
        Executor(p.gateway, owner="elsewhere:1:1:abc").resume("b-7")
        reload(p, "shop.after", params_schema=ONLY_HOME)

        rec = p.resolve("b-7", "s1", succeeded=True, principal="ops")

        assert rec.status is PlanStatus.FAILED  # pay.once cannot be compensated
        assert rec.steps[1].status is StepStatus.FAILED
        assert after.calls == []

    def test_the_step_after_a_resolved_one_waits_for_its_runner(self):
        """Resolved where its next step's runner is not served: queued, as ``begin`` does."""
        clock = FrozenClock()
        p = Proctor.in_memory(catalog=Catalog(), policy=Route("execute"), clock=clock)

        class Crash(BaseException):
            """The process dies inside the handler."""

        def crashing(params: Any, call: Any) -> Any:
            raise Crash

        register(p, "pay.once", crashing, idempotent=False, runner="mcp")
        call = RecordingTool()
        register(p, "mcp.call", call, runner="mcp")
        p.gateway.options = GatewayOptions(runners=frozenset({"mcp"}))
        with pytest.raises(Crash):
            p.submit(make_plan([("pay.once", {}), ("mcp.call", {})], plan_id="b-8"))
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))
        Executor(p.gateway, owner="elsewhere:1:1:abc").resume("b-8")
        p.gateway.options = GatewayOptions()  # resolved in a process without the runner

        rec = p.resolve("b-8", "s1", succeeded=True, principal="ops")

        assert (rec.status, rec.lease_owner) == (PlanStatus.RUNNING, None)
        assert call.calls == []
        assert "plan.queued" not in types(p, "b-8")  # a known action: the documented case
        p.gateway.options = GatewayOptions(runners=frozenset({"mcp"}))
        assert p.gateway.executor.resume("b-8").status is PlanStatus.SUCCEEDED
        assert call.keys == ["b-8:s2"]
