"""A power loss while a handler runs: what the store kept must never run a step twice.

A power loss keeps what was fsynced: the database file and the WAL up to its size at the last
fsync (SQLite ignores a torn tail). ``PowerCut`` notes that size at every fsync of the WAL
and, when a handler "loses the power", copies the database and that much of the WAL aside; a
new instance is then opened on the copy, as after a restart, and recovers.
"""

from __future__ import annotations

import os
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from proctor import Proctor
from proctor.app.executor import Executor
from proctor.app.gateway import GatewayOptions
from proctor.core.catalog import Catalog
from proctor.core.lifecycle import PlanStatus, StepStatus
from proctor.storage import sqlite as sqlite_module
from proctor.testing import FrozenClock, make_plan

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}


class Everything:
    """A policy engine that executes every step (a fake, not a mock)."""

    version = "sha256:everything-1"

    def evaluate(self, input):
        steps = {s["id"]: {"outcome": "execute"} for s in input["steps"]}
        return {"steps": steps, "plan": {"deny": [], "adjustments": []}}


class PowerCut:
    """Notes what is on disk at each fsync; ``now()`` keeps only that, in ``after/``."""

    def __init__(self, home: Path) -> None:
        self.db = home / "p.db"
        self.after = home / "after"
        self.synced = 0
        self.fsyncs = 0

    def fsync(self, real, fd: int) -> None:
        real(fd)
        wal = Path(f"{self.db}-wal")
        if wal.exists() and os.path.samestat(os.fstat(fd), wal.stat()):
            self.fsyncs += 1
            self.synced = os.fstat(fd).st_size  # everything up to here is on disk

    def now(self) -> None:
        self.after.mkdir()
        shutil.copy(self.db, self.after / "p.db")
        with open(f"{self.db}-wal", "rb") as wal:
            (self.after / "p.db-wal").write_bytes(wal.read(self.synced))


@pytest.fixture
def cut(tmp_path, monkeypatch):
    power = PowerCut(tmp_path)
    real = os.fsync
    monkeypatch.setattr(sqlite_module.os, "fsync", lambda fd: power.fsync(real, fd))
    return power


def make(url, clock, **opts):
    return Proctor.in_memory(
        catalog=Catalog(),
        policy=Everything(),
        clock=clock,
        options=GatewayOptions(retry_backoff=timedelta(milliseconds=1), **opts),
        database_url=url,
        audit_signatures=False,
    )


def actions(p, calls, cut=None):
    """``a.reserve`` is idempotent, ``b.charge`` is not; the power fails during a charge."""

    def reserve(params, call):
        calls.append(f"reserve {call.idempotency_key}")
        return {"ok": 1}

    def charge(params, call):
        calls.append(f"charge {call.idempotency_key}")
        if cut is not None:
            cut.now()
        return {"charged": True}

    p.action("a.reserve", category="general", baselines=LOW, idempotent=True)(reserve)
    p.action("b.charge", category="general", baselines=LOW, idempotent=False, runner="pay")(charge)


def restart(cut, calls, plan_id):
    """Open the copy that survived, recover the plan as a new worker, return it."""
    clock = FrozenClock()
    clock.advance(timedelta(days=1))  # every lease of the dead process has lapsed
    p = make(f"sqlite:///{cut.after / 'p.db'}", clock, runners=frozenset({"pay"}))
    actions(p, calls)
    before = p.gateway.store.get_plan(plan_id)
    after = Executor(p.gateway, owner="restarted:1:1:abc").resume(plan_id)
    p.close()
    return before, after


