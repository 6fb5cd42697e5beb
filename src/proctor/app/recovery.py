"""Taking a plan over: ``resume`` after its lease lapsed, and a human's ``resolve``.

``Recovery`` is a mixin of ``Executor`` (``proctor.app.executor``): the executor's methods
that claim a running or compensating plan whose owner is gone (or whose lease lapsed) and
carry it on, and that resume a plan needing attention once a human says what happened to its
``unknown`` step. It is separate because it runs only after something went wrong (a crash, a
timeout, a step of unknown outcome), not on the path of every step; the executor's own
methods it calls are declared below for the type checker only.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from proctor.app._outcomes import MAX_ERROR, SANDBOX_ON
from proctor.app.human_actions import INPUTS_CHANGED
from proctor.app.journal import Journal
from proctor.app.leases import owner_alive
from proctor.core.decisions import Outcome as Route
from proctor.core.events import EventType as E
from proctor.core.lifecycle import PlanRecord, PlanStatus, StepRecord, StepStatus
from proctor.errors import ConflictError, InvalidRequestError

if TYPE_CHECKING:
    import threading

    from proctor.app.gateway import Gateway
    from proctor.app.saga import Saga

__all__ = ["DEFAULT_CALL_TIMEOUT", "Recovery", "held_by_guard", "overdue", "unreported"]

_WORKING = (PlanStatus.RUNNING, PlanStatus.COMPENSATING)
_WAITING = "waiting: "  # the start of the error of a plan a guard holds (``_stopped``)
# The outcomes of a plan that waited for a person: its decision carries ``input_digest``.
_WAITED = frozenset({Route.CONFIRM.value, Route.APPROVE.value})

DEFAULT_CALL_TIMEOUT = 300.0
"""Seconds a remote MCP proxy's call may take when no timeout applies (a step timeout of 0),
as a local proxy's (``McpProxy._step_timeout``)."""


def held_by_guard(record: PlanRecord) -> str | None:
    """Why a guard holds ``record`` (a kill switch, the whitelist), or None.

    A claim that a guard stopped leaves the plan running with no lease, its ``error``
    ``waiting: <reason>`` (``Recovery._stopped``), until a claim after the release starts
    it. Nobody runs it meanwhile, so there is no owner's end to wait for.
    """
    error = record.error
    if (
        error is None
        or record.status is not PlanStatus.RUNNING
        or record.lease_owner is not None
        or not error.startswith(_WAITING)
    ):
        return None
    return error.removeprefix(_WAITING)


