"""``/v1/audit``: events, the signed checkpoint, proofs and keys; webhook dead letters."""

# NOTE(http): no `from __future__ import annotations` here: FastAPI reads the route
# signatures at runtime, and the aliases they use (Caller, PlanId) are local names.

import base64
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from starlette.responses import Response

from proctor.audit.events import UNSIGNED
from proctor.core.notifications import DeliveryStatus
from proctor.core.principals import Principal, may_admin, may_read_audit
from proctor.errors import NotFoundError, PermissionDeniedError
from proctor.http.context import AUTH_ERRORS, Context, errors_doc, json_response
from proctor.http.schemas import (
    AuditEventList,
    ConsistencyProof,
    DeadLetters,
    InclusionProof,
    KeysOut,
)

__all__ = ["router"]

_MAX_INDEX = 2**53  # larger than any log; keeps the numbers exact in JSON clients


def _auditor(p: Principal) -> None:
    if not may_read_audit(p):
        raise PermissionDeniedError("reading the audit log needs the auditor role", field="role")


def router(ctx: Context) -> APIRouter:
    """Build the audit routes over ``ctx``."""
    r = APIRouter(tags=["audit"])
    proctor = ctx.proctor
    store = proctor.gateway.store
    Caller = Annotated[Principal, Depends(ctx.auth)]

    @r.get(
        "/v1/audit/events",
        response_model=AuditEventList,
        summary="Read audit events",
        responses=errors_doc(*AUTH_ERRORS),
    )
    def audit_events(
        caller: Caller,
        after: Annotated[
            int, Query(ge=-1, le=_MAX_INDEX, description="Events after this seq.")
        ] = -1,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Response:
        """Audit events with ``seq > after``, in order, each exactly as signed."""
        _auditor(caller)
        rows = store.read_events(after=after, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        next_after = rows[-1].seq if more else None
        # The stored bytes are the canonical JSON of each event: splice them in unchanged.
        body = b'{"events":[' + b",".join(row.body for row in rows) + b'],"next_after":'
        body += (b"null" if next_after is None else str(next_after).encode()) + b"}"
        return Response(body, media_type="application/json")

    @r.get(
        "/v1/audit/checkpoint",
        summary="The latest signed checkpoint",
        response_class=Response,
        responses={
            200: {
                "description": "The C2SP signed note, exactly as signed.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **errors_doc(*AUTH_ERRORS, 404),
        },
    )
    def audit_checkpoint(caller: Caller) -> Response:
        """The latest signed checkpoint of the log (``text/plain``)."""
        _auditor(caller)
        cp = proctor.latest_checkpoint()
        if cp is None:
            raise NotFoundError("the log has no checkpoint yet", field="checkpoint")
        return Response(cp.note, media_type="text/plain; charset=utf-8")

    @r.get(
        "/v1/audit/proofs/inclusion",
        response_model=InclusionProof,
        summary="Inclusion proof of an event",
        responses=errors_doc(*AUTH_ERRORS),
    )
    def inclusion(
        caller: Caller,
        index: Annotated[int, Query(ge=0, le=_MAX_INDEX, description="The event's seq.")],
        size: Annotated[int | None, Query(ge=1, le=_MAX_INDEX, description="Tree size.")] = None,
    ) -> Response:
        """An RFC 9162 inclusion proof of event ``index`` in the tree of ``size`` (now)."""
        _auditor(caller)
        return json_response(proctor.inclusion_proof(index, size))

    @r.get(
        "/v1/audit/proofs/consistency",
        response_model=ConsistencyProof,
        summary="Consistency proof between two tree sizes",
        responses=errors_doc(*AUTH_ERRORS),
    )
    def consistency(
        caller: Caller,
        from_: Annotated[int, Query(alias="from", ge=1, le=_MAX_INDEX)],
        to: Annotated[int, Query(ge=1, le=_MAX_INDEX)],
    ) -> Response:
        """An RFC 9162 consistency proof from tree size ``from`` to ``to``."""
        _auditor(caller)
        return json_response(proctor.consistency_proof(from_, to))

    @r.get(
        "/v1/audit/keys",
        response_model=KeysOut,
        summary="Verifier and signing keys",
        responses=errors_doc(*AUTH_ERRORS),
    )
    def audit_keys(caller: Caller) -> Response:
        """The log's origin, its signed-note verifier keys and its public signing keys."""
        _auditor(caller)
        current = proctor.gateway.signer.key_id
        keys = [
            {
                "key_id": key_id,
                "public_key": base64.b64encode(info.public_key).decode(),
                "created_at": info.not_before.isoformat() if info.not_before else None,
                "not_after": info.not_after.isoformat() if info.not_after else None,
                "current": key_id == current,
            }
            for key_id, info in proctor.key_infos.items()
            if key_id != UNSIGNED  # an unsigned log (in memory) has no key to publish
        ]
        return json_response({"origin": proctor.origin, "vkeys": proctor.vkeys(), "keys": keys})

    @r.get(
        "/v1/webhooks/dead-letters",
        response_model=DeadLetters,
        summary="Webhook deliveries that gave up",
        tags=["webhooks"],
        responses=errors_doc(*AUTH_ERRORS),
    )
    def dead_letters(caller: Caller, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Response:
        """Deliveries dead-lettered after their last retry, newest first."""
        if not may_admin(caller):
            raise PermissionDeniedError("dead letters need the admin role", field="role")
        rows = store.deliveries(status=DeliveryStatus.DEAD.value, limit=limit)
        out = [
            {
                "delivery_id": d.delivery_id,
                "event": d.event,
                "target": d.target,
                "payload": d.payload.decode("utf-8", errors="replace"),
                "created_at": d.created_at.isoformat(),
                "next_at": d.next_at.isoformat(),
                "attempts": d.attempts,
                "status": d.status.value,
                "last_error": d.last_error,
            }
            for d in rows
        ]
        return json_response({"deliveries": out})

    return r
