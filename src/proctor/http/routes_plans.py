"""``/v1/plans``: submit, read, list, wait, stream events, confirm, approve, reject, undo.

The gateway calls are synchronous; they run in the threadpool (``def`` routes, or
``run_in_threadpool`` in ``async`` ones), so the event loop only moves bytes. Submissions,
the hot path, run in the context's lanes (``lanes.py``), and ``SubmitRoute`` serves them as
plain ASGI in front of FastAPI (docs/http.md, "Performance").
"""

# NOTE(http): no `from __future__ import annotations` here: FastAPI reads the route
# signatures at runtime, and the aliases they use (Caller, PlanId) are local names.

import asyncio
import base64
import binascii
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from proctor.cli.render import plan_json
from proctor.core.lifecycle import PlanRecord, PlanStatus
from proctor.core.principals import (
    PlanAction,
    Principal,
    check_readable,
    may_read_plan,
    may_submit,
    plan_for_action,
    reads_every_plan,
    undo_as_admin,
)
from proctor.errors import InvalidRequestError, PermissionDeniedError, ProctorError
from proctor.http.auth import bearer_token
from proctor.http.body import parse_body
from proctor.http.context import (
    AUTH_ERRORS,
    TRACEPARENT_MAX,
    Context,
    TraceParent,
    errors_doc,
    json_response,
)
from proctor.http.errors import STATUS, error_response
from proctor.http.schemas import (
    ID_PATTERN,
    ApproveBody,
    CommentBody,
    PlanList,
    PlanOut,
    ResolveBody,
)

__all__ = ["SubmitRoute", "idempotent_plan_id", "router", "submit_plan"]

log = logging.getLogger("proctor.http")

_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
_KEY_RE = re.compile(_KEY_PATTERN)
_SCAN_BUDGET = 1000  # most plans one list request reads to fill a page for a filtered reader
_EVENT_BATCH = 500


def idempotent_plan_id(principal: str, key: str) -> str:
    """The plan id derived from an ``Idempotency-Key``: stable per principal and key."""
    return "idem-" + hashlib.sha256(f"{principal}:{key}".encode()).hexdigest()[:24]


def _bad_json() -> Response:
    return json_response(
        {"code": "invalid_request", "message": "the body is not valid JSON", "field": "body"},
        400,
    )


def encode_cursor(rec: PlanRecord) -> str:
    """Return the opaque cursor that continues after ``rec``."""
    raw = f"{rec.created_at.isoformat()}|{rec.plan_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """Return the store's ``created_at|plan_id`` form of a cursor.

    Raises:
        InvalidRequestError: if the cursor was not made by ``encode_cursor``.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequestError("cursor is not valid", field="cursor") from exc
    at, sep, plan_id = raw.partition("|")
    if not sep or not at or not plan_id:
        raise InvalidRequestError("cursor is not valid", field="cursor")
    return raw


