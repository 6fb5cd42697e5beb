"""The operational KPIs, computed from the audit log (docs/observability.md).

Pure computation over event bodies (``compute``), so every figure can be checked against a
hand-built history, and the same figures come out of a live store, an export, or a replica.

For a period ``[since, until)`` and optionally per agent, action or user. A plan belongs to
the period in which it was *submitted*; what happened to it is what the log says by
``as_of`` (default ``until``: a complaint filed after the period does not rewrite that
period's figures; the monthly review judges each week as of the month's end):

- **acceptance rate** — plans that were proposed (routed, not sandboxed) and executed
  without modification: they finished ``succeeded`` and were not undone, rolled back,
  complained about or reviewed ``wrong``; over the plans proposed;
- **false-action rate** — executed plans later undone by a user, rolled back by their
  rollback TTL, reviewed ``wrong`` (the last verdict: one corrected to ``fine`` is not) or
  complained about; over the plans executed. A plan counts once, whatever the number of
  signals; ``counts.false_signals`` breaks them down;
- **time to recovery** — from detection (an undo request, a complaint, a ``wrong`` review,
  a failed, timed-out or unknown step) to the revert (the plan finished ``undone`` or
  ``compensated``, or a rollback TTL undid part of it: ``plan.rolled_back``): median and
  worst, in seconds. The clock starts at the first detection
  still unanswered at the revert: step trouble the plan overcame (it finished
  ``succeeded``: a retry worked, a human resolved the step) does not start it;
- **audit coverage** — executed steps in the period with full provenance (their plan's
  submission and decision in the log, a policy version, a model version, a signature and a
  trace id), over the executed steps; ``counts.uncovered`` says what was missing;
- **cost per action** — the cost recorded on executed steps, over the executed steps. A
  step of unknown outcome that a human resolved as succeeded is an executed step (with the
  cost ``step.resolved`` records), and makes its plan executed;
- **anomaly delta** — anomalies in the period minus those in the period of equal length
  just before it (per agent, or per user and action of the plan that raised them).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from proctor.core.ports import EventRow, Store

__all__ = ["KpiSet", "compute", "from_store", "look_back", "relevant"]

_BY = ("agent", "action", "user")
# Events before the period matter only for these: who a plan was for, and that it was
# decided (provenance of a step that runs in the period after a long approval).
_BEFORE = frozenset({"plan.submitted", "policy.decided", "anomaly.detected"})
# A step that failed, timed out or was left unknown is a detection that the plan's success
# answers (a retry worked, a human resolved it): the other detections are about what the plan
# did, and only a revert answers them.
_STEP_TROUBLE = frozenset({"step.failed", "step.timed_out", "step.unknown"})
_EARLIEST = datetime.min.replace(tzinfo=UTC)
_PROVENANCE = ("submission", "decision", "policy_version", "model_version", "signature", "trace")


@dataclass(slots=True)
class _Plan:
    agent: str | None = None
    user: str | None = None
    actions: list[str] = field(default_factory=list)
    step_actions: dict[str, str] = field(default_factory=dict)  # step id -> action
    seen: bool = False  # its submission is in the log (any time)
    in_period: bool = False  # submitted in [since, until)
    decided: bool = False
    proposed: bool = False
    executed: bool = False
    succeeded: bool = False
    signals: set[str] = field(default_factory=set)
    # Detections not yet answered, by cause (``step``, ``undo``, ``complaint``, ``review``):
    # when each was first seen since the plan was last fine. Recovery runs from the earliest.
    detected: dict[str, datetime] = field(default_factory=dict)
    recovered_s: float | None = None


@dataclass(frozen=True, slots=True)
class KpiSet:
    """The KPIs of one group (or of everything)."""

    proposed: int
    accepted: int
    executed_plans: int
    false_actions: int
    executed_steps: int
    covered_steps: int
    cost: int
    recoveries: tuple[float, ...]
    anomalies: int
    anomalies_before: int
    false_signals: Mapping[str, int] = field(default_factory=dict)
    uncovered: Mapping[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (rates as fractions rounded to 4 places, None when undefined)."""

        def rate(a: int, b: int) -> float | None:
            return round(a / b, 4) if b else None

        return {
            "acceptance_rate": rate(self.accepted, self.proposed),
            "false_action_rate": rate(self.false_actions, self.executed_plans),
            "time_to_recovery_s": {
                "median": round(statistics.median(self.recoveries), 3) if self.recoveries else None,
                "max": round(max(self.recoveries), 3) if self.recoveries else None,
                "count": len(self.recoveries),
            },
            "audit_coverage": rate(self.covered_steps, self.executed_steps),
            "cost_per_action": round(self.cost / self.executed_steps, 2)
            if self.executed_steps
            else None,
            "anomaly_delta": self.anomalies - self.anomalies_before,
            "counts": {
                "proposed": self.proposed,
                "accepted": self.accepted,
                "executed_plans": self.executed_plans,
                "false_actions": self.false_actions,
                "false_signals": dict(sorted(self.false_signals.items())),
                "executed_steps": self.executed_steps,
                "covered_steps": self.covered_steps,
                "uncovered": dict(sorted(self.uncovered.items())),
                "cost": self.cost,
                "anomalies": self.anomalies,
                "anomalies_before": self.anomalies_before,
            },
        }


