"""Guards over HTTP: kill switches, breakers, whitelists, status, autonomy, reviews, complaints.

Admins engage and release kill switches, force circuit breakers open and reset them, and set
whitelists; admins and auditors read the
guard status and the review queue and mark reviews; users read and set their own autonomy,
answer promotion suggestions, and complain about actions done on their behalf.
"""

# NOTE(http): no `from __future__ import annotations` here: FastAPI reads the route
# signatures at runtime.

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from proctor.cli.render import plan_json
from proctor.core.canonical import MAX_SAFE_INT
from proctor.core.principals import Principal, check_readable, may_confirm
from proctor.errors import PermissionDeniedError
from proctor.http.context import AUTH_ERRORS, Context, errors_doc, json_response
from proctor.http.schemas import ID_PATTERN, MAX_COMMENT

__all__ = ["router"]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}$"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KillBody(_In):
    """Which kill switch: ``global``, or an agent or an action by name."""

    scope: Literal["global", "agent", "action"]
    key: str | None = Field(default=None, pattern=_NAME)
    reason: str = Field(default="", max_length=MAX_COMMENT)
    allow_unknown: bool = Field(
        default=False,
        description="Engage a switch on an action the catalog does not know, or an agent"
        " nothing here has named yet (kill only).",
    )


class BreakerBody(_In):
    """Which circuit breaker: an agent's or an action's, by name."""

    scope: Literal["agent", "action"]
    key: str = Field(pattern=_NAME)
    reason: str = Field(default="", max_length=MAX_COMMENT)
    allow_unknown: bool = Field(
        default=False,
        description="Force open the breaker of an action the catalog does not know, or of an"
        " agent nothing here has named yet (open only).",
    )


class WhitelistBody(_In):
    """The actions an agent may use at all; null removes the limit."""

    actions: list[str] | None = Field(max_length=1000)


class AutonomyBody(_In):
    """A user's autonomy level for one action (users set their own; admins anyone's)."""

    user: str | None = Field(default=None, pattern=_NAME)
    action: str = Field(pattern=_NAME)
    level: Literal["propose", "confirm", "auto"]
    # Strict: an amount is a JSON integer in minor units, as in a plan's params; lax
    # validation read true as 1, "5000" as 5000 and 5000.0 as 5000.
    below: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SAFE_INT,
        strict=True,
        description="auto only below this amount (a JSON integer, minor units)",
    )


class PromotionBody(_In):
    """The user's answer to a promotion suggestion."""

    action: str = Field(pattern=_NAME)
    accept: bool


class ReviewBody(_In):
    """A reviewer's verdict on a sampled, auto-executed plan."""

    verdict: Literal["fine", "wrong"]
    note: str = Field(default="", max_length=MAX_COMMENT)


class ComplaintBody(_In):
    """A user's complaint about an action done on their behalf."""

    reason: str = Field(min_length=1, max_length=MAX_COMMENT)


