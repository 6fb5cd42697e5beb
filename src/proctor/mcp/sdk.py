"""The MCP proxy's glue to the MCP SDK and the event loop it runs in.

The SDK's server advertising list-changed notifications (``_Server``), calls to methods the
SDK deprecates for protocol 2026-07-28 without their warning (``_legacy``), paginated list
requests to an upstream (``_all_pages``), and the ``McpTools`` that refuses to wait for the
event loop from the loop's own thread (``_LoopTools``). Kept apart from ``proctor.mcp.proxy``,
which holds the proxy's own logic: these adapt the libraries it stands on.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import mcp_types as types
from mcp import ClientSession
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.shared.exceptions import MCPDeprecationWarning

from proctor.core.ports import ToolCall
from proctor.mcp.upstream import Upstream
from proctor.tools.mcp import McpTools

_T = TypeVar("_T")
_MAX_PAGES = 1000  # a server that never stops paginating must not hold a request for ever


class _LoopTools(McpTools):
    """``McpTools`` that fails a call made from the event loop's thread instead of hanging.

    Governance runs in the loop only for calls ``McpProxy._drive`` makes itself; a handler
    that waited there for the loop would wait for ever.
    """

    _loop_thread: int | None = None

    def start(self) -> None:
        """Remember the running event loop and its thread."""
        super().start()
        self._loop_thread = threading.get_ident()

    def run(self, path: str, params: Mapping[str, Any], call: ToolCall) -> Any:
        """Call the handler at ``path`` (see ``McpTools.run``).

        Raises:
            RuntimeError: an upstream call from the event loop's own thread.
        """
        if self._loop_thread == threading.get_ident() and self.bound(path):
            raise RuntimeError("an MCP step cannot wait for the event loop in its own thread")
        return super().run(path, params, call)


async def _list_page(
    session: ClientSession, *, method: str, page: types.PaginatedRequestParams | None
) -> Any:
    return await getattr(session, method)(params=page)


async def _all_pages(up: Upstream, method: str, attr: str) -> list[Any]:
    """Every item of a paginated list request to ``up`` (at most ``_MAX_PAGES`` pages)."""
    items: list[Any] = []
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        page = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        result = await up.request(functools.partial(_list_page, method=method, page=page))
        items += getattr(result, attr)
        cursor = result.next_cursor
        if not cursor:
            break
    return items


def _legacy(fn: Callable[..., _T], *args: Any) -> _T:
    """Call an SDK method deprecated for protocol 2026-07-28, without its warning.

    NOTE(mcp): the SDK deprecates logging and resources/subscribe for 2026-07-28; clients
    and servers on 2025-11-25 (today's desktop clients, the npm servers) still use them, and
    a transparent proxy passes them on. The SDK warns when the method is called (its
    coroutine is awaited afterwards), so the filter is scoped to the call, never an await.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        return fn(*args)


class _Server(Server[Any]):
    """The SDK's server, advertising the list-changed notifications the upstreams pass on.

    Args:
        list_changes: The list-changed notifications to advertise (default: all).
    """

    def __init__(
        self, *args: Any, list_changes: NotificationOptions | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.list_changes = list_changes

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        """Return the options with ``list_changes`` unless told otherwise."""
        changes = (
            notification_options
            or self.list_changes
            or NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)
        )
        return super().create_initialization_options(changes, experimental_capabilities, extensions)
