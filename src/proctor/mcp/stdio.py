"""Serve MCP on this process's stdin and stdout through asyncio pipes.

The SDK's ``stdio_server`` reads and writes through ``anyio.wrap_file``: every line read,
every write and every flush is a round trip to a worker thread (three per ``tools/call``),
which costs the proxy 0.1-0.2 ms each at p50 and milliseconds at p99 on a busy machine.
Here the same protocol streams are fed from asyncio's non-blocking pipe transports, and the
SDK still parses and serialises every message (its ``stdio_server`` with explicit streams).
No package on PyPI offers this for the MCP SDK; it is a small adapter, so it lives here.

As the SDK does, fd 0 and 1 are taken away from the rest of the process while serving (fd
0 reads the null device, fd 1 writes to stderr): a stray ``print`` in a handler or a child
process cannot corrupt the protocol. Where stdin or stdout is not a pipe or socket (a
regular file, a terminal on some systems), the SDK's own transport is used.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from mcp.server.stdio import stdio_server

__all__ = ["serve_stdio"]

# One JSON-RPC message per line; a tool result can be big (a file's contents).
_LINE_LIMIT = 256 * 1024 * 1024


class _Lines:
    """The async line iterator the SDK reads (as from ``anyio.AsyncFile``)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        line = await self._reader.readline()
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")


class _Text:
    """The async text writer the SDK writes to (as to ``anyio.AsyncFile``)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, text: str) -> int:
        data = text.encode("utf-8")
        self._writer.write(data)
        return len(data)

    async def flush(self) -> None:
        await self._writer.drain()


@asynccontextmanager
async def serve_stdio() -> AsyncIterator[tuple[Any, Any]]:
    """Yield the SDK's (read, write) streams over fd 0 and 1, through asyncio pipes."""
    loop = asyncio.get_running_loop()
    if sys.platform == "win32":  # pragma: no cover - asyncio pipes on fds are POSIX
        async with stdio_server() as streams:
            yield streams
        return
    wire_in, wire_out = os.dup(0), os.dup(1)
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
    try:
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(wire_in, "rb", buffering=0)
        )
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(wire_out, "wb", buffering=0)
        )
    except (OSError, ValueError):  # not a pipe, socket or character device
        async with stdio_server() as streams:
            yield streams
        return
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    saved_in, saved_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    try:
        # The SDK's transport with explicit streams: its framing, parsing and errors.
        async with stdio_server(
            stdin=cast("Any", _Lines(reader)), stdout=cast("Any", _Text(writer))
        ) as streams:
            yield streams
    finally:
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        os.close(saved_in)
        os.close(saved_out)
        transport.close()
