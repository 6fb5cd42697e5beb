"""The console's pages for auditors and admins: the audit explorer and the dashboard.

The explorer lists audit events by filter, shows the latest checkpoint and its signature
check, runs a full verification, and shows one event with its inclusion proof; the dashboard
charts the KPIs over time and shows the guards, with the admins' kill-switch and
circuit-breaker forms handled here (its autonomy form posts to ``/autonomy`` in
``routes.py``). ``routes.py`` builds the router and its plumbing (rendering,
sessions, CSRF, error pages) and hands that plumbing to :func:`add_audit_routes`; these pages
are separate because they read the audit log and the guards rather than a principal's own
plans.
"""

# NOTE(web): no `from __future__ import annotations` here: FastAPI reads the route
# signatures at runtime.

import base64
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, time, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.responses import Response

from proctor._library import Proctor
from proctor.app.kpis import compute
from proctor.audit.merkle import leaf_hash, verify_inclusion
from proctor.audit.note import Checkpoint, open_note, verifiers_from_vkeys
from proctor.core.ports import EventRow
from proctor.core.principals import may_admin, may_read_audit
from proctor.errors import (
    ConfigError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ProctorError,
)
from proctor.http.schemas import MAX_COMMENT
from proctor.web.page_helpers import _Forbidden, _text
from proctor.web.sessions import Session
from proctor.web.views import chart, credited

__all__ = ["add_audit_routes"]

_EVENT_SCAN = 5000  # most audit events one filtered explorer page reads
_SAVED = {
    "guards": "Saved.",
    "autonomy": "Saved.",
    "breaker-opened": "The breaker is open until an admin resets it.",
    "breaker-reset": "The breaker is closed.",
    "breaker-closed": "That breaker was not open: nothing changed.",
    "breaker-already": "That breaker was already held open: it stays as it was, with who forced "
    "it open and why.",
    "kill-already": "That kill switch was already engaged: it stays as it was, with who engaged "
    "it and why.",
}


def _ticked(form: FormData, name: str) -> bool:
    """Whether the form's checkbox ``name`` is ticked (a browser sends ``on``, else nothing).

    Any other value is refused, naming the field, rather than read either way.
    """
    value = _text(form, name, limit=8)
    if value not in ("", "on"):
        raise InvalidRequestError(f"{name} is a checkbox: 'on' or absent", field=name)
    return value == "on"


