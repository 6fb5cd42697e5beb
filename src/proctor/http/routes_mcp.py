"""``/v1/mcp``: what a remote ``proctor mcp --server URL`` needs from ``proctor serve``.

A remote proxy governs its clients' tool calls through this server: plans, decisions,
approvals and the audit log are the server's. The upstream MCP servers (and their sessions)
are the proxy's, so the server never runs an MCP step itself (runner ``mcp``); the proxy
forwards the call and reports what came back. Four requests, each with the agent's token:

- ``POST /v1/mcp/tools``: the proxy's upstream tools. Each becomes the catalog action
  ``mcp.<server>.<tool>`` as in a local proxy: a declared entry (catalog file, no handler)
  keeps its category, baselines, masks and timeout; an undeclared tool is scored from its
  annotations, untrusted hints, high enough to need approval. Answers the actions hidden
  from the agent (kill switches, whitelist).
- ``POST /v1/mcp/calls``: a ``tools/call`` as a one-step plan. The plan id is the call's
  stable id (``mcp-<key>-<generation>``, ``proctor.mcp.governance``), found here in one
  round trip, so a retry after an approval finds its plan. The tool's description comes
  along, so a replica that never saw ``/tools`` knows the action. Answers the plan, with
  ``summary``: the action's plain summary of the call (what the user is asked to allow),
  and ``timeout``: the seconds the upstream call may take (the action's, else the step
  timeout), which the proxy enforces. A retry that finds its plan queued (confirmed or
  approved since) gets it handed over, as ``/start`` does.
- ``POST /v1/mcp/plans/{plan_id}/start``: before the proxy forwards the call of a plan that
  became queued while the call waited (confirmed in the client, approved during the long
  poll). The plan is checked as a claim would check it (the catalog, the guards, its
  start-by time) and taken off its start-by timer: once the proxy makes the call, no timer
  may expire the plan before its outcome is recorded. Answers the plan: ``running`` (make
  the call), ``expired`` or ``failed`` (do not); 409 when a guard holds it.
- ``POST /v1/mcp/plans/{plan_id}/outcome``: after the proxy forwarded the call of a running
  plan, the upstream's result (masked by the proxy as configured) or error. The step is
  recorded under a lease like any step — ``step.started``, then ``step.succeeded`` with the
  result or ``step.failed`` with the error — and the plan finishes. Answers the plan. A
  result may not carry what only a handler in this process says (``cost``,
  ``compensation_params``: ``HANDLER_RESULT_KEYS``): the step costs its amount.

Every answer ``running`` (a call routed to execute, a retry's hand-over, ``/start``) gives
the plan a report-by (``Recovery.hand_off``): the call's ``timeout`` plus ``[execution]
report_grace_seconds``. A proxy that dies or loses the network after that answer reports
nothing and holds no lease; past its report-by the timer puts the plan in
``needs_attention`` (its step ``unknown``: the call may have been made), and an outcome
reported after it is refused with 409 (a person resolves the step).

Only the plan's own agent may take or report its outcome, only for a one-step plan of an
action with runner ``mcp``: a token cannot write results for actions the server runs itself.

Wiring (``proctor.http.app.create_app``): ``app.include_router(routes_mcp.router(ctx))``.
"""

# NOTE(http): no `from __future__ import annotations` here: FastAPI reads the route
# signatures at runtime, and the aliases they use (Caller, PlanId) are local names.

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from proctor.app.executor import Executor
from proctor.cli.render import plan_json
from proctor.core.catalog import ActionSpec
from proctor.core.lifecycle import PlanRecord, PlanStatus, StepRecord, StepStatus
from proctor.core.ports import HANDLER_RESULT_KEYS, ToolCall, Tools
from proctor.core.principals import Principal, check_readable, may_submit
from proctor.errors import ConflictError, InvalidRequestError, PermissionDeniedError
from proctor.http.context import AUTH_ERRORS, Context, TraceParent, errors_doc, json_response
from proctor.http.schemas import ID_PATTERN, PERSON_PATTERN, PlanOut
from proctor.mcp.governance import (
    action_name,
    bind_schema,
    call_key,
    current_plan_id,
    manifest,
    not_run_now,
    spec_from_hints,
)

__all__ = ["router"]

