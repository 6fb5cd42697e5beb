"""The MCP governance proxy (``proctor mcp``): see ``proctor.mcp.proxy``."""

from proctor.mcp.proxy import McpProxy, UpstreamConfig, load_config

__all__ = ["McpProxy", "UpstreamConfig", "load_config"]
