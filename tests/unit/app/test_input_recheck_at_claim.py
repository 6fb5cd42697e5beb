"""What a waiting plan was decided from, checked by the process that starts it.

Regression: a confirmation or approval re-checks the facts the policy decided from (the
decision's ``input_digest``), but only in a process whose catalog has every action of the
plan. Confirmed in a process without the action (the API, while the action is a Python one a
worker registers), the plan was queued unchecked, and the worker that claimed it ran it even
though its catalog had moved the action to another category or its ``hybrid_max`` was lower:
a decision made from facts that no longer hold where the plan runs.

Two processes on one store are two ``Proctor`` instances on one database (SQLite, and
PostgreSQL when available): an API whose catalog lacks ``shop.ship`` and a worker that has it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from proctor import Proctor
from proctor.app.gateway import GatewayOptions
from proctor.app.human_actions import INPUTS_CHANGED
from proctor.core.assessment import Thresholds
from proctor.core.catalog import Catalog
from proctor.core.lifecycle import PlanStatus, StepStatus
from proctor.testing import FrozenClock, RecordingTool, make_plan

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}
SHIP = ("shop.ship", {"to": "home"})


class ByCategory:
    """A policy engine (a fake, not a mock): a payment needs ``ops``, anything else its user."""

    version = "sha256:by-category-1"

    def evaluate(self, input: Any) -> Any:
        steps = {}
        for s in input["steps"]:
            if s["category"] == "payment":
                steps[s["id"]] = {"outcome": "approve", "approvals": 1, "approver_roles": ["ops"]}
            else:
                steps[s["id"]] = {"outcome": "confirm"}
        return {"steps": steps, "plan": {"deny": [], "adjustments": []}}


class World:
    """Processes on one database and one clock; each may have ``shop.ship`` or not."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.clock = FrozenClock()
        self.open: list[Proctor] = []

    def start(self, *, ship: RecordingTool | None = None, **opts: Any) -> Proctor:
        """A process; with ``ship``, its catalog has ``shop.ship`` (category ``general``)."""
        p = Proctor.in_memory(
            catalog=Catalog(),
            policy=ByCategory(),
            clock=self.clock,
            database_url=self.url,
            options=GatewayOptions(retry_backoff=timedelta(milliseconds=1), **opts),
        )
        self.open.append(p)
        if ship is not None:
            p.action("shop.ship", category="general", baselines=LOW)(ship)
        return p


@pytest.fixture(params=["sqlite", "postgres"])
def world(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[World]:
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'p.db'}"
    w = World(url)
    yield w
    for p in w.open:
        p.close()


def reload(p: Proctor, name: str, **changes: Any) -> None:
    """Replace an action's entry in the running catalog (as a reload would)."""
    spec = p.gateway.catalog.require(name)
    p.add_action(dataclasses.replace(spec, **changes), replace=True)


