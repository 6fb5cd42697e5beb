"""The MCP proxy governed through a running ``proctor serve`` (``proctor mcp --server URL``).

Everything but governance is the local proxy's (``proctor.mcp.proxy``): the upstream
connections, tools/list, the pass-through of resources, prompts, logging and the rest. A
``tools/call`` goes to the server (``/v1/mcp``, ``proctor.http.routes_mcp``):

1. ``POST /v1/mcp/calls`` submits the call as a one-step plan (the same plan id, manifest
   and catalog action as a local proxy's); the server validates, scores, decides, audits;
2. ``confirm``: with a user token (``--user-token``, a principal named ``--user`` holding
   the ``user`` role, checked with ``GET /v1/me``), the user is asked through MCP
   elicitation when the client supports it and the answer is sent as ``confirm`` or
   ``reject`` with that token. The agent's token never confirms: the server refuses a plan's
   agent as its confirmer (``check_not_requester``). Without a user token the user is not
   asked here (an "allow" the proxy could not relay would mislead): the call answers "needs
   confirmation" and the user confirms in the console or with ``proctor confirm``;
   ``approve``: the proxy long-polls ``GET /v1/plans/{id}?wait=`` for up to
   ``--approval-wait`` seconds;
3. a plan the server routed to ``execute`` (or that was confirmed or approved) is running
   and queued for the runner ``mcp``. One cleared while the call waited is first handed over
   (``POST /v1/mcp/plans/{id}/start``: checked again, and off its start-by timer, so it
   cannot expire while the call is made); ``/calls`` hands over a retry's queued plan
   itself. Then this proxy forwards the call upstream, then reports
   the result — masked as configured, here, so a masked value never leaves the proxy — or
   the error with ``POST /v1/mcp/plans/{id}/outcome``. The server records ``step.started``
   and ``step.succeeded`` (or ``step.failed``) and finishes the plan: the audit log on the
   server shows the plan, the decision and the outcome. The server waits for that report
   until the plan's report-by (the call's ``timeout`` plus ``[execution]
   report_grace_seconds``): a proxy that died (or lost the network) in between leaves the
   plan ``needs_attention``, and a report that comes later is refused (409); this proxy
   then logs what the upstream answered and how to resolve the plan, and still gives the
   client the upstream's result.

Fail closed: when the server cannot be reached or answers an error, the client gets a tool
error and nothing is forwarded. Once a call was forwarded its result is the client's even
if the report cannot be delivered (the action happened; hiding it would invite a second
one): the report is retried, and kept for the same call's retry, which re-sends it instead
of calling the upstream again.

NOTE(mcp): two proxies of the same agent and client making the same call at the same
moment could both forward it (the server does not lease a plan to a proxy before its
report). One proxy runs identical concurrent calls once.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections import OrderedDict
from contextlib import AsyncExitStack
from typing import Any

import anyio
import httpx
import mcp_types as types
import orjson
from mcp.shared.exceptions import MCPError

from proctor.client import error_from_response
from proctor.core.approvals import user_key
from proctor.core.plans import idempotency_key
from proctor.core.ports import ToolCall
from proctor.errors import ConfigError, ConflictError, ProctorError, StorageError
from proctor.mcp.calls import _client_name, _Flight, _flight_of, _Group, _key_of
from proctor.mcp.config import UpstreamConfig
from proctor.mcp.errors import TOOL_ERROR_PREFIX, tool_error, tool_error_text
from proctor.mcp.governance import action_name
from proctor.mcp.proxy import McpProxy
from proctor.tools.mcp import audit_document, text_of

__all__ = ["RemoteMcpProxy", "ServerUnreachableError"]

log = logging.getLogger("proctor.mcp")

_MAX_WAIT = 60.0  # the API's longest long-poll
_REPORT_BACKOFF = (0.2, 1.0)  # retries of an outcome report before it is kept for later
_MAX_UNREPORTED = 1000
_MAX_RESULT = 64 * 1024  # as proctor.app's bounded(): the log keeps a result this big


class ServerUnreachableError(StorageError):
    """The Proctor server did not answer (refused, timed out, reset)."""


class _Api:
    """The requests a remote proxy makes, over one pooled connection."""

    def __init__(self, url: str, token: str | None, *, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        headers = {"User-Agent": "proctor-mcp/1", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send one request; return its JSON.

        Raises:
            ServerUnreachableError: no answer.
            ProctorError: the error the server answered (by its ``code``).
        """
        kw: dict[str, Any] = {"params": params, "timeout": timeout or self.timeout}
        if body is not None:
            kw["content"] = orjson.dumps(body)
            kw["headers"] = {**(headers or {}), "Content-Type": "application/json"}
        elif headers:
            kw["headers"] = headers
        try:
            response = await self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise ServerUnreachableError(
                f"Proctor at {self.url} cannot be reached: {type(exc).__name__}: {exc}",
                hint="Is `proctor serve` running there? Check --server (or PROCTOR_SERVER).",
            ) from exc
        if not response.is_success:
            raise error_from_response(response.status_code, response.content)
        return orjson.loads(response.content)

    async def get(self, plan_id: str, *, wait: float = 0.0) -> dict[str, Any]:
        w = min(max(wait, 0.0), _MAX_WAIT)
        params = {"wait": w} if w > 0 else None
        doc: dict[str, Any] = await self.send(
            "GET", f"/v1/plans/{plan_id}", params=params, timeout=self.timeout + w
        )
        return doc


