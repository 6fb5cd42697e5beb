"""An upstream MCP server written for the tests: it answers, fails, hangs, or crashes."""

import os

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

TOOLS = ["ok", "fail", "hang", "crash"]


async def list_tools(ctx, params):
    return types.ListToolsResult(
        tools=[
            types.Tool(name=n, description=f"{n} on purpose", input_schema={"type": "object"})
            for n in TOOLS
        ]
    )


async def call_tool(ctx, params):
    if params.name == "ok":
        return types.CallToolResult(content=[types.TextContent(type="text", text="fine")])
    if params.name == "fail":
        return types.CallToolResult(
            content=[types.TextContent(type="text", text="kaput")], is_error=True
        )
    if params.name == "hang":
        await anyio.sleep(3600)
    os._exit(3)  # crash


server = Server("flaky", on_list_tools=list_tools, on_call_tool=call_tool)


async def main():
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


anyio.run(main)