def router(ctx: Context) -> APIRouter:
    """Build the guard routes over ``ctx``."""
    r = APIRouter(prefix="/v1", tags=["guards"])
    proctor = ctx.proctor
    Caller = Annotated[Principal, Depends(ctx.auth)]
    PlanId = Annotated[str, Path(pattern=ID_PATTERN, description="The plan id.")]
    errors = errors_doc(400, *AUTH_ERRORS, 404, 409)

    def need(p: Principal, *roles: str) -> None:
        if not any(p.has(role) for role in roles):
            raise PermissionDeniedError(f"this needs the {' or '.join(roles)} role", field="role")

    @r.get("/guards", summary="Guard status (admin, auditor)", responses=errors)
    def status(caller: Caller) -> Response:
        """Kill switches, breakers, whitelists, autonomy settings, promotions and budgets."""
        need(caller, "admin", "auditor")
        return json_response(proctor.guards.status())

    @r.post("/guards/kill", summary="Engage a kill switch (admin)", responses=errors)
    def kill(caller: Caller, body: KillBody) -> Response:
        """Stop agentic work globally, for an agent, or for an action, until released.

        ``already`` is null, or (a switch engaged before, left as it was) who engaged it.
        """
        need(caller, "admin")
        done = proctor.guards.engage(
            body.scope,
            body.key,
            by=caller.name,
            reason=body.reason,
            allow_unknown=body.allow_unknown,
        )
        return json_response(done)

    @r.post("/guards/unkill", summary="Release a kill switch (admin)", responses=errors)
    def unkill(caller: Caller, body: KillBody) -> Response:
        """Release a kill switch; ``released`` is false when it was not engaged."""
        need(caller, "admin")
        released = proctor.guards.unkill(body.scope, body.key, by=caller.name)
        return json_response({"released": released})

    @r.post(
        "/guards/breakers/open", summary="Force a circuit breaker open (admin)", responses=errors
    )
    def open_breaker(caller: Caller, body: BreakerBody) -> Response:
        """Hold an agent's or an action's breaker open until reset: agentic work needs approval.

        ``already`` is null, or (a breaker held open before, left as it was) who forced it.
        """
        need(caller, "admin")
        done = proctor.guards.force_open(
            body.scope,
            body.key,
            by=caller.name,
            reason=body.reason,
            allow_unknown=body.allow_unknown,
        )
        return json_response(done)

    @r.post(
        "/guards/breakers/reset",
        summary="Reset (close) a circuit breaker (admin)",
        responses=errors,
    )
    def reset_breaker(caller: Caller, body: BreakerBody) -> Response:
        """Close an open or half-open breaker; ``reset`` is false when it was not open."""
        need(caller, "admin")
        done = proctor.reset_breaker(body.scope, body.key, by=caller.name, reason=body.reason)
        return json_response({"breaker": f"{body.scope}:{body.key}", "reset": done})

    @r.put(
        "/guards/whitelists/{agent}",
        summary="Set the actions an agent may use (admin)",
        responses=errors,
    )
    def whitelist(
        agent: Annotated[str, Path(pattern=_NAME)], caller: Caller, body: WhitelistBody
    ) -> Response:
        """Limit an agent to a list of actions; ``null`` removes the limit."""
        need(caller, "admin")
        proctor.guards.set_whitelist(agent, body.actions, by=caller.name)
        return json_response({"agent": agent, "actions": body.actions})

    @r.get("/autonomy", summary="Autonomy settings (yours; all for admins)", responses=errors)
    def autonomy(caller: Caller) -> Response:
        """Your autonomy levels and promotions (an admin sees everyone's).

        ``suggestions`` lists the promotions that wait for your answer (``POST
        /v1/autonomy/promotions``).
        """
        need(caller, "user", "admin")
        st = proctor.guards.status()

        def mine(d: dict[str, Any]) -> dict[str, Any]:
            if caller.has("admin"):
                return d
            return {k: v for k, v in d.items() if k.partition("|")[0] == caller.name}

        return json_response(
            {
                "autonomy": mine(st["autonomy"]),
                "promotions": mine(st["promotions"]),
                "suggestions": proctor.guards.suggestions(caller.name),
            }
        )

    @r.put("/autonomy", summary="Set an autonomy level", responses=errors)
    def set_autonomy(caller: Caller, body: AutonomyBody) -> Response:
        """Set your level for an action (an admin may set anyone's with ``user``)."""
        user = body.user or caller.name
        if user != caller.name:
            need(caller, "admin")
        else:
            need(caller, "user", "admin")
        proctor.guards.set_autonomy(user, body.action, body.level, below=body.below, by=caller.name)
        return json_response(
            {"user": user, "action": body.action, "level": body.level, "below": body.below}
        )

    @r.post("/autonomy/promotions", summary="Accept or decline a promotion", responses=errors)
    def promotion(caller: Caller, body: PromotionBody) -> Response:
        """Opt in to (or out of) the promotion Proctor suggested for one of your actions."""
        need(caller, "user")
        level = proctor.guards.answer_promotion(caller.name, body.action, accept=body.accept)
        return json_response({"action": body.action, "level": level})

    @r.get("/reviews", summary="The post-hoc review queue (admin, auditor)", responses=errors)
    def reviews(caller: Caller) -> Response:
        """Sampled auto-executed plans no reviewer has marked yet, newest first."""
        need(caller, "admin", "auditor")
        return json_response({"plans": [plan_json(p) for p in proctor.guards.review_queue()]})

    @r.post(
        "/plans/{plan_id}/review", summary="Mark a sampled plan (admin, auditor)", responses=errors
    )
    def review(plan_id: PlanId, caller: Caller, body: ReviewBody) -> Response:
        """Mark a sampled plan fine or wrong (wrong counts as a false action)."""
        need(caller, "admin", "auditor")
        proctor.guards.mark_review(plan_id, body.verdict, reviewer=caller.name, note=body.note)
        return json_response({"plan_id": plan_id, "verdict": body.verdict})

    @r.post("/plans/{plan_id}/complaints", summary="Complain about an action", responses=errors)
    def complain(plan_id: PlanId, caller: Caller, body: ComplaintBody) -> Response:
        """Its user (or an admin) says an action was wrong (a false action in the KPIs)."""
        # The role, then the plan as its reader sees it: one the caller may not read is
        # missing (404), so the refusal does not confirm that a guessed plan id exists.
        need(caller, "user", "admin")
        rec = check_readable(caller, proctor.gateway.store.get_plan(plan_id), plan_id)
        if not (caller.has("admin") or (caller.has("user") and may_confirm(caller, rec))):
            raise PermissionDeniedError(
                f"{caller.name!r} may not complain about plan {plan_id}", field="principal"
            )
        proctor.guards.complain(plan_id, by=caller.name, reason=body.reason)
        return json_response({"plan_id": plan_id, "filed": True}, 201)

    return r
