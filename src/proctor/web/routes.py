"""The console's router: its plumbing and the pages of sign-in, inbox, plan and timeline.

Every page is rendered on the server and every action is a plain HTML form, so the console
works without JavaScript; ``static/console.js`` only adds live updates, countdowns and the
in-browser check of inclusion proofs. Who may see or do what is the core's role table
(``proctor.core.principals``), asked the same way as the ``/v1`` routes ask it; the gateway
re-checks everything that matters (state, expiry, separation of duties, step-up).

:func:`console_router` builds the plumbing every page shares (rendering with the security
headers, sessions, CSRF-checked forms, error pages) and the routes of sign-in, the inbox, the
plan page, the human actions, the timeline and the live updates (SSE). The audit explorer
and the dashboard are added from ``audit_pages.py``; the stateless helpers (menu, form
fields, safe redirects) are in ``page_helpers.py``.
"""

# NOTE(web): no `from __future__ import annotations` here: FastAPI reads the route
# signatures at runtime.

import asyncio
import functools
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, assert_never
from urllib.parse import quote, urlsplit

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, StreamingResponse
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.responses import Response

from proctor._library import Proctor
from proctor.app.tokens import hash_token
from proctor.core.approvals import person_key
from proctor.core.lifecycle import PlanRecord, PlanStatus
from proctor.core.principals import (
    PlanAction,
    Principal,
    check_readable,
    may_act,
    may_admin,
    may_read_audit,
    plan_for_action,
    undo_as_admin,
)
from proctor.errors import (
    ConfigError,
    InvalidRequestError,
    PermissionDeniedError,
    ProctorError,
)
from proctor.http.auth import UNSAFE_LOCAL
from proctor.http.context import Context
from proctor.http.errors import STATUS, RateLimitedError, UnauthenticatedError
from proctor.http.jwt import looks_like_jwt
from proctor.http.routes_plans import decode_cursor, encode_cursor
from proctor.http.schemas import ID_PATTERN, MAX_COMMENT
from proctor.web.audit_pages import add_audit_routes
from proctor.web.page_helpers import _Forbidden, _nav, _roles_text, _safe_next, _text, _when
from proctor.web.sessions import Session, SessionStore, check_csrf
from proctor.web.views import credited, plan_view

__all__ = ["COOKIE", "ErrorPage", "console_pages", "console_router"]

log = logging.getLogger("proctor.web")

