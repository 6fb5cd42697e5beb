"""``proctor mcp``: the MCP governance proxy, over stdio (stdout is the protocol) or HTTP.

On stdio nothing but the protocol may reach stdout: errors go to stderr (the CLI's one
error handler does that), and upstream servers' stderr is passed to ours.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Annotated

import typer

from proctor.cli.commands import Home, Verbose, _open
from proctor.errors import ConfigError, MissingDependencyError, ProctorError

__all__ = ["mcp"]


def _address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise typer.BadParameter("HOST:PORT, e.g. 127.0.0.1:8765", param_hint="'--http'")
    return host.strip("[]"), int(port)


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
    user: Annotated[
        str, typer.Option("--user", help="The user the agent acts for (who confirms).")
    ] = "mcp-user",
    approval_wait: Annotated[
        float,
        typer.Option(
            "--approval-wait", min=0, help="Seconds a call waits for an approval before answering."
        ),
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
    """Serve MCP in front of MCP servers: every tool call is governed and audited.

    Point a desktop MCP client at `proctor mcp --config servers.json --home DIR` instead of at
    the servers themselves, or an agent framework at `--http 127.0.0.1:PORT` (docs/mcp.md).
    """
    try:
        import anyio

        from proctor.mcp import McpProxy, load_config
        from proctor.mcp.stdio import serve_stdio
    except ImportError as exc:  # pragma: no cover - the extra is part of the test install
        raise MissingDependencyError(
            f"proctor mcp needs the MCP SDK: {exc}", hint="pip install 'proctor[mcp]'"
        ) from exc

    try:
        doc = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {config}: {exc}", param_hint="'--config'") from None
    upstreams = load_config(doc)
    address = _address(http) if http is not None else None
    with _open(home) as p:
        proxy = McpProxy(
            p,
            upstreams,
            agent_id=agent,
            on_behalf_of=user,
            approval_wait=approval_wait,
            namespace=namespace,
            console_url=_console_url(home),
        )

        async def main() -> None:
            async with AsyncExitStack() as stack:
                await proxy.connect(stack)
                server = proxy.server()
                if address is None:
                    async with serve_stdio() as (read, write):
                        await server.run(read, write, server.create_initialization_options())
                    return
                import uvicorn

                host, port = address
                app = server.streamable_http_app(host=host)
                settings = uvicorn.Config(app, host=host, port=port, log_level="warning")
                await uvicorn.Server(settings).serve()

        try:
            anyio.run(main)
        except BaseExceptionGroup as group:
            # Task groups wrap what their tasks raise; a lone ProctorError (an upstream that
            # did not start) is reported like any other.
            found = [e for e in _leaves(group) if isinstance(e, ProctorError)]
            if found:
                raise found[0] from None
            raise
    return 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return out


def _console_url(home: Path | None) -> str | None:
    from proctor.config import home_from, load

    try:
        return load(home_from(home)).console_url
    except ConfigError:
        return None
