"""Plan and step state machines, and the records the store keeps.

Only the transitions listed in ``PLAN_TRANSITIONS`` and ``STEP_TRANSITIONS`` are legal;
``PlanRecord.moved_to`` raises ``InvalidTransitionError`` for any other. A terminal plan never
moves again except ``succeeded → undone`` (within the undo window) and the compensation path
(a rollback TTL that undoes only some steps ends ``succeeded`` again).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from proctor.core.plans import idempotency_key
from proctor.errors import InvalidTransitionError

__all__ = [
    "PLAN_TRANSITIONS",
    "STEP_TRANSITIONS",
    "ApprovalRecord",
    "PlanRecord",
    "PlanStatus",
    "StepRecord",
    "StepStatus",
]


class PlanStatus(StrEnum):
    """Where a plan is in its life."""

    REJECTED = "rejected"  # invalid input, or a human rejected it
    DENIED = "denied"  # the policy said no
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    AWAITING_APPROVAL = "awaiting_approval"
    RUNNING = "running"
    COMPENSATING = "compensating"  # a saga is undoing completed steps (failure, undo, TTL)
    NEEDS_ATTENTION = "needs_attention"  # a step's effect is unknown: a human must resolve it
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # a step failed and the plan could not be fully compensated
    COMPENSATED = "compensated"  # a step failed and completed steps were undone
    UNDONE = "undone"  # the user (or a rollback TTL) undid a succeeded plan
    EXPIRED = "expired"  # nobody confirmed or approved in time
    SIMULATED = "simulated"  # sandbox mode: decided and dry-run, no handler ran


class StepStatus(StrEnum):
    """Where a step is in its life."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # never ran: the plan was denied, rejected, expired or failed earlier
    UNKNOWN = "unknown"  # interrupted or timed out, and not to be retried: a human resolves it
    COMPENSATING = "compensating"  # its compensation is in flight
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"
    SIMULATED = "simulated"


_P = PlanStatus
PLAN_TRANSITIONS: Mapping[PlanStatus, frozenset[PlanStatus]] = {
    # -> awaiting_approval: its user confirmed a plan that also needs approvers (she first).
    _P.AWAITING_CONFIRMATION: frozenset(
        {_P.RUNNING, _P.AWAITING_APPROVAL, _P.REJECTED, _P.EXPIRED, _P.SIMULATED}
    ),
    _P.AWAITING_APPROVAL: frozenset({_P.RUNNING, _P.REJECTED, _P.EXPIRED, _P.SIMULATED}),
    # -> expired: cleared, then queued for a runner that did not take it before its start-by
    # time (``PlanRecord.start_by``, ``[execution] queue_ttl_seconds``); no step had started.
    _P.RUNNING: frozenset(
        {_P.SUCCEEDED, _P.FAILED, _P.COMPENSATING, _P.NEEDS_ATTENTION, _P.EXPIRED}
    ),
    # Back to succeeded: a rollback TTL undid the steps whose TTL passed; the others stand.
    _P.COMPENSATING: frozenset({_P.COMPENSATED, _P.FAILED, _P.UNDONE, _P.SUCCEEDED}),
    _P.NEEDS_ATTENTION: frozenset({_P.RUNNING, _P.SUCCEEDED, _P.COMPENSATING, _P.FAILED}),
    _P.SUCCEEDED: frozenset({_P.COMPENSATING}),
    _P.REJECTED: frozenset(),
    _P.DENIED: frozenset(),
    _P.FAILED: frozenset(),
    _P.COMPENSATED: frozenset(),
    _P.UNDONE: frozenset(),
    _P.EXPIRED: frozenset(),
    _P.SIMULATED: frozenset(),
}
"""Legal plan transitions. New plans start in any status (the first decision)."""

_S = StepStatus
STEP_TRANSITIONS: Mapping[StepStatus, frozenset[StepStatus]] = {
    # pending -> failed: refused at its start, never run (the catalog no longer accepts it).
    _S.PENDING: frozenset({_S.RUNNING, _S.FAILED, _S.SKIPPED, _S.SIMULATED}),
    _S.RUNNING: frozenset({_S.SUCCEEDED, _S.FAILED, _S.UNKNOWN}),
    _S.UNKNOWN: frozenset({_S.SUCCEEDED, _S.FAILED}),
    _S.SUCCEEDED: frozenset({_S.COMPENSATING}),
    _S.COMPENSATING: frozenset({_S.COMPENSATED, _S.COMPENSATION_FAILED}),
    _S.FAILED: frozenset(),
    _S.SKIPPED: frozenset(),
    _S.COMPENSATED: frozenset(),
    _S.COMPENSATION_FAILED: frozenset(),
    _S.SIMULATED: frozenset(),
}

_FIELD_NAMES: dict[type, frozenset[str]] = {}
_R = TypeVar("_R", "StepRecord", "PlanRecord")


def _evolve(record: _R, changes: Mapping[str, Any]) -> _R:
    """``dataclasses.replace`` for the records below, at about half its cost.

    A single-step plan goes through seven of these copies on its way to ``succeeded``;
    ``replace`` rebuilds the field list and goes through ``__init__``'s keyword parsing on
    every one (15 µs for a ``PlanRecord`` here, 7 µs this way). Valid only for frozen,
    slotted dataclasses without ``__post_init__`` or ``InitVar`` fields, which these records
    are (a test keeps them so).
    """
    cls = type(record)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = frozenset(f.name for f in dataclasses.fields(cls))
    unknown = changes.keys() - names
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {sorted(unknown)[0]!r}")
    new = object.__new__(cls)
    put = object.__setattr__
    for name in names:
        put(new, name, changes[name] if name in changes else getattr(record, name))
    return new


