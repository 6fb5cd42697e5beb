"""What the console's pages show, computed from records: pure functions, no I/O.

The templates only lay out what these return, so each figure on a page (a summary, a time
left, a chart's geometry) can be tested without a browser.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from proctor.core.approvals import step_quorums
from proctor.core.assessment import AXES
from proctor.core.catalog import Catalog
from proctor.core.lifecycle import PlanRecord, PlanStatus, StepStatus
from proctor.core.masking import mask

__all__ = [
    "AXIS_LABELS",
    "Chart",
    "chart",
    "credited",
    "diff_rows",
    "left",
    "plan_view",
    "undo_deadline",
]

_SUBMISSIONS = frozenset({"plan.submitted", "plan.rejected"})


def credited(event_type: str, body: Mapping[str, Any]) -> tuple[str, str]:
    """Who did what an audit event records, and as what: ``(name, "agent" | "human" | ...)``.

    The manifest's ``actor.name`` and ``actor.type`` are whatever the agent wrote (it may
    call itself ``alice``, a ``human``), so they credit nothing: a submission is credited to
    the principal that sent it as authenticated (``data.principal``, recorded by the HTTP
    API), a person's decision about a plan (confirm, approve, reject, a step-up failure) to
    that person (its ``data.principal``), and anything else of a plan to its agent by
    ``actor.agent_id`` (the HTTP API makes it the submitting token's name). Other events
    (a library submission's, the instance's own, whose actor Proctor wrote) keep the actor as
    written: an instance event's ``data.principal`` is whom it is about (``stepup.enrolled``).
    """
    data = body.get("data")
    principal = data.get("principal") if isinstance(data, Mapping) else None
    if isinstance(principal, str) and principal:
        if event_type in _SUBMISSIONS:
            return principal, "agent"
        if body.get("plan_id") is not None:
            return principal, "human"
    actor = body.get("actor")
    if not isinstance(actor, Mapping):
        return "", ""
    agent_id = actor.get("agent_id")
    if isinstance(agent_id, str) and agent_id:
        return agent_id, "agent"
    return str(actor.get("name", "")), str(actor.get("type", ""))


AXIS_LABELS: Mapping[str, str] = {
    "risk": "Risk & safety",
    "auditability": "Auditability & compliance",
    "ux": "UX (need for speed)",
    "recovery": "Observability & recovery",
    "cost": "Cost & rate",
}


def left(until: datetime | None, now: datetime) -> str:
    """Say how long until ``until`` in words (``"12 min 5 s"``; ``"closed"`` when past)."""
    if until is None:
        return ""
    seconds = int((until - now).total_seconds())
    if seconds <= 0:
        return "closed"
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def diff_rows(simulation: Any) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """Split a simulation's predicted effects into a diff and other figures.

    A simulator reports changes as ``{"diff": {field: [before, after]}}``; everything else
    it says (a cost, a risk signal) is listed as is.

    Returns:
        ``(diff, other)``: ``(field, before, after)`` rows and ``(name, value)`` rows.
    """
    if not isinstance(simulation, Mapping):
        return [], ([("result", _text(simulation))] if simulation is not None else [])
    diff: list[tuple[str, str, str]] = []
    raw = simulation.get("diff")
    if isinstance(raw, Mapping):
        for key, change in raw.items():
            if isinstance(change, Sequence) and not isinstance(change, str) and len(change) == 2:
                diff.append((str(key), _text(change[0]), _text(change[1])))
            else:
                diff.append((str(key), "", _text(change)))
    other = [(str(k), _text(v)) for k, v in simulation.items() if k != "diff"]
    return diff, other


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "none"
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def undo_deadline(rec: PlanRecord, catalog: Catalog) -> datetime | None:
    """When the user's undo of a succeeded plan stops being accepted, or None if never.

    This mirrors the gateway's own check: every completed step must be reversible and within
    its window (its undo window, or its rollback TTL if later), so the plan's window closes
    when the first step's does; a read-only look-up (nothing to undo) is left out. The
    gateway re-checks on the click; this is what the page shows.
    """
    if rec.status is not PlanStatus.SUCCEEDED:
        return None
    deadlines = []
    for s in rec.steps:
        if s.status is not StepStatus.SUCCEEDED:
            continue
        spec = catalog.get(s.action)
        if spec is not None and spec.nothing_to_undo:
            continue
        if spec is None or not spec.reversible:
            return None
        times = [t for t in (s.undo_until, s.rollback_at) if t is not None]
        if not times:
            return None
        deadlines.append(max(times))
    return min(deadlines) if deadlines else None


def rollback_at(rec: PlanRecord) -> datetime | None:
    """When a rollback TTL undoes the plan by itself, or None."""
    if rec.status is not PlanStatus.SUCCEEDED:
        return None
    times = [
        s.rollback_at
        for s in rec.steps
        if s.rollback_at is not None and s.status is StepStatus.SUCCEEDED
    ]
    return min(times) if times else None


def plan_view(rec: PlanRecord, catalog: Catalog, now: datetime) -> dict[str, Any]:
    """Everything a plan card shows, in plain words."""
    m = rec.manifest
    actor = m.get("actor") or {}
    decision = rec.decision
    step_decisions = {d.get("step_id"): d for d in decision.get("steps", [])}
    steps = []
    for s in rec.steps:
        spec = catalog.get(s.action)
        params = dict(s.params)
        # Masked params (a card number, a message body) stay masked on the page too, in the
        # summary as much as in the list.
        shown = mask(params, spec.mask) if spec is not None and spec.mask else params
        summary = spec.describe(shown) if spec is not None else s.action
        diff, other = diff_rows(s.simulation)
        sd = step_decisions.get(s.step_id, {})
        steps.append(
            {
                "id": s.step_id,
                "action": s.action,
                "summary": summary,
                "params": [(k, _text(v)) for k, v in shown.items()],
                "outcome": s.outcome,
                "status": s.status.value,
                "reasons": list(sd.get("reasons", [])),
                "error": s.error,
                "diff": diff,
                "effects": other,
                "simulated": s.simulation is not None,
                "undo_until": s.undo_until,
                "rollback_at": s.rollback_at,
            }
        )
    scores = rec.assessment.get("scores", {})
    deadline = undo_deadline(rec, catalog)
    return {
        "id": rec.plan_id,
        "status": rec.status.value,
        "outcome": rec.outcome,
        "summary": "; then ".join(str(st["summary"]) for st in steps),
        "on_behalf_of": rec.on_behalf_of,
        "agent": rec.agent_id,
        "agent_name": str(actor.get("name", "")),
        "model": str(actor.get("model_version", "")),
        "intent": str(m.get("intent", "")),
        "reasoning": str(m.get("reasoning", "")),
        "scores": [(a, AXIS_LABELS[a], int(scores.get(a, 0))) for a in AXES],
        "total": rec.assessment.get("total"),
        "pattern": rec.assessment.get("pattern"),
        "assessment_reasons": list(rec.assessment.get("reasons", [])),
        "plan_reasons": list(decision.get("plan_reasons", [])),
        "approvals_required": decision.get("approvals", 0),
        "approver_roles": list(decision.get("approver_roles", [])),
        # Each approving step's own quorum (shown when there are several).
        "quorums": [q.as_dict() for q in step_quorums(rec)] if rec.outcome == "approve" else [],
        "confirm_first": rec.status is PlanStatus.AWAITING_CONFIRMATION
        and rec.outcome == "approve",
        "step_up": bool(decision.get("step_up")),
        "expires_at": rec.expires_at,
        "expires_left": left(rec.expires_at, now),
        "created_at": rec.created_at,
        "steps": steps,
        "approvals": [
            {
                "principal": a.principal,
                "kind": a.kind,
                "roles": ", ".join(a.roles),
                "comment": a.comment,
                "at": a.created_at,
                "step_up": a.step_up,
            }
            for a in rec.approvals
        ],
        "error": rec.error,
        "undo_until": deadline,
        "undo_left": left(deadline, now),
        "rollback_at": rollback_at(rec),
        "rollback_left": left(rollback_at(rec), now),
        "terminal": rec.terminal,
    }


@dataclass(frozen=True, slots=True)
class Chart:
    """An inline SVG bar chart's geometry: one bar per bucket, heights in the view box."""

    width: int
    height: int
    bars: list[dict[str, Any]]
    max_label: str


def chart(
    points: Sequence[tuple[str, float | None]],
    *,
    width: int = 360,
    height: int = 120,
    fmt: str = "{:.2f}",
    ceiling: float | None = None,
) -> Chart:
    """Lay out ``(label, value)`` points as bars (None: no data, drawn as a gap).

    Args:
        points: Buckets in time order.
        width: View box width.
        height: View box height (bars use all but 34 units, kept for the labels).
        fmt: How values are written in the bars' titles.
        ceiling: The value at full height (1.0 for rates); default the largest magnitude.
    """
    values = [abs(v) for _, v in points if v is not None]
    top = ceiling if ceiling is not None else max(values, default=0.0)
    top = top or 1.0
    n = max(len(points), 1)
    slot = width / n
    usable = height - 34  # 14 units above for the scale, 20 below for the dates
    bars = []
    for i, (label, value) in enumerate(points):
        h = 0.0 if value is None else min(abs(value), top) / top * usable
        bars.append(
            {
                "x": round(i * slot + slot * 0.15, 2),
                "y": round(14 + usable - h, 2),
                "w": round(slot * 0.7, 2),
                "h": round(h, 2),
                "label": label,
                "value": "no data" if value is None else fmt.format(value),
                "negative": value is not None and value < 0,
                "empty": value is None,
            }
        )
    return Chart(width=width, height=height, bars=bars, max_label=fmt.format(top))
