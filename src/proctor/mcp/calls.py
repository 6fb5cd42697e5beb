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
from mcp_types import CLIENT_INFO_META_KEY, RequestParamsMeta


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
