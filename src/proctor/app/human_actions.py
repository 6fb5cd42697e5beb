"""The human actions on a plan: confirm, approve, reject, undo, resolve, and the timers.

``HumanActions`` is a mixin of ``proctor.app.gateway.Gateway`` (its only user): the methods
here are the gateway's own, called as ``gateway.approve(...)``, and they use the gateway's
state and helpers. They live apart from the submit pipeline (validate → decide → simulate →
route) because they are what people do to a plan once it is routed, with their own checks:
who may act, the deadline, and the re-checks right before a cleared plan runs (the policy
still in force, the catalog as it is now, the guards). ``tick`` fires the deadlines those
actions wait under: it expires waiting plans and runs rollback TTLs.

Same rules as the gateway: every transition is one store transaction that carries its audit
events, and the plan's lock serialises the actions on one plan within this process.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from proctor.app.stepup import check_step_up
from proctor.core.approvals import (
    approvals_complete,
    check_can_approve,
    check_can_confirm,
    check_can_reject,
    check_not_expired,
    is_user,
    step_quorums,
)
from proctor.core.canonical import printable
from proctor.core.decisions import Decision, Outcome
from proctor.core.events import EventType as E
from proctor.core.lifecycle import ApprovalRecord, PlanRecord, PlanStatus, StepStatus
from proctor.core.plans import Plan
from proctor.errors import (
    ApprovalExpiredError,
    ConflictError,
    InvalidRequestError,
    PermissionDeniedError,
)

if TYPE_CHECKING:
    import threading

    from proctor.app.executor import Executor
    from proctor.app.gateway import GatewayOptions
    from proctor.app.journal import Journal
    from proctor.app.telemetry import Telemetry
    from proctor.core.assessment import Assessment
    from proctor.core.catalog import ActionSpec, Catalog
    from proctor.core.ports import Clock, PolicyEngine, StepUp, Store

__all__ = ["INPUTS_CHANGED", "HumanActions"]

log = logging.getLogger("proctor.timers")

# Shared with the gateway, which imports them from here.
_NO_POLICY = "sha256:none"
_MAX_ERROR = 500
# Who undoes when a rollback TTL fires (the KPIs tell it from people by the prefix).
_ROLLBACK_TTL = "proctor:rollback-ttl"
# Why a plan that waited expires when what the policy decided it from changed (``plan.expired``
# ``data.reason``): at its confirmation or approval, or at the claim that starts it.
INPUTS_CHANGED = "the catalog or settings the policy decided from changed"


def check_comment(comment: str) -> None:
    """Refuse a comment longer than 2,000 characters (it is stored and logged whole)."""
    if len(comment) > 2000:
        raise InvalidRequestError("comment is longer than 2,000 characters", field="comment")


class HumanActions:
    """The gateway's human actions on a routed plan, and its timers (a mixin of ``Gateway``)."""

    # Set by ``Gateway.__init__``.
    store: Store
    catalog: Catalog
    policy: PolicyEngine | None
    clock: Clock
    step_up: StepUp | None
    telemetry: Telemetry
    guards: Any
    executor: Executor
    options: GatewayOptions

    if TYPE_CHECKING:
        # Defined by ``Gateway``.
        def _get(self, plan_id: str) -> PlanRecord: ...
        def _fresh(self, tx: Any, record: PlanRecord) -> PlanRecord: ...
        def _journal(self, tx: Any) -> Journal: ...
        def _skip_rest(self, record: PlanRecord, start: int) -> PlanRecord: ...
        def _lock_for(self, plan_id: str) -> threading.RLock: ...
        def _input_digest_now(
            self, steps: Sequence[tuple[str, Mapping[str, Any]]]
        ) -> str | None: ...
        def evaluate(
            self, plan: Plan, specs: Sequence[ActionSpec], *, guards: bool = True
        ) -> tuple[Decision, Assessment]:
            """See ``Gateway.evaluate``."""

    # ------------------------------------------------------------------ human actions

    def confirm(
        self,
        plan_id: str,
        principal: str,
        *,
        comment: str = "",
        traceparent: str | None = None,
    ) -> PlanRecord:
        """Confirm a plan that waits for its on-behalf-of user; it runs at once.

        A plan that also has steps the policy sent to approvers does not run yet: it moves
        on to ``awaiting_approval`` (a fresh ``approval_ttl``) and runs when every approving
        step's quorum is met.

        Raises:
            NotFoundError, InvalidTransitionError, PermissionDeniedError, ApprovalExpiredError.
        """
        with self.telemetry.plan("proctor.confirm", traceparent, plan_id=plan_id):
            return self._confirm(plan_id, principal, comment)

    def _confirm(self, plan_id: str, principal: str, comment: str) -> PlanRecord:
        with self._lock_for(plan_id):
            record = self._get(plan_id)
            self._expire_if_due(record)
            check_can_confirm(record, principal)
            record = self._recheck_policy(record)
            self._recheck_catalog(record)
            self._recheck_inputs(record)
            # A plan that also needs approvers does not run on this confirmation: the guards
            # are re-checked right before it runs, when the approvers' quorum is met (a
            # re-check moves breakers and reserves budgets: it belongs to the run).
            then_approve = record.outcome == "approve"
            if not then_approve:
                self._recheck_guards(record)
            now = self.clock.now()
            approval = self._approval(record, principal, "confirm", (), comment, now)
            with self.store.transaction() as tx:
                current = self._fresh(tx, record)
                check_can_confirm(current, principal)
                j = self._journal(tx)
                record = dataclasses.replace(current, approvals=(*current.approvals, approval))
                j.emit(
                    E.CONFIRMATION_GRANTED,
                    plan=record,
                    user_id=principal,
                    data={"principal": principal, "comment": comment},
                )
                if then_approve:
                    record = self._route_to_approvers(j, record, now)
                else:
                    record = record.moved_to(PlanStatus.RUNNING, at=now)
                    record = self.executor.queue(self.executor.begin(j, record, now), now)
                    self.executor.note_queued(j, record)
                tx.save_plan(record)
                j.flush()
            self.telemetry.waited("confirm_wait", record.created_at, now, plan_id=plan_id)
        if then_approve:
            return record
        return self.executor.run(record)

    def _route_to_approvers(self, j: Journal, record: PlanRecord, now: datetime) -> PlanRecord:
        """Move a plan its user just confirmed on to its approvers, with their own deadline.

        The approval window starts now: the approvers get the whole ``approval_ttl``, as a
        plan routed straight to them does. The ``plan.routed`` event (``after``:
        ``confirmation``) announces the new wait (``approval.needed`` webhooks) and carries
        each step's quorum, since the ``policy.decided`` event is not in this transaction.
        """
        record = record.moved_to(
            PlanStatus.AWAITING_APPROVAL, at=now, expires_at=now + self.options.approval_ttl
        )
        expires_at = record.expires_at.isoformat() if record.expires_at else None
        j.emit(
            E.PLAN_ROUTED,
            plan=record,
            data={
                "status": record.status.value,
                "expires_at": expires_at,
                "sandbox": False,
                "after": "confirmation",
                "approvals": record.decision["approvals"],
                "approver_roles": list(record.decision["approver_roles"]),
                "step_quorums": [q.as_dict() for q in step_quorums(record)],
            },
            trusted=True,
        )
        return record

    def approve(
        self,
        plan_id: str,
        principal: str,
        *,
        roles: Sequence[str],
        comment: str = "",
        otp: str | None = None,
        traceparent: str | None = None,
    ) -> PlanRecord:
        """Record an approval; when the quorum is met the approvals are consumed and it runs.

        Raises:
            NotFoundError, InvalidTransitionError, PermissionDeniedError, ApprovalExpiredError,
            RateLimitedError (too many wrong step-up codes of ``principal`` lately).
        """
        with self.telemetry.plan("proctor.approve", traceparent, plan_id=plan_id):
            return self._approve(plan_id, principal, roles, comment, otp)

    def _approve(
        self,
        plan_id: str,
        principal: str,
        roles: Sequence[str],
        comment: str,
        otp: str | None,
    ) -> PlanRecord:
        with self._lock_for(plan_id):
            record = self._get(plan_id)
            self._expire_if_due(record)
            required = record.decision["approver_roles"]
            check_can_approve(record, principal, roles, required)
            step_up = bool(record.decision["step_up"])
            # What can refuse the approval without side effects comes before the step-up
            # check, which uses the code up: a comment too long, a policy, catalog or settings
            # change (which expires the plan), must not cost the approver a valid code.
            check_comment(comment)
            record = self._recheck_policy(record)
            self._recheck_catalog(record)
            self._recheck_inputs(record)
            # A kill switch or the agent's whitelist refuses it too, and asking moves no
            # state; the breakers and budgets (which do) are asked after the code is checked.
            self._recheck_guards(record, hard_stops_only=True)
            if step_up:  # wrong codes are counted and audited; too many: RateLimitedError
                check_step_up(
                    self.store,
                    self.step_up,
                    self._journal,
                    record,
                    principal,
                    otp,
                    now=self.clock.now(),
                )
            self._recheck_guards(record)
            now = self.clock.now()
            approval = self._approval(record, principal, "approve", roles, comment, now, step_up)
            with self.store.transaction() as tx:
                current = self._fresh(tx, record)
                check_can_approve(current, principal, roles, required)
                j = self._journal(tx)
                record = dataclasses.replace(current, approvals=(*current.approvals, approval))
                j.emit(
                    E.APPROVAL_GRANTED,
                    plan=record,
                    user_id=principal,
                    data={
                        "principal": principal,
                        "roles": list(roles),
                        "comment": comment,
                        "step_up": step_up,
                        "bound_digest": record.digest,
                        "bound_policy_version": record.policy_version,
                    },
                )
                # Each approving step's own quorum, and the user's confirmation if the plan
                # has steps she must confirm (docs/policy.md).
                ready = approvals_complete(record, record.approvals)
                if ready:
                    # The transition to running consumes the approvals: a second approve, or a
                    # replay of this one, finds the plan no longer awaiting approval.
                    record = record.moved_to(PlanStatus.RUNNING, at=now)
                    record = self.executor.queue(self.executor.begin(j, record, now), now)
                    self.executor.note_queued(j, record)
                tx.save_plan(record)
                j.flush()
        if record.status is PlanStatus.RUNNING:
            self.telemetry.waited(
                "approval_wait", record.created_at, record.updated_at, plan_id=plan_id
            )
            return self.executor.run(record)
        return record

    def reject(
        self,
        plan_id: str,
        principal: str,
        *,
        roles: Sequence[str] = (),
        comment: str = "",
        traceparent: str | None = None,
    ) -> PlanRecord:
        """Reject a waiting plan: its on-behalf-of user in either wait, or an approver.

        An approver (one of the plan's approver roles) may reject it also after approving it,
        while the quorum is not met; the requesting agent may not (``check_can_reject``).

        Raises:
            NotFoundError, InvalidTransitionError, PermissionDeniedError, ApprovalExpiredError.
        """
        with self.telemetry.plan("proctor.reject", traceparent, plan_id=plan_id):
            return self._reject(plan_id, principal, roles, comment)

    def _reject(
        self, plan_id: str, principal: str, roles: Sequence[str], comment: str
    ) -> PlanRecord:
        with self._lock_for(plan_id):
            record = self._get(plan_id)
            self._expire_if_due(record)
            required = record.decision["approver_roles"]
            check_can_reject(record, principal, roles, required)
            now = self.clock.now()
            approval = self._approval(record, principal, "reject", roles, comment, now)
            with self.store.transaction() as tx:
                current = self._fresh(tx, record)
                # Again on the plan as committed: another process may have run, rejected or
                # expired it since it was read.
                check_can_reject(current, principal, roles, required)
                j = self._journal(tx)
                record = dataclasses.replace(current, approvals=(*current.approvals, approval))
                record = record.moved_to(
                    PlanStatus.REJECTED, at=now, error=f"rejected by {principal}: {comment}"
                )
                record = self._skip_rest(record, 0)
                j.emit(
                    E.APPROVAL_REJECTED,
                    plan=record,
                    user_id=principal,
                    data={"principal": principal, "roles": list(roles), "comment": comment},
                )
                if self.guards is not None:
                    self.guards.on_finish(tx, j.emit, record)
                tx.save_plan(record)
                j.flush()
        return record

    def undo(
        self,
        plan_id: str,
        principal: str,
        *,
        admin: bool = False,
        comment: str = "",
        traceparent: str | None = None,
    ) -> PlanRecord:
        """Undo a succeeded plan within its undo window (the on-behalf-of user, or an admin).

        ``comment`` (why) is recorded in the compensation's reason, which the
        ``compensation.started`` audit event carries: ``undone by NAME: COMMENT``.

        Raises:
            NotFoundError, InvalidTransitionError, PermissionDeniedError, ConflictError,
            InvalidRequestError (a comment too long for the reason).
        """
        with self.telemetry.plan("proctor.undo", traceparent, plan_id=plan_id):
            return self._undo(plan_id, principal, admin, comment)

    def _undo(self, plan_id: str, principal: str, admin: bool, comment: str) -> PlanRecord:
        reason = f"undone by {principal}" + (f": {comment}" if comment else "")
        if len(reason) > _MAX_ERROR:
            # The reason is stored up to _MAX_ERROR characters: refuse rather than cut it.
            room = max(_MAX_ERROR - len(f"undone by {principal}: "), 0)
            raise InvalidRequestError(
                f"comment is too long for an undo: at most {room} characters", field="comment"
            )
        with self._lock_for(plan_id):
            record = self._get(plan_id)
            if not admin and not is_user(record, principal):
                raise PermissionDeniedError(
                    f"only {record.on_behalf_of!r} may undo this plan", field="principal"
                )
            if record.status is not PlanStatus.SUCCEEDED:
                raise ConflictError(
                    f"plan {plan_id} is {record.status.value}; only succeeded plans can be undone",
                    field="plan_id",
                )
            self._check_undoable(record, self.clock.now())
            # The first commit re-checks that the plan is still succeeded: of two concurrent
            # undos (in any processes) one wins and the other gets a conflict.
            return self.executor.compensate(
                record,
                reason=reason,
                final=PlanStatus.UNDONE,
                requested_by=principal,
            )

    def resolve(
        self,
        plan_id: str,
        step_id: str,
        *,
        succeeded: bool,
        principal: str,
        comment: str = "",
        traceparent: str | None = None,
    ) -> PlanRecord:
        """Say what happened to a step whose outcome is unknown (see ``Executor.resolve``).

        Raises:
            NotFoundError, ConflictError.
        """
        with self.telemetry.plan("proctor.resolve", traceparent, plan_id=plan_id):
            self._get(plan_id)
            return self.executor.resolve(
                plan_id, step_id, succeeded=succeeded, principal=principal, comment=comment
            )

    def _check_undoable(self, record: PlanRecord, now: datetime) -> None:
        done = [s for s in record.steps if s.status is StepStatus.SUCCEEDED]
        undoable = 0
        for s in done:
            spec = self.catalog.require(s.action)
            if spec.nothing_to_undo:
                continue  # a look-up: the saga skips it too (``compensation.started`` says so)
            undoable += 1
            # What the refusals offer instead: the effect stands, and reversing it is a new
            # action, so it goes through the gate as a new plan (docs/execution.md).
            reverse = (
                f"submit a new plan with {spec.compensation} (the catalog's way to undo "
                f"{s.action}; the policy decides it like any plan)"
                if spec.compensation
                else "submit a new plan whose steps reverse it (the policy decides it like any "
                "plan), or ask an operator"
            )
            if not spec.reversible:
                raise ConflictError(
                    f"step {s.step_id} ({s.action}) is not reversible",
                    field="plan_id",
                    hint=f"The catalog marks {s.action} irreversible: nothing undoes it "
                    "automatically. To reverse its effect, submit a new plan whose steps do "
                    "it, or ask an operator.",
                )
            if s.undo_until is None and s.rollback_at is None:
                raise ConflictError(
                    f"step {s.step_id} has no undo window",
                    field="plan_id",
                    hint=f"{s.action} is reversible, but the policy gave this step no undo "
                    f"window (steps.<id>.undo_window, default 0), so it cannot be undone: "
                    f"to reverse it, {reverse}. For later plans, the policy's author can set "
                    "an undo_window (docs/policy.md).",
                )
            deadline = max(t for t in (s.undo_until, s.rollback_at) if t is not None)
            if now > deadline:
                raise ConflictError(
                    f"the undo window of step {s.step_id} closed at {deadline.isoformat()}",
                    field="plan_id",
                    hint=f"It can no longer be undone: to reverse it, {reverse}.",
                )
        if not undoable:
            raise ConflictError(
                f"plan {record.plan_id} has nothing left to undo: what stands of it is "
                "read-only look-ups",
                field="plan_id",
            )

    def tick(self, *, wait: bool = True) -> list[PlanRecord]:
        """Fire due timers: expire waiting plans and queued plans past theirs, rollback TTLs.

        A call handed to a remote MCP proxy whose outcome was not reported by its report-by
        needs attention (``Recovery.report_missed``).

        Args:
            wait: Run the rollback TTLs' compensations here, to their end. False (the worker)
                starts them and hands them to the executor's worker threads: a compensation
                that hangs must not hold up the other timers and the recovery of the pass.

        Returns:
            The plans that changed (with ``wait=False``, rolled-back plans as they start).
        """
        now = self.clock.now()
        changed = []
        # One indexed range scan: each plan stores when its next timer fires (timer_at).
        for p in self.store.due_plans(now):
            # One timer failing (a store conflict, a compensation that raises) must not stop
            # the others, nor the worker's recovery after them: it is logged, and fires again.
            try:
                fired = self._fire(p, now, wait)
            except Exception:  # logged; the next tick tries again
                log.exception("firing the timer of plan %s failed", p.plan_id)
                continue
            if fired is not None:
                changed.append(fired)
        return changed

    def _fire(self, p: PlanRecord, now: datetime, wait: bool) -> PlanRecord | None:
        if p.status in (PlanStatus.AWAITING_APPROVAL, PlanStatus.AWAITING_CONFIRMATION):
            with self._lock_for(p.plan_id):
                return self._expire(p, "nobody decided before the deadline")
        if p.status is PlanStatus.RUNNING:
            # Queued past its start-by time (``queue_ttl``): any process expires it, one that
            # serves its runner or not (the transaction re-checks that nobody claimed it).
            # Handed to a remote MCP proxy that did not report the call's outcome by its
            # report-by: it needs attention (the call may have been made).
            with self._lock_for(p.plan_id):
                if p.start_by is None and p.report_by is not None:
                    return self.executor.report_missed(p.plan_id)
                return self.executor.expire_overdue(p.plan_id)
        if p.status is PlanStatus.SUCCEEDED:
            if not self.executor.runnable_here(p):
                # A process that lacks one of its actions (a Python action the app registers,
                # a runner served elsewhere) cannot compensate it: one serving them fires it.
                return None
            if self.executor.sandboxed:
                # No handler runs under sandbox mode, a compensation neither: the TTL fires
                # on the first pass after the switch (its timer stays due).
                return None
            return self._roll_back(p, now, wait)
        return None

    def _roll_back(self, record: PlanRecord, now: datetime, wait: bool) -> PlanRecord | None:
        """Undo the steps of a succeeded plan whose rollback TTL passed (a step at a time).

        A TTL is a step's (``steps.<id>.rollback_ttl``, set only on reversible steps): it
        undoes that step, not the steps beside it. Those stand: an irreversible one (which
        the user's undo would refuse), one with no TTL, one whose TTL comes later (it fires
        then). When every completed step was due the plan ends ``undone``; otherwise it is
        ``succeeded`` again (``Saga``). The first commit re-checks that the plan is still
        succeeded: of two processes firing the same TTL, one does it and the other skips it.

        Returns:
            The plan, or None when there was nothing to roll back (any more).
        """
        with self._lock_for(record.plan_id), self.store.transaction() as tx:
            current = self._fresh(tx, record)
            due = [
                s.step_id
                for s in current.steps
                if s.status is StepStatus.SUCCEEDED
                and s.rollback_at is not None
                and s.rollback_at <= now
            ]
            if current.status is not PlanStatus.SUCCEEDED or not due:
                return None
            j = self._journal(tx)
            j.emit(
                E.UNDO_REQUESTED,
                plan=current,
                user_id=_ROLLBACK_TTL,
                data={"by": _ROLLBACK_TTL, "steps": due},
            )
            reason = f"undone by {_ROLLBACK_TTL}: the rollback TTL of {', '.join(due)} passed"
            current = self.executor.saga.start(
                j, current, reason, PlanStatus.UNDONE, now, steps=due
            )
            if not wait:
                # Unleased, it is claimable: a worker thread of this process claims it at once
                # (or, should this process die first, any worker does).
                current = current.leased(None, None)
            tx.save_plan(current)
            j.flush()
        if not wait:
            self.executor.submit_resume(current.plan_id)
            return current
        return self.executor.continue_compensation(current)

    # ------------------------------------------------------------------ helpers

    def _expire_if_due(self, record: PlanRecord) -> None:
        """Expire a waiting plan past its deadline (and raise); an expired plan raises too.

        A plan that no longer waits (it ran, was rejected) is not "expired" because its old
        deadline passed: the state check after this answers ``invalid_transition``.
        """
        waiting = record.status in (PlanStatus.AWAITING_APPROVAL, PlanStatus.AWAITING_CONFIRMATION)
        if not waiting and record.status is not PlanStatus.EXPIRED:
            return
        try:
            check_not_expired(record, self.clock.now())
        except ApprovalExpiredError:
            if waiting:
                self._expire(record, "the deadline passed before a decision")
            raise

    def _expire(self, record: PlanRecord, reason: str) -> PlanRecord:
        now = self.clock.now()
        with self.store.transaction() as tx:
            current = self._fresh(tx, record)
            if current.status not in (
                PlanStatus.AWAITING_APPROVAL,
                PlanStatus.AWAITING_CONFIRMATION,
            ):
                return current
            j = self._journal(tx)
            record = self._skip_rest(current.moved_to(PlanStatus.EXPIRED, at=now, error=reason), 0)
            j.emit(E.PLAN_EXPIRED, plan=record, data={"reason": reason})
            if self.guards is not None:
                self.guards.on_finish(tx, j.emit, record)
            tx.save_plan(record)
            j.flush()
        return record

    def _recheck_guards(self, record: PlanRecord, *, hard_stops_only: bool = False) -> None:
        """Right before execution: kill switches, breakers and budgets may forbid it now.

        ``hard_stops_only`` asks only the kill switches and the whitelist (``Guards.stopped``),
        which move no state: an approval asks them before it checks (and uses up) a step-up
        code, and the whole re-check after it.

        The check runs on the plan as it is inside its own transaction, not as the caller
        read it: ``recheck`` may reserve budget for a plan that holds no reservation, and a
        plan rejected or expired since (whose ``on_finish`` released nothing then) would keep
        that reservation for good. Such a plan is left to the caller's own transaction, which
        finds it no longer waiting and refuses.
        """
        if self.guards is None:
            return
        check = self.guards.stopped if hard_stops_only else self.guards.recheck
        with self.store.transaction() as tx:
            current = self._fresh(tx, record)
            if current.status is not record.status:
                return
            j = self._journal(tx)
            reason = check(tx, j.emit, current)
            j.flush()
        if reason:
            raise ConflictError(
                f"plan {record.plan_id} cannot run now: {reason}",
                field="plan_id",
                hint="It keeps waiting: try again once the guard allows it (`proctor guards`).",
            )

    def _recheck_policy(self, record: PlanRecord) -> PlanRecord:
        """Right before execution: the policy that decided must still be the one in force."""
        current = self.policy.version if self.policy is not None else _NO_POLICY
        if current != record.policy_version:
            self._expire(record, "the policy changed since the plan was decided")
            raise ConflictError(
                f"the policy changed since plan {record.plan_id} was decided; it has expired",
                field="policy_version",
                hint="Ask the agent to submit the plan again, under a new plan_id (the same"
                " id returns this plan), to be decided under the current policy.",
            )
        return record

    def _recheck_catalog(self, record: PlanRecord) -> None:
        """Right before execution: the catalog as it is now must still accept every step.

        The plan was validated when it was submitted; the catalog may have changed while it
        waited (a restart with another catalog file, an MCP tool whose schema changed), and
        a plan stored by an older version may hold params it now refuses (a float amount).
        Such a plan expires, as one decided under a replaced policy does: letting it run
        would execute params the catalog refuses, and keeping it waiting would collect
        approvals for a plan that can never run. An action this process's catalog does not
        have is left to the process that runs it (a runner's, or one another process
        registered): that process checks the step when it starts it (``start_checked``).

        Raises:
            ConflictError: naming the refused field (the plan has expired).
        """
        for step in record.steps:
            if step.action not in self.catalog:
                continue
            refused = self.executor.refusal(step)
            if refused is None:
                continue
            where = printable(refused.field or "params")
            reason = f"the catalog no longer accepts {where}: {printable(refused.message)}"
            self._expire(record, reason[:_MAX_ERROR])
            raise ConflictError(
                f"{reason}; plan {record.plan_id} has expired",
                field=where,
                hint="Ask the agent to submit the plan again, under a new plan_id (the same"
                " id returns this plan), to be checked against the current catalog.",
            ) from refused

    def _recheck_inputs(self, record: PlanRecord) -> None:
        """Right before execution: what the policy decided from must not have changed.

        The policy version says which bundle decided, not what it decided from: a change of
        those facts (``inputs_changed``) expires the plan, as a replaced policy does. When
        this process cannot tell (it lacks one of the plan's actions), the process that
        claims the plan to start its first step asks again (``Recovery._claim``).

        Raises:
            ConflictError: ``field="policy_input"`` (the plan has expired).
        """
        if not self.inputs_changed(record):
            return
        self._expire(record, INPUTS_CHANGED)
        raise ConflictError(
            f"the catalog entries or gateway settings the policy decided plan {record.plan_id}"
            " from have changed since; it has expired",
            field="policy_input",
            hint="Ask the agent to submit the plan again, under a new plan_id (the same"
            " id returns this plan), to be decided under the current configuration.",
        )

    def inputs_changed(self, record: PlanRecord) -> bool | None:
        """Whether the facts the policy decided a waiting plan from no longer hold here.

        Those facts are each step's catalog entry (category, amount rules, reversibility,
        baseline scores) and the gateway settings in ``input.context`` (``hybrid_max``). A
        restart with an action moved to a category the policy denies, or a lower threshold,
        would otherwise let a waiting plan run on facts the policy no longer holds. The
        decision stores their digest (``Gateway._input_digest_now``), compared with the
        digest of this process's catalog and settings.

        The one check of them, asked at a confirmation or approval (``_recheck_inputs``) and
        again by the process that claims a plan that waited to start its first step
        (``Recovery._claim``, ``Recovery.refuse_stale``): the process that runs the plan is
        the one whose catalog entry governs the run, and the confirming one may lack an
        action (a runner's, one another process registered) or hold another catalog.

        NOTE(approvals): a plan stored by an older version has no digest, so what it was
        decided from cannot be compared. Rather than expire every such plan on an upgrade,
        or let it through unchecked, the policy in force is asked again, with the current
        configuration and without the guards' state (re-checked on their own): the facts
        count as changed if the plan would now be routed any stricter (a stricter outcome,
        more or other approvers, a step-up it did not need) or its manifest no longer parses.

        Returns:
            True or False; None when this process cannot tell: an action of the plan is not
            in its catalog (the process that runs the plan asks again).
        """
        stored = record.decision.get("input_digest")
        current = self._input_digest_now([(s.action, s.params) for s in record.steps])
        if current is None:
            return None
        return self._decided_stricter_now(record) if stored is None else stored != current

    def _decided_stricter_now(self, record: PlanRecord) -> bool:
        """Whether the policy, asked now, routes a plan stored without a digest any stricter."""
        try:
            plan = Plan.from_dict(record.manifest, limits=self.options.limits)
            specs = [self.catalog.require(st.action) for st in plan.steps]
            fresh, _ = self.evaluate(plan, specs, guards=False)
        except InvalidRequestError:
            return True  # cannot be asked again: fail closed
        then = record.decision
        return (
            fresh.outcome.severity > Outcome(record.outcome).severity
            or (fresh.step_up and not then.get("step_up"))
            or fresh.approvals > int(then.get("approvals") or 0)
            or not set(fresh.approver_roles) <= set(then.get("approver_roles") or ())
        )

    def _approval(
        self,
        record: PlanRecord,
        principal: str,
        kind: str,
        roles: Sequence[str],
        comment: str,
        now: datetime,
        step_up: bool = False,
    ) -> ApprovalRecord:
        check_comment(comment)
        return ApprovalRecord(
            principal=principal,
            kind=kind,
            roles=tuple(roles),
            digest=record.digest,
            policy_version=record.policy_version,
            comment=comment,
            created_at=now,
            step_up=step_up,
        )