class Recovery:
    """Claiming plans whose lease lapsed, and resolving unknown steps (an ``Executor`` mixin)."""

    # Whether a claim that would start a step asks the guards first (``Guards.stopped``: kill
    # switches, the whitelist). False for an executor whose claims only record a call made
    # elsewhere (a remote MCP proxy's reported outcome): that call happened, whatever a
    # switch says now, and not recording it would leave it to be made again.
    guards_at_claim = True

    if TYPE_CHECKING:  # provided by Executor
        gw: Gateway
        owner: str
        saga: Saga
        runs_handlers: bool
        _guard: threading.Lock
        _held: dict[str, object]

        @property
        def _opts(self) -> Any: ...
        @property
        def sandboxed(self) -> bool: ...  # noqa: D102
        def refuse_in_sandbox(self, record: PlanRecord, doing: str) -> None: ...  # noqa: D102
        def _token(self) -> str: ...
        def _mine(self, lease_owner: str | None) -> bool: ...
        def _until(self, now: datetime) -> datetime: ...
        def runnable_here(self, record: PlanRecord) -> bool: ...  # noqa: D102
        def _journal(self, tx: Any) -> Journal: ...
        def _attempt(self, step: StepRecord, status: str) -> dict[str, Any]: ...
        def start_checked(  # noqa: D102
            self, j: Journal, record: PlanRecord, index: int, now: datetime
        ) -> PlanRecord: ...
        def note_queued(self, j: Journal, record: PlanRecord) -> None: ...  # noqa: D102
        def _not_started(
            self,
            j: Journal,
            record: PlanRecord,
            index: int,
            why: str,
            data: dict[str, Any],
            now: datetime,
        ) -> PlanRecord: ...
        def refusal(self, step: StepRecord) -> InvalidRequestError | None: ...  # noqa: D102
        def _refuse(
            self,
            j: Journal,
            record: PlanRecord,
            index: int,
            refused: InvalidRequestError,
            now: datetime,
        ) -> PlanRecord: ...
        def run(self, record: PlanRecord) -> PlanRecord: ...  # noqa: D102
        def continue_compensation(self, record: PlanRecord) -> PlanRecord: ...  # noqa: D102

    # ------------------------------------------------------------------ resuming

    def resume(self, plan_id: str, *, traceparent: str | None = None) -> PlanRecord | None:
        """Claim a running or compensating plan whose lease lapsed, and carry it on.

        Returns the plan as it ends here, or None when it is not ours to take (held by a live
        owner, finished, or needing a runner this process does not serve), or when a guard
        stops the step it would start (a kill switch, the whitelist): the plan then waits,
        running with no lease and its ``error`` saying why, and a later claim starts it.
        Under sandbox mode a plan whose claim would call a handler (start a step, compensate)
        is not claimed at all: it stays as it is, and the first claim after the switch carries
        it on.
        ``traceparent`` joins the caller's trace (a remote MCP proxy reporting its call).
        """
        with self._guard:
            if plan_id in self._held:
                return None
        with self.gw.telemetry.plan("proctor.resume", traceparent, plan_id=plan_id):
            return self._resume(plan_id)

    def _resume(self, plan_id: str) -> PlanRecord | None:
        claimed = self._claim(plan_id)
        if claimed is None:
            return None
        record, then = claimed
        if then == "compensate":
            return self.continue_compensation(record)
        if then == "run":
            return self.run(record)
        return record

    def refuse_stale(self, plan_id: str) -> PlanRecord | None:
        """Fail a queued plan whose next step the catalog refuses now; None if it accepts it.

        For a process that lets someone else make a queued plan's call (``/v1/mcp/calls``
        answers a remote MCP proxy "running": the proxy forwards the call, then reports the
        outcome): that answer must not go out for params the catalog refuses. Any process
        may do this, since it runs nothing. A plan that is held (leased) or has a step in
        flight is left alone, and so is a step whose action this catalog does not have.

        Returns:
            The plan as it ends (failed, its completed steps compensated), or None.
        """
        now = self.gw.clock.now()
        with self.gw.store.transaction() as tx:
            current: PlanRecord | None = tx.get_plan(plan_id)
            if (
                current is None
                or current.status is not PlanStatus.RUNNING
                or current.lease_owner is not None
                or any(s.status is StepStatus.RUNNING for s in current.steps)
            ):
                return None
            if self._inputs_changed_at_start(current):
                # As a claim here would: "running" would make the proxy start its first step.
                j = self._journal(tx)
                current = self._expire_unstarted(tx, j, current, INPUTS_CHANGED, {}, now)
                tx.save_plan(current)
                j.flush()
                return current
            step = next((s for s in current.steps if s.status is StepStatus.PENDING), None)
            if step is None or step.action not in self.gw.catalog:
                return None
            refused = self.refusal(step)
            if refused is None:
                return None
            j = self._journal(tx)
            current = self._refuse(j, current, step.index, refused, now)
            tx.save_plan(current)
            j.flush()
        return self.continue_compensation(current)

    def stopped_now(self, plan_id: str) -> str | None:
        """Why a guard stops a queued plan's next step now (the plan waits), or None.

        For a process that lets someone else make a queued plan's call (``/v1/mcp/calls``
        answers a remote MCP proxy "running": the proxy forwards the call): under a kill
        switch or the agent's whitelist that answer must not go out, as a claim here would
        not start the step (``_stopped``, which records the guard's event once).
        """
        if self.sandboxed:
            return SANDBOX_ON  # nothing is called under sandbox mode, here or by a proxy
        if not self.guards_at_claim or self.gw.guards is None:
            return None
        with self.gw.store.transaction() as tx:
            current: PlanRecord | None = tx.get_plan(plan_id)
            if current is None or current.lease_owner is not None or not self._would_start(current):
                return None
            if not self._stopped(tx, self._journal(tx), current):
                return None
            held: PlanRecord | None = tx.get_plan(plan_id)
            reason = held_by_guard(held) if held is not None else None
            return reason or "a guard stops it"

    def _claim(self, plan_id: str) -> tuple[PlanRecord, str] | None:
        now = self.gw.clock.now()
        must_sync = False  # it starts a step that is not idempotent
        # Not durable: nobody is told of a claim; lost on power failure, it is claimed again.
        with self.gw.store.transaction(durable=False) as tx:
            current: PlanRecord | None = tx.get_plan(plan_id)
            if current is None or current.status not in _WORKING:
                return None
            if not self.runnable_here(current):
                return None
            previous = current.lease_owner
            if (
                previous is not None
                and current.lease_until is not None
                and current.lease_until > now
                and (self._mine(previous) or owner_alive(previous))
            ):
                return None
            if self.sandboxed and (
                current.status is PlanStatus.COMPENSATING
                or (self.runs_handlers and self._would_start(current))
            ):
                # No handler runs under sandbox mode: the plan stays as it is, unclaimed (no
                # event, nothing written: every pass of the worker would repeat it).
                return None
            j = self._journal(tx)
            if unreported(current, now):
                # A call handed to a remote MCP proxy whose outcome comes after its report-by
                # (or any claim of it then): as the timer would (``report_missed``), in the
                # claim's own transaction with the timer's test, so of a late report and the
                # timer exactly one acts and the plan needs attention either way. The report
                # is not recorded: past that time a human owns the question (``resolve``).
                current = self._report_missed(j, current, now)
                tx.save_plan(current)
                j.flush()
                return current, "done"
            if self.runs_handlers and overdue(current, now):
                # Checked here, in the claim's own transaction (the row is locked), with the
                # timer's test (``overdue``): of a runner claiming it and a timer firing at
                # the same moment, exactly one acts: it runs, or it expires unstarted.
                current = self._expire_queued(tx, j, current, now)
                tx.save_plan(current)
                j.flush()
                return current, _then(current) if _has_completed(current) else "done"
            if self.runs_handlers and self._inputs_changed_at_start(current):
                # Before the guards, as at a confirmation: a plan that can never run on its
                # decision does not wait for a kill switch's release.
                current = self._expire_unstarted(tx, j, current, INPUTS_CHANGED, {}, now)
                tx.save_plan(current)
                j.flush()
                return current, "done"
            if self.guards_at_claim and self._would_start(current):
                if self._stopped(tx, j, current):
                    return None
                if current.error is not None:  # it waited for a guard (_stopped): no longer
                    current = dataclasses.replace(current, error=None)
            current = current.leased(self._token(), self._until(now))
            if current.report_by is not None:  # its outcome is being recorded, in time
                current = dataclasses.replace(current, report_by=None)
            if previous is not None:
                j.emit(
                    E.PLAN_RESUMED,
                    plan=current,
                    data={"previous_owner": previous, "owner": self.owner},
                )
            if current.status is PlanStatus.COMPENSATING:
                tx.save_plan(current)
                j.flush()
                return current, "compensate"
            running = next(
                (i for i, s in enumerate(current.steps) if s.status is StepStatus.RUNNING), None
            )
            pending = next(
                (i for i, s in enumerate(current.steps) if s.status is StepStatus.PENDING), None
            )
            if running is None and pending is None:
                # Nothing left to start (a state only older versions could leave): settle.
                if any(s.status is StepStatus.FAILED for s in current.steps):
                    current = self.saga.start(j, current, "a step failed", None, now)
                    then = "compensate"
                else:
                    current = current.moved_to(PlanStatus.SUCCEEDED, at=now).leased(None, None)
                    j.emit(E.PLAN_FINISHED, plan=current, data={"status": "succeeded"})
                    then = "done"
            elif running is None:
                assert pending is not None
                current = self.start_checked(j, current, pending, now)
                started = current.steps[pending]
                spec = self.gw.catalog.get(started.action)
                must_sync = started.status is StepStatus.RUNNING and not (
                    spec is not None and spec.idempotent
                )
                then = _then(current)
            else:
                step = current.steps[running]
                spec = self.gw.catalog.get(step.action)  # None: it left the catalog
                if spec is not None and spec.idempotent and step.attempts < self._opts.max_attempts:
                    current = self.start_checked(j, current, running, now)
                    then = _then(current)
                else:
                    # Not idempotent, or its last attempt timed out or was interrupted:
                    # whether it took effect is unknown. Failing it would compensate the steps
                    # before it and leave its own effect, if any (a timed-out call can still
                    # succeed late), neither recorded nor undone: a human says (``resolve``).
                    current = self._unknown(j, current, running, now)
                    then = "done"
            tx.save_plan(current)
            j.flush()
        if must_sync:
            # Lost on power failure, the step would be pending again and run twice: its
            # step.started must be on disk before its handler runs (a durable commit after
            # it syncs it too).
            self.gw._sync()
        return current, then

    # ------------------------------------------------------------------ the start-by time

    def queue(self, record: PlanRecord, now: datetime) -> PlanRecord:
        """Give a plan a human just cleared, left queued for another process, its start-by.

        A confirmation, an approval or a resolution that this process cannot carry on
        leaves the plan running with no lease (``begin``, ``resolve``) for a process that
        serves its runner or whose catalog has its actions. The person who cleared it meant
        "now": past ``queue_ttl`` (``start_by``) it must not run at whatever moment such a
        process finally appears, so its timer expires it (``expire_overdue``) and a claim
        after then expires it too (``_claim``). A plan this process started is returned as
        it is.
        """
        if record.status is not PlanStatus.RUNNING or record.lease_owner is not None:
            return record
        ttl: timedelta = self._opts.queue_ttl
        return dataclasses.replace(record, start_by=now + ttl)

    def expire_overdue(self, plan_id: str) -> PlanRecord | None:
        """Expire a queued plan past its start-by time (its timer fired); None if it is not.

        One transaction that re-reads the plan under its row lock: a process that claimed it
        in the meantime (``_claim``, which applies the same test) started a step and cleared
        ``start_by``, and the plan is left to it. A plan none of whose steps completed ends
        ``expired``; one with completed steps (a human resolved a step as succeeded, and the
        steps after it waited for a runner) fails its next step unstarted and is compensated
        as after any failed step, by a process that runs its actions (``_expire_queued``).

        Returns:
            The plan as it ends here, or None when it is not queued past its start-by.
        """
        now = self.gw.clock.now()
        with self.gw.store.transaction() as tx:
            current: PlanRecord | None = tx.get_plan(plan_id)
            if current is None or not overdue(current, now):
                return None
            if self.sandboxed and _has_completed(current):
                # Its compensation would run a handler: the timer stays due and fires on the
                # first pass after the switch (a claim meanwhile is refused, ``_claim``).
                return None
            j = self._journal(tx)
            current = self._expire_queued(tx, j, current, now)
            if current.status is PlanStatus.COMPENSATING:
                # Its compensations run where its actions run: a process that serves them
                # claims the compensating plan and carries it on (``_claim``), as ``resolve``
                # leaves it.
                current = current.leased(None, None)
            tx.save_plan(current)
            j.flush()
        return current

    def call_timeout(self, action: str) -> float:
        """Seconds the call of ``action`` may take when a remote MCP proxy makes it.

        The action's ``timeout``, else the step timeout, else (a step timeout of 0: no
        limit) 300 s, the limit a local MCP proxy applies then. ``/v1/mcp/calls`` tells the
        proxy this limit (it enforces it) and ``hand_off`` derives the call's report-by
        from it: both must name the same one, or a call within the limit the proxy applies
        could outlast the server's wait for its outcome.
        """
        spec = self.gw.catalog.get(action)
        limit = (spec.timeout if spec is not None else None) or self._opts.step_timeout
        return float(limit) if limit else DEFAULT_CALL_TIMEOUT

    def hand_off(self, plan_id: str, *, durable: bool = True) -> PlanRecord | None:
        """Hand a queued plan's call to its caller: expired past its start-by, else timed.

        For a process that lets someone else make a queued plan's call (``/v1/mcp/calls``
        answers a remote MCP proxy "running": the proxy forwards the call, then reports its
        outcome). Past its start-by time the plan expires here and the caller is told so
        instead. Otherwise the call is made now: its start-by is cleared (the outcome the
        proxy reports later must find the plan running, not expired by a timer meanwhile:
        the call would have happened with no record of it), and its report-by is set
        (``PlanRecord.report_by``): the call's timeout (``call_timeout``) plus
        ``report_grace`` from now. A proxy that dies (or loses the network) after it was
        told to make the call reports nothing and holds no lease, and the plan would stay
        running for ever; past its report-by the timer puts it in ``needs_attention``
        instead (``report_missed``), since the call may have been made.

        Each hand-over tells a proxy to make the call, so a later one (the call's retry)
        pushes the report-by out to cover that call too; it never brings it nearer.

        Args:
            plan_id: The queued plan whose call is handed over.
            durable: False for the hand-over of a call routed to execute at its submission,
                whose own commit was not fsynced either (an idempotent tool): the report-by
                is a timer that ends a lost proxy's wait, and the outcome's durable commit
                syncs it with the plan. A power loss before then loses the plan's row too.

        Returns:
            The plan as it is now (expired, or queued with a report-by and no start-by), or
            None if it is not queued (any more).
        """
        now = self.gw.clock.now()
        with self.gw.store.transaction(durable=durable) as tx:
            current: PlanRecord | None = tx.get_plan(plan_id)
            if (
                current is None
                or current.status is not PlanStatus.RUNNING
                or current.lease_owner is not None
            ):
                return None
            if overdue(current, now) and not _has_completed(current):
                j = self._journal(tx)
                current = self._expire_queued(tx, j, current, now)
                tx.save_plan(current)
                j.flush()
                return current
            step = _handed(current)
            if step is None:
                return current  # a step in flight (an outcome being recorded): nothing to hand
            grace: timedelta = self._opts.report_grace
            report_by = now + timedelta(seconds=self.call_timeout(step.action)) + grace
            if current.report_by is not None:
                report_by = max(report_by, current.report_by)
            current = dataclasses.replace(current, start_by=None, report_by=report_by)
            tx.save_plan(current)
        return current

    def report_missed(self, plan_id: str) -> PlanRecord | None:
        """Put a handed-over plan whose outcome was not reported in time in needs_attention.

        Its timer fired (``report_by``, set by ``hand_off``): the proxy told to make the
        call reported nothing by then, within the call's timeout and a grace. The call may
        have been made upstream, or not: failing or expiring the plan could record a call
        that happened as one that never ran (and release its budget reservation), so a human
        checks and resolves its step, as for a step interrupted mid-flight (``_unknown``).
        One transaction that re-reads the plan under its row lock: of the timer and the
        proxy's report (whose claim applies the same test, ``_claim``), whichever commits
        first decides.

        Returns:
            The plan as it ends here, or None when it is not past its report-by (any more).
        """
        now = self.gw.clock.now()
        with self.gw.store.transaction() as tx:
            current: PlanRecord | None = tx.get_plan(plan_id)
            if current is None or not unreported(current, now):
                return None
            j = self._journal(tx)
            current = self._report_missed(j, current, now)
            tx.save_plan(current)
            j.flush()
        return current

    def _report_missed(self, j: Journal, record: PlanRecord, now: datetime) -> PlanRecord:
        """The step of ``record`` becomes ``unknown`` and the plan needs attention (in ``j``)."""
        step = _handed(record)
        assert step is not None  # unreported(): a pending step, none in flight
        when = record.report_by.isoformat() if record.report_by is not None else "?"
        reason = (
            f"the MCP proxy did not report the outcome of the call by {when}; it may have "
            "made the call"
        )
        # pending -> running -> unknown: the proxy was told to make this attempt. Nothing
        # here knows when (or whether) it started, so no step.started is recorded for it.
        step = step.moved_to(StepStatus.RUNNING, attempts=step.attempts + 1)
        step = step.moved_to(StepStatus.UNKNOWN, error=reason[:MAX_ERROR])
        record = dataclasses.replace(record, report_by=None)
        error = f"step {step.step_id}'s outcome is unknown: {reason}"
        return self._needs_attention(j, record, step, error, reason, now, report_by=when)

    def _expire_queued(self, tx: Any, j: Journal, record: PlanRecord, now: datetime) -> PlanRecord:
        """End a queued plan whose start-by passed (inside ``j``'s transaction; see ``overdue``).

        Nothing completed: ``expired``, every step skipped, ``plan.expired`` with the reason,
        and the budget reservation released (``Guards.on_finish``), as a plan nobody decided
        in time. Some step completed (a resolved step): its next step fails unstarted and
        the saga starts (the reservation is released when the compensation finishes).
        """
        start_by = record.start_by
        when = start_by.isoformat() if start_by is not None else "?"
        ttl = int(self._opts.queue_ttl.total_seconds())
        why = (
            f"no process that runs it took it by {when}: it waited for a runner longer than "
            f"the queue TTL ([execution] queue_ttl_seconds = {ttl}) after it was cleared"
        )
        record = dataclasses.replace(record, start_by=None)
        if _has_completed(record):
            index = next(i for i, s in enumerate(record.steps) if s.status is StepStatus.PENDING)
            return self._not_started(j, record, index, why, {"start_by": when}, now)
        reason = f"{why}; it never ran (a new submission is a new plan)"[:MAX_ERROR]
        return self._expire_unstarted(
            tx, j, record, reason, {"start_by": when, "queue_ttl_seconds": ttl}, now
        )

    def _expire_unstarted(
        self,
        tx: Any,
        j: Journal,
        record: PlanRecord,
        reason: str,
        data: dict[str, Any],
        now: datetime,
    ) -> PlanRecord:
        """End a queued plan none of whose steps started: ``expired`` (inside ``j``'s tx).

        Its steps are skipped, ``plan.expired`` carries ``reason`` and ``data``, and its
        budget reservation is released (``Guards.on_finish``), as for a plan nobody decided
        in time.
        """
        record = self.gw._skip_rest(
            record.moved_to(PlanStatus.EXPIRED, at=now, error=reason, start_by=None), 0
        ).leased(None, None)
        j.emit(E.PLAN_EXPIRED, plan=record, data={"reason": reason, **data})
        guards = self.gw.guards
        if guards is not None:
            guards.on_finish(tx, j.emit, record)
        return record

    def _inputs_changed_at_start(self, record: PlanRecord) -> bool:
        """Whether a waited plan about to start was decided from facts not held here.

        The facts are those ``HumanActions.inputs_changed`` compares (catalog entries,
        ``hybrid_max``).

        The process that starts a plan's first step after a confirmation or approval is the
        one whose catalog entries govern the run, and the process that took the confirmation
        may not have checked them (an action not in its catalog: a runner's, one another
        process registered) or may hold another catalog. So every such start asks, here: a
        mismatch expires the plan before any handler runs, with the reason a confirmation
        gives. Only for a plan that waited (routed ``confirm`` or ``approve``) and whose steps
        are all pending: a plan routed ``execute`` pays one string comparison, and a plan
        that started a step is never expired (a resolved step, an interrupted one).
        """
        # NOTE(mcp): a plan handed to a remote MCP proxy (``report_by``) is not asked: its
        # call is the proxy's, perhaps under way, and only the report or the report-by timer
        # settles it (an expiry would record a call that happened as one that never ran).
        return (
            record.outcome in _WAITED
            and record.status is PlanStatus.RUNNING
            and record.report_by is None
            and all(s.status is StepStatus.PENDING for s in record.steps)
            and self.gw.inputs_changed(record) is True
        )

    def _would_start(self, record: PlanRecord) -> bool:
        """Whether claiming ``record`` starts a step: a pending one, or an idempotent re-run."""
        if record.status is not PlanStatus.RUNNING:
            return False
        step = next((s for s in record.steps if s.status is StepStatus.RUNNING), None)
        if step is None:
            return any(s.status is StepStatus.PENDING for s in record.steps)
        spec = self.gw.catalog.get(step.action)
        return spec is not None and spec.idempotent and step.attempts < self._opts.max_attempts

    def _stopped(self, tx: Any, j: Journal, record: PlanRecord) -> bool:
        """Whether a guard stops the step a claim would start; if so, the plan waits.

        Waiting is what a confirmation or an approval does under a kill switch (the plan
        keeps waiting, and goes on once the switch is released), and it starts nothing: the
        plan stays running with no lease (queued, its interrupted step as it was), its
        ``error`` saying why, and the worker's next claim after the release starts it. Only
        a change is recorded: the first claim refused for a reason commits the guard's event
        (``guard.killed``, ``guard.whitelist_denied``) with the plan's new ``error``; the
        claims of later worker passes, refused for the same reason, write nothing.
        """
        guards = self.gw.guards
        if guards is None:
            return False
        said: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        reason = guards.stopped(tx, lambda *a, **kw: said.append((a, kw)), record)
        if reason is None:
            return False
        error = f"{_WAITING}{reason}"[:MAX_ERROR]
        if record.error != error or record.lease_owner is not None:
            for args, kwargs in said:
                j.emit(*args, **kwargs)
            tx.save_plan(dataclasses.replace(record, error=error).leased(None, None))
            j.flush()
        return True

    def _unknown(self, j: Journal, record: PlanRecord, index: int, now: datetime) -> PlanRecord:
        step = record.steps[index]
        reason = step.error or "interrupted mid-flight"
        spec = self.gw.catalog.get(step.action)
        if spec is not None and spec.idempotent:
            why = f"ran out of attempts ({step.attempts} of {self._opts.max_attempts})"
        else:
            why = "is not idempotent"
        step = step.moved_to(StepStatus.UNKNOWN, error=reason)
        error = f"step {step.step_id} {why} and its outcome is unknown ({reason})"
        return self._needs_attention(j, record, step, error, reason, now)

    def _needs_attention(
        self,
        j: Journal,
        record: PlanRecord,
        step: StepRecord,
        error: str,
        reason: str,
        now: datetime,
        **data: Any,
    ) -> PlanRecord:
        """``record`` with ``step`` (now ``unknown``) needs attention: a human resolves it."""
        record = record.with_step(step).moved_to(
            PlanStatus.NEEDS_ATTENTION, at=now, error=error[:MAX_ERROR]
        )
        record = record.leased(None, None)
        j.emit(
            E.STEP_UNKNOWN,
            plan=record,
            step_id=step.step_id,
            actions=[self._attempt(step, "unknown")],
            data={"reason": reason, "attempt": step.attempts, **data},
        )
        return record

    def _resolved_cost(self, step: StepRecord) -> int:
        """What a step resolved as succeeded cost: its action's amount (0 if unknown here)."""
        spec = self.gw.catalog.get(step.action)
        # Params the catalog no longer reads an amount from: the human's resolution is
        # recorded all the same, without a cost (the audit record is the point here).
        return spec.recorded_amount(step.params) if spec is not None else 0

    def resolve(
        self, plan_id: str, step_id: str, *, succeeded: bool, principal: str, comment: str = ""
    ) -> PlanRecord:
        """A human says what happened to an ``unknown`` step; the plan carries on from there.

        ``succeeded`` runs the remaining steps (or finishes the plan); otherwise the completed
        steps are compensated. When this process does not serve the plan's runner, either is
        left to one that does: the plan is committed without a lease (queued), as ``begin``
        leaves a plan, and a process serving the runner claims it.

        Raises:
            ConflictError: if the plan does not need attention or the step is not unknown, or
                if ``succeeded`` would start the next step while a kill switch or the
                agent's whitelist forbids it, or if the resolution would run a handler (the
                next step, a compensation) while sandbox mode is on (the plan keeps needing
                attention).
        """
        if succeeded:
            self._resolve_stopped(plan_id, step_id)
        now = self.gw.clock.now()
        with self.gw.store.transaction() as tx:
            current: PlanRecord | None = tx.get_plan(plan_id)
            if current is None or current.status is not PlanStatus.NEEDS_ATTENTION:
                raise ConflictError(f"plan {plan_id} does not need attention", field="plan_id")
            step = next((s for s in current.steps if s.step_id == step_id), None)
            if step is None or step.status is not StepStatus.UNKNOWN:
                raise ConflictError(f"step {step_id!r} is not unknown", field="step_id")
            if len(comment) > 2000:
                raise InvalidRequestError(
                    "comment is longer than 2,000 characters", field="comment"
                )
            j = self._journal(tx)
            data: dict[str, Any] = {"by": principal, "succeeded": succeeded, "comment": comment}
            cost = self._resolved_cost(step) if succeeded else 0
            if cost:
                # As ``step.succeeded`` records it (here no tool reported a cost: the action's
                # amount), so the KPIs count the step's cost from the log alone.
                data["cost"] = cost
            j.emit(
                E.STEP_RESOLVED,
                plan=current,
                step_id=step_id,
                user_id=principal,
                data=data,
            )
            # The guards' bookkeeping, as for a step that ran to an outcome (``_apply_step``):
            # its reservation is settled (at its amount: no tool reported a cost) or released,
            # the breakers count it, and a plan that ends here releases what is left.
            guards = self.gw.guards
            if succeeded:
                current = current.with_step(
                    step.moved_to(StepStatus.SUCCEEDED, finished_at=now, error=None)
                )
                if guards is not None:
                    guards.on_step(tx, j.emit, current, current.steps[step.index], ok=True)
                nxt = step.index + 1
                if nxt < len(current.steps):
                    # A fresh deadline from here (``start`` sets it), as a plan a human confirms
                    # gets one from its start: the human said carry on, however long the check
                    # took. The old one would fail the next step unstarted and compensate the
                    # step just resolved as succeeded, reversing what the human said.
                    current = current.moved_to(
                        PlanStatus.RUNNING, at=now, error=None, deadline=None
                    )
                    # Even for a plan another process would run (nothing is recorded).
                    self.refuse_in_sandbox(current, f"go on to step {current.steps[nxt].step_id}")
                    if self.runnable_here(current):
                        current = self.start_checked(j, current, nxt, now)
                        then = _then(current)
                    else:  # as ``begin`` does: queued for a process that can run it
                        current = self.queue(current.leased(None, None), now)
                        self.note_queued(j, current)
                        then = "done"
                else:
                    current = current.moved_to(PlanStatus.SUCCEEDED, at=now, error=None)
                    j.emit(E.PLAN_FINISHED, plan=current, data={"status": "succeeded"})
                    if guards is not None:
                        guards.on_finish(tx, j.emit, current)
                    then = "done"
            else:
                current = current.with_step(step.moved_to(StepStatus.FAILED, finished_at=now))
                current = self.gw._skip_rest(current, step.index + 1)
                if guards is not None:
                    guards.on_step(tx, j.emit, current, current.steps[step.index], ok=False)
                if any(s.status is StepStatus.SUCCEEDED for s in current.steps):
                    # Refused under sandbox mode when something is to be compensated.
                    current = self.saga.start(j, current, f"step {step_id} failed", None, now)
                    then = "compensate"
                    if not self.runnable_here(current):
                        # Its compensations run where its actions run: a process serving its
                        # runner claims the compensating plan (``_claim``) and carries it on.
                        current = current.leased(None, None)
                        then = "done"
                else:
                    current = current.moved_to(
                        PlanStatus.FAILED, at=now, error=f"step {step_id} failed"
                    )
                    j.emit(E.PLAN_FINISHED, plan=current, data={"status": "failed"})
                    if guards is not None:
                        guards.on_finish(tx, j.emit, current)
                    then = "done"
            tx.save_plan(current)
            j.flush()
        if then == "run":
            return self.run(current)
        if then == "compensate":
            return self.continue_compensation(current)
        return current

    def _resolve_stopped(self, plan_id: str, step_id: str) -> None:
        """Refuse a resolution that would start the next step while a guard forbids it.

        As ``confirm`` and ``approve`` refuse under a kill switch (``Guards.recheck``): the
        guard's event is recorded, nothing else changes, and the caller is told which guard.
        Recording the step as succeeded and leaving the plan queued instead could let its
        deadline pass while the switch is engaged, and then the next step would fail and
        compensate the very step the human said succeeded. A resolution that starts nothing
        (the last step, or ``succeeded=False``) is not asked: it runs no action.

        Raises:
            ConflictError: naming the guard.
        """
        guards = self.gw.guards
        if guards is None:
            return
        reason = None
        with self.gw.store.transaction() as tx:
            current: PlanRecord | None = tx.get_plan(plan_id)
            if current is None or current.status is not PlanStatus.NEEDS_ATTENTION:
                return  # resolve says why
            step = next((s for s in current.steps if s.step_id == step_id), None)
            if step is None or step.status is not StepStatus.UNKNOWN:
                return  # resolve says why
            if step.index + 1 >= len(current.steps):
                return  # nothing starts
            j = self._journal(tx)
            reason = guards.stopped(tx, j.emit, current)
            j.flush()
        if reason is not None:
            raise ConflictError(
                f"plan {plan_id} cannot go on now: {reason}",
                field="plan_id",
                hint="It still needs attention: resolve it again once the guard allows it "
                "(`proctor guards`), or resolve the step as failed to compensate the plan.",
            )


