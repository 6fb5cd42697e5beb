"""Clients of the HTTP API (docs/http.md): ``ProctorClient`` (sync) and ``AsyncProctorClient``.

Both speak to ``proctor serve`` with a bearer token, return the API's JSON as plain
``dict``s, and raise the same ``ProctorError`` subclasses the server raised: an error
response's ``code`` picks the class (``not_found`` → ``NotFoundError``, ...), so
``except ApprovalExpiredError`` works the same in process and over HTTP. A server that
cannot be reached raises ``StorageError`` with a hint.

Example:
    >>> with ProctorClient("http://127.0.0.1:8700", token) as client:  # doctest: +SKIP
    ...     plan = client.submit(manifest, idempotency_key="order-42")
    ...     plan = client.get(plan["plan_id"], wait=30)

NOTE(client): each request is described once, as a ``_Call`` built by the module-level
functions below, and both classes only send it and read the answer. The two classes are
thin twins by necessity (one blocks, one awaits); everything that could drift between them
(paths, parameters, error mapping, SSE parsing) lives in the shared functions.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import quote

import httpx
import orjson
from opentelemetry import propagate

from proctor import errors as _errors
from proctor.core.canonical import canonical
from proctor.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ProctorError,
    StorageError,
)

__all__ = [
    "ApiError",
    "AsyncProctorClient",
    "ProctorClient",
    "ServerSentEvent",
    "error_from_response",
    "parse_sse",
]

DEFAULT_TIMEOUT = 10.0
"""Seconds a request may take (connect, read, write), unless a call says otherwise."""
_MAX_WAIT = 60.0


class ApiError(ProctorError):
    """An error response whose ``code`` has no class in ``proctor.errors``.

    ``details["code"]`` is the server's code (``unauthenticated``, ``payload_too_large``, ...)
    and ``details["status"]`` the HTTP status; every error the clients raise for a
    response carries both.
    """

    code = "api_error"


def _error_classes() -> dict[str, type[ProctorError]]:
    table: dict[str, type[ProctorError]] = {}
    for name in _errors.__all__:
        cls = getattr(_errors, name)
        if isinstance(cls, type) and issubclass(cls, ProctorError):
            table[cls.code] = cls
    return table


_BY_CODE = _error_classes()
# When the body is not Proctor's JSON (a proxy's error page), the status decides.
_BY_STATUS: dict[int, type[ProctorError]] = {
    400: InvalidRequestError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: InvalidRequestError,
    422: InvalidRequestError,
    502: StorageError,
    503: StorageError,
    504: StorageError,
}


def error_from_response(status: int, body: bytes) -> ProctorError:
    """Return the ``ProctorError`` an error response stands for.

    Args:
        status: The HTTP status.
        body: The raw body; Proctor's is ``{"code", "message", "field", "hint"?}``.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("code"), str):
        code = doc["code"]
        message = str(doc.get("message") or f"HTTP {status}")
        field = doc.get("field") if isinstance(doc.get("field"), str) else None
        hint = doc.get("hint") if isinstance(doc.get("hint"), str) else None
        cls = _BY_CODE.get(code) or _BY_STATUS.get(status, ApiError)
        return cls(message, field=field, hint=hint, status=status, code=code)
    cls = _BY_STATUS.get(status, ApiError)
    text = body[:200].decode(errors="replace").strip()
    return cls(
        f"HTTP {status}" + (f": {text}" if text else ""),
        status=status,
        code=cls.code,
        hint="The response is not Proctor's JSON: is a proxy in the way?",
    )


def _unreachable(base_url: str, exc: httpx.TransportError) -> StorageError:
    what = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    return StorageError(
        f"the request to Proctor at {base_url} {what}: {type(exc).__name__}: {exc}",
        hint="Is `proctor serve` running and reachable at this URL?",
    )


# ---------------------------------------------------------------------- requests, described


@dataclass(frozen=True, slots=True)
class _Call:
    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None  # None: the client's default
    expect: Literal["json", "text"] = "json"


def _p(plan_id: str) -> str:
    return "/v1/plans/" + quote(plan_id, safe="")


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _comment(comment: str | None, **extra: Any) -> dict[str, Any]:
    return _params(comment=comment, **extra)


