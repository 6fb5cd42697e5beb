"""Principals, roles and API tokens: who is acting, and what each role may do.

A principal has a name, roles and approver groups. The role table (the ``may_*``
predicates, ``ACTION_ROLES``, ``check_role`` and ``check_plan_action``) is pure here so the
HTTP API, the console and the CLI ask the same question the same way. Tokens are stored only
as SHA-256 hashes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from proctor.core.approvals import check_not_requester, is_requester, is_user, user_key
from proctor.core.lifecycle import PlanRecord, PlanStatus
from proctor.errors import InvalidRequestError, NotFoundError, PermissionDeniedError

__all__ = [
    "ACTION_ROLES",
    "ROLES",
    "PlanAction",
    "Principal",
    "TokenRecord",
    "check_plan_action",
    "check_readable",
    "check_role",
    "may_act",
    "may_admin",
    "may_approve",
    "may_confirm",
    "may_read_audit",
    "may_read_plan",
    "may_reject",
    "may_submit",
    "may_undo",
    "plan_for_action",
    "plan_not_found",
    "reads_every_plan",
    "undo_as_admin",
]

ROLES: Final = ("agent", "user", "approver", "auditor", "admin")
"""Every role, least to most privileged (approver and auditor are siblings)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """Someone acting: an agent, a user, an approver, an auditor or an admin."""

    name: str
    roles: tuple[str, ...]
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [r for r in self.roles if r not in ROLES]
        if unknown:
            raise InvalidRequestError(
                f"unknown role {unknown[0]!r}; roles are {', '.join(ROLES)}", field="role"
            )

    def has(self, role: str) -> bool:
        """Whether the principal holds ``role`` (admin holds every reading right)."""
        return role in self.roles


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenRecord:
    """A stored API token: never the token, only its hash."""

    token_id: str
    name: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    token_hash: str
    created_at: datetime
    revoked_at: datetime | None = None

    def principal(self) -> Principal:
        """Return the principal this token authenticates."""
        return Principal(name=self.name, roles=self.roles, groups=self.groups)


def reads_every_plan(p: Principal) -> bool:
    """Whether ``p`` may read every plan (auditors and admins)."""
    return p.has("auditor") or p.has("admin")


def may_read_audit(p: Principal) -> bool:
    """Whether ``p`` may read the whole audit log, checkpoints, proofs and keys."""
    return p.has("auditor") or p.has("admin")


def may_admin(p: Principal) -> bool:
    """Whether ``p`` may manage the instance (tokens, keys, webhook dead letters)."""
    return p.has("admin")


def may_submit(p: Principal, agent_id: object) -> bool:
    """Whether ``p`` may submit a plan whose ``actor.agent_id`` is ``agent_id``.

    An agent submits only as itself: a token must not let one agent speak for another, or the
    audit log would attribute its actions to someone else.
    """
    return p.has("agent") and agent_id == p.name


def _is_user(p: Principal, plan: PlanRecord) -> bool:
    """Whether ``p`` is the user on whose behalf ``plan`` acts (names by ``person_key``)."""
    return p.has("user") and is_user(plan, p.name)


def may_confirm(p: Principal, plan: PlanRecord) -> bool:
    """Whether ``p`` may confirm ``plan``: the user on whose behalf it acts.

    Never the plan's own agent (a token holding both roles, on a plan it made on its own
    behalf): the console then offers no confirm button, and the gateway refuses it anyway
    (``proctor.core.approvals.check_not_requester``).
    """
    return _is_user(p, plan) and not is_requester(plan, p.name)


def _holds_required_group(p: Principal, plan: PlanRecord) -> bool:
    required = plan.decision.get("approver_roles", [])
    return not required or bool(set(required) & set(p.groups))


def may_approve(p: Principal, plan: PlanRecord) -> bool:
    """Whether ``p`` may take part in deciding ``plan`` as an approver.

    An approver needs one of the plan's approver groups (any approver when the policy named
    none). Separation of duties, quorum, expiry and the plan's state are the gateway's to
    check: this only says that the plan is this approver's business at all.
    """
    return p.has("approver") and _holds_required_group(p, plan)


def may_reject(p: Principal, plan: PlanRecord) -> bool:
    """Whether ``p`` may reject ``plan``: an approver of its groups, or its user.

    The on-behalf-of user may decline the plan while it waits for her confirmation and while
    it waits for approvers (it acts for her, and a "no" only stops it: also when she is the
    plan's own agent, withdrawing it); the gateway's ``check_can_reject`` has the
    rest of the rules (the requesting agent never rejects as an approver).
    """
    return may_approve(p, plan) or _is_user(p, plan)


def may_undo(p: Principal, plan: PlanRecord) -> bool:
    """Whether ``p`` may undo ``plan``: its user, or an admin."""
    return _is_user(p, plan) or p.has("admin")