TERMINAL: frozenset[PlanStatus] = frozenset(s for s, nxt in PLAN_TRANSITIONS.items() if not nxt) | {
    PlanStatus.SUCCEEDED
}


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRecord:
    """A step's stored state."""

    step_id: str
    index: int
    action: str
    params: Mapping[str, Any]
    status: StepStatus = StepStatus.PENDING
    outcome: str = ""
    attempts: int = 0
    result: Any = None
    error: str | None = None
    simulation: Any = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    undo_until: datetime | None = None
    rollback_at: datetime | None = None
    canary: Any = None  # the staging run and its success check, for canaried actions
    drift: Any = None  # predicted (simulation) versus actual effects

    def moved_to(self, status: StepStatus, **changes: Any) -> StepRecord:
        """Return a copy in ``status``.

        Raises:
            InvalidTransitionError: if the transition is not legal.
        """
        if status not in STEP_TRANSITIONS[self.status]:
            raise InvalidTransitionError(
                f"step {self.step_id} cannot go from {self.status.value} to {status.value}",
                field="status",
            )
        return _evolve(self, {**changes, "status": status})


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalRecord:
    """A human decision on a waiting plan: a confirmation, an approval or a rejection."""

    principal: str
    kind: str  # "confirm" | "approve" | "reject"
    roles: tuple[str, ...]
    digest: str
    policy_version: str
    comment: str
    created_at: datetime
    step_up: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanRecord:
    """A plan's stored state: manifest, decision, status, steps and approvals."""

    plan_id: str
    digest: str
    status: PlanStatus
    agent_id: str
    on_behalf_of: str
    manifest: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime
    assessment: Mapping[str, Any]
    decision: Mapping[str, Any]
    policy_version: str
    outcome: str
    steps: tuple[StepRecord, ...]
    approvals: tuple[ApprovalRecord, ...] = ()
    expires_at: datetime | None = None
    error: str | None = None
    sandbox: bool = False
    review: bool = False  # sampled for post-hoc review
    review_verdict: str | None = None  # "fine" | "wrong", once a reviewer looked
    lease_owner: str | None = None  # the worker running it now
    lease_until: datetime | None = None  # when that lease lapses (another worker may take over)
    deadline: datetime | None = None  # no step starts (or retries) after this
    # A queued plan (cleared by a human, running with no lease) expires unstarted after this
    # unless a process that runs it claims it first; cleared when a step starts.
    start_by: datetime | None = None
    # A call handed to a remote MCP proxy (running, no lease, its step pending while the
    # proxy makes it) needs attention after this unless the proxy reported its outcome:
    # the call's timeout plus a grace. Cleared when the reported outcome is recorded.
    report_by: datetime | None = None
    # {"reason", "final"} while compensating, and "steps" for a rollback TTL's (only those)
    compensation: Mapping[str, Any] | None = None

    def moved_to(self, status: PlanStatus, *, at: datetime, **changes: Any) -> PlanRecord:
        """Return a copy in ``status``.

        Raises:
            InvalidTransitionError: if the transition is not legal.
        """
        if status not in PLAN_TRANSITIONS[self.status]:
            raise InvalidTransitionError(
                f"plan {self.plan_id} is {self.status.value}; it cannot become {status.value}",
                field="status",
                hint="Run `proctor show ID` to see its state.",
            )
        return _evolve(self, {**changes, "status": status, "updated_at": at})

    def with_step(self, step: StepRecord, **changes: Any) -> PlanRecord:
        """Return a copy with one step replaced and any other ``changes`` made.

        ``changes`` (other fields, as ``leased`` sets them) save a second copy of the record
        where a step's start also takes the lease.
        """
        steps = list(self.steps)
        steps[step.index] = step
        return _evolve(self, {**changes, "steps": tuple(steps)})

    def idempotency_key(self, step_id: str) -> str:
        """Return the key passed to tools; the same on every retry of the step."""
        return idempotency_key(self.plan_id, step_id)

    @property
    def timer_at(self) -> datetime | None:
        """When this plan's next timer fires, or None.

        Its expiry while it waits, its start-by time while it is queued, the time by which
        a remote MCP proxy must report the outcome of the call handed to it (``report_by``;
        a handed-over plan has no start-by), its earliest rollback TTL once it succeeded.
        Stores index it so that firing timers costs one range scan.
        """
        if self.status in (PlanStatus.AWAITING_APPROVAL, PlanStatus.AWAITING_CONFIRMATION):
            return self.expires_at
        if self.status is PlanStatus.RUNNING:
            return self.start_by or self.report_by  # never both (``hand_off`` clears one)
        if self.status is PlanStatus.SUCCEEDED:
            ttl = [
                s.rollback_at
                for s in self.steps
                if s.rollback_at is not None and s.status is StepStatus.SUCCEEDED
            ]
            return min(ttl) if ttl else None
        return None

    def leased(self, owner: str | None, until: datetime | None) -> PlanRecord:
        """Return a copy held by ``owner`` until ``until`` (None, None releases it)."""
        return _evolve(self, {"lease_owner": owner, "lease_until": until})

    @property
    def terminal(self) -> bool:
        """Whether the plan has finished (succeeded plans may still be undone)."""
        return self.status in TERMINAL
