"""The MCP governance proxy (``proctor mcp``).

``proxy`` holds the server clients talk to, ``upstream`` the connections to the governed
servers, ``governance`` how tools become catalog actions and calls become plans,
``remote`` the proxy governed through a ``proctor serve`` (``--server``), ``config`` the
``mcpServers`` file, ``errors`` what a refused call tells the client, ``calls`` what a
``tools/call`` carries through either proxy, ``sdk`` the proxy's glue to the MCP SDK.

The names below are imported on first use: ``proctor.mcp.governance`` needs no MCP SDK
(``proctor serve`` uses it for remote proxies without the ``mcp`` extra), the rest does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proctor.mcp.config import UpstreamConfig, load_config
    from proctor.mcp.proxy import McpProxy
    from proctor.mcp.remote import RemoteMcpProxy

__all__ = ["McpProxy", "RemoteMcpProxy", "UpstreamConfig", "load_config"]

_WHERE = {
    "McpProxy": "proctor.mcp.proxy",
    "RemoteMcpProxy": "proctor.mcp.remote",
    "UpstreamConfig": "proctor.mcp.config",
    "load_config": "proctor.mcp.config",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'proctor.mcp' has no attribute {name!r}")
    return getattr(importlib.import_module(where), name)