def submit_plan(
    ctx: Context, p: Principal, raw: Any, key: str | None, traceparent: str | None = None
) -> tuple[int, dict[str, Any]]:
    """Submit a parsed manifest as ``p`` (blocking); return the status and the plan JSON.

    The manifest's ``actor.agent_id`` is ``p``'s name: filled in when absent, refused when
    another. ``actor.name`` and ``actor.type`` stay the agent's own words, so the audit
    records ``p`` itself too (``data.principal`` of ``plan.submitted``, or of the
    ``plan.rejected`` of this request).

    Raises:
        PermissionDeniedError: ``p`` is not an agent, or submits for another agent.
        ProctorError: whatever the gateway refuses (the rejection is audited there).
    """
    if not p.has("agent"):
        raise PermissionDeniedError("submitting a plan needs the agent role", field="role")
    derived = False  # the plan id is the client's, if any: not under a reserved prefix
    if isinstance(raw, dict):
        actor = raw.get("actor")
        if isinstance(actor, dict) and "agent_id" not in actor:
            # Who submits is known: a manifest that leaves it out is this agent's (and one
            # naming another agent's name in ``actor.name`` is still recorded as this one).
            actor["agent_id"] = p.name
        agent_id = actor.get("agent_id") if isinstance(actor, dict) else None
        if isinstance(agent_id, str) and not may_submit(p, agent_id):
            raise PermissionDeniedError(
                f"{p.name!r} may only submit plans with actor.agent_id {p.name!r}",
                field="actor.agent_id",
            )
        if key is not None and raw.get("plan_id") is None:
            raw["plan_id"] = idempotent_plan_id(p.name, key)
            derived = True
    plan_id = raw.get("plan_id") if isinstance(raw, dict) else None
    if not isinstance(plan_id, str):
        plan_id = None
    gateway = ctx.proctor.gateway
    with ctx.submit_locks.hold(plan_id):
        # The gateway itself, not ``Proctor.submit``: any JSON value goes to the
        # validator, so a body that is not an object is rejected (and audited) there. It
        # says whether the plan is new: an earlier submission (here or in another worker or
        # replica) of the same plan id is answered 200.
        rec, created = gateway.submit_created(
            raw, traceparent=traceparent, derived_id=derived, principal=p.name
        )
    return (201 if created else 200), plan_json(rec)


def _invalid_header(name: str, rule: str) -> Response:
    # The body FastAPI's header validation gives the declared route (errors._validation).
    return json_response(
        {"code": "invalid_request", "message": f"{name}: {rule}", "field": name}, 422
    )


