"""Handlers that are tools of an upstream MCP server, called through the proxy's session.

The gateway is synchronous and runs a step's handler in whatever thread executes the plan
(the MCP proxy submits plans from its own threads); the MCP client sessions live in the
proxy's event loop. ``McpTools.run`` therefore hops back into that loop
(``asyncio.run_coroutine_threadsafe``, or anyio's portal under another backend) from any
thread and blocks until the upstream answered.

What the executor records in the audit log is a JSON document of the ``CallToolResult``,
with the configured pointers masked; the upstream's exact result object is kept aside
(``take_result``) so the client receives it unchanged: the log's copy has floats turned to
strings and big results replaced by their hash, which a client must never see.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio.from_thread
import anyio.lowlevel
import mcp_types as types
import orjson

from proctor.core.masking import MASK, mask
from proctor.core.ports import ToolCall, Tools

__all__ = ["McpTools", "UpstreamCall", "UpstreamToolError"]

UpstreamCall = Callable[
    [str, str, dict[str, Any], ToolCall], Coroutine[Any, Any, types.CallToolResult]
]
"""``(server, tool, arguments, call) -> result``: performs the call in the event loop."""

_R = TypeVar("_R")

# Results the handler kept for the waiting tools/call handler; bounded because a call whose
# client went away never takes its result.
_KEEP = 1024


class UpstreamToolError(RuntimeError):
    """The upstream tool answered with ``isError``: the step failed, with the tool's text."""


@dataclass(frozen=True, slots=True)
class _Target:
    server: str
    tool: str
    mask_result: tuple[str, ...]


def text_of(result: types.CallToolResult) -> str:
    """Return the text content of a result, joined (for error messages)."""
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def error_message(result: types.CallToolResult, pointers: Sequence[str]) -> str:
    """Return the step error of a result with ``isError``, its text masked like the result.

    The text goes into the audit log (``step.failed``), so ``maskResult`` applies to it as
    to a successful result: the text items the pointers mask (all of them for ``/content``)
    are written ``"***"``.
    """
    if not pointers:
        return f"the upstream tool failed: {text_of(result)[:400]}"
    doc = mask(result.model_dump(mode="json", by_alias=True, exclude_none=True), pointers)
    content = doc.get("content")
    texts = []
    if isinstance(content, list):
        for item in content:
            if isinstance(item, dict) and item.get("type") == "text":
                text = item.get("text")
                texts.append(text if isinstance(text, str) else MASK)
            elif item == MASK:
                texts.append(MASK)
    else:
        texts.append(MASK)
    return f"the upstream tool failed: {' '.join(texts)[:400]}"


def audit_document(
    result: types.CallToolResult,
    pointers: Sequence[str],
    *,
    keyed: Callable[[Mapping[str, Any]], str] | None = None,
) -> dict[str, Any]:
    """Return the JSON form of ``result`` the audit log keeps, masked by ``pointers``.

    When something is masked and ``keyed`` (the instance's keyed hash,
    ``Gateway.keyed_hash``) is given, ``unmasked_hmac_sha256`` keeps the keyed hash of the
    whole document, so the instance can prove the original is the one the tool returned. A
    plain hash would let anyone holding the log test guesses of a short masked value (a
    balance, a yes or no); without the key (a remote proxy), no hash is kept.
    """
    doc: dict[str, Any] = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    if not pointers:
        return doc
    masked = mask(doc, pointers)
    if keyed is not None:
        masked["unmasked_hmac_sha256"] = keyed({"result": doc})
    return masked


def _wait(future: concurrent.futures.Future[_R], loop: asyncio.AbstractEventLoop) -> _R:
    """Wait for ``future``; give up if the loop that should complete it is gone.

    A thread blocked for ever would also block the interpreter's exit (executor threads
    are joined then).
    """
    while True:
        try:
            return future.result(timeout=1.0)
        except concurrent.futures.TimeoutError:
            # The coroutine's own TimeoutError (a hung upstream) arrives with the future
            # done; only a wait that ran out lands here with the future pending.
            if future.done():
                raise
            if loop.is_closed():
                future.cancel()
                raise RuntimeError("the MCP proxy stopped during the call") from None


class McpTools:
    """A ``Tools`` adapter: bound handler paths call upstream MCP tools, others fall back.

    Args:
        fallback: The tools for every other handler (the instance's Python tools).
        caller: Performs one upstream call inside the event loop.
    """

    def __init__(
        self,
        fallback: Tools,
        caller: UpstreamCall,
        *,
        keyed: Callable[[Mapping[str, Any]], str] | None = None,
    ) -> None:
        self.fallback = fallback
        self._caller = caller
        self._keyed = keyed  # the instance's keyed hash, for masked results (audit_document)
        self._targets: dict[str, _Target] = {}
        self._results: OrderedDict[str, types.CallToolResult] = OrderedDict()
        self._lock = threading.Lock()
        self._token: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Remember the running event loop; call it from the loop before any step runs."""
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # another anyio backend (trio): its portal works as well
            self._loop = None
        self._token = anyio.lowlevel.current_token()

    def bind(self, path: str, server: str, tool: str, *, mask_result: Sequence[str] = ()) -> None:
        """Make handler ``path`` call ``tool`` of ``server``."""
        with self._lock:
            self._targets[path] = _Target(server, tool, tuple(mask_result))

    def bound(self, path: str) -> bool:
        """Whether ``path`` is an upstream tool of this adapter."""
        return path in self._targets

    def run(self, path: str, params: Mapping[str, Any], call: ToolCall) -> Any:
        """Call the handler at ``path``: an upstream tool when bound, else the fallback.

        Raises:
            UpstreamToolError: the tool answered ``isError`` (its result is still kept).
            RuntimeError: no event loop was started.
        """
        target = self._targets.get(path)
        if target is None:
            return self.fallback.run(path, params, call)
        if self._token is None:
            raise RuntimeError("the MCP proxy's event loop is not running")
        # A deep copy (JSON round trip), as for Python handlers: the recorded params stay
        # exactly what was approved whatever the session layer does with its argument.
        arguments = orjson.loads(orjson.dumps(dict(params)))
        coro = self._caller(target.server, target.tool, arguments, call)
        result: types.CallToolResult
        if self._loop is not None:
            result = _wait(asyncio.run_coroutine_threadsafe(coro, self._loop), self._loop)
        else:
            result = anyio.from_thread.run(lambda: coro, token=self._token)
        with self._lock:
            self._results[call.idempotency_key] = result
            while len(self._results) > _KEEP:
                self._results.popitem(last=False)
        if result.is_error:
            raise UpstreamToolError(error_message(result, target.mask_result))
        return audit_document(result, target.mask_result, keyed=self._keyed)

    def take_result(self, key: str) -> types.CallToolResult | None:
        """Return (and forget) the upstream's own result of step ``key`` (``plan:step``)."""
        with self._lock:
            return self._results.pop(key, None)
