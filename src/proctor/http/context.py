"""What the routes share: the library object, the settings, auth, and small helpers."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Header
from starlette.responses import Response

from proctor._library import Proctor
from proctor.http.auth import Auth
from proctor.http.lanes import SubmitLanes
from proctor.http.schemas import ErrorBody
from proctor.http.settings import HttpSettings

__all__ = [
    "TRACEPARENT_MAX",
    "Context",
    "KeyedLocks",
    "TraceParent",
    "errors_doc",
    "json_response",
]

_T = TypeVar("_T")


def _wake(waker: asyncio.Future[None]) -> None:
    if not waker.done():
        waker.set_result(None)


_DESCRIPTIONS = {
    400: "Malformed JSON (`invalid_request`, field `body`).",
    401: "No or invalid credentials (`unauthenticated`).",
    403: "The principal may not do this (`permission_denied`).",
    404: "No such plan, event or checkpoint (`not_found`).",
    409: "Conflicts with the current state (`conflict`, `invalid_transition`, `plan_id_reused`).",
    410: "The confirmation or approval window has closed (`approval_expired`).",
    413: "The body is larger than 256 KiB (`payload_too_large`).",
    422: "The input breaks a rule (`invalid_request`, `bad_signature`); `field` names it.",
    429: (
        "Too many failed authentications from this address, or (approve) too many wrong"
        " step-up codes of this approver (`rate_limited`, with `Retry-After`)."
    ),
    503: "The store, policy or configuration is unavailable.",
}


def errors_doc(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Return the OpenAPI ``responses`` entries of these error statuses."""
    return {s: {"model": ErrorBody, "description": _DESCRIPTIONS[s]} for s in statuses}


AUTH_ERRORS = (401, 403, 422, 429, 503)
"""What every authenticated route may answer besides its success."""


TRACEPARENT_MAX = 128
"""The longest ``traceparent`` header a route accepts (a W3C version-00 one has 55)."""

TraceParent = Annotated[
    str | None,
    Header(
        max_length=TRACEPARENT_MAX,
        description="W3C trace context: the request's spans and audit events join the trace.",
    ),
]
"""The ``traceparent`` header of every route that submits or acts on a plan."""


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """Serialise with orjson (the plan JSON is built once, not validated again)."""
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


class KeyedLocks:
    """One lock per key (bounded): serialises identical idempotent submissions."""

    def __init__(self, max_keys: int = 10_000) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._max = max_keys

    @contextmanager
    def hold(self, key: str | None) -> Iterator[None]:
        """Hold the lock of ``key`` (no lock for None)."""
        if key is None:
            yield
            return
        with self._guard:
            lock = self._locks.get(key)
            if lock is None:
                if len(self._locks) >= self._max:
                    self._locks.clear()  # cheap to recreate; a cleared lock only loses a race
                lock = self._locks[key] = threading.Lock()
        with lock:
            yield


@dataclass(slots=True)
class Context:
    """Everything a route needs."""

    proctor: Proctor
    settings: HttpSettings
    auth: Auth
    submit_locks: KeyedLocks = field(default_factory=KeyedLocks)
    submit_lanes: SubmitLanes = field(init=False)
    stopping: bool = field(default=False, init=False)
    """True once the server shuts down: long-polls answer and event streams end at once."""
    _wakers: set[asyncio.Future[None]] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        # NOTE(http): submissions get their own threads, apart from the anyio threadpool
        # the other routes share: reads never wait behind submissions, and submissions
        # run one at a time unless one is stuck in a slow tool (lanes.py says why).
        self.submit_lanes = SubmitLanes(
            self.settings.submit_threads, stall=self.settings.submit_stall_seconds
        )

    async def run_submit(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(*args)`` in the submission lanes, in this task's context."""
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        result: _T = await asyncio.wrap_future(self.submit_lanes.submit(call))
        return result

    async def pause(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, less if the server starts shutting down meanwhile.

        Returns:
            Whether the server is shutting down (then the caller answers or ends at once).
        """
        if self.stopping:
            return True
        waker = asyncio.get_running_loop().create_future()
        self._wakers.add(waker)
        try:
            with suppress(TimeoutError):
                await asyncio.wait_for(waker, seconds)
        finally:
            self._wakers.discard(waker)
        return self.stopping

    def begin_shutdown(self) -> None:
        """Wake every long-poll and event stream so that each answers or ends at once.

        ``proctor serve`` calls it when uvicorn starts its graceful shutdown. NOTE(http):
        uvicorn sends the ASGI lifespan shutdown only after the open requests have finished
        (or were cancelled after ``timeout_graceful_shutdown``, with a plain-text 500), so
        the waiters cannot learn of the shutdown from the lifespan; the server tells them.
        """
        self.stopping = True
        for waker in list(self._wakers):
            # Thread-safe: the server may call this from another thread than the waiter's.
            waker.get_loop().call_soon_threadsafe(_wake, waker)

    def close(self) -> None:
        """Wait for the submissions in flight (the caller closes the store after this)."""
        self.submit_lanes.close()
