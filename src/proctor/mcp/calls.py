"""What a ``tools/call`` carries on its way through a proxy, local or remote.

The flight (progress relay, ``_meta``, cancellation) a call lends to its upstream call, the
client's name, and the call key inside an MCP plan id. ``McpProxy`` (``proctor.mcp.proxy``)
and ``RemoteMcpProxy`` (``proctor.mcp.remote``) both use them: kept here, apart from
either proxy, the remote one need not reach into the local one's module for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
import mcp_types as types
from mcp.shared.dispatcher import ProgressFnT
from mcp_types import RequestParamsMeta


@dataclass(slots=True)
class _Flight:
    """What a ``tools/call`` in progress lends to its upstream call: progress, cancel, meta."""

    progress: ProgressFnT | None = None
    meta: RequestParamsMeta | None = None
    cancelled: bool = False
    scopes: set[anyio.CancelScope] = field(default_factory=set)

    def cancel(self) -> None:
        self.cancelled = True
        for scope in list(self.scopes):
            scope.cancel()


def _client_name(ctx: Any) -> str:
    """``name version`` of the MCP client on the request's session."""
    info = ctx.session.client_params.client_info if ctx.session.client_params else None
    return f"{info.name} {info.version}" if info else "mcp-client"


def _flight_of(ctx: Any, params: types.CallToolRequestParams) -> tuple[_Flight, str | None]:
    """The flight of a ``tools/call`` (its meta and progress relay), and its traceparent."""
    meta: dict[str, Any] = dict(params.meta) if isinstance(params.meta, Mapping) else {}
    traceparent = meta.get("traceparent") if isinstance(meta.get("traceparent"), str) else None
    # The SDK parses _meta.progressToken as progress_token; the upstream gets its own.
    rest = {k: v for k, v in meta.items() if k not in ("progress_token", "progressToken")}
    flight = _Flight(meta=cast("RequestParamsMeta", rest) if rest else None)
    if meta.get("progress_token") is not None:
        flight.progress = ctx.session.report_progress
    return flight, traceparent


def _key_of(plan_id: str) -> str:
    """The call key inside a plan id ``mcp-<key>-<generation>``."""
    parts = plan_id.split("-")
    return parts[1] if len(parts) == 3 and parts[0] == "mcp" else ""
