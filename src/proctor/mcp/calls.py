"""What a ``tools/call`` carries on its way through a proxy, local or remote.

The flight of a request (progress relay, ``_meta``, cancellation), the group of identical
requests in progress that share one upstream call, the client's name, and the call key
inside an MCP plan id. ``McpProxy`` (``proctor.mcp.proxy``) and ``RemoteMcpProxy``
(``proctor.mcp.remote``) both use them: kept here, apart from either proxy, the remote one
need not reach into the local one's module for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
import mcp_types as types
from mcp.shared.dispatcher import ProgressFnT
from mcp_types import CLIENT_INFO_META_KEY, RequestParamsMeta

log = logging.getLogger("proctor.mcp")


@dataclass(slots=True)
class _Flight:
    """One ``tools/call`` request in progress: its progress relay, its ``_meta``, its cancel."""

    progress: ProgressFnT | None = None
    meta: RequestParamsMeta | None = None
    cancelled: bool = False


@dataclass(slots=True)
class _Group:
    """The ``tools/call`` requests in progress on one call (one call key), and what they share.

    Identical calls at the same moment share one plan, so one upstream call, which runs in a
    task of its own (``runs``, by plan id): every request waits for it and gets its result.
    Its progress goes to every request that asked for progress (from when it joined), and
    it is cancelled only when every request was (``abandoned``; a request that joins
    afterwards starts anew). ``_meta`` is the first request's.

    Attributes:
        flights: The requests, in the order they came.
        scopes: The upstream calls in progress for them.
        runs: Plan id -> the task making that plan's calls (kept while a request remains,
            so one that read the plan as running before it ended finds the outcome).
        results: Plan id -> the upstream's result that ``McpTools`` handed over, for every
            request that waits for it (``take_result`` gives it once).
    """

    flights: list[_Flight] = field(default_factory=list)
    scopes: set[anyio.CancelScope] = field(default_factory=set)
    runs: dict[str, asyncio.Future[Any]] = field(default_factory=dict)
    results: dict[str, types.CallToolResult] = field(default_factory=dict)
    abandoned: bool = False

    @property
    def meta(self) -> RequestParamsMeta | None:
        return self.flights[0].meta if self.flights else None

    def join(self, flight: _Flight) -> None:
        self.flights.append(flight)
        self.abandoned = False

    @property
    def wants_progress(self) -> bool:
        return any(f.progress is not None for f in self.flights)

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        """Relay an upstream progress notification to every request waiting for it."""
        for flight in list(self.flights):
            if flight.progress is None or flight.cancelled:
                continue
            try:
                await flight.progress(progress, total, message)
            except Exception as exc:  # noqa: BLE001 - one client's stream must not stop the call
                log.debug("a progress notification was not delivered: %s", exc)

    def cancel(self, flight: _Flight) -> None:
        """``flight`` was cancelled: cancel the upstream calls if no request waits any more."""
        flight.cancelled = True
        if all(f.cancelled for f in self.flights):
            self.abandoned = True
            for scope in list(self.scopes):
                scope.cancel()


_RESERVED = "io.modelcontextprotocol/"
"""The prefix of ``_meta`` keys reserved to MCP (2026-07-28 envelope: protocol version,
client info and capabilities, log level): they describe the client's connection to the
proxy, never the proxy's to an upstream, whose SDK sets its own."""


def _client_name(ctx: Any) -> str:
    """``name version`` of the MCP client on the request's session (or in its envelope)."""
    params = ctx.session.client_params
    if params is not None:
        return f"{params.client_info.name} {params.client_info.version}"
    # A 2026-07-28 client may send its info with each request and no capabilities.
    meta = getattr(ctx, "meta", None)
    info = meta.get(CLIENT_INFO_META_KEY) if isinstance(meta, Mapping) else None
    if isinstance(info, Mapping) and isinstance(info.get("name"), str):
        version = info.get("version")
        return f"{info['name']} {version}" if isinstance(version, str) else info["name"]
    return "mcp-client"


def _flight_of(ctx: Any, params: types.CallToolRequestParams) -> tuple[_Flight, str | None]:
    """The flight of a ``tools/call`` (its meta and progress relay), and its traceparent."""
    meta: dict[str, Any] = dict(params.meta) if isinstance(params.meta, Mapping) else {}
    traceparent = meta.get("traceparent") if isinstance(meta.get("traceparent"), str) else None
    # The SDK parses _meta.progressToken as progress_token; the upstream gets its own, and
    # its own protocol envelope (an upstream of the handshake era refuses a request with one).
    rest = {
        k: v
        for k, v in meta.items()
        if k not in ("progress_token", "progressToken") and not k.startswith(_RESERVED)
    }
    flight = _Flight(meta=cast("RequestParamsMeta", rest) if rest else None)
    if meta.get("progress_token") is not None:
        flight.progress = ctx.session.report_progress
    return flight, traceparent


def _key_of(plan_id: str) -> str:
    """The call key inside a plan id ``mcp-<key>-<generation>``."""
    parts = plan_id.split("-")
    return parts[1] if len(parts) == 3 and parts[0] == "mcp" else ""
