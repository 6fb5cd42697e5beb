"""The saga: completed steps undone in reverse order, durably (docs/execution.md).

A failed step and the move to ``compensating`` commit together; each compensation is an
in-flight marker (with ``compensation.attempt_started``: every attempt, numbered, is in the
log), then its outcome; a crash mid-compensation resumes it, re-running an interrupted
compensation only if it is idempotent (and within ``max_attempts``). Each compensation has a
step's timeout, which the executor's watchdog enforces (``timed_out``).
An attempt that returns after its plan was taken over is fenced out and recorded only as
``compensation.late_result`` (``_late_result``), as a step's is as ``step.late_result``.
An undo is the same saga ending ``undone``, and its first commit checks the plan is still
``succeeded`` (of two concurrent undos, in any processes, one wins).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from proctor.app._outcomes import MAX_ERROR, LostLease, err
from proctor.app.journal import Journal
from proctor.core.catalog import ActionSpec
from proctor.core.events import EventType as E
from proctor.core.lifecycle import PlanRecord, PlanStatus, StepRecord, StepStatus
from proctor.core.ports import ToolCall
from proctor.errors import ConflictError, InvalidRequestError

if TYPE_CHECKING:
    from proctor.app.background import _Flight
    from proctor.app.executor import Executor

__all__ = ["Saga"]


class Saga:
    """Compensation for one executor (it holds the leases and the fencing)."""

    def __init__(self, executor: Executor) -> None:
        self.ex = executor

    def compensate(
        self,
        record: PlanRecord,
        *,
        reason: str,
        final: PlanStatus | None,
        requested_by: str | None = None,
    ) -> PlanRecord:
        """Undo succeeded steps in reverse order (saga), durably.

        ``final`` is the status on full success (``undone`` for an undo); None means the
        plan failed, and it ends ``compensated`` (or ``failed`` if something could not be
        undone). The first commit moves the plan to ``compensating`` under this process's
        lease; for an undo it also checks the plan is still ``succeeded`` (two concurrent
        undos: one wins, the other gets a conflict).
        """
        now = self.ex.gw.clock.now()
        with self.ex.gw.store.transaction() as tx:
            current: PlanRecord | None = tx.get_plan(record.plan_id)
            if current is None:
                raise ConflictError(f"plan {record.plan_id} vanished", field="plan_id")
            if requested_by is not None:
                if current.status is not PlanStatus.SUCCEEDED:
                    raise ConflictError(
                        f"plan {record.plan_id} is {current.status.value}; "
                        "only succeeded plans can be undone",
                        field="plan_id",
                    )
            elif not self.ex._mine(current.lease_owner) or current.status is not PlanStatus.RUNNING:
                return current
            j = self.ex._journal(tx)
            if requested_by is not None:
                j.emit(
                    E.UNDO_REQUESTED,
                    plan=current,
                    user_id=requested_by,
                    data={"by": requested_by},
                )
            current = self.start(j, current, reason, final, now)
            tx.save_plan(current)
            j.flush()
        return self.carry_on(current)

    def start(
        self,
        j: Journal,
        record: PlanRecord,
        reason: str,
        final: PlanStatus | None,
        now: datetime,
        *,
        steps: Sequence[str] | None = None,
    ) -> PlanRecord:
        """Move the plan to ``compensating`` with its reason (inside the caller's transaction).

        ``steps`` limits the saga to those steps (a rollback TTL undoes only the steps whose
        TTL passed); None undoes every completed step. Completed steps with nothing to undo
        (read-only look-ups: ``ActionSpec.nothing_to_undo``) are left as they are, and the
        event names them (``nothing_to_undo``).

        Raises:
            ConflictError: sandbox mode is on and a compensation would run
                (``Executor.refuse_in_sandbox``; the caller's transaction rolls back).
        """
        info: dict[str, Any] = {"reason": reason[:MAX_ERROR], "final": final and final.value}
        data: dict[str, Any] = {"reason": reason[:MAX_ERROR]}
        if steps is not None:
            info["steps"] = data["steps"] = list(steps)
        done = [
            s
            for s in record.steps
            if s.status is StepStatus.SUCCEEDED and (steps is None or s.step_id in steps)
        ]
        skipped = [s.step_id for s in done if self._nothing_to_undo(s)]
        if len(skipped) < len(done):
            self.ex.refuse_in_sandbox(record, "be compensated")
        if skipped:
            data["nothing_to_undo"] = skipped
        record = record.moved_to(PlanStatus.COMPENSATING, at=now, compensation=info).leased(
            self.ex._token(), self.ex._until(now)
        )
        j.emit(E.COMPENSATION_STARTED, plan=record, data=data)
        return record

    def carry_on(self, record: PlanRecord) -> PlanRecord:
        """Compensate the plan's remaining steps and finish it (it is ours, compensating)."""
        token = self.ex._hold(record.plan_id)
        try:
            return self.rest(record)
        except LostLease as lost:
            return lost.record
        finally:
            self.ex._release(record.plan_id, token)

    def rest(self, record: PlanRecord) -> PlanRecord:
        """Compensate what is left of a compensating plan this executor holds; finish it."""
        info = record.compensation or {}
        reason = str(info.get("reason", "compensation"))
        only = info.get("steps")
        # Attempts per step, stored with the saga: a compensation interrupted (a crash, its
        # timeout) is retried within max_attempts, as a step is.
        attempts: dict[str, int] = dict(info.get("attempts") or {})
        for step in reversed(record.steps):
            if only is not None and step.step_id not in only:
                continue  # a rollback TTL's saga: this step's TTL has not passed, or it has none
            if step.status is StepStatus.COMPENSATING:
                # Interrupted mid-compensation (we are resuming): retry only if harmless.
                last = attempts.get(step.step_id, 1)
                why = self._not_again(step, last)
                if why is not None:
                    record = self._compensated(record, step, why, reason, attempt=last, ran=False)
                    continue
            elif step.status is not StepStatus.SUCCEEDED:
                continue
            elif self._nothing_to_undo(step):
                # A look-up changed nothing: no compensation to run, and none that failed
                # (``compensation.started`` names the step; it stays ``succeeded``).
                continue
            # Before the in-flight marker: a process without the action raises here, leaving
            # the step as it was for one that has it (not "interrupted, effect unknown"), and
            # so does one under sandbox mode (claims and ``start`` refuse before this).
            spec = self.ex.gw.catalog.require(step.action)
            self.ex.refuse_in_sandbox(record, f"compensate step {step.step_id}")
            attempts[step.step_id] = attempts.get(step.step_id, 0) + 1
            # The marker of a compensation that is not idempotent is on disk before it runs:
            # lost to a power failure, the step would read succeeded again and be compensated
            # twice (as a step's start is, in the executor).
            durable = not self._idempotent(step)
            attempt = attempts[step.step_id]
            with self.ex.gw.store.transaction(durable=durable) as tx:
                current = self.ex._fenced(tx, record, None)
                marker = current.steps[step.index]
                if marker.status is StepStatus.SUCCEEDED:
                    marker = marker.moved_to(StepStatus.COMPENSATING)
                elif marker.error is not None:  # a retry: the timed-out attempt is over
                    marker = dataclasses.replace(marker, error=None)
                record = dataclasses.replace(
                    current.with_step(marker), compensation={**info, "attempts": dict(attempts)}
                ).leased(current.lease_owner, self.ex._until(self.ex.gw.clock.now()))
                # Every attempt is in the log with its number, a re-run after a crash or a
                # timeout too (the step is already ``compensating`` then), as ``step.started``
                # records each attempt of a step.
                j = self.ex._journal(tx)
                j.emit(
                    E.COMPENSATION_ATTEMPT_STARTED,
                    plan=record,
                    step_id=step.step_id,
                    actions=[self.ex._attempt(step, "compensating")],
                    data={
                        "idempotency_key": record.idempotency_key(step.step_id),
                        "attempt": attempt,
                    },
                )
                tx.save_plan(record)
                j.flush()
            # The watchdog times the call out as it does a step's (compensation.timed_out).
            flight = self.ex._flight(record, marker, self._compensator(spec), attempt=attempt)
            try:
                error = self._undo(record, step, spec)
            finally:
                self.ex._landed(record.plan_id, flight)
            record = self._compensated(
                record, record.steps[step.index], error, reason, attempt=attempt, ran=True
            )
        return self._finish_compensation(record, reason, info.get("final"))

    def _nothing_to_undo(self, step: StepRecord) -> bool:
        """Whether ``step``'s action left nothing to undo (an action unknown here: it did)."""
        spec = self.ex.gw.catalog.get(step.action)
        return spec is not None and spec.nothing_to_undo

    def _not_again(self, step: StepRecord, attempts: int) -> str | None:
        """Why an interrupted compensation must not run again, or None if it may."""
        cause = "the compensation was interrupted"
        if step.error:  # its timeout (``timed_out``)
            cause += f" ({step.error})"
        if not self._idempotent(step):
            return f"{cause} and is not idempotent: its effect is unknown"
        if attempts >= self.ex._opts.max_attempts:
            return f"{cause}, and no attempts are left ({attempts})"
        return None

    def _compensator(self, spec: ActionSpec) -> ActionSpec:
        """The action whose handler undoes ``spec``'s steps: its timeout applies."""
        if spec.compensate is None and spec.compensation is not None:
            return self.ex.gw.catalog.get(spec.compensation) or spec
        return spec

    def timed_out(self, plan_id: str, flight: _Flight) -> bool:
        """A compensation overran its timeout: record it and release the plan (the watchdog's).

        Exactly what a step's timeout does: ``compensation.timed_out``, the lease released, and
        a worker thread resumes the saga, which runs the compensation again if it is idempotent
        and has attempts left, and records it ``compensation_failed`` otherwise. Python cannot
        stop the stuck thread: when its handler returns, fencing discards what it would record.

        Returns:
            Whether the plan was released (False: the attempt had ended, or is not ours).
        """
        with self.ex.gw.store.transaction() as tx:
            current: PlanRecord | None = tx.get_plan(plan_id)
            if current is None or not self.ex._mine(current.lease_owner):
                return False
            step = next((s for s in current.steps if s.step_id == flight.step_id), None)
            if step is None or step.status is not StepStatus.COMPENSATING:
                return False
            if (current.compensation or {}).get("attempts", {}).get(step.step_id) != (
                flight.attempts
            ):
                return False
            spec = self._compensator(self.ex.gw.catalog.require(step.action))
            timeout = spec.timeout if spec.timeout is not None else self.ex._opts.step_timeout
            error = f"TimeoutError: attempt {flight.attempts} took longer than {timeout} s"
            j = self.ex._journal(tx)
            j.emit(
                E.COMPENSATION_TIMED_OUT,
                plan=current,
                step_id=step.step_id,
                data={"attempt": flight.attempts, "timeout_s": str(timeout)},
            )
            current = current.with_step(dataclasses.replace(step, error=error)).leased(None, None)
            tx.save_plan(current)
            j.flush()
        return True

    def _idempotent(self, step: StepRecord) -> bool:
        spec = self.ex.gw.catalog.require(step.action)
        if spec.compensate is None and spec.compensation is not None:
            comp = self.ex.gw.catalog.get(spec.compensation)
            return comp is not None and comp.idempotent
        return spec.idempotent

    def _undo(self, record: PlanRecord, step: StepRecord, spec: ActionSpec) -> str | None:
        """Run a step's compensation; return the error, or None."""
        call = self.ex._call(record, step, result=step.result)
        try:
            with self.ex.gw.telemetry.stage("compensation", action=spec.name, step=step.step_id):
                self._run_compensation(spec, step, call)
        except Exception as exc:  # noqa: BLE001 - recorded; the next step still compensates
            return err(exc)
        return None

    def _run_compensation(self, spec: ActionSpec, step: StepRecord, call: ToolCall) -> None:
        if spec.compensate is not None:
            self.ex.gw.tools.run(spec.compensate, step.params, call)
        elif spec.compensation is not None:
            comp = self.ex.gw.catalog.require(spec.compensation)
            params = step.params
            if isinstance(step.result, dict) and isinstance(
                step.result.get("compensation_params"), dict
            ):
                params = step.result["compensation_params"]
            if comp.handler is None:
                raise InvalidRequestError(f"action {comp.name!r} has no handler")
            self.ex.gw.tools.run(comp.handler, params, call)
        else:
            raise ConflictError(f"action {spec.name!r} cannot be compensated")

    def _compensated(
        self,
        record: PlanRecord,
        step: StepRecord,
        error: str | None,
        reason: str,
        *,
        attempt: int,
        ran: bool,
    ) -> PlanRecord:
        """Record a step's compensation outcome; if the plan is no longer ours, its late result.

        ``attempt`` is the number of the attempt whose outcome this is; ``ran`` is False when
        it was interrupted and is not run again (``error`` says why): nothing ran just now.

        Raises:
            LostLease: the plan was taken over meanwhile; what ran is recorded only as
                ``compensation.late_result`` (committed before this is raised).
        """
        lost: LostLease | None = None
        current = record
        with self.ex.gw.store.transaction(durable=False) as tx:
            try:
                current = self.ex._fenced(tx, record, None)
            except LostLease as exc:
                if ran:
                    # Commit the late-result event, then leave (raising here rolls it back).
                    self._late_result(tx, exc.record, step, attempt, error)
                lost = exc
            else:
                current = self._apply_outcome(tx, current, step, error, reason, attempt)
        if lost is not None:
            raise lost
        return current

    def _apply_outcome(
        self,
        tx: Any,
        current: PlanRecord,
        step: StepRecord,
        error: str | None,
        reason: str,
        attempt: int,
    ) -> PlanRecord:
        """``compensation.succeeded`` or ``compensation.failed``, with the step's new status."""
        now_step = current.steps[step.index]
        j = self.ex._journal(tx)
        if error is None:
            current = current.with_step(now_step.moved_to(StepStatus.COMPENSATED))
            j.emit(
                E.COMPENSATION_SUCCEEDED,
                plan=current,
                step_id=step.step_id,
                actions=[self.ex._attempt(step, "compensated")],
                data={"reason": reason, "attempt": attempt},
            )
        else:
            current = current.with_step(
                now_step.moved_to(StepStatus.COMPENSATION_FAILED, error=error)
            )
            j.emit(
                E.COMPENSATION_FAILED,
                plan=current,
                step_id=step.step_id,
                actions=[self.ex._attempt(step, "compensation_failed")],
                data={"reason": reason, "error": error, "attempt": attempt},
            )
        current = current.leased(current.lease_owner, self.ex._until(self.ex.gw.clock.now()))
        tx.save_plan(current)
        j.flush()
        return current

    def _late_result(
        self, tx: Any, current: PlanRecord, step: StepRecord, attempt: int, error: str | None
    ) -> None:
        """Record that a compensation attempt returned after its plan was taken over.

        The saga's ``Executor._late_result``, with the same fields (``attempt``, ``owner``,
        ``error``, ``recorded``: the step's status on record) but its own event type: a
        ``step.late_result`` with no error would read as the step's action having succeeded,
        when what ran was its undo. Not applied (fencing): the step stays as the new owner
        recorded it, typically ``compensation_failed`` with its effect unknown; this event is
        what its resolver needs (``error`` None: the undo did run, and succeeded). A
        compensation returns no result to hash. Nothing is escalated besides, unlike a late
        step success on a step recorded ``failed``: a step whose compensation is on record as
        ``compensation_failed`` ends its plan ``failed`` (webhook ``plan.failed``), which
        already calls for a human; one on record as ``compensated`` agrees with a late
        success, and a late failure there means another attempt of an idempotent undo did it.
        """
        recorded = current.steps[step.index].status
        j = self.ex._journal(tx)
        j.emit(
            E.COMPENSATION_LATE_RESULT,
            plan=current,
            step_id=step.step_id,
            data={
                "attempt": attempt,
                "owner": self.ex.owner,
                "error": error,
                "recorded": recorded.value,
            },
        )
        tx.save_plan(current)
        j.flush()

    def _finish_compensation(
        self, record: PlanRecord, reason: str, final: str | None
    ) -> PlanRecord:
        statuses = [s.status for s in record.steps]
        all_ok = StepStatus.COMPENSATION_FAILED not in statuses
        undone_any = StepStatus.COMPENSATED in statuses
        only = (record.compensation or {}).get("steps")
        if only is not None and all_ok and StepStatus.SUCCEEDED in statuses:
            # A rollback TTL undid the steps whose TTL passed; the others stand (irreversible,
            # no TTL, or a later one).
            return self._rolled_back(record, reason, only)
        if final is not None and all_ok:
            status = PlanStatus(final)
        elif final is None and all_ok and undone_any:
            status = PlanStatus.COMPENSATED
        else:
            status = PlanStatus.FAILED
        now = self.ex.gw.clock.now()
        with self.ex.gw.store.transaction() as tx:
            current = self.ex._fenced(tx, record, None)
            j = self.ex._journal(tx)
            current = current.moved_to(status, at=now, error=reason[:MAX_ERROR]).leased(None, None)
            j.emit(E.PLAN_FINISHED, plan=current, data={"status": status.value, "reason": reason})
            if self.ex.gw.guards is not None:
                self.ex.gw.guards.on_finish(tx, j.emit, current)
            tx.save_plan(current)
            j.flush()
        return current

    def _rolled_back(self, record: PlanRecord, reason: str, steps: Sequence[str]) -> PlanRecord:
        """A rollback TTL undid ``steps``; the plan's other steps stand: it is succeeded again.

        Its event is ``plan.rolled_back``, not ``plan.finished``: the plan finished when it
        succeeded, and its webhook, metrics, budget settlement and proposal count happened
        then, once. Its next rollback TTL, if any, fires at its time.
        """
        now = self.ex.gw.clock.now()
        with self.ex.gw.store.transaction() as tx:
            current = self.ex._fenced(tx, record, None)
            j = self.ex._journal(tx)
            current = current.moved_to(PlanStatus.SUCCEEDED, at=now).leased(None, None)
            data = {"status": current.status.value, "reason": reason, "steps": list(steps)}
            j.emit(E.PLAN_ROLLED_BACK, plan=current, data=data)
            tx.save_plan(current)
            j.flush()
        return current