_RUNNER = "mcp"
_MAX_TOOLS = 2000  # per /tools request
_MAX_ACTIONS = 10_000  # MCP actions one server process registers


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ToolHints(BaseModel):
    """A tool's MCP annotations (untrusted hints); unknown keys are ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    read_only_hint: bool | None = Field(default=None, alias="readOnlyHint")
    idempotent_hint: bool | None = Field(default=None, alias="idempotentHint")


class ToolIn(BaseModel):
    """An upstream tool as ``tools/list`` describes it; unknown keys are ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=20_000)
    input_schema: dict[str, Any] | None = Field(default=None, alias="inputSchema")
    annotations: ToolHints | None = None


class ServerTool(_In):
    """A tool of one of the proxy's upstream servers."""

    server: str = Field(min_length=1, max_length=100)
    tool: ToolIn


class ToolsBody(_In):
    """Body of ``POST /v1/mcp/tools``."""

    agent_id: str = Field(pattern=ID_PATTERN)
    tools: list[ServerTool] = Field(max_length=_MAX_TOOLS)


class HiddenOut(BaseModel):
    """The actions not listed to the agent."""

    hidden: list[str]


class CallBody(_In):
    """Body of ``POST /v1/mcp/calls``: one ``tools/call``."""

    agent_id: str = Field(pattern=ID_PATTERN)
    client: str = Field(min_length=1, max_length=200, description="MCP client name and version.")
    on_behalf_of: str = Field(pattern=PERSON_PATTERN)
    server: str = Field(min_length=1, max_length=100)
    tool: ToolIn
    arguments: dict[str, Any] = Field(default_factory=dict)


class McpPlanOut(PlanOut):
    """The plan of a ``tools/call``, with the action's plain summary of the call."""

    summary: str | None = Field(description="What the user is asked to allow (confirm).")
    timeout: float | None = Field(description="Seconds the upstream call may take.")


class StartBody(_In):
    """Body of ``POST /v1/mcp/plans/{id}/start``: the step whose call the proxy will make."""

    step_id: str = Field(pattern=ID_PATTERN)


class OutcomeBody(_In):
    """Body of ``POST /v1/mcp/plans/{id}/outcome``: what the upstream answered."""

    step_id: str = Field(pattern=ID_PATTERN)
    result: dict[str, Any] | None = Field(
        default=None, description="The CallToolResult as the audit log keeps it (masked)."
    )
    error: str | None = Field(
        default=None,
        max_length=4000,
        description="Why the call failed (a tool error, a timeout, a lost server).",
    )


@dataclass(frozen=True, slots=True)
class _Report:
    result: dict[str, Any] | None
    error: str | None


class ReportedOutcomeError(RuntimeError):
    """The proxy reported that the upstream call failed: the step fails with its text."""


class _Reported:
    """A ``Tools`` adapter: an MCP step's handler answers what its proxy reported.

    Any other handler is the server's own (the fallback). An MCP handler without a report
    (a step that some other path tried to run) fails: the server cannot reach the upstream.
    """

    def __init__(self, fallback: Tools) -> None:
        self.fallback = fallback
        self._reports: dict[str, _Report] = {}
        self._lock = threading.Lock()

    def expect(self, key: str, report: _Report) -> None:
        with self._lock:
            self._reports[key] = report

    def forget(self, key: str) -> None:
        with self._lock:
            self._reports.pop(key, None)

    def run(self, path: str, params: Mapping[str, Any], call: ToolCall) -> Any:
        with self._lock:
            report = self._reports.pop(call.idempotency_key, None)
        if report is None:
            if path.startswith("mcp.") and path.endswith(":handler"):
                # Not retried (not a timeout or a lost connection): nothing can run it here.
                raise ReportedOutcomeError(
                    "an MCP step runs only in its proxy; none reported an outcome"
                )
            return self.fallback.run(path, params, call)
        if report.error is not None:
            raise ReportedOutcomeError(report.error)
        return report.result


class _OutcomeExecutor(Executor):
    """The executor that records reported MCP outcomes: it serves the runner ``mcp``.

    The gateway's own executor does not serve it, so it leaves MCP plans queued (running,
    no lease) and its worker never claims them; this one claims a plan only when a report
    for it is at hand. Its claim records a call the proxy already made, so no guard stops it
    (``guards_at_claim``): a kill switch engaged meanwhile cannot undo the call, and leaving
    the plan queued would let a retry of the call be forwarded again.
    """

    guards_at_claim = False
    # Nor does sandbox mode: recording the reported call runs no handler here.
    runs_handlers = False

    def runnable_here(self, record: PlanRecord) -> bool:
        """Whether every step of ``record`` is an MCP action."""
        for s in record.steps:
            spec = self.gw.catalog.get(s.action)
            if spec is None or spec.runner != _RUNNER:
                return False
        return True

    def refusal(self, step: StepRecord) -> InvalidRequestError | None:
        """None: the step's call was made already; its outcome is recorded as it happened.

        The catalog's check came before the proxy forwarded the call (``/calls``, which
        fails a queued plan the catalog now refuses, and the submission, confirmation or
        approval before it). Refusing the report now would record a call that happened as
        one that never ran.
        """
        return None