def look_back(at: datetime, span: timedelta) -> datetime:
    """Return ``at - span``, or the earliest representable instant if that is before it.

    Periods that reach back past year 1 (``since=0001-01-01`` to mean "everything", or a
    default 30-day window before ``until=0001-01-05``) are clamped rather than refused:
    nothing in a log is older than the earliest instant, so the figures are the same.
    """
    try:
        return at - span
    except OverflowError:
        return _EARLIEST


def relevant(
    rows: Iterable[EventRow],
    *,
    since: datetime,
    until: datetime,
    as_of: datetime | None = None,
) -> Iterator[EventRow]:
    """The rows ``compute`` needs for ``[since, until)``, chosen without parsing bodies.

    Skips events at or after ``as_of`` (default ``until``) and, before ``since``, all but
    submissions, decisions and anomalies: on a long log most rows are never parsed.
    """
    horizon = max(until, as_of or until)
    for row in rows:
        t = datetime.fromisoformat(row.timestamp)
        if t >= horizon:
            continue
        if t < since and row.type not in _BEFORE:
            continue
        yield row


def from_store(
    store: Store, *, since: datetime, until: datetime, by: str | None = None
) -> dict[str, Any]:
    """``compute`` over a store's log (one pass, in order; only the rows that matter)."""
    rows = relevant(store.iter_events(), since=since, until=until)
    return compute((orjson.loads(r.body) for r in rows), since=since, until=until, by=by)


def compute(
    events: Iterable[Mapping[str, Any]],
    *,
    since: datetime,
    until: datetime,
    by: str | None = None,
    as_of: datetime | None = None,
) -> dict[str, Any]:
    """Return ``{"all": KPIs}`` or, with ``by``, ``{group: KPIs}`` for the period.

    Args:
        events: Audit event bodies in log order: the whole log, or at least everything
            from one period before ``since`` (the anomaly delta looks back that far) plus
            the submissions of plans whose steps run in the period.
        since: Start of the period (inclusive, timezone-aware).
        until: End of the period (exclusive).
        by: ``agent``, ``action`` or ``user`` to group; None for one group ``all``.
        as_of: Judge the period's plans by what the log says up to this time (exclusive);
            default ``until``. Never earlier than ``until``.

    Raises:
        ValueError: if ``by`` is not one of those, or the period is empty.
    """
    if by is not None and by not in _BY:
        raise ValueError(f"by must be one of {_BY}")
    if since >= until:
        raise ValueError("since must be before until")
    before = look_back(since, until - since)
    horizon = max(until, as_of or until)
    plans: dict[str, _Plan] = defaultdict(_Plan)
    steps: list[tuple[Mapping[str, Any], _Plan]] = []  # executed steps in the period
    anomalies: list[tuple[datetime, str | None, _Plan | None]] = []
    for body in events:
        t = datetime.fromisoformat(body["timestamp"])
        if t >= horizon:
            continue
        kind = body["type"]
        pid = body.get("plan_id")
        data = body.get("data") or {}
        if kind == "anomaly.detected":
            anomalies.append((t, data.get("agent_id"), plans[pid] if pid else None))
            continue
        if pid is None:
            continue
        p = plans[pid]
        if kind == "plan.submitted":
            p.seen = True
            p.in_period = since <= t < until
            p.agent = (body.get("actor") or {}).get("agent_id")
            p.user = body.get("user_id")
            p.actions = [a["api"] for a in body.get("actions_attempted") or []]
            p.step_actions = {
                str(s.get("id")): str(s.get("action"))
                for s in data.get("steps") or []
                if isinstance(s, dict)
            }
        elif kind == "policy.decided":
            p.decided = True
        elif kind == "plan.routed":
            p.proposed = p.in_period and not data.get("sandbox")
        elif kind == "step.succeeded" or (kind == "step.resolved" and data.get("succeeded")):
            # A step of unknown outcome that a human resolved as succeeded took effect: it
            # was executed, with its cost, as much as one that reported success itself.
            p.executed = True
            if since <= t < until:
                steps.append((body, p))
        elif kind == "plan.finished":
            status = data.get("status")
            p.succeeded = p.succeeded or status == "succeeded"
            if status in ("undone", "compensated"):
                if p.detected:
                    p.recovered_s = (t - min(p.detected.values())).total_seconds()
                p.detected.clear()
            elif status == "succeeded":
                # The step trouble before it was overcome; it must not start the clock of an
                # undo requested days later.
                p.detected.pop("step", None)
        elif kind == "plan.rolled_back":
            # A rollback TTL undid some steps and the others stand: the revert is done.
            if p.detected:
                p.recovered_s = (t - min(p.detected.values())).total_seconds()
            p.detected.clear()
        elif kind == "undo.requested":
            # The rollback TTL undoes as ``proctor:rollback-ttl``; people undo as themselves.
            by_whom = str(data.get("by") or body.get("user_id") or "")
            p.signals.add("rollback" if by_whom.startswith("proctor:") else "undo")
            p.detected.setdefault("undo", t)
        elif kind == "complaint.filed":
            p.signals.add("complaint")
            p.detected.setdefault("complaint", t)
        elif kind == "review.marked":
            # The last verdict wins: a reviewer who corrects ``wrong`` to ``fine`` takes the
            # false action back (the plan and the review table say ``fine`` too).
            if data.get("verdict") == "wrong":
                p.signals.add("review_wrong")
                p.detected.setdefault("review", t)
            else:
                p.signals.discard("review_wrong")
                p.detected.pop("review", None)
        elif kind in _STEP_TROUBLE:
            p.detected.setdefault("step", t)
    return _aggregate(plans, steps, anomalies, since=since, until=until, before=before, by=by)