class SubmitRoute:
    """``POST /v1/plans`` as plain ASGI, in front of FastAPI's router.

    Submitting is what agents do all day, and FastAPI's routing, dependency solving and
    header models cost more of the GIL per request than the rest of the HTTP layer. This
    serves the declared route's contract without them: the same authentication
    (``Auth.authenticate``), header rules, error bodies and status codes; the body limit is
    the ``BodyLimit`` middleware outside it. Other methods and paths, and apps served under a
    ``root_path``, go on to ``app``.
    """

    def __init__(self, app: ASGIApp, *, ctx: Context) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a submission, or pass anything else on to ``app``."""
        if (
            scope["type"] != "http"
            or scope["path"] != "/v1/plans"
            or scope["method"] != "POST"
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        response = await self._serve(scope, receive)
        if response is not None:
            await response(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive) -> Response | None:
        ctx = self.ctx
        authorization = key = traceparent = None
        for name, value in scope["headers"]:
            # The first of repeated headers, as Starlette's ``Headers.get`` reads them.
            if name == b"authorization":
                authorization = authorization or value.decode("latin-1")
            elif name == b"idempotency-key":
                key = key or value.decode("latin-1")
            elif name == b"traceparent":
                traceparent = traceparent or value.decode("latin-1")
        client = scope.get("client")
        try:
            # Credentials first, as the route's dependency: a bad header of an
            # unauthenticated request is a 401, not a 422.
            caller = await ctx.auth.authenticate(
                client[0] if client else "unknown", bearer_token(authorization)
            )
        except ProctorError as exc:
            return error_response(exc)
        if key is not None and not _KEY_RE.match(key):
            return _invalid_header(
                "Idempotency-Key", f"String should match pattern '{_KEY_PATTERN}'"
            )
        if traceparent is not None and len(traceparent) > TRACEPARENT_MAX:
            return _invalid_header(
                "traceparent", f"String should have at most {TRACEPARENT_MAX} characters"
            )
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None  # gone, or over the limit (``BodyLimit`` answers 413)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        try:
            raw = parse_body(b"".join(chunks))
        except ValueError:  # json.JSONDecodeError and orjson's are ValueErrors
            return _bad_json()
        except ProctorError as exc:  # an integer too long to read: 422 naming its field
            return error_response(exc)
        try:
            status, doc = await ctx.run_submit(submit_plan, ctx, caller, raw, key, traceparent)
        except ProctorError as exc:
            if STATUS.get(exc.code, 500) >= 500:
                log.warning("POST /v1/plans failed: %s", exc.diagnostics())
            return error_response(exc)
        return json_response(doc, status, {"Location": f"/v1/plans/{doc['plan_id']}"})


def router(ctx: Context) -> APIRouter:
    """Build the plan routes over ``ctx``."""
    r = APIRouter(prefix="/v1/plans", tags=["plans"])
    proctor = ctx.proctor
    store = proctor.gateway.store
    settings = ctx.settings
    Caller = Annotated[Principal, Depends(ctx.auth)]
    PlanId = Annotated[str, Path(pattern=ID_PATTERN, description="The plan id.")]
    act_errors = errors_doc(400, *AUTH_ERRORS, 404, 409, 410, 413)

    # ------------------------------------------------------------------ helpers

    # A plan the caller may not read answers 404 exactly as a missing one, on every route
    # about one plan (``check_readable``): a 403 would confirm that a guessed id exists.

    def readable(p: Principal, plan_id: str) -> PlanRecord:
        return check_readable(p, store.get_plan(plan_id), plan_id)

    def actionable(p: Principal, plan_id: str, action: PlanAction) -> PlanRecord:
        # The role before the plan; the same checks as the console's forms.
        return plan_for_action(p, action, store.get_plan(plan_id), plan_id)

    # ------------------------------------------------------------------ submit

    @r.post(
        "",
        status_code=201,
        response_model=PlanOut,
        summary="Submit a plan",
        responses={
            200: {"model": PlanOut, "description": "A replay: the original plan."},
            **errors_doc(400, *AUTH_ERRORS, 409, 413),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/PlanManifest"}}
                },
            }
        },
    )
    async def submit(
        request: Request,
        caller: Caller,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                pattern=_KEY_PATTERN,
                description="Same key and same manifest: the original plan (200).",
            ),
        ] = None,
        traceparent: TraceParent = None,
    ) -> Response:
        """Submit a plan manifest as the calling agent (``actor.agent_id`` is its name)."""
        # ``SubmitRoute`` serves this route in ``proctor serve``; this declaration is its
        # OpenAPI contract and serves the requests that reach the router all the same.
        body = await request.body()
        try:
            raw = parse_body(body)
        except ValueError:  # json.JSONDecodeError and orjson's are ValueErrors
            return _bad_json()
        status, doc = await ctx.run_submit(
            submit_plan, ctx, caller, raw, idempotency_key, traceparent
        )
        return json_response(doc, status, {"Location": f"/v1/plans/{doc['plan_id']}"})

    # ------------------------------------------------------------------ read

    @r.get(
        "",
        response_model=PlanList,
        summary="List plans",
        responses=errors_doc(*AUTH_ERRORS),
    )
    def list_plans(
        caller: Caller,
        status: Annotated[PlanStatus | None, Query(description="Only this status.")] = None,
        agent: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=400)] = None,
    ) -> Response:
        """Plans the caller may read, newest first, a page at a time."""
        before = decode_cursor(cursor) if cursor is not None else None
        if not reads_every_plan(caller) and caller.roles == ("agent",):
            if agent is not None and agent != caller.name:
                return json_response({"plans": [], "next_cursor": None})
            agent = caller.name  # an agent alone sees its own plans: let the index filter
        out: list[PlanRecord] = []
        every = reads_every_plan(caller)
        scanned = 0
        last: PlanRecord | None = None
        exhausted = False
        while True:
            # One query fills the page of a reader who sees everything; a filtered reader
            # reads batches until the page is full or the scan budget is spent, and the
            # cursor then continues where the scan stopped.
            want = limit - len(out) if every else 100
            batch = store.list_plans(
                status=status.value if status else None,
                agent_id=agent,
                limit=want + 1,
                before=before,
            )
            more = len(batch) > want
            page = batch[:want]
            full = False
            for i, rec in enumerate(page):
                scanned += 1
                last = rec
                if may_read_plan(caller, rec):
                    out.append(rec)
                    if len(out) == limit:
                        full = True
                        exhausted = i == len(page) - 1 and not more
                        break
            if full:
                break
            if not more or last is None:
                exhausted = True
                break
            before = f"{last.created_at.isoformat()}|{last.plan_id}"
            if scanned >= _SCAN_BUDGET:
                break
        next_cursor = None if exhausted or last is None else encode_cursor(last)
        return json_response({"plans": [plan_json(p) for p in out], "next_cursor": next_cursor})

    @r.get(
        "/{plan_id}",
        response_model=PlanOut,
        summary="Read a plan (optionally wait for its status to change)",
        responses=errors_doc(*AUTH_ERRORS, 404),
    )
    async def get_plan(
        plan_id: PlanId,
        request: Request,
        caller: Caller,
        wait: Annotated[
            float,
            Query(ge=0, le=60, description="Long-poll up to this many seconds for a change."),
        ] = 0,
    ) -> Response:
        """A plan; with ``wait``, returns as soon as its status changes (or on timeout).

        A server shutting down ends the wait at once, as a timeout does: 200 with the plan as
        it stands (the client asks again, of the restarted server).
        """
        rec = await run_in_threadpool(readable, caller, plan_id)
        wait = min(wait, settings.max_wait_seconds)
        if wait > 0 and not rec.terminal:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            first = rec.status
            while (left := deadline - loop.time()) > 0:
                stopping = await ctx.pause(min(settings.poll_interval_seconds, left))
                fresh = await run_in_threadpool(store.get_plan, plan_id)
                if fresh is None:
                    break
                rec = fresh
                if stopping or rec.status is not first or await request.is_disconnected():
                    break
        return json_response(plan_json(rec))

    @r.get(
        "/{plan_id}/events",
        summary="Stream a plan's audit events (SSE)",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "One SSE event per audit event (`id` the seq, `event` the"
                " type, `data` the signed event); closes when the plan is terminal.",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **errors_doc(*AUTH_ERRORS, 404),
        },
    )
    async def plan_events(
        plan_id: PlanId,
        request: Request,
        caller: Caller,
        last_event_id: Annotated[
            int | None,
            Header(alias="Last-Event-ID", ge=-1, le=2**53, description="Resume after this seq."),
        ] = None,
    ) -> StreamingResponse:
        """Server-sent events: the plan's audit events, live, until the plan is terminal."""
        await run_in_threadpool(readable, caller, plan_id)
        start = -1 if last_event_id is None else last_event_id
        return StreamingResponse(
            _stream(request, plan_id, start),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def _stream(request: Request, plan_id: str, after: int) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.stream_max_seconds
        quiet_since = loop.time()
        while True:
            # The status first: a terminal status commits with its events, so the read
            # after it sees them all.
            rec = await run_in_threadpool(store.get_plan, plan_id)
            rows = await run_in_threadpool(
                store.read_events, after=after, limit=_EVENT_BATCH, plan_id=plan_id
            )
            for row in rows:
                yield b"id: %d\nevent: %s\ndata: %s\n\n" % (row.seq, row.type.encode(), row.body)
                after = row.seq
            if len(rows) == _EVENT_BATCH:
                continue
            # A server shutting down ends the stream once it has sent what is stored; the
            # client reconnects with Last-Event-ID, as after stream_max_seconds.
            if rec is None or rec.terminal or loop.time() >= deadline or ctx.stopping:
                return
            if rows:
                quiet_since = loop.time()
            elif loop.time() - quiet_since >= settings.stream_keepalive_seconds:
                yield b": keep-alive\n\n"
                quiet_since = loop.time()
            if await request.is_disconnected():
                return
            await ctx.pause(settings.poll_interval_seconds)

    # ------------------------------------------------------------------ human actions

    @r.post(
        "/{plan_id}/confirm",
        response_model=PlanOut,
        summary="Confirm a plan (its on-behalf-of user)",
        responses=act_errors,
    )
    def confirm(
        plan_id: PlanId,
        caller: Caller,
        body: CommentBody | None = None,
        traceparent: TraceParent = None,
    ) -> Response:
        """Confirm a plan waiting for the caller's confirmation; it runs at once."""
        actionable(caller, plan_id, "confirm")
        comment = body.comment if body else ""
        rec = proctor.confirm(plan_id, caller.name, comment=comment, traceparent=traceparent)
        return json_response(plan_json(rec))

    @r.post(
        "/{plan_id}/approve",
        response_model=PlanOut,
        summary="Approve a plan (an approver of its groups)",
        responses=act_errors,
    )
    def approve(
        plan_id: PlanId,
        caller: Caller,
        body: ApproveBody | None = None,
        traceparent: TraceParent = None,
    ) -> Response:
        """Approve as the caller, holding its groups as approval roles.

        The plan runs when enough distinct approvers covering its roles agreed.
        """
        actionable(caller, plan_id, "approve")
        body = body or ApproveBody()
        rec = proctor.approve(
            plan_id,
            caller.name,
            roles=caller.groups,
            comment=body.comment,
            otp=body.otp,
            traceparent=traceparent,
        )
        return json_response(plan_json(rec))

    @r.post(
        "/{plan_id}/reject",
        response_model=PlanOut,
        summary="Reject a plan (an approver, or the user for a confirmation)",
        responses=act_errors,
    )
    def reject(
        plan_id: PlanId,
        caller: Caller,
        body: CommentBody | None = None,
        traceparent: TraceParent = None,
    ) -> Response:
        """Reject a plan waiting for an approval (approvers) or a confirmation (its user)."""
        actionable(caller, plan_id, "reject")
        comment = body.comment if body else ""
        rec = proctor.reject(
            plan_id, caller.name, roles=caller.groups, comment=comment, traceparent=traceparent
        )
        return json_response(plan_json(rec))

    @r.post(
        "/{plan_id}/undo",
        response_model=PlanOut,
        summary="Undo a succeeded plan (its user, or an admin)",
        responses=act_errors,
    )
    def undo(
        plan_id: PlanId,
        caller: Caller,
        body: CommentBody | None = None,
        traceparent: TraceParent = None,
    ) -> Response:
        """Undo a succeeded plan within its undo window; its steps are compensated.

        The optional ``comment`` is recorded with the undo (the compensation's reason).
        """
        rec = actionable(caller, plan_id, "undo")
        comment = body.comment if body else ""
        admin = undo_as_admin(caller, rec)
        rec = proctor.undo(
            plan_id, caller.name, admin=admin, comment=comment, traceparent=traceparent
        )
        return json_response(plan_json(rec))

    @r.post(
        "/{plan_id}/steps/{step_id}/resolve",
        response_model=PlanOut,
        summary="Resolve a step whose outcome is unknown (an admin)",
        responses=act_errors,
    )
    def resolve(
        plan_id: PlanId,
        step_id: Annotated[str, Path(pattern=ID_PATTERN, max_length=128)],
        caller: Caller,
        body: ResolveBody,
        traceparent: TraceParent = None,
    ) -> Response:
        """Say whether an interrupted, non-idempotent step took effect; the plan carries on.

        ``succeeded`` runs the remaining steps; ``failed`` compensates the completed ones.
        """
        if not caller.has("admin"):
            raise PermissionDeniedError("resolving a step needs the admin role", field="role")
        rec = proctor.resolve(
            plan_id,
            step_id,
            succeeded=body.outcome == "succeeded",
            principal=caller.name,
            comment=body.comment,
            traceparent=traceparent,
        )
        return json_response(plan_json(rec))

    return r
