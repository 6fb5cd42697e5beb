"""The executor's background threads: the lease watchdog and the resume workers.

``Background`` is a mixin of ``Executor`` (``proctor.app.executor``). It keeps the plans this
process holds and the handler calls in flight (``_hold``, ``_flight``); a watchdog thread
renews the held plans' leases and times out attempts that overran (``step.timed_out``), and
a pool of worker threads resumes plans (``submit_resume``). It is separate because it is the
executor's thread and timer machinery, apart from what a step does; the executor's own
methods it calls are declared below for the type checker only.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from proctor.app.journal import Journal
from proctor.core.catalog import ActionSpec
from proctor.core.events import EventType as E
from proctor.core.lifecycle import PlanRecord, StepRecord, StepStatus

if TYPE_CHECKING:
    from proctor.app.gateway import Gateway
    from proctor.app.saga import Saga

__all__ = ["Background"]

log = logging.getLogger("proctor.executor")


@dataclass(slots=True)
class _Flight:
    """A handler call in progress in this process."""

    step_id: str
    attempts: int
    timeout_at: float | None  # monotonic
    timed_out: bool = False
    compensation: bool = False  # a step's compensation (``attempts`` counts those)


class Background:
    """Held plans, calls in flight, the watchdog and the workers (an ``Executor`` mixin)."""

    if TYPE_CHECKING:  # provided by Executor
        gw: Gateway
        saga: Saga
        _flights: dict[str, _Flight]
        _held: dict[str, object]
        _queued: set[str]
        _guard: threading.Lock
        _watchdog: threading.Thread | None
        _stop: threading.Event
        _pool: ThreadPoolExecutor | None

        @property
        def _opts(self) -> Any: ...
        def _mine(self, lease_owner: str | None) -> bool: ...
        def _until(self, now: datetime) -> datetime: ...
        def _journal(self, tx: Any) -> Journal: ...
        def resume(self, plan_id: str) -> PlanRecord | None: ...  # noqa: D102

    # ------------------------------------------------------------------ held plans, calls in flight

    def _hold(self, plan_id: str) -> object:
        token = object()
        with self._guard:
            self._held[plan_id] = token
        self._ensure_watchdog()
        return token

    def _release(self, plan_id: str, token: object) -> None:
        with self._guard:
            if self._held.get(plan_id) is token:
                del self._held[plan_id]

    def _flight(
        self, record: PlanRecord, step: StepRecord, spec: ActionSpec, *, attempt: int | None = None
    ) -> _Flight:
        """Register an attempt in progress, for the watchdog's timeout.

        ``attempt`` is given for a compensation's (``spec`` is then the compensating action).
        """
        timeout = spec.timeout if spec.timeout is not None else self._opts.step_timeout
        flight = _Flight(
            step.step_id,
            step.attempts if attempt is None else attempt,
            time.monotonic() + timeout if timeout else None,
            compensation=attempt is not None,
        )
        with self._guard:
            self._flights[record.plan_id] = flight
        return flight

    def _landed(self, plan_id: str, flight: _Flight) -> None:
        with self._guard:
            if self._flights.get(plan_id) is flight:
                del self._flights[plan_id]

    # ------------------------------------------------------------------ background

    def submit_resume(self, plan_id: str) -> bool:
        """Resume a plan on one of this executor's worker threads (once, if asked twice)."""
        with self._guard:
            if plan_id in self._queued or plan_id in self._held:
                return False
            self._queued.add(plan_id)
        if self._pool is None:
            with self._guard:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(
                        max_workers=self._opts.worker_threads,
                        thread_name_prefix="proctor-worker",
                    )
        self._pool.submit(self._resume_quietly, plan_id)
        return True

    def _resume_quietly(self, plan_id: str) -> None:
        try:
            self.resume(plan_id)
        except Exception:  # logged; the worker's next pass tries again
            log.exception("resuming plan %s failed", plan_id)
        finally:
            with self._guard:
                self._queued.discard(plan_id)

    def _ensure_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.is_alive():
            return
        with self._guard:
            if self._watchdog is not None and self._watchdog.is_alive():
                return
            self._watchdog = threading.Thread(
                target=self._watch, name="proctor-lease-watchdog", daemon=True
            )
            self._watchdog.start()

    def _watch(self) -> None:
        """Renew the leases of held plans; time out attempts that overran."""
        renew_every = max(self._opts.lease_ttl.total_seconds() / 3, 0.05)
        last_renew = idle_since = time.monotonic()
        while not self._stop.wait(0.1):
            mono = time.monotonic()
            with self._guard:
                held = set(self._held)
                if held or self._flights:
                    idle_since = mono
                elif mono - idle_since > 5.0:
                    # Idle: exit; the next plan this process holds starts a new watchdog.
                    self._watchdog = None
                    return
                overdue = [
                    (pid, f)
                    for pid, f in self._flights.items()
                    if f.timeout_at is not None and mono > f.timeout_at and not f.timed_out
                ]
                for _, f in overdue:
                    f.timed_out = True
            for pid, f in overdue:
                try:
                    self._time_out(pid, f)
                except Exception:  # logged; the lease lapses and a worker takes over
                    log.exception("timing out plan %s failed", pid)
            if mono - last_renew >= renew_every and held:
                last_renew = mono
                for pid in held:
                    try:
                        self._renew(pid)
                    except Exception:  # logged; the next renewal tries again
                        log.exception("renewing the lease of plan %s failed", pid)

    def _renew(self, plan_id: str) -> None:
        # Lease renewal is bookkeeping, not a state change: no audit event.
        with self.gw.store.transaction(durable=False) as tx:
            current: PlanRecord | None = tx.get_plan(plan_id)
            if current is not None and self._mine(current.lease_owner):
                tx.save_plan(current.leased(current.lease_owner, self._until(self.gw.clock.now())))

    def _time_out(self, plan_id: str, flight: _Flight) -> None:
        """An attempt overran its timeout: record it and let a worker take the plan on."""
        timed_out = self.saga.timed_out if flight.compensation else self._step_timed_out
        if not timed_out(plan_id, flight):
            return
        with self._guard:
            self._held.pop(plan_id, None)
            # The stuck call may be a worker thread's own resume (a queued plan's step, a
            # rollback TTL's saga): the new resume must not wait for that thread to come back.
            self._queued.discard(plan_id)
        self.submit_resume(plan_id)

    def _step_timed_out(self, plan_id: str, flight: _Flight) -> bool:
        """Record a step's overrun (``step.timed_out``) and release the plan; False if moot."""
        with self.gw.store.transaction() as tx:
            current: PlanRecord | None = tx.get_plan(plan_id)
            if current is None or not self._mine(current.lease_owner):
                return False
            step = next((s for s in current.steps if s.step_id == flight.step_id), None)
            if step is None or step.status is not StepStatus.RUNNING:
                return False
            if step.attempts != flight.attempts:
                return False
            spec = self.gw.catalog.require(step.action)
            timeout = spec.timeout if spec.timeout is not None else self._opts.step_timeout
            error = f"TimeoutError: attempt {step.attempts} took longer than {timeout} s"
            j = self._journal(tx)
            j.emit(
                E.STEP_TIMED_OUT,
                plan=current,
                step_id=step.step_id,
                data={"attempt": step.attempts, "timeout_s": str(timeout)},
            )
            current = current.with_step(dataclasses.replace(step, error=error)).leased(None, None)
            tx.save_plan(current)
            j.flush()
        return True

    def close(self) -> None:
        """Stop the watchdog and the worker threads (running handlers finish first)."""
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