def overdue(record: PlanRecord, now: datetime) -> bool:
    """Whether ``record`` is queued past its start-by time (``PlanRecord.start_by``).

    Queued: running with no lease and no step in flight, so nobody has it. The timer and a
    claim both ask this, with the same boundary as the store's ``due_plans`` (``<= now``),
    so whichever commits first decides, and the other sees the outcome.
    """
    return (
        record.status is PlanStatus.RUNNING
        and record.lease_owner is None
        and record.start_by is not None
        and record.start_by <= now
        and not any(s.status is StepStatus.RUNNING for s in record.steps)
        and any(s.status is StepStatus.PENDING for s in record.steps)
    )


def unreported(record: PlanRecord, now: datetime) -> bool:
    """Whether ``record``'s call was handed over and not reported by its report-by time.

    Handed over (``Recovery.hand_off``): running with no lease, a pending step and none in
    flight, a report-by set. The timer (``report_missed``) and the claim that records a
    reported outcome (``_claim``) both ask this, with the store's boundary (``<= now``).
    """
    return (
        record.report_by is not None
        and record.report_by <= now
        and record.status is PlanStatus.RUNNING
        and record.lease_owner is None
        and _handed(record) is not None
    )


def _handed(record: PlanRecord) -> StepRecord | None:
    """The step whose call a hand-over gives away: the first pending one, if none runs."""
    pending = None
    for s in record.steps:
        if s.status is StepStatus.RUNNING:
            return None
        if pending is None and s.status is StepStatus.PENDING:
            pending = s
    return pending


def _has_completed(record: PlanRecord) -> bool:
    return any(s.status is StepStatus.SUCCEEDED for s in record.steps)


def _then(record: PlanRecord) -> str:
    """What follows a ``start_checked``: run the step, or compensate (it was refused)."""
    return "compensate" if record.status is PlanStatus.COMPENSATING else "run"
