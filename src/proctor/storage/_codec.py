"""Rows of the SQL stores to and from Python values: plan records (JSON documents), counter sums."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson

from proctor.core.lifecycle import ApprovalRecord, PlanRecord, PlanStatus, StepRecord, StepStatus

__all__ = ["dump_plan", "load_plan", "sums_by_name"]


def sums_by_name(
    names: Sequence[str], rows: Iterable[tuple[Any, Any, Any]]
) -> dict[str, tuple[int, int]]:
    """``counter_sums``' result from ``(name, count, amount)`` rows of a ``GROUP BY name``.

    A counter with no bucket in the window has no row: it sums to (0, 0).
    """
    out = dict.fromkeys(names, (0, 0))
    for name, count, amount in rows:
        out[name] = (int(count), int(amount))
    return out


def _ts(v: datetime | None) -> str | None:
    return v.isoformat() if v is not None else None


def _dt(v: str | None) -> datetime | None:
    return datetime.fromisoformat(v) if v is not None else None


def dump_plan(p: PlanRecord) -> bytes:
    """Return the JSON document of a plan (everything but the indexed columns)."""
    return orjson.dumps(
        {
            "manifest": p.manifest,
            "assessment": p.assessment,
            "decision": p.decision,
            "steps": [
                {
                    "step_id": s.step_id,
                    "index": s.index,
                    "action": s.action,
                    "params": s.params,
                    "status": s.status.value,
                    "outcome": s.outcome,
                    "attempts": s.attempts,
                    "result": s.result,
                    "error": s.error,
                    "simulation": s.simulation,
                    "started_at": _ts(s.started_at),
                    "finished_at": _ts(s.finished_at),
                    "undo_until": _ts(s.undo_until),
                    "rollback_at": _ts(s.rollback_at),
                    "canary": s.canary,
                    "drift": s.drift,
                }
                for s in p.steps
            ],
            "approvals": [
                {
                    "principal": a.principal,
                    "kind": a.kind,
                    "roles": list(a.roles),
                    "digest": a.digest,
                    "policy_version": a.policy_version,
                    "comment": a.comment,
                    "created_at": a.created_at.isoformat(),
                    "step_up": a.step_up,
                }
                for a in p.approvals
            ],
            "review_verdict": p.review_verdict,
            "deadline": _ts(p.deadline),
            "start_by": _ts(p.start_by),
            "report_by": _ts(p.report_by),
            "compensation": p.compensation,
        },
        default=str,
    )


def load_plan(row: Any) -> PlanRecord:
    """Build a ``PlanRecord`` from a row with the plan columns and the ``doc`` document."""
    doc = orjson.loads(row["doc"])
    return PlanRecord(
        plan_id=row["plan_id"],
        digest=row["digest"],
        status=PlanStatus(row["status"]),
        agent_id=row["agent_id"],
        on_behalf_of=row["on_behalf_of"],
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
        expires_at=_dt(row["expires_at"]),
        outcome=row["outcome"],
        policy_version=row["policy_version"],
        sandbox=bool(row["sandbox"]),
        review=bool(row["review"]),
        error=row["error"],
        manifest=doc["manifest"],
        assessment=doc["assessment"],
        decision=doc["decision"],
        steps=tuple(
            StepRecord(
                step_id=s["step_id"],
                index=s["index"],
                action=s["action"],
                params=s["params"],
                status=StepStatus(s["status"]),
                outcome=s["outcome"],
                attempts=s["attempts"],
                result=s["result"],
                error=s["error"],
                simulation=s["simulation"],
                started_at=_dt(s["started_at"]),
                finished_at=_dt(s["finished_at"]),
                undo_until=_dt(s["undo_until"]),
                rollback_at=_dt(s["rollback_at"]),
                canary=s.get("canary"),
                drift=s.get("drift"),
            )
            for s in doc["steps"]
        ),
        approvals=tuple(
            ApprovalRecord(
                principal=a["principal"],
                kind=a["kind"],
                roles=tuple(a["roles"]),
                digest=a["digest"],
                policy_version=a["policy_version"],
                comment=a["comment"],
                created_at=datetime.fromisoformat(a["created_at"]),
                step_up=a["step_up"],
            )
            for a in doc["approvals"]
        ),
        review_verdict=doc.get("review_verdict"),
        deadline=_dt(doc.get("deadline")),
        start_by=_dt(doc.get("start_by")),
        report_by=_dt(doc.get("report_by")),
        compensation=doc.get("compensation"),
        lease_owner=row["lease_owner"],
        lease_until=_dt(row["lease_until"]),
    )
