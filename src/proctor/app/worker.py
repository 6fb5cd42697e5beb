"""The worker: fires due timers and resumes plans whose worker died, in a background thread.

It runs inside ``proctor serve`` and alone as ``proctor worker``. Each pass:

1. ``Gateway.tick`` fires due timers — approval and confirmation expiry, rollback TTLs —
   from the indexed ``timer_at`` column, so they fire after a restart too (a timer that fails
   is logged and fires on a later pass); a rollback TTL's compensations run on the executor's
   worker threads, so one that hangs holds up neither the pass nor the other timers;
2. ``Gateway.recover`` (even when firing the timers failed) hands every running or
   compensating plan without a live lease (its lease lapsed, or its owner process is gone
   from this host) to the executor's worker threads, which claim it under a new lease and
   carry it on;
3. ``AuditLog.checkpoint_pending(due_only=True)`` signs a checkpoint when events were
   appended since the last one and it is older than ``[audit]
   checkpoint_interval_seconds``: checkpoints signed only on append would leave the newest
   events of an idle log uncovered, and cuttable, indefinitely.

The first pass runs at once on ``start``: after a crash, a restarted process resumes the
interrupted plans without waiting for their leases to lapse.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proctor.app.gateway import Gateway

__all__ = ["Worker", "WorkerPass"]

log = logging.getLogger("proctor.worker")


@dataclass(frozen=True, slots=True)
class WorkerPass:
    """What one pass did."""

    timers_fired: int
    plans_resumed: int


class Worker:
    """Runs ``run_once`` every ``interval`` seconds in a daemon thread until ``stop``.

    A failing pass is logged and the next one runs: a store that is busy for a moment must
    not stop timers or recovery for the rest of the process's life.
    """

    def __init__(self, gateway: Gateway, *, interval: float = 1.0) -> None:
        self.gateway = gateway
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proctor-worker", daemon=True)

    def run_once(self) -> WorkerPass:
        """Fire due timers, hand interrupted plans to worker threads, checkpoint the log."""
        try:
            fired = len(self.gateway.tick(wait=False))
        except Exception:  # logged; recovery must not wait for the timers
            log.exception("firing timers failed")
            fired = 0
        resumed = self.gateway.recover()
        audit_log = self.gateway.audit_log
        try:
            if audit_log is not None:
                audit_log.checkpoint_pending(due_only=True)
        except Exception:  # logged; the next pass signs it
            log.exception("signing a checkpoint failed")
        return WorkerPass(timers_fired=fired, plans_resumed=resumed)

    def start(self) -> None:
        """Start the thread (its first pass runs at once)."""
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.run_once()
            except Exception:  # logged; the next pass retries
                log.exception("worker pass failed")
            if self._stop.wait(self._interval):
                return

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop and wait for the pass in progress to finish."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
