"""``proctor mcp``: the MCP governance proxy, over stdio (stdout is the protocol) or HTTP."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Annotated

import typer

from proctor.cli.commands import Home, Verbose, _open

__all__ = ["mcp"]


def mcp(
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            help='The upstream servers: {"mcpServers": {name: {command, args, env} | {url}}}.',
        ),
    ],
    agent: Annotated[
        str, typer.Option("--agent", help="The agent identity of the plans.")
    ] = "mcp-agent",
    user: Annotated[str, typer.Option("--user", help="The user the agent acts for.")] = "mcp-user",
    approval_wait: Annotated[
        float, typer.Option("--approval-wait", min=0, help="Seconds a call waits for approval.")
    ] = 0.0,
    namespace: Annotated[
        bool, typer.Option("--namespace", help="Always name tools server.tool.")
    ] = False,
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            metavar="HOST:PORT",
            help="Serve streamable HTTP at http://HOST:PORT/mcp instead of stdio.",
        ),
    ] = None,
    home: Home = None,
    verbose: Verbose = False,
) -> int:
    """Serve MCP on stdio in front of MCP servers: every tool call is governed and audited.

    Point a desktop MCP client at `proctor mcp --config servers.json --home DIR` instead of at
    the servers themselves (docs/mcp.md).
    """
    import anyio
    from mcp.server.stdio import stdio_server

    from proctor.mcp import McpProxy, load_config

    try:
        doc = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {config}: {exc}", param_hint="'--config'") from None
    upstreams = load_config(doc)
    if http is not None:
        host, sep, port = http.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise typer.BadParameter("HOST:PORT, e.g. 127.0.0.1:8765", param_hint="'--http'")
    with _open(home) as p:
        proxy = McpProxy(
            p,
            upstreams,
            agent_id=agent,
            on_behalf_of=user,
            approval_wait=approval_wait,
            namespace=namespace,
        )

        async def main() -> None:
            async with AsyncExitStack() as stack:
                await proxy.connect(stack)
                server = proxy.server()
                if http is None:
                    async with stdio_server() as (read, write):
                        await server.run(read, write, server.create_initialization_options())
                    return
                import uvicorn

                host, _, port = http.rpartition(":")
                app = server.streamable_http_app(host=host)
                config = uvicorn.Config(app, host=host, port=int(port), log_level="warning")
                await uvicorn.Server(config).serve()

        anyio.run(main)
    return 0
