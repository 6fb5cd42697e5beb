"""Prometheus metrics: counters fed by the audit events, gauges read from the store at scrape.

Two halves, because they answer different questions:

- ``MetricsListener`` is an ``EventListener``: the journal calls it inside the transaction
  that appends events, so every counter is derived from what the audit log records (a
  decision, a rate-limit rejection, a breaker transition...), never from a second code path
  that could drift from it. It reads each row's ``type`` and parses the body only for the
  few types whose data labels a metric. Counters count what *this process* appended (the
  Prometheus convention: sum over replicas in the query); a rolled-back transaction may
  already have counted, an accepted imprecision of a few events.
- ``StoreCollector`` reads the shared store at each scrape (approvals waiting and their age,
  audit log size, checkpoint age, webhook outbox depth, breaker states, budget use), so the
  gauges are the same on every replica and on every worker: the worker that answers the
  scrape computes them, and no gauge is kept in a process (nothing to add up or go stale).

Counters and histograms live in the process-wide default registry (several gateways in one
process add up; tests compare before and after). The workers of ``proctor serve --workers N``
each count what they append, so their counters are kept in files shared through
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode): ``share_between_workers``
switches a worker to it, and ``exposition`` then serves the sum over every worker, living or
exited, whichever worker answers.

Every label value is a fixed word, a catalog action, an agent id (tied to its token), a
kill switch or breaker an operator or the catalog named, or a configured budget
(``scope:key``): never a string an agent may choose, such as the user a plan claims to act
for, which would make a series per value.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import values as _values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from proctor.core.guards import Budget
from proctor.core.ports import EventRow, Transaction

if TYPE_CHECKING:
    from proctor.app.gateway import Gateway

__all__ = [
    "STAGE_SECONDS",
    "MetricsListener",
    "StoreCollector",
    "exposition",
    "share_between_workers",
]

STAGE_SECONDS = Histogram(
    "proctor_stage_seconds",
    "Duration of each stage of the flow (validate, assess, decide, simulate, route, step, "
    "compensation), and of the waits for humans (approval_wait, confirm_wait).",
    ["stage"],
    # NOTE(metrics): one histogram, so one set of buckets for every stage. The last three
    # (4 h, 1 day, 2 days) are for the waits: an approval may wait up to its TTL (a day by
    # default), and every wait past the hour used to land in +Inf. The machine stages only
    # gain three buckets that equal their count; the others are unchanged.
    buckets=(
        0.0005,
        0.001,
        0.002,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        1,
        5,
        30,
        300,
        3600,
        4 * 3600,
        86_400,
        2 * 86_400,
    ),
)
EVENTS = Counter("proctor_audit_events", "Audit events appended, by type.", ["type"])
DECISIONS = Counter(
    "proctor_decisions", "Plans decided, by outcome and pattern.", ["outcome", "pattern"]
)
RATE_LIMITED = Counter("proctor_rate_limit_rejections", "Plans denied by a rate limit.", ["scope"])
BREAKER_TRIPS = Counter("proctor_breaker_trips", "Circuit breakers opened.", ["breaker"])
BREAKER_CHANGES = Counter(
    "proctor_breaker_transitions",
    "Circuit breaker state changes, by breaker and new state (open, half_open, closed).",
    ["breaker", "state"],
)
GUARD_DENIALS = Counter(
    "proctor_guard_denials",
    "Plans denied by a guard: rate_limit, whitelist, kill_switch, budget.",
    ["guard"],
)
BUDGET = Counter(
    "proctor_budget_amount",
    "Budget amounts (minor units) reserved, settled or released, by configured budget (scope:key).",
    ["budget", "kind"],
)
KILLS = Counter(
    "proctor_kill_switch_changes", "Kill switches engaged or released.", ["switch", "change"]
)
ANOMALIES = Counter("proctor_anomalies", "Anomalies detected, by agent.", ["agent"])
STEPS = Counter(
    "proctor_steps",
    "Step outcomes: succeeded, failed, timed_out, unknown, retrying, simulated, "
    "resolved_succeeded, resolved_failed (a human's resolution of an unknown one).",
    ["outcome"],
)
FINISHED = Counter("proctor_plans_finished", "Plans that reached an end, by status.", ["status"])
FALSE_ACTIONS = Counter(
    "proctor_false_action_signals",
    "Signals that an executed plan was wrong: undo, rollback (TTL), review_wrong, complaint.",
    ["kind"],
)

_STEP_OUTCOMES = {
    "step.succeeded": "succeeded",
    "step.failed": "failed",
    "step.timed_out": "timed_out",
    "step.unknown": "unknown",
    "step.retrying": "retrying",
    "step.simulated": "simulated",
}
_BREAKER_STATES = {
    "breaker.opened": "open",
    "breaker.half_open": "half_open",
    "breaker.closed": "closed",
}


def _s(value: Any) -> str:
    """A label value: labels must be strings; a missing field is ``?``."""
    return "?" if value is None else str(value)


def _decided(data: Mapping[str, Any]) -> None:
    decision = data.get("decision") or {}
    assessment = data.get("assessment") or {}
    DECISIONS.labels(_s(decision.get("outcome")), _s(assessment.get("pattern"))).inc()


def _rate_limited(data: Mapping[str, Any]) -> None:
    # A rate limit is only asked when a plan is decided: its event is always a denial.
    RATE_LIMITED.labels(_s(data.get("scope"))).inc()
    GUARD_DENIALS.labels("rate_limit").inc()


def _stopped(guard: str) -> Callable[[Mapping[str, Any]], None]:
    def count(data: Mapping[str, Any]) -> None:
        # A kill switch or a whitelist denies a plan being decided ("deny"), and holds a
        # plan that was cleared or queued ("wait"): each refused confirmation, approval or
        # resolution of it records an event (a person tried), but the plan is not denied
        # and runs after the release, so only "deny" counts. Events without ``then`` were
        # written before it existed, when only a denial was meant.
        if data.get("then", "deny") == "deny":
            GUARD_DENIALS.labels(guard).inc()

    return count


def _breaker(kind: str) -> Callable[[Mapping[str, Any]], None]:
    state = _BREAKER_STATES[kind]

    def count(data: Mapping[str, Any]) -> None:
        breaker = _s(data.get("breaker"))
        BREAKER_CHANGES.labels(breaker, state).inc()
        if state == "open":
            BREAKER_TRIPS.labels(breaker).inc()

    return count


def _budget_label(counter: Any, budgets: Sequence[Budget]) -> str:
    """The configured budget (``scope:key``) that keeps ``counter``, or ``?``.

    A budget counter is ``budget:SCOPE:WHO``. Under a ``*`` key, WHO is whatever the plan
    named: for a ``user`` budget, the ``on_behalf_of`` the agent wrote. It must never be a
    label value (an agent could start a series per made-up user), so the label is the
    budget as configured: ``user:alice`` for a budget on alice alone, ``user:*`` for the
    budget that counts each user separately, ``global:*``.
    """
    scope, who = _split_counter(counter)
    if scope is None:
        return "?"
    # A budget for one key names it; it is configuration, not what the agent sent.
    if who != "*" and any(b.scope == scope and b.key == who for b in budgets):
        return f"{scope}:{who}"
    if any(b.scope == scope and b.key == "*" for b in budgets):
        return f"{scope}:*"
    return "?"  # no such budget configured (any more): never the raw value


def _split_counter(counter: Any) -> tuple[str | None, str]:
    parts = counter.split(":", 2) if isinstance(counter, str) else []
    if len(parts) != 3 or parts[0] != "budget":
        return None, ""
    return parts[1], parts[2]


def _budget_exceeded(data: Mapping[str, Any]) -> None:
    # Only "deny" stops the plan; "approve" escalates it, "wait"/"run" are re-checks before
    # running, and "recorded" is a settlement that ran over after the fact.
    if data.get("then") == "deny":
        GUARD_DENIALS.labels("budget").inc()


def _kill(change: str) -> Callable[[Mapping[str, Any]], None]:
    def count(data: Mapping[str, Any]) -> None:
        KILLS.labels(_s(data.get("switch")), change).inc()

    return count


def _anomaly(data: Mapping[str, Any]) -> None:
    ANOMALIES.labels(_s(data.get("agent_id"))).inc()


def _finished(data: Mapping[str, Any]) -> None:
    FINISHED.labels(_s(data.get("status"))).inc()


def _undo(data: Mapping[str, Any]) -> None:
    # The rollback TTL undoes as the principal ``proctor:rollback-ttl`` (app/human_actions.py).
    by = str(data.get("by") or "")
    FALSE_ACTIONS.labels("rollback" if by.startswith("proctor:") else "undo").inc()


def _reviewed(data: Mapping[str, Any]) -> None:
    if data.get("verdict") == "wrong":
        FALSE_ACTIONS.labels("review_wrong").inc()


def _complaint(data: Mapping[str, Any]) -> None:
    FALSE_ACTIONS.labels("complaint").inc()


def _resolved(data: Mapping[str, Any]) -> None:
    # A human's resolution of a step of unknown outcome: the step's end, as the KPIs count it.
    STEPS.labels("resolved_succeeded" if data.get("succeeded") is True else "resolved_failed").inc()


def _amount(value: Any) -> int:
    # Money is integers in minor units; anything else (or a refund) adds nothing to a counter.
    return value if type(value) is int and value > 0 else 0


# The types whose data labels a metric; every other event only bumps EVENTS{type}. The budget
# amounts (budget.reserved, .settled, .released) are the listener's: they need the budgets.
_PARSED: dict[str, Callable[[Mapping[str, Any]], None]] = {
    "policy.decided": _decided,
    "guard.rate_limited": _rate_limited,
    "guard.whitelist_denied": _stopped("whitelist"),
    "guard.killed": _stopped("kill_switch"),
    "breaker.opened": _breaker("breaker.opened"),
    "breaker.half_open": _breaker("breaker.half_open"),
    "breaker.closed": _breaker("breaker.closed"),
    "budget.exceeded": _budget_exceeded,
    "kill.engaged": _kill("engaged"),
    "kill.released": _kill("released"),
    "anomaly.detected": _anomaly,
    "plan.finished": _finished,
    "undo.requested": _undo,
    "review.marked": _reviewed,
    "complaint.filed": _complaint,
    "step.resolved": _resolved,
}


# Budget events: (list in data, amount field, kind label).
_BUDGET_AMOUNTS = {
    "budget.reserved": ("reservations", "amount", "reserved"),
    "budget.settled": ("settled", "spent", "settled"),
    "budget.released": ("released", "amount", "released"),
}


class MetricsListener:
    """Counts events as they are appended (called inside the appending transaction).

    Args:
        budgets: The configured budgets, which label the budget amounts (``scope:key``);
            without them those amounts are labelled ``?``.
    """

    __slots__ = ("_budgets", "_events", "_steps")

    def __init__(self, *, budgets: Sequence[Budget] = ()) -> None:
        self._budgets = tuple(budgets)
        self._events: dict[str, Any] = {}
        self._steps: dict[str, Any] = {}

    def on_events(self, tx: Transaction, rows: Sequence[EventRow]) -> None:
        """Count ``rows``; parse only the few types whose data labels a metric."""
        for row in rows:
            kind = row.type
            child = self._events.get(kind)
            if child is None:
                child = self._events[kind] = EVENTS.labels(kind)
            child.inc()
            outcome = _STEP_OUTCOMES.get(kind)
            if outcome is not None:
                step = self._steps.get(outcome)
                if step is None:
                    step = self._steps[outcome] = STEPS.labels(outcome)
                step.inc()
                continue
            handler = _PARSED.get(kind)
            amounts = _BUDGET_AMOUNTS.get(kind) if handler is None else None
            if handler is None and amounts is None:
                continue
            data = orjson.loads(row.body).get("data")
            data = data if isinstance(data, dict) else {}
            if handler is not None:
                handler(data)
            elif amounts is not None:
                self._budget(data, *amounts)

    def _budget(self, data: Mapping[str, Any], items: str, field: str, kind: str) -> None:
        entries = data.get(items)
        for r in entries if isinstance(entries, list) else ():
            if isinstance(r, dict):
                label = _budget_label(r.get("budget"), self._budgets)
                BUDGET.labels(label, kind).inc(_amount(r.get(field)))


class StoreCollector(Collector):
    """Gauges read from the store at each scrape."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Any]:
        """Yield the gauges (each scrape reads the shared store, so replicas agree)."""
        store = self.gateway.store
        now = self.gateway.clock.now()
        waiting = GaugeMetricFamily(
            "proctor_approvals_pending", "Plans waiting for humans.", labels=["kind"]
        )
        oldest = GaugeMetricFamily(
            "proctor_approvals_oldest_seconds", "Age of the oldest waiting plan.", labels=["kind"]
        )
        # Counted by the store, every waiting plan: a backlog is when these gauges matter.
        counts = store.count_plans(list(_WAITING))
        for status, kind in _WAITING.items():
            n, since = counts.get(status, (0, None))
            waiting.add_metric([kind], n)
            oldest.add_metric([kind], 0.0 if since is None else (now - since).total_seconds())
        yield waiting
        yield oldest
        size = GaugeMetricFamily("proctor_audit_log_events", "Events in the audit log.")
        size.add_metric([], store.event_count())
        yield size
        cp = store.latest_checkpoint()
        age = GaugeMetricFamily(
            "proctor_checkpoint_age_seconds", "Age of the latest signed checkpoint."
        )
        if cp is not None:
            age.add_metric([], (now - datetime.fromisoformat(cp.created_at)).total_seconds())
        yield age
        signed = GaugeMetricFamily(
            "proctor_checkpoint_size", "Events covered by the latest signed checkpoint."
        )
        signed.add_metric([], cp.size if cp is not None else 0)
        yield signed
        depth = GaugeMetricFamily(
            "proctor_webhook_outbox", "Webhook deliveries by status.", labels=["status"]
        )
        deliveries = store.count_deliveries(["pending", "dead"])
        for status in ("pending", "dead"):
            depth.add_metric([status], deliveries.get(status, 0))
        yield depth
        yield from self._guards()

    def _guards(self) -> Iterator[Any]:
        guards = self.gateway.guards
        if guards is None:
            return
        st = guards.status()
        breakers = GaugeMetricFamily(
            "proctor_breaker_open",
            "1 if a circuit breaker is not closed.",
            labels=["breaker", "state"],
        )
        for key, v in st["breakers"].items():
            breakers.add_metric([key, v.get("state", "?")], 0 if v.get("state") == "closed" else 1)
        yield breakers
        kills = GaugeMetricFamily("proctor_kill_switches", "Kill switches engaged.")
        kills.add_metric([], len(st["kill"]))
        yield kills
        # ``period`` is the budget's period (day, month), not the current bucket (a date): a
        # label that changes every period would start a new series each day. The values are
        # those of the period under way.
        budget = GaugeMetricFamily(
            "proctor_budget_used",
            "Budget used in the current period (day or month).",
            labels=["budget", "period"],
        )
        limit = GaugeMetricFamily(
            "proctor_budget_limit", "Budget limit per period.", labels=["budget", "period"]
        )
        # ``status`` lists the budgets in their configured order.
        for conf, b in zip(guards.settings.budgets, st["budgets"], strict=True):
            name = f"{conf.scope}:{conf.key}"
            limit.add_metric([name, conf.period], b["limit"])
            if b["used"] is not None:
                budget.add_metric([name, conf.period], b["used"])
        yield budget
        yield limit


_WAITING = {"awaiting_approval": "approval", "awaiting_confirmation": "confirm"}

# The directory of this process's shared counters, once ``share_between_workers`` ran (the
# value class it switches is process-wide state too).
_SHARED: dict[str, str] = {}


def share_between_workers(path: str) -> None:
    """Keep this process's counters and histograms in ``path``, shared with the other workers.

    For a worker of ``proctor serve --workers N``, before it counts anything: ``path`` is the
    directory its parent made for this serve. prometheus-client picks its value class when
    it is imported, from ``PROMETHEUS_MULTIPROC_DIR``, and the parent imported it before it
    knew it would fork, so the class is chosen again here.
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    _values.ValueClass = _values.get_value_class()  # type: ignore[no-untyped-call]  # untyped upstream
    _SHARED["dir"] = path


def exposition() -> bytes:
    """The counters and histograms in the text format: this process's, or every worker's.

    In a worker (``share_between_workers``) it is the sum over every worker of this serve,
    including exited ones, so a counter never goes down whichever worker answers. The
    per-process collectors (``process_*``, ``python_gc_*``) are left out there: they would
    describe only the worker that happened to answer.
    """
    path = _SHARED.get("dir")
    if path is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]  # untyped upstream
    return generate_latest(registry)
