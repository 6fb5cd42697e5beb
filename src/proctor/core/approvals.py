"""Who may confirm or approve a plan, and when the quorum is met.

Rules (DESIGN section 1, step 6):

* ``confirm``: only the on-behalf-of user confirms, with one click.
* ``approve``: N *distinct* approvers, each holding at least one required role, together
  covering every required role. The requester (the agent) and the on-behalf-of user never
  count: an approval from either would let the beneficiary approve their own action.
  These separation-of-duties checks, and "distinct", compare names by ``person_key``
  (NFKC, case-folded): ``Alice``, or ``alice`` in fullwidth letters, is ``alice``. Stored
  names stay as given.
* Every approval is bound to the plan's digest and the policy version that decided; if
  either changed since, the approval does not count (an edited plan is a new plan).
* Nothing counts after ``expires_at``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from datetime import datetime

from proctor.core.lifecycle import ApprovalRecord, PlanRecord, PlanStatus
from proctor.errors import ApprovalExpiredError, InvalidTransitionError, PermissionDeniedError

__all__ = [
    "check_can_approve",
    "check_can_confirm",
    "check_not_expired",
    "person_key",
    "quorum_met",
]


def person_key(name: str) -> str:
    """Return the form of ``name`` that separation of duties compares.

    Names come from token names, JWT claims and plan manifests, and nothing makes one
    person's spellings agree: an approver token ``Alice`` approving a plan made on behalf of
    ``alice`` would approve their own action. NFKC folds compatibility forms (fullwidth
    letters U+FF21-FF5A, ligatures, the Kelvin sign) into plain letters, ``casefold`` folds
    case (also ``ß`` to ``ss``), and NFKC again because case folding can leave a string
    unnormalised (Unicode's ``toNFKC_Casefold``). Look-alikes from other scripts (Cyrillic
    U+0430 for ``a``) stay distinct: that needs a confusables table (UTS #39).
    """
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def check_not_expired(plan: PlanRecord, now: datetime) -> None:
    """Raise if the plan's confirmation or approval window has closed.

    Raises:
        ApprovalExpiredError: when ``now`` is at or past ``expires_at``.
    """
    if plan.expires_at is not None and now >= plan.expires_at:
        raise ApprovalExpiredError(
            f"plan {plan.plan_id} expired at {plan.expires_at.isoformat()}",
            field="plan_id",
            hint="Ask the agent to submit the plan again.",
        )


def check_can_confirm(plan: PlanRecord, principal: str) -> None:
    """Check that ``principal`` may confirm ``plan``.

    Raises:
        InvalidTransitionError: if the plan does not wait for a confirmation.
        PermissionDeniedError: if the principal is not the on-behalf-of user.
    """
    if plan.status is not PlanStatus.AWAITING_CONFIRMATION:
        raise InvalidTransitionError(
            f"plan {plan.plan_id} is {plan.status.value}, not awaiting_confirmation",
            field="plan_id",
        )
    if principal != plan.on_behalf_of:
        raise PermissionDeniedError(
            f"only {plan.on_behalf_of!r}, on whose behalf the plan acts, may confirm it",
            field="principal",
        )


def check_can_approve(
    plan: PlanRecord, principal: str, roles: Iterable[str], required_roles: Sequence[str]
) -> None:
    """Check that ``principal`` may approve (or reject) ``plan``.

    Raises:
        InvalidTransitionError: if the plan does not wait for approval.
        PermissionDeniedError: for self-approval, a second vote, or a missing role.
    """
    if plan.status is not PlanStatus.AWAITING_APPROVAL:
        raise InvalidTransitionError(
            f"plan {plan.plan_id} is {plan.status.value}, not awaiting_approval",
            field="plan_id",
        )
    who = person_key(principal)
    if who in (person_key(plan.agent_id), person_key(plan.on_behalf_of)):
        raise PermissionDeniedError(
            f"{principal!r} requested this plan or benefits from it and cannot approve it",
            field="principal",
            hint="Separation of duties: another approver must decide.",
        )
    if any(person_key(a.principal) == who for a in plan.approvals if a.kind == "approve"):
        raise PermissionDeniedError(
            f"{principal!r} has already approved plan {plan.plan_id}", field="principal"
        )
    held = set(roles)
    if required_roles and not held.intersection(required_roles):
        raise PermissionDeniedError(
            f"approving this plan needs one of the roles {', '.join(required_roles)}",
            field="role",
        )


def quorum_met(
    plan: PlanRecord,
    approvals: Iterable[ApprovalRecord],
    *,
    count: int,
    required_roles: Sequence[str],
) -> bool:
    """Return whether valid approvals reach the quorum.

    An approval counts only if it is an ``approve`` bound to the plan's current digest and
    policy version, from a distinct principal who is neither requester nor beneficiary and
    who holds one of the required roles (names compared by ``person_key``). Together the
    counted approvers must cover every required role.
    """
    parties = (person_key(plan.agent_id), person_key(plan.on_behalf_of))
    counted: dict[str, set[str]] = {}
    for a in approvals:
        if a.kind != "approve" or a.digest != plan.digest:
            continue
        if a.policy_version != plan.policy_version:
            continue
        who = person_key(a.principal)
        if who in parties or who in counted:
            continue
        held = set(a.roles)
        if required_roles and not held.intersection(required_roles):
            continue
        counted[who] = held
    if len(counted) < max(count, 1):
        return False
    covered = set().union(*counted.values()) if counted else set()
    return all(role in covered for role in required_roles)