def router(ctx: Context) -> APIRouter:
    """Build the remote MCP proxy's routes over ``ctx``.

    Installs the ``Tools`` adapter that hands reported outcomes to MCP steps (the server's
    own handlers are unchanged).
    """
    r = APIRouter(prefix="/v1/mcp", tags=["mcp"])
    proctor = ctx.proctor
    gw = proctor.gateway
    store = gw.store
    reported = _Reported(gw.tools)
    gw.tools = reported
    executor = _OutcomeExecutor(gw)
    Caller = Annotated[Principal, Depends(ctx.auth)]
    PlanId = Annotated[str, Path(pattern=ID_PATTERN, description="The plan id.")]
    lock = threading.Lock()
    declared: dict[str, ActionSpec | None] = {}  # action -> its catalog file entry, if any
    built: dict[str, tuple[str, ActionSpec]] = {}  # action -> (tool digest, spec we made)

    def as_agent(p: Principal, agent_id: str) -> None:
        if not may_submit(p, agent_id):
            raise PermissionDeniedError(
                f"{p.name!r} may only act as the agent {p.name!r} (needs the agent role)",
                field="agent_id",
            )

    def register(server: str, tool: ToolIn) -> str:
        """Make ``tool`` of ``server`` the catalog action it is for a local proxy."""
        name = action_name(server, tool.name)
        doc = tool.model_dump(mode="json", by_alias=True, exclude_none=True)
        digest = hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()
        with lock:
            current = gw.catalog.get(name)
            mine = built.get(name)
            if mine is not None and mine[0] == digest and current is mine[1]:
                return name
            if name not in declared:
                if len(declared) >= _MAX_ACTIONS:
                    # Each new name is a catalog entry kept for the process's life: a token
                    # holder must not grow it without bound.
                    raise ConflictError(
                        f"this server already knows {_MAX_ACTIONS} MCP tools", field="tool.name"
                    )
                if current is not None and current.handler is not None:
                    # A Python action of this name: a proxy must never take it over (its
                    # outcomes would then be written by a token holder).
                    raise ConflictError(
                        f"action {name!r} is not an MCP tool of this server's catalog",
                        field="tool.name",
                    )
                declared[name] = current
            base = declared[name] or spec_from_hints(
                name,
                tool_name=tool.name,
                description=tool.description,
                read_only=bool(tool.annotations and tool.annotations.read_only_hint is True),
                idempotent=bool(tool.annotations and tool.annotations.idempotent_hint is True),
            )
            spec = bind_schema(base, tool.input_schema, f"{name}:handler", on_bad_schema=_ignore)
            gw.catalog.add(spec, replace=True)
            built[name] = (digest, spec)
        return name

    def hidden_for(agent_id: str, actions: set[str]) -> set[str]:
        return set() if gw.guards is None else gw.guards.hidden(agent_id, actions)

    @r.post(
        "/tools",
        response_model=HiddenOut,
        summary="Register a remote MCP proxy's upstream tools",
        responses=errors_doc(400, *AUTH_ERRORS, 409, 413),
    )
    def tools(caller: Caller, body: ToolsBody) -> Response:
        """Make each tool a catalog action; answer the actions hidden from the agent."""
        as_agent(caller, body.agent_id)
        actions = {register(t.server, t.tool) for t in body.tools}
        return json_response({"hidden": sorted(hidden_for(body.agent_id, actions))})

    def do_call(p: Principal, body: CallBody, traceparent: str | None) -> tuple[int, PlanRecord]:
        as_agent(p, body.agent_id)
        action = register(body.server, body.tool)
        key = call_key(body.agent_id, body.client, action, body.arguments)
        plan_id = current_plan_id(key, store.get_plan)
        doc = manifest(
            plan_id=plan_id,
            agent_id=body.agent_id,
            client=body.client,
            on_behalf_of=body.on_behalf_of,
            action=action,
            tool=body.tool.name,
            arguments=body.arguments,
        )
        with ctx.submit_locks.hold(plan_id):
            existed = store.get_plan(plan_id) is not None
            rec = gw.submit(doc, traceparent=traceparent, derived_id=True, principal=p.name)
        if existed:
            # A retry finds its plan queued (confirmed or approved since): hand it over.
            rec = hand_over(rec)
        elif _queued(rec):
            # Routed to execute: "running" hands the call over at once. It was validated a
            # moment ago and has no start-by, but it gets its report-by (one more write, on
            # this remote path only): a proxy that never reports must not leave it running.
            # Not fsynced: the submission's own commit was not, for an idempotent tool, and
            # the outcome's durable commit syncs both (``Recovery.hand_off``).
            spec = gw.catalog.get(rec.steps[0].action)
            durable = spec is None or not spec.idempotent
            rec = gw.executor.hand_off(plan_id, durable=durable) or rec
        return (200 if existed else 201), rec

    def hand_over(rec: PlanRecord) -> PlanRecord:
        """The plan as it stands once its queued call is the proxy's to make, if it may be.

        "Running" tells the proxy to make the call, so before that answer goes out the plan
        is checked as a claim here would check it, taken off its start-by timer and given
        its report-by (``Recovery.hand_off``).
        """
        plan_id = rec.plan_id
        if rec.status is not PlanStatus.RUNNING or rec.lease_owner is not None:
            return rec
        # The catalog as it is now (the tool registered again) must still accept the call.
        rec = gw.executor.refuse_stale(plan_id) or rec
        if rec.status is not PlanStatus.RUNNING or rec.lease_owner is not None:
            return rec
        # And the guards as they are now: under a kill switch "running" would make the proxy
        # forward the call that a claim here would not start.
        stopped = gw.executor.stopped_now(plan_id)
        if stopped is not None:
            raise not_run_now(plan_id, stopped)  # as a local proxy answers
        # And its start-by time: past it the plan expires here and the proxy is told so (a
        # new call is a new plan); before it, the call is handed to the proxy and no timer
        # may expire the plan while the proxy makes it (its outcome would find it expired,
        # and a call that happened would have no record). Its report-by replaces it: the
        # outcome is due within the call's timeout and a grace, else the plan needs attention.
        return gw.executor.hand_off(plan_id) or gw.get(plan_id)

    @r.post(
        "/calls",
        status_code=201,
        response_model=McpPlanOut,
        summary="Submit a remote MCP proxy's tools/call as a one-step plan",
        responses={
            200: {"model": McpPlanOut, "description": "The call's waiting plan (a retry)."},
            **errors_doc(400, *AUTH_ERRORS, 409, 413),
        },
    )
    async def calls(
        caller: Caller,
        body: CallBody,
        traceparent: TraceParent = None,
    ) -> Response:
        """Govern one ``tools/call``: the plan as decided (``running``: forward it)."""
        status, rec = await run_in_threadpool(do_call, caller, body, traceparent)
        doc = plan_json(rec)
        spec = gw.catalog.get(rec.steps[0].action) if rec.steps else None
        # The action's plain summary, for the proxy to show when it asks the user, and the
        # seconds the upstream call may take (the proxy enforces it: the call is its own).
        doc["summary"] = spec.describe(rec.steps[0].params) if spec else None
        # The limit the plan's report-by was derived from (``hand_off``): always named, so
        # the proxy never applies a longer one of its own than the server waits for.
        doc["timeout"] = gw.executor.call_timeout(rec.steps[0].action) if rec.steps else None
        return json_response(doc, status, {"Location": f"/v1/plans/{rec.plan_id}"})

    def mcp_plan(p: Principal, plan_id: str, step_id: str) -> PlanRecord:
        """The one-step MCP plan ``plan_id`` of ``p``'s agent, with step ``step_id``.

        The role before the plan; a plan ``p`` may not read is missing (404), so another
        agent cannot test whether a call (its plan id derives from the call) was made.
        """
        if not p.has("agent"):
            raise PermissionDeniedError("this needs the agent role", field="role")
        rec = check_readable(p, store.get_plan(plan_id), plan_id)
        as_agent(p, rec.agent_id)
        if len(rec.steps) != 1 or rec.steps[0].step_id != step_id:
            raise ConflictError(
                f"plan {plan_id} is not a one-step MCP plan with step {step_id!r}",
                field="step_id",
            )
        spec = gw.catalog.get(rec.steps[0].action)
        if spec is None or spec.runner != _RUNNER:
            raise ConflictError(
                f"{rec.steps[0].action!r} is not an MCP action here", field="step_id"
            )
        return rec

    def do_start(p: Principal, plan_id: str, body: StartBody) -> PlanRecord:
        return hand_over(mcp_plan(p, plan_id, body.step_id))

    @r.post(
        "/plans/{plan_id}/start",
        response_model=PlanOut,
        summary="Hand a queued call over to the remote MCP proxy that will make it",
        responses=errors_doc(400, *AUTH_ERRORS, 404, 409, 413),
    )
    def start(plan_id: PlanId, caller: Caller, body: StartBody) -> Response:
        """Answer the plan as the proxy may act on it (``running``: forward the call now)."""
        return json_response(plan_json(do_start(caller, plan_id, body)))

    def do_outcome(
        p: Principal, plan_id: str, body: OutcomeBody, traceparent: str | None
    ) -> PlanRecord:
        rec = mcp_plan(p, plan_id, body.step_id)
        if (body.result is None) == (body.error is None):
            raise InvalidRequestError("give either result or error", field="result")
        _check_reported(body.result)
        step = rec.steps[0]
        if rec.status is PlanStatus.NEEDS_ATTENTION:
            raise _too_late(rec)
        if rec.status is not PlanStatus.RUNNING or step.status not in (
            StepStatus.PENDING,
            StepStatus.RUNNING,
        ):
            raise ConflictError(
                f"plan {plan_id} is {rec.status.value}: it expects no outcome", field="plan_id"
            )
        key = rec.idempotency_key(step.step_id)
        reported.expect(key, _Report(body.result, body.error))
        try:
            done = executor.resume(plan_id, traceparent=traceparent)
        finally:
            reported.forget(key)
        if done is None:
            raise ConflictError(f"plan {plan_id} is being run by another owner", field="plan_id")
        if done.status is PlanStatus.NEEDS_ATTENTION:
            # Past its report-by: the claim put it in needs_attention (as the timer would)
            # and did not record this report.
            raise _too_late(done)
        return done

    @r.post(
        "/plans/{plan_id}/outcome",
        response_model=PlanOut,
        summary="Record the upstream outcome of a remote MCP proxy's call",
        responses=errors_doc(400, *AUTH_ERRORS, 404, 409, 413),
    )
    def outcome(
        plan_id: PlanId, caller: Caller, body: OutcomeBody, traceparent: TraceParent = None
    ) -> Response:
        """Record what the upstream answered; the plan finishes (succeeded or failed)."""
        return json_response(plan_json(do_outcome(caller, plan_id, body, traceparent)))

    return r