def may_read_plan(p: Principal, plan: PlanRecord) -> bool:
    """Whether ``p`` may read ``plan`` (and its events).

    Auditors and admins read everything; an agent its own plans; a user the plans made on
    its behalf; an approver the plans waiting for one of its groups and those it decided.
    """
    if reads_every_plan(p):
        return True
    if p.has("agent") and plan.agent_id == p.name:
        return True
    if _is_user(p, plan):
        return True
    if p.has("approver"):
        me = user_key(p.name)  # a grant: no compatibility folding (``user_key``)
        if any(user_key(a.principal) == me for a in plan.approvals):
            return True
        waiting = plan.status is PlanStatus.AWAITING_APPROVAL
        roles = plan.decision.get("approver_roles", [])
        if waiting and (not roles or set(roles) & set(p.groups)):
            return True
    return False


def plan_not_found(plan_id: str) -> NotFoundError:
    """The refusal of a plan that does not exist: also of one the caller may not read.

    One constructor for both, so that the two answers are the same bytes (status, code,
    message, field, hint).
    """
    return NotFoundError(
        f"no plan {plan_id!r}", field="plan_id", hint="List plans with `proctor plans`."
    )


def check_readable(p: Principal, plan: PlanRecord | None, plan_id: str) -> PlanRecord:
    """Return ``plan`` if ``p`` may read it; refuse it as missing otherwise.

    A plan the caller may not read answers exactly as a plan that does not exist. A 403
    there would tell who asks whether a plan exists, and plan ids can be guessed: an MCP
    call's is derived from its agent, client, tool and arguments, so another agent could
    test whether a given call was made.

    Raises:
        NotFoundError: ``plan`` is None, or ``p`` may not read it (``plan_not_found``).
    """
    if plan is None or not may_read_plan(p, plan):
        raise plan_not_found(plan_id)
    return plan


PlanAction = Literal["confirm", "approve", "reject", "undo"]
"""A human action on a waiting or finished plan."""

ACTION_ROLES: Final[Mapping[str, tuple[str, ...]]] = {
    "confirm": ("user",),
    "approve": ("approver",),
    "reject": ("approver", "user"),
    "undo": ("user", "admin"),
}
"""The roles that may attempt each human action at all (any one of them is enough)."""

_MAY: Final[Mapping[str, Callable[[Principal, PlanRecord], bool]]] = {
    "confirm": may_confirm,
    "approve": may_approve,
    "reject": may_reject,
    "undo": may_undo,
}


def check_role(p: Principal, action: PlanAction) -> None:
    """Refuse ``p`` if it holds none of the roles that may attempt ``action``.

    Asked before the plan is read, so a principal without the role learns nothing about
    which plans exist; one with the role learns nothing either: a plan it may not read is
    refused as missing (``plan_for_action``).

    Raises:
        PermissionDeniedError: ``field="role"``.
    """
    roles = ACTION_ROLES.get(action)
    if roles is None:  # an unknown action is nobody's (fail closed)
        raise PermissionDeniedError(f"no plan action {action!r}", field="action")
    if not any(p.has(role) for role in roles):
        raise PermissionDeniedError(f"this needs the {' or '.join(roles)} role", field="role")


def check_plan_action(p: Principal, action: PlanAction, plan: PlanRecord) -> None:
    """Refuse ``p`` unless ``plan`` is its business for ``action`` (the role, then the plan).

    Separation of duties, quorum, expiry, step-up and the plan's state are the gateway's to
    check afterwards.

    Raises:
        PermissionDeniedError: ``field="role"`` or ``field="principal"``.
    """
    check_role(p, action)
    if not _MAY[action](p, plan):
        if action == "confirm" and _is_user(p, plan):
            check_not_requester(plan, p.name)  # its own plan: say that a person must confirm
        raise PermissionDeniedError(
            f"{p.name!r} may not {action} plan {plan.plan_id}", field="principal"
        )


def plan_for_action(
    p: Principal, action: PlanAction, plan: PlanRecord | None, plan_id: str
) -> PlanRecord:
    """Return ``plan`` if ``p`` may attempt ``action`` on it: the role, the plan, the action.

    The role first (whether the plan exists or not), then the plan as ``check_readable``
    (one the caller may not read is missing), then ``check_plan_action``: a 403 from here
    on tells nothing the caller could not read.

    Raises:
        PermissionDeniedError: the role (``field="role"``), or the action on a plan ``p``
            may read (``field="principal"``).
        NotFoundError: no such plan, or one ``p`` may not read.
    """
    check_role(p, action)
    rec = check_readable(p, plan, plan_id)
    check_plan_action(p, action, rec)
    return rec


def may_act(p: Principal, action: PlanAction, plan: PlanRecord) -> bool:
    """Whether ``check_plan_action`` lets ``p`` attempt ``action`` on ``plan``."""
    roles = ACTION_ROLES.get(action, ())
    return any(p.has(role) for role in roles) and _MAY[action](p, plan)


def undo_as_admin(p: Principal, plan: PlanRecord) -> bool:
    """Whether ``p`` undoes ``plan`` as an admin rather than as its on-behalf-of user."""
    return p.has("admin") and not _is_user(p, plan)