def _submit(plan: Mapping[str, Any], idempotency_key: str | None) -> _Call:
    if not isinstance(plan, Mapping):  # a JSON array or string read from a file, say
        raise InvalidRequestError("plan must be an object", field="plan")
    body = dict(plan)
    # Refuse, before anything is sent, what Proctor.submit refuses as not JSON, with the same
    # error and field (``steps[0].params.amount``). orjson alone raised a bare TypeError for
    # a Decimal or an integer past 64 bits, wrote a date as a string and a NaN as null: the
    # plan then ran with params the caller never gave it (what is approved is what runs).
    canonical(body)
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return _Call("POST", "/v1/plans", body=body, headers=headers)


def _get(plan_id: str, wait: float | timedelta | None, default_timeout: float) -> _Call:
    if wait is None:
        return _Call("GET", _p(plan_id))
    w = min(max(_seconds(wait), 0.0), _MAX_WAIT)
    # The server holds the request for up to ``wait`` seconds: the read must outlast it.
    return _Call("GET", _p(plan_id), params={"wait": w}, timeout=default_timeout + w)


def _list(status: str | None, agent: str | None, limit: int | None, cursor: str | None) -> _Call:
    return _Call(
        "GET", "/v1/plans", params=_params(status=status, agent=agent, limit=limit, cursor=cursor)
    )


def _action(plan_id: str, verb: str, body: dict[str, Any]) -> _Call:
    return _Call("POST", f"{_p(plan_id)}/{verb}", body=body)


def _resolve(plan_id: str, step_id: str, succeeded: bool, comment: str | None) -> _Call:
    outcome = "succeeded" if succeeded else "failed"
    return _action(
        plan_id, f"steps/{quote(step_id, safe='')}/resolve", _comment(comment, outcome=outcome)
    )


def _audit_events(after: int, limit: int | None) -> _Call:
    return _Call("GET", "/v1/audit/events", params=_params(after=after, limit=limit))


def _inclusion(index: int, size: int | None) -> _Call:
    return _Call("GET", "/v1/audit/proofs/inclusion", params=_params(index=index, size=size))


def _consistency(old: int, new: int) -> _Call:
    return _Call("GET", "/v1/audit/proofs/consistency", params={"from": old, "to": new})


_CHECKPOINT = _Call("GET", "/v1/audit/checkpoint", expect="text")
_KEYS = _Call("GET", "/v1/audit/keys")


def _dead_letters(limit: int | None) -> _Call:
    return _Call("GET", "/v1/webhooks/dead-letters", params=_params(limit=limit))


_HEALTHZ = _Call("GET", "/healthz")
_READYZ = _Call("GET", "/readyz")


def _request_kwargs(call: _Call, default_timeout: float) -> dict[str, Any]:
    headers = dict(call.headers)
    # The caller's trace context (W3C ``traceparent``, through OpenTelemetry's configured
    # propagator): when the calling code runs in a span, the server's events of this plan,
    # approval or undo carry its trace id. Nothing is added outside a span.
    propagate.inject(headers)
    kw: dict[str, Any] = {"params": call.params or None}
    if call.body is not None:
        try:
            kw["content"] = orjson.dumps(call.body)
        except orjson.JSONEncodeError as exc:  # a comment that is not a str, say
            raise InvalidRequestError(
                f"the request to {call.method} {call.path} cannot be sent as JSON: {exc}",
                field="body",
            ) from exc
        headers["Content-Type"] = "application/json"
    kw["headers"] = headers or None
    if call.timeout is not None:
        kw["timeout"] = call.timeout
    else:
        kw["timeout"] = default_timeout
    return kw


def _result(call: _Call, response: httpx.Response) -> Any:
    if not response.is_success:
        raise error_from_response(response.status_code, response.content)
    if call.expect == "text":
        return response.text
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        raise ApiError(
            f"{call.method} {call.path} answered {response.status_code} with a body that is "
            "not JSON",
            status=response.status_code,
            code=ApiError.code,
        ) from exc


