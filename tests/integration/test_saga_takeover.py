"""A compensation whose process stops or dies mid-call: what the audit log says about it.

A child process (``crash/sagatools.py``) runs a plan whose last step fails, and its first
step's compensation stops (SIGSTOP) or kills (SIGKILL) its own process right after its side
effect. This process then takes the plan over, as a worker would once the lease lapsed, on
the same real store (an SQLite file, PostgreSQL). Both clocks are frozen, this one past the
child's lease, so the lease lapses exactly when the test says, whatever the machine's load.
Each real call is appended to a file outside the database: the log is checked against it.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

import proctor
from proctor import Proctor
from proctor.core.lifecycle import PlanRecord, PlanStatus, StepStatus
from proctor.testing import FrozenClock

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc"),
]

TOOLS = Path(__file__).parent / "crash" / "sagatools.py"
_spec = importlib.util.spec_from_file_location("sagatools", TOOLS)
assert _spec is not None and _spec.loader is not None
sagatools = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sagatools)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'p.db'}"
    return str(request.getfixturevalue("pg_url"))


class Scenario:
    """The child process, the file of real calls, and this process's takeover."""

    def __init__(self, tmp_path: Path, url: str) -> None:
        self.url = url
        self.calls = tmp_path / "calls.log"
        self.p: Proctor | None = None

    def start(self, signal_name: str, actions: str) -> subprocess.Popen[str]:
        # The child imports the proctor this test imported (a src checkout or the installed one).
        src = str(Path(proctor.__file__).parents[1])
        path = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])
        argv = [str(TOOLS), self.url, str(self.calls), signal_name, actions]
        return subprocess.Popen(
            [sys.executable, *argv],
            env={**os.environ, "PYTHONPATH": path},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def take_over(self) -> PlanRecord:
        """Resume ``p1`` here, this clock past the child's lease (as after it lapsed)."""
        clock = FrozenClock()
        self.p = sagatools.open_instance(self.url, str(self.calls), "", clock)
        clock.advance(self.p.gateway.options.lease_ttl + timedelta(seconds=1))
        taken = self.p.gateway.executor.resume("p1")
        assert taken is not None
        return taken

    def events(self, type_: str | None = None) -> list[Any]:
        assert self.p is not None
        rows = self.p.gateway.store.read_events(plan_id="p1")
        return [r for r in rows if type_ is None or r.type == type_]

    def real_calls(self) -> list[str]:
        return [" ".join(line.split()[:2]) for line in self.calls.read_text().splitlines()]


def stopped(pid: int) -> bool:
    """Whether the process is stopped (state ``T`` in /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def wait_until(done: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def data(row: Any) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(row.body)
    return body["data"]


@pytest.fixture
def scenario(tmp_path: Path, url: str) -> Any:
    s = Scenario(tmp_path, url)
    yield s
    if s.p is not None:
        s.p.close()


class TestLateCompensation:
    def test_a_compensation_that_returns_after_a_takeover_is_in_the_log(self, scenario):
        """Paused in its non-idempotent undo after the effect; taken over (effect unknown, the
        plan failed); resumed, the undo returns: ``compensation.late_result`` says it ran and
        succeeded, by whom, and what the record says. The record is not rewritten."""
        child = scenario.start("SIGSTOP", "t.once,t.fail")
        try:
            wait_until(lambda: stopped(child.pid), "the child stopped in its compensation")
            taken = scenario.take_over()
        finally:
            child.send_signal(signal.SIGCONT)
        out, err = child.communicate(timeout=60)

        assert child.returncode == 0, err
        status, child_owner = out.split()
        assert status == "failed"  # the plan as the takeover left it
        assert taken.status is PlanStatus.FAILED
        assert taken.steps[0].status is StepStatus.COMPENSATION_FAILED
        assert "effect is unknown" in taken.steps[0].error
        assert scenario.real_calls() == ["book p1:s1", "fail p1:s2", "undo p1:s1"]
        late = scenario.events("compensation.late_result")
        assert [(e.step_id, data(e)) for e in late] == [
            (
                "s1",
                {
                    "attempt": 1,
                    "owner": child_owner,
                    "error": None,  # the undo ran, and succeeded
                    "recorded": "compensation_failed",
                },
            )
        ]
        assert scenario.events()[-1] == late[0]  # after the takeover's plan.finished
        # The attempt's start is in the log, and the takeover's verdict names that attempt.
        assert [data(e)["attempt"] for e in scenario.events("compensation.attempt_started")] == [1]
        assert [data(e)["attempt"] for e in scenario.events("compensation.failed")] == [1]
        assert scenario.events("step.late_result") == []  # no step's action ran late
        assert scenario.p.get("p1") == taken  # the record stands as the takeover left it
        assert scenario.p.verify().ok


class TestCompensationAttempts:
    def test_a_compensation_re_run_after_a_crash_is_in_the_log_with_its_attempt(self, scenario):
        """Killed in its idempotent undo after the effect; the takeover runs it again. The
        log has both attempts, numbered, each committed before its call, as a step's are."""
        child = scenario.start("SIGKILL", "t.idem,t.fail")
        child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL

        taken = scenario.take_over()

        assert taken.status is PlanStatus.COMPENSATED
        assert taken.steps[0].status is StepStatus.COMPENSATED
        assert taken.compensation["attempts"] == {"s1": 2}
        assert scenario.real_calls() == ["book p1:s1", "fail p1:s2", "undo p1:s1", "undo p1:s1"]
        saga = [
            (e.type, e.step_id, data(e).get("attempt"))
            for e in scenario.events()
            if e.type.startswith("compensation.") or e.type in ("plan.resumed", "plan.finished")
        ]
        assert saga == [
            ("compensation.started", None, None),
            ("compensation.attempt_started", "s1", 1),
            ("plan.resumed", None, None),
            ("compensation.attempt_started", "s1", 2),
            ("compensation.succeeded", "s1", 2),
            ("plan.finished", None, None),
        ]
        (first, second) = scenario.events("compensation.attempt_started")
        assert data(first)["idempotency_key"] == data(second)["idempotency_key"] == "p1:s1"
        assert scenario.p.verify().ok
