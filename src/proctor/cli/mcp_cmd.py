"""``proctor mcp``: the MCP governance proxy, over stdio (stdout is the protocol) or HTTP.

On stdio nothing but the protocol may reach stdout: errors go to stderr (the CLI's one
error handler does that), and upstream servers' stderr is passed to ours.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from proctor.cli.commands import Home, Server, Token, Verbose, _given, _open, _remote
from proctor.core.approvals import person_key
from proctor.errors import ConfigError, MissingDependencyError, ProctorError

if TYPE_CHECKING:
    from proctor.mcp.proxy import McpProxy

__all__ = ["mcp"]


def _address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise typer.BadParameter("HOST:PORT, e.g. 127.0.0.1:8765", param_hint="'--http'")
    return host.strip("[]"), int(port)


def mcp(
    ctx: typer.Context,
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
        str,
        typer.Option(
            "--user",
            help="The user the agent acts for (who confirms): a person other than --agent.",
        ),
    ] = "mcp-user",
    user_token: Annotated[
        str | None,
        typer.Option(
            "--user-token",
            envvar="PROCTOR_USER_TOKEN",
            help="With --server: the API token of --user (the user role), with which the "
            "answers given in the client's confirmation form are sent. Without it the proxy "
            "does not ask in the client: the call answers 'needs confirmation' and the user "
            "confirms in the console or with `proctor confirm`.",
            show_default=False,
        ),
    ] = None,
    approval_wait: Annotated[
        float,
        typer.Option(
            "--approval-wait", min=0, help="Seconds a call waits for an approval before answering."
        ),
    ] = 0.0,
    namespace: Annotated[
        bool, typer.Option("--namespace", help="Always name tools server.tool.")
    ] = False,
    passthrough_timeout: Annotated[
        float,
        typer.Option(
            "--passthrough-timeout",
            min=0.1,
            help="Seconds any request to a server other than a tool call (lists, reads, "
            "prompts, completions, subscriptions) may take; a merged list leaves out a "
            "server that takes longer, and a server's tools stay as listed before when "
            "re-reading them takes longer.",
        ),
    ] = 5.0,
    confirm_in_client: Annotated[
        bool,
        typer.Option(
            "--confirm-in-client/--no-confirm-in-client",
            help="Ask the user to confirm in the MCP client (elicitation), when it can. "
            "--no-confirm-in-client: the call answers 'needs confirmation' and the user "
            "confirms in the console or with `proctor confirm`; use it for clients that "
            "may answer elicitation in code (an agent framework) rather than ask a person.",
        ),
    ] = True,
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            metavar="HOST:PORT",
            help="Serve streamable HTTP at http://HOST:PORT/mcp instead of stdio.",
        ),
    ] = None,
    json_response: Annotated[
        bool,
        typer.Option(
            "--json-response",
            help="With --http: answer each request with one JSON body instead of an SSE "
            "stream. Faster (no stream per call), but a call's progress notifications are "
            "dropped; elicitation still reaches clients that keep the GET stream open.",
        ),
    ] = False,
    home: Home = None,
    server: Server = None,
    token: Token = None,
    verbose: Verbose = False,
) -> int:
    """Serve MCP in front of MCP servers: every tool call is governed and audited.

    Point a desktop MCP client at `proctor mcp --config servers.json --home DIR` instead of at
    the servers themselves, or an agent framework at `--http 127.0.0.1:PORT` (docs/mcp.md).
    With `--server URL --token T` the plans, approvals and audit log are those of a running
    `proctor serve` (the token's agent is `--agent`); calls fail closed while it is down.
    `--user-token U` (the user's own token) lets the user confirm in the client.
    """
    try:
        from proctor.mcp import McpProxy, load_config
    except ImportError as exc:  # pragma: no cover - the extra is part of the test install
        raise MissingDependencyError(
            f"proctor mcp needs the MCP SDK: {exc}", hint="pip install 'proctor[mcp]'"
        ) from exc

    try:
        doc = json.loads(config.read_text())
    except (OSError, ValueError) as exc:  # ValueError: bad JSON, bad UTF-8, a 5,000-digit int
        raise typer.BadParameter(f"cannot read {config}: {exc}", param_hint="'--config'") from None
    upstreams = load_config(doc)
    address = _address(http) if http is not None else None
    if json_response and address is None:
        raise typer.BadParameter("needs --http", param_hint="'--json-response'")
    if person_key(agent) == person_key(user):
        # A plan's agent never confirms it (proctor.core.approvals.check_not_requester): with
        # --user the agent's own name, a call that needs confirmation could never run.
        raise typer.BadParameter(
            f"{user!r} is also --agent: a plan's agent cannot confirm it, so the user must be"
            " a person other than the agent",
            param_hint="'--user'",
        )
    remote = _remote(ctx, server, token)
    if remote is None and user_token and _given(ctx, "user_token"):
        raise typer.BadParameter("needs --server (or PROCTOR_SERVER)", param_hint="'--user-token'")
    if remote is not None:
        from proctor.mcp import RemoteMcpProxy

        url, secret = remote.url, remote.token
        remote.close()
        _serve(
            RemoteMcpProxy(
                url,
                secret,
                upstreams,
                agent_id=agent,
                on_behalf_of=user,
                user_token=user_token or None,
                approval_wait=approval_wait,
                namespace=namespace,
                passthrough_timeout=passthrough_timeout,
                confirm_in_client=confirm_in_client,
            ),
            address,
            json_response=json_response,
        )
        return 0
    with _open(home) as p:
        _serve(
            McpProxy(
                p,
                upstreams,
                agent_id=agent,
                on_behalf_of=user,
                approval_wait=approval_wait,
                namespace=namespace,
                console_url=_console_url(home),
                passthrough_timeout=passthrough_timeout,
                confirm_in_client=confirm_in_client,
            ),
            address,
            json_response=json_response,
        )
    return 0


def _serve(
    proxy: McpProxy, address: tuple[str, int] | None, *, json_response: bool = False
) -> None:
    """Run ``proxy`` over stdio, or streamable HTTP at ``address``, until it is stopped."""
    import anyio

    from proctor.mcp.stdio import serve_stdio

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
            # NOTE(mcp): an SSE stream per request costs the SDK's server about 3 ms a call
            # (bench/mcp.py); JSON bodies do not, but the SDK then drops what concerns a
            # request in flight (progress), so they are opt-in.
            app = server.streamable_http_app(host=host, json_response=json_response)
            settings = uvicorn.Config(app, host=host, port=port, log_level="warning")
            await uvicorn.Server(settings).serve()

    try:
        anyio.run(main, backend_options=_loop_options())
    except BaseExceptionGroup as group:
        # Task groups wrap what their tasks raise; a lone ProctorError (an upstream that
        # did not start) is reported like any other.
        found = [e for e in _leaves(group) if isinstance(e, ProctorError)]
        if found:
            raise found[0] from None
        raise


def _loop_options() -> dict[str, bool]:
    """Return anyio's loop options: uvloop when it is installed (the ``server`` extra).

    NOTE(perf): as uvicorn does for ``proctor serve``. Every message crosses the event loop
    twice in the proxy (client side and upstream side); the C loop took 0-0.8 ms off a call
    at p50 over stdio in interleaved runs here (docs/mcp.md, "Tests and figures").
    """
    try:
        import uvloop  # noqa: F401 - only whether it is there
    except ImportError:
        return {}
    return {"use_uvloop": True}


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
