"""A background thread firing the gateway's timers (expiry, rollback TTLs) every second."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Ticker"]

log = logging.getLogger("proctor.http")


class Ticker:
    """Calls ``tick`` every ``interval`` seconds in a daemon thread until ``stop``.

    A failing tick is logged and the next one runs: a store that is busy for a moment must
    not stop plans from expiring for the rest of the process's life.
    """

    def __init__(self, tick: Callable[[], Any], *, interval: float = 1.0) -> None:
        self._tick = tick
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proctor-ticker", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._tick()
            except Exception:  # logged; the next tick retries
                log.exception("timer tick failed")

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop and wait for the tick in progress to finish."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
