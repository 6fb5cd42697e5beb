"""``SubmitLanes``: how many plan submissions run at once (docs/http.md, "Performance").

A submission holds the GIL for most of its ~1.5 ms (validation, the policy query, signing,
SQL), so two of them running at once are no faster than one: they take turns with the GIL
and the store's lock, and every turn costs context switches. Measured with bench/http.py
(16 clients, 2 cores): one submission at a time gave 390 plans/s at 2.4 ms of server CPU per
plan; a pool of 2 to 16 threads gave 330-350 plans/s at 2.8 ms. But a submission also runs
its plan's tools, and one slow tool must not hold up everybody else's plans.

So one submission runs at a time, plus one more for every running submission that has taken
longer than ``stall`` seconds (a tool waiting on the network, say), up to ``max_lanes``. A
thread that finishes a submission takes the next one itself, without a hand-off.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["SubmitLanes"]


class SubmitLanes:
    """Runs calls in arrival order, one at a time unless the running ones are stuck."""

    def __init__(
        self,
        max_lanes: int,
        *,
        stall: float,
        name: str = "proctor-submit",
        idle_exit: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_lanes < 1:
            raise ValueError("max_lanes must be at least 1")
        self.max_lanes = max_lanes
        self.stall = stall
        self._name = name
        self._idle_exit = idle_exit  # a thread with nothing to do for this long exits
        self._now = monotonic
        self._cv = threading.Condition()
        self._jobs: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._running: dict[int, float] = {}  # thread id → when its call started
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False

    def submit(self, call: Callable[[], Any]) -> Future[Any]:
        """Queue ``call``; return a future of its result.

        Raises:
            RuntimeError: after ``close``.
        """
        future: Future[Any] = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the submission lanes are closed")
            self._jobs.append((call, future))
            if self._idle == 0 and len(self._threads) < self.max_lanes:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            elif len(self._running) < self._limit(self._now()):
                self._cv.notify()  # only when a waiting thread may start it now
        return future

    @property
    def threads(self) -> int:
        """How many threads the lanes have started (at most ``max_lanes``)."""
        return len(self._threads)

    def close(self) -> None:
        """Run what is queued, then stop the threads (waits for them)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            threads = list(self._threads)
        for thread in threads:
            thread.join()

    def _limit(self, now: float) -> int:
        stuck = sum(1 for started in self._running.values() if now - started >= self.stall)
        return min(self.max_lanes, 1 + stuck)

    def _timeout(self, now: float) -> float | None:
        # The next moment a running call becomes stuck, which opens one more lane.
        due = [s + self.stall - now for s in self._running.values() if now - s < self.stall]
        return max(min(due), 0.0) if due else None

    def _work(self) -> None:
        me = threading.get_ident()
        while True:
            with self._cv:
                while True:
                    now = self._now()
                    if self._jobs and len(self._running) < self._limit(now):
                        break
                    if self._closed and not self._jobs:
                        return
                    if self._jobs:
                        # Look again when a running call would become stuck (at the
                        # latest after ``stall``): that opens one more lane.
                        due = self._timeout(now)
                        wait = self.stall if due is None else due
                    else:
                        wait = self._idle_exit
                    self._idle += 1
                    try:
                        woke = self._cv.wait(wait)
                    finally:
                        self._idle -= 1
                    if not woke and not self._jobs and not self._closed:
                        self._threads.remove(threading.current_thread())
                        return  # idle for a while: a new call starts a new thread
                call, future = self._jobs.popleft()
                self._running[me] = now
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        result = call()
                    except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
                        future.set_exception(exc)
                    else:
                        future.set_result(result)
            finally:
                with self._cv:
                    del self._running[me]
