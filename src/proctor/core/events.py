"""Audit event types: every transition of the flow appends one of these."""

from __future__ import annotations

from typing import Final

__all__ = ["EventType"]


class EventType:
    """Names of audit events (the ``type`` field)."""

    PLAN_SUBMITTED: Final = "plan.submitted"
    PLAN_REJECTED: Final = "plan.rejected"
    POLICY_DECIDED: Final = "policy.decided"
    SIMULATION_COMPLETED: Final = "simulation.completed"
    PLAN_ROUTED: Final = "plan.routed"
    CONFIRMATION_GRANTED: Final = "confirmation.granted"
    APPROVAL_GRANTED: Final = "approval.granted"
    APPROVAL_REJECTED: Final = "approval.rejected"
    STEPUP_FAILED: Final = "stepup.failed"  # a wrong step-up code (never the code itself)
    # Who may act: an API token created or revoked, an approver enrolled for step-up (never
    # the token, its hash or the TOTP secret).
    TOKEN_CREATED: Final = "token.created"  # noqa: S105 - an event name
    TOKEN_REVOKED: Final = "token.revoked"  # noqa: S105 - an event name
    STEPUP_ENROLLED: Final = "stepup.enrolled"
    # A new signing key: recorded by the rotation, or by the first event the new key signs
    # when the rotation could not record it (``proctor.app.journal``).
    KEYS_ROTATED: Final = "keys.rotated"
    PLAN_EXPIRED: Final = "plan.expired"
    # A confirmed, approved or resolved plan left for another process: an action it needs is
    # not in this process's catalog (a runner's, or one another process registered).
    PLAN_QUEUED: Final = "plan.queued"
    STEP_STARTED: Final = "step.started"
    STEP_SUCCEEDED: Final = "step.succeeded"
    STEP_FAILED: Final = "step.failed"
    STEP_SIMULATED: Final = "step.simulated"
    STEP_RETRYING: Final = "step.retrying"
    STEP_TIMED_OUT: Final = "step.timed_out"
    STEP_UNKNOWN: Final = "step.unknown"
    STEP_RESOLVED: Final = "step.resolved"
    STEP_LATE_RESULT: Final = "step.late_result"
    CANARY_CHECKED: Final = "canary.checked"
    PLAN_RESUMED: Final = "plan.resumed"
    COMPENSATION_STARTED: Final = "compensation.started"  # the saga starts (the plan's)
    # One attempt at one step's compensation, the first and each re-run, with its number (as
    # ``step.started`` is a step's): committed with the step's in-flight marker.
    COMPENSATION_ATTEMPT_STARTED: Final = "compensation.attempt_started"
    COMPENSATION_SUCCEEDED: Final = "compensation.succeeded"
    COMPENSATION_FAILED: Final = "compensation.failed"
    COMPENSATION_TIMED_OUT: Final = "compensation.timed_out"
    # A compensation attempt that returned after its plan was taken over (not applied).
    COMPENSATION_LATE_RESULT: Final = "compensation.late_result"
    UNDO_REQUESTED: Final = "undo.requested"
    PLAN_FINISHED: Final = "plan.finished"
    # A rollback TTL undid some steps of a succeeded plan; the others stand, it is succeeded.
    PLAN_ROLLED_BACK: Final = "plan.rolled_back"
    REVIEW_SAMPLED: Final = "review.sampled"
    GUARD_RATE_LIMITED: Final = "guard.rate_limited"
    GUARD_WHITELIST_DENIED: Final = "guard.whitelist_denied"
    GUARD_KILLED: Final = "guard.killed"  # a plan stopped by a kill switch
    WHITELIST_CHANGED: Final = "whitelist.changed"
    BUDGET_RESERVED: Final = "budget.reserved"
    BUDGET_SETTLED: Final = "budget.settled"
    BUDGET_RELEASED: Final = "budget.released"
    BUDGET_EXCEEDED: Final = "budget.exceeded"
    BREAKER_OPENED: Final = "breaker.opened"
    BREAKER_HALF_OPEN: Final = "breaker.half_open"
    BREAKER_CLOSED: Final = "breaker.closed"
    KILL_ENGAGED: Final = "kill.engaged"
    KILL_RELEASED: Final = "kill.released"
    ANOMALY_DETECTED: Final = "anomaly.detected"
    AUTONOMY_CHANGED: Final = "autonomy.changed"
    AUTONOMY_PROMOTION_SUGGESTED: Final = "autonomy.promotion_suggested"
    REVIEW_MARKED: Final = "review.marked"
    COMPLAINT_FILED: Final = "complaint.filed"