def _headers(token: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"User-Agent": "proctor-client/1", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    headers.update(extra or {})
    return headers


# ---------------------------------------------------------------------- server-sent events


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One event of a ``text/event-stream`` (``GET /v1/plans/{id}/events``).

    Attributes:
        event: The event name (``message`` when the server sent none); the audit event type.
        data: The data lines joined with newlines; the audit event as JSON.
        id: The last event id seen (the audit event's index), if any.
        retry: The reconnection delay the server asked for, in milliseconds, if any.
    """

    event: str
    data: str
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        """Return ``data`` parsed as JSON."""
        return orjson.loads(self.data)


class _SseParser:
    """The WHATWG event-stream parsing rules, one line at a time."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, line: str) -> ServerSentEvent | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self._data:
                self._event = ""
                return None
            ev = ServerSentEvent(
                event=self._event or "message",
                data="\n".join(self._data),
                id=self._id,
                retry=self._retry,
            )
            self._event, self._data = "", []
            return ev
        if line.startswith(":"):
            return None  # a comment (keep-alive)
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def finish(self) -> ServerSentEvent | None:
        # A stream that ends without the final blank line still delivers its last event.
        return self.feed("") if self._data else None


def _sse_headers(after: int | None) -> dict[str, str]:
    headers = {"Accept": "text/event-stream"}
    if after is not None:
        headers["Last-Event-ID"] = str(after)
    return headers


def parse_sse(lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    """Yield the events of an event stream given as lines."""
    parser = _SseParser()
    for line in lines:
        ev = parser.feed(line)
        if ev is not None:
            yield ev
    last = parser.finish()
    if last is not None:
        yield last


# ---------------------------------------------------------------------- the sync client


class ProctorClient:
    """A blocking client of the Proctor HTTP API.

    Args:
        base_url: Where ``proctor serve`` listens, e.g. ``http://127.0.0.1:8700``.
        token: The bearer token (``proctor tokens create``); None for health checks only.
        timeout: Seconds per request (long polls add their ``wait``). Default 10.
        headers: Extra headers for every request.
        transport: An ``httpx`` transport (for example ``httpx.MockTransport`` in tests).
        verify: TLS verification, as for ``httpx.Client``.

    Raises (from every method):
        ProctorError: the subclass named by the error response's ``code``; ``StorageError``
            when the server cannot be reached or times out.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        verify: bool | ssl.SSLContext = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=_headers(token, headers),
            transport=transport,
            verify=verify,
            timeout=timeout,
        )

    def _send(self, call: _Call) -> Any:
        try:
            response = self._http.request(
                call.method, call.path, **_request_kwargs(call, self.timeout)
            )
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from exc
        return _result(call, response)

    # plans

    def submit(self, plan: Mapping[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """Submit a plan manifest; return the plan as routed (and run, if it executed).

        A ``plan`` that is not a mapping raises ``InvalidRequestError`` (``plan must be an
        object``, as the server answers) before anything is sent; so does a value JSON cannot
        carry exactly (a ``Decimal``, a ``date``, a NaN, an integer beyond 2**53), naming its
        field (``steps[0].params.amount``) as ``Proctor.submit`` does.
        """
        result: dict[str, Any] = self._send(_submit(plan, idempotency_key))
        return result

    def get(self, plan_id: str, wait: float | timedelta | None = None) -> dict[str, Any]:
        """Return a plan; with ``wait`` (≤ 60 s), first wait until its status changes."""
        result: dict[str, Any] = self._send(_get(plan_id, wait, self.timeout))
        return result

    def list(
        self,
        *,
        status: str | None = None,
        agent: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Return one page ``{"plans": [...], "next_cursor": str | None}``, newest first."""
        result: dict[str, Any] = self._send(_list(status, agent, limit, cursor))
        return result

    def iter_plans(
        self, *, status: str | None = None, agent: str | None = None, page_size: int = 50
    ) -> Iterator[dict[str, Any]]:
        """Yield every plan the principal may see, newest first, page after page."""
        cursor = None
        while True:
            page = self.list(status=status, agent=agent, limit=page_size, cursor=cursor)
            yield from page["plans"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def events(self, plan_id: str, *, after: int | None = None) -> Iterator[ServerSentEvent]:
        """Stream a plan's audit events (SSE) until the plan is terminal.

        Each event's ``event`` is the audit event type, ``id`` its index and ``data`` the
        signed event JSON. The connection closes when the iteration ends (or the generator
        is closed).

        Args:
            plan_id: The plan.
            after: Resume after this audit index (``Last-Event-ID``), e.g. the last ``id``
                seen before a disconnect.
        """
        try:
            with self._http.stream(
                "GET",
                f"{_p(plan_id)}/events",
                headers=_sse_headers(after),
                # Events may be hours apart (a plan waiting for approval): no read timeout.
                timeout=httpx.Timeout(self.timeout, read=None),
            ) as response:
                if not response.is_success:
                    response.read()
                    raise error_from_response(response.status_code, response.content)
                yield from parse_sse(response.iter_lines())
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from exc

    def confirm(self, plan_id: str, *, comment: str | None = None) -> dict[str, Any]:
        """Confirm a plan as its on-behalf-of user; return the plan (run, if it could)."""
        result: dict[str, Any] = self._send(_action(plan_id, "confirm", _comment(comment)))
        return result

    def approve(
        self, plan_id: str, *, otp: str | None = None, comment: str | None = None
    ) -> dict[str, Any]:
        """Approve a plan (``otp`` when the policy asks for step-up); return the plan."""
        result: dict[str, Any] = self._send(_action(plan_id, "approve", _comment(comment, otp=otp)))
        return result

    def reject(self, plan_id: str, *, comment: str | None = None) -> dict[str, Any]:
        """Reject a waiting plan; return it."""
        result: dict[str, Any] = self._send(_action(plan_id, "reject", _comment(comment)))
        return result

    def undo(self, plan_id: str, *, comment: str | None = None) -> dict[str, Any]:
        """Undo a succeeded plan within its undo window; return it."""
        result: dict[str, Any] = self._send(_action(plan_id, "undo", _comment(comment)))
        return result

    def resolve(
        self, plan_id: str, step_id: str, *, succeeded: bool, comment: str | None = None
    ) -> dict[str, Any]:
        """Say whether a step whose outcome is unknown took effect (admin); return the plan."""
        result: dict[str, Any] = self._send(_resolve(plan_id, step_id, succeeded, comment))
        return result

    # audit

    def audit_events(self, *, after: int = -1, limit: int | None = None) -> dict[str, Any]:
        """Return ``{"events": [...], "next_after": int | None}``: events with index > after."""
        result: dict[str, Any] = self._send(_audit_events(after, limit))
        return result

    def checkpoint(self) -> str:
        """Return the latest signed checkpoint, exactly as signed (a C2SP signed note)."""
        result: str = self._send(_CHECKPOINT)
        return result

    def inclusion_proof(self, index: int, size: int | None = None) -> dict[str, Any]:
        """Return an RFC 9162 inclusion proof of event ``index`` in the tree of ``size``."""
        result: dict[str, Any] = self._send(_inclusion(index, size))
        return result

    def consistency_proof(self, old: int, new: int) -> dict[str, Any]:
        """Return an RFC 9162 consistency proof between tree sizes ``old`` and ``new``."""
        result: dict[str, Any] = self._send(_consistency(old, new))
        return result

    def keys(self) -> dict[str, Any]:
        """Return ``{"origin", "vkeys", "keys"}``: what verifies the log and its checkpoints."""
        result: dict[str, Any] = self._send(_KEYS)
        return result

    # operations

    def dead_letters(self, *, limit: int | None = None) -> dict[str, Any]:
        """Return ``{"deliveries": [...]}``: webhook deliveries that gave up (admin)."""
        result: dict[str, Any] = self._send(_dead_letters(limit))
        return result

    def healthz(self) -> dict[str, Any]:
        """Return ``{"status": "ok"}`` when the process is up."""
        result: dict[str, Any] = self._send(_HEALTHZ)
        return result

    def readyz(self) -> dict[str, Any]:
        """Return the readiness answer; raises (``StorageError``, ...) when not ready."""
        result: dict[str, Any] = self._send(_READYZ)
        return result

    # lifecycle

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> ProctorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- the async client


class AsyncProctorClient:
    """The ``async`` twin of ``ProctorClient``: same arguments, same methods, awaited.

    ``events`` is an async iterator; use ``async with`` (or ``await aclose()``).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: bool | ssl.SSLContext = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=_headers(token, headers),
            transport=transport,
            verify=verify,
            timeout=timeout,
        )

    async def _send(self, call: _Call) -> Any:
        try:
            response = await self._http.request(
                call.method, call.path, **_request_kwargs(call, self.timeout)
            )
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from exc
        return _result(call, response)

    async def submit(
        self, plan: Mapping[str, Any], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """See ``ProctorClient.submit``."""
        result: dict[str, Any] = await self._send(_submit(plan, idempotency_key))
        return result

    async def get(self, plan_id: str, wait: float | timedelta | None = None) -> dict[str, Any]:
        """See ``ProctorClient.get``."""
        result: dict[str, Any] = await self._send(_get(plan_id, wait, self.timeout))
        return result

    async def list(
        self,
        *,
        status: str | None = None,
        agent: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """See ``ProctorClient.list``."""
        result: dict[str, Any] = await self._send(_list(status, agent, limit, cursor))
        return result

    async def iter_plans(
        self, *, status: str | None = None, agent: str | None = None, page_size: int = 50
    ) -> AsyncIterator[dict[str, Any]]:
        """See ``ProctorClient.iter_plans``."""
        cursor = None
        while True:
            page = await self.list(status=status, agent=agent, limit=page_size, cursor=cursor)
            for plan in page["plans"]:
                yield plan
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def events(
        self, plan_id: str, *, after: int | None = None
    ) -> AsyncIterator[ServerSentEvent]:
        """See ``ProctorClient.events``."""
        try:
            async with self._http.stream(
                "GET",
                f"{_p(plan_id)}/events",
                headers=_sse_headers(after),
                timeout=httpx.Timeout(self.timeout, read=None),
            ) as response:
                if not response.is_success:
                    await response.aread()
                    raise error_from_response(response.status_code, response.content)
                parser = _SseParser()
                async for line in response.aiter_lines():
                    ev = parser.feed(line)
                    if ev is not None:
                        yield ev
                last = parser.finish()
                if last is not None:
                    yield last
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from exc

    async def confirm(self, plan_id: str, *, comment: str | None = None) -> dict[str, Any]:
        """See ``ProctorClient.confirm``."""
        result: dict[str, Any] = await self._send(_action(plan_id, "confirm", _comment(comment)))
        return result

    async def approve(
        self, plan_id: str, *, otp: str | None = None, comment: str | None = None
    ) -> dict[str, Any]:
        """See ``ProctorClient.approve``."""
        result: dict[str, Any] = await self._send(
            _action(plan_id, "approve", _comment(comment, otp=otp))
        )
        return result

    async def reject(self, plan_id: str, *, comment: str | None = None) -> dict[str, Any]:
        """See ``ProctorClient.reject``."""
        result: dict[str, Any] = await self._send(_action(plan_id, "reject", _comment(comment)))
        return result

    async def undo(self, plan_id: str, *, comment: str | None = None) -> dict[str, Any]:
        """See ``ProctorClient.undo``."""
        result: dict[str, Any] = await self._send(_action(plan_id, "undo", _comment(comment)))
        return result

    async def resolve(
        self, plan_id: str, step_id: str, *, succeeded: bool, comment: str | None = None
    ) -> dict[str, Any]:
        """See ``ProctorClient.resolve``."""
        result: dict[str, Any] = await self._send(_resolve(plan_id, step_id, succeeded, comment))
        return result

    async def audit_events(self, *, after: int = -1, limit: int | None = None) -> dict[str, Any]:
        """See ``ProctorClient.audit_events``."""
        result: dict[str, Any] = await self._send(_audit_events(after, limit))
        return result

    async def checkpoint(self) -> str:
        """See ``ProctorClient.checkpoint``."""
        result: str = await self._send(_CHECKPOINT)
        return result

    async def inclusion_proof(self, index: int, size: int | None = None) -> dict[str, Any]:
        """See ``ProctorClient.inclusion_proof``."""
        result: dict[str, Any] = await self._send(_inclusion(index, size))
        return result

    async def consistency_proof(self, old: int, new: int) -> dict[str, Any]:
        """See ``ProctorClient.consistency_proof``."""
        result: dict[str, Any] = await self._send(_consistency(old, new))
        return result

    async def keys(self) -> dict[str, Any]:
        """See ``ProctorClient.keys``."""
        result: dict[str, Any] = await self._send(_KEYS)
        return result

    async def dead_letters(self, *, limit: int | None = None) -> dict[str, Any]:
        """See ``ProctorClient.dead_letters``."""
        result: dict[str, Any] = await self._send(_dead_letters(limit))
        return result

    async def healthz(self) -> dict[str, Any]:
        """See ``ProctorClient.healthz``."""
        result: dict[str, Any] = await self._send(_HEALTHZ)
        return result

    async def readyz(self) -> dict[str, Any]:
        """See ``ProctorClient.readyz``."""
        result: dict[str, Any] = await self._send(_READYZ)
        return result

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncProctorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
