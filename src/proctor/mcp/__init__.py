"""The MCP governance proxy (``proctor mcp``).

``proxy`` holds the server clients talk to, ``upstream`` the connections to the governed
servers, ``governance`` how tools become catalog actions and calls become plans,
``config`` the ``mcpServers`` file, ``errors`` what a refused call tells the client.
"""

from proctor.mcp.config import UpstreamConfig, load_config
from proctor.mcp.proxy import McpProxy

__all__ = ["McpProxy", "UpstreamConfig", "load_config"]
