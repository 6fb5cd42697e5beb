"""Who may confirm or approve a plan, and when the quorum is met.

Rules (DESIGN section 1, step 6):

* ``confirm``: only the on-behalf-of user confirms, with one click, and never
  when that name is also the plan's requester (its ``agent_id``, compared by ``person_key``):
  a token that holds both the ``agent`` and ``user`` roles would otherwise submit a plan on
  its own behalf and confirm it, and "ask the user" would ask nobody. Such a plan may still
  be submitted (the policy may let it run, or send it to approvers, who are third parties);
  if it needs a confirmation, nobody can give it and it expires.
* ``approve``: every step the policy decided ``approve`` has its own quorum: its number of
  *distinct* approvers, each holding at least one of that step's roles, together covering
  every role of that step. One approver counts towards each step whose roles they hold; the
  plan runs when every step's quorum is met (``step_quorums``, ``approvals_complete``). The
  requester (the agent) and the on-behalf-of user never count: an approval from either
  would let the beneficiary approve their own action.
* A plan with ``confirm`` steps *and* ``approve`` steps needs both: its user confirms first,
  then the approvers decide. An approval never stands in for the user's confirmation.
  These separation-of-duties checks, and "distinct", compare names by ``person_key``
  (NFKC, case-folded): ``Alice``, or ``alice`` in fullwidth letters, is ``alice``. Stored
  names stay as given.
* Every approval is bound to the plan's digest and the policy version that decided; if
  either changed since, the approval does not count (an edited plan is a new plan).
* Nothing counts after ``expires_at``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from proctor.core.lifecycle import ApprovalRecord, PlanRecord, PlanStatus
from proctor.errors import ApprovalExpiredError, InvalidTransitionError, PermissionDeniedError

__all__ = [
    "StepQuorum",
    "approvals_complete",
    "check_can_approve",
    "check_can_confirm",
    "check_can_reject",
    "check_not_expired",
    "check_not_requester",
    "confirmation_required",
    "confirmed",
    "is_requester",
    "is_user",
    "person_key",
    "quorum_met",
    "quorum_requirements",
    "step_quorums",
    "tally",
    "user_key",
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
            hint="Ask the agent to submit the plan again under a new plan_id (the same id"
            " returns this expired plan).",
        )


def is_requester(plan: PlanRecord, principal: str) -> bool:
    """Return whether ``principal`` is the agent that requested ``plan`` (by ``person_key``).

    Over HTTP a plan's ``agent_id`` is always the name of the token that submitted it (an
    agent submits only as itself), so this catches the agent's own token whatever else it
    holds; an MCP call's plan records the proxy's ``--agent`` as ``agent_id`` (the client's
    name goes into ``actor.name`` only).
    """
    return person_key(principal) == person_key(plan.agent_id)


def user_key(name: str) -> str:
    """Return the key that finds a user's plans and grants her their actions.

    An ASCII name case-folded, which is ``person_key`` for the ASCII names every
    ``on_behalf_of`` is (``PERSON_NAME``); any other name as given, so it matches no plan.
    ``person_key`` also folds compatibility forms, right for a refusal (separation of
    duties) but not for a grant: a JWT's name claim is not held to ``PERSON_NAME``, and one
    named ``alice`` in fullwidth letters (U+FF41...) or with the Kelvin sign for ``K`` would be
    ``alice``, with her plans.
    """
    return name.lower() if name.isascii() else name


def is_user(plan: PlanRecord, principal: str) -> bool:
    """Return whether ``principal`` is the user on whose behalf ``plan`` acts (``user_key``).

    Case-insensitive, as separation of duties compares: a plan made for ``Bob@Example.com``
    is ``bob@example.com``'s to read, confirm, decline and undo. Were "who is the user"
    exact while "who may not approve" folds case, the user's own token could neither
    confirm nor read the plan, and it would wait until it expired.
    """
    return user_key(principal) == user_key(plan.on_behalf_of)


def check_not_requester(plan: PlanRecord, principal: str) -> None:
    """Refuse a confirmation of ``plan`` by the agent that requested it.

    A decline only stops the plan: ``check_can_reject`` lets its on-behalf-of user decline
    it also when she is its agent (withdrawing it).

    Raises:
        PermissionDeniedError: ``field="principal"``, when ``principal`` is the plan's agent.
    """
    # Separation of duties: the confirmation is the user's consent to what the agent asks.
    # A principal named like the agent (a token holding both roles, or a spelling that folds
    # to the agent's name) answering it would make "ask the user" ask the agent itself.
    if is_requester(plan, principal):
        raise PermissionDeniedError(
            f"{principal!r} requested plan {plan.plan_id} and cannot confirm it",
            field="principal",
            hint="A person must confirm, with a separate user credential: a token (or login)"
            " whose name is the plan's on_behalf_of user, not the agent's. An agent that acts"
            " on its own behalf has nobody to ask: such a plan waits until it expires.",
        )


def check_can_confirm(plan: PlanRecord, principal: str) -> None:
    """Check that ``principal`` may confirm ``plan`` (``check_can_reject`` for a decline).

    Raises:
        InvalidTransitionError: if the plan does not wait for a confirmation.
        PermissionDeniedError: if the principal is the plan's requester (its agent), or not
            the on-behalf-of user.
    """
    if plan.status is not PlanStatus.AWAITING_CONFIRMATION:
        raise InvalidTransitionError(
            f"plan {plan.plan_id} is {plan.status.value}, not awaiting_confirmation",
            field="plan_id",
        )
    check_not_requester(plan, principal)
    if not is_user(plan, principal):
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


def check_can_reject(
    plan: PlanRecord, principal: str, roles: Iterable[str], required_roles: Sequence[str]
) -> None:
    """Check that ``principal`` may reject (decline) ``plan`` while it waits.

    * The on-behalf-of user may decline it in either waiting state: it acts for her, and a
      "no" from her can only stop it (names compared as ``check_can_confirm`` does).
    * While it waits for approvers, an approver holding one of ``required_roles`` may reject
      it, also one who approved it before the quorum was met (she changed her mind).
    * Nobody else: not the requesting agent (separation of duties; an agent that is also
      the on-behalf-of user declines as that user), not an approver without a required role.

    Raises:
        InvalidTransitionError: if the plan does not wait for a confirmation or approval.
        PermissionDeniedError: for anyone the rules above leave out.
    """
    waiting = (PlanStatus.AWAITING_CONFIRMATION, PlanStatus.AWAITING_APPROVAL)
    if plan.status not in waiting:
        raise InvalidTransitionError(
            f"plan {plan.plan_id} is {plan.status.value}, not awaiting_confirmation or"
            " awaiting_approval",
            field="plan_id",
        )
    if is_user(plan, principal):
        return
    if plan.status is PlanStatus.AWAITING_CONFIRMATION:
        raise PermissionDeniedError(
            f"only {plan.on_behalf_of!r}, on whose behalf the plan acts, may decline it",
            field="principal",
        )
    if person_key(principal) == person_key(plan.agent_id):
        raise PermissionDeniedError(
            f"{principal!r} requested this plan and cannot reject it as an approver",
            field="principal",
            hint="Separation of duties: an approver or the on-behalf-of user decides.",
        )
    if required_roles and not set(roles).intersection(required_roles):
        raise PermissionDeniedError(
            f"rejecting this plan needs one of the roles {', '.join(required_roles)}",
            field="role",
        )


def quorum_met(
    plan: PlanRecord,
    approvals: Iterable[ApprovalRecord],
    *,
    count: int,
    required_roles: Sequence[str],
) -> bool:
    """Return whether valid approvals reach one quorum (``step_quorums`` checks a plan's).

    An approval counts only if it is an ``approve`` bound to the plan's current digest and
    policy version, from a distinct principal who is neither requester nor beneficiary and
    who holds one of the required roles (names compared by ``person_key``). Together the
    counted approvers must cover every required role.
    """
    return tally([("", count, tuple(required_roles))], _valid_votes(plan, approvals))[0].met


@dataclass(frozen=True, slots=True, kw_only=True)
class StepQuorum:
    """Where one approving step's quorum stands.

    Attributes:
        step_id: The step (``""`` for the plan-level quorum of a decision without any
            ``approve`` step, kept for plans stored in another shape).
        required: Distinct approvers it needs (at least 1).
        roles: The roles they must hold (each one of them) and together cover; empty: any.
        approved_by: The approvers counted for it, as they gave their names, in vote order.
        met: Whether enough of them cover every role.
    """

    step_id: str
    required: int
    roles: tuple[str, ...]
    approved_by: tuple[str, ...]
    met: bool

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON form (the plan JSON's ``step_quorums``)."""
        return {
            "step_id": self.step_id,
            "approvals_required": self.required,
            "approver_roles": list(self.roles),
            "approved_by": list(self.approved_by),
            "met": self.met,
        }


def confirmation_required(decision: Mapping[str, Any]) -> bool:
    """Return whether a stored decision needs its on-behalf-of user's confirmation.

    It does when a step was decided ``confirm``, also when another step needs approvers:
    the approvers answer for the plan, the user for her own consent, and neither stands in
    for the other.
    """
    return any(s.get("outcome") == "confirm" for s in decision.get("steps", ()))


def confirmed(plan: PlanRecord, approvals: Iterable[ApprovalRecord] | None = None) -> bool:
    """Return whether the on-behalf-of user has confirmed this very plan.

    Only a ``confirm`` by the on-behalf-of user bound to the plan's current digest and
    policy version counts (as for approvals: an edited plan is a new plan), and never one
    by the plan's requester (``check_not_requester``; a confirmation stored before that
    rule must not let the plan run either).
    """
    return any(
        a.kind == "confirm"
        and is_user(plan, a.principal)
        and not is_requester(plan, a.principal)
        and a.digest == plan.digest
        and a.policy_version == plan.policy_version
        for a in (plan.approvals if approvals is None else approvals)
    )


def quorum_requirements(
    decision: Mapping[str, Any],
) -> tuple[tuple[str, int, tuple[str, ...]], ...]:
    """Return each approving step's quorum ``(step_id, count, roles)`` from a stored decision.

    A decision without any ``approve`` step (a plan stored in another shape that still waits
    for approvers) yields its plan-level quorum under the step id ``""``: never no quorum,
    which every set of approvals would trivially meet.
    """
    out = []
    for s in decision.get("steps", ()):
        if s.get("outcome") == "approve":
            roles = tuple(s.get("approver_roles") or ())
            out.append((str(s["step_id"]), max(int(s.get("approvals") or 0), 1), roles))
    if not out:
        roles = tuple(decision.get("approver_roles") or ())
        out.append(("", max(int(decision.get("approvals") or 0), 1), roles))
    return tuple(out)


def tally(
    requirements: Sequence[tuple[str, int, Sequence[str]]],
    votes: Iterable[tuple[str, Iterable[str]]],
) -> tuple[StepQuorum, ...]:
    """Count votes ``(principal, roles)`` against each quorum ``(step_id, count, roles)``.

    The votes must already be valid and distinct (``step_quorums`` filters them); a vote
    counts towards every step one of whose roles it holds (any step without roles).
    """
    held_by = [(who, frozenset(held)) for who, held in votes]
    out = []
    for step_id, count, roles in requirements:
        wanted = set(roles)
        counted = [(who, held) for who, held in held_by if not wanted or wanted & held]
        covered: set[str] = set().union(*(held for _, held in counted))
        out.append(
            StepQuorum(
                step_id=step_id,
                required=max(count, 1),
                roles=tuple(roles),
                approved_by=tuple(who for who, _ in counted),
                met=len(counted) >= max(count, 1) and wanted <= covered,
            )
        )
    return tuple(out)


def _valid_votes(
    plan: PlanRecord, approvals: Iterable[ApprovalRecord]
) -> list[tuple[str, Iterable[str]]]:
    """The approvals that may count: bound, distinct, from neither requester nor beneficiary."""
    parties = (person_key(plan.agent_id), person_key(plan.on_behalf_of))
    seen: set[str] = set()
    out: list[tuple[str, Iterable[str]]] = []
    for a in approvals:
        if a.kind != "approve" or a.digest != plan.digest:
            continue
        if a.policy_version != plan.policy_version:
            continue
        who = person_key(a.principal)
        if who in parties or who in seen:
            continue
        seen.add(who)
        out.append((a.principal, a.roles))
    return out


def step_quorums(
    plan: PlanRecord, approvals: Iterable[ApprovalRecord] | None = None
) -> tuple[StepQuorum, ...]:
    """Return where each approving step's quorum stands (default: the plan's approvals).

    Each step decided ``approve`` needs its own number of distinct approvers holding one of
    its roles, together covering them all: a step that needs two ``finance`` approvers is
    not satisfied by one ``finance`` and one ``hr`` approver because another step needs
    ``hr``. Who may count is the same as for ``quorum_met``.
    """
    votes = _valid_votes(plan, plan.approvals if approvals is None else approvals)
    return tally(quorum_requirements(plan.decision), votes)


def approvals_complete(plan: PlanRecord, approvals: Iterable[ApprovalRecord]) -> bool:
    """Return whether the plan may run on these approvals.

    Every approving step's quorum is met and, if the plan has ``confirm`` steps, its user
    has confirmed it. The order of the waits (confirmation first) already guarantees the
    latter; it is checked again here so that no path to ``running`` can skip it.
    """
    approvals = list(approvals)
    if confirmation_required(plan.decision) and not confirmed(plan, approvals):
        return False
    return all(q.met for q in step_quorums(plan, approvals))
