"""The operational KPIs, computed from the audit log (docs/observability.md).

Pure computation over event bodies (``compute``), so every figure can be checked against a
hand-built history, and the same figures come out of a live store, an export, or a replica.

For a period ``[since, until)`` and optionally per agent, action or user:

- **acceptance rate** — plans that were proposed (routed, not sandboxed) and executed
  without modification: they finished ``succeeded`` and were not undone, rolled back,
  complained about or reviewed ``wrong``; over the plans proposed;
- **false-action rate** — executed plans later undone or rolled back, reviewed ``wrong`` or
  complained about; over the plans executed;
- **time to recovery** — from detection (an undo request, a failed step) to the revert (the
  plan finished ``undone`` or ``compensated``): median and worst, in seconds;
- **audit coverage** — executed steps with full provenance (their plan's submission and
  decision in the log, a policy version, a model version, a signature and a trace id), over
  the executed steps;
- **cost per action** — the cost recorded on executed steps, over the executed steps;
- **anomaly delta** — anomalies in the period minus those in the period of equal length
  just before it.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from proctor.core.ports import Store

__all__ = ["KpiSet", "compute", "from_store"]

_BY = ("agent", "action", "user")


@dataclass(slots=True)
class _Plan:
    agent: str | None = None
    user: str | None = None
    actions: set[str] = field(default_factory=set)
    submitted: bool = False
    decided: bool = False
    proposed: bool = False
    executed: bool = False
    succeeded: bool = False
    false: bool = False
    detected: datetime | None = None
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

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (rates as fractions, None when undefined)."""

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
                "executed_steps": self.executed_steps,
                "covered_steps": self.covered_steps,
                "cost": self.cost,
                "anomalies": self.anomalies,
                "anomalies_before": self.anomalies_before,
            },
        }


def from_store(
    store: Store, *, since: datetime, until: datetime, by: str | None = None
) -> dict[str, Any]:
    """``compute`` over a store's whole log (one pass, in order)."""
    bodies = (orjson.loads(row.body) for row in store.iter_events())
    return compute(bodies, since=since, until=until, by=by)


def _ts(body: Mapping[str, Any]) -> datetime:
    return datetime.fromisoformat(body["timestamp"])


def compute(
    events: Iterable[Mapping[str, Any]],
    *,
    since: datetime,
    until: datetime,
    by: str | None = None,
) -> dict[str, Any]:
    """Return ``{"all": KPIs}`` or, with ``by``, ``{group: KPIs}`` for the period.

    ``events`` are audit event bodies in log order (the whole log, or at least everything
    from one period before ``since``: the anomaly delta looks back that far).
    """
    if by is not None and by not in _BY:
        raise ValueError(f"by must be one of {_BY}")
    before = since - (until - since)
    plans: dict[str, _Plan] = defaultdict(_Plan)
    steps: list[tuple[Mapping[str, Any], str]] = []  # executed step events, with their plan
    anomalies: list[tuple[datetime, str | None]] = []
    for body in events:
        t = _ts(body)
        kind = body["type"]
        if kind in ("anomaly.detected", "anomaly"):
            agent = (body.get("data") or {}).get("agent_id")
            anomalies.append((t, agent))
            continue
        pid = body.get("plan_id")
        if pid is None or t >= until:
            continue
        p = plans[pid]
        actor = body.get("actor") or {}
        p.agent = p.agent or actor.get("agent_id")
        if kind == "plan.submitted":
            p.user = body.get("user_id")
        data = body.get("data") or {}
        if kind == "plan.submitted":
            p.submitted = t >= since
            p.actions.update(a["api"] for a in body.get("actions_attempted") or [])
        elif kind == "policy.decided":
            p.decided = True
        elif kind == "plan.routed":
            p.proposed = p.submitted and not data.get("sandbox")
        elif kind == "step.succeeded":
            p.executed = True
            if t >= since:
                steps.append((body, pid))
        elif kind == "plan.finished":
            status = data.get("status")
            if status == "succeeded":
                p.succeeded = True
            elif status in ("undone", "compensated") and p.detected is not None:
                p.recovered_s = (t - p.detected).total_seconds()
            if status == "undone":
                p.false = True
        elif kind in ("undo.requested", "step.failed"):
            p.detected = p.detected or t
        elif kind == "complaint.filed" or (
            kind == "review.marked" and data.get("verdict") == "wrong"
        ):
            p.false = True

    def group_of(p: _Plan) -> list[str]:
        if by is None:
            return ["all"]
        if by == "agent":
            return [p.agent or "?"]
        if by == "user":
            return [p.user or "?"]
        return sorted(p.actions) or ["?"]

    acc: dict[str, dict[str, Any]] = defaultdict(
        lambda: {
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
        }
    )
    for p in plans.values():
        if not p.submitted:
            continue
        for g in group_of(p):
            a = acc[g]
            if p.proposed:
                a["proposed"] += 1
                if p.succeeded and not p.false:
                    a["accepted"] += 1
            if p.executed:
                a["executed_plans"] += 1
                if p.false:
                    a["false_actions"] += 1
            if p.recovered_s is not None:
                a["recoveries"].append(p.recovered_s)
    for body, pid in steps:
        p = plans[pid]
        action = next((x["api"] for x in body.get("actions_attempted") or []), "?")
        groups = [action] if by == "action" else group_of(p)
        covered = (
            p.submitted
            and p.decided
            and bool(body.get("policy_version"))
            and bool((body.get("actor") or {}).get("model_version"))
            and bool(body.get("signature"))
            and bool(body.get("trace_id"))
        )
        cost = (body.get("data") or {}).get("cost", 0)
        for g in groups:
            a = acc[g]
            a["executed_steps"] += 1
            a["covered_steps"] += int(covered)
            a["cost"] += cost if type(cost) is int else 0
    for t, agent in anomalies:
        if by in (None, "agent"):
            g = "all" if by is None else (agent or "?")
            if since <= t < until:
                acc[g]["anomalies"] += 1
            elif before <= t < since:
                acc[g]["anomalies_before"] += 1
    if by is None and "all" not in acc:
        acc["all"]
    return {
        g: KpiSet(**{**a, "recoveries": tuple(a["recoveries"])}).as_dict()
        for g, a in sorted(acc.items())
    }
