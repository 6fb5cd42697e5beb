"""The MCP governance proxy: Proctor between any MCP client and its MCP servers.

``tools/list`` is the union of the upstream servers' tools (namespaced ``server.tool`` when
names clash), annotations passed through. ``tools/call`` becomes a one-step plan: actor = the
configured agent and the client's name, action = the tool's catalog entry
(``mcp.<server>.<tool>``), params = the arguments. A tool without a catalog entry is scored
from its MCP annotations, treated as untrusted hints, with every axis high enough that the
default policy asks for approval: fail closed. Then:

- ``execute``: the call is forwarded and the upstream result returned (and audited);
- ``confirm``: the user is asked through MCP elicitation when the client supports it,
  otherwise the result is a tool error saying where to confirm;
- ``approve``: the proxy waits up to ``approval_wait`` seconds, then answers "pending
  approval <plan id>": the agent retries the same call, which finds the same plan and, once
  a human approved it (in any process), runs it here;
- ``deny``: a tool error with the reasons.

Resources, prompts, completions and pings are passed through to the upstream that has them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio
import mcp_types as types
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.lowlevel import Server

from proctor._library import Proctor
from proctor.core.assessment import Scores
from proctor.core.catalog import ActionSpec
from proctor.core.lifecycle import PlanRecord, PlanStatus
from proctor.errors import ConfigError

__all__ = ["McpProxy", "UpstreamConfig", "load_config"]

_BAD = re.compile(r"[^a-z0-9_]+")
_WAITING = (PlanStatus.AWAITING_APPROVAL, PlanStatus.AWAITING_CONFIRMATION, PlanStatus.RUNNING)


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """One entry of ``mcpServers``: a command to launch (stdio) or a URL (streamable HTTP)."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    url: str | None = None


def load_config(doc: Mapping[str, Any]) -> list[UpstreamConfig]:
    """Read the usual ``{"mcpServers": {name: {command, args, env} | {url}}}`` shape.

    Raises:
        ConfigError: naming the server and key at fault.
    """
    servers = doc.get("mcpServers")
    if not isinstance(servers, dict) or not servers:
        raise ConfigError("the config needs mcpServers: {name: {...}}", field="mcpServers")
    out = []
    for name, s in servers.items():
        where = f"mcpServers.{name}"
        if not isinstance(s, dict):
            raise ConfigError(f"{where} must be an object", field=where)
        if ("command" in s) == ("url" in s):
            raise ConfigError(f"{where} needs either command or url", field=where)
        args = s.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ConfigError(f"{where}.args must be a list of strings", field=f"{where}.args")
        env = s.get("env")
        if env is not None and not isinstance(env, dict):
            raise ConfigError(f"{where}.env must be an object", field=f"{where}.env")
        out.append(
            UpstreamConfig(
                name=name, command=s.get("command"), args=tuple(args), env=env, url=s.get("url")
            )
        )
    return out


def _slug(text: str) -> str:
    return _BAD.sub("_", text.lower()).strip("_") or "x"


def _spec_from_annotations(name: str, tool: types.Tool) -> ActionSpec:
    """A catalog entry for a tool nobody declared: high scores, so the default asks approval.

    The hints are untrusted: a read-only hint lowers risk to 3, never below; nothing else
    lowers anything.
    """
    a = tool.annotations
    read_only = bool(a and a.read_only_hint)
    risk = 3 if read_only else 5
    return ActionSpec(
        name=name,
        summary=f"MCP tool {tool.name}"
        + (f": {tool.description[:120]}" if tool.description else ""),
        params_schema={"type": "object"},
        category="read" if read_only else "general",
        baselines=Scores(risk=risk, auditability=4, ux=4, recovery=4, cost=4),
        idempotent=bool(a and a.idempotent_hint and read_only),
    )


def _result_doc(result: types.CallToolResult) -> dict[str, Any]:
    doc: dict[str, Any] = result.model_dump(mode="json", exclude_none=True)
    return doc


def _text_error(message: str) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=message)], is_error=True
    )


