"""One upstream MCP server: its client session, kept alive, restarted after a crash.

Each upstream runs in its own task (``Upstream.run``) so that the transport's context
managers are entered and left in one task, as anyio requires. A call that finds the
connection closed (the server crashed or was stopped) fails with ``ConnectionError`` (the
step is recorded failed, the client gets a tool error) and asks the task to reconnect: the
next call reaches a fresh server. Nothing is retried behind the client's back, because a
tool call may not be idempotent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import httpx2
import mcp_types as types
from anyio.abc import TaskStatus
from mcp import ClientSession
from mcp.client.session import LoggingFnT, MessageHandlerFnT
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from proctor.errors import ConfigError
from proctor.mcp.config import UpstreamConfig

__all__ = ["KeepAliveTransport", "Upstream"]

log = logging.getLogger("proctor.mcp")

_RESTART_BACKOFF = (0.2, 1.0, 5.0, 30.0)
_DRAIN_MAX = 64 * 1024
"""The most body bytes a response closed early is still read for, to keep its connection."""
_DRAIN_WAIT = 0.5
"""The longest a response closed early is still read for (seconds)."""


class KeepAliveTransport(httpx2.AsyncBaseTransport):
    """An HTTP transport whose responses, closed early, keep their connection when they can.

    NOTE(mcp, perf): the SDK's streamable HTTP client closes an SSE response as soon as it
    holds the JSON-RPC answer, before the end of the body has been read; the connection pool
    then cannot reuse the connection, so every ``tools/call`` to an HTTP upstream opened a
    new TCP connection (53 connections for 50 calls to server-everything). A server ends
    that stream right after the answer, so the response to a POST, closed early, is read on
    to its end, at most ``_DRAIN_MAX`` bytes for at most ``_DRAIN_WAIT`` seconds, which
    leaves the connection reusable; past either bound it is closed, as before. The SDK
    reads the body and closes it in a task of its own, after the answer has been handed
    on: the call does not wait.
    """

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send ``request`` through the inner transport; its body drains on an early close."""
        response = await self._inner.handle_async_request(request)
        # Only the answers to POSTs: the GET stream of notifications is long-lived.
        if request.method == "POST" and isinstance(response.stream, httpx2.AsyncByteStream):
            length = response.headers.get("content-length")
            known = int(length) if length is not None and length.isdigit() else None
            response.stream = _DrainOnClose(response.stream, known)
        return response

    async def aclose(self) -> None:
        """Close the inner transport (its connection pool)."""
        await self._inner.aclose()


class _DrainOnClose(httpx2.AsyncByteStream):
    """A response body that, closed before its end, reads on a little first (see above)."""

    def __init__(self, inner: httpx2.AsyncByteStream, length: int | None) -> None:
        self._inner = inner
        self._left = length  # unread bytes of a body of declared length
        self._chunks: Any = None

    async def __aiter__(self) -> Any:
        self._chunks = self._inner.__aiter__()
        async for chunk in self._chunks:
            if self._left is not None:
                self._left -= len(chunk)
            yield chunk

    async def aclose(self) -> None:
        try:
            if self._chunks is not None and (self._left is None or self._left <= _DRAIN_MAX):
                read = 0
                with anyio.move_on_after(_DRAIN_WAIT):
                    try:
                        async for chunk in self._chunks:
                            read += len(chunk)
                            if read > _DRAIN_MAX:
                                break
                    except Exception as exc:  # noqa: BLE001 - the connection is closed below
                        log.debug("reading the rest of a response failed: %s", exc)
        finally:
            await self._inner.aclose()  # returns the connection to the pool, or closes it


