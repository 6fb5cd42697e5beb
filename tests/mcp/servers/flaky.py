"""An upstream MCP server written for the tests: it answers, fails, hangs, crashes or lies.

- ``ok``: answers "fine"; ``numbers``: structured content with floats;
- ``fail``: a tool error ("kaput");
- ``hang``: never answers; ``crash``: the process exits mid-call;
- ``garbage``: writes a line that is not JSON to stdout, then answers "fine";
- ``malformed``: answers its request with a result that is not a CallToolResult, then hangs;
- ``grow``: adds the tool ``extra`` and says so (``notifications/tools/list_changed``);
- the tools named in ``$FLAKY_EXTRA`` (comma-separated): ``slow`` sleeps ``n`` tenths of a
  second, reporting progress each tenth, then answers "slow done" with floats as structured
  content (``{"ratio": 0.25, "big": 1.5e300, "tenths": n}``); any other answers
  "<tool> on <$FLAKY_NAME>" with the request's ``_meta`` keys as structured content.

It lists its tools three per page. With ``$FLAKY_RELIST_HANGS`` set, every ``tools/list``
after ``grow`` never answers (an upstream that announces a change, then hangs); with
``$FLAKY_LIST_HANGS`` set, none does.
"""

import json
import os

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "additionalProperties": False}
TOOLS = ["ok", "numbers", "fail", "hang", "crash", "garbage", "malformed", "grow"]
EXTRA = [n for n in os.environ.get("FLAKY_EXTRA", "").split(",") if n]
TOOLS += EXTRA


async def list_tools(ctx, params):
    if os.environ.get("FLAKY_LIST_HANGS") or (
        os.environ.get("FLAKY_RELIST_HANGS") and "extra" in TOOLS
    ):
        await anyio.sleep(3600)
    # Pages of three tools: the proxy must follow the cursor.
    start = int(params.cursor) if params is not None and params.cursor else 0
    page = TOOLS[start : start + 3]
    more = str(start + 3) if start + 3 < len(TOOLS) else None
    return types.ListToolsResult(
        tools=[
            types.Tool(name=n, description=f"{n} on purpose", input_schema=SCHEMA) for n in page
        ],
        next_cursor=more,
    )


def text(t):
    return types.CallToolResult(content=[types.TextContent(type="text", text=t)])


async def call_tool(ctx, params):
    name = params.name
    if name == "ok":
        return text(f"fine {os.getpid()}")
    if name == "slow" and name in EXTRA:
        tenths = int((params.arguments or {}).get("n", 10))
        for i in range(tenths):
            await ctx.session.report_progress(i + 1, tenths, f"tenth {i + 1}")
            await anyio.sleep(0.1)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text="slow done")],
            structured_content={"ratio": 0.25, "big": 1.5e300, "tenths": tenths},
        )
    if name in EXTRA:
        return types.CallToolResult(
            content=[
                types.TextContent(
                    type="text", text=f"{name} on {os.environ.get('FLAKY_NAME', 'flaky')}"
                )
            ],
            structured_content={"meta": sorted(params.meta or {})},
        )
    if name == "numbers":
        return types.CallToolResult(
            content=[types.TextContent(type="text", text="numbers")],
            structured_content={"ratio": 0.25, "big": 1.5e300, "n": 3},
        )
    if name == "fail":
        return types.CallToolResult(
            content=[types.TextContent(type="text", text="kaput")], is_error=True
        )
    if name == "hang":
        await anyio.sleep(3600)
    if name == "grow":
        if "extra" not in TOOLS:
            TOOLS.append("extra")
        await ctx.session.send_tool_list_changed()
        return text("grown")
    if name == "extra":
        return text("extra")
    if name == "garbage":
        os.write(1, b"this line is not JSON-RPC\n")
        return text("fine after garbage")
    if name == "malformed":
        bad = {"jsonrpc": "2.0", "id": ctx.request_id, "result": {"content": "not a list"}}
        os.write(1, (json.dumps(bad) + "\n").encode())
        await anyio.sleep(3600)
    os._exit(3)  # crash


server = Server("flaky", on_list_tools=list_tools, on_call_tool=call_tool)


async def main():
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


anyio.run(main)
