"""The gateway: submit → validate → assess → decide → simulate → route → execute.

Every transition is a store transaction that carries its audit events (``Journal``), so a
state change without its event, or an event without its state change, cannot happen. A
handler runs only *after* the transaction that records ``step.started`` has committed: if
the process dies inside the handler, the log shows the step was in flight.

Fail closed throughout: no policy, an engine error, a malformed policy answer or a failing
simulation that was required never lead to execution.

This module holds the pipeline (``submit`` up to routing, then the executor), ``recover``,
``get`` and the shared helpers (plan lookup, journal, per-plan locks). The human actions on
a routed plan (``confirm``, ``approve``, ``reject``, ``undo``, ``resolve``) and the timers
(``tick``) are ``Gateway``'s too, from its mixin in ``proctor.app.human_actions``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import nacl.exceptions
import nacl.signing

from proctor.app._outcomes import err as _err
from proctor.app._outcomes import jsonable as _jsonable
from proctor.app.auditlog import AuditLog
from proctor.app.executor import Executor
from proctor.app.human_actions import _MAX_ERROR, _NO_POLICY, HumanActions
from proctor.app.journal import Journal, keyed_payload_hash, payload_hash
from proctor.app.leases import owner_alive
from proctor.app.redaction import Redaction, redaction_for
from proctor.app.telemetry import Telemetry
from proctor.core.assessment import Assessment, Thresholds, assess, baseline
from proctor.core.canonical import digest, printable
from proctor.core.catalog import ActionSpec, Catalog
from proctor.core.decisions import Decision, Outcome, StepDecision
from proctor.core.events import EventType as E
from proctor.core.lifecycle import (
    PlanRecord,
    PlanStatus,
    StepRecord,
    StepStatus,
)
from proctor.core.masking import mask
from proctor.core.plans import (
    Limits,
    Plan,
    check_chosen_plan_id,
    idempotency_key,
    new_plan_id,
)
from proctor.core.ports import (
    Clock,
    EventListener,
    PolicyEngine,
    Signer,
    StepUp,
    Store,
    ToolCall,
    Tools,
)
from proctor.core.principals import plan_not_found
from proctor.errors import (
    ConflictError,
    InvalidRequestError,
    PlanIdReusedError,
    PolicyEngineError,
    ProctorError,
    SignatureError,
)

__all__ = ["Gateway", "GatewayOptions"]

# Results of actions over personal or health data are kept out of the append-only audit log
# (it can never be erased): the event keeps their hash; the result stays with the plan.
_UNLOGGED_RESULTS = frozenset({"pii", "health"})

# What a step's policy input takes from its action's catalog entry (``_step_input``): the
# facts ``Gateway._input_digest_now`` binds a decision to.
_CONFIG_STEP_KEYS = ("category", "amount", "reversible")


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayOptions:
    """Behaviour switches of the gateway.

    Attributes:
        thresholds: Pattern thresholds. Default 10 / 15.
        limits: Manifest size limits.
        sandbox: Run no handler at all, only simulations. Default False. New plans end
            ``simulated``; a plan decided before (waiting, queued, interrupted, succeeded)
            is left as it is: whatever would run a handler for it (a confirmation, an
            approval, a resolution, an undo, a claim, a rollback TTL) is refused with
            ``ConflictError`` or waits, until sandbox mode is off.
        confirm_ttl: How long a plan waits for its user's confirmation. Default 1 hour.
        approval_ttl: How long a plan waits for approvers. Default 24 hours.
        store_prompt: Keep the raw intent in audit events (its hash is always kept).
        agent_keys: Registered Ed25519 public keys by agent id; an agent with a key must
            sign its manifests.
        lease_ttl: How long a worker's claim on a running plan lasts without renewal; a dead
            worker's plans are taken over after it. Default 30 s.
        plan_deadline: No step starts or retries later than this after the plan started.
        queue_ttl: How long a plan a human cleared (confirmed, approved, a step resolved)
            may wait for a process that runs it (its runner, its actions) before it expires
            unstarted. Default 1 hour, as ``confirm_ttl``: the horizon of someone who said
            "now"; a worker or a proxy that runs the plan normally claims it within seconds.
        report_grace: How long past a handed-over call's timeout the outcome of a call a
            remote MCP proxy makes may take to be reported before the plan needs attention
            (its report-by, ``PlanRecord.report_by``). Default 60 s: the answer's way to the
            proxy, and the report's way back with its retries (three tries of up to the
            proxy's 10 s request timeout each).
        step_timeout: Seconds one attempt may run (an action's ``timeout`` overrides it).
        max_attempts: Attempts per step for retryable failures (and resumed idempotent steps).
        retry_backoff: First backoff; it doubles per attempt (full jitter), capped at
            ``retry_backoff_max``.
        worker_threads: Threads that resume plans in the background.
        runners: Runner names this process serves (actions with another ``runner`` wait for
            a process that serves it).
    """

    thresholds: Thresholds = field(default_factory=Thresholds)
    limits: Limits = field(default_factory=Limits)
    sandbox: bool = False
    confirm_ttl: timedelta = timedelta(hours=1)
    approval_ttl: timedelta = timedelta(hours=24)
    store_prompt: bool = False
    agent_keys: Mapping[str, bytes] = field(default_factory=dict)
    lease_ttl: timedelta = timedelta(seconds=30)
    plan_deadline: timedelta = timedelta(minutes=15)
    queue_ttl: timedelta = timedelta(hours=1)
    report_grace: timedelta = timedelta(seconds=60)
    step_timeout: float | None = 60.0
    max_attempts: int = 3
    retry_backoff: timedelta = timedelta(milliseconds=200)
    retry_backoff_max: timedelta = timedelta(seconds=5)
    worker_threads: int = 4
    runners: frozenset[str] = frozenset()


class Gateway(HumanActions):
    """The governed-action pipeline over a store, a policy engine, a signer and tools."""

    def __init__(
        self,
        *,
        store: Store,
        catalog: Catalog,
        policy: PolicyEngine | None,
        signer: Signer,
        clock: Clock,
        tools: Tools,
        options: GatewayOptions | None = None,
        step_up: StepUp | None = None,
        audit_log: AuditLog | None = None,
        listeners: Sequence[EventListener] = (),
        guards: Any = None,
        telemetry: Telemetry | None = None,
        payload_key: bytes | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.policy = policy
        self.signer = signer
        self.clock = clock
        self.tools = tools
        self.options = options or GatewayOptions()
        self.step_up = step_up
        self.audit_log = audit_log
        self.listeners: list[EventListener] = list(listeners)
        self.telemetry = telemetry or Telemetry()
        # Keys the payload hash of masked steps (``keyed_payload_hash``). Without a key of
        # the instance's (an in-memory one), a random one: such hashes then only compare
        # within this process, which is all an in-memory log has.
        self._payload_key = payload_key if payload_key is not None else os.urandom(32)
        self.guards = guards  # proctor.app.guards.Guards, when guards are configured
        if guards is not None:
            guards.bind(self)
        # Serialises the human actions and execution of one plan within this process; the
        # store's transactions protect against other processes.
        self._plan_locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()
        self.executor = Executor(self)

    # ------------------------------------------------------------------ submit

    def submit(
        self,
        raw: Any,
        *,
        sandbox: bool | None = None,
        traceparent: str | None = None,
        derived_id: bool = False,
        principal: str | None = None,
    ) -> PlanRecord:
        """Submit a manifest; return the plan as routed (and executed, for ``execute``).

        ``sandbox=True`` simulates this plan only; None or False follow the options (False
        does not lift the instance's sandbox mode). ``traceparent`` (W3C) joins the agent's
        trace: spans, and the audit events' ids. ``derived_id``: the caller derived the
        manifest's plan id itself under a reserved prefix (``DERIVED_PLAN_ID_PREFIXES``: the
        MCP proxies, the HTTP API for an ``Idempotency-Key``); any other plan id under one is
        refused. ``principal``: who submits, as authenticated (the HTTP API's caller),
        recorded as ``data.principal`` in the plan's ``plan.submitted`` or in the
        ``plan.rejected`` of this submission, since the manifest's ``actor.name`` and
        ``actor.type`` are whatever the agent wrote. None (the library) records none.

        Raises:
            InvalidRequestError: the manifest breaks a rule (the rejection is audited).
            PlanIdReusedError: the plan id exists with another digest (audited).
        """
        return self.submit_created(
            raw,
            sandbox=sandbox,
            traceparent=traceparent,
            derived_id=derived_id,
            principal=principal,
        )[0]

    def submit_created(
        self,
        raw: Any,
        *,
        sandbox: bool | None = None,
        traceparent: str | None = None,
        derived_id: bool = False,
        principal: str | None = None,
    ) -> tuple[PlanRecord, bool]:
        """``submit``, and whether this call created the plan.

        False: an earlier submission of the plan id (by this process or another) is the
        answer, as it stands.
        """
        with self.telemetry.plan("proctor.submit", traceparent):
            return self._submit(raw, sandbox, derived_id, principal)

    def _submit(
        self, raw: Any, sandbox: bool | None, derived_id: bool, principal: str | None
    ) -> tuple[PlanRecord, bool]:
        # A submission may ask for sandbox mode, never out of it: under the instance's
        # sandbox mode no handler runs at all (fail closed), whatever a caller passes.
        sandbox = self.options.sandbox or bool(sandbox)
        with self.telemetry.stage("validate"):
            try:
                plan = Plan.from_dict(raw, limits=self.options.limits)
                if not derived_id:
                    # Before the look-up of the id: a refusal tells nothing of whether a
                    # plan has it.
                    check_chosen_plan_id(plan.plan_id)
            except InvalidRequestError as exc:
                self._audit_rejection(raw, exc, principal=principal)
                raise
            if plan.plan_id is not None:
                existing: PlanRecord | None = self.store.get_plan(plan.plan_id)
                if existing is not None:
                    if existing.digest == plan.digest:
                        return existing, False  # idempotent resubmission: the first result
                    err = PlanIdReusedError(
                        f"plan id {plan.plan_id!r} was already used for a different manifest",
                        field="plan_id",
                        hint="Use a new plan_id for a changed plan.",
                    )
                    self._audit_rejection(raw, err, digest=plan.digest, principal=principal)
                    raise err
            try:
                specs = self._validate(plan)
            except InvalidRequestError as exc:
                self._audit_rejection(raw, exc, digest=plan.digest, principal=principal)
                raise
        try:
            record, ours = self._decide(plan, specs, sandbox=sandbox, principal=principal)
        except PlanIdReusedError as exc:  # another manifest took the id meanwhile
            self._audit_rejection(raw, exc, digest=plan.digest, principal=principal)
            raise
        if ours and record.status is PlanStatus.RUNNING:
            record = self.executor.run(record)
        return record, ours

    def _validate(self, plan: Plan) -> list[ActionSpec]:
        specs = []
        for i, step in enumerate(plan.steps):
            spec = self.catalog.require(step.action, field=f"steps[{i}].action")
            spec.validate_params(step.params, field_prefix=f"steps[{i}].params")
            specs.append(spec)
        self._check_signature(plan)
        return specs

    def _check_signature(self, plan: Plan) -> None:
        key = self.options.agent_keys.get(plan.actor.agent_id)
        if plan.signature is None:
            if key is not None:
                raise SignatureError(
                    f"agent {plan.actor.agent_id!r} has a registered key: its plans must be signed",
                    field="signature",
                )
            return
        if key is None:
            raise SignatureError(
                f"no public key is registered for agent {plan.actor.agent_id!r}",
                field="signature.key_id",
                hint="Register the agent's key under [agents.<agent_id>] in config.toml.",
            )
        try:
            sig = base64.b64decode(plan.signature.value, validate=True)
            nacl.signing.VerifyKey(key).verify(plan.signing_bytes(), sig)
        except (ValueError, nacl.exceptions.BadSignatureError) as exc:
            raise SignatureError(
                "the manifest signature does not verify", field="signature.value"
            ) from exc

    def _policy_input(
        self, plan: Plan, specs: Sequence[ActionSpec], base: Any, *, guards: bool = True
    ) -> dict[str, Any]:
        # Only what the policy needs, in the order it reads it: with rego-cpp every input
        # value costs 1-3 µs to build and every key lookup scans (docs/policy.md).
        inp: dict[str, Any] = {
            "steps": [
                _step_input(st.id, st.action, st.params, spec)
                for st, spec in zip(plan.steps, specs, strict=True)
            ],
            "baseline": base.as_dict(),
            "baseline_total": base.total,
            "context": self._policy_context(),
            "plan": {"agent_id": plan.actor.agent_id, "on_behalf_of": plan.on_behalf_of},
        }
        if guards and self.guards is not None:
            # Only what applies (kill switches, open breakers, autonomy, whitelist): an
            # empty object costs the policy nothing.
            applying = self.guards.policy_input(plan, specs)
            if applying:
                inp["guards"] = applying
        return inp

    def _policy_context(self) -> dict[str, Any]:
        """The gateway settings the policy reads (``input.context``)."""
        return {"thresholds": {"hybrid_max": self.options.thresholds.hybrid_max}}

    def _input_digest_now(self, steps: Sequence[tuple[str, Mapping[str, Any]]]) -> str | None:
        """Digest the configuration the policy decides a plan's steps from, as it is now.

        ``steps`` are ``(action, params)``. The digest covers what the gateway passes into
        the policy input from the catalog (each step's category, amount and reversibility;
        the baseline scores) and from its settings (``input.context``): the same helpers
        build that input, so the two cannot drift apart. It leaves out what the plan's own
        digest binds (actions, params, actor) and what changes from call to call (plan id,
        time, guard state: the guards are re-checked on their own). A plan stores it with
        its decision; a confirmation or approval recomputes it (``_recheck_inputs``).

        Returns:
            ``sha256:<hex>``, or None when an action is not in this process's catalog.
        """
        found = [self.catalog.get(action) for action, _ in steps]
        specs = [spec for spec in found if spec is not None]
        if len(specs) != len(found):
            return None
        return self._input_digest(steps, specs)

    def _input_digest(
        self, steps: Sequence[tuple[str, Mapping[str, Any]]], specs: Sequence[ActionSpec]
    ) -> str:
        base = baseline(spec.baselines for spec in specs)
        facts = [
            _step_input("", action, params, spec)
            for (action, params), spec in zip(steps, specs, strict=True)
        ]
        return digest(
            {
                "steps": [{k: f[k] for k in _CONFIG_STEP_KEYS} for f in facts],
                "baseline": base.as_dict(),
                "baseline_total": base.total,
                "context": self._policy_context(),
            }
        )

    def evaluate(
        self, plan: Plan, specs: Sequence[ActionSpec], *, guards: bool = True
    ) -> tuple[Decision, Assessment]:
        """Ask the policy about a validated plan; never raises for a policy failure.

        ``guards=False`` leaves the guards' state out of the policy input (a re-check of a
        waiting plan's configuration: the guards are re-checked on their own).
        """
        step_ids = [s.id for s in plan.steps]
        base = baseline(spec.baselines for spec in specs)
        # One read of the engine: a hot reload swaps ``self.policy`` at any moment, and the
        # decision must be recorded under the version of the bundle that made it.
        engine = self.policy
        if engine is None:
            # No policy loaded means nobody said yes: deny (fail closed).
            decision = Decision.deny_all(
                step_ids, "no policy is loaded: fail closed", policy_version=_NO_POLICY
            )
        else:
            version = engine.version
            try:
                raw = engine.evaluate(self._policy_input(plan, specs, base, guards=guards))
            except PolicyEngineError as exc:
                decision = Decision.deny_all(
                    step_ids,
                    f"policy engine error ({exc.message}): fail closed",
                    policy_version=version,
                )
            else:
                decision = Decision.from_policy_output(raw, step_ids, policy_version=version)
        assessment = assess(base, decision.adjustments, thresholds=self.options.thresholds)
        return decision, assessment

    def _decide(
        self, plan: Plan, specs: list[ActionSpec], *, sandbox: bool, principal: str | None
    ) -> tuple[PlanRecord, bool]:
        """Decide, route and record a new plan; return it and whether it is this call's.

        Not this call's: an identical submission of the same plan id committed first.
        """
        with self.telemetry.stage("decide"):
            decision, assessment = self.evaluate(plan, specs)
        now = self.clock.now()
        plan_id = plan.plan_id or new_plan_id("p", now)
        simulations: dict[str, Any] = {}
        if decision.outcome is not Outcome.DENY and (decision.dry_run or sandbox):
            with self.telemetry.stage("simulate"):
                decision, simulations = self._simulate(plan, specs, decision, plan_id, sandbox)
        record = self._route(plan, plan_id, decision, assessment, simulations, now, sandbox, specs)
        # A plan that runs now is acknowledged only after its final, durable commit. The
        # commit that starts its first step is an in-flight marker, not fsynced, unless that
        # step is not idempotent: then it must be on disk before the handler runs, or a power
        # loss would forget the plan and a retry of the same plan id would run it again.
        runs_now = record.status is PlanStatus.RUNNING
        durable = not runs_now or not specs[0].idempotent
        with self.telemetry.stage("route"), self.store.transaction(durable=durable) as tx:
            existing = tx.get_plan(plan_id) if plan.plan_id is not None else None
            if existing is not None:
                # Lost a race with an identical submission: the winner's plan, which the
                # winner runs (run here too, it would run twice).
                if existing.digest == plan.digest:
                    return existing, False
                raise PlanIdReusedError(
                    f"plan id {plan_id!r} was already used for a different manifest",
                    field="plan_id",
                    hint="Use a new plan_id for a changed plan.",
                )
            j = self._journal(tx)
            submitted: dict[str, Any] = {
                "steps": [self._masked_step(s, specs[s.index]) for s in record.steps]
            }
            if principal is not None:
                submitted["principal"] = principal  # as authenticated: see ``submit``
            j.emit(
                E.PLAN_SUBMITTED,
                plan=record,
                actions=[self._attempt(s, specs[s.index], "proposed") for s in record.steps],
                data=submitted,
            )
            if self.guards is not None and not sandbox:
                # Guards decide inside the transaction (budgets are reserved exactly); they
                # may escalate the outcome, never relax it.
                admitted = self.guards.admit(tx, j.emit, record, specs, decision)
                if admitted is not decision:
                    decision = admitted
                    record = self._route(
                        plan,
                        plan_id,
                        decision,
                        assessment,
                        simulations,
                        now,
                        sandbox,
                        specs,
                    )
            j.emit(
                E.POLICY_DECIDED,
                plan=record,
                data={"assessment": record.assessment, "decision": record.decision},
                trusted=True,
            )
            if simulations:
                j.emit(E.SIMULATION_COMPLETED, plan=record, data={"effects": simulations})
            j.emit(
                E.PLAN_ROUTED,
                plan=record,
                data={
                    "status": record.status.value,
                    "expires_at": record.expires_at.isoformat() if record.expires_at else None,
                    "sandbox": sandbox,
                },
                trusted=True,
            )
            if record.review:
                j.emit(
                    E.REVIEW_SAMPLED, plan=record, data={"rate": str(decision.review_sample_rate)}
                )
            if record.status is PlanStatus.RUNNING:
                record = self.executor.begin(j, record, now)
            tx.save_plan(record)
            j.flush()
        if runs_now and record.lease_owner is None and not durable:
            # Acknowledged without running here (escalated by a guard, or queued for another
            # runner): make the commit durable before the client hears of it.
            self._sync()
        return record, True

    def _sync(self) -> None:
        """Make every earlier commit durable (a durable commit fsyncs the log before it)."""
        with self.store.transaction() as tx:
            tx.put_meta("durable_at", self.clock.now().isoformat())

    def _route(
        self,
        plan: Plan,
        plan_id: str,
        decision: Decision,
        assessment: Assessment,
        simulations: Mapping[str, Any],
        now: datetime,
        sandbox: bool,
        specs: Sequence[ActionSpec],
    ) -> PlanRecord:
        """Build the plan record a decision routes to (status, deadline, steps, sampling).

        The stored decision of a plan that waits for a person carries ``input_digest``: the
        configuration it was made from (``Gateway._input_digest_now``), which a confirmation
        or approval checks again. Only a waiting plan is checked again, so only it pays for
        the digest (a plan that runs now or is denied does not: the hot path).
        """
        outcome = decision.outcome
        if outcome is Outcome.DENY:
            status = PlanStatus.DENIED
        elif sandbox:
            status = PlanStatus.SIMULATED
        elif outcome is Outcome.APPROVE and any(
            s.outcome is Outcome.CONFIRM for s in decision.steps
        ):
            # NOTE(approvals): a step its user must confirm keeps needing her, whatever the
            # other steps need: approvers answer for the plan, not for her consent. She
            # confirms first (she is there when the agent asks; approvers may take hours),
            # then the plan waits for the approvers (``HumanActions._confirm``).
            status = PlanStatus.AWAITING_CONFIRMATION
        else:
            status = {
                Outcome.EXECUTE: PlanStatus.RUNNING,
                Outcome.CONFIRM: PlanStatus.AWAITING_CONFIRMATION,
                Outcome.APPROVE: PlanStatus.AWAITING_APPROVAL,
            }[outcome]
        expires_at = None
        stored = decision.as_dict()
        if status is PlanStatus.AWAITING_CONFIRMATION:
            expires_at = now + self.options.confirm_ttl
        elif status is PlanStatus.AWAITING_APPROVAL:
            expires_at = now + self.options.approval_ttl
        if expires_at is not None:
            stored["input_digest"] = self._input_digest(
                [(st.action, st.params) for st in plan.steps], specs
            )
        steps = []
        for i, st in enumerate(plan.steps):
            step_status = StepStatus.PENDING
            if status is PlanStatus.DENIED:
                step_status = StepStatus.SKIPPED
            elif status is PlanStatus.SIMULATED:
                step_status = StepStatus.SIMULATED
            steps.append(
                StepRecord(
                    step_id=st.id,
                    index=i,
                    action=st.action,
                    params=st.params,
                    status=step_status,
                    outcome=decision.step(st.id).outcome.value,
                    simulation=simulations.get(st.id),
                )
            )
        review = (
            outcome is Outcome.EXECUTE
            and not sandbox
            and self.sampled_for_review(plan.digest, decision.review_sample_rate)
        )
        return PlanRecord(
            plan_id=plan_id,
            digest=plan.digest,
            status=status,
            agent_id=plan.actor.agent_id,
            on_behalf_of=plan.on_behalf_of,
            manifest=plan.manifest() | {"plan_id": plan_id},
            created_at=now,
            updated_at=now,
            assessment=assessment.as_dict(),
            decision=stored,
            policy_version=decision.policy_version,
            outcome=outcome.value,
            steps=tuple(steps),
            expires_at=expires_at,
            sandbox=sandbox,
            review=review,
        )

    def _simulate(
        self,
        plan: Plan,
        specs: list[ActionSpec],
        decision: Decision,
        plan_id: str,
        sandbox: bool,
    ) -> tuple[Decision, dict[str, Any]]:
        """Run the steps' simulations; a risk signal may escalate, never relax."""
        effects: dict[str, Any] = {}
        steps = []
        for st, spec in zip(plan.steps, specs, strict=True):
            sd = decision.step(st.id)
            if not (sd.dry_run or sandbox):
                steps.append(sd)
                continue
            if spec.simulate is None:
                effects[st.id] = {"error": "no simulator"}
                if sd.dry_run:
                    sd = _escalate(sd, "a dry-run is required but the action has no simulator")
                steps.append(sd)
                continue
            call = ToolCall(
                plan_id=plan_id,
                step_id=st.id,
                idempotency_key=idempotency_key(plan_id, st.id),
                on_behalf_of=plan.on_behalf_of,
                agent_id=plan.actor.agent_id,
            )
            try:
                predicted = _jsonable(self.tools.run(spec.simulate, st.params, call))
            except Exception as exc:  # noqa: BLE001 - any simulator failure escalates
                effects[st.id] = {"error": _err(exc)}
                sd = _escalate(sd, f"the dry-run failed: {_err(exc)}")
                steps.append(sd)
                continue
            effects[st.id] = predicted
            risk = predicted.get("risk") if isinstance(predicted, dict) else None
            if risk in ("high", "critical"):
                sd = _escalate(sd, f"the dry-run reported {risk} risk")
            steps.append(sd)
        escalated = Decision.combine(
            steps,
            policy_version=decision.policy_version,
            plan_reasons=decision.plan_reasons,
            plan_deny=decision.outcome is Outcome.DENY,
            adjustments=decision.adjustments,
            review_sample_rate=decision.review_sample_rate,
        )
        return escalated, effects

    def _skip_rest(self, record: PlanRecord, start: int) -> PlanRecord:
        for s in record.steps[start:]:
            if s.status is StepStatus.PENDING:
                record = record.with_step(s.moved_to(StepStatus.SKIPPED))
        return record

    # ------------------------------------------------------ recovery, operational events

    def recover(self, *, limit: int = 10_000) -> int:
        """Resume, on worker threads, every plan whose worker died or whose lease lapsed.

        Returns:
            How many plans were handed to a worker thread.
        """
        now = self.clock.now()
        # Leases still running are included: an owner process gone from this host frees its
        # plans at once instead of after its lease (``owner_alive``).
        found = self.store.claimable_plans(now + self.options.lease_ttl, limit=limit)
        count = 0
        for p in found:
            expired = p.lease_until is None or p.lease_until <= now
            if (expired or not owner_alive(p.lease_owner or "")) and self.executor.runnable_here(p):
                self.executor.submit_resume(p.plan_id)
                count += 1
        return count

    def record(self, type_: str, data: Mapping[str, Any], *, user_id: str | None = None) -> None:
        """Append an operational event that concerns no plan (an archive, a key rotation)."""
        with self.store.transaction() as tx:
            j = self._journal(tx)
            j.emit(type_, data=data, user_id=user_id, actor={"type": "system", "name": "proctor"})
            j.flush()

    # ------------------------------------------------------------------ helpers

    def get(self, plan_id: str) -> PlanRecord:
        """Return a plan.

        Raises:
            NotFoundError: if there is no such plan.
        """
        return self._get(plan_id)

    def _get(self, plan_id: str) -> PlanRecord:
        record = self.store.get_plan(plan_id)
        if record is None:
            raise plan_not_found(plan_id)  # the HTTP API's answer for a plan hidden from its caller
        return record  # type: ignore[no-any-return]

    def _fresh(self, tx: Any, record: PlanRecord) -> PlanRecord:
        current = tx.get_plan(record.plan_id)
        if current is None or current.digest != record.digest:
            raise ConflictError(f"plan {record.plan_id} changed underneath", field="plan_id")
        return current  # type: ignore[no-any-return]

    def _call(self, record: PlanRecord, step: StepRecord, result: Any = None) -> ToolCall:
        return ToolCall(
            plan_id=record.plan_id,
            step_id=step.step_id,
            idempotency_key=record.idempotency_key(step.step_id),
            on_behalf_of=record.on_behalf_of,
            agent_id=record.agent_id,
            result=result,
        )

    def _journal(self, tx: Any) -> Journal:
        return Journal(
            tx,
            self.signer,
            self.clock,
            store_prompt=self.options.store_prompt,
            log=self.audit_log,
            listeners=self.listeners,
            redact=self._redaction if self.catalog.has_masks else None,
            keyed=self.keyed_hash if self.catalog.has_masks else None,
        )

    def _redaction(self, record: PlanRecord) -> Redaction | None:
        """What the events of ``record`` must not show (None: no step masks anything)."""
        steps = []
        for s in record.steps:
            spec = self.catalog.get(s.action)
            if spec is not None and spec.mask:
                steps.append((s.step_id, s.params, spec.mask))
        return redaction_for(steps) if steps else None

    def _raw_redaction(self, raw: Any) -> Redaction | None:
        """The redaction of a manifest that may be malformed (a rejected one), or None."""
        steps = raw.get("steps") if isinstance(raw, dict) else None
        if not isinstance(steps, list):
            return None
        found = []
        for i, st in enumerate(steps):
            if not isinstance(st, dict) or not isinstance(st.get("params"), dict):
                continue
            action = st.get("action")
            spec = self.catalog.get(action) if isinstance(action, str) else None
            if spec is not None and spec.mask:
                found.append((str(st.get("id", i)), st["params"], spec.mask))
        return redaction_for(found) if found else None

    def keyed_hash(self, payload: Mapping[str, Any]) -> str:
        """``hmac-sha256:`` of ``payload``'s canonical form under the instance's payload key.

        For what the log keeps of a masked value (an MCP result masked by ``maskResult``): only
        the key's holder can test a guess.
        """
        return keyed_payload_hash(self._payload_key, payload)

    def sampled_for_review(self, digest: str, rate: float) -> bool:
        """Whether an auto-executed plan of ``digest`` falls in a review sample of ``rate``.

        Keyed with the instance's payload key (``keys/payload-hmac.key``): the agent that
        writes the manifest cannot predict it, and an auditor with the key can recompute it
        (the rate is the plan decision's ``review_sample_rate``; docs/guards.md).
        """
        return _sampled(self._payload_key, digest, rate)

    def hash_payload(self, spec: ActionSpec | None, payload: Mapping[str, Any]) -> str:
        """The ``payload_hash`` of a step's params (or ``result_hash`` of its result).

        Keyed (``hmac-sha256:``) when the action masks params, so the masked values cannot be
        recovered by hashing guesses; a plain ``sha256:`` otherwise (the params are in the log).
        """
        if spec is not None and spec.mask:
            return self.keyed_hash(payload)
        return payload_hash(payload)

    def _attempt(self, step: StepRecord, spec: ActionSpec | None, status: str) -> dict[str, Any]:
        return {
            "api": step.action,
            "payload_hash": self.hash_payload(spec, step.params),
            "status": status,
        }

    def _masked_step(self, step: StepRecord, spec: ActionSpec) -> dict[str, Any]:
        return {
            "id": step.step_id,
            "action": step.action,
            "params": mask(step.params, spec.mask),
            "summary": spec.describe(mask(step.params, spec.mask)),
        }

    def _audit_rejection(
        self,
        raw: Any,
        exc: ProctorError,
        digest: str | None = None,
        *,
        principal: str | None = None,
    ) -> None:
        plan_id = raw.get("plan_id") if isinstance(raw, dict) else None
        # A rejected manifest may hold masked params: then its hashes are keyed, and the
        # message (which may quote a param) is redacted, as for an accepted plan's events.
        redaction = self._raw_redaction(raw) if self.catalog.has_masks else None
        try:
            if redaction is None:
                body_hash = payload_hash({"raw": raw})
            else:
                body_hash = self.keyed_hash({"raw": raw})
                if digest is not None:
                    digest = self.keyed_hash({"digest": digest})
        except ProctorError:
            body_hash = None
        data = {
            "plan_id": plan_id if _short_text(plan_id) else None,
            "digest": digest,
            "payload_hash": body_hash,
            "code": exc.code,
            # Either may quote the bad input, a lone surrogate included, which has
            # no UTF-8 form: escaped, the rejection is still recorded.
            "field": printable(exc.field) if exc.field is not None else None,
            "message": printable(exc.message[:_MAX_ERROR]),
        }
        if principal is not None:
            # Who sent it, as authenticated: the manifest's actor is the sender's own words.
            data["principal"] = principal
        if redaction is not None:
            data = redaction.apply(data, None)
        with self.store.transaction() as tx:
            j = self._journal(tx)
            actor = raw.get("actor") if isinstance(raw, dict) else None
            j.emit(
                E.PLAN_REJECTED,
                actor=actor if isinstance(actor, dict) and _small(actor) else None,
                data=data,
            )
            j.flush()

    def _lock_for(self, plan_id: str) -> threading.RLock:
        # Re-entrant: a failing run compensates, and compensation takes the same lock.
        with self._locks_guard:
            lock = self._plan_locks.get(plan_id)
            if lock is None:
                if len(self._plan_locks) > 10_000:
                    self._plan_locks.clear()  # bounded: locks are cheap to recreate
                lock = self._plan_locks[plan_id] = threading.RLock()
            return lock


# What the review sample's HMAC is taken over, before the plan digest. Not JSON: the same
# key's HMACs of canonical JSON objects (masked params, which an agent chooses) are written to
# the log, and none of them can be a sampling value.
_SAMPLE_DOMAIN = b"proctor review sample\n"


def _step_input(step_id: str, action: str, params: Any, spec: ActionSpec) -> dict[str, Any]:
    """One step of the policy input (``input.steps[i]``), in the order the policy reads it."""
    return {
        "id": step_id,
        "category": spec.category,
        "amount": spec.amount(params),
        "reversible": spec.reversible,
        "params": params,
        "action": action,
    }


def _sampled(key: bytes, digest: str, rate: float) -> bool:
    """Deterministic, keyed sampling: is the plan of ``digest`` in the review sample?

    The first 32 bits (big-endian) of HMAC-SHA256(key, ``_SAMPLE_DOMAIN`` + digest), as a
    fraction of 2**32, below ``rate``. Keyed with the instance's secret, so an agent, which
    controls its manifest and so its digest, cannot tell which of its plans would be
    sampled; deterministic, so replicas sharing the key agree and an auditor holding it can
    recompute which plans had to be reviewed.
    """
    if rate <= 0:
        return False
    mac = hmac.new(key, _SAMPLE_DOMAIN + digest.encode(), hashlib.sha256).digest()
    return int.from_bytes(mac[:4], "big") / 2**32 < rate


def _escalate(sd: StepDecision, reason: str) -> StepDecision:
    if sd.outcome.severity >= Outcome.APPROVE.severity:
        return dataclasses.replace(sd, reasons=(*sd.reasons, reason))
    return dataclasses.replace(
        sd,
        outcome=Outcome.APPROVE,
        approvals=max(1, sd.approvals),
        approver_roles=sd.approver_roles or ("supervisor",),
        reasons=(*sd.reasons, reason + ": escalated to approval"),
    )


def _small(obj: Mapping[str, Any]) -> bool:
    return len(obj) <= 4 and all(_short_text(k) and _short_text(v) for k, v in obj.items())


def _short_text(value: Any) -> bool:
    """A string under 200 characters that has a UTF-8 form (no lone surrogate)."""
    if not isinstance(value, str) or len(value) >= 200:
        return False
    return printable(value) == value
