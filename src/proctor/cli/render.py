"""Rich rendering and JSON shapes shared by the CLI commands."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import orjson
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from proctor.core.approvals import confirmation_required, step_quorums
from proctor.core.assessment import AXES
from proctor.core.lifecycle import PlanRecord
from proctor.core.ports import EventRow

__all__ = [
    "clean",
    "console",
    "err_console",
    "esc",
    "event_json",
    "plan_json",
    "print_json",
    "render_plan",
    "render_plan_json",
    "render_plans",
    "render_plans_json",
    "render_scores",
    "split_reasons",
    "when",
    "whole_column",
]

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

# C0 controls (ESC starts ANSI sequences; CR and BS overwrite what came before), DEL, C1
# controls (U+009B is a one-byte CSI) and the Unicode bidirectional overrides and isolates,
# which reorder what the reader sees ("Trojan Source").
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_KEEP_LINES = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(value: object, *, keep_lines: bool = False) -> str:
    r"""Return ``value`` as text a terminal shows as it is: control characters made visible.

    Every control character becomes its escape (ESC becomes the four characters ``\x1b``),
    so an agent's, a user's or a file's text cannot send ANSI sequences to the terminal,
    overwrite what was printed before it, or forge lines. ``keep_lines`` keeps newlines and
    tabs, for text that is several lines by design (an error's diagnostics).
    """
    return (_CONTROL_KEEP_LINES if keep_lines else _CONTROL).sub(_visible, str(value))


def esc(value: object) -> str:
    """Return ``value`` ready to embed in Rich markup, printed literally.

    Every value the CLI prints that it did not write itself (plan text, names, reasons,
    errors, config and file contents) goes through this: Rich would otherwise read ``[...]``
    in it as markup, so an agent could crash the command (``[/]``), hide text from the
    approver (``[conceal]``) or add links. It also makes control characters visible
    (``clean``).
    """
    return escape(clean(value))


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
        # Per approving step: its own quorum and who has counted towards it so far (the two
        # fields above summarise them: the largest count, the union of the roles).
        "step_quorums": (
            [q.as_dict() for q in step_quorums(rec)] if rec.outcome == "approve" else []
        ),
        # Her confirmation comes first, also when approvers decide after her.
        "confirmation_required": rec.outcome in ("confirm", "approve") and confirmation_required(d),
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


def _quorum_line(q: dict[str, Any]) -> str:
    """One approving step's quorum: ``s1: 1 of 2 approval(s) from finance (fiona)``."""
    roles = esc(", ".join(q["approver_roles"])) or "any approver"
    who = esc(", ".join(q["approved_by"]))
    done = " [green]met[/green]" if q["met"] else ""
    count = min(len(q["approved_by"]), q["approvals_required"])
    by = f" ({who})" if who else ""
    step = esc(q["step_id"])
    return f"{step}: {count} of {q['approvals_required']} approval(s) from {roles}{by}{done}"


def render_scores(scores: dict[str, int], total: int, pattern: str) -> Table:
    """Return a table of the five axes with bars."""
    table = Table(title=f"Assessment: total {total} → {esc(pattern)}", title_justify="left")
    table.add_column("axis")
    table.add_column("score", justify="right")
    table.add_column("")
    for axis in AXES:
        v = scores[axis]
        table.add_row(axis, str(v), "█" * v + "·" * (5 - v))
    return table


def render_plan(rec: PlanRecord, *, events: list[EventRow] | None = None) -> None:
    """Print a plan: status, decision, scores, steps and (optionally) its events."""
    d = rec.decision
    render_plan_json(
        plan_json(rec, events=events or None),
        intent=str(rec.manifest.get("intent", "")),
        plan_reasons=list(d["plan_reasons"]),
        step_reasons=[list(sd["reasons"]) for sd in d["steps"]],
    )


def split_reasons(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Split a plan JSON's flat ``reasons`` into the plan's and each step's.

    ``plan_json`` lists the plan's reasons first, then every step's as ``"STEP_ID: reason"``
    in step order; read from the end, step by step, the prefixes are unambiguous.
    """
    reasons = list(doc.get("reasons") or [])
    steps = doc.get("steps") or []
    per_step: list[list[str]] = [[] for _ in steps]
    end = len(reasons)
    for i in range(len(steps) - 1, -1, -1):
        prefix = f"{steps[i]['id']}: "
        start = end
        while start > 0 and reasons[start - 1].startswith(prefix):
            start -= 1
        per_step[i] = [r.removeprefix(prefix) for r in reasons[start:end]]
        end = start
    return reasons[:end], per_step


def when(iso: str | None) -> str:
    """An ISO time as ``YYYY-MM-DD HH:MM:SS`` for a table (``--json`` keeps the ISO form)."""
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S") if iso else ""


def whole_column(table: Table, header: str, values: list[str], **options: Any) -> None:
    """Add a column that a narrow terminal never cuts (``…``) nor folds: ids and statuses.

    A reader copies an id into the next command (``tokens revoke ID``) and reads a status
    to decide: ``tok_5cd71bf53…`` or ``needs_atte…`` at 80 columns was useless. Rich narrows
    the other columns instead (give them ``overflow="fold"`` so they lose nothing either).
    ``values`` are the plain cell texts (no markup).
    """
    width = max([cell_len(header), *(cell_len(v) for v in values)])
    table.add_column(header, no_wrap=True, min_width=width, **options)


def render_plan_json(
    doc: dict[str, Any],
    *,
    intent: str | None = None,
    plan_reasons: list[str] | None = None,
    step_reasons: list[list[str]] | None = None,
    server: str | None = None,
) -> None:
    """Print a plan given as its JSON (``plan_json``, or the HTTP API's answer).

    Args:
        doc: The plan JSON; its ``events``, if any, are listed too.
        intent: The manifest's intent (not part of the plan JSON), printed when given.
        plan_reasons: The plan's own reasons; default: split from ``doc["reasons"]``.
        step_reasons: Each step's reasons; default: split from ``doc["reasons"]``.
        server: The server's URL in remote mode: the hints name it instead of ``--as``.
    """
    if plan_reasons is None or step_reasons is None:
        plan_reasons, step_reasons = split_reasons(doc)
    # Everything below the plan's JSON holds comes from the agent, the user or the server:
    # it goes through esc() into the markup (see esc).
    status, outcome, plan_id = doc["status"], doc["outcome"], doc["plan_id"]
    style = _STATUS_STYLE.get(status, "white")
    o_style = _OUTCOME_STYLE.get(outcome, "white")
    console.print(
        f"[bold]{esc(plan_id)}[/bold]  status [{style}]{esc(status)}[/{style}]  "
        f"outcome [{o_style}]{esc(outcome)}[/{o_style}]"
    )
    who = f"agent {esc(doc['agent_id'])} on behalf of {esc(doc['on_behalf_of'])}"
    console.print(who if intent is None else f"{who}; intent: {esc(intent)}")
    a = doc["assessment"]
    console.print(render_scores(a["scores"], a["total"], a["pattern"]))
    for r in plan_reasons:
        console.print(f"  [red]plan[/red]: {esc(r)}")
    steps = Table(title="Steps", title_justify="left")
    for col in ("id", "action", "outcome", "status", "detail"):
        steps.add_column(col)
    for s, reasons in zip(doc["steps"], step_reasons, strict=True):
        detail = esc("; ".join(reasons))
        if s["error"]:
            detail += f" | error: {esc(s['error'])}"
        if s["undo_until"] and s["status"] == "succeeded":
            # A compensated, failed or undone step keeps its old deadline in the record;
            # only a succeeded step can still be undone.
            detail += f" | undo until {when(s['undo_until'])}"
        steps.add_row(
            esc(s["id"]),
            esc(s["action"]),
            f"[{_OUTCOME_STYLE.get(s['outcome'], 'white')}]{esc(s['outcome'])}[/]",
            f"[{_STATUS_STYLE.get(s['status'], 'white')}]{esc(s['status'])}[/]",
            detail,
        )
    console.print(steps)
    target = f" --server {server}" if server else ""
    quorums = doc.get("step_quorums") or []
    if status == "awaiting_approval":
        roles = esc(", ".join(doc["approver_roles"])) or "any approver"
        extra = " with step-up (TOTP)" if doc["step_up"] else ""
        if len(quorums) > 1:
            console.print(
                f"[yellow]waiting for approvals{extra} until "
                f"{esc(doc['expires_at'] or '-')}:[/yellow]"
            )
            for q in quorums:
                console.print(f"  {_quorum_line(q)}")
        else:
            console.print(
                f"[yellow]waiting for {esc(doc['approvals_required'])} approval(s) from {roles}"
                f"{extra} until {esc(doc['expires_at'] or '-')}[/yellow]"
            )
        # Step-up: the approver's current code from her authenticator (`proctor totp enrol`).
        otp = " --otp CODE" if doc["step_up"] else ""
        if server:
            console.print(
                f"  next: proctor approve {esc(plan_id)}{esc(target)}{otp} (an approver's token)"
            )
        else:
            console.print(f"  next: proctor approve {esc(plan_id)} --as NAME --role ROLE{otp}")
    elif status == "awaiting_confirmation":
        user = esc(doc["on_behalf_of"])
        console.print(f"[yellow]waiting for {user} to confirm[/yellow]")
        if quorums:
            console.print("  then for the approvers:")
            for q in quorums:
                console.print(f"  {_quorum_line(q)}")
        if server:
            console.print(f"  next: proctor confirm {esc(plan_id)}{esc(target)} ({user}'s token)")
        else:
            console.print(f"  next: proctor confirm {esc(plan_id)} --as {user}")
    if doc["approvals"]:
        console.print(
            "approvals: "
            + ", ".join(
                esc(f"{a['kind']} by {a['principal']} ({', '.join(a['roles'])})")
                for a in doc["approvals"]
            )
        )
    events = doc.get("events")
    if events:
        table = Table(title="Audit events", title_justify="left")
        for col in ("seq", "type", "step", "time"):
            table.add_column(col)
        for e in events:
            table.add_row(
                esc(e["seq"]), esc(e["type"]), esc(e.get("step_id") or ""), esc(e["timestamp"])
            )
        console.print(table)


def render_plans(plans: list[PlanRecord]) -> None:
    """Print a table of plans."""
    render_plans_json([plan_json(p) for p in plans])


def render_plans_json(plans: list[dict[str, Any]]) -> None:
    """Print a table of plans given as their JSON (``plan_json``, or the HTTP API's)."""
    table = Table(title=f"{len(plans)} plan(s)", title_justify="left")
    whole_column(table, "plan", [p["plan_id"] for p in plans])
    table.add_column("created", overflow="fold")
    table.add_column("agent", overflow="fold")
    table.add_column("for", overflow="fold")
    whole_column(table, "outcome", [p["outcome"] for p in plans])
    whole_column(table, "status", [p["status"] for p in plans])
    table.add_column("steps", overflow="fold")
    for p in plans:
        table.add_row(
            esc(p["plan_id"]),
            when(p["created_at"]),
            esc(p["agent_id"]),
            esc(p["on_behalf_of"]),
            f"[{_OUTCOME_STYLE.get(p['outcome'], 'white')}]{esc(p['outcome'])}[/]",
            f"[{_STATUS_STYLE.get(p['status'], 'white')}]{esc(p['status'])}[/]",
            esc(", ".join(s["action"] for s in p["steps"])),
        )
    console.print(table)


def event_json(e: EventRow) -> dict[str, Any]:
    """Return the parsed event body."""
    return orjson.loads(e.body)  # type: ignore[no-any-return]