class Upstream:
    """A connection to one configured server.

    Args:
        config: The server's entry.
        logging_callback: Receives the server's log messages.
        message_handler: Receives its notifications (list changes).
        on_reconnect: Awaited after a restart (the proxy re-reads the tools).
        connect_timeout: Seconds the first connection (spawn + initialize) may take.
    """

    def __init__(
        self,
        config: UpstreamConfig,
        *,
        logging_callback: LoggingFnT,
        message_handler: MessageHandlerFnT,
        on_reconnect: Callable[[Upstream], Awaitable[None]],
        connect_timeout: float = 30.0,
    ) -> None:
        self.config = config
        self.name = config.name
        self.session: ClientSession | None = None
        self.restarts = 0
        self._logging_callback = logging_callback
        self._message_handler = message_handler
        self._on_reconnect = on_reconnect
        self._connect_timeout = connect_timeout
        self._restart = anyio.Event()
        self._ready = anyio.Event()

    @asynccontextmanager
    async def _open(self) -> Any:
        c = self.config
        async with AsyncExitStack() as stack:
            if c.command is not None:
                params = StdioServerParameters(
                    command=c.command,
                    args=list(c.args),
                    env={**_inherited_env(), **(c.env or {})},
                    cwd=c.cwd,
                )
                transport: Any = stdio_client(params)
            else:
                assert c.url is not None
                client = await stack.enter_async_context(
                    httpx2.AsyncClient(
                        headers=dict(c.headers or {}),
                        timeout=httpx2.Timeout(30.0, read=300.0),
                        transport=KeepAliveTransport(httpx2.AsyncHTTPTransport()),
                    )
                )
                transport = streamable_http_client(c.url, http_client=client)
            streams = await stack.enter_async_context(transport)
            session = await stack.enter_async_context(
                ClientSession(
                    streams[0],
                    streams[1],
                    logging_callback=self._logging_callback,
                    message_handler=self._message_handler,
                )
            )
            with anyio.fail_after(self._connect_timeout):
                await session.initialize()
            yield session

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hold the connection open; reconnect after a crash. Never returns.

        Raises:
            ConfigError: the first connection failed (reported by ``task_group.start``).
        """
        started = False
        failures = 0
        while True:
            try:
                async with self._open() as session:
                    self.session = session
                    failures = 0
                    if not started:
                        started = True
                        task_status.started()
                    else:
                        self.restarts += 1
                        log.warning("upstream %s: reconnected", self.name)
                        await self._on_reconnect(self)
                    self._ready.set()
                    await self._restart.wait()
            except Exception as exc:  # reported, then retried with backoff
                if not started:
                    raise ConfigError(
                        f"MCP server {self.name!r} did not start: {type(exc).__name__}: {exc}",
                        field=f"mcpServers.{self.name}",
                        hint="Check its command/args (or url) and run it by hand to see why.",
                    ) from exc
                log.warning("upstream %s: connection lost: %s", self.name, exc)
            self.session = None
            self._ready = anyio.Event()
            self._restart = anyio.Event()
            await anyio.sleep(_RESTART_BACKOFF[min(failures, len(_RESTART_BACKOFF) - 1)])
            failures += 1

    def lost(self) -> None:
        """Mark the connection dead: the running task reconnects."""
        self._restart.set()

    async def current(self) -> ClientSession:
        """Return the live session, waiting (briefly) for a reconnection.

        Raises:
            ConnectionError: the server is not reachable now.
        """
        session = self.session
        if session is not None and not self._restart.is_set():
            return session
        with anyio.move_on_after(self._connect_timeout):
            await self._ready.wait()
        if self.session is None:
            raise ConnectionError(f"MCP server {self.name!r} is not connected (restarting)")
        return self.session

    async def request(self, fn: Callable[[ClientSession], Awaitable[Any]]) -> Any:
        """Run ``fn(session)``; a closed connection becomes ``ConnectionError`` and a restart.

        Raises:
            ConnectionError: the connection was closed or could not be re-established.
        """
        session = await self.current()
        try:
            return await fn(session)
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:
                self.lost()
                raise ConnectionError(f"MCP server {self.name!r} closed the connection") from exc
            raise
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
            self.lost()
            raise ConnectionError(f"MCP server {self.name!r} closed the connection") from exc

    def capable(self, capability: str) -> bool:
        """Whether the connected server declared ``capability`` (``resources``, ...)."""
        session = self.session
        caps = session.server_capabilities if session is not None else None
        return caps is not None and getattr(caps, capability, None) is not None


def _inherited_env() -> dict[str, str]:
    """The proxy's environment for an upstream it starts, without Proctor's own settings.

    ``PROCTOR_TOKEN`` and ``PROCTOR_USER_TOKEN`` are credentials: an upstream inheriting the
    user's token would let the agent read it through a tool (``printenv``, a file read of
    ``/proc/self/environ``) and confirm its own plans as the user. No ``PROCTOR_*`` variable
    is an upstream's business; one it needs goes in its ``env`` in the server config.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith("PROCTOR_")}