def events(p: Proctor, plan_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [(e.type, json.loads(e.body)["data"]) for e in p.events(plan_id=plan_id)]


def confirmed_without_the_action(w: World, worker: Proctor, plan_id: str) -> None:
    """Submitted by the worker, confirmed by the API (which lacks shop.ship): queued."""
    rec = worker.submit(make_plan([SHIP], plan_id=plan_id))
    assert rec.status is PlanStatus.AWAITING_CONFIRMATION
    assert rec.decision["input_digest"].startswith("sha256:")
    api = w.start()

    rec = api.confirm(plan_id, "alice")

    assert (rec.status, rec.lease_owner) == (PlanStatus.RUNNING, None)
    assert "plan.queued" in [t for t, _ in events(api, plan_id)]


def assert_expired_unrun(p: Proctor, plan_id: str, ship: RecordingTool) -> None:
    rec = p.get(plan_id)
    assert rec.status is PlanStatus.EXPIRED
    assert rec.error == INPUTS_CHANGED
    assert [s.status for s in rec.steps] == [StepStatus.SKIPPED]
    assert (rec.lease_owner, rec.start_by, rec.timer_at) == (None, None, None)
    assert ship.calls == []
    log = events(p, plan_id)
    assert "step.started" not in [t for t, _ in log]
    assert log[-1] == ("plan.expired", {"reason": INPUTS_CHANGED})


class TestClaimedByTheRunner:
    def test_an_unchanged_catalog_runs_it(self, world):
        """The baseline: the worker's catalog holds what the policy decided from."""
        ship = RecordingTool()
        worker = world.start(ship=ship)
        confirmed_without_the_action(world, worker, "d-1")

        rec = worker.gateway.executor.resume("d-1")

        assert rec is not None and rec.status is PlanStatus.SUCCEEDED
        assert ship.keys == ["d-1:s1"]

    def test_an_action_moved_to_another_category_expires_it_unrun(self, world):
        """Now a payment (ops must approve): the user's confirmation must not run it."""
        ship = RecordingTool()
        worker = world.start(ship=ship)
        confirmed_without_the_action(world, worker, "d-2")
        reload(worker, "shop.ship", category="payment")

        rec = worker.gateway.executor.resume("d-2")

        assert rec is not None and rec.status is PlanStatus.EXPIRED
        assert_expired_unrun(worker, "d-2", ship)

    def test_a_worker_with_a_lower_hybrid_max_expires_it_on_its_pass(self, world):
        """Another worker process, with other settings, claims it on its pass: expired."""
        worker = world.start(ship=RecordingTool())
        confirmed_without_the_action(world, worker, "d-3")
        ship = RecordingTool()
        other = world.start(ship=ship, thresholds=Thresholds(hybrid_max=12))

        assert other.recover() == 1
        other.gateway.executor.close()  # waits for the worker thread

        assert_expired_unrun(other, "d-3", ship)

    def test_an_approved_plan_is_checked_as_a_confirmed_one(self, world):
        """Approved by ops in the API: a worker whose catalog changed the action expires it."""
        ship = RecordingTool()
        worker = world.start(ship=ship)
        reload(worker, "shop.ship", category="payment")
        rec = worker.submit(make_plan([SHIP], plan_id="d-4"))
        assert rec.status is PlanStatus.AWAITING_APPROVAL
        world.start().approve("d-4", "olga", roles=["ops"])
        reload(worker, "shop.ship", cost=1)  # the amount the policy reads changes

        worker.gateway.executor.resume("d-4")

        assert_expired_unrun(worker, "d-4", ship)

    def test_a_confirming_process_that_has_the_action_does_not_speak_for_the_runner(self, world):
        """The API's entry is the one decided from (its check passes); the runner's is not."""
        ship = RecordingTool()
        worker = world.start(ship=ship, runners=frozenset({"shop"}))
        reload(worker, "shop.ship", runner="shop")
        worker.submit(make_plan([SHIP], plan_id="d-5"))
        api = world.start(ship=RecordingTool())
        reload(api, "shop.ship", runner="shop")  # the same entry: its check passes
        rec = api.confirm("d-5", "alice")
        assert (rec.status, rec.lease_owner) == (PlanStatus.RUNNING, None)
        reload(worker, "shop.ship", category="payment")

        worker.gateway.executor.resume("d-5")

        assert_expired_unrun(worker, "d-5", ship)


class TestStoredWithoutDigest:
    """A plan of an older version: the policy is asked again by the process that starts it."""

    @staticmethod
    def strip_digest(p: Proctor, plan_id: str) -> None:
        rec = p.get(plan_id)
        decision = {k: v for k, v in rec.decision.items() if k != "input_digest"}
        with p.gateway.store.transaction() as tx:
            tx.save_plan(dataclasses.replace(rec, decision=decision))

    def test_it_expires_when_the_policy_now_routes_it_stricter(self, world):
        """A payment now: approvers, where the user's confirmation was enough."""
        ship = RecordingTool()
        worker = world.start(ship=ship)
        worker.submit(make_plan([SHIP], plan_id="d-6"))
        self.strip_digest(worker, "d-6")
        world.start().confirm("d-6", "alice")
        reload(worker, "shop.ship", category="payment")

        worker.gateway.executor.resume("d-6")

        assert_expired_unrun(worker, "d-6", ship)

    def test_it_runs_when_the_policy_routes_it_the_same(self, world):
        """Another category the policy routes the same: no digest to differ, so it runs."""
        ship = RecordingTool()
        worker = world.start(ship=ship)
        worker.submit(make_plan([SHIP], plan_id="d-7"))
        self.strip_digest(worker, "d-7")
        world.start().confirm("d-7", "alice")
        reload(worker, "shop.ship", category="read")

        rec = worker.gateway.executor.resume("d-7")

        assert rec is not None and rec.status is PlanStatus.SUCCEEDED
        assert ship.keys == ["d-7:s1"]


class TestHandedOver:
    def test_a_call_handed_to_a_remote_proxy_is_not_expired_by_the_recheck(self, world):
        """A plan handed over (``hand_off``: its call is a remote MCP proxy's now, perhaps
        under way) is not expired by the re-check when a retry re-registers a changed entry:
        "never ran" would record a call that happened as one that did not. Its report or its
        report-by timer settles it."""
        ship = RecordingTool()
        worker = world.start(ship=ship)
        confirmed_without_the_action(world, worker, "d-h")
        handed = worker.gateway.executor.hand_off("d-h")
        assert handed is not None and handed.report_by is not None
        reload(worker, "shop.ship", category="payment")

        worker.gateway.executor.refuse_stale("d-h")

        rec = worker.get("d-h")
        assert rec.status is PlanStatus.RUNNING
        assert rec.report_by == handed.report_by
        assert "plan.expired" not in [t for t, _ in events(worker, "d-h")]