class McpProxy:
    """Governs the tool calls of MCP clients on their way to upstream MCP servers.

    Args:
        proctor: The instance whose catalog, policy, approvals and audit log apply.
        upstreams: The servers to front.
        agent_id: The agent identity plans are submitted as.
        on_behalf_of: The user the agent acts for.
        approval_wait: Seconds a call waits for an approval before answering "pending".
        namespace: Always name tools ``server.tool`` (else only when names clash).
    """

    def __init__(
        self,
        proctor: Proctor,
        upstreams: list[UpstreamConfig],
        *,
        agent_id: str = "mcp-agent",
        on_behalf_of: str = "mcp-user",
        approval_wait: float = 0.0,
        namespace: bool = False,
    ) -> None:
        self.proctor = proctor
        self.upstreams = upstreams
        self.agent_id = agent_id
        self.on_behalf_of = on_behalf_of
        self.approval_wait = approval_wait
        self.namespace = namespace
        self.sessions: dict[str, ClientSession] = {}
        self.clients: set[Any] = set()  # downstream sessions seen, for forwarded notifications
        self._declared: dict[str, ActionSpec | None] = {}
        self.tools: dict[str, tuple[str, types.Tool]] = {}  # exposed name -> (server, tool)
        gw = proctor.gateway
        gw.options = dataclasses.replace(gw.options, runners=gw.options.runners | {"mcp"})

    # ------------------------------------------------------------------ upstreams

    async def connect(self, stack: AsyncExitStack) -> None:
        """Start every upstream and learn its tools."""
        for up in self.upstreams:
            if up.command is not None:
                params = StdioServerParameters(
                    command=up.command, args=list(up.args), env={**os.environ, **(up.env or {})}
                )
                read, write = await stack.enter_async_context(stdio_client(params))
            else:
                assert up.url is not None
                read, write, *_ = await stack.enter_async_context(streamable_http_client(up.url))
            session = await stack.enter_async_context(
                ClientSession(
                    read,
                    write,
                    logging_callback=self._on_log,
                    message_handler=self._on_message,
                )
            )
            await session.initialize()
            self.sessions[up.name] = session
        await self.refresh_tools()

    async def _on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        """Pass an upstream's log message on to the clients."""
        for client in list(self.clients):
            try:
                await client.send_log_message(params.level, params.data, params.logger)
            except Exception:  # noqa: BLE001 - a client that went away
                self.clients.discard(client)

    async def _on_message(self, message: Any) -> None:
        """Pass list-changed notifications on (re-reading the tools first)."""
        if isinstance(message, Exception):
            return
        kind = type(getattr(message, "root", message))
        if kind is types.ToolListChangedNotification:
            await self.refresh_tools()
            send = "send_tool_list_changed"
        elif kind is types.ResourceListChangedNotification:
            send = "send_resource_list_changed"
        elif kind is types.PromptListChangedNotification:
            send = "send_prompt_list_changed"
        else:
            return
        for client in list(self.clients):
            try:
                await getattr(client, send)()
            except Exception:  # noqa: BLE001 - a client that went away
                self.clients.discard(client)

    def _seen(self, ctx: Any) -> None:
        if len(self.clients) > 1000:
            self.clients.clear()  # bounded: clients are re-added on their next request
        self.clients.add(ctx.session)

    async def refresh_tools(self) -> None:
        """Re-read the upstream tools and register them as catalog actions."""
        listed: list[tuple[str, types.Tool]] = []
        for name, session in self.sessions.items():
            listed += [(name, t) for t in (await session.list_tools()).tools]
        counts: dict[str, int] = {}
        for _, t in listed:
            counts[t.name] = counts.get(t.name, 0) + 1
        self.tools = {}
        for server, t in listed:
            exposed = f"{server}.{t.name}" if self.namespace or counts[t.name] > 1 else t.name
            self.tools[exposed] = (server, t)
            self._register(server, t)

    def _action(self, server: str, tool: str) -> str:
        return f"mcp.{_slug(server)}.{_slug(tool)}"

    def _register(self, server: str, tool: types.Tool) -> None:
        name = self._action(server, tool.name)
        catalog = self.proctor.gateway.catalog
        handler = f"{name}:handler"
        self.proctor._tools.register(handler, functools.partial(self._forward, server, tool.name))
        if name not in self._declared:
            # What the catalog files say, remembered before the first registration replaces
            # it: a later tools/list_changed must not lose the declared category or masks.
            found = catalog.get(name)
            self._declared[name] = found if found is not None and found.handler is None else None
        base = self._declared[name] or _spec_from_annotations(name, tool)
        catalog.add(dataclasses.replace(base, handler=handler, runner="mcp"), replace=True)

    def _forward(self, server: str, tool: str, params: dict[str, Any], call: Any) -> dict[str, Any]:
        """The action's handler: call the upstream (from the gateway's worker thread)."""
        session = self.sessions[server]
        spec = self.proctor.gateway.catalog.get(self._action(server, tool))
        limit = (spec.timeout if spec and spec.timeout else None) or self._step_timeout()

        async def invoke() -> types.CallToolResult:
            # A hung upstream must not hold the client forever: the call fails, the step
            # is recorded failed (or unknown), and the proxy stays up.
            with anyio.fail_after(limit):
                return await session.call_tool(tool, params)

        result = anyio.from_thread.run(invoke)
        if result.is_error:
            text = " ".join(c.text for c in result.content if isinstance(c, types.TextContent))
            raise RuntimeError(f"the upstream tool failed: {text[:400]}")
        return _result_doc(result)

    def _step_timeout(self) -> float:
        timeout = self.proctor.gateway.options.step_timeout
        return float(timeout) if timeout else 300.0

    # ------------------------------------------------------------------ the server

    def server(self) -> Server[Any]:
        """The MCP server clients talk to."""
        return Server(
            "proctor-mcp",
            version="1",
            instructions="Every tool call is governed by Proctor: it may need a human's "
            "confirmation or approval, or be denied with reasons.",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_resources=self._pass("list_resources", "resources"),
            on_read_resource=self._read_resource,
            on_list_resource_templates=self._pass(
                "list_resource_templates", "resource_templates", capability="resources"
            ),
            on_subscribe_resource=self._subscribe,
            on_list_prompts=self._pass("list_prompts", "prompts"),
            on_get_prompt=self._get_prompt,
            on_completion=self._complete,
        )

    async def _list_tools(self, ctx: Any, params: Any) -> types.ListToolsResult:
        self._seen(ctx)
        tools = [t.model_copy(update={"name": exposed}) for exposed, (_, t) in self.tools.items()]
        return types.ListToolsResult(tools=tools)

    def _pass(self, method: str, field: str, *, capability: str | None = None) -> Any:
        """A list request answered with the union of the upstreams' answers."""
        empty = {
            "resources": types.ListResourcesResult,
            "prompts": types.ListPromptsResult,
            "resource_templates": types.ListResourceTemplatesResult,
        }[field]

        async def handler(ctx: Any, params: Any) -> Any:
            merged: list[Any] = []
            result: Any = None
            for session in self._having(capability or field):
                result = await getattr(session, method)()
                merged += getattr(result, field)
            if result is None:
                return empty(**{field: []})
            return result.model_copy(update={field: merged})

        return handler

    def _having(self, capability: str) -> list[ClientSession]:
        out = []
        for session in self.sessions.values():
            caps = session.server_capabilities
            if caps is not None and getattr(caps, capability, None) is not None:
                out.append(session)
        return out

    async def _subscribe(self, ctx: Any, params: types.SubscribeRequestParams) -> Any:
        for session in self._having("resources"):
            caps = session.server_capabilities
            if caps is not None and caps.resources is not None and caps.resources.subscribe:
                return await session.subscribe_resource(params.uri)
        raise ValueError(f"no upstream supports subscribing to {params.uri}")

    async def _complete(self, ctx: Any, params: types.CompleteRequestParams) -> Any:
        argument = {"name": params.argument.name, "value": params.argument.value}
        context = dict(params.context.arguments or {}) if params.context else None
        last: Exception | None = None
        for session in self._having("completions"):
            try:
                return await session.complete(params.ref, argument, context)
            except Exception as exc:  # noqa: BLE001 - try the next upstream
                last = exc
        if last is not None:
            raise last
        return types.CompleteResult(completion=types.Completion(values=[]))

    async def _read_resource(self, ctx: Any, params: types.ReadResourceRequestParams) -> Any:
        last: Exception | None = None
        for session in self.sessions.values():
            caps = session.server_capabilities
            if caps is None or caps.resources is None:
                continue
            try:
                return await session.read_resource(params.uri)
            except Exception as exc:  # noqa: BLE001 - try the next upstream
                last = exc
        raise ValueError(f"no upstream has resource {params.uri}") from last

    async def _get_prompt(self, ctx: Any, params: types.GetPromptRequestParams) -> Any:
        for session in self.sessions.values():
            caps = session.server_capabilities
            if caps is None or caps.prompts is None:
                continue
            names = [p.name for p in (await session.list_prompts()).prompts]
            if params.name in names:
                return await session.get_prompt(params.name, params.arguments)
        raise ValueError(f"unknown prompt {params.name!r}")

    # ------------------------------------------------------------------ governed calls

    def _plan(self, client: str, server: str, tool: str, args: Mapping[str, Any]) -> dict[str, Any]:
        action = self._action(server, tool)
        key = json.dumps([self.agent_id, client, action, args], sort_keys=True, default=str)
        plan_id = "mcp-" + hashlib.sha256(key.encode()).hexdigest()[:24]
        existing = self.proctor.gateway.store.get_plan(plan_id)
        if existing is not None and existing.status not in _WAITING:
            plan_id = f"mcp-{os.urandom(12).hex()}"  # a new call, not a retry
        return {
            "plan_id": plan_id,
            "actor": {
                "type": "agent",
                "name": f"{self.agent_id} via {client}"[:200],
                "model_version": client[:200] or "unknown",
                "agent_id": self.agent_id,
            },
            "on_behalf_of": self.on_behalf_of,
            "intent": f"MCP tools/call {tool}",
            "steps": [{"id": "s1", "action": action, "params": dict(args)}],
        }

    async def _call_tool(
        self, ctx: Any, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        found = self.tools.get(params.name)
        if found is None:
            return _text_error(f"unknown tool {params.name!r}")
        server, tool = found
        info = ctx.session.client_params.client_info if ctx.session.client_params else None
        client = f"{info.name} {info.version}" if info else "mcp-client"
        manifest = self._plan(client, server, tool.name, params.arguments or {})
        meta: Mapping[str, Any] = params.meta if isinstance(params.meta, Mapping) else {}
        value = meta.get("traceparent")
        traceparent = value if isinstance(value, str) else None
        submit = functools.partial(self.proctor.submit, manifest, traceparent=traceparent)
        try:
            rec: PlanRecord = await anyio.to_thread.run_sync(submit)
        except Exception as exc:  # noqa: BLE001 - a bad call is a tool error, not a crash
            return _text_error(f"refused: {exc}")
        return await self._settle(ctx, rec)

    async def _settle(self, ctx: Any, rec: PlanRecord) -> types.CallToolResult:
        gw = self.proctor.gateway
        if rec.status is PlanStatus.AWAITING_CONFIRMATION:
            rec = await self._confirm(ctx, rec)
        deadline = anyio.current_time() + self.approval_wait
        while rec.status is PlanStatus.AWAITING_APPROVAL and anyio.current_time() < deadline:
            await anyio.sleep(0.2)
            rec = await anyio.to_thread.run_sync(gw.get, rec.plan_id)
        if rec.status is PlanStatus.RUNNING:
            resumed = await anyio.to_thread.run_sync(gw.executor.resume, rec.plan_id)
            if resumed is None:
                resumed = await anyio.to_thread.run_sync(gw.get, rec.plan_id)
            rec = resumed
        if rec.status is PlanStatus.SUCCEEDED:
            return types.CallToolResult.model_validate(rec.steps[0].result)
        reasons = "; ".join(
            [
                *rec.decision["plan_reasons"],
                *(r for s in rec.decision["steps"] for r in s["reasons"]),
            ]
        )
        if rec.status is PlanStatus.AWAITING_APPROVAL:
            return _text_error(
                f"pending approval {rec.plan_id}: {reasons}. Ask an approver "
                f"(`proctor approve {rec.plan_id}`), then call the tool again with the same "
                "arguments."
            )
        if rec.status is PlanStatus.AWAITING_CONFIRMATION:
            return _text_error(
                f"needs confirmation {rec.plan_id}: confirm with `proctor confirm {rec.plan_id}` "
                "(or in the console), then call the tool again with the same arguments."
            )
        if rec.status is PlanStatus.DENIED:
            return _text_error(f"denied by policy: {reasons}")
        return _text_error(f"the call {rec.status.value}: {rec.error or reasons}")

    async def _confirm(self, ctx: Any, rec: PlanRecord) -> PlanRecord:
        caps = ctx.session.client_params.capabilities if ctx.session.client_params else None
        if caps is None or caps.elicitation is None:
            return rec
        spec = self.proctor.gateway.catalog.get(rec.steps[0].action)
        what = spec.describe(rec.steps[0].params) if spec else rec.steps[0].action
        answer = await ctx.session.elicit_form(
            f"Allow this action? {what}",
            {"type": "object", "properties": {}},
        )
        if answer.action == "accept":
            return await anyio.to_thread.run_sync(
                functools.partial(
                    self.proctor.confirm,
                    rec.plan_id,
                    rec.on_behalf_of,
                    comment="confirmed in the MCP client",
                )
            )
        return await anyio.to_thread.run_sync(
            functools.partial(
                self.proctor.reject,
                rec.plan_id,
                rec.on_behalf_of,
                comment=f"{answer.action} in the MCP client",
            )
        )
