"""Principals, roles and API tokens: who is acting, and what each role may do.

A principal has a name, roles and approver groups. The role table (``may_read``,
``ROLE_ACTIONS``) is pure data here so the HTTP API, the console and the CLI ask the same
question the same way. Tokens are stored only as SHA-256 hashes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from proctor.core.lifecycle import PlanRecord, PlanStatus
from proctor.errors import InvalidRequestError

__all__ = [
    "ROLES",
    "Principal",
    "TokenRecord",
    "may_admin",
    "may_approve",
    "may_confirm",
    "may_read_audit",
    "may_read_plan",
    "may_reject",
    "may_submit",
    "may_undo",
    "reads_every_plan",
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


def may_confirm(p: Principal, plan: PlanRecord) -> bool:
    """Whether ``p`` may confirm ``plan``: the user on whose behalf it acts."""
    return p.has("user") and plan.on_behalf_of == p.name


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

    The on-behalf-of user rejects a confirmation; the gateway refuses that user for an
    approval (it benefits from the plan).
    """
    return may_approve(p, plan) or may_confirm(p, plan)


def may_undo(p: Principal, plan: PlanRecord) -> bool:
    """Whether ``p`` may undo ``plan``: its user, or an admin."""
    return may_confirm(p, plan) or p.has("admin")


def may_read_plan(p: Principal, plan: PlanRecord) -> bool:
    """Whether ``p`` may read ``plan`` (and its events).

    Auditors and admins read everything; an agent its own plans; a user the plans made on
    its behalf; an approver the plans waiting for one of its groups and those it decided.
    """
    if reads_every_plan(p):
        return True
    if p.has("agent") and plan.agent_id == p.name:
        return True
    if p.has("user") and plan.on_behalf_of == p.name:
        return True
    if p.has("approver"):
        if any(a.principal == p.name for a in plan.approvals):
            return True
        waiting = plan.status is PlanStatus.AWAITING_APPROVAL
        roles = plan.decision.get("approver_roles", [])
        if waiting and (not roles or set(roles) & set(p.groups)):
            return True
    return False
