"""``SubmitLanes``: one submission at a time, another beside each stuck one, in order."""

from __future__ import annotations

import threading
import time

import pytest

from proctor.http.lanes import SubmitLanes


class Gauge:
    """Counts calls running at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.order: list[int] = []

    def call(self, i: int, seconds: float = 0.0, gate: threading.Event | None = None):
        def run() -> int:
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
                self.order.append(i)
            if gate is not None:
                assert gate.wait(10)
            time.sleep(seconds)
            with self.lock:
                self.now -= 1
            return i

        return run


class TestSubmitLanes:
    def test_no_lanes_is_refused(self):
        """At least one lane."""
        with pytest.raises(ValueError, match="at least 1"):
            SubmitLanes(0, stall=1)

    def test_results_and_errors_come_back(self):
        """A call's value, or its exception, is its future's."""
        lanes = SubmitLanes(4, stall=1)

        def boom() -> None:
            raise KeyError("x")

        ok, bad = lanes.submit(lambda: 42), lanes.submit(boom)

        assert ok.result(5) == 42
        with pytest.raises(KeyError):
            bad.result(5)
        lanes.close()

    def test_quick_calls_run_one_at_a_time_in_order(self):
        """Calls that are not stuck never overlap, and start in arrival order."""
        lanes = SubmitLanes(8, stall=5)
        g = Gauge()

        futures = [lanes.submit(g.call(i, 0.005)) for i in range(20)]

        assert [f.result(10) for f in futures] == list(range(20))
        assert g.most == 1
        assert g.order == list(range(20))
        lanes.close()

    def test_a_stuck_call_lets_the_next_one_start(self):
        """A call running longer than ``stall`` opens a lane for the one behind it."""
        lanes = SubmitLanes(4, stall=0.05)
        g = Gauge()
        gate = threading.Event()

        stuck = lanes.submit(g.call(0, gate=gate))
        quick = lanes.submit(g.call(1))

        assert quick.result(5) == 1
        assert not stuck.done()
        gate.set()
        assert stuck.result(5) == 0
        lanes.close()

    def test_max_lanes_caps_the_stuck_ones(self):
        """With every lane stuck, the next call waits for one to finish."""
        lanes = SubmitLanes(2, stall=0.02)
        g = Gauge()
        gates = [threading.Event(), threading.Event()]

        first = lanes.submit(g.call(0, gate=gates[0]))
        second = lanes.submit(g.call(1, gate=gates[1]))
        time.sleep(0.2)
        third = lanes.submit(g.call(2))
        time.sleep(0.2)

        assert g.order == [0, 1]
        assert not third.done()
        gates[0].set()
        assert third.result(5) == 2
        gates[1].set()
        assert (first.result(5), second.result(5)) == (0, 1)
        assert g.most == 2
        lanes.close()

    def test_a_cancelled_call_does_not_run(self):
        """A call cancelled while queued is skipped."""
        lanes = SubmitLanes(1, stall=5)
        g = Gauge()
        gate = threading.Event()

        running = lanes.submit(g.call(0, gate=gate))
        queued = lanes.submit(g.call(1))
        assert queued.cancel()
        gate.set()

        assert running.result(5) == 0
        lanes.close()
        assert g.order == [0]

    def test_close_runs_what_is_queued_then_refuses(self):
        """``close`` waits for queued calls; a call after it is refused."""
        lanes = SubmitLanes(2, stall=5)
        g = Gauge()

        futures = [lanes.submit(g.call(i, 0.01)) for i in range(5)]
        lanes.close()

        assert all(f.done() for f in futures)
        assert lanes.threads <= 2
        with pytest.raises(RuntimeError):
            lanes.submit(g.call(9))

    def test_idle_threads_exit(self):
        """A thread with nothing to do for ``idle_exit`` seconds ends; a new call starts one."""
        lanes = SubmitLanes(2, stall=5, idle_exit=0.05)

        assert lanes.submit(lambda: 1).result(5) == 1
        deadline = time.monotonic() + 5
        while lanes.threads and time.monotonic() < deadline:
            time.sleep(0.01)
        gone = lanes.threads
        again = lanes.submit(lambda: 2).result(5)

        assert gone == 0
        assert again == 2
        lanes.close()