class RemoteMcpProxy(McpProxy):
    """An MCP proxy whose catalog, policy, approvals and audit log are a server's.

    Args:
        server_url: Where ``proctor serve`` listens (``http://HOST:PORT``).
        token: The proxy's API token: an agent named ``agent_id``.
        upstreams: The servers to front.
        agent_id: The agent identity plans are submitted as (the token's name).
        on_behalf_of: The user the agent acts for (who confirms).
        user_token: The user's own API token (a principal named ``on_behalf_of`` with the
            ``user`` role), with which the answers given in the client's elicitation form are
            sent. None: the proxy does not ask in the client; confirmations are given in the
            console or with ``proctor confirm``.
        approval_wait: Seconds a call waits for an approval before answering "pending".
        namespace: Always name tools ``server.tool`` (else only when names clash).
        console_url: Where humans confirm and approve (default the server's URL).
        connect_timeout: Seconds an upstream may take to start and initialize.
        call_timeout: Seconds an upstream call may take when the server names no limit.
        request_timeout: Seconds a request to the server may take (long polls add theirs).
        passthrough_timeout: See ``McpProxy``.
        confirm_in_client: See ``McpProxy``.
    """

    # The server names a tool's action from its server and tool names alone: tools whose
    # names would share one are refused (not listed) rather than governed as each other.
    _refuse_clashes = True

    def __init__(
        self,
        server_url: str,
        token: str | None,
        upstreams: list[UpstreamConfig],
        *,
        agent_id: str = "mcp-agent",
        on_behalf_of: str = "mcp-user",
        user_token: str | None = None,
        approval_wait: float = 0.0,
        namespace: bool = False,
        console_url: str | None = None,
        connect_timeout: float = 30.0,
        call_timeout: float = 300.0,
        request_timeout: float = 10.0,
        passthrough_timeout: float = 5.0,
        confirm_in_client: bool = True,
    ) -> None:
        self._setup(
            upstreams,
            agent_id=agent_id,
            on_behalf_of=on_behalf_of,
            approval_wait=approval_wait,
            namespace=namespace,
            console_url=console_url or server_url.rstrip("/"),
            connect_timeout=connect_timeout,
            confirm_in_client=confirm_in_client,
            passthrough_timeout=passthrough_timeout,
        )
        self.api = _Api(server_url, token, timeout=request_timeout)
        # The user's credential, apart from the agent's: the server refuses a plan's agent as
        # its confirmer, so a confirmation relayed from the client is the user's own.
        self.user_api = (
            _Api(server_url, user_token, timeout=request_timeout) if user_token else None
        )
        self._user_checked = False
        self.call_timeout = call_timeout
        self._docs: dict[tuple[str, str], dict[str, Any]] = {}  # (server, tool) -> its doc
        self._timeouts: dict[tuple[str, str], float] = {}  # (server, tool) -> the server's
        # Forwarded calls whose outcome the server has not recorded yet: plan id -> (the
        # upstream's result, the report). A retry of the call re-sends the report.
        self._unreported: OrderedDict[str, tuple[types.CallToolResult | None, dict[str, Any]]]
        self._unreported = OrderedDict()

    # ------------------------------------------------------------------ setup

    async def connect(self, stack: AsyncExitStack) -> None:
        """Check the user token; start every upstream and learn its tools.

        Raises:
            ConfigError: an upstream did not start, or the server says the user token is
                not ``on_behalf_of``'s.
        """
        stack.push_async_callback(self.api.aclose)
        if self.user_api is not None:
            stack.push_async_callback(self.user_api.aclose)
        await self._check_user()  # before the upstreams start: a wrong token stops here
        await super().connect(stack)
        try:
            await self.api.send("GET", "/healthz")
        except ProctorError as exc:
            # Not fatal: every call fails closed until the server answers.
            log.warning("%s; tool calls fail until it answers", exc.message)

    async def _check_user(self) -> bool:
        """Check that the user token is ``on_behalf_of``'s, with the ``user`` role.

        Returns:
            Whether confirmations may be relayed with it: False without a user token, or
            while the server cannot say (checked again before the next relay).

        Raises:
            ConfigError: the server refused the token, or it names someone else.
        """
        if self.user_api is None:
            return False
        if self._user_checked:
            return True
        try:
            me = await self.user_api.send("GET", "/v1/me")
        except ProctorError as exc:
            if isinstance(exc, ServerUnreachableError) or (exc.details.get("status") or 0) >= 500:
                log.warning("cannot check --user-token yet: %s", exc.message)
                return False
            raise ConfigError(
                f"--user-token was refused by {self.user_api.url}: {exc.message}",
                field="user_token",
                hint=f"Give a token of the user {self.on_behalf_of!r} (`proctor tokens create"
                f" --name {self.on_behalf_of} --role user`); the server must serve GET /v1/me.",
            ) from exc
        name, roles = me.get("name"), me.get("roles") or []
        # The server decides "is this the user" by user_key: a token spelt
        # ``bob@example.com`` confirms for ``--user Bob@Example.com``.
        if (
            not isinstance(name, str)
            or user_key(name) != user_key(self.on_behalf_of)
            or "user" not in roles
        ):
            raise ConfigError(
                f"--user-token is {name!r} with roles {', '.join(map(str, roles)) or 'none'},"
                f" not the user {self.on_behalf_of!r} with the user role",
                field="user_token",
                hint="The confirmations relayed from the client are sent with it: it must be"
                " the token of --user, a separate person from --agent.",
            )
        self._user_checked = True
        return True

    def _start(self) -> None:
        """Nothing runs in another thread here: the governance is a server's."""

    def _register(self, server: str, tool: types.Tool, name: str | None = None) -> None:
        """Keep the tool's description for the server (which makes it a catalog action)."""
        doc: dict[str, Any] = {"name": tool.name, "inputSchema": tool.input_schema}
        if tool.description:
            doc["description"] = tool.description
        if tool.annotations is not None:
            doc["annotations"] = tool.annotations.model_dump(
                mode="json", by_alias=True, exclude_none=True
            )
        self._docs[(server, tool.name)] = doc

    def _call_timeout(self, server: str, tool: str) -> float:
        """The server's limit for this action (its timeout, else the step timeout)."""
        return self._timeouts.get((server, tool), self.call_timeout)

    async def _hidden(self) -> set[str]:
        """Ask the server which actions this agent may not use at all (and register all)."""
        body = {
            "agent_id": self.agent_id,
            "tools": [
                {"server": server, "tool": self._docs[(server, t.name)]}
                for server, t in self.tools.values()
            ],
        }
        try:
            doc = await self.api.send("POST", "/v1/mcp/tools", body=body)
        except ProctorError as exc:
            # Listing is no permission: every call is still decided by the server, and fails
            # closed while it cannot be reached. The list is complete meanwhile.
            log.warning("cannot ask %s which tools are hidden: %s", self.api.url, exc.message)
            return set()
        return {a for a in doc.get("hidden", []) if isinstance(a, str)}

    # ------------------------------------------------------------------ governed calls

    async def _call_tool(
        self, ctx: Any, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        self._seen(ctx)
        client = _client_name(ctx)
        found = self.tools.get(params.name)
        if found is None:
            await self._audit_unknown_remote(params.name, client)
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")
        server, tool = found
        arguments = dict(params.arguments or {})
        flight, traceparent = _flight_of(ctx, params)
        body = {
            "agent_id": self.agent_id,
            "client": client[:200] or "mcp-client",
            "on_behalf_of": self.on_behalf_of,
            "server": server,
            "tool": self._docs[(server, tool.name)],
            "arguments": arguments,
        }
        try:
            plan = await self.api.send(
                "POST",
                "/v1/mcp/calls",
                body=body,
                headers={"traceparent": traceparent} if traceparent else None,
            )
            summary = plan.get("summary") or f"MCP tool {tool.name}"
            limit = plan.get("timeout")
            if isinstance(limit, (int, float)) and limit > 0:
                self._timeouts[(server, tool.name)] = float(limit)
            answered = plan
            plan, note = await self._settle_remote(ctx, plan, summary)
            if note is not None:
                return tool_error(note)
            raw: types.CallToolResult | None = None
            if _queued(plan) and not _queued(answered):
                # Queued while the call waited (confirmed here, approved during the poll):
                # queued plans have a start-by time, and a timer that expired this one while
                # the upstream call runs would refuse its outcome (a call made, no record).
                # The server hands it over first, or says it expired (or a guard holds it).
                plan = await self.api.send(
                    "POST",
                    f"/v1/mcp/plans/{plan['plan_id']}/start",
                    body={"step_id": plan["steps"][0]["id"]},
                )
            if _queued(plan):
                plan, raw = await self._run_here(
                    plan, server, tool.name, arguments, flight, traceparent
                )
        except ProctorError as exc:
            # Refused, or the server is not answering: nothing was forwarded.
            return tool_error(_refusal(exc))
        return self._answer_remote(plan, raw)

    async def _audit_unknown_remote(self, name: str, client: str) -> None:
        """Record a call to a tool nobody offers: the server rejects and audits the plan."""
        doc = {
            "actor": {
                "type": "agent",
                "name": f"{self.agent_id} via {client}"[:200],
                "model_version": client[:200] or "unknown",
                "agent_id": self.agent_id,
            },
            "on_behalf_of": self.on_behalf_of,
            "intent": f"MCP tools/call {name[:200]}",
            "steps": [
                {
                    "id": "s1",
                    # Never a catalog action (see McpProxy._audit_unknown).
                    "action": "mcp.not-listed." + action_name("x", name[:200]).split(".", 2)[2],
                    "params": {},
                }
            ],
        }
        try:
            await self.api.send("POST", "/v1/plans", body=doc)
        except ProctorError as exc:
            if exc.code != "invalid_request":
                log.warning("could not audit a call to unknown tool %r: %s", name, exc.message)

    async def _settle_remote(
        self, ctx: Any, plan: dict[str, Any], summary: str
    ) -> tuple[dict[str, Any], str | None]:
        """Ask the user to confirm, or wait for an approval, as configured."""
        if plan["status"] == "awaiting_confirmation":
            plan, note = await self._confirm_remote(ctx, plan, summary)
            if note is not None:
                return plan, note
        deadline = anyio.current_time() + self.approval_wait
        while plan["status"] == "awaiting_approval":
            left = deadline - anyio.current_time()
            if left <= 0:
                break
            plan = await self.api.get(plan["plan_id"], wait=left)
        # Started by an outcome report in progress (this step is recorded in a moment):
        # wait for its end rather than answer "running".
        deadline = anyio.current_time() + self.call_timeout + 5.0
        while plan["status"] == "running" and not _queued(plan):
            left = deadline - anyio.current_time()
            if left <= 0:
                break
            plan = await self.api.get(plan["plan_id"], wait=min(left, 5.0))
        return plan, None

    async def _confirm_remote(
        self, ctx: Any, plan: dict[str, Any], summary: str
    ) -> tuple[dict[str, Any], str | None]:
        plan_id = plan["plan_id"]
        try:
            relay = await self._check_user()
        except ConfigError as exc:  # a token changed or revoked since the start
            log.error("not relaying the confirmation of %s: %s", plan_id, exc.message)
            relay = False
        if not relay or self.user_api is None:
            # Only the user's own token may answer for her: without it the proxy does not
            # ask (an "allow" it could not relay would mislead); "needs confirmation".
            return plan, None
        answer = await self._ask(ctx, summary, plan_id)
        if answer is None:
            return plan, None
        if answer == "accept":
            try:
                return await self.user_api.send(
                    "POST",
                    f"/v1/plans/{plan_id}/confirm",
                    body={"comment": f"confirmed in the MCP client {_client_name(ctx)}"[:500]},
                ), None
            except ProctorError as exc:
                log.warning("cannot confirm %s with --user-token: %s", plan_id, exc.message)
                return plan, None
        try:
            rejected: dict[str, Any] = await self.user_api.send(
                "POST",
                f"/v1/plans/{plan_id}/reject",
                body={"comment": f"{answer} in the MCP client {_client_name(ctx)}"[:500]},
            )
            return rejected, None
        except ProctorError as exc:
            log.warning("cannot reject %s with --user-token: %s", plan_id, exc.message)
            return plan, (
                f"declined in the MCP client: not run ({plan_id} waits for a confirmation "
                "until it expires)"
            )

    async def _run_here(
        self,
        plan: dict[str, Any],
        server: str,
        tool: str,
        arguments: dict[str, Any],
        flight: _Flight,
        traceparent: str | None,
    ) -> tuple[dict[str, Any], types.CallToolResult | None]:
        """Forward a plan the server queued for this proxy, then report its outcome.

        The report carries the call's ``traceparent``: the step's events, which the server
        records then, join the agent's trace as the plan's submission did.
        """
        plan_id = plan["plan_id"]
        step_id = plan["steps"][0]["id"]
        kept = self._unreported.pop(plan_id, None)
        if kept is not None:  # forwarded before, never recorded: report, do not call again
            reported = await self._report(plan_id, step_id, kept[1], kept[0], traceparent)
            return reported or plan, kept[0]
        # Identical calls at the same moment share the forward (and its report): it runs in
        # a task of its own, which each awaits; a client's cancellation ends its own wait,
        # and the forward's only when no other request waits for it (_Group.cancel).
        key = _key_of(plan_id)
        group = self._join(key, flight)
        try:
            run = group.runs.get(plan_id)
            if run is None:
                forward = functools.partial(
                    self._forward_here, plan, server, tool, arguments, group, traceparent
                )
                run = group.runs[plan_id] = self._share(forward, group)
            try:
                done: tuple[dict[str, Any], types.CallToolResult | None]
                done = await asyncio.shield(run)
            except anyio.get_cancelled_exc_class():
                group.cancel(flight)
                raise
            return done
        finally:
            self._leave(key, group, flight)

    async def _forward_here(
        self,
        plan: dict[str, Any],
        server: str,
        tool: str,
        arguments: dict[str, Any],
        group: _Group,
        traceparent: str | None,
    ) -> tuple[dict[str, Any], types.CallToolResult | None]:
        """Forward the call of a queued plan for the requests of ``group``; report it."""
        plan_id = plan["plan_id"]
        step_id = plan["steps"][0]["id"]
        call = ToolCall(
            plan_id=plan_id,
            step_id=step_id,
            idempotency_key=idempotency_key(plan_id, step_id),
            on_behalf_of=plan["on_behalf_of"],
            agent_id=plan["agent_id"],
        )
        raw: types.CallToolResult | None = None
        try:
            raw = await self._forward(server, tool, arguments, call, group)
        except anyio.get_cancelled_exc_class():  # the event loop is going away
            with anyio.CancelScope(shield=True):
                stopped = {"error": "cancelled: the MCP proxy stopped"}
                await self._report(plan_id, step_id, stopped, None, traceparent)
            raise
        except Exception as exc:  # noqa: BLE001 - the step failed: recorded as such
            if group.abandoned:  # every client that waited cancelled, or the proxy stops
                report: dict[str, Any] = {"error": str(exc)}
            else:
                report = {"error": f"{type(exc).__name__}: {exc}"[:4000]}
        else:
            if raw.is_error:
                report = {"error": f"the upstream tool failed: {text_of(raw)[:400]}"}
            else:
                config = self.configs.get(server)
                masks = config.mask_result if config else ()
                report = {"result": _bounded(audit_document(raw, masks))}
        with anyio.CancelScope(shield=True):
            recorded = (await self._report(plan_id, step_id, report, raw, traceparent)) or plan
        return recorded, raw

    async def _report(
        self,
        plan_id: str,
        step_id: str,
        report: dict[str, Any],
        raw: types.CallToolResult | None,
        traceparent: str | None = None,
    ) -> dict[str, Any] | None:
        """Send a forwarded call's outcome; return the plan, or None (kept for a retry)."""
        body = {"step_id": step_id, **report}
        headers = {"traceparent": traceparent} if traceparent else None
        for attempt in range(len(_REPORT_BACKOFF) + 1):
            try:
                plan: dict[str, Any] = await self.api.send(
                    "POST", f"/v1/mcp/plans/{plan_id}/outcome", body=body, headers=headers
                )
                return plan
            except ConflictError as exc:
                # Already recorded (a report whose answer was lost), or the plan moved on:
                # past its report-by it needs attention, and the report is not recorded.
                try:
                    plan = await self.api.get(plan_id)
                except ProctorError:
                    return None
                if plan.get("status") == "needs_attention":
                    self._too_late(plan_id, step_id, report, exc)
                return plan
            except ProctorError as exc:
                transient = isinstance(exc, ServerUnreachableError) or exc.code == "storage_error"
                if transient and attempt < len(_REPORT_BACKOFF):
                    await anyio.sleep(_REPORT_BACKOFF[attempt])
                    continue
                log.error(
                    "the outcome of %s could not be recorded at %s: %s",
                    plan_id,
                    self.api.url,
                    exc.message,
                )
                break
        self._unreported[plan_id] = (raw, report)
        while len(self._unreported) > _MAX_UNREPORTED:
            self._unreported.popitem(last=False)
        return None

    def _too_late(
        self, plan_id: str, step_id: str, report: dict[str, Any], exc: ConflictError
    ) -> None:
        """Say that a call's outcome came after its report-by and what a person must do.

        The server put the plan in needs_attention and refused the report; only this
        proxy knows what the upstream answered, so its log says it (never the result
        itself: it may hold what ``maskResult`` keeps from the server).
        """
        if "result" in report:
            what = "the upstream answered without an error"
        else:
            what = f"the call ended in an error ({str(report.get('error'))[:300]})"
        log.error(
            "the outcome of %s was not recorded at %s: %s; %s. Check whether it took effect "
            "upstream, then resolve it: `proctor resolve %s %s --succeeded --server %s` (or "
            "--failed)",
            plan_id,
            self.api.url,
            exc.message,
            what,
            plan_id,
            step_id,
            self.api.url,
        )

    def _answer_remote(
        self, plan: dict[str, Any], raw: types.CallToolResult | None
    ) -> types.CallToolResult:
        """The client's answer for a plan (the server's JSON) as it stands."""
        plan_id, status = plan["plan_id"], plan["status"]
        if raw is not None and (
            status in ("succeeded", "running", "needs_attention") or raw.is_error
        ):
            # The upstream's own answer, as it came ("running": forwarded, not yet recorded;
            # "needs_attention": reported too late, not recorded, but the call was made:
            # hiding its result would invite a second one).
            return raw
        if status == "succeeded":
            try:
                return types.CallToolResult.model_validate(plan["steps"][0]["result"])
            except (ValueError, TypeError, KeyError, IndexError):
                return tool_error(f"succeeded ({plan_id}); the result is in the audit log")
        reasons = _reasons(plan)
        where = f" or in the console ({self.console_url})" if self.console_url else ""
        server = f" --server {self.api.url}"
        if status == "awaiting_approval":
            return tool_error(
                f"pending approval {plan_id}: {reasons}. Ask an approver "
                f"(`proctor approve {plan_id}{server}`{where}), then call the tool again with "
                "the same arguments."
            )
        if status == "awaiting_confirmation":
            return tool_error(
                f"needs confirmation {plan_id}: {reasons}. Confirm with "
                f"`proctor confirm {plan_id}{server}`{where}, then call the tool again with "
                "the same arguments."
            )
        if status == "denied":
            return tool_error(f"denied by policy ({plan_id}): {reasons}")
        if status == "rejected":
            return tool_error(f"rejected ({plan_id}): {plan.get('error') or reasons}")
        if status == "needs_attention":
            step_id = plan["steps"][0]["id"] if plan.get("steps") else "s1"
            return tool_error(
                f"needs attention ({plan_id}): {plan.get('error') or reasons}. Whether the call "
                "took effect is unknown until a person checks and resolves it (`proctor "
                f"resolve {plan_id} {step_id} --succeeded{server}`, or `--failed`); the same "
                "call again is a new plan."
            )
        step = plan["steps"][0] if plan.get("steps") else {}
        detail = step.get("error") or plan.get("error") or reasons
        if raw is not None:
            detail = text_of(raw) or detail
        return tool_error(f"the call {status} ({plan_id}): {detail}")


def _queued(plan: dict[str, Any]) -> bool:
    """Whether the server left the plan's step for this proxy to run (running, pending)."""
    steps = plan.get("steps") or []
    return plan.get("status") == "running" and len(steps) == 1 and steps[0]["status"] == "pending"


def _reasons(plan: dict[str, Any]) -> str:
    """The plan's reasons, without the ``s1: `` the plan JSON puts before a step's."""
    return "; ".join(str(r).removeprefix("s1: ") for r in plan.get("reasons", []))


def _bounded(doc: dict[str, Any]) -> dict[str, Any]:
    """The result as the log keeps it: a big one is replaced by its size and hash.

    The server would do the same (``proctor.app`` keeps at most 64 KiB of a result), but a
    big report would not reach it: request bodies are limited (256 KiB by default).
    """
    body = orjson.dumps(doc)
    if len(body) <= _MAX_RESULT:
        return doc
    return {"truncated": True, "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def _refusal(exc: ProctorError) -> str:
    """What the client reads when the server refused the call or could not be asked."""
    if isinstance(exc, ServerUnreachableError):
        return f"failed closed: {exc.message}. The call was not forwarded."
    status = exc.details.get("status")
    if exc.code in TOOL_ERROR_PREFIX and exc.code != "storage_error" and (status or 0) < 500:
        return tool_error_text(exc)  # refused with a reason: bad arguments, not allowed, ...
    code = exc.details.get("code") or exc.code
    return (
        f"failed closed: the Proctor server answered {code}"
        + (f" (HTTP {status})" if status else "")
        + f": {exc.message}. The call was not forwarded."
    )
