"""Rich rendering and JSON shapes shared by the CLI commands."""

from __future__ import annotations

import json
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from proctor.core.assessment import AXES
from proctor.core.lifecycle import PlanRecord
from proctor.core.ports import EventRow

__all__ = ["console", "plan_json", "print_json", "render_plan", "render_plans", "render_scores"]

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

_STATUS_STYLE = {
    "succeeded": "green",
    "running": "cyan",
    "awaiting_confirmation": "yellow",
    "awaiting_approval": "yellow",
    "denied": "red",
    "rejected": "red",
    "failed": "red",
    "expired": "magenta",
    "compensated": "magenta",
    "undone": "blue",
    "simulated": "blue",
}
_OUTCOME_STYLE = {"execute": "green", "confirm": "yellow", "approve": "yellow", "deny": "red"}


def print_json(obj: Any) -> None:
    """Print one JSON document on stdout (no Rich markup)."""
    print(json.dumps(obj, indent=2, default=str))


def plan_json(rec: PlanRecord, *, events: list[EventRow] | None = None) -> dict[str, Any]:
    """Return the JSON shape of ``proctor submit --json`` and ``show --json``."""
    d = rec.decision
    out: dict[str, Any] = {
        "plan_id": rec.plan_id,
        "status": rec.status.value,
        "outcome": rec.outcome,
        "digest": rec.digest,
        "policy_version": rec.policy_version,
        "agent_id": rec.agent_id,
        "on_behalf_of": rec.on_behalf_of,
        "created_at": rec.created_at.isoformat(),
        "expires_at": rec.expires_at.isoformat() if rec.expires_at else None,
        "assessment": {
            "scores": rec.assessment["scores"],
            "total": rec.assessment["total"],
            "pattern": rec.assessment["pattern"],
            "reasons": rec.assessment["reasons"],
        },
        "reasons": list(d["plan_reasons"])
        + [f"{s['step_id']}: {r}" for s in d["steps"] for r in s["reasons"]],
        "approvals_required": d["approvals"],
        "approver_roles": d["approver_roles"],
        "step_up": d["step_up"],
        "dry_run": d["dry_run"],
        "sandbox": rec.sandbox,
        "review": rec.review,
        "error": rec.error,
        "steps": [
            {
                "id": s.step_id,
                "action": s.action,
                "outcome": s.outcome,
                "status": s.status.value,
                "result": s.result,
                "error": s.error,
                "simulation": s.simulation,
                "undo_until": s.undo_until.isoformat() if s.undo_until else None,
            }
            for s in rec.steps
        ],
        "approvals": [
            {
                "principal": a.principal,
                "kind": a.kind,
                "roles": list(a.roles),
                "comment": a.comment,
                "at": a.created_at.isoformat(),
            }
            for a in rec.approvals
        ],
    }
    if events is not None:
        out["events"] = [
            {"seq": e.seq, "type": e.type, "timestamp": e.timestamp, "step_id": e.step_id}
            for e in events
        ]
    return out


def render_scores(scores: dict[str, int], total: int, pattern: str) -> Table:
    """Return a table of the five axes with bars."""
    table = Table(title=f"Assessment: total {total} → {pattern}", title_justify="left")
    table.add_column("axis")
    table.add_column("score", justify="right")
    table.add_column("")
    for axis in AXES:
        v = scores[axis]
        table.add_row(axis, str(v), "█" * v + "·" * (5 - v))
    return table


def render_plan(rec: PlanRecord, *, events: list[EventRow] | None = None) -> None:
    """Print a plan: status, decision, scores, steps and (optionally) its events."""
    style = _STATUS_STYLE.get(rec.status.value, "white")
    o_style = _OUTCOME_STYLE.get(rec.outcome, "white")
    console.print(
        f"[bold]{rec.plan_id}[/bold]  status [{style}]{rec.status.value}[/{style}]  "
        f"outcome [{o_style}]{rec.outcome}[/{o_style}]"
    )
    console.print(
        f"agent {rec.agent_id} on behalf of {rec.on_behalf_of}; "
        f"intent: {rec.manifest.get('intent', '')}"
    )
    a = rec.assessment
    console.print(render_scores(a["scores"], a["total"], a["pattern"]))
    d = rec.decision
    for r in d["plan_reasons"]:
        console.print(f"  [red]plan[/red]: {r}")
    steps = Table(title="Steps", title_justify="left")
    for col in ("id", "action", "outcome", "status", "detail"):
        steps.add_column(col)
    for s, sd in zip(rec.steps, d["steps"], strict=True):
        detail = "; ".join(sd["reasons"])
        if s.error:
            detail += f" | error: {s.error}"
        if s.undo_until:
            detail += f" | undo until {s.undo_until.strftime('%Y-%m-%d %H:%M:%S')}"
        steps.add_row(
            s.step_id,
            s.action,
            f"[{_OUTCOME_STYLE.get(s.outcome, 'white')}]{s.outcome}[/]",
            f"[{_STATUS_STYLE.get(s.status.value, 'white')}]{s.status.value}[/]",
            detail,
        )
    console.print(steps)
    if rec.status.value == "awaiting_approval":
        roles = ", ".join(d["approver_roles"]) or "any approver"
        extra = " with step-up (TOTP)" if d["step_up"] else ""
        console.print(
            f"[yellow]waiting for {d['approvals']} approval(s) from {roles}{extra}"
            f" until {rec.expires_at.isoformat() if rec.expires_at else '-'}[/yellow]"
        )
        console.print(f"  next: proctor approve {rec.plan_id} --as NAME --role ROLE")
    elif rec.status.value == "awaiting_confirmation":
        console.print(f"[yellow]waiting for {rec.on_behalf_of} to confirm[/yellow]")
        console.print(f"  next: proctor confirm {rec.plan_id} --as {rec.on_behalf_of}")
    if rec.approvals:
        console.print(
            "approvals: "
            + ", ".join(f"{a.kind} by {a.principal} ({', '.join(a.roles)})" for a in rec.approvals)
        )
    if events:
        table = Table(title="Audit events", title_justify="left")
        for col in ("seq", "type", "step", "time"):
            table.add_column(col)
        for e in events:
            table.add_row(str(e.seq), e.type, e.step_id or "", e.timestamp)
        console.print(table)


def render_plans(plans: list[PlanRecord]) -> None:
    """Print a table of plans."""
    table = Table(title=f"{len(plans)} plan(s)", title_justify="left")
    for col in ("plan", "created", "agent", "for", "outcome", "status", "steps"):
        table.add_column(col)
    for p in plans:
        table.add_row(
            p.plan_id,
            p.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            p.agent_id,
            p.on_behalf_of,
            f"[{_OUTCOME_STYLE.get(p.outcome, 'white')}]{p.outcome}[/]",
            f"[{_STATUS_STYLE.get(p.status.value, 'white')}]{p.status.value}[/]",
            ", ".join(s.action for s in p.steps),
        )
    console.print(table)


def event_json(e: EventRow) -> dict[str, Any]:
    """Return the parsed event body."""
    return orjson.loads(e.body)  # type: ignore[no-any-return]
