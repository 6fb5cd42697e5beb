"""What the MCP proxy passes through unchanged: everything but tools, and who gets it.

Resources (list, templates, read, subscribe, unsubscribe), prompts (list, get), completions,
logging (level and messages) and resource-updated notifications, for the client sessions
the proxy serves (one over stdio, any number over HTTP).

- **Capabilities**: the proxy offers what at least one connected upstream declared
  (``resources.subscribe`` only when one declares it); a request for anything else is
  "method not found", as the upstream would have answered.
- **Routing**: every resource URI, resource template and prompt an upstream lists is
  remembered with its upstream. ``resources/read``, ``subscribe`` and ``completion/complete``
  go to the URI's (or template's, or prompt's) upstream only; a URI no list named is matched
  against the listed templates (RFC 6570), the lists are read again, and only then is a read
  tried at each upstream in turn. Two upstreams' prompts of one name are listed as
  ``server.prompt``, as tools are.
- **Time**: every request to an upstream is bounded (``timeout``). Merged lists ask the
  upstreams concurrently; one that fails or does not answer in time is left out of the
  answer (logged once, until it answers again). A single upstream that fails, is gone or
  does not answer in time is a JSON-RPC error ``-32603`` naming it.
- **Sessions**: a client gets the resource-updated notifications of its own subscriptions
  only; the upstream is unsubscribed when no session still subscribes. Log messages carry no
  trace of the request that caused them (the SDK's client hands them over without one, and
  stdio has none), so each session gets the upstreams' messages at or above its own
  ``logging/setLevel`` level (all of them before it set one); the upstreams are set to the
  most verbose level any session asked for.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import mcp_types as types
from anyio.abc import TaskGroup
from mcp.server.lowlevel import NotificationOptions
from mcp.shared.exceptions import MCPError
from mcp.shared.uri_template import InvalidUriTemplate, UriTemplate

from proctor.mcp.sdk import _all_pages, _legacy
from proctor.mcp.upstream import Upstream

__all__ = ["PassThrough"]

log = logging.getLogger("proctor.mcp")
_T = TypeVar("_T")
_LEVELS: tuple[types.LoggingLevel, ...] = (
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
)
# A kind of list -> (the client's method, the request, the capability, the result type).
_KINDS: dict[str, tuple[str, str, str, type[Any]]] = {
    "resources": ("list_resources", "resources/list", "resources", types.ListResourcesResult),
    "resource_templates": (
        "list_resource_templates",
        "resources/templates/list",
        "resources",
        types.ListResourceTemplatesResult,
    ),
    "prompts": ("list_prompts", "prompts/list", "prompts", types.ListPromptsResult),
}


@dataclass
class _Subscription:
    """One resource URI subscribed at an upstream, for the sessions that asked."""

    server: str
    clients: set[int] = field(default_factory=set)


def _subscribes(up: Upstream) -> bool:
    caps = up.session.server_capabilities if up.session is not None else None
    return caps is not None and caps.resources is not None and bool(caps.resources.subscribe)


def _lists_changes(up: Upstream, capability: str) -> bool:
    caps = up.session.server_capabilities if up.session is not None else None
    found = getattr(caps, capability, None) if caps is not None else None
    return bool(getattr(found, "list_changed", False))


class PassThrough:
    """The proxy's handlers for everything but tools, and the client sessions it serves.

    Args:
        upstreams: The proxy's upstreams by name (the proxy's own dict: it fills it).
        timeout: Seconds any request to an upstream may take.
        max_clients: The most client sessions remembered (the oldest is forgotten).
    """

    def __init__(
        self, upstreams: dict[str, Upstream], *, timeout: float, max_clients: int = 1000
    ) -> None:
        self.upstreams = upstreams
        self.timeout = timeout
        self.max_clients = max_clients
        self.clients: OrderedDict[int, Any] = OrderedDict()  # connection -> a session on it
        self.tasks: TaskGroup | None = None  # for the unsubscribes of sessions gone
        self._levels: dict[int, types.LoggingLevel] = {}  # connection -> its setLevel
        self._subscriptions: dict[str, _Subscription] = {}  # URI -> its subscription
        self._subscribing: anyio.Lock | None = None
        # Kind of list -> server -> its last complete list (kept while it cannot answer).
        self._listed: dict[str, dict[str, list[Any]]] = {kind: {} for kind in _KINDS}
        self._owner: dict[str, str] = {}  # listed resource URI (or template) -> server
        self._templates: list[tuple[str, UriTemplate]] = []  # (server, a listed template)
        self._failing: set[tuple[str, str]] = set()  # (server, method) logged as failing

    # ------------------------------------------------------------------ capabilities

    def handlers(self) -> dict[str, Any]:
        """The server's ``on_*`` handlers for what the connected upstreams offer."""
        ups = list(self.upstreams.values())
        on: dict[str, Any] = {}
        if any(u.capable("resources") for u in ups):
            on["on_list_resources"] = self._merged("resources")
            on["on_list_resource_templates"] = self._merged("resource_templates")
            on["on_read_resource"] = self.read_resource
        if any(_subscribes(u) for u in ups):
            on["on_subscribe_resource"] = self.subscribe
            on["on_unsubscribe_resource"] = self.unsubscribe
        if any(u.capable("prompts") for u in ups):
            on["on_list_prompts"] = self._merged("prompts")
            on["on_get_prompt"] = self.get_prompt
        if any(u.capable("completions") for u in ups):
            on["on_completion"] = self.complete
        if any(u.capable("logging") for u in ups):
            on["on_set_logging_level"] = self.set_level
        return on

    def list_changes(self) -> NotificationOptions:
        """The list-changed notifications the proxy may send.

        Tools always (it re-reads them after a restart), prompts and resources when an
        upstream declares them.
        """
        ups = list(self.upstreams.values())
        return NotificationOptions(
            prompts_changed=any(_lists_changes(u, "prompts") for u in ups),
            resources_changed=any(_lists_changes(u, "resources") for u in ups),
            tools_changed=True,
        )

    # ------------------------------------------------------------------ clients

    def seen(self, ctx: Any) -> int:
        """Remember the client's connection, for the notifications that concern it.

        Returns:
            The key of its connection.
        """
        # NOTE(mcp): ctx.session is a per-request view; its connection is what lasts (and
        # is kept alive by the view held here, so its id is not reused meanwhile). The SDK
        # keeps it private, so fall back to the view itself.
        key = id(getattr(ctx.session, "_connection", ctx.session))
        self.clients[key] = ctx.session
        self.clients.move_to_end(key)
        while len(self.clients) > self.max_clients:
            old, _ = self.clients.popitem(last=False)
            self.forget(old)
        return key

    def forget(self, key: int) -> None:
        """Drop a session gone: its level, its subscriptions (unsubscribed when the last)."""
        self.clients.pop(key, None)
        self._levels.pop(key, None)
        for uri, sub in list(self._subscriptions.items()):
            sub.clients.discard(key)
            if not sub.clients:
                del self._subscriptions[uri]
                if self.tasks is not None:
                    self.tasks.start_soon(self._quietly_unsubscribe, sub.server, uri)

    async def send(self, key: int, client: Any, method: str, *args: Any) -> None:
        """Send a notification to one session; a session that went away is forgotten."""
        try:
            await _legacy(getattr(client, method), *args)
        except Exception:  # noqa: BLE001 - a client that went away
            self.forget(key)

    async def notify(self, method: str, *args: Any) -> None:
        """Send a notification to every session (list changes concern them all)."""
        for key, client in list(self.clients.items()):
            await self.send(key, client, method, *args)

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        """Pass an upstream's log message on to each session that wants its level."""
        rank = _LEVELS.index(params.level)
        for key, client in list(self.clients.items()):
            wanted = self._levels.get(key)
            if wanted is not None and rank < _LEVELS.index(wanted):
                continue
            args = (params.level, params.data, params.logger)
            await self.send(key, client, "send_log_message", *args)

    async def on_updated(self, uri: str) -> None:
        """Pass a resource-updated notification on to the sessions subscribed to ``uri``."""
        sub = self._subscriptions.get(uri)
        if sub is None:
            log.debug("an update of %s, which no client subscribed to, was dropped", uri)
            return
        for key in list(sub.clients):
            client = self.clients.get(key)
            if client is not None:
                await self.send(key, client, "send_resource_updated", uri)

    async def on_reconnect(self, up: Upstream) -> None:
        """Give a restarted upstream back its subscriptions and its log level."""
        for uri, sub in list(self._subscriptions.items()):
            if sub.server == up.name:
                try:
                    await self._request(up, "resources/subscribe", "subscribe_resource", uri)
                except MCPError as exc:
                    log.warning("upstream %s: cannot subscribe again to %s: %s", up.name, uri, exc)
        level = self._level()
        if level is not None and up.capable("logging"):
            try:
                await self._request(up, "logging/setLevel", "set_logging_level", level)
            except MCPError as exc:
                log.warning("upstream %s: cannot set its log level again: %s", up.name, exc)

    # ------------------------------------------------------------------ upstream requests

    async def _ask(self, up: Upstream, what: str, fn: Callable[[], Awaitable[_T]]) -> _T:
        """Await ``fn()`` (requests to ``up``) within the timeout.

        Raises:
            MCPError: the upstream's own error; or ``INTERNAL_ERROR`` when it did not answer
                in time, is not connected, or failed otherwise.
        """
        try:
            with anyio.fail_after(self.timeout):
                return await fn()
        except MCPError:
            raise
        except TimeoutError:
            raise MCPError(
                types.INTERNAL_ERROR,
                f"MCP server {up.name!r} did not answer {what} within {self.timeout:g} s",
            ) from None
        except ConnectionError as exc:
            raise MCPError(types.INTERNAL_ERROR, f"{what}: {exc}") from None
        except Exception as exc:  # a malformed answer, ...: the client is told
            log.debug("upstream %s: %s failed", up.name, what, exc_info=True)
            raise MCPError(
                types.INTERNAL_ERROR, f"MCP server {up.name!r} failed {what}: {exc}"
            ) from None

    async def _request(self, up: Upstream, what: str, method: str, *args: Any) -> Any:
        """Call ``method(*args)`` of ``up``'s session within the timeout (see ``_ask``)."""
        return await self._ask(
            up, what, functools.partial(up.request, lambda s: _legacy(getattr(s, method), *args))
        )

    def _failed(self, up: Upstream, what: str, exc: MCPError) -> None:
        if (up.name, what) not in self._failing:
            self._failing.add((up.name, what))
            log.warning("upstream %s left out of %s: %s", up.name, what, exc.message)

    def _answered(self, up: Upstream, what: str) -> None:
        if (up.name, what) in self._failing:
            self._failing.discard((up.name, what))
            log.warning("upstream %s answers %s again", up.name, what)

    def _having(self, capability: str) -> list[Upstream]:
        return [u for u in self.upstreams.values() if u.capable(capability)]

    # ------------------------------------------------------------------ lists

    async def _gather(self, kind: str) -> dict[str, list[Any]]:
        """Each capable upstream's complete list of ``kind``, asked concurrently.

        Returns:
            The lists by server, in the upstreams' order; one that failed is left out
            (its last list is kept for routing).
        """
        method, what, capability, _ = _KINDS[kind]
        got: dict[str, list[Any]] = {}

        async def one(up: Upstream) -> None:
            try:
                items = await self._ask(up, what, functools.partial(_all_pages, up, method, kind))
            except MCPError as exc:
                if exc.code != types.METHOD_NOT_FOUND:  # (templates are optional)
                    self._failed(up, what, exc)
                    return
                items = []
            self._answered(up, what)
            got[up.name] = items

        async with anyio.create_task_group() as tg:
            for up in self._having(capability):
                tg.start_soon(one, up)
        self._listed[kind].update(got)
        self._index()
        return {name: got[name] for name in self.upstreams if name in got}

    def _index(self) -> None:
        """Re-derive the owners of the listed URIs and templates (the first lister wins)."""
        owner: dict[str, str] = {}
        templates: list[tuple[str, UriTemplate]] = []
        for server in self.upstreams:
            for r in self._listed["resources"].get(server, ()):
                owner.setdefault(str(r.uri), server)
            for t in self._listed["resource_templates"].get(server, ()):
                owner.setdefault(t.uri_template, server)
                try:
                    templates.append((server, UriTemplate.parse(t.uri_template)))
                except InvalidUriTemplate:
                    log.debug("upstream %s: unusable template %r", server, t.uri_template)
        self._owner, self._templates = owner, templates

    def _prompts(self) -> dict[str, tuple[str, types.Prompt]]:
        """The listed prompts by the name clients see (``server.prompt`` when two clash)."""
        listed = [(s, p) for s in self.upstreams for p in self._listed["prompts"].get(s, ())]
        counts: dict[str, int] = {}
        for _, p in listed:
            counts[p.name] = counts.get(p.name, 0) + 1
        exposed: dict[str, tuple[str, types.Prompt]] = {}
        for server, p in listed:
            exposed.setdefault(f"{server}.{p.name}" if counts[p.name] > 1 else p.name, (server, p))
        return exposed

    def _merged(self, kind: str) -> Any:
        """A list request answered with the union of the upstreams' answers."""
        result = _KINDS[kind][3]

        async def handler(ctx: Any, params: Any) -> Any:
            # One page with everything: the upstreams' cursors mean nothing to the client.
            self.seen(ctx)
            got = await self._gather(kind)
            if kind == "prompts":
                items = [
                    p.model_copy(update={"name": name})
                    for name, (server, p) in self._prompts().items()
                    if server in got
                ]
            else:
                items = [item for listed in got.values() for item in listed]
            return result(**{kind: items})

        return handler

    # ------------------------------------------------------------------ routing

    def _known_owners(self, uri: str) -> list[str]:
        """The servers that listed ``uri`` (or this template), else whose templates match it."""
        server = self._owner.get(uri)
        if server is not None:
            return [server]
        found: list[str] = []
        for server, template in self._templates:
            if server not in found and template.match(uri) is not None:
                found.append(server)
        return found

    async def _owners(self, uri: str) -> list[str]:
        """The servers ``uri`` belongs to, reading the lists again if none is known yet."""
        found = self._known_owners(uri)
        if not found:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._gather, "resources")
                tg.start_soon(self._gather, "resource_templates")
            found = self._known_owners(uri)
        return [s for s in found if s in self.upstreams]

    async def _prompt(self, name: str) -> tuple[Upstream, str]:
        """The upstream of the prompt clients call ``name``, and its own name for it.

        Raises:
            MCPError: no upstream lists it.
        """
        found = self._prompts().get(name)
        if found is None:
            await self._gather("prompts")
            found = self._prompts().get(name)
        if found is None or found[0] not in self.upstreams:
            raise MCPError(types.INVALID_PARAMS, f"unknown prompt {name!r}")
        return self.upstreams[found[0]], found[1].name

    # ------------------------------------------------------------------ handlers

    async def read_resource(self, ctx: Any, params: types.ReadResourceRequestParams) -> Any:
        """Read ``params.uri`` at its upstream (each in turn only for a URI nobody lists)."""
        self.seen(ctx)
        uri = str(params.uri)
        owners = await self._owners(uri)
        tried = [self.upstreams[s] for s in owners] or self._having("resources")
        last: MCPError | None = None
        for up in tried:
            try:
                return await self._request(up, "resources/read", "read_resource", uri)
            except MCPError as exc:
                last = exc
        if last is not None:
            raise last
        raise MCPError(types.INVALID_PARAMS, f"no upstream has resource {uri}")

    async def _subscribable(self, uri: str) -> Upstream:
        """The upstream to subscribe to ``uri`` at.

        Raises:
            MCPError: nobody lists it (and more than one upstream takes subscriptions), or
                its upstream takes none.
        """
        owners = await self._owners(uri)
        if not owners:
            able = [u for u in self.upstreams.values() if _subscribes(u)]
            if len(able) == 1:
                return able[0]
            raise MCPError(
                types.INVALID_PARAMS,
                f"no upstream lists resource {uri}: cannot tell which server to subscribe at",
            )
        for server in owners:
            if _subscribes(self.upstreams[server]):
                return self.upstreams[server]
        raise MCPError(
            types.METHOD_NOT_FOUND,
            f"MCP server {owners[0]!r} does not support resources/subscribe ({uri})",
        )

    def _lock(self) -> anyio.Lock:
        if self._subscribing is None:  # created in the event loop, on first use
            self._subscribing = anyio.Lock()
        return self._subscribing

    async def subscribe(self, ctx: Any, params: types.SubscribeRequestParams) -> Any:
        """Subscribe this session to ``params.uri`` (the upstream, for the first session)."""
        key = self.seen(ctx)
        uri = str(params.uri)
        async with self._lock():
            sub = self._subscriptions.get(uri)
            if sub is None:
                up = await self._subscribable(uri)
                await self._request(up, "resources/subscribe", "subscribe_resource", uri)
                sub = self._subscriptions[uri] = _Subscription(up.name)
            sub.clients.add(key)
        return types.EmptyResult()

    async def unsubscribe(self, ctx: Any, params: types.UnsubscribeRequestParams) -> Any:
        """Unsubscribe this session (the upstream too, when no other session subscribes)."""
        key = self.seen(ctx)
        uri = str(params.uri)
        async with self._lock():
            sub = self._subscriptions.get(uri)
            if sub is None or key not in sub.clients:
                return types.EmptyResult()
            sub.clients.discard(key)
            if sub.clients:
                return types.EmptyResult()
            del self._subscriptions[uri]
            up = self.upstreams.get(sub.server)
            if up is not None:
                await self._request(up, "resources/unsubscribe", "unsubscribe_resource", uri)
        return types.EmptyResult()

    async def _quietly_unsubscribe(self, server: str, uri: str) -> None:
        up = self.upstreams.get(server)
        if up is None:
            return
        async with self._lock():
            if uri in self._subscriptions:  # subscribed again meanwhile
                return
            try:
                await self._request(up, "resources/unsubscribe", "unsubscribe_resource", uri)
            except MCPError as exc:
                log.warning("upstream %s: cannot unsubscribe from %s: %s", server, uri, exc)

    async def get_prompt(self, ctx: Any, params: types.GetPromptRequestParams) -> Any:
        """Get the prompt at the upstream that lists it."""
        self.seen(ctx)
        up, name = await self._prompt(params.name)
        return await self._request(up, "prompts/get", "get_prompt", name, params.arguments)

    async def complete(self, ctx: Any, params: types.CompleteRequestParams) -> Any:
        """Ask the upstream of the referenced prompt or resource template for completions.

        Raises:
            MCPError: no upstream lists the prompt or the template.
        """
        self.seen(ctx)
        ref = params.ref
        if isinstance(ref, types.PromptReference):
            up, name = await self._prompt(ref.name)
            ref = ref.model_copy(update={"name": name})
        else:
            owners = await self._owners(ref.uri)
            if not owners:
                raise MCPError(types.INVALID_PARAMS, f"no upstream lists resource {ref.uri}")
            up = self.upstreams[owners[0]]
        if not up.capable("completions"):
            return types.CompleteResult(completion=types.Completion(values=[]))
        argument = {"name": params.argument.name, "value": params.argument.value}
        context = dict(params.context.arguments or {}) if params.context else None
        return await self._request(up, "completion/complete", "complete", ref, argument, context)

    def _level(self) -> types.LoggingLevel | None:
        """The most verbose level a live session asked for (None: nobody asked)."""
        asked = [level for key, level in self._levels.items() if key in self.clients]
        return min(asked, key=_LEVELS.index) if asked else None

    async def set_level(self, ctx: Any, params: types.SetLevelRequestParams) -> Any:
        """Set this session's level; the upstreams send the most verbose any session wants.

        Raises:
            MCPError: no upstream took the level.
        """
        key = self.seen(ctx)
        self._levels[key] = params.level
        level = self._level() or params.level
        failed: list[MCPError] = []

        async def one(up: Upstream) -> None:
            try:
                await self._request(up, "logging/setLevel", "set_logging_level", level)
            except MCPError as exc:
                self._failed(up, "logging/setLevel", exc)
                failed.append(exc)
            else:
                self._answered(up, "logging/setLevel")

        having = self._having("logging")
        async with anyio.create_task_group() as tg:
            for up in having:
                tg.start_soon(one, up)
        if having and len(failed) == len(having):
            raise failed[0]
        return types.EmptyResult()
