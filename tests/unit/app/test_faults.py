"""Faults around execution: garbage from tools, a locked or unavailable database."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import timedelta

import pytest

from proctor import Proctor
from proctor.app.executor import Executor
from proctor.app.gateway import GatewayOptions
from proctor.core.catalog import Catalog
from proctor.core.lifecycle import PlanStatus, StepStatus
from proctor.errors import StorageError
from proctor.testing import FrozenClock, make_plan

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}


class Everything:
    version = "sha256:everything-1"

    def evaluate(self, input):
        return {"steps": {s["id"]: {"outcome": "execute"} for s in input["steps"]}, "plan": {}}


def make(tmp_path=None, clock=None):
    url = f"sqlite:///{tmp_path / 'p.db'}" if tmp_path else "memory://"
    return Proctor.in_memory(
        catalog=Catalog(),
        policy=Everything(),
        clock=clock or FrozenClock(),
        options=GatewayOptions(),
        database_url=url,
    )


class Weird:
    def __repr__(self):
        return "<weird object>"


class TestGarbage:
    @pytest.mark.parametrize(
        ("returned", "recorded"),
        [
            ((1, 2), [1, 2]),
            (Weird(), "<weird object>"),
            (float("nan"), "nan"),
            (b"\x00\xff", "b'\\x00\\xff'"),
            ({"k": Weird(), 3: [0.5]}, {"k": "<weird object>", "3": ["0.5"]}),
        ],
    )
    def test_whatever_a_tool_returns_is_recorded_as_json(self, returned, recorded):
        p = make()
        p.action("t.weird", category="general", baselines=LOW)(lambda params, call: returned)
        rec = p.submit(make_plan([("t.weird", {})]))
        assert rec.status is PlanStatus.SUCCEEDED
        assert rec.steps[0].result == recorded
        assert p.verify().ok

    def test_a_huge_result_is_kept_as_its_size_and_hash(self):
        p = make()
        p.action("t.huge", category="general", baselines=LOW)(lambda params, call: "x" * 200_000)
        rec = p.submit(make_plan([("t.huge", {})]))
        assert rec.status is PlanStatus.SUCCEEDED
        result = rec.steps[0].result
        assert result["truncated"] is True and result["bytes"] == 200_002
        assert len(result["sha256"]) == 64
        assert p.verify().ok


class TestDatabaseFaults:
    def test_a_briefly_locked_database_only_delays(self, tmp_path):
        p = make(tmp_path)
        p.action("t.ok", category="general", baselines=LOW)(lambda params, call: {"ok": True})
        other = sqlite3.connect(tmp_path / "p.db", isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        done = {}
        t = threading.Thread(
            target=lambda: done.setdefault("r", p.submit(make_plan([("t.ok", {})])))
        )
        t.start()
        time.sleep(0.5)
        assert "r" not in done  # waiting for the lock, not failing
        other.execute("COMMIT")
        t.join(30)
        assert done["r"].status is PlanStatus.SUCCEEDED
        assert p.verify().ok

    def test_the_database_gone_after_a_handler_ran_is_recovered(self, tmp_path):
        """The final commit fails: the client gets an error, the step stays in flight, and
        once the database is back a worker finishes the plan (idempotent: re-run)."""
        clock = FrozenClock()
        p = make(tmp_path, clock)
        p.gateway.store._c.execute("PRAGMA busy_timeout=100")
        other = sqlite3.connect(tmp_path / "p.db", isolation_level=None)
        calls = []

        def grab_the_lock(params, call):
            calls.append(call.idempotency_key)
            if len(calls) == 1:
                other.execute("BEGIN EXCLUSIVE")  # another process holds the database
            return {"n": len(calls)}

        p.action("t.idem", category="general", baselines=LOW, idempotent=True)(grab_the_lock)
        with pytest.raises(StorageError):
            p.submit(make_plan([("t.idem", {})], plan_id="f-1"))
        other.execute("COMMIT")  # the fault clears
        stuck = p.get("f-1")
        assert stuck.status is PlanStatus.RUNNING
        assert stuck.steps[0].status is StepStatus.RUNNING
        clock.advance(p.gateway.options.lease_ttl + timedelta(seconds=1))
        rec = Executor(p.gateway, owner="other:1:1:x").resume("f-1")
        assert rec.status is PlanStatus.SUCCEEDED
        assert calls == ["f-1:s1", "f-1:s1"]
        assert p.verify().ok
