"""Guards around routing and execution, kept in the store (docs/guards.md).

The gateway calls, for every plan (``emit`` is the transaction's ``Journal.emit``):

- ``policy_input(plan, specs) -> dict`` — ``input.guards`` for the policy, read outside any
  transaction: kill switches, breakers (as the next call would find them), autonomy and
  whitelists from a per-process snapshot at most ``SNAPSHOT_TTL`` old (refreshed at once when
  this process changes them, so another replica's change shows within ``SNAPSHOT_TTL``),
  budgets fresh from the store when configured; empty when no guard applies (~1 µs);
- ``admit(tx, emit, record, specs, decision) -> Decision`` — inside the decide transaction,
  exactly: kill switches and whitelists deny, rate limits deny, budgets reserve spend (or
  route to approval or deny), open breakers turn ``execute`` into ``approve`` (half-open ones
  let their trials through), autonomy settings turn ``execute`` into ``confirm``, anomalies
  raise an escalation, and ``[guards] review_sample_rate`` may raise the decision's review
  sampling rate; returns the decision, which is only ever escalated;
- ``recheck(tx, emit, record) -> str | None`` — right before a confirmed or approved plan
  runs: a kill switch or the whitelist stops any plan; an open breaker stops a plan that was
  only confirmed (an approved one runs: an approver decided); a plan holding no reservation
  reserves now, and a budget it would exceed stops it (unless approved and the budget says
  ``approve``); the reason, or None to go;
- ``stopped(tx, emit, record) -> str | None`` — right before a step starts that no human
  cleared at that moment (a queued plan claimed by its runner, an interrupted step run again
  after a takeover, the step after a resolved one): a kill switch or the whitelist; the
  reason, or None to go;
- ``on_step(tx, emit, record, step, ok=)`` — after every executed step: count the step's
  cost under every budget covering it, reserved or not (the tool may report
  ``{"cost": n}``; negative costs count 0; a failed step releases), feed the
  breakers' windows (errors, calls, cost spikes), which may open a breaker;
- ``on_finish(tx, emit, record)`` — when a plan ends: release unsettled reservations, count
  undone and compensated plans as rollbacks, count accepted and declined proposals for
  progressive autonomy (and suggest a promotion).

Every state change is written through the caller's transaction with its audit event.
Administrative operations (``kill``, ``unkill``, ``open_breaker``, ``reset_breaker``,
``set_whitelist``, ``set_autonomy``, ``answer_promotion``, ``mark_review``, ``complain``) run
in their own transaction, also with their event; ``status``, ``suggestions`` and
``review_queue`` only read.

This module holds ``Guards`` with the hooks above (policy input, admission, execution) and
their kill switch, whitelist, rate limit, breaker, autonomy and anomaly logic. ``Guards``
inherits the budget bookkeeping the hooks share (reserve, keep, settle, release) from
``proctor.app.guards_budgets.GuardsBudgets`` and the administrative operations from
``proctor.app.guards_admin.GuardsAdmin``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from proctor.app.guards_admin import GuardsAdmin
from proctor.app.guards_budgets import Emit, GuardsBudgets, spend
from proctor.core.approvals import person_key
from proctor.core.catalog import ActionSpec, Catalog
from proctor.core.decisions import Decision, Outcome
from proctor.core.events import EventType as E
from proctor.core.guards import (
    AutonomyLevel,
    BreakerState,
    GuardSettings,
    agent_key,
    agent_names,
    anomalies,
    autonomy_outcome,
    breaker_after,
    breaker_before,
    breaker_counters,
    breaker_view,
    kill_keys,
    minute,
    next_level,
    outside_whitelist,
    promotion_due,
    user_action_keys,
    window_start,
)
from proctor.core.lifecycle import PlanRecord, PlanStatus, StepRecord, StepStatus
from proctor.core.ports import Clock, Store, Transaction
from proctor.errors import ProctorError

if TYPE_CHECKING:
    from proctor.app.gateway import Gateway

__all__ = ["SNAPSHOT_TTL", "Guards"]

SNAPSHOT_TTL = 0.5  # seconds: how stale the policy's view of guard state may be
_KINDS = ("kill", "breaker", "autonomy", "whitelist")
_RAN = frozenset(
    {PlanStatus.SUCCEEDED, PlanStatus.FAILED, PlanStatus.COMPENSATED, PlanStatus.UNDONE}
)
_HUMAN_DECIDED = frozenset({Outcome.APPROVE.value, Outcome.CONFIRM.value})


def _outside(lists: Sequence[Any], actions: Sequence[str]) -> list[str]:
    """The actions of a plan outside any of its agent's whitelists (stored values).

    An agent has one whitelist, but rows of earlier versions may hold another under another
    spelling of its name (``_scan``): each restricts it, so an action must be on all of them.
    """
    if len(lists) == 1:
        return outside_whitelist(lists[0], actions)
    out: dict[str, None] = {}
    for value in lists:
        out.update(dict.fromkeys(outside_whitelist(value, actions)))
    return list(out)


def _room_in(tx: Transaction, name: str, room: int, per_seconds: int, now: datetime) -> int:
    """Seconds until counter ``name`` holds at most ``room`` calls in its window (at least 1).

    The window counts minute buckets from the one holding ``now - per_seconds``
    (``window_start``), so the calls of bucket ``B`` stop counting at ``B + 60 s +
    per_seconds``. A binary search over the buckets finds the first one whose expiry leaves
    enough room (a sum over the later buckets shrinks as the start moves on); it runs only
    on a denial, at most about log2(per_seconds / 60) reads.
    """
    first = (now - timedelta(seconds=per_seconds)).replace(second=0, microsecond=0)
    lo, hi = 1, (now.replace(second=0, microsecond=0) - first) // timedelta(minutes=1) + 1
    while lo < hi:  # every bucket expired (k = hi) always leaves room: room >= 0
        k = (lo + hi) // 2
        if tx.counter_sum(name, minute(first + timedelta(minutes=k)))[0] <= room:
            hi = k
        else:
            lo = k + 1
    free_at = first + timedelta(minutes=lo, seconds=per_seconds)
    return max(1, math.ceil((free_at - now).total_seconds()))


class Guards(GuardsBudgets, GuardsAdmin):
    """Rate limits, budgets, breakers, kill switches, whitelists, anomalies and autonomy."""

    def __init__(
        self, settings: GuardSettings, *, store: Store, clock: Clock, catalog: Catalog
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.catalog = catalog
        self._gw: Gateway | None = None
        self._snap: tuple[float, dict[str, dict[str, Any]]] = (-1e9, {})
        # Agents escalated recently, by monotonic time until which they are not re-checked
        # here (the store's ``anomaly`` state deduplicates across replicas as well).
        self._escalated: dict[str, float] = {}
        self._lock = threading.Lock()
        # Agent names of kill-switch and whitelist rows stored by earlier versions under
        # another spelling than their key (``agent:OPS-BOT``), by key (``agent_names``).
        # Empty almost always, and then it costs a plan one truth test.
        self._aliases: dict[str, tuple[str, ...]] = {}

    def bind(self, gateway: Gateway) -> None:
        """Attach to the gateway that calls these hooks (for the admin operations).

        Also looks for rows of earlier versions stored under a name that is not an agent's
        key (``_scan``): the hooks read state inside transactions by exact key, and a worker
        process never builds the policy's snapshot, which rescans them. Earlier versions
        stored a name as typed, and this one never does, so the rows present now are all
        there will be once every process runs this version.
        """
        self._gw = gateway
        # A store that cannot be read yet (one opened to inspect its schema) holds no plan
        # this process could run; the policy's snapshot scans again when it can.
        with contextlib.suppress(ProctorError):
            self._scan(self.store.list_state("kill"), self.store.list_state("whitelist"))

    def _scan(self, kill: dict[str, Any], whitelist: dict[str, Any]) -> None:
        """Note the names of agent kill switches and whitelists that are not an agent key.

        Rows of earlier versions, stored as typed (``agent:OPS-BOT``): ``agent_names`` adds
        them to the agent's names, so that they stop it however its plans spell its id.
        """
        found: dict[str, set[str]] = {}
        names = [k[6:] for k in kill if k.startswith("agent:")] + list(whitelist)
        for name in names:
            key = agent_key(name)
            if key != name:
                found.setdefault(key, set()).add(name)
        self._aliases = {k: tuple(sorted(v)) for k, v in found.items()}

    def _agent_names(self, agent: str) -> tuple[str, ...]:
        return agent_names(agent, self._aliases)

    def hidden(self, agent: str, actions: Iterable[str]) -> set[str]:
        """Of ``actions``, those ``agent`` may not use at all now: for the MCP tool lists.

        A kill switch covering the agent (global, or the agent under any of its names) hides
        every action; an action's own switch hides it; so does the agent's whitelist (every
        one stored for it, ``_outside``). Read fresh, outside any transaction: a listing only
        hides, and ``admit`` decides each call exactly.
        """
        wanted = set(actions)
        kill = self.store.list_state("kill")
        whitelist = self.store.list_state("whitelist")
        self._scan(kill, whitelist)
        names = self._agent_names(agent)
        if "global" in kill or any(f"agent:{n}" in kill for n in names):
            return wanted
        out = {a for a in wanted if f"action:{a}" in kill}
        lists = [whitelist[n] for n in names if n in whitelist]
        if lists:
            out.update(_outside(lists, sorted(wanted)))
        return out

    # ------------------------------------------------------------------ policy input

    def _snapshot(self) -> dict[str, dict[str, Any]]:
        at, snap = self._snap
        now = time.monotonic()
        if now - at > SNAPSHOT_TTL:
            snap = {kind: self.store.list_state(kind) for kind in _KINDS}
            self._scan(snap["kill"], snap["whitelist"])
            with self._lock:
                self._snap = (now, snap)
        return snap

    def _invalidate(self) -> None:
        with self._lock:
            self._snap = (-1e9, {})

    def policy_input(self, plan: Any, specs: Sequence[ActionSpec]) -> dict[str, Any]:
        """``input.guards``: what applies to this plan (an empty object when nothing does).

        Members, each present only when it applies: ``kill`` (engaged switches covering the
        plan), ``whitelisted`` (when the agent has a whitelist: whether it covers the plan),
        ``breakers`` (``{"agent:A" | "action:X": "open" | "half_open"}``, as the next call
        would find them), ``autonomy`` (``{step_id: {"level", "below"?}}``) and
        ``over_budget`` (budgets this plan would exceed: ``budget``, ``period``, ``limit``,
        ``spent``, ``amount``, ``on_exceed``, ``steps``).

        Kill switches, breakers, autonomy and whitelists come from a per-process snapshot at
        most ``SNAPSHOT_TTL`` old (refreshed at once when this process changes them); budgets
        are read fresh when budgets are configured (a plan with no amount is over a budget
        covering it that has nothing left).
        ``admit`` enforces all of them exactly, so a stale view only ever costs a reason.
        """
        snap = self._snapshot()
        agent, user = plan.actor.agent_id, plan.on_behalf_of
        actions = [s.action for s in plan.steps]
        out: dict[str, Any] = {}
        kill = snap["kill"]
        if kill:
            kills = [k for k in kill_keys(agent, actions, self._aliases) if k in kill]
            if kills:
                out["kill"] = kills
        breaker = snap["breaker"]
        if breaker:
            now = self.clock.now()
            views = {}
            for k in self._breaker_keys(agent, actions):
                if k in breaker:
                    view = breaker_view(
                        BreakerState.from_value(breaker[k]), now, self.settings.breaker
                    )
                    if view != "closed":
                        views[k] = view
            if views:
                out["breakers"] = views
        autonomy = snap["autonomy"]
        if autonomy:
            levels = {}
            for st in plan.steps:
                v = next(
                    (autonomy[k] for k in user_action_keys(user, st.action) if k in autonomy), None
                )
                if isinstance(v, dict):
                    levels[st.id] = {"level": v.get("level")}
                    if v.get("below") is not None:
                        levels[st.id]["below"] = v["below"]
            if levels:
                out["autonomy"] = levels
        whitelist = snap["whitelist"]
        if whitelist:
            lists = [whitelist[n] for n in self._agent_names(agent) if n in whitelist]
            if lists:
                out["whitelisted"] = not _outside(lists, actions)
        if self.settings.budgets:
            over = self._over_budget(plan, specs)
            if over:
                out["over_budget"] = over
        return out

    # ------------------------------------------------------------------ admission

    def admit(
        self,
        tx: Transaction,
        emit: Emit,
        record: PlanRecord,
        specs: Sequence[ActionSpec],
        decision: Decision,
    ) -> Decision:
        """Apply the guards inside the decide transaction; never relaxes ``decision``."""
        now = self.clock.now()
        agent, user = record.agent_id, record.on_behalf_of
        actions = [s.action for s in record.steps]
        step_ids = [s.step_id for s in record.steps]
        names = self._agent_names(agent)
        # One read for every state row that could apply (most plans find none).
        breakers = self._breaker_keys(agent, actions)
        stops = self._stop_keys(names, actions)
        state = tx.get_states(
            [
                *stops,
                *(("breaker", k) for k in breakers),
                *(
                    ("autonomy", k)
                    for a in dict.fromkeys(actions)
                    for k in user_action_keys(user, a)
                ),
            ]
        )
        deny = self._hard_stop(emit, record, stops, actions, state, then="deny")
        if deny is not None:
            # A whitelist denial counts towards repeated denials; a kill switch's does not:
            # an operator stopped everything it covers, and a global one would otherwise make
            # every agent still submitting an "anomaly" (docs/guards.md).
            if not any(k in state for k in stops if k[0] == "kill"):
                per_minute = tx.bump(f"activity:agent:{names[0]}", minute(now))[0]
                self._denied(tx, emit, record, now, per_minute)
            return Decision.deny_all(step_ids, deny, policy_version=decision.policy_version)
        per_minute = tx.bump(f"activity:agent:{names[0]}", minute(now))[0]
        if decision.outcome is Outcome.DENY:
            self._denied(tx, emit, record, now, per_minute)
            return decision
        limited = self._rate_limit(tx, emit, record, agent, user, actions, now)
        if limited is not None:
            self._denied(tx, emit, record, now, per_minute)
            return Decision.deny_all(step_ids, limited, policy_version=decision.policy_version)
        amounts = [spec.amount(s.params) for s, spec in zip(record.steps, specs, strict=True)]
        cost = sum(spend(a) for a in amounts)
        self._anomaly(tx, emit, record, cost, now, per_minute=per_minute, denied=False)
        decision = self._budgets(tx, emit, record, amounts, decision, now)
        if decision.outcome is Outcome.DENY:
            self._denied(tx, emit, record, now, per_minute)
            return decision
        decision = self._breakers(tx, emit, record, breakers, state, decision, now)
        decision = self._autonomy(record, amounts, state, decision)
        floor = self.settings.review_sample_rate
        if floor > decision.review_sample_rate and decision.outcome is Outcome.EXECUTE:
            # More review is stricter, never laxer: the configured floor may raise the rate.
            decision = dataclasses.replace(decision, review_sample_rate=floor)
        return decision

    @staticmethod
    def _stop_keys(names: Sequence[str], actions: list[str]) -> list[tuple[str, str]]:
        """The state rows that stop a plan: kill switches, then the agent's whitelists.

        The switches are the global one, the agent's under each of its ``names``
        (``agent_names``) and each action's.
        """
        return (
            [("kill", "global"), *(("kill", f"agent:{n}") for n in names)]
            + [("kill", f"action:{a}") for a in dict.fromkeys(actions)]
            + [("whitelist", n) for n in names]
        )

    @staticmethod
    def _breaker_keys(agent: str, actions: Sequence[str]) -> list[str]:
        """The breakers covering a plan: its agent's, then each action's.

        The agent's as its plans spell it (the breaker its calls feed) and, when that is not
        its key, under its key too: a breaker forced open by an admin is stored under the
        key, and holds the agent however it spells its id.
        """
        key = agent_key(agent)
        mine = [f"agent:{agent}"] if key == agent else [f"agent:{agent}", f"agent:{key}"]
        return mine + list(dict.fromkeys(f"action:{a}" for a in actions))

    def _hard_stop(
        self,
        emit: Emit,
        record: PlanRecord,
        stops: list[tuple[str, str]],
        actions: list[str],
        state: dict[tuple[str, str], Any],
        *,
        then: str,
    ) -> str | None:
        # ``then`` says what follows, as budget.exceeded's does: "deny" when a plan is being
        # decided (it is denied), "wait" when a cleared or queued plan is held (it keeps
        # waiting and may run after the release). A held plan records an event for each
        # refused attempt (a person tried); the metrics count only the denials.
        lists = []
        for kind, key in stops:
            if kind == "whitelist":
                if (kind, key) in state:
                    lists.append(state[(kind, key)])
                continue
            engaged = state.get((kind, key))
            if engaged is not None:
                why = engaged.get("reason") if isinstance(engaged, dict) else None
                reason = f"kill switch {key} is engaged: {why or 'no reason'}"
                data = {"switch": key, "then": then}
                emit(E.GUARD_KILLED, plan=record, data=data, trusted=True)
                return reason
        outside = _outside(lists, actions)
        if outside:
            emit(E.GUARD_WHITELIST_DENIED, plan=record, data={"actions": outside, "then": then})
            return f"agent {record.agent_id!r} may not use {', '.join(sorted(outside))}"
        return None

    def _rate_limit(
        self,
        tx: Transaction,
        emit: Emit,
        record: PlanRecord,
        agent: str,
        user: str,
        actions: list[str],
        now: Any,
    ) -> str | None:
        wanted: list[tuple[str, int]] = []
        limits = []
        who = person_key(user)  # one counter per person, however the name is spelt
        values = {"agent": Counter([agent]), "user": Counter([who]), "action": Counter(actions)}
        for rl in self.settings.rate_limits:
            for value, n in values[rl.scope].items():
                if rl.applies(value):
                    limits.append((rl, value, n, f"rate:{rl.scope}:{value}"))
        if not limits:
            return None
        # Read-check-bump under a lock per counter (plans of other agents count on a user's
        # or an action's counter too); taken before any budget's, in admit as everywhere.
        tx.lock_counters([name for *_, name in limits])
        for rl, value, n, name in limits:
            used = tx.counter_sum(name, window_start(now, rl.per_seconds))[0]
            if used + n > rl.limit:
                # The decision is kept per plan id (a retry of this one gets this denial
                # again), so the reason says when to try again and that it takes a new id;
                # the event says when as a number (``retry_after``, seconds), or null when
                # waiting never helps (the plan alone exceeds the limit).
                wait: int | None = None
                if n > rl.limit:
                    when = f"this plan alone needs {n}: split it"
                else:
                    wait = _room_in(tx, name, rl.limit - n, rl.per_seconds, now)
                    when = f"room again in {wait} s; retry with a new plan_id"
                emit(
                    E.GUARD_RATE_LIMITED,
                    plan=record,
                    data={
                        "scope": rl.scope,
                        "key": value,
                        "limit": rl.limit,
                        "per_seconds": rl.per_seconds,
                        "used": used,
                        "retry_after": wait,
                    },
                )
                return (
                    f"rate limit: {rl.scope} {value!r} used {used} of {rl.limit} "
                    f"per {rl.per_seconds} s ({when})"
                )
            wanted.append((name, n))
        for name, n in wanted:
            tx.bump(name, minute(now), count=n)
        return None

    def _breakers(
        self,
        tx: Transaction,
        emit: Emit,
        record: PlanRecord,
        keys: list[str],
        state: dict[tuple[str, str], Any],
        decision: Decision,
        now: Any,
    ) -> Decision:
        for key in keys:
            if ("breaker", key) not in state or decision.outcome is not Outcome.EXECUTE:
                continue
            # Locked re-read: half-open trials are counted exactly across replicas.
            before = BreakerState.from_value(tx.get_state("breaker", key))
            new, agentic = breaker_before(before, now, self.settings.breaker)
            self._store_breaker(tx, emit, record, key, before, new, now)
            if not agentic:
                steps = (
                    None
                    if key.startswith("agent:")
                    else [s.step_id for s in record.steps if f"action:{s.action}" == key]
                )
                decision = decision.at_least(
                    Outcome.APPROVE, f"circuit breaker {key} is {new.state}: {new.reason}", steps
                )
        return decision

    def _autonomy(
        self,
        record: PlanRecord,
        amounts: list[int],
        state: dict[tuple[str, str], Any],
        decision: Decision,
    ) -> Decision:
        for s, amount in zip(record.steps, amounts, strict=True):
            setting = next(
                (
                    state[("autonomy", k)]
                    for k in user_action_keys(record.on_behalf_of, s.action)
                    if ("autonomy", k) in state
                ),
                None,
            )
            if not isinstance(setting, dict):
                continue
            level = AutonomyLevel(setting["level"])
            if autonomy_outcome(level, setting.get("below"), amount) == "confirm":
                below = setting.get("below")
                decision = decision.at_least(
                    Outcome.CONFIRM,
                    f"{record.on_behalf_of}'s autonomy for {s.action} is {level.value}"
                    + (f" below {below}" if below is not None else ""),
                    [s.step_id],
                )
        return decision

    def _denied(
        self, tx: Transaction, emit: Emit, record: PlanRecord, now: Any, per_minute: int
    ) -> None:
        """Count a denial (policy, whitelist, rate limit, budget) and check for an anomaly."""
        tx.bump(f"denials:agent:{agent_key(record.agent_id)}", minute(now))
        self._anomaly(tx, emit, record, 0, now, per_minute=per_minute, denied=True)

    def _anomaly(
        self,
        tx: Transaction,
        emit: Emit,
        record: PlanRecord,
        cost: int,
        now: Any,
        *,
        per_minute: int,
        denied: bool,
    ) -> None:
        a = self.settings.anomaly
        # Counted per agent_key: an agent in process cannot spread its activity (or its
        # denials) over spellings of its id to stay under the anomaly thresholds.
        agent = agent_key(record.agent_id)
        if cost:
            tx.bump(f"activity:agent:{agent}", minute(now), count=0, amount=cost)
        # Most plans can be no anomaly at all: skip the window reads for them.
        if per_minute < a.min_rate and not denied and not cost:
            return
        if self._escalated.get(agent, 0.0) > time.monotonic():
            return
        hour, hour_cost = tx.counter_sum(f"activity:agent:{agent}", window_start(now, 3600))
        denials = 0
        if denied:
            denials = tx.counter_sum(f"denials:agent:{agent}", window_start(now, 600))[0]
        found = anomalies(
            last_minute=per_minute,
            last_hour=hour,
            denials=denials,
            plan_cost=cost,
            hour_cost=hour_cost - cost,
            hour_plans=max(hour - 1, 0),
            settings=a,
        )
        if not found:
            return
        # One escalation per agent per ten minutes, not one per plan.
        last = tx.get_state("anomaly", agent)
        if len(self._escalated) > 10_000:
            self._escalated.clear()  # bounded: it is only a shortcut
        self._escalated[agent] = time.monotonic() + 60
        if isinstance(last, dict) and last.get("bucket", "") >= window_start(now, 600):
            return
        tx.put_state("anomaly", agent, {"bucket": minute(now), "reasons": found}, at=now)
        emit(
            E.ANOMALY_DETECTED,
            plan=record,
            data={
                "agent_id": record.agent_id,
                "reasons": found,
                "summary": f"agent {record.agent_id}: " + "; ".join(found),
                "severity": "high",
            },
        )

    # ------------------------------------------------------------------ execution

    def recheck(self, tx: Transaction, emit: Emit, record: PlanRecord) -> str | None:
        """Right before a confirmed or approved plan runs: why it may not run now, or None.

        - A kill switch covering the plan, or the agent's whitelist, stops any plan.
        - A plan its user only confirmed (outcome ``confirm``) also waits while a breaker
          covering it is open; a half-open one lets it through as one of its trial calls. An
          approved plan is not held by a breaker: a human approver decided.
        - Budgets: a plan reserved its spend when it was decided, and that reservation holds.
          A plan with an amount but no reservation (decided before the budget existed)
          reserves now; a budget it would exceed with ``deny`` stops it, and one with
          ``approve`` stops a plan nobody approved. A plan with no amount meets a budget
          covering it that has nothing left the same way.

        The gateway keeps a stopped plan waiting and tells the caller why.
        """
        agent = record.agent_id
        actions = [s.action for s in record.steps]
        confirmed = record.outcome != "approve"
        breakers = self._breaker_keys(agent, actions)
        stops = self._stop_keys(self._agent_names(agent), actions)
        wanted = list(stops)
        if confirmed:
            wanted += [("breaker", k) for k in breakers]
        if self.settings.budgets:
            wanted.append(("reservation", record.plan_id))
        state = tx.get_states(wanted)
        stop = self._hard_stop(emit, record, stops, actions, state, then="wait")
        if stop is not None:
            return stop
        now = self.clock.now()
        if confirmed:
            for key in breakers:
                if ("breaker", key) not in state:
                    continue
                before = BreakerState.from_value(tx.get_state("breaker", key))
                new, agentic = breaker_before(before, now, self.settings.breaker)
                self._store_breaker(tx, emit, record, key, before, new, now)
                if not agentic:
                    return f"circuit breaker {key} is {new.state}: {new.reason}"
        if self.settings.budgets and ("reservation", record.plan_id) not in state:
            # A plan with no amount holds no reservation either: a budget spent meanwhile (a
            # tool's reported cost can take it past its limit) stops it like one with an amount.
            amounts = [self._amount(s) for s in record.steps]
            then = {"approve": "wait" if confirmed else "run", "deny": "wait"}
            entries, approve, deny = self._reserve(tx, emit, record, amounts, now, then=then)
            if deny is None and approve and confirmed:
                self._release(tx, entries)
                deny = approve[0]
            if deny is not None:
                return deny
            self._keep(tx, emit, record, entries, now)
        return None

    def stopped(self, tx: Transaction, emit: Emit, record: PlanRecord) -> str | None:
        """Why no step of ``record`` may start now, or None: a kill switch or the whitelist.

        The part of ``recheck`` that stops any plan, for a start no human clears right then:
        a queued plan claimed by its runner, an interrupted step run again after a takeover,
        the step after a resolved one (a kill switch means no action starts, and a re-run is
        a new attempt). Breakers and budgets are not asked again: the plan passed them when
        it was decided or cleared, as a plan under way does between its steps.
        """
        actions = [s.action for s in record.steps]
        stops = self._stop_keys(self._agent_names(record.agent_id), actions)
        state = tx.get_states(stops)
        return self._hard_stop(emit, record, stops, actions, state, then="wait")

    def _amount(self, step: StepRecord) -> int:
        """A step's amount as its action's spec computes it (0 for an unknown action).

        0 too for params the catalog no longer reads an amount from (``recorded_amount``):
        the step ran, and its outcome must be recorded all the same.
        """
        spec = self.catalog.get(step.action)
        return spec.recorded_amount(step.params) if spec is not None else 0

    def _store_breaker(
        self,
        tx: Transaction,
        emit: Emit,
        record: PlanRecord,
        key: str,
        before: BreakerState,
        new: BreakerState,
        now: Any,
    ) -> None:
        """Write a breaker's new state before a call (half-open trials); audit a transition."""
        if new == before:
            return
        tx.put_state("breaker", key, new.value(), at=now)
        self._invalidate()
        if new.state != before.state:
            emit(E.BREAKER_HALF_OPEN, plan=record, data={"breaker": key}, trusted=True)

    def on_step(
        self, tx: Transaction, emit: Emit, record: PlanRecord, step: StepRecord, *, ok: bool
    ) -> None:
        """After a step ran: settle its budget, feed the breakers' windows."""
        now = self.clock.now()
        cost = self._amount(step)
        if ok and isinstance(step.result, dict) and type(step.result.get("cost")) is int:
            cost = step.result["cost"]  # what the tool says it really cost
        cost = spend(cost)  # a negative amount or reported cost spends nothing, refunds nothing
        keys = [f"action:{step.action}", f"agent:{record.agent_id}"]
        wanted = [("breaker", k) for k in keys]
        if self.settings.budgets:
            wanted.append(("reservation", record.plan_id))
        state = tx.get_states(wanted)
        if self.settings.budgets:
            reserved = ("reservation", record.plan_id) in state
            self._settle(
                tx, emit, record, step, cost if ok else 0, now, ok=ok, reserved_any=reserved
            )
        # A step a human approved or confirmed had its amount in front of them: it counts in
        # the window's average but is no "spike" (otherwise one approved large refund among
        # small automatic ones would stop every automatic refund for open_seconds).
        spike = 0 if step.outcome in _HUMAN_DECIDED else cost
        bucket = minute(now)
        for key in keys:
            tx.bump(f"calls:{key}", bucket, amount=cost)
            if not ok:
                tx.bump(f"errors:{key}", bucket)
            if ok and not spike and ("breaker", key) not in state:
                continue  # a cheap (or human-decided) success cannot open a closed breaker
            # The breaker as read above: nothing in this transaction wrote it since (_settle
            # writes reservations; _judge writes only its own key). Saves a read per key.
            stored = state.get(("breaker", key))
            self._judge(tx, emit, record, key, stored, ok=ok, cost=spike, now=now)

    def _judge(
        self,
        tx: Transaction,
        emit: Emit,
        record: PlanRecord,
        key: str,
        stored: Any,
        *,
        ok: bool,
        cost: int,
        now: Any,
    ) -> None:
        calls, window_cost, errors, rollbacks = self._window(tx, key, stored, now)
        state = BreakerState.from_value(stored)
        new = breaker_after(
            state,
            ok=ok,
            calls=calls,
            errors=errors,
            rollbacks=rollbacks,
            cost=cost,
            window_cost=window_cost,
            now=now,
            settings=self.settings.breaker,
        )
        if new == state:
            return
        tx.put_state("breaker", key, new.value(), at=now)
        self._invalidate()
        event = {"open": E.BREAKER_OPENED, "closed": E.BREAKER_CLOSED}.get(new.state)
        if event is not None and new.state != state.state:
            emit(
                event,
                plan=record,
                data={"breaker": key, "reason": new.reason, "severity": "high"},
            )

    def _window(
        self, tx: Transaction, key: str, stored: Any, now: Any
    ) -> tuple[int, int, int, int]:
        """A breaker's window totals: calls, their cost, errors and rollbacks.

        After an admin's reset only what happened since counts: otherwise the very errors
        that opened the breaker would open it again on its next call, success or not. The
        reset recorded its minute bucket and what that bucket already held; while the
        bucket is in the window, the sums start there and leave out what it held.
        """
        since = window_start(now, self.settings.breaker.window_seconds)
        reset = stored.get("reset") if isinstance(stored, dict) else None
        held: dict[str, Any] = {}
        if isinstance(reset, dict) and str(reset.get("since", "")) >= since:
            since = str(reset["since"])
            held = reset.get("held") or {}
        sums = tx.counter_sums(breaker_counters(key), since)
        calls, cost = sums[f"calls:{key}"]
        errors = sums[f"errors:{key}"][0]
        rollbacks = sums[f"rollbacks:{key}"][0]
        if held:
            calls -= int(held.get("calls", 0))
            cost -= int(held.get("cost", 0))
            errors -= int(held.get("errors", 0))
            rollbacks -= int(held.get("rollbacks", 0))
        return max(calls, 0), max(cost, 0), max(errors, 0), max(rollbacks, 0)

    def on_finish(self, tx: Transaction, emit: Emit, record: PlanRecord) -> None:
        """When a plan ends: release what it did not spend, count rollbacks and proposals."""
        now = self.clock.now()
        res = tx.get_state("reservation", record.plan_id) if self.settings.budgets else None
        if isinstance(res, dict):
            released = []
            for e in res["entries"]:
                left = sum(e["steps"])
                if left:
                    tx.bump(e["counter"], e["bucket"], count=0, amount=-left)
                    released.append({"budget": e["counter"], "amount": left})
            tx.put_state("reservation", record.plan_id, None, at=now)
            if released:
                emit(E.BUDGET_RELEASED, plan=record, data={"released": released})
        if record.status in (PlanStatus.UNDONE, PlanStatus.COMPENSATED):
            undone = {s.action for s in record.steps if s.status is StepStatus.COMPENSATED}
            for key in (*(f"action:{a}" for a in sorted(undone)), f"agent:{record.agent_id}"):
                tx.bump(f"rollbacks:{key}", minute(now))
                self._judge(
                    tx, emit, record, key, tx.get_state("breaker", key), ok=True, cost=0, now=now
                )
        if record.outcome == "confirm" and record.status in (
            *_RAN,
            PlanStatus.REJECTED,
            PlanStatus.EXPIRED,
        ):
            # Her confirmation is her acceptance, also of a plan that then expired queued,
            # unstarted, because no process that runs it took it in time (``queue_ttl``).
            accepted = record.status in _RAN or any(a.kind == "confirm" for a in record.approvals)
            self._count_proposal(tx, emit, record, accepted, now)

    def _count_proposal(
        self, tx: Transaction, emit: Emit, record: PlanRecord, accepted: bool, now: Any
    ) -> None:
        user = record.on_behalf_of
        for action in dict.fromkeys(s.action for s in record.steps):
            key, *older = user_action_keys(user, action)
            tx.bump(f"proposals:{key}", "all", count=1, amount=1 if accepted else 0)
            setting = tx.get_state("autonomy", key)
            if setting is None and older:
                setting = tx.get_state("autonomy", older[0])
            level = AutonomyLevel(setting["level"]) if isinstance(setting, dict) else None
            if level is None or next_level(level) is None:
                continue
            if tx.get_state("promotion", key) is not None:
                continue  # a suggestion is pending (or was declined for this streak)
            total, yes = tx.counter_sum(f"proposals:{key}", "all")
            if promotion_due(yes, total - yes, self.settings.autonomy):
                target = next_level(level)
                assert target is not None
                tx.put_state(
                    "promotion",
                    key,
                    {
                        "from": level.value,
                        "to": target.value,
                        "accepted": yes,
                        "total": total,
                        "status": "suggested",
                    },
                    at=now,
                )
                emit(
                    E.AUTONOMY_PROMOTION_SUGGESTED,
                    plan=record,
                    user_id=user,
                    data={
                        "user": user,
                        "action": action,
                        "from": level.value,
                        "to": target.value,
                        "accepted": yes,
                        "total": total,
                    },
                )