COOKIE = "proctor_session"
LOGIN_COOKIE = "proctor_login"
_HERE = Path(__file__).parent
_INBOX_MAX = 200  # plans one inbox section shows: the soonest deadlines
_WAITING_PAGE = 200  # waiting plans read per query while an approver's inbox fills
_TIMELINE_PAGE = 50  # plans per page of a timeline
_RAN = tuple(
    s.value
    for s in (
        PlanStatus.RUNNING,
        PlanStatus.SUCCEEDED,
        PlanStatus.UNDONE,
        PlanStatus.COMPENSATED,
        PlanStatus.COMPENSATING,
        PlanStatus.FAILED,
        PlanStatus.NEEDS_ATTENTION,
    )
)  # the statuses of a plan that ran: the timeline's
_DONE = {
    "approved": "You approved this plan.",
    "rejected": "You rejected this plan.",
    "confirmed": "You confirmed this plan.",
    "undone": "You undid this plan: its steps were compensated.",
}
_UNDO_COMMENT_MAX = 300  # in the undo's reason, which gateway.undo caps at 500 with the name
_HEADERS = {
    # No inline script or style anywhere: the CSP forbids both, so injected markup cannot
    # run even if escaping were ever missed.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


ErrorPage = Callable[[Request, ProctorError], Awaitable[Response]]
"""Renders a ``ProctorError`` as the console's HTML error page (with the signed-in menu)."""


def console_router(ctx: Context) -> APIRouter:
    """Build the console routes over ``ctx`` (the same context as the ``/v1`` routes)."""
    return console_pages(ctx)[0]


def console_pages(ctx: Context) -> tuple[APIRouter, ErrorPage]:
    """Build the console routes over ``ctx``, and the error page for the app's handlers."""
    r = APIRouter(include_in_schema=False)
    proctor: Proctor = ctx.proctor
    gateway = proctor.gateway
    store = gateway.store
    sessions = SessionStore(store, gateway.clock)
    templates = Jinja2Templates(directory=str(_HERE / "templates"))
    templates.env.globals["nav_for"] = _nav
    templates.env.globals["roles_text"] = _roles_text
    templates.env.filters["when"] = _when

    # ------------------------------------------------------------------ plumbing

    def render(
        request: Request,
        name: str,
        session: Session | None,
        status: int = 200,
        **values: Any,
    ) -> Response:
        resp = templates.TemplateResponse(
            request,
            name,
            {
                "principal": session.principal if session else None,
                "csrf": session.csrf if session else "",
                "now": gateway.clock.now(),
                **values,
            },
            status_code=status,
        )
        resp.headers.update(_HEADERS)
        return resp

    def error_page(request: Request, session: Session | None, exc: ProctorError) -> Response:
        status = STATUS.get(exc.code, 500)
        if status >= 500:
            log.warning("%s %s failed: %s", request.method, request.url.path, exc.diagnostics())
        back = request.headers.get("referer")
        return render(
            request,
            "error.html",
            session,
            status,
            code=exc.code,
            message=exc.message,
            field=exc.field,
            hint=exc.hint,
            back=_safe_next(urlsplit(back).path if back else None),
        )

    async def session_of(request: Request) -> Session | None:
        return await run_in_threadpool(sessions.get, request.cookies.get(COOKIE))

    def to_login(request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)

    def same_origin(request: Request) -> bool:
        # Defence in depth besides the CSRF token: a browser sends Origin on every POST;
        # one from another site is refused whatever the form carries.
        origin = request.headers.get("origin")
        if origin is None or origin == "null":
            return origin is None
        return origin == f"{request.url.scheme}://{request.url.netloc}"

    async def posted(request: Request) -> tuple[Session, FormData]:
        """The session and form of a state-changing POST, CSRF-checked.

        Raises:
            UnauthenticatedError: no live session.
            PermissionDeniedError: the CSRF token is missing or wrong, or another origin.
        """
        session = await session_of(request)
        if session is None:
            raise UnauthenticatedError(
                "your session has ended: sign in again", field="session", hint="Sign in."
            )
        form = await request.form(max_files=0, max_fields=20)
        token = form.get("csrf")
        if not same_origin(request) or not check_csrf(
            session, token if isinstance(token, str) else None
        ):
            raise PermissionDeniedError(
                "the form's CSRF token is missing or wrong; reload the page and try again",
                field="csrf",
            )
        return session, form

    def guarded(
        fn: Callable[..., Any],
    ) -> Callable[..., Any]:
        """Turn a ProctorError of a page handler into an HTML error page with its status."""

        @functools.wraps(fn)  # FastAPI reads the parameters of the wrapped handler
        async def wrapper(request: Request, *args: Any, **kwargs: Any) -> Response:
            try:
                result: Response = await fn(request, *args, **kwargs)
                return result
            except ProctorError as exc:
                session = None
                if not isinstance(exc, UnauthenticatedError):
                    session = await session_of(request)
                resp = error_page(request, session, exc)
                if isinstance(exc, RateLimitedError):
                    resp.headers["Retry-After"] = str(exc.details.get("retry_after", 60))
                return resp

        return wrapper

    def plan_for(p: Principal, plan_id: str) -> PlanRecord:
        # A plan the caller may not read is missing, as over the API (``check_readable``).
        return check_readable(p, store.get_plan(plan_id), plan_id)

    def check_id(plan_id: str) -> str:
        if not re.fullmatch(ID_PATTERN, plan_id):
            raise InvalidRequestError("plan id is not valid", field="plan_id")
        return plan_id

    # ------------------------------------------------------------------ sign-in

    @r.get("/")
    async def home(request: Request) -> Response:
        """Send each principal to its first page."""
        session = await session_of(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        nav = _nav(session.principal)
        return RedirectResponse(nav[0][0] if nav else "/login", status_code=303)

    def login_page(
        request: Request, status: int = 200, message: str | None = None, nxt: str = "/"
    ) -> Response:
        nonce = secrets.token_urlsafe(24)
        resp = render(
            request,
            "login.html",
            None,
            status,
            login_csrf=sessions.login_token(nonce),
            message=message,
            next=_safe_next(nxt),
            unsafe=ctx.auth.unsafe_no_auth,
        )
        resp.set_cookie(
            LOGIN_COOKIE,
            nonce,
            max_age=3600,
            path="/login",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return resp

    @r.get("/login")
    async def login_form(request: Request, next: str | None = None) -> Response:
        """The sign-in form."""
        return await run_in_threadpool(login_page, request, 200, None, next or "/")

    @r.post("/login")
    async def login(request: Request) -> Response:
        """Check a token and open a session (the token is never stored in the browser)."""
        form = await request.form(max_files=0, max_fields=10)
        nxt = form.get("next")
        nxt = nxt if isinstance(nxt, str) else "/"
        csrf = form.get("csrf")
        ok = same_origin(request) and await run_in_threadpool(
            sessions.check_login_token,
            request.cookies.get(LOGIN_COOKIE),
            csrf if isinstance(csrf, str) else None,
        )
        if not ok:
            return await run_in_threadpool(
                login_page, request, 403, "The form expired or came from elsewhere: try again.", nxt
            )
        client = request.client.host if request.client else "unknown"
        auth = ctx.auth
        if auth.unsafe_no_auth:
            principal = UNSAFE_LOCAL
            token = ""
        else:
            retry = auth.limiter.retry_after(client)
            if retry is not None:
                resp = await run_in_threadpool(
                    login_page, request, 429, f"Too many failed sign-ins: retry in {retry} s.", nxt
                )
                resp.headers["Retry-After"] = str(retry)
                return resp
            raw = form.get("token")
            token = raw.strip() if isinstance(raw, str) else ""
            found = None
            if token and len(token) <= 8192:
                found = await run_in_threadpool(auth.verify, token)
            if found is None:
                auth.limiter.failed(client)
                return await run_in_threadpool(
                    login_page,
                    request,
                    401,
                    "That token is not valid (unknown, revoked or expired).",
                    nxt,
                )
            principal = found
        if principal.has("agent"):
            # An agent's token lives in an agent's process; it has no business in a browser,
            # and a console session must never let anyone act as an agent.
            return await run_in_threadpool(
                login_page, request, 403, "Agent tokens cannot sign in to the console.", nxt
            )
        if not _nav(principal):
            return await run_in_threadpool(
                login_page, request, 403, "This token has no role the console serves.", nxt
            )
        not_after = None
        token_hash = None
        if token and looks_like_jwt(token):
            not_after = _jwt_expiry(token)
        elif token:
            token_hash = hash_token(token)
        session_id, _ = await run_in_threadpool(
            lambda: sessions.open(principal, token_hash=token_hash, not_after=not_after)
        )
        resp = RedirectResponse(_safe_next(nxt), status_code=303)
        resp.set_cookie(
            COOKIE,
            session_id,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        resp.delete_cookie(LOGIN_COOKIE, path="/login")
        return resp

    @r.post("/logout")
    @guarded
    async def logout(request: Request) -> Response:
        """End the session."""
        await posted(request)
        await run_in_threadpool(sessions.end, request.cookies.get(COOKIE))
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/")
        return resp

    # ------------------------------------------------------------------ inbox

    def waiting_for(
        p: Principal, kind: PlanAction, status: PlanStatus, *, user: str | None = None
    ) -> tuple[list[PlanRecord], bool]:
        """The soonest ``_INBOX_MAX`` plans in ``status`` that ``p`` may ``kind``; and if more.

        The store lists them by deadline; an approver's groups are checked here, page by
        page, until the section is full or every waiting plan was read.
        """
        out: list[PlanRecord] = []
        after = None
        while True:
            page = store.waiting_plans(
                status.value, on_behalf_of=user, limit=_WAITING_PAGE, after=after
            )
            for rec in page:
                if may_act(p, kind, rec):
                    if len(out) == _INBOX_MAX:
                        return out, True
                    out.append(rec)
            if len(page) < _WAITING_PAGE:
                return out, False
            last = page[-1]
            after = f"{last.expires_at.isoformat() if last.expires_at else ''}|{last.plan_id}"

    def inbox_items(p: Principal) -> tuple[list[PlanRecord], list[PlanRecord], bool]:
        """Approvals and confirmations waiting for ``p`` (soonest first), and if either has more."""
        approvals: list[PlanRecord] = []
        confirmations: list[PlanRecord] = []
        more_a = more_c = False
        if p.has("approver"):
            approvals, more_a = waiting_for(p, "approve", PlanStatus.AWAITING_APPROVAL)
        if p.has("user"):
            # Only the user's own plans are read: others' never crowd them out.
            confirmations, more_c = waiting_for(
                p, "confirm", PlanStatus.AWAITING_CONFIRMATION, user=p.name
            )
        return approvals, confirmations, more_a or more_c

    @r.get("/inbox")
    @guarded
    async def inbox(request: Request) -> Response:
        """Every plan waiting for this principal: approvals and confirmations."""
        session = await session_of(request)
        if session is None:
            return to_login(request)
        p = session.principal
        if not (p.has("approver") or p.has("user")):
            raise _Forbidden("the inbox is for approvers and users", field="role")
        approvals, confirmations, more = await run_in_threadpool(inbox_items, p)
        now = gateway.clock.now()
        catalog = gateway.catalog

        me = person_key(p.name)  # as the gateway's separation of duties compares names

        def card(rec: PlanRecord) -> dict[str, Any]:
            v = plan_view(rec, catalog, now)
            v["voted"] = any(person_key(a.principal) == me for a in rec.approvals)
            v["own"] = me in (person_key(rec.agent_id), person_key(rec.on_behalf_of))
            return v

        return render(
            request,
            "inbox.html",
            session,
            approvals=[card(x) for x in approvals],
            confirmations=[card(x) for x in confirmations],
            more=more,
            shown=_INBOX_MAX,
        )

    # ------------------------------------------------------------------ plan page

    @r.get("/plans/{plan_id}")
    @guarded
    async def plan_page(request: Request, plan_id: str) -> Response:
        """A plan: its steps, the timeline of its audit events, the approvals so far."""
        session = await session_of(request)
        if session is None:
            return to_login(request)
        p = session.principal
        check_id(plan_id)
        rec = await run_in_threadpool(plan_for, p, plan_id)
        rows = await run_in_threadpool(
            lambda: store.read_events(after=-1, limit=1000, plan_id=plan_id)
        )
        events = []
        for row in rows:
            body = orjson.loads(row.body)
            # A person's decision (approve, reject, confirm) is written with the plan's actor
            # and names the person in its data: the person is who did it. A submission names
            # the agent as authenticated; the rest is the plan's agent, by id.
            who, who_type = credited(row.type, body)
            events.append(
                {
                    "seq": row.seq,
                    "type": row.type,
                    "at": row.timestamp,
                    "step": row.step_id or "",
                    # Who did it, apart from whom it was for: every event of the plan carries
                    # its user, those of the agent and of the system too.
                    "who": who,
                    "who_type": who_type,
                    "user": body.get("user_id") or "",
                }
            )
        view = plan_view(rec, gateway.catalog, gateway.clock.now())
        done = request.query_params.get("done")
        return render(
            request,
            "plan.html",
            session,
            plan=view,
            events=events,
            audit_links=may_read_audit(p),
            notice=_DONE.get(done or ""),
            can_approve=rec.status is PlanStatus.AWAITING_APPROVAL
            and may_act(p, "approve", rec)
            and not any(person_key(a.principal) == person_key(p.name) for a in rec.approvals),
            can_confirm=rec.status is PlanStatus.AWAITING_CONFIRMATION
            and may_act(p, "confirm", rec),
            can_reject=rec.status
            in (PlanStatus.AWAITING_APPROVAL, PlanStatus.AWAITING_CONFIRMATION)
            and may_act(p, "reject", rec),
            can_undo=view["undo_until"] is not None
            and view["undo_left"] != "closed"
            and may_act(p, "undo", rec),
            undo_comment_max=_UNDO_COMMENT_MAX,
        )

    # ------------------------------------------------------------------ human actions

    def do_action(p: Principal, kind: PlanAction, plan_id: str, form: FormData) -> PlanRecord:
        limit = _UNDO_COMMENT_MAX if kind == "undo" else MAX_COMMENT
        comment = _text(form, "comment", limit=limit)
        # The same checks as /v1/plans/{id}/... (one helper for both): the role before the
        # plan is read, then that the plan is this principal's business; the gateway then
        # applies its own rules (state, expiry, separation of duties, step-up).
        rec = plan_for_action(p, kind, store.get_plan(plan_id), plan_id)
        if kind == "approve":
            otp = _text(form, "otp", limit=16) or None
            return proctor.approve(plan_id, p.name, roles=p.groups, comment=comment, otp=otp)
        if kind == "reject":
            return proctor.reject(plan_id, p.name, roles=p.groups, comment=comment)
        if kind == "confirm":
            return proctor.confirm(plan_id, p.name, comment=comment)
        if kind == "undo":
            return proctor.undo(plan_id, p.name, admin=undo_as_admin(p, rec), comment=comment)
        assert_never(kind)

    def action_route(kind: PlanAction, done: str) -> None:
        @r.post(f"/plans/{{plan_id}}/{kind}", name=f"console_{kind}")
        @guarded
        async def act(request: Request, plan_id: str) -> Response:
            session, form = await posted(request)
            check_id(plan_id)
            await run_in_threadpool(do_action, session.principal, kind, plan_id, form)
            back = form.get("back")
            if back == "timeline":
                return RedirectResponse(f"/timeline?done={done}", status_code=303)
            return RedirectResponse(f"/plans/{quote(plan_id)}?done={done}", status_code=303)

        act.__doc__ = f"{kind.capitalize()} a plan from a form; then show the plan."

    actions: tuple[tuple[PlanAction, str], ...] = (
        ("approve", "approved"),
        ("reject", "rejected"),
        ("confirm", "confirmed"),
        ("undo", "undone"),
    )
    for kind, done in actions:
        action_route(kind, done)

    # ------------------------------------------------------------------ timeline

    def timeline_items(user: str, before: str | None) -> list[PlanRecord]:
        # The store reads this user's plans alone (plans_by_user_key): however many plans
        # others made since, the user's own stay reachable, a page at a time.
        return store.list_plans(
            on_behalf_of=user, statuses=_RAN, limit=_TIMELINE_PAGE + 1, before=before
        )

    @r.get("/timeline")
    @guarded
    async def timeline(
        request: Request,
        user: Annotated[str | None, Query(max_length=128)] = None,
        cursor: Annotated[str | None, Query(max_length=400)] = None,
    ) -> Response:
        """A user's executed actions, newest first, with undo while the window is open."""
        session = await session_of(request)
        if session is None:
            return to_login(request)
        p = session.principal
        if not (p.has("user") or p.has("admin")):
            raise _Forbidden("the timeline is for users and admins", field="role")
        who = p.name
        if user and user != p.name:
            if not may_admin(p):
                raise PermissionDeniedError(
                    "only an admin reads another user's timeline", field="user"
                )
            who = user
        now = gateway.clock.now()
        before = decode_cursor(cursor) if cursor else None
        recs = await run_in_threadpool(timeline_items, who, before)
        older = None
        if len(recs) > _TIMELINE_PAGE:
            recs = recs[:_TIMELINE_PAGE]
            older = encode_cursor(recs[-1])
        items = []
        for rec in recs:
            v = plan_view(rec, gateway.catalog, now)
            v["can_undo"] = (
                v["undo_until"] is not None
                and v["undo_left"] != "closed"
                and may_act(p, "undo", rec)
            )
            items.append(v)
        autonomy: dict[str, Any] = {}
        promotions: dict[str, Any] = {}
        try:
            st = await run_in_threadpool(proctor.guards.status)
        except ConfigError:
            st = None
        if st is not None:
            autonomy = {k: v for k, v in st["autonomy"].items() if k.partition("|")[0] == who}
            promotions = {k: v for k, v in st["promotions"].items() if k.partition("|")[0] == who}
        return render(
            request,
            "timeline.html",
            session,
            items=items,
            who=who,
            older=older,
            newest=cursor is not None,
            notice=_DONE.get(request.query_params.get("done") or ""),
            autonomy=sorted(
                (k.partition("|")[2], v) for k, v in autonomy.items() if isinstance(v, dict)
            ),
            promotions=sorted(
                (k.partition("|")[2], v) for k, v in promotions.items() if isinstance(v, dict)
            ),
            actions=sorted(spec.name for spec in gateway.catalog),
            guards=st is not None,
            undo_comment_max=_UNDO_COMMENT_MAX,
        )

    @r.post("/autonomy")
    @guarded
    async def set_autonomy(request: Request) -> Response:
        """Set an autonomy level: users their own, admins anyone's."""
        session, form = await posted(request)
        p = session.principal
        user = _text(form, "user", limit=128) or p.name
        if user != p.name and not may_admin(p):
            raise PermissionDeniedError("only an admin sets another user's autonomy", field="user")
        if not (p.has("user") or p.has("admin")):
            raise PermissionDeniedError("this needs the user or admin role", field="role")
        action = _text(form, "action", limit=128, required=True)
        level = _text(form, "level", limit=16, required=True)
        below_raw = _text(form, "below", limit=12)
        below = None
        if below_raw:
            if not (below_raw.isascii() and below_raw.isdigit()):  # "²".isdigit() holds
                raise InvalidRequestError(
                    "below must be a whole amount (minor units)", field="below"
                )
            below = int(below_raw)
        await run_in_threadpool(
            lambda: proctor.guards.set_autonomy(user, action, level, below=below, by=p.name)
        )
        back = "/dashboard" if form.get("back") == "dashboard" else "/timeline"
        return RedirectResponse(f"{back}?done=autonomy", status_code=303)

    # ------------------------------------------------------------------ audit explorer, dashboard

    add_audit_routes(
        r,
        proctor,
        render=render,
        session_of=session_of,
        to_login=to_login,
        posted=posted,
        guarded=guarded,
        check_id=check_id,
    )

    # ------------------------------------------------------------------ live updates (SSE)

    async def sse(request: Request, poll: Callable[[], Any]) -> AsyncIterator[bytes]:
        """Send ``poll()``'s value whenever it changes, until the client leaves (or 5 min)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ctx.settings.stream_max_seconds
        last: Any = None
        quiet = loop.time()
        # A server shutting down ends the stream (the page's EventSource reconnects).
        while loop.time() < deadline and not ctx.stopping and not await request.is_disconnected():
            value = await run_in_threadpool(poll)
            if value != last:
                yield b"data: " + orjson.dumps(value) + b"\n\n"
                last = value
                quiet = loop.time()
            elif loop.time() - quiet >= ctx.settings.stream_keepalive_seconds:
                yield b": keep-alive\n\n"
                quiet = loop.time()
            await ctx.pause(max(ctx.settings.poll_interval_seconds, 0.5))

    def stream(body: AsyncIterator[bytes]) -> StreamingResponse:
        return StreamingResponse(
            body,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @r.get("/live/plans/{plan_id}")
    @guarded
    async def live_plan(request: Request, plan_id: str) -> Response:
        """SSE: the plan's status, its steps' statuses and its last event seq, on change."""
        session = await session_of(request)
        if session is None:
            raise UnauthenticatedError("sign in first", field="session")
        check_id(plan_id)
        await run_in_threadpool(plan_for, session.principal, plan_id)

        def poll() -> Mapping[str, Any] | None:
            rec = store.get_plan(plan_id)
            if rec is None:
                return None
            return {
                "status": rec.status.value,
                "steps": {s.step_id: s.status.value for s in rec.steps},
                "approvals": len(rec.approvals),
            }

        return stream(sse(request, poll))

    @r.get("/live/inbox")
    @guarded
    async def live_inbox(request: Request) -> Response:
        """SSE: the ids of the plans waiting for this principal, on change."""
        session = await session_of(request)
        if session is None:
            raise UnauthenticatedError("sign in first", field="session")
        p = session.principal

        def poll() -> list[str]:
            a, c, _ = inbox_items(p)
            return sorted(rec.plan_id for rec in (*a, *c))

        return stream(sse(request, poll))

    @r.get("/favicon.ico")
    async def favicon() -> Response:
        """Nothing: the pages name their icon (``/static/favicon.svg``); this stops a 404."""
        return Response(status_code=204, headers={"Cache-Control": "max-age=86400"})

    async def page_for_error(request: Request, exc: ProctorError) -> Response:
        try:
            session = await session_of(request)
        except ProctorError:  # the store is down: the page still says what was wrong
            session = None
        return error_page(request, session, exc)

    return r, page_for_error


def _jwt_expiry(token: str) -> datetime:
    """The ``exp`` of a JWT that ``Auth.verify`` already accepted (no check here)."""
    import jwt  # the `server` extra; only JWT sign-ins get here

    claims = jwt.decode(token, options={"verify_signature": False})
    return datetime.fromtimestamp(int(claims["exp"]), tz=UTC)
