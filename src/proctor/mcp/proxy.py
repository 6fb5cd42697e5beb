"""The MCP governance proxy: Proctor between any MCP client and its MCP servers.

``tools/list`` is the union of the upstream servers' tools (``server.tool`` when names
clash or when configured), minus hidden ones, annotations passed through. ``tools/call``
becomes a one-step plan (``proctor.mcp.governance``), then:

- ``execute``: the call is forwarded and the upstream's result returned as it came (the
  audit log keeps a masked copy in ``step.succeeded``, or the error in ``step.failed``);
- ``confirm``: the user is asked through MCP elicitation when the client supports it,
  otherwise the result is a tool error saying where to confirm;
- ``approve``: the proxy waits up to ``approval_wait`` seconds, then answers "pending
  approval <plan id>": the agent retries the same call, which finds the same plan and, once
  a human approved it (in any process), runs it here: MCP actions have the runner ``mcp``,
  so no other process (``proctor serve``, ``proctor worker``) can reach the server;
- ``deny``: a tool error with the reasons.

Threads: the gateway is synchronous, the SDK asynchronous. A call's governance (plan id
lookup, submit; confirm or resume later) runs under the executor's ``deferred()``: a step
that is to run comes back started and recorded, and the proxy makes its upstream call in the
event loop, then hands the outcome to ``Executor.complete`` (``_drive``). The synchronous
parts run in the event loop itself when no other call is in progress (a thread hop costs
more than they block), else in a thread of the proxy's pool. The upstream call runs in a
task of its own, which every identical request at the same moment awaits (they share the
plan, ``_drive``): each gets the upstream's own result and its progress notifications, and
the call is cancelled (the step fails, "cancelled by the client") only when every one of
them was. Steps run by the executor's own threads (a resumed plan) reach the event loop
through ``McpTools``.

Everything else — resources (list, templates, read, subscribe), prompts, completions,
logging (level and messages), pings, list-changed and resource-updated notifications — is
passed through to the upstream that has it (``proctor.mcp.passthrough``: the capabilities,
the routing by owner, the time bound, and which client session gets what).

``RemoteMcpProxy`` (``proctor.mcp.remote``) is this proxy governed through a running
``proctor serve`` instead of an instance opened here: it overrides the governance hooks
(``_call_tool``, ``_hidden``, ``_register``, ``_call_timeout``, ``_start``).

What a ``tools/call`` carries (its flight, the client's name, the call key of a plan id) is
in ``proctor.mcp.calls``, shared with the remote proxy; the glue to the MCP SDK and its
event loop (the server class, deprecated calls, paginated lists, ``_LoopTools``) in
``proctor.mcp.sdk``.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import anyio
import mcp_types as types
import orjson
from mcp import ClientSession
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

from proctor._library import Proctor
from proctor.app.executor import StepCall
from proctor.app.recovery import held_by_guard
from proctor.core.catalog import ActionSpec
from proctor.core.lifecycle import PlanRecord, PlanStatus
from proctor.core.ports import ToolCall
from proctor.errors import ConfigError, InvalidRequestError, ProctorError
from proctor.mcp.calls import _client_name, _Flight, _flight_of, _Group, _key_of
from proctor.mcp.config import UpstreamConfig, load_config
from proctor.mcp.errors import tool_error, tool_error_text
from proctor.mcp.governance import (
    action_name,
    action_names,
    bind_spec,
    call_key,
    current_plan_id,
    manifest,
    not_run_now,
    spec_from_annotations,
)
from proctor.mcp.passthrough import PassThrough
from proctor.mcp.sdk import _all_pages, _legacy, _LoopTools, _Server
from proctor.mcp.upstream import Upstream
from proctor.tools.mcp import (
    McpTools,
    UpstreamToolError,
    audit_document,
    error_message,
    text_of,
)

__all__ = ["McpProxy", "UpstreamConfig", "load_config"]

log = logging.getLogger("proctor.mcp")
_T = TypeVar("_T")
_MAX_CLIENTS = 1000
_THREADS = 64
_BUSY = frozenset({PlanStatus.RUNNING, PlanStatus.COMPENSATING})


class McpProxy:
    """Governs the tool calls of MCP clients on their way to upstream MCP servers.

    Args:
        proctor: The instance whose catalog, policy, approvals and audit log apply.
        upstreams: The servers to front.
        agent_id: The agent identity plans are submitted as.
        on_behalf_of: The user the agent acts for (who confirms).
        approval_wait: Seconds a call waits for an approval before answering "pending".
        namespace: Always name tools ``server.tool`` (else only when names clash).
        console_url: Where humans confirm and approve, named in "pending" answers.
        connect_timeout: Seconds an upstream may take to start and initialize.
        passthrough_timeout: Seconds any other request to an upstream (lists, reads,
            prompts, completions, subscriptions, log level) may take; a merged list leaves
            out an upstream that takes longer, and re-reading an upstream's tools keeps its
            old list.
        confirm_in_client: Ask the user through MCP elicitation when a call needs their
            confirmation (default). False: the call answers "needs confirmation" and the
            user confirms in the console or the CLI — for clients whose elicitation answers
            may come from code rather than from the user.
    """

    _refuse_clashes = False
    """Refuse tools whose names clash (rather than give each its own action name)."""

    def __init__(
        self,
        proctor: Proctor,
        upstreams: list[UpstreamConfig],
        *,
        agent_id: str = "mcp-agent",
        on_behalf_of: str = "mcp-user",
        approval_wait: float = 0.0,
        namespace: bool = False,
        console_url: str | None = None,
        connect_timeout: float = 30.0,
        passthrough_timeout: float = 5.0,
        confirm_in_client: bool = True,
    ) -> None:
        self.proctor = proctor
        self._setup(
            upstreams,
            agent_id=agent_id,
            on_behalf_of=on_behalf_of,
            approval_wait=approval_wait,
            namespace=namespace,
            console_url=console_url,
            connect_timeout=connect_timeout,
            passthrough_timeout=passthrough_timeout,
            confirm_in_client=confirm_in_client,
        )
        gw = proctor.gateway
        gw.options = dataclasses.replace(gw.options, runners=gw.options.runners | {"mcp"})
        fallback = gw.tools.fallback if isinstance(gw.tools, McpTools) else gw.tools
        self.mcp_tools: McpTools = _LoopTools(
            fallback, self._forward, keyed=proctor.gateway.keyed_hash
        )
        gw.tools = self.mcp_tools
        # Handler path -> (server, tool, result masks): the calls _drive makes itself.
        self._targets: dict[str, tuple[str, str, tuple[str, ...]]] = {}

    def _setup(
        self,
        upstreams: list[UpstreamConfig],
        *,
        agent_id: str,
        on_behalf_of: str,
        approval_wait: float,
        namespace: bool,
        console_url: str | None,
        connect_timeout: float,
        confirm_in_client: bool,
        passthrough_timeout: float = 5.0,
    ) -> None:
        """Set what every proxy has, local or remote."""
        self.configs = {u.name: u for u in upstreams}
        self.agent_id = agent_id
        self.on_behalf_of = on_behalf_of
        self.approval_wait = approval_wait
        self.namespace = namespace
        self.console_url = console_url
        self.connect_timeout = connect_timeout
        self.confirm_in_client = confirm_in_client
        self.upstreams: dict[str, Upstream] = {}
        self.tools: dict[str, tuple[str, types.Tool]] = {}  # exposed name -> (server, tool)
        self._actions: dict[tuple[str, str], str] = {}  # (server, tool) -> its own action
        self._declared: dict[str, ActionSpec | None] = {}
        # Each upstream's last tools/list answer: what stays listed when a re-read fails.
        self._offered: dict[str, list[types.Tool]] = {}
        # Resources, prompts, completions, logging; the client sessions and what they get.
        self.passthrough = PassThrough(
            self.upstreams, timeout=passthrough_timeout, max_clients=_MAX_CLIENTS
        )
        self._flights: dict[str, _Group] = {}  # call key -> the requests in progress on it
        # The tasks making upstream calls that requests share (_share), each with its group.
        self._runs: dict[asyncio.Future[Any], _Group] = {}
        self._stopping = False
        self._active = 0  # tools/call requests in progress
        # The governance of calls made while others are in progress (the upstream calls
        # themselves run in the event loop), list filtering, approval polls.
        self._pool = ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="proctor-mcp")

    @property
    def sessions(self) -> dict[str, ClientSession]:
        """The live upstream sessions by server name."""
        return {n: u.session for n, u in self.upstreams.items() if u.session is not None}

    # ------------------------------------------------------------------ upstreams

    async def connect(self, stack: AsyncExitStack) -> None:
        """Start every upstream (each in its own task) and learn its tools.

        Raises:
            ConfigError: an upstream did not start.
        """
        self._start()
        stack.callback(self._pool.shutdown, wait=False, cancel_futures=True)
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        self.passthrough.tasks = tg
        for config in self.configs.values():
            up = Upstream(
                config,
                logging_callback=self._on_log,
                message_handler=self._on_message,
                on_reconnect=self._on_reconnect,
                connect_timeout=self.connect_timeout,
            )
            await tg.start(up.run)
            self.upstreams[config.name] = up
        await self.refresh_tools()
        # First on the way out: the shared calls end (recorded) while upstreams and pool live.
        stack.push_async_callback(self._stop_runs)

    def _start(self) -> None:
        """In the event loop, before any upstream starts: let steps reach the loop."""
        self.mcp_tools.start()

    async def _on_reconnect(self, up: Upstream) -> None:
        try:
            await self.refresh_tools()
        except Exception as exc:  # noqa: BLE001 - the old list stays; the next change retries
            log.warning("upstream %s: cannot list tools after a restart: %s", up.name, exc)
        await self.passthrough.on_reconnect(up)
        await self._notify("send_tool_list_changed")

    async def _on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        """Pass an upstream's log message on to the clients (each at its own level)."""
        await self.passthrough.on_log(params)

    async def _on_message(self, message: Any) -> None:
        """Pass notifications on: list changes (re-reading the tools first), updates."""
        if isinstance(message, Exception):
            # A malformed message from an upstream: the SDK could not parse it. The request
            # it answered (if any) fails on its timeout; the proxy carries on.
            log.warning("an upstream sent a malformed message: %s", message)
            return
        note = getattr(message, "root", message)
        if isinstance(note, types.ToolListChangedNotification):
            await self.refresh_tools()
            await self._notify("send_tool_list_changed")
        elif isinstance(note, types.ResourceListChangedNotification):
            await self._notify("send_resource_list_changed")
        elif isinstance(note, types.PromptListChangedNotification):
            await self._notify("send_prompt_list_changed")
        elif isinstance(note, types.ResourceUpdatedNotification):
            await self.passthrough.on_updated(str(note.params.uri))  # to its subscribers

    async def _notify(self, method: str, *args: Any) -> None:
        await self.passthrough.notify(method, *args)

    def _seen(self, ctx: Any) -> None:
        """Remember the client's connection, for the notifications that concern it."""
        self.passthrough.seen(ctx)

    async def refresh_tools(self) -> None:
        """Re-read the upstream tools and register them as catalog actions.

        Every listed tool gets its own exposed name and its own action (``action_names``).
        A tool that cannot is not listed (so a call to it is an unknown tool), with a warning:
        a name a server lists twice, or an exposed name two tools would share even after
        namespacing. Each upstream's list is read within ``passthrough_timeout``
        (``_offered_tools``).

        Raises:
            ConfigError: an upstream listed for the first time (at start) did not answer.
        """
        listed: list[tuple[str, types.Tool]] = []
        for name, up in self.upstreams.items():
            hide = self.configs[name].hide
            offered = await self._offered_tools(name, up)
            seen: dict[str, int] = {}
            for t in offered:
                seen[t.name] = seen.get(t.name, 0) + 1
            for t in offered:
                if t.name in hide:
                    continue
                if seen[t.name] > 1:
                    # Which description (and annotations, which score it) would be the tool's?
                    log.warning("upstream %s lists tool %r twice: not offered", name, t.name)
                    continue
                listed.append((name, t))
        actions, clashed = action_names((s, t.name) for s, t in listed)
        for (server, tool), plain in sorted(clashed.items()):
            if (server, tool) in actions:
                log.warning(
                    "upstream %s tool %r and another tool would both be the action %s: it is "
                    "the action %s",
                    server,
                    tool,
                    plain,
                    actions[(server, tool)],
                )
            else:  # pragma: no cover - a 32-bit digest collision
                log.warning(
                    "upstream %s tool %r has no action of its own: not offered", server, tool
                )
        if self._refuse_clashes:
            for pair in clashed:
                actions.pop(pair, None)
        listed = [(s, t) for s, t in listed if (s, t.name) in actions]
        tools = self._exposed(listed)
        for server, t in tools.values():
            self._register(server, t, actions[(server, t.name)])
        self._actions = {(s, t.name): actions[(s, t.name)] for s, t in tools.values()}
        self.tools = tools

    async def _offered_tools(self, name: str, up: Upstream) -> list[types.Tool]:
        """``up``'s tools, read within ``passthrough_timeout``; on failure, its last list.

        A refresh runs when an upstream announces a change (or comes back): one that then
        hangs on ``tools/list`` would otherwise hold the refresh for ever, and with it the
        other upstreams' new lists, the client's ``list_changed`` and, after a restart, its
        subscriptions and log level. Its tools stay as they were listed before (with a
        warning), so its next change or restart tries again.

        Raises:
            ConfigError: it failed and was never listed (at start): nothing to fall back on.
        """
        try:
            offered: list[types.Tool] = await self.passthrough._ask(
                up, "tools/list", functools.partial(_all_pages, up, "list_tools", "tools")
            )
        except MCPError as exc:
            if name not in self._offered:
                raise ConfigError(
                    f"MCP server {name!r} did not list its tools: {exc.message}",
                    field=f"mcpServers.{name}",
                    hint="Run it by hand to see why; --passthrough-timeout bounds the wait.",
                ) from exc
            log.warning(
                "upstream %s: cannot re-read its tools (%s); its %d tools listed before stay",
                name,
                exc.message,
                len(self._offered[name]),
            )
            return self._offered[name]
        self._offered[name] = offered
        return offered

    def _exposed(self, listed: list[tuple[str, types.Tool]]) -> dict[str, tuple[str, types.Tool]]:
        """The name the client sees for each tool: ``tool``, or ``server.tool``.

        ``server.tool`` when configured or when two servers have the tool; then also for a
        tool whose plain name is another's ``server.tool`` (server ``x``'s tool ``a.b`` next
        to server ``a``'s ``b``). Tools that would still share a name are not offered.
        """
        counts: dict[str, int] = {}
        for _, t in listed:
            counts[t.name] = counts.get(t.name, 0) + 1

        def names(spaced_too: set[tuple[str, str]]) -> dict[str, list[tuple[str, types.Tool]]]:
            out: dict[str, list[tuple[str, types.Tool]]] = {}
            for server, t in listed:
                spaced = (
                    self.namespace
                    or self.configs[server].namespace
                    or counts[t.name] > 1
                    or (server, t.name) in spaced_too
                )
                out.setdefault(f"{server}.{t.name}" if spaced else t.name, []).append((server, t))
            return out

        first = names(set())
        again = {(s, t.name) for group in first.values() if len(group) > 1 for s, t in group}
        tools: dict[str, tuple[str, types.Tool]] = {}
        for exposed, group in names(again).items():
            if len(group) == 1:
                tools[exposed] = group[0]
                continue
            for server, t in group:
                log.warning(
                    "upstream %s tool %r would be listed as %r like another tool: not offered",
                    server,
                    t.name,
                    exposed,
                )
        return tools

    def _action(self, server: str, tool: str) -> str:
        """The action of ``tool`` on ``server`` (its own, see ``refresh_tools``)."""
        return self._actions.get((server, tool)) or action_name(server, tool)

    def _register(self, server: str, tool: types.Tool, name: str | None = None) -> None:
        """Make ``tool`` of ``server`` the catalog action ``name``, bound to the upstream.

        ``name`` defaults to ``action_name``; ``refresh_tools`` passes the tool's own.
        """
        name = name or action_name(server, tool.name)
        catalog = self.proctor.gateway.catalog
        # A handler path has no "-": a clash name's suffix becomes a fourth dotted part, which
        # no plain action name (three parts, slugs without dots) has.
        handler = f"{name.replace('-', '.')}:handler"
        config = self.configs.get(server)
        masks = tuple(config.mask_result) if config else ()
        self.mcp_tools.bind(handler, server, tool.name, mask_result=masks)
        self._targets[handler] = (server, tool.name, masks)
        if name not in self._declared:
            # What the catalog files say, remembered before the first registration replaces
            # it: a later tools/list_changed must not lose the declared category or masks.
            found = catalog.get(name)
            self._declared[name] = found if found is not None and found.handler is None else None
            if found is not None and found.runner != "mcp":
                log.warning(
                    'catalog entry %s has no runner = "mcp": another process (proctor '
                    "approve, proctor serve) would try to run it without the server",
                    name,
                )
        base = self._declared[name] or spec_from_annotations(name, tool)
        spec = bind_spec(base, tool, handler, on_bad_schema=self._bad_schema)
        catalog.add(spec, replace=True)

    @staticmethod
    def _bad_schema(message: str) -> None:
        log.warning("an upstream tool's inputSchema is not usable, not validated here: %s", message)

    async def _forward(
        self,
        server: str,
        tool: str,
        arguments: dict[str, Any],
        call: ToolCall,
        group: _Group | None = None,
    ) -> types.CallToolResult:
        """Call the upstream (in the event loop, for ``McpTools`` in a gateway thread).

        ``group``: the requests the call is made for (default: those in progress on the
        plan's call key, if any).

        Raises:
            TimeoutError: past the action's timeout (else the gateway's step timeout).
            ConnectionError: the server is gone (it is restarted for the next call).
            RuntimeError: the client cancelled the call.
        """
        limit = self._call_timeout(server, tool)
        if group is None:  # McpTools; no group: a plan the executor resumed by itself
            group = self._flights.get(_key_of(call.plan_id)) or _Group()
        progress = group.progress if group.wants_progress else None
        scope = anyio.CancelScope()
        group.scopes.add(scope)
        if group.abandoned or self._stopping:
            scope.cancel()
        try:
            with scope:
                # A hung upstream must not hold the client forever: the call fails, the step
                # is recorded failed, and the proxy stays up.
                with anyio.fail_after(limit):
                    result: types.CallToolResult = await self.upstreams[server].request(
                        lambda s: s.call_tool(
                            tool, arguments, progress_callback=progress, meta=group.meta
                        )
                    )
                    return result
        except anyio.get_cancelled_exc_class():
            # NOTE(mcp): the SDK re-raises the cancellation after its shielded courtesy
            # cancel to the upstream, and the scope then does not count it as caught. This
            # task exists only for this call (_share or McpTools started it), so the
            # cancellation the clients asked for becomes the step's failure; any other one
            # (the proxy stopping) propagates.
            if group.abandoned or self._stopping:
                raise self._cancelled() from None
            raise
        finally:
            group.scopes.discard(scope)
        raise self._cancelled()

    def _cancelled(self) -> RuntimeError:
        """Why an upstream call was cancelled: its clients, or the proxy stopping."""
        if self._stopping:
            return RuntimeError("cancelled: the MCP proxy stopped")
        return RuntimeError("cancelled by the client")

    def _call_timeout(self, server: str, tool: str) -> float:
        """Seconds an upstream call may take: the action's timeout, else the step timeout."""
        spec = self.proctor.gateway.catalog.get(self._action(server, tool))
        return (spec.timeout if spec and spec.timeout else None) or self._step_timeout()

    def _step_timeout(self) -> float:
        timeout = self.proctor.gateway.options.step_timeout
        return float(timeout) if timeout else 300.0

    # ------------------------------------------------------------------ the server

    def server(self) -> Server[Any]:
        """Return the MCP server clients talk to."""
        return _legacy(self._server)

    def _server(self) -> Server[Any]:
        # What the connected upstreams offer, no more (after connect: their capabilities).
        return _Server(
            "proctor-mcp",
            version="1",
            instructions="Every tool call is governed by Proctor: it may need a human's "
            "confirmation or approval, or be denied with reasons.",
            list_changes=self.passthrough.list_changes(),
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_ping=self._ping,
            **self.passthrough.handlers(),
        )

    async def _ping(self, ctx: Any, params: Any) -> types.EmptyResult:
        self._seen(ctx)
        return types.EmptyResult()

    async def _list_tools(self, ctx: Any, params: Any) -> types.ListToolsResult:
        self._seen(ctx)
        hidden = await self._hidden()
        tools = [
            t.model_copy(update={"name": exposed})
            for exposed, (server, t) in self.tools.items()
            if self._action(server, t.name) not in hidden
        ]
        return types.ListToolsResult(tools=tools)

    async def _hidden(self) -> set[str]:
        """The actions not listed to this agent."""
        return await self._in_thread(self._guard_hidden)

    def _guard_hidden(self) -> set[str]:
        """Actions this agent may not use at all (whitelist, kill switches): not listed."""
        guards = self.proctor.gateway.guards
        if guards is None:
            return set()
        actions = {self._action(s, t.name) for s, t in self.tools.values()}
        hidden: set[str] = guards.hidden(self.agent_id, actions)
        return hidden

    # ------------------------------------------------------------------ governed calls

    async def _call_tool(
        self, ctx: Any, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        self._seen(ctx)
        client = _client_name(ctx)
        found = self.tools.get(params.name)
        if found is None:
            await self._in_thread(functools.partial(self._audit_unknown, params.name, client))
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")
        server, tool = found
        arguments = dict(params.arguments or {})
        action = self._action(server, tool.name)
        flight, traceparent = _flight_of(ctx, params)
        key = call_key(self.agent_id, client, action, arguments)
        group = self._join(key, flight)
        build = functools.partial(
            manifest,
            agent_id=self.agent_id,
            client=client,
            on_behalf_of=self.on_behalf_of,
            action=action,
            tool=tool.name,
            arguments=arguments,
        )
        self._active += 1
        try:
            try:
                rec = await self._governed(
                    functools.partial(self._govern, key, build, traceparent),
                    inline=self._inline(action),
                )
                rec, raw = await self._drive(rec, group)
            except ProctorError as exc:  # refused (bad arguments, ...): audited by the gateway
                return tool_error(tool_error_text(exc))
            return await self._settle(ctx, rec, raw, group)
        except anyio.get_cancelled_exc_class():
            # The client cancelled: the upstream call for this request (made by _drive's
            # task, or by the executor's own threads through McpTools) stops too, unless an
            # identical request that shares it still waits.
            group.cancel(flight)
            raise
        finally:
            self._active -= 1
            self._leave(key, group, flight)

    def _join(self, key: str, flight: _Flight) -> _Group:
        """Add a request to the group of those in progress on call ``key``."""
        group = self._flights.get(key)
        if group is None:
            group = self._flights[key] = _Group()
        group.join(flight)
        return group

    def _leave(self, key: str, group: _Group, flight: _Flight) -> None:
        group.flights.remove(flight)
        if not group.flights and self._flights.get(key) is group:
            del self._flights[key]

    def _govern(
        self, key: str, build: Callable[..., dict[str, Any]], traceparent: str | None
    ) -> PlanRecord:
        """Find the call's plan, submit it, claim it if it is queued here (see ``_governed``)."""
        gw = self.proctor.gateway
        plan_id = current_plan_id(key, gw.store.get_plan)
        rec = gw.submit(build(plan_id=plan_id), traceparent=traceparent, derived_id=True)
        return self._run_queued(rec)

    def _run_queued(self, rec: PlanRecord) -> PlanRecord:
        """Carry on a plan that is running without an owner (approved elsewhere, queued)."""
        if rec.status is not PlanStatus.RUNNING:
            return rec
        gw = self.proctor.gateway
        if gw.executor.owns(rec):
            return rec  # started here: _drive makes its call
        if rec.lease_owner is None:
            # Queued: under sandbox mode no claim starts it, so say so now rather than wait.
            gw.executor.refuse_in_sandbox(rec, "run")
        resumed = gw.executor.resume(rec.plan_id)
        return resumed if resumed is not None else gw.get(rec.plan_id)

    def _inline(self, action: str) -> bool:
        """Whether a call's governance may block the event loop: nothing else is in progress.

        NOTE(mcp): the synchronous parts of a call (about 1-2 ms in all: Rego, signed
        events, the final durable commit) then hold the loop, which saves the four thread
        hops a call took before; with other calls in progress they go to a thread, so none
        waits for another's. A canary's calls are made by the executor itself (through
        ``McpTools``, which waits for the loop): never in the loop.
        """
        if self._active > 1:
            return False
        spec = self.proctor.gateway.catalog.get(action)
        return spec is None or spec.canary is None

    async def _governed(self, fn: Callable[[], _T], *, inline: bool = False) -> _T:
        """Run a synchronous governance step under the executor's ``deferred()``, to its end.

        A step it starts comes back running for ``_drive``. Shielded: a plan started here
        must reach ``_drive``, whose task makes its call (or records its cancellation).
        """
        executor = self.proctor.gateway.executor

        def deferred() -> _T:
            with executor.deferred():
                return fn()

        if inline:
            return deferred()
        return await self._recorded(deferred)

    async def _drive(
        self, rec: PlanRecord, group: _Group
    ) -> tuple[PlanRecord, types.CallToolResult | None]:
        """Make the calls of a plan started here, or wait for those another request makes.

        The calls run in a task of their own, which every request on the plan (``group``:
        identical calls at the same moment share a plan) awaits: the client's cancellation
        of one request ends its wait, not the calls (``_Group.cancel``).

        Returns:
            The plan as it ends here, and the upstream's last result (None if none).
        """
        run = group.runs.get(rec.plan_id)
        if run is None:
            if rec.status is not PlanStatus.RUNNING or not self.proctor.gateway.executor.owns(rec):
                return rec, None
            run = self._share(functools.partial(self._steps, rec, group), group)
            group.runs[rec.plan_id] = run
        result: tuple[PlanRecord, types.CallToolResult | None] = await asyncio.shield(run)
        return result

    def _share(self, make: Callable[[], Awaitable[_T]], group: _Group) -> asyncio.Future[_T]:
        """Start ``make()`` (the calls of ``group``) in a task of its own."""
        task = asyncio.ensure_future(make())
        self._runs[task] = group
        task.add_done_callback(self._ran)
        return task

    def _ran(self, task: asyncio.Future[Any]) -> None:
        self._runs.pop(task, None)
        if not task.cancelled():
            task.exception()  # retrieved: a task nobody waits for any more is not an error

    async def _stop_runs(self) -> None:
        """Cancel the shared calls still in progress, and wait (a while) for their records.

        Through their groups' scopes, not ``Task.cancel``, which would break the shields
        that let a step's outcome be recorded.
        """
        self._stopping = True
        for group in list(self._runs.values()):
            group.abandoned = True
            for scope in list(group.scopes):
                scope.cancel()
        with anyio.move_on_after(10):
            await asyncio.gather(*self._runs, return_exceptions=True)

    async def _steps(
        self, rec: PlanRecord, group: _Group
    ) -> tuple[PlanRecord, types.CallToolResult | None]:
        """Make the calls of a plan started here, in the event loop; record each outcome."""
        executor = self.proctor.gateway.executor
        raw: types.CallToolResult | None = None
        while rec.status is PlanStatus.RUNNING and executor.owns(rec):
            pending = executor.next_call(rec)
            if pending is None:
                # Run by another call in this process, or failed past its deadline.
                return await self._in_thread(
                    functools.partial(self.proctor.gateway.get, rec.plan_id)
                ), raw
            rec, raw = await self._make(pending, group)
        return rec, raw

    async def _make(
        self, pending: StepCall, group: _Group
    ) -> tuple[PlanRecord, types.CallToolResult | None]:
        """Make one step's call and record its outcome (the masked result, or the error)."""
        complete = self.proctor.gateway.executor.complete
        target = self._targets.get(pending.handler)
        if target is None:  # not an upstream tool (a Python handler): in a thread
            return await self._recorded(functools.partial(self._call_here, pending)), None
        server, tool, masks = target
        # A deep copy, as McpTools makes: the recorded params stay exactly what was approved.
        arguments = orjson.loads(orjson.dumps(dict(pending.params)))
        step = pending.record.steps[pending.index]
        try:
            with self.proctor.gateway.telemetry.stage(
                "step", action=step.action, step=step.step_id
            ):
                raw = await self._forward(server, tool, arguments, pending.call, group)
        except anyio.get_cancelled_exc_class():  # the event loop is going away
            stopped = RuntimeError("cancelled: the MCP proxy stopped")
            await self._recorded(functools.partial(complete, pending, error=stopped))
            raise
        except Exception as exc:  # noqa: BLE001 - the step failed: recorded as such
            return await self._recorded(functools.partial(complete, pending, error=exc)), None
        if raw.is_error:
            failed = UpstreamToolError(error_message(raw, masks))
            return await self._recorded(functools.partial(complete, pending, error=failed)), raw
        done = functools.partial(
            complete,
            pending,
            result=audit_document(raw, masks, keyed=self.proctor.gateway.keyed_hash),
        )
        # A success records in one commit (no retry, no backoff): in the loop when it is free.
        return (done() if self._active <= 1 else await self._recorded(done)), raw

    def _call_here(self, pending: StepCall) -> PlanRecord:
        """Call a handler that is not an upstream tool, in this thread; record its outcome."""
        complete = self.proctor.gateway.executor.complete
        try:
            result = self.mcp_tools.run(pending.handler, pending.params, pending.call)
        except Exception as exc:  # noqa: BLE001 - recorded as the step's failure
            return complete(pending, error=exc)
        return complete(pending, result=result)

    async def _recorded(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` in a gateway thread to its end, whatever happens to the request meanwhile.

        A cancellation meanwhile is delivered afterwards (at the request's next await).
        """
        with anyio.CancelScope(shield=True):
            result = await self._in_thread(fn)
        return result

    def _audit_unknown(self, name: str, client: str) -> None:
        """Record a call to a tool nobody offers: a rejected plan in the audit log."""
        # No real action name contains "-" in its server part (server names are slugged to
        # [a-z0-9_]), so the catalog never has this one and the gateway rejects and audits.
        try:
            self.proctor.gateway.submit(
                manifest(
                    plan_id=None,
                    agent_id=self.agent_id,
                    client=client,
                    on_behalf_of=self.on_behalf_of,
                    action="mcp.not-listed." + action_name("x", name[:200]).split(".", 2)[2],
                    tool=name[:200],
                    arguments={},
                )
            )
        except InvalidRequestError:
            return
        except ProctorError as exc:  # pragma: no cover - the store failed: still answer
            log.warning("could not audit a call to unknown tool %r: %s", name, exc)

    async def _in_thread(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` in a gateway thread (abandoned, not interrupted, on cancellation).

        The pool is ours rather than anyio's worker threads: a hop through asyncio's
        executor costs about 85 µs at p50 and 0.2 ms at p99 here, anyio's about 0.1-0.2 ms
        and 3-4 ms at p99 (bench/mcp.py).
        """
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, fn)
        result: _T = await loop.run_in_executor(self._pool, call)
        return result

    async def _settle(
        self, ctx: Any, rec: PlanRecord, raw: types.CallToolResult | None, group: _Group
    ) -> types.CallToolResult:
        gw = self.proctor.gateway
        if rec.status is PlanStatus.AWAITING_CONFIRMATION:
            rec, raw = await self._drive(await self._confirm(ctx, rec), group)
        deadline = anyio.current_time() + self.approval_wait
        while rec.status is PlanStatus.AWAITING_APPROVAL and anyio.current_time() < deadline:
            await anyio.sleep(min(0.2, max(0.0, deadline - anyio.current_time())))
            rec = await self._in_thread(functools.partial(gw.get, rec.plan_id))
            if rec.status is PlanStatus.RUNNING:
                try:
                    queued = await self._governed(functools.partial(self._run_queued, rec))
                except ProctorError as exc:  # sandbox mode: not run
                    return tool_error(tool_error_text(exc))
                rec, raw = await self._drive(queued, group)
        # Running under another owner: the executor's own threads (a canary, a resumed plan),
        # or another proxy on this home. Wait for its end rather than answer "running".
        # A plan a guard holds (its claim was stopped) has no owner: nothing ends until the
        # guard allows it, so the client is told at once (as a remote proxy is: /v1/mcp/calls).
        deadline = anyio.current_time() + self._step_timeout() + 5.0
        while rec.status in _BUSY and anyio.current_time() < deadline:
            reason = held_by_guard(rec)
            if reason is not None:
                return tool_error(tool_error_text(not_run_now(rec.plan_id, reason)))
            await anyio.sleep(0.05)
            rec = await self._in_thread(functools.partial(gw.get, rec.plan_id))
        return self._answer(rec, raw, group)

    def _answer(
        self, rec: PlanRecord, raw: types.CallToolResult | None, group: _Group
    ) -> types.CallToolResult:
        """The client's answer for a plan as it stands (``raw``: the upstream's, if called)."""
        step = rec.steps[0]
        # Run by McpTools: the result is handed over once, then kept for the group's others.
        kept = group.results.get(rec.plan_id)
        if kept is None:
            kept = self.mcp_tools.take_result(f"{rec.plan_id}:{step.step_id}")
            if kept is not None:
                group.results[rec.plan_id] = kept
        raw = raw if raw is not None else kept
        if rec.status is PlanStatus.SUCCEEDED:
            if raw is not None:
                return raw
            # Run by another process serving the runner: the log's copy is all there is.
            try:
                return types.CallToolResult.model_validate(step.result)
            except ValueError:
                return tool_error(f"succeeded ({rec.plan_id}); the result is in the audit log")
        reasons = "; ".join(
            [
                *rec.decision.get("plan_reasons", []),
                *(r for s in rec.decision.get("steps", []) for r in s.get("reasons", [])),
            ]
        )
        where = f" or in the console ({self.console_url})" if self.console_url else ""
        if rec.status is PlanStatus.AWAITING_APPROVAL:
            return tool_error(
                f"pending approval {rec.plan_id}: {reasons}. Ask an approver "
                f"(`proctor approve {rec.plan_id}`{where}), then call the tool again with the "
                "same arguments."
            )
        if rec.status is PlanStatus.AWAITING_CONFIRMATION:
            return tool_error(
                f"needs confirmation {rec.plan_id}: {reasons}. Confirm with "
                f"`proctor confirm {rec.plan_id}`{where}, then call the tool again with the "
                "same arguments."
            )
        if rec.status is PlanStatus.DENIED:
            return tool_error(f"denied by policy ({rec.plan_id}): {reasons}")
        if rec.status is PlanStatus.REJECTED:
            return tool_error(f"rejected ({rec.plan_id}): {rec.error or reasons}")
        if raw is not None and raw.is_error:
            return raw  # the upstream's own error, as it came
        detail = step.error or rec.error or reasons
        if raw is not None:
            detail = text_of(raw) or detail
        return tool_error(f"the call {rec.status.value} ({rec.plan_id}): {detail}")

    async def _ask(self, ctx: Any, summary: str, plan_id: str) -> str | None:
        """Ask the client's user to allow a call (MCP elicitation).

        Returns:
            ``accept`` or ``decline``; None when the user was not asked (not wanted, the
            client cannot, it failed) or dismissed the question: the plan still waits.
        """
        if not self.confirm_in_client:
            return None
        # NOTE(mcp): client_capabilities also holds what a 2026-07-28 client declares in its
        # request envelope (client_params may then be None). Such a connection takes no
        # server requests: elicit_form fails, and the plan waits (below).
        caps = ctx.session.client_capabilities
        if caps is None or caps.elicitation is None:
            return None
        try:
            answer = await ctx.session.elicit_form(
                f"Allow this action? {summary}", {"type": "object", "properties": {}}
            )
        except Exception as exc:  # noqa: BLE001 - the client could not ask: confirm elsewhere
            log.warning("elicitation failed for %s: %s", plan_id, exc)
            return None
        return None if answer.action == "cancel" else answer.action

    async def _confirm(self, ctx: Any, rec: PlanRecord) -> PlanRecord:
        spec = self.proctor.gateway.catalog.get(rec.steps[0].action)
        what = spec.describe(rec.steps[0].params) if spec else rec.steps[0].action
        answer = await self._ask(ctx, what, rec.plan_id)
        if answer is None:
            return rec
        if answer == "accept":
            confirm = functools.partial(
                self.proctor.confirm,
                rec.plan_id,
                rec.on_behalf_of,
                comment=f"confirmed in the MCP client {_client_name(ctx)}"[:500],
            )
            return await self._governed(lambda: self._run_queued(confirm()))
        return await self._in_thread(
            functools.partial(
                self.proctor.reject,
                rec.plan_id,
                rec.on_behalf_of,
                comment=f"{answer} in the MCP client {_client_name(ctx)}"[:500],
            )
        )
