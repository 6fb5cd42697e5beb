"""Durable execution: steps under a lease, retries, timeouts, canaries and the saga.

The executor runs a plan's steps in order. Plan and step state live in the store and every
change commits with its audit event, so any process can pick up where another stopped:

- **Lease.** A running (or compensating) plan is held by one owner (``host:pid:start:nonce``)
  until ``lease_until``. Every commit by the owner renews it, and a heartbeat renews it while a
  handler runs. An expired lease, or one whose owner process is gone from this host, makes the
  plan claimable: ``resume`` takes it over. Each commit re-reads the plan and checks that the
  lease and the step's attempt are still its own (fencing): a stale owner that wakes up late
  records nothing but a ``step.late_result`` event (and escalates a late success of a step on
  record as failed: ``_late_result``).
- **At-least-once, never blindly.** A step interrupted mid-flight is run again under the same
  idempotency key (``plan_id:step_id``) only if its action is idempotent and it has attempts
  left; otherwise it becomes ``unknown`` and the plan ``needs_attention`` until a human
  resolves it.
- **The catalog now.** A step starts only with params the catalog accepts when it starts
  (``start_checked``): a plan may have waited for a human, a runner or a takeover while the
  catalog changed. A refused step fails without running and the plan is compensated. Only
  ``begin`` skips the check: its callers validated the params a moment before.
- **The deadline.** No step starts after its plan's deadline (``plan_deadline`` from the
  first step's start): ``start_checked`` fails it unstarted, as a step the catalog refuses,
  so no ``step.started`` is recorded for a step whose handler never runs.
- **Retries.** A tool raising ``RetryableError`` (or, for an idempotent tool, a timeout or a
  connection error) is retried with exponential backoff and full jitter, up to
  ``max_attempts``, never past the plan's deadline.
- **Timeouts.** Handlers run in the caller's thread (no thread hop on the hot path); a watchdog
  thread notices an attempt past its timeout, records ``step.timed_out``, releases the lease
  and hands the plan to ``resume`` on a worker thread, which retries or marks it ``unknown``.
- **Calls made by the caller.** Inside ``deferred()``, a plan that would run is returned
  running instead, its step started and recorded; the caller makes the handler's call itself
  (``next_call``), for instance as a coroutine in its event loop, and hands the outcome back
  (``complete``), which records it exactly as ``run`` would (retries, saga, fencing). The
  plan is held meanwhile: its lease is renewed and its timeout watched.
- **Canary.** An action with a ``canary`` runs first against its staging target; a
  deterministic check decides whether it is promoted to the real params.
- **Saga.** Compensation is durable too: the plan is ``compensating`` with its reason and
  final status stored, each compensation is an in-flight marker then an outcome (timed out by
  the watchdog as a step's attempt is), and a crash mid-compensation resumes it.

``Executor`` here runs the steps: starting them, calling handlers (with their canaries),
retries, fencing, recording outcomes, and the calls made by the caller. Its other parts live
in sibling modules: taking plans over (``resume``) and resolving ``unknown`` steps in
``proctor.app.recovery``, the watchdog and the worker threads in ``proctor.app.background``
(both mixins of ``Executor``), and the saga in ``proctor.app.saga``.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from proctor.app._outcomes import (
    MAX_ERROR,
    SANDBOX_ON,
    LostLease,
    Outcome,
    bounded,
    err,
    jsonable,
)
from proctor.app.background import Background, _Flight
from proctor.app.journal import Journal
from proctor.app.leases import owner_alive, process_owner_id
from proctor.app.recovery import Recovery
from proctor.app.saga import Saga
from proctor.core.canonical import printable
from proctor.core.catalog import ActionSpec
from proctor.core.drift import drift
from proctor.core.events import EventType as E
from proctor.core.lifecycle import PlanRecord, PlanStatus, StepRecord, StepStatus
from proctor.core.plans import CANARY_SUFFIX
from proctor.core.ports import ToolCall
from proctor.errors import ConflictError, InvalidRequestError, RetryableError

if TYPE_CHECKING:
    from proctor.app.gateway import Gateway

__all__ = ["Executor", "StepCall", "owner_alive", "process_owner_id"]  # owner ids: re-exported

# Results of actions over personal or health data are kept out of the append-only audit log
# (it can never be erased): the event keeps their hash; the result stays with the plan.
_UNLOGGED_RESULTS = frozenset({"pii", "health"})


# Set by ``Executor.deferred``: ``run`` then leaves the handler's call to the caller.
_DEFERRED: ContextVar[bool] = ContextVar("proctor_executor_deferred", default=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class StepCall:
    """A running step's handler call, made by the caller (``Executor.next_call``).

    Attributes:
        record: The plan, its step started and recorded.
        index: The step's index.
        handler: The handler's path in the catalog.
        params: The step's params, as approved.
        call: The call's context (ids, idempotency key).
    """

    record: PlanRecord
    index: int
    handler: str
    params: Mapping[str, Any]
    call: ToolCall
    _token: object
    _flight: _Flight


class Executor(Recovery, Background):
    """Runs a gateway's plans durably (see the module docstring)."""

    # Whether this executor's step starts call handlers. False for one whose starts only
    # record a call made elsewhere (a remote MCP proxy's reported outcome): sandbox mode does
    # not refuse those, since the call happened before and refusing would lose its record.
    runs_handlers = True

    def __init__(self, gateway: Gateway, *, owner: str | None = None) -> None:
        self.gw = gateway
        self.owner = owner or process_owner_id()
        # Each start or claim takes a fresh lease token ``owner#n``: a stale attempt of this
        # same process (one that timed out and was resumed) no longer matches it.
        self._tokens = itertools.count(1)
        self._flights: dict[str, _Flight] = {}
        # Plans this process is running or compensating, each with its holder's token: a
        # stale holder (an attempt that timed out and was resumed) must not drop the new one.
        self._held: dict[str, object] = {}
        self._queued: set[str] = set()  # handed to a worker thread, not started yet
        self._guard = threading.Lock()
        self._watchdog: threading.Thread | None = None
        self._stop = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._sleep: Callable[[float], None] = time.sleep
        self.saga = Saga(self)

    # ------------------------------------------------------------------ helpers

    @property
    def _opts(self) -> Any:
        return self.gw.options

    def _token(self) -> str:
        return f"{self.owner}#{next(self._tokens)}"

    def _mine(self, lease_owner: str | None) -> bool:
        return lease_owner is not None and lease_owner.partition("#")[0] == self.owner

    def _until(self, now: datetime) -> datetime:
        ttl: timedelta = self._opts.lease_ttl
        return now + ttl

    @property
    def sandboxed(self) -> bool:
        """Whether sandbox mode is on (``[execution] sandbox``): no handler runs at all."""
        return bool(self._opts.sandbox)

    def refuse_in_sandbox(self, record: PlanRecord, doing: str) -> None:
        """Refuse, while sandbox mode is on, what would run a handler (``doing``, in words).

        Sandbox mode promises that no handler runs at all, whatever starts it: a plan decided
        before the switch and confirmed, approved or resolved now, a queued or interrupted
        plan a worker would claim, an undo, a rollback TTL, a saga. Every step start
        (``begin``, ``start``) and every compensation (``Saga.start``, ``Saga.rest``) asks
        here first. Raised inside the caller's transaction, the refusal rolls it back: the
        plan stays exactly as it was (waiting, queued, succeeded) and goes on once sandbox
        mode is off. Claims and timers do not raise: they leave the plan as it is
        (``_claim``, ``HumanActions._fire``).

        Raises:
            ConflictError: sandbox mode is on.
        """
        if self.sandboxed:
            raise ConflictError(
                f"plan {record.plan_id} cannot {doing} now: {SANDBOX_ON}",
                field="plan_id",
                hint="Nothing changed: the plan stays as it is, and can go on once sandbox mode "
                "is off ([execution] sandbox = false or PROCTOR_SANDBOX=false; a server reads "
                "it when it starts).",
            )

    def runnable_here(self, record: PlanRecord) -> bool:
        """Whether every step's action runs in this process (its runner is served here)."""
        for s in record.steps:
            spec = self.gw.catalog.get(s.action)
            if spec is None or (spec.runner is not None and spec.runner not in self._opts.runners):
                return False
        return True

    def _journal(self, tx: Any) -> Journal:
        return self.gw._journal(tx)

    def _attempt(self, step: StepRecord, status: str) -> dict[str, Any]:
        return self.gw._attempt(step, self.gw.catalog.get(step.action), status)

    def _call(self, record: PlanRecord, step: StepRecord, result: Any = None) -> ToolCall:
        return ToolCall(
            plan_id=record.plan_id,
            step_id=step.step_id,
            idempotency_key=record.idempotency_key(step.step_id),
            on_behalf_of=record.on_behalf_of,
            agent_id=record.agent_id,
            result=result,
        )

    # ------------------------------------------------------------------ starting

    def start(self, j: Journal, record: PlanRecord, index: int, now: datetime) -> PlanRecord:
        """Start step ``index`` under this process's lease (inside the caller's transaction).

        Raises:
            ConflictError: sandbox mode is on (``refuse_in_sandbox``; nothing is recorded).
        """
        step = record.steps[index]
        if self.runs_handlers:
            self.refuse_in_sandbox(record, f"start step {step.step_id}")
        step = dataclasses.replace(step, error=None) if step.error else step
        if step.status is StepStatus.PENDING:
            step = step.moved_to(StepStatus.RUNNING, started_at=now, attempts=step.attempts + 1)
        else:  # a retry or a resumed attempt of a step already running
            step = dataclasses.replace(step, started_at=now, attempts=step.attempts + 1)
        # One copy of the record for the step, the lease, the deadline and a queued plan's
        # start-by (three or four before, through dataclasses.replace): with the one below,
        # 3.8 % of an allowed call's instructions in the in-memory mode, 1.5 % with SQLite
        # and signatures.
        lease: dict[str, Any] = {"lease_owner": self._token(), "lease_until": self._until(now)}
        if record.deadline is None:
            lease["deadline"] = now + self._opts.plan_deadline
        if record.start_by is not None:  # it was queued: taken in time, no timer any more
            lease["start_by"] = None
        record = record.with_step(step, **lease)
        j.emit(
            E.STEP_STARTED,
            plan=record,
            step_id=step.step_id,
            actions=[self._attempt(step, "started")],
            data={
                "idempotency_key": record.idempotency_key(step.step_id),
                "attempt": step.attempts,
            },
            trusted=True,
        )
        return record

    def begin(self, j: Journal, record: PlanRecord, now: datetime) -> PlanRecord:
        """Start a plan that just became running: its first step here, or queue it.

        A plan whose actions need a runner this process does not serve is left queued
        (running, no lease): a worker serving that runner claims it.

        Its params are not checked against the catalog again: both callers validated them
        just before, the submission (``Gateway._validate``) or the confirmation or approval
        (``HumanActions._recheck_catalog``). Every other start goes through ``start_checked``.

        Raises:
            ConflictError: sandbox mode is on, even for a plan another process would run
                (the confirmation or approval that set it running is not recorded either).
        """
        if self.runs_handlers:
            self.refuse_in_sandbox(record, "run")
        if not self.runnable_here(record):
            return record.leased(None, None)
        return self.start(j, record, 0, now)

    # ------------------------------------------------------------------ the catalog as it is now

    def refusal(self, step: StepRecord) -> InvalidRequestError | None:
        """Why the catalog as it is now refuses to start ``step``, or None if it accepts it.

        The same checks as at submission: the action is in the catalog, its params match
        the schema, its amount is a JSON integer. A plan may wait for a human, for a runner
        or for a takeover for any length of time, and the catalog may change meanwhile (a
        restart with another catalog file, an MCP tool whose schema changed); a plan stored
        by an older version may hold params the catalog now refuses (a float amount). A
        step must never run with params the catalog in force refuses (fail closed).
        """
        try:
            spec = self.gw.catalog.require(step.action, field=f"steps[{step.index}].action")
            spec.validate_params(step.params, field_prefix=f"steps[{step.index}].params")
        except InvalidRequestError as exc:
            return exc
        return None

    def start_checked(
        self, j: Journal, record: PlanRecord, index: int, now: datetime
    ) -> PlanRecord:
        """Start step ``index``, or fail it unstarted: past the plan's deadline, or refused.

        A step starts only before its plan's deadline and with params the catalog accepts now.

        Every start but ``begin``'s goes through here: a later step, a retry, a queued or
        interrupted plan claimed by ``resume``, the step after a resolved one. (``begin``
        starts a plan's first step, and its ``start`` sets the deadline from then.)

        Returns:
            The plan with its step started, or compensating with the step failed unstarted
            (the caller carries on the compensation, as after any failed step).
        """
        deadline = record.deadline
        if deadline is not None and now > deadline:
            # Here, not before the handler's call: a step past the deadline must not be
            # recorded started (an attempt counted, ``step.started``) when nothing runs.
            when = deadline.isoformat()
            return self._not_started(
                j, record, index, f"the plan's deadline passed at {when}", {"deadline": when}, now
            )
        refused = self.refusal(record.steps[index])
        if refused is None:
            return self.start(j, record, index, now)
        return self._refuse(j, record, index, refused, now)

    def _refuse(
        self,
        j: Journal,
        record: PlanRecord,
        index: int,
        refused: InvalidRequestError,
        now: datetime,
    ) -> PlanRecord:
        """Fail a step the catalog refuses, without calling its handler (inside ``j``'s tx)."""
        # printable: the field and message may quote a param's key or value (as a rejection
        # at submission does), and a lone surrogate has no UTF-8 form.
        where = printable(refused.field or "params")
        why = f"the catalog no longer accepts {where}: {printable(refused.message)}"
        return self._not_started(j, record, index, why, {"field": where}, now)

    def _not_started(
        self,
        j: Journal,
        record: PlanRecord,
        index: int,
        why: str,
        data: dict[str, Any],
        now: datetime,
    ) -> PlanRecord:
        """Fail a step that must not start (``why``), and start the plan's compensation.

        The step is ``failed`` with ``not started: <why>`` and its attempts as they were;
        ``step.failed`` carries the error, ``data`` and the attempt status ``refused``.
        """
        step = record.steps[index]
        error = f"not started: {why}"[:MAX_ERROR]
        step = step.moved_to(StepStatus.FAILED, finished_at=now, error=error)
        record = self.gw._skip_rest(record.with_step(step), index + 1)
        j.emit(
            E.STEP_FAILED,
            plan=record,
            step_id=step.step_id,
            actions=[self._attempt(step, "refused")],
            data={"error": error, "attempt": step.attempts, **data},
        )
        # No guards.on_step: nothing was called, so nothing was spent and no breaker saw an
        # error; the plan's budget reservation is released when its compensation finishes.
        return self.saga.start(j, record, f"step {step.step_id} failed: {error}", None, now)

    def note_queued(self, j: Journal, record: PlanRecord) -> None:
        """Say why a plan a human set running waits for another process (``plan.queued``).

        Only when an action it needs is not in this process's catalog at all: that may be a
        runner's (an MCP tool the proxy registered) or one another process registered, or
        an action removed from the catalog since the plan was decided. This process cannot
        tell them apart, so the plan waits, but the log says for what. (A known action with
        a runner served elsewhere is the documented case and needs no note.)
        """
        if record.lease_owner is not None or record.status is not PlanStatus.RUNNING:
            return
        missing = sorted({s.action for s in record.steps if s.action not in self.gw.catalog})
        if missing:
            j.emit(
                E.PLAN_QUEUED,
                plan=record,
                data={
                    "actions": missing,
                    "reason": "not in this process's catalog: the plan waits for a process "
                    "whose catalog has them, which checks the params again when it starts it",
                },
            )

    # ------------------------------------------------------------------ running

    def run(self, record: PlanRecord) -> PlanRecord:
        """Run a plan this process holds, from its running step to the end.

        Inside ``deferred()`` the plan is returned as it is, for ``next_call``.
        """
        if record.status is not PlanStatus.RUNNING or not self._mine(record.lease_owner):
            return record
        if _DEFERRED.get() and self._deferrable(record):
            return record
        token = self._hold(record.plan_id)
        try:
            return self._run(record)
        except LostLease as lost:
            return lost.record
        finally:
            self._release(record.plan_id, token)

    def _run(self, record: PlanRecord) -> PlanRecord:
        while True:
            index = next(i for i, s in enumerate(record.steps) if s.status is StepStatus.RUNNING)
            step = record.steps[index]
            spec = self.gw.catalog.require(step.action)
            out = self._invoke(record, step, spec)
            record, again = self._settle(record, index, spec, out)
            if not again:
                return record

    def _settle(
        self, record: PlanRecord, index: int, spec: ActionSpec, out: Outcome
    ) -> tuple[PlanRecord, bool]:
        """After an attempt: retry it or record it; return the plan and whether to run on."""
        step = record.steps[index]
        if out.error is not None and self._should_retry(record, step, spec, out):
            record = self._retry(record, index, out)
            if record.status is PlanStatus.COMPENSATING:  # the catalog refused the retry
                return self.saga.rest(record), False
            return record, True
        record = self._record_step(record, index, out)
        if record.status is PlanStatus.COMPENSATING:
            return self.saga.rest(record), False
        return record, record.status is PlanStatus.RUNNING

    def _invoke(self, record: PlanRecord, step: StepRecord, spec: ActionSpec) -> Outcome:
        """Call the handler (after its canary, if any); never raises for a tool failure."""
        # No deadline check here: its start did (``start_checked``; ``begin`` sets a fresh one).
        flight = self._flight(record, step, spec)
        canary = None
        try:
            if spec.canary is not None:
                canary, error = self._canary(record, step, spec)
                if error is not None:
                    return Outcome(error=error, canary=canary)
            if spec.handler is None:
                raise InvalidRequestError(f"action {spec.name!r} has no handler")
            with self.gw.telemetry.stage("step", action=spec.name, step=step.step_id):
                result = self.gw.tools.run(spec.handler, step.params, self._call(record, step))
        except Exception as exc:  # noqa: BLE001 - a tool failure is recorded, not raised
            return _outcome(spec, error=exc)
        finally:
            self._landed(record.plan_id, flight)
        return _outcome(spec, result=result, canary=canary)

    # ------------------------------------------------------------------ calls made by the caller

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Within: ``run`` leaves a running plan's next call to the caller.

        This holds for every way in: ``Gateway.submit``, ``confirm``, ``approve``, ``resume``.
        A step whose call cannot be deferred (a canary) runs as usual. Otherwise the plan
        comes back running, its step started (``step.started`` recorded), leased to
        this process: the caller must follow with ``next_call`` and ``complete`` (or ``run``
        outside this context). A caller that drops it leaves a plan whose lease lapses, as a
        crash would: ``resume`` retries the step or marks it ``unknown``.
        """
        token = _DEFERRED.set(True)
        try:
            yield
        finally:
            _DEFERRED.reset(token)

    def owns(self, record: PlanRecord) -> bool:
        """Whether this process holds the plan's lease (as ``record`` says)."""
        return self._mine(record.lease_owner)

    def _deferrable(self, record: PlanRecord) -> bool:
        """Whether the running step's call can be left to the caller (a handler, no canary)."""
        step = next((s for s in record.steps if s.status is StepStatus.RUNNING), None)
        spec = self.gw.catalog.get(step.action) if step is not None else None
        # A canary is two calls and a check in between: run() keeps them together.
        return spec is not None and spec.handler is not None and spec.canary is None

    def next_call(self, record: PlanRecord) -> StepCall | None:
        """Hold a running plan of this process and return its step's call, for the caller.

        Until ``complete``, the plan's lease is renewed and the attempt's timeout watched, as
        for a handler that ``run`` calls. A plan past its deadline is failed here instead:
        its step started in time (``start_checked``), but a call asked for after the deadline
        is not made.

        Returns:
            None when there is no call to make now: the plan is not running under this
            process's lease, another thread of this process runs it, its step cannot be
            deferred (``run`` carries it on), or its deadline passed (read it again).
        """
        if record.status is not PlanStatus.RUNNING or not self._mine(record.lease_owner):
            return None
        if not self._deferrable(record):
            return None
        index = next(i for i, s in enumerate(record.steps) if s.status is StepStatus.RUNNING)
        step = record.steps[index]
        spec = self.gw.catalog.require(step.action)
        assert spec.handler is not None  # _deferrable
        with self._guard:
            if record.plan_id in self._held:
                return None  # run by another thread of this process
        token = self._hold(record.plan_id)
        if record.deadline is not None and self.gw.clock.now() > record.deadline:
            out = Outcome(error=f"the plan's deadline passed at {record.deadline.isoformat()}")
            try:
                self._settle(record, index, spec, out)
            except LostLease:
                pass
            finally:
                self._release(record.plan_id, token)
            return None
        return StepCall(
            record=record,
            index=index,
            handler=spec.handler,
            params=step.params,
            call=self._call(record, step),
            _token=token,
            _flight=self._flight(record, step, spec),
        )

    def complete(
        self, pending: StepCall, *, result: Any = None, error: BaseException | None = None
    ) -> PlanRecord:
        """Record the outcome of a call made by the caller, as ``run`` records a handler's.

        Args:
            pending: What ``next_call`` returned (each is completed once).
            result: What the handler returned (JSON-able; masked by the caller if need be).
            error: What it raised instead (a ``RetryableError``, ``TimeoutError`` or
                ``ConnectionError`` is retried as ``run`` would).

        Returns:
            The plan: finished, or still running when a retry or the next step is due
            (``next_call`` again); a plan lost meanwhile (timed out, taken over) as it is.
        """
        record = pending.record
        self._landed(record.plan_id, pending._flight)
        try:
            spec = self.gw.catalog.require(record.steps[pending.index].action)
            out = _outcome(spec, result=result, error=error)
            return self._settle(record, pending.index, spec, out)[0]
        except LostLease as lost:
            return lost.record
        finally:
            self._release(record.plan_id, pending._token)

    def _canary(
        self, record: PlanRecord, step: StepRecord, spec: ActionSpec
    ) -> tuple[dict[str, Any], str | None]:
        """Run the step against staging and its success check; return (record, error)."""
        assert spec.canary is not None
        assert spec.handler is not None
        params = {**step.params, spec.canary["param"]: spec.canary["staging"]}
        call = dataclasses.replace(
            self._call(record, step),
            idempotency_key=record.idempotency_key(step.step_id) + CANARY_SUFFIX,
        )
        try:
            staged = jsonable(self.gw.tools.run(spec.handler, params, call))
        except Exception as exc:  # noqa: BLE001 - a failed canary fails the step
            info = {"target": spec.canary["staging"], "ok": False, "output": err(exc)}
            self._note_canary(record, step, info)
            return info, f"the staging run failed: {err(exc)}"
        try:
            verdict = self.gw.tools.run(spec.canary["check"], {"result": staged}, call)
        except Exception as exc:  # noqa: BLE001 - a failing check is a failed check
            verdict = {"ok": False, "output": err(exc)}
        if isinstance(verdict, dict):
            ok, output = verdict.get("ok") is True, jsonable(verdict.get("output"))
        else:
            ok, output = verdict is True, None
        info = {"target": spec.canary["staging"], "ok": ok, "output": output, "result": staged}
        self._note_canary(record, step, info)
        if not ok:
            return info, f"the canary check failed on {spec.canary['staging']}: {output}"
        return info, None

    def _note_canary(self, record: PlanRecord, step: StepRecord, info: dict[str, Any]) -> None:
        # An in-flight marker: nobody is told of it, a crash after it resumes the step.
        with self.gw.store.transaction(durable=False) as tx:
            current = self._fenced(tx, record, step)
            j = self._journal(tx)
            current = current.with_step(
                dataclasses.replace(current.steps[step.index], canary=info)
            ).leased(current.lease_owner, self._until(self.gw.clock.now()))
            j.emit(
                E.CANARY_CHECKED,
                plan=current,
                step_id=step.step_id,
                data={"target": info["target"], "ok": info["ok"], "output": info["output"]},
            )
            tx.save_plan(current)
            j.flush()

    def _should_retry(
        self, record: PlanRecord, step: StepRecord, spec: ActionSpec, out: Outcome
    ) -> bool:
        if not out.retryable or step.attempts >= self._opts.max_attempts:
            return False
        deadline = record.deadline
        return deadline is None or self.gw.clock.now() + self._backoff(step) < deadline

    def _backoff(self, step: StepRecord) -> timedelta:
        base = self._opts.retry_backoff.total_seconds() * 2 ** (step.attempts - 1)
        return timedelta(seconds=min(base, self._opts.retry_backoff_max.total_seconds()))

    def _retry(self, record: PlanRecord, index: int, out: Outcome) -> PlanRecord:
        step = record.steps[index]
        # Full jitter (AWS architecture blog, "Exponential Backoff And Jitter").
        delay = random.uniform(0, self._backoff(step).total_seconds())  # noqa: S311 - jitter
        # Not durable, whatever the action: the step's first start is on disk (a step that
        # is not idempotent is started durably), so a power loss leaves it running, not pending.
        with self.gw.store.transaction(durable=False) as tx:
            current = self._fenced(tx, record, step)
            j = self._journal(tx)
            j.emit(
                E.STEP_RETRYING,
                plan=current,
                step_id=step.step_id,
                data={"attempt": step.attempts, "delay_ms": int(delay * 1000), "error": out.error},
            )
            current = self.start_checked(j, current, index, self.gw.clock.now())
            tx.save_plan(current)
            j.flush()
        if current.status is PlanStatus.RUNNING:
            self._sleep(delay)
        return current

    def _fenced(self, tx: Any, record: PlanRecord, step: StepRecord | None) -> PlanRecord:
        """Check in ``tx`` that the plan is still ours as we left it; raise ``LostLease`` if not.

        Cheap on the hot path: the lease token changes on every start and claim, so reading
        the lease column suffices; the plan is loaded in full only when it was lost.
        """
        lease = tx.lease_of(record.plan_id)
        if lease is not None and lease == (record.lease_owner, record.status.value):
            return record
        current: PlanRecord | None = tx.get_plan(record.plan_id)
        if current is None:
            raise ConflictError(f"plan {record.plan_id} vanished", field="plan_id")
        raise LostLease(current)

    def _record_step(self, record: PlanRecord, index: int, out: Outcome) -> PlanRecord:
        """Record a step's outcome; start the next step or finish the plan, in one commit.

        Only the commit that finishes the plan (or fails it) is durable: the intermediate
        ones are in-flight markers that nobody has been told of. Except one that starts a
        step whose action is not idempotent: it is on disk before that handler runs, so that
        after a power loss the step is ``running`` (then ``unknown``), never ``pending`` again
        (and run twice).
        """
        step = record.steps[index]
        now = self.gw.clock.now()
        last = index + 1 >= len(record.steps) or out.error is not None
        # The next action may have left the catalog (start_checked then fails that step): an
        # unknown action counts as not idempotent.
        nxt = None if last else self.gw.catalog.get(record.steps[index + 1].action)
        durable = last or nxt is None or not nxt.idempotent
        lost: LostLease | None = None
        current = record
        with self.gw.store.transaction(durable=durable) as tx:
            try:
                current = self._fenced(tx, record, step)
            except LostLease as exc:
                # Commit the late-result event, then leave (raising here would roll it back).
                self._late_result(tx, exc.record, step, out)
                lost = exc
            else:
                current = self._apply_step(tx, current, index, out, last=last, now=now)
        if lost is not None:
            raise lost
        return current

    def _apply_step(
        self,
        tx: Any,
        current: PlanRecord,
        index: int,
        out: Outcome,
        *,
        last: bool,
        now: datetime,
    ) -> PlanRecord:
        step = current.steps[index]
        spec = self.gw.catalog.require(step.action)
        j = self._journal(tx)
        guards = self.gw.guards
        if out.error is not None:
            current = current.with_step(
                step.moved_to(
                    StepStatus.FAILED, finished_at=now, error=out.error, canary=out.canary
                )
            )
            j.emit(
                E.STEP_FAILED,
                plan=current,
                step_id=step.step_id,
                actions=[self._attempt(step, "failed")],
                data={"error": out.error, "attempt": step.attempts},
            )
            current = self.gw._skip_rest(current, index + 1)
            if guards is not None:
                guards.on_step(tx, j.emit, current, current.steps[index], ok=False)
            # In the same commit: a crash right after it resumes the compensation.
            current = self.saga.start(
                j, current, f"step {step.step_id} failed: {out.error}", None, now
            )
        else:
            decision = current.decision["steps"][index]
            undo = decision["undo_window"] if spec.reversible else 0
            ttl = decision["rollback_ttl"] if spec.reversible else 0
            gap = drift(step.simulation, out.result) if step.simulation is not None else None
            current = current.with_step(
                step.moved_to(
                    StepStatus.SUCCEEDED,
                    finished_at=now,
                    result=out.result,
                    canary=out.canary,
                    drift=gap,
                    undo_until=now + timedelta(seconds=undo) if undo else None,
                    rollback_at=now + timedelta(seconds=ttl) if ttl else None,
                )
            )
            data: dict[str, Any] = {"result_hash": self.gw.hash_payload(spec, {"r": out.result})}
            if spec.category not in _UNLOGGED_RESULTS:
                data["result"] = out.result
            cost = spec.recorded_amount(step.params)
            if isinstance(out.result, dict) and type(out.result.get("cost")) is int:
                cost = out.result["cost"]  # what the tool says it really cost
            if cost:
                data["cost"] = cost
            if gap is not None:
                data["drift"] = gap
            j.emit(
                E.STEP_SUCCEEDED,
                plan=current,
                step_id=step.step_id,
                actions=[self._attempt(step, "succeeded")],
                data=data,
            )
            if guards is not None:
                guards.on_step(tx, j.emit, current, current.steps[index], ok=True)
            if not last:
                # Compensating instead when the catalog refuses the next step: _settle goes on.
                current = self.start_checked(j, current, index + 1, now)
            else:
                current = current.moved_to(
                    PlanStatus.SUCCEEDED, at=now, lease_owner=None, lease_until=None
                )
                j.emit(E.PLAN_FINISHED, plan=current, data={"status": "succeeded"}, trusted=True)
                if guards is not None:
                    guards.on_finish(tx, j.emit, current)
        tx.save_plan(current)
        j.flush()
        return current

    def _late_result(self, tx: Any, current: PlanRecord, step: StepRecord, out: Outcome) -> None:
        """Record that an attempt we no longer own returned (its result is not applied).

        The event says what the step is on record (``recorded``): for an ``unknown`` step,
        what the late attempt returned is what its resolver needs. A success for a step on
        record as ``failed`` is escalated besides (``anomaly.detected``): the effect happened
        and nothing undoes it (the saga undoes succeeded steps only), and the plan may have
        finished, so no state of its own can flag it.
        """
        recorded = current.steps[step.index].status
        j = self._journal(tx)
        j.emit(
            E.STEP_LATE_RESULT,
            plan=current,
            step_id=step.step_id,
            data={
                "attempt": step.attempts,
                "owner": self.owner,
                "error": out.error,
                "result_hash": self.gw.hash_payload(
                    self.gw.catalog.get(step.action), {"r": out.result}
                ),
                "recorded": recorded.value,
            },
        )
        if out.error is None and recorded is StepStatus.FAILED:
            # NOTE(late success): the plan's record is not rewritten from a stale attempt
            # (fencing); a human checks the real system, through the anomaly escalation.
            reason = (
                f"step {step.step_id} ({step.action}) succeeded late, after it was recorded "
                "failed: its effect is not undone"
            )
            j.emit(
                E.ANOMALY_DETECTED,
                plan=current,
                step_id=step.step_id,
                data={
                    "agent_id": current.agent_id,
                    "reasons": [reason],
                    "summary": reason,
                    "severity": "high",
                },
            )
        tx.save_plan(current)
        j.flush()

    # ------------------------------------------------------------------ compensation

    def compensate(
        self,
        record: PlanRecord,
        *,
        reason: str,
        final: PlanStatus | None,
        requested_by: str | None = None,
    ) -> PlanRecord:
        """Undo succeeded steps in reverse order, durably (see ``Saga.compensate``)."""
        return self.saga.compensate(record, reason=reason, final=final, requested_by=requested_by)

    def continue_compensation(self, record: PlanRecord) -> PlanRecord:
        """Compensate the plan's remaining steps and finish it (see ``Saga.carry_on``)."""
        return self.saga.carry_on(record)


def _outcome(
    spec: ActionSpec, *, result: Any = None, error: BaseException | None = None, canary: Any = None
) -> Outcome:
    """The recorded outcome of a handler's call: its result made fit for the log, or its error.

    A failed call's outcome carries no canary record (as it always has: the step's error
    says what failed).
    """
    if error is None:
        return Outcome(result=bounded(jsonable(result)), canary=canary)
    if isinstance(error, RetryableError):
        return Outcome(error=err(error), retryable=True)
    if isinstance(error, (TimeoutError, ConnectionError)):
        return Outcome(error=err(error), retryable=spec.idempotent)
    return Outcome(error=err(error))