def add_audit_routes(
    r: APIRouter,
    proctor: Proctor,
    *,
    render: Callable[..., Response],
    session_of: Callable[[Request], Awaitable[Session | None]],
    to_login: Callable[[Request], Response],
    posted: Callable[[Request], Awaitable[tuple[Session, FormData]]],
    guarded: Callable[[Callable[..., Any]], Callable[..., Any]],
    check_id: Callable[[str], str],
) -> None:
    """Add the audit explorer and the dashboard (with its guard forms) to ``r``.

    Args:
        r: The console's router; the routes are added in place, in this order.
        proctor: The library object of the console's context.
        render: Renders a template as a page with the console's headers.
        session_of: The request's live session, or None.
        to_login: A redirect to the sign-in page that comes back to this request's page.
        posted: The session and form of a state-changing POST, CSRF-checked.
        guarded: Turns a page handler's ProctorError into an HTML error page.
        check_id: Checks a plan id's form and returns it.
    """
    gateway = proctor.gateway
    store = gateway.store

    # ------------------------------------------------------------------ audit explorer

    def checkpoint_status() -> dict[str, Any]:
        cp = proctor.latest_checkpoint()
        if cp is None:
            return {"present": False}
        out: dict[str, Any] = {"present": True, "note": cp.note, "size": cp.size}
        try:
            text, signers = open_note(cp.note, verifiers_from_vkeys(proctor.vkeys()))
            parsed = Checkpoint.parse(text)
            if parsed.origin != proctor.origin:
                raise InvalidRequestError(f"origin {parsed.origin!r} is not this log's")
            if parsed.root != proctor.audit_log.root(parsed.size):
                raise InvalidRequestError("its root is not the log's root at that size")
        except ProctorError as exc:
            out.update(ok=False, problem=exc.message)
            return out
        out.update(
            ok=True,
            root=base64.b64encode(parsed.root).decode(),
            signers=[f"{name}+{kid.hex()}" for name, kid in signers],
        )
        return out

    def explore(
        type_: str | None,
        plan: str | None,
        user: str | None,
        after: int | None,
        before: int | None,
        limit: int,
    ) -> tuple[list[dict[str, Any]], int | None, int | None, int]:
        """A page of matching events, and the cursors of the older and the newer page.

        Returns the events in log order, the ``before`` of the older page and the ``after``
        of the newer one (None when there is none), and the log's size. With ``after`` the
        page is the first matches after it; otherwise the last matches before ``before``
        (default: the end of the log), so every view opens on the newest. A page reads at
        most ``_EVENT_SCAN`` events, and its cursors continue from there.
        """
        count = store.event_count()

        def match(row: EventRow) -> dict[str, Any] | None:
            if type_ and not row.type.startswith(type_):
                return None
            body = orjson.loads(row.body)
            if user and body.get("user_id") != user:
                return None
            return {
                "seq": row.seq,
                "type": row.type,
                "at": row.timestamp,
                "plan": row.plan_id or "",
                "step": row.step_id or "",
                "user": body.get("user_id") or "",
                # Who did it as authenticated or by id, never the actor's free-text name.
                "actor": credited(row.type, body)[0],
            }

        matches: list[dict[str, Any]] = []
        if after is not None:
            # Forward: the first matches after `after`; `low` .. `high` is what was read.
            low, high = after + 1, after
            while len(matches) < limit and high - after < _EVENT_SCAN:
                rows = store.read_events(after=high, limit=500, plan_id=plan or None)
                for row in rows:
                    high = row.seq
                    found = match(row)
                    if found is not None:
                        matches.append(found)
                        if len(matches) == limit:
                            break
                if len(rows) < 500 and (not rows or high == rows[-1].seq):
                    high = count - 1  # read to the end of the log
                    break
        else:
            # Backward: windows of 500 seqs from the end (or `before`) toward the start.
            end = count if before is None else min(before, count)
            high, low = end - 1, end
            found_rev: list[dict[str, Any]] = []
            while len(found_rev) < limit and low > 0 and end - low < _EVENT_SCAN:
                lo = max(0, low - 500)
                rows = [
                    row
                    for row in store.read_events(after=lo - 1, limit=500, plan_id=plan or None)
                    if row.seq < low
                ]
                low = lo
                for row in reversed(rows):
                    found = match(row)
                    if found is not None:
                        found_rev.append(found)
                        if len(found_rev) == limit:
                            low = row.seq
                            break
            matches = found_rev[::-1]
        older = low if low > 0 else None
        newer = high if high < count - 1 else None
        return matches, older, newer, count

    @r.get("/audit")
    @guarded
    async def audit(
        request: Request,
        type: Annotated[str | None, Query(max_length=64)] = None,
        plan: Annotated[str | None, Query(max_length=128)] = None,
        user: Annotated[str | None, Query(max_length=128)] = None,
        after: Annotated[int | None, Query(ge=-1, le=2**53)] = None,
        before: Annotated[int | None, Query(ge=0, le=2**53)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        verify: bool = False,
    ) -> Response:
        """The audit explorer: filtered events, the latest checkpoint, a full verification."""
        session = await session_of(request)
        if session is None:
            return to_login(request)
        if not may_read_audit(session.principal):
            raise _Forbidden("the audit explorer needs the auditor or admin role", field="role")
        if plan:
            check_id(plan)
        events, older, newer, count = await run_in_threadpool(
            explore, type or None, plan or None, user or None, after, before, limit
        )
        cp = await run_in_threadpool(checkpoint_status)
        report = None
        if verify:
            report = (await run_in_threadpool(proctor.verify)).as_dict()
        return render(
            request,
            "audit.html",
            session,
            events=events,
            older=older,
            newer=newer,
            count=count,
            checkpoint=cp,
            report=report,
            filters={
                "type": type or "",
                "plan": plan or "",
                "user": user or "",
                "limit": limit,
            },
        )

    def event_proof(seq: int) -> dict[str, Any]:
        rows = store.read_events(after=seq - 1, limit=1)
        if not rows or rows[0].seq != seq:
            raise NotFoundError(f"no audit event {seq}", field="seq")
        row = rows[0]
        cp = checkpoint_status()
        signed = bool(cp.get("present") and cp.get("ok") and seq < cp["size"])
        size = cp["size"] if signed else proctor.audit_log.size
        proof = proctor.inclusion_proof(seq, size)
        root = base64.b64decode(proof["root_hash"])
        hashes = [base64.b64decode(h) for h in proof["hashes"]]
        leaf = leaf_hash(row.body)
        problem = None
        try:
            if base64.b64decode(proof["leaf_hash"]) != leaf:
                raise InvalidRequestError("the stored leaf hash is not the hash of the event")
            if signed and proof["root_hash"] != cp["root"]:
                raise InvalidRequestError("the proof's root is not the checkpoint's root")
            verify_inclusion(leaf, seq, size, hashes, root)
        except ProctorError as exc:
            problem = exc.message
        return {
            "seq": seq,
            "type": row.type,
            "plan": row.plan_id,
            "pretty": orjson.dumps(orjson.loads(row.body), option=orjson.OPT_INDENT_2).decode(),
            "body_b64": base64.b64encode(row.body).decode(),
            "leaf": base64.b64encode(leaf).decode(),
            "hashes": proof["hashes"],
            "size": size,
            "root": proof["root_hash"],
            "signed": signed,
            "ok": problem is None,
            "problem": problem,
            "checkpoint": cp,
        }

    @r.get("/audit/events/{seq}")
    @guarded
    async def audit_event(request: Request, seq: int) -> Response:
        """One event and its inclusion proof, checked here and again in the browser."""
        session = await session_of(request)
        if session is None:
            return to_login(request)
        if not may_read_audit(session.principal):
            raise _Forbidden("the audit explorer needs the auditor or admin role", field="role")
        if not 0 <= seq < 2**53:
            raise InvalidRequestError("seq must be a non-negative integer", field="seq")
        ev = await run_in_threadpool(event_proof, seq)
        return render(request, "event.html", session, ev=ev)

    # ------------------------------------------------------------------ dashboard

    _KPI_CHARTS = (
        ("acceptance_rate", "Acceptance rate", "{:.0%}", 1.0),
        ("false_action_rate", "False-action rate", "{:.0%}", 1.0),
        ("time_to_recovery_s", "Time to recovery (median, s)", "{:.1f}", None),
        ("audit_coverage", "Audit coverage", "{:.0%}", 1.0),
        ("cost_per_action", "Cost per action (minor units)", "{:.2f}", None),
        ("anomaly_delta", "Anomaly delta", "{:+.0f}", None),
    )

    def kpi_series(days: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        # One pass to parse the log, then one computation per day; fine for a console
        # page over logs of up to a few hundred thousand events.
        bodies = [orjson.loads(row.body) for row in store.iter_events()]
        # Calendar days in UTC, today's last (so far), each labelled with its own date: the
        # monthly review's days, and a plan submitted today shows under today.
        now = gateway.clock.now().astimezone(UTC)
        start = datetime.combine(now.date(), time(), tzinfo=UTC) - timedelta(days=days - 1)
        buckets = []
        for i in range(days):
            lo = start + timedelta(days=i)
            hi = lo + timedelta(days=1)
            buckets.append((lo.strftime("%m-%d"), compute(bodies, since=lo, until=hi)["all"]))
        total = compute(bodies, since=start, until=start + timedelta(days=days))["all"]
        charts = []
        for key, title, fmt, ceiling in _KPI_CHARTS:
            points = []
            for label, k in buckets:
                value = k[key]
                if key == "time_to_recovery_s":
                    value = value["median"]
                points.append((label, value))
            overall = total[key]["median"] if key == "time_to_recovery_s" else total[key]
            charts.append(
                {
                    "key": key,
                    "title": title,
                    "chart": chart(points, fmt=fmt, ceiling=ceiling),
                    "overall": "no data" if overall is None else fmt.format(overall),
                }
            )
        return charts, total

    @r.get("/dashboard")
    @guarded
    async def dashboard(
        request: Request, days: Annotated[int, Query(ge=1, le=90)] = 14
    ) -> Response:
        """KPIs over time, guard status with admin toggles, autonomy settings."""
        session = await session_of(request)
        if session is None:
            return to_login(request)
        p = session.principal
        if not may_read_audit(p):
            raise _Forbidden("the dashboard needs the auditor or admin role", field="role")
        charts, total = await run_in_threadpool(kpi_series, days)
        try:
            st: dict[str, Any] | None = await run_in_threadpool(proctor.guards.status)
        except ConfigError:
            st = None
        return render(
            request,
            "dashboard.html",
            session,
            charts=charts,
            counts=total["counts"],
            days=days,
            guards=st,
            is_admin=may_admin(p),
            actions=sorted(spec.name for spec in gateway.catalog),
            notice=_SAVED.get(request.query_params.get("done") or ""),
        )

    @r.post("/guards/breakers/{verb}")
    @guarded
    async def breaker_toggle(request: Request, verb: str) -> Response:
        """Force a circuit breaker open, or reset (close) it (admins)."""
        session, form = await posted(request)
        p = session.principal
        if not may_admin(p):
            raise PermissionDeniedError("circuit breakers need the admin role", field="role")
        if verb not in ("open", "reset"):
            raise NotFoundError(f"no breaker action {verb!r}", field="action")
        scope = _text(form, "scope", limit=16, required=True)
        key = _text(form, "key", limit=128, required=True)
        reason = _text(form, "reason", limit=MAX_COMMENT)
        unknown = _ticked(form, "allow_unknown")
        if verb == "open":
            opened = await run_in_threadpool(
                lambda: proctor.guards.force_open(
                    scope, key, by=p.name, reason=reason, allow_unknown=unknown
                )
            )
            outcome = "breaker-already" if opened["already"] else "breaker-opened"
            return RedirectResponse(f"/dashboard?done={outcome}", status_code=303)
        done = await run_in_threadpool(
            lambda: proctor.reset_breaker(scope, key, by=p.name, reason=reason)
        )
        outcome = "breaker-reset" if done else "breaker-closed"
        return RedirectResponse(f"/dashboard?done={outcome}", status_code=303)

    @r.post("/guards/{verb}")
    @guarded
    async def guard_toggle(request: Request, verb: str) -> Response:
        """Engage or release a kill switch (admins)."""
        session, form = await posted(request)
        p = session.principal
        if not may_admin(p):
            raise PermissionDeniedError("kill switches need the admin role", field="role")
        if verb not in ("kill", "unkill"):
            raise NotFoundError(f"no guard action {verb!r}", field="action")
        scope = _text(form, "scope", limit=16, required=True)
        key = _text(form, "key", limit=128) or None
        reason = _text(form, "reason", limit=MAX_COMMENT)
        unknown = _ticked(form, "allow_unknown")
        if verb == "kill":
            engaged = await run_in_threadpool(
                lambda: proctor.guards.engage(
                    scope, key, by=p.name, reason=reason, allow_unknown=unknown
                )
            )
            if engaged["already"]:
                return RedirectResponse("/dashboard?done=kill-already", status_code=303)
        else:
            await run_in_threadpool(lambda: proctor.guards.unkill(scope, key, by=p.name))
        return RedirectResponse("/dashboard?done=guards", status_code=303)
