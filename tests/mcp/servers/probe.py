"""An upstream MCP server that records what reaches it: resources, prompts, completions, logs.

Its name is ``$PROBE_NAME``; every request it gets is a JSON line in ``$PROBE_LOG``
(``{"server", "event", ...}``). It lists the resources ``probe://<name>/r0`` to ``r4`` (two
per page), the template ``probe://<name>/t/{id}`` and the prompt ``args-prompt``; it takes
subscriptions (and sends an update for ``probe://<name>/r1`` right after one).

Tools: ``log`` sends a warning log message; ``touch`` sends a resource-updated notification
for its ``uri``.

``$PROBE_HANG`` (comma-separated) makes it misbehave: ``list`` never answers its resource,
template and prompt lists; ``get`` never answers prompts/get; ``crash`` exits on
resources/read.
"""

import json
import os
import warnings

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

warnings.simplefilter("ignore", MCPDeprecationWarning)  # logging, subscriptions: 2025-11-25

NAME = os.environ.get("PROBE_NAME", "probe")
LOG = os.environ["PROBE_LOG"]
HANG = set(os.environ.get("PROBE_HANG", "").split(","))
RESOURCES = [f"probe://{NAME}/r{i}" for i in range(5)]


def record(**fields):
    with open(LOG, "a") as f:
        f.write(json.dumps({"server": NAME, **fields}, default=str) + "\n")


def text(t):
    return types.CallToolResult(content=[types.TextContent(type="text", text=t)])


async def list_tools(ctx, params):
    return types.ListToolsResult(
        tools=[types.Tool(name=n, input_schema={"type": "object"}) for n in ("log", "touch")]
    )


async def call_tool(ctx, params):
    if params.name == "log":
        await ctx.session.send_log_message("warning", {"from": NAME}, logger="probe")
        return text("logged")
    await ctx.session.send_resource_updated((params.arguments or {})["uri"])
    return text("touched")


async def hang_if(what):
    if what in HANG:
        await anyio.sleep(3600)


async def list_resources(ctx, params):
    await hang_if("list")
    start = int(params.cursor) if params is not None and params.cursor else 0
    more = str(start + 2) if start + 2 < len(RESOURCES) else None
    page = [types.Resource(uri=u, name=u.rsplit("/", 1)[1]) for u in RESOURCES[start : start + 2]]
    return types.ListResourcesResult(resources=page, next_cursor=more)


async def list_templates(ctx, params):
    await hang_if("list")
    template = types.ResourceTemplate(uri_template=f"probe://{NAME}/t/{{id}}", name="t")
    return types.ListResourceTemplatesResult(resource_templates=[template])


async def read_resource(ctx, params):
    record(event="read", uri=params.uri)
    if "crash" in HANG:
        os._exit(7)
    if params.uri not in RESOURCES and not params.uri.startswith(f"probe://{NAME}/t/"):
        raise MCPError(-32002, f"not found: {params.uri}")
    content = types.TextResourceContents(uri=params.uri, text=f"{params.uri} from {NAME}")
    return types.ReadResourceResult(contents=[content])


async def subscribe(ctx, params):
    record(event="subscribe", uri=params.uri)

    async def later():
        await anyio.sleep(0.2)
        await ctx.session.send_resource_updated(params.uri)

    import asyncio

    asyncio.get_running_loop().create_task(later())
    return types.EmptyResult()


async def unsubscribe(ctx, params):
    record(event="unsubscribe", uri=params.uri)
    return types.EmptyResult()


async def list_prompts(ctx, params):
    await hang_if("list")
    argument = types.PromptArgument(name="x", required=False)
    return types.ListPromptsResult(prompts=[types.Prompt(name="args-prompt", arguments=[argument])])


async def get_prompt(ctx, params):
    record(event="get_prompt", name=params.name)
    await hang_if("get")
    content = types.TextContent(type="text", text=f"prompt from {NAME}")
    return types.GetPromptResult(messages=[types.PromptMessage(role="user", content=content)])


async def complete(ctx, params):
    record(event="complete", ref=params.ref.model_dump(exclude_none=True))
    return types.CompleteResult(completion=types.Completion(values=[f"{NAME}-value"]))


async def set_level(ctx, params):
    record(event="setLevel", level=params.level)
    return types.EmptyResult()


server = Server(
    NAME,
    on_list_tools=list_tools,
    on_call_tool=call_tool,
    on_list_resources=list_resources,
    on_list_resource_templates=list_templates,
    on_read_resource=read_resource,
    on_subscribe_resource=subscribe,
    on_unsubscribe_resource=unsubscribe,
    on_list_prompts=list_prompts,
    on_get_prompt=get_prompt,
    on_completion=complete,
    on_set_logging_level=set_level,
)


async def main():
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


anyio.run(main)