class TestPowerLoss:
    def test_a_non_idempotent_first_step_is_on_disk_before_it_runs(self, tmp_path, cut):
        """A fresh plan's non-idempotent first step survives a power loss as running."""
        calls: list[str] = []
        p = make(f"sqlite:///{tmp_path / 'p.db'}", FrozenClock(), runners=frozenset({"pay"}))
        actions(p, calls, cut)

        p.submit(make_plan([("b.charge", {})], plan_id="pl-1"))
        before, after = restart(cut, calls, "pl-1")
        p.close()

        assert before is not None  # the plan did not vanish with the power
        assert before.steps[0].status is StepStatus.RUNNING
        assert after.status is PlanStatus.NEEDS_ATTENTION
        assert after.steps[0].status is StepStatus.UNKNOWN
        assert calls == ["charge pl-1:s1"]

    def test_a_non_idempotent_next_step_is_on_disk_before_it_runs(self, tmp_path, cut):
        """After an idempotent step, the start of a non-idempotent one is synced first."""
        calls: list[str] = []
        p = make(f"sqlite:///{tmp_path / 'p.db'}", FrozenClock(), runners=frozenset({"pay"}))
        actions(p, calls, cut)

        p.submit(make_plan([("a.reserve", {}), ("b.charge", {})], plan_id="pl-2"))
        before, after = restart(cut, calls, "pl-2")
        p.close()

        assert before is not None
        assert [s.status for s in before.steps] == [StepStatus.SUCCEEDED, StepStatus.RUNNING]
        assert after.status is PlanStatus.NEEDS_ATTENTION
        assert after.steps[1].status is StepStatus.UNKNOWN
        assert calls == ["reserve pl-2:s1", "charge pl-2:s2"]

    def test_a_claimed_non_idempotent_step_is_on_disk_before_it_runs(self, tmp_path, cut):
        """A worker claiming a queued plan syncs the start of its non-idempotent step."""
        calls: list[str] = []
        p = make(f"sqlite:///{tmp_path / 'p.db'}", FrozenClock())  # does not serve "pay"
        actions(p, calls, cut)
        queued = p.submit(make_plan([("b.charge", {})], plan_id="pl-3"))
        assert queued.status is PlanStatus.RUNNING and queued.lease_owner is None

        p.gateway.options = GatewayOptions(runners=frozenset({"pay"}))
        p.gateway.executor.resume("pl-3")
        before, after = restart(cut, calls, "pl-3")
        p.close()

        assert before.steps[0].status is StepStatus.RUNNING
        assert after.status is PlanStatus.NEEDS_ATTENTION
        assert calls == ["charge pl-3:s1"]

    def test_an_idempotent_first_step_runs_without_an_fsync(self, tmp_path, cut):
        """The hot path: a fresh plan's idempotent step starts with no fsync before it."""
        p = make(f"sqlite:///{tmp_path / 'p.db'}", FrozenClock())
        seen = []
        p.action("a.fast", category="general", baselines=LOW, idempotent=True)(
            lambda params, call: seen.append(cut.fsyncs)
        )
        cut.fsyncs = 0

        rec = p.submit(make_plan([("a.fast", {})]))
        p.close()

        assert rec.status is PlanStatus.SUCCEEDED
        assert seen == [0]  # none before the handler; the acknowledging commit syncs
        assert cut.fsyncs == 1

    def test_a_non_idempotent_compensation_is_on_disk_before_it_runs(self, tmp_path, cut):
        """The saga's in-flight marker of a compensation that is not idempotent is synced
        first: after the power loss the step reads compensating, not succeeded, and is not
        compensated a second time."""
        calls: list[str] = []
        p = make(f"sqlite:///{tmp_path / 'p.db'}", FrozenClock())

        def hold(params, call):
            calls.append(f"hold {call.idempotency_key}")
            return {"held": True}

        def unhold(params, call):
            calls.append(f"unhold {call.idempotency_key}")
            cut.now()

        def fail(params, call):
            raise RuntimeError("no seats")

        p.action("a.hold", category="general", baselines=LOW, reversible=True, compensate=unhold)(
            hold
        )
        p.action("b.book", category="general", baselines=LOW, idempotent=True)(fail)
        p.submit(make_plan([("a.hold", {}), ("b.book", {})], plan_id="pl-5"))
        p.close()

        clock = FrozenClock()
        clock.advance(timedelta(days=1))
        q = make(f"sqlite:///{cut.after / 'p.db'}", clock)
        q.action("a.hold", category="general", baselines=LOW, reversible=True, compensate=unhold)(
            hold
        )
        q.action("b.book", category="general", baselines=LOW, idempotent=True)(fail)
        before = q.gateway.store.get_plan("pl-5")
        after = Executor(q.gateway, owner="restarted:1:1:abc").resume("pl-5")
        q.close()

        assert before.steps[0].status is StepStatus.COMPENSATING
        assert after.steps[0].status is StepStatus.COMPENSATION_FAILED
        assert "not idempotent" in after.steps[0].error
        assert calls == ["hold pl-5:s1", "unhold pl-5:s1"]
