"""Budgets for the guards: reserve, settle and release a plan's spend (docs/guards.md).

``GuardsBudgets`` is a mixin of ``proctor.app.guards.Guards`` holding the budget
bookkeeping its hooks share: ``policy_input`` asks ``_over_budget`` which budgets a plan
would exceed; ``admit`` (through ``_budgets``) and ``recheck`` reserve a plan's spend with
``_reserve`` and record it with ``_keep``; ``on_step`` settles a step's reservation at its
real cost with ``_settle`` (``on_finish`` releases what is left). It is separate because
it is one concern, the counters and reservation rows of budgets, that every hook touches
but none owns. It also defines ``Emit``, the type of the hooks' ``emit`` callable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from proctor.core.approvals import person_key
from proctor.core.catalog import ActionSpec
from proctor.core.decisions import Decision, Outcome
from proctor.core.events import EventType as E
from proctor.core.guards import GuardSettings, budget_refuses, period_bucket
from proctor.core.lifecycle import PlanRecord, StepRecord
from proctor.core.ports import Clock, Store, Transaction

__all__ = ["Emit", "GuardsBudgets", "spend"]

Emit = Callable[..., None]


def spend(amount: int) -> int:
    """What a step's amount (or reported cost) counts against a budget: never below 0.

    A negative amount (a refund, a credit, a made-up number) spends nothing; it must not
    lower the spend either, or one call of -100000 would let 100000 of payments through.
    """
    return amount if amount > 0 else 0


class GuardsBudgets:
    """Budget reservations of ``Guards``: over-budget checks, reserve, keep, settle, release."""

    settings: GuardSettings
    store: Store
    clock: Clock

    def _over_budget(self, plan: Any, specs: Sequence[ActionSpec]) -> list[dict[str, Any]]:
        """The budgets ``plan`` would exceed, read from the store now (not reserved).

        A budget with nothing left refuses a plan it covers even when the plan has no amount
        (``budget_refuses``); ``steps`` lists every step of the plan it covers.
        """
        amounts = [spend(spec.amount(s.params)) for s, spec in zip(plan.steps, specs, strict=True)]
        now = self.clock.now()
        agent, user = plan.actor.agent_id, person_key(plan.on_behalf_of)
        over = []
        for b in self.settings.budgets:
            bucket = period_bucket(now, b.period)
            portions: dict[str, tuple[int, list[str]]] = {}
            for st, amount in zip(plan.steps, amounts, strict=True):
                value = {"agent": agent, "user": user, "action": st.action, "global": "*"}[b.scope]
                if b.applies(value):
                    need, ids = portions.get(b.counter(value), (0, []))
                    portions[b.counter(value)] = (need + amount, [*ids, st.id])
            for counter, (need, ids) in portions.items():
                spent = self.store.counter_sum(counter, bucket)[1]
                if budget_refuses(spent, need, b.limit):
                    over.append(
                        {
                            "budget": counter,
                            "period": bucket,
                            "limit": b.limit,
                            "spent": spent,
                            "amount": need,
                            "on_exceed": b.on_exceed,
                            "steps": ids,
                        }
                    )
        return over

    def _budgets(
        self,
        tx: Transaction,
        emit: Emit,
        record: PlanRecord,
        amounts: list[int],
        decision: Decision,
        now: Any,
    ) -> Decision:
        if not self.settings.budgets:
            return decision
        entries, approve, deny = self._reserve(tx, emit, record, amounts, now)
        if deny is not None:
            return Decision.deny_all(
                [s.step_id for s in record.steps], deny, policy_version=decision.policy_version
            )
        for reason in approve:
            decision = decision.at_least(Outcome.APPROVE, reason)
        self._keep(tx, emit, record, entries, now)
        return decision

    def _reserve(
        self,
        tx: Transaction,
        emit: Emit,
        record: PlanRecord,
        amounts: list[int],
        now: Any,
        *,
        then: dict[str, str] | None = None,
    ) -> tuple[list[dict[str, Any]], list[str], str | None]:
        """Reserve the plan's spend under every budget that counts it.

        Returns the reservation entries, the reasons of budgets exceeded with ``approve``, and
        the reason of the first budget exceeded with ``deny`` (then nothing stays reserved).
        Every exceeded budget is a ``budget.exceeded`` event whose ``then`` says what follows:
        the budget's ``on_exceed``, or what ``then`` maps it to. A budget with nothing left
        is exceeded by any plan it covers, one with no amount too (``budget_refuses``).
        """
        entries: list[dict[str, Any]] = []
        approve: list[str] = []
        # Spend is kept in day buckets; a month budget sums its month's days (``YYYY-MM`` is
        # below every ``YYYY-MM-DD`` of the month, and above the month before). Budgets over
        # the same counter (alice's and everyone's; a daily and a monthly one) share one
        # reservation: this plan's spend is added once, and each checks it against its limit.
        day = period_bucket(now, "day")
        mine: dict[str, int] = {}  # counter → what this plan reserved on it
        per_budget = []
        amounts = [spend(a) for a in amounts]
        for b in self.settings.budgets:
            portions: dict[str, list[int]] = {}
            for s, a in zip(record.steps, amounts, strict=True):
                value = self._scope_value(b.scope, record, s)
                # A covered step with no amount joins with 0: it reserves nothing, but a
                # budget already spent refuses it (its tool may still report a cost).
                if b.applies(value):
                    portions.setdefault(b.counter(value), [0] * len(amounts))[s.index] += a
            per_budget.append((b, portions))
        # Read-check-bump under a lock per counter: plans of other agents (or replicas) that
        # count on the same counter wait, so together they never pass its limit. A counter
        # this plan only reads (no amount on it) needs no lock: it adds nothing to it.
        tx.lock_counters([c for _, portions in per_budget for c, p in portions.items() if any(p)])
        for b, portions in per_budget:
            bucket = period_bucket(now, b.period)
            for counter, portion in portions.items():
                spent = tx.counter_sum(counter, bucket)[1] - mine.get(counter, 0)
                need = sum(portion)
                if budget_refuses(spent, need, b.limit):
                    emit(
                        E.BUDGET_EXCEEDED,
                        plan=record,
                        data={
                            "budget": counter,
                            "period": bucket,
                            "limit": b.limit,
                            "spent": spent,
                            "amount": need,
                            "then": (then or {}).get(b.on_exceed, b.on_exceed),
                        },
                    )
                    reason = (
                        f"budget {counter} ({bucket}): {spent} spent + {need} > {b.limit}"
                        if need
                        else f"budget {counter} ({bucket}) is spent: {spent} of {b.limit}"
                    )
                    if b.on_exceed == "deny":
                        self._release(tx, entries)
                        return [], [], reason
                    approve.append(reason)
                if need and counter not in mine:
                    tx.bump(counter, day, count=0, amount=need)
                    entries.append({"counter": counter, "bucket": day, "steps": portion})
                    mine[counter] = need
        return entries, approve, None

    @staticmethod
    def _keep(
        tx: Transaction, emit: Emit, record: PlanRecord, entries: list[dict[str, Any]], now: Any
    ) -> None:
        """Record a plan's reservation (settled by ``on_step``, released by ``on_finish``)."""
        if not entries:
            return
        tx.put_state("reservation", record.plan_id, {"entries": entries}, at=now)
        emit(
            E.BUDGET_RESERVED,
            plan=record,
            data={
                "reservations": [
                    {"budget": e["counter"], "period": e["bucket"], "amount": sum(e["steps"])}
                    for e in entries
                ]
            },
        )

    @staticmethod
    def _scope_value(scope: str, record: PlanRecord, step: StepRecord) -> str:
        return {
            "agent": record.agent_id,
            "user": person_key(record.on_behalf_of),
            "action": step.action,
            "global": "*",
        }[scope]

    @staticmethod
    def _release(tx: Transaction, entries: list[dict[str, Any]]) -> None:
        for e in entries:
            tx.bump(e["counter"], e["bucket"], count=0, amount=-sum(e["steps"]))

    def _settle(
        self,
        tx: Transaction,
        emit: Emit,
        record: PlanRecord,
        step: StepRecord,
        cost: int,
        now: Any,
        *,
        ok: bool,
        reserved_any: bool,
    ) -> None:
        """Count a step's real cost under every budget that covers it (a failed step: 0).

        Each covering counter moves by ``cost - reserved``: a reservation settles at the real
        cost (a failed step releases it), and a step that reserved nothing there (an action
        with no amount whose tool reports ``{"cost": n}``, a plan decided before the budget)
        adds its cost all the same, so the next plan with an amount meets what was spent.
        ``cost`` is already clamped at 0 (``spend``).
        """
        res = tx.get_state("reservation", record.plan_id) if reserved_any else None
        entries = {e["counter"]: e for e in res["entries"]} if isinstance(res, dict) else {}
        covering = {
            b.counter(v)
            for b in self.settings.budgets
            if b.applies(v := self._scope_value(b.scope, record, step))
        }
        day = period_bucket(now, "day")
        settled = []
        touched = False
        for counter in sorted({*entries, *covering}):
            e = entries.get(counter)
            reserved = e["steps"][step.index] if e is not None else 0
            actual = cost if counter in covering else 0
            if not reserved and not actual:
                continue
            bucket = e["bucket"] if e is not None else day
            tx.bump(counter, bucket, count=0, amount=actual - reserved)
            if e is not None and reserved:
                e["steps"][step.index] = 0
                touched = True
            settled.append({"budget": counter, "reserved": reserved, "spent": actual})
            limit = self._limit_of(counter)
            spent = tx.counter_sum(counter, bucket)[1]
            if limit is not None and spent > limit:
                emit(
                    E.BUDGET_EXCEEDED,
                    plan=record,
                    step_id=step.step_id,
                    data={
                        "budget": counter,
                        "period": bucket,
                        "limit": limit,
                        "spent": spent,
                        "amount": actual,
                        "then": "recorded",
                    },
                )
        if touched:
            tx.put_state("reservation", record.plan_id, res, at=now)
        if not settled:
            return
        if ok:
            emit(E.BUDGET_SETTLED, plan=record, step_id=step.step_id, data={"settled": settled})
        else:
            released = [{"budget": x["budget"], "amount": x["reserved"]} for x in settled]
            emit(E.BUDGET_RELEASED, plan=record, step_id=step.step_id, data={"released": released})

    def _limit_of(self, counter: str) -> int | None:
        for b in self.settings.budgets:
            _, scope, who = counter.split(":", 2)
            if b.scope == scope and b.applies(who):
                return b.limit
        return None