def _groups(p: _Plan, by: str | None) -> list[str]:
    if by is None:
        return ["all"]
    if by == "agent":
        return [p.agent or "?"]
    if by == "user":
        return [p.user or "?"]
    return sorted(set(p.actions)) or ["?"]


def _missing(body: Mapping[str, Any], p: _Plan) -> list[str]:
    """What a step event lacks of full provenance (``_PROVENANCE``), in that order."""
    have = (
        p.seen,
        p.decided,
        bool(body.get("policy_version")),
        bool((body.get("actor") or {}).get("model_version")),
        bool(body.get("signature")),
        bool(body.get("trace_id")),
    )
    return [name for name, ok in zip(_PROVENANCE, have, strict=True) if not ok]


def _aggregate(
    plans: Mapping[str, _Plan],
    steps: list[tuple[Mapping[str, Any], _Plan]],
    anomalies: list[tuple[datetime, str | None, _Plan | None]],
    *,
    since: datetime,
    until: datetime,
    before: datetime,
    by: str | None,
) -> dict[str, Any]:
    def empty() -> dict[str, Any]:
        return {
            "proposed": 0,
            "accepted": 0,
            "executed_plans": 0,
            "false_actions": 0,
            "executed_steps": 0,
            "covered_steps": 0,
            "cost": 0,
            "recoveries": [],
            "anomalies": 0,
            "anomalies_before": 0,
            "false_signals": Counter(),
            "uncovered": Counter(),
        }

    acc: dict[str, dict[str, Any]] = defaultdict(empty)
    for p in plans.values():
        if not p.in_period:
            continue
        for g in _groups(p, by):
            a = acc[g]
            if p.proposed:
                a["proposed"] += 1
                a["accepted"] += int(p.succeeded and not p.signals)
            if p.executed:
                a["executed_plans"] += 1
                if p.signals:
                    a["false_actions"] += 1
                    a["false_signals"].update(p.signals)
            if p.recovered_s is not None:
                a["recoveries"].append(p.recovered_s)
    for body, p in steps:
        if by == "action":
            # ``step.resolved`` names no attempt: its action is the step's in the submission.
            api = next((x["api"] for x in body.get("actions_attempted") or []), None)
            groups = [api or p.step_actions.get(str(body.get("step_id")), "?")]
        else:
            groups = _groups(p, by)
        missing = _missing(body, p)
        cost = (body.get("data") or {}).get("cost", 0)
        for g in groups:
            a = acc[g]
            a["executed_steps"] += 1
            a["covered_steps"] += int(not missing)
            a["uncovered"].update(missing)
            a["cost"] += cost if type(cost) is int else 0
    for t, agent, of in anomalies:
        if by is None:
            groups = ["all"]
        elif by == "agent":
            groups = [agent or (of.agent if of is not None else None) or "?"]
        elif of is not None and of.seen:
            groups = _groups(of, by)
        else:
            continue  # an anomaly of no known plan has no user or action
        if since <= t < until:
            key = "anomalies"
        elif before <= t < since:
            key = "anomalies_before"
        else:
            continue
        for g in groups:
            acc[g][key] += 1
    if by is None:
        acc.setdefault("all", empty())  # "all" exists even when empty
    return {
        g: KpiSet(**{**a, "recoveries": tuple(a["recoveries"])}).as_dict()
        for g, a in sorted(acc.items())
    }