def _check_reported(result: dict[str, Any] | None) -> None:
    """Refuse a reported result that says what only a handler in this process may say.

    The guards settle a step at the ``cost`` its result gives, and its compensation runs with
    its ``compensation_params`` (``HANDLER_RESULT_KEYS``): taken from the agent's own proxy,
    ``{"cost": 0}`` would zero its budget spend. An honest proxy never sends them (a
    ``CallToolResult`` has no such keys and drops unknown ones), so the report is refused, not
    recorded with the key dropped: the call's real outcome is still the proxy's to report,
    and until it does the step's reservation stands.

    Raises:
        InvalidRequestError: naming the first such key (``result.cost``).
    """
    if result is None:
        return
    for key in sorted(HANDLER_RESULT_KEYS):
        if key in result:
            raise InvalidRequestError(
                f"a reported result may not carry {key!r}: what a step cost and how it is "
                "undone are said only by a handler in the server, not by the agent's proxy",
                field=f"result.{key}",
            )


def _queued(rec: PlanRecord) -> bool:
    """Whether ``rec`` is running with no lease and its one step not started (the proxy's)."""
    return (
        rec.status is PlanStatus.RUNNING
        and rec.lease_owner is None
        and len(rec.steps) == 1
        and rec.steps[0].status is StepStatus.PENDING
    )


def _too_late(rec: PlanRecord) -> ConflictError:
    """The 409 of an outcome reported for a plan that needs attention (past its report-by).

    The report is not recorded: once the plan needs attention, whether the call took effect
    is a human's to say (``resolve``, which the agent's token may not do), not the agent's.
    """
    step = rec.steps[0].step_id
    return ConflictError(
        f"plan {rec.plan_id} needs attention and takes no outcome report: "
        f"{rec.error or 'its step is unknown'}",
        field="plan_id",
        hint=f"A person checks whether the call took effect upstream and resolves it: "
        f"`proctor resolve {rec.plan_id} {step} --succeeded` (or `--failed`).",
    )


def _ignore(message: str) -> None:
    """An unusable inputSchema only loses early validation; the upstream validates."""
