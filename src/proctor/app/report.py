"""The monthly governance review: Markdown and HTML with charts, from the audit log.

``proctor report --month YYYY-MM`` writes ``review-YYYY-MM.md`` and ``review-YYYY-MM.html``:
the KPIs and their trend against the month before, plans and acceptance per day (inline SVG,
no outside request), the most denied actions, approval latency, breaker trips, post-hoc
reviews, and the policy versions in force. It is the rollout playbook's periodic review.
"""

from __future__ import annotations

import html
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from proctor.app.kpis import compute

__all__ = ["MonthlyReport", "build_report", "month_bounds"]


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """Return ``[start, end)`` of ``YYYY-MM`` in UTC.

    Raises:
        ValueError: if ``month`` is not ``YYYY-MM``.
    """
    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"month must be YYYY-MM, not {month!r}") from None
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


@dataclass(frozen=True, slots=True)
class MonthlyReport:
    """The figures of one month, and its two renderings."""

    month: str
    figures: dict[str, Any]
    markdown: str
    html: str


def build_report(events: Iterable[Mapping[str, Any]], month: str, *, origin: str) -> MonthlyReport:
    """Compute and render the review of ``month`` from audit event bodies in log order."""
    start, end = month_bounds(month)
    prev_start, _ = month_bounds((start - timedelta(days=1)).strftime("%Y-%m"))
    bodies = [b for b in events if prev_start <= datetime.fromisoformat(b["timestamp"]) < end]
    kpis = compute(bodies, since=start, until=end)["all"]
    before = compute(bodies, since=prev_start, until=start)["all"]
    figures = _figures(bodies, start, end)
    figures["kpis"] = kpis
    figures["kpis_before"] = before
    md = _markdown(month, origin, figures)
    return MonthlyReport(
        month=month, figures=figures, markdown=md, html=_html(month, origin, figures)
    )


def _figures(bodies: list[Mapping[str, Any]], start: datetime, end: datetime) -> dict[str, Any]:
    days = (end - start).days
    proposed = [0] * days
    accepted = [0] * days
    actions: dict[str, list[str]] = {}
    routed_at: dict[str, datetime] = {}
    denied: Counter[str] = Counter()
    latency: list[float] = []
    trips: list[dict[str, Any]] = []
    reviews: Counter[str] = Counter()
    versions: dict[str, dict[str, Any]] = {}
    succeeded_day: dict[str, int] = {}
    false_plans: set[str] = set()
    for b in bodies:
        t = datetime.fromisoformat(b["timestamp"])
        if not start <= t < end:
            continue
        kind, pid = b["type"], b.get("plan_id")
        data = b.get("data") or {}
        day = (t - start).days
        if kind == "plan.submitted" and pid:
            actions[pid] = [a["api"] for a in b.get("actions_attempted") or []]
        elif kind == "plan.routed" and pid:
            if not data.get("sandbox"):
                proposed[day] += 1
            routed_at[pid] = t
            if data.get("status") == "denied":
                denied.update(set(actions.get(pid, [])))
        elif kind == "approval.granted" and pid in routed_at:
            latency.append((t - routed_at[pid]).total_seconds())
        elif kind == "plan.finished" and pid and data.get("status") == "succeeded":
            succeeded_day[pid] = day
        elif kind in ("undo.requested", "complaint.filed") or (
            kind == "review.marked" and data.get("verdict") == "wrong"
        ):
            false_plans.add(pid or "")
        if kind == "breaker.opened":
            trips.append(
                {"at": t.isoformat(), "breaker": data.get("breaker"), "reason": data.get("reason")}
            )
        elif kind == "review.sampled":
            reviews["sampled"] += 1
        elif kind == "review.marked":
            reviews[str(data.get("verdict"))] += 1
        elif kind == "policy.decided":
            v = b.get("policy_version") or "?"
            seen = versions.setdefault(
                v, {"first": t.isoformat(), "last": t.isoformat(), "plans": 0}
            )
            seen["last"] = t.isoformat()
            seen["plans"] += 1
    for pid, day in succeeded_day.items():
        if pid not in false_plans:
            accepted[day] += 1
    return {
        "days": [(start + timedelta(days=i)).strftime("%m-%d") for i in range(days)],
        "proposed_per_day": proposed,
        "accepted_per_day": accepted,
        "top_denied": denied.most_common(10),
        "approval_latency_s": {
            "count": len(latency),
            "median": round(statistics.median(latency), 1) if latency else None,
            "p90": round(sorted(latency)[int(0.9 * (len(latency) - 1))], 1) if latency else None,
        },
        "breaker_trips": trips,
        "reviews": {
            "sampled": reviews["sampled"],
            "fine": reviews["fine"],
            "wrong": reviews["wrong"],
        },
        "policy_versions": versions,
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _trend(now: float | None, before: float | None) -> str:
    if now is None or before is None:
        return ""
    delta = 100 * (now - before)
    return f" ({'+' if delta >= 0 else ''}{delta:.1f} pts)"


def _kpi_rows(f: dict[str, Any]) -> list[tuple[str, str]]:
    k, b = f["kpis"], f["kpis_before"]
    ttr = k["time_to_recovery_s"]
    return [
        (
            "Acceptance rate",
            _pct(k["acceptance_rate"]) + _trend(k["acceptance_rate"], b["acceptance_rate"]),
        ),
        (
            "False-action rate",
            _pct(k["false_action_rate"]) + _trend(k["false_action_rate"], b["false_action_rate"]),
        ),
        (
            "Time to recovery (median)",
            "n/a" if ttr["median"] is None else f"{ttr['median']} s ({ttr['count']})",
        ),
        (
            "Audit coverage",
            _pct(k["audit_coverage"]) + _trend(k["audit_coverage"], b["audit_coverage"]),
        ),
        ("Cost per action", "n/a" if k["cost_per_action"] is None else str(k["cost_per_action"])),
        ("Anomaly delta", f"{k['anomaly_delta']:+d}"),
        (
            "Plans proposed / executed",
            f"{k['counts']['proposed']} / {k['counts']['executed_plans']}",
        ),
    ]


def _markdown(month: str, origin: str, f: dict[str, Any]) -> str:
    lines = [f"# Governance review {month}", "", f"Instance `{origin}`.", "", "## KPIs", ""]
    lines += ["| KPI | value (trend vs previous month) |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in _kpi_rows(f)]
    lines += ["", "## Plans per day", "", "| day | proposed | accepted |", "|---|---|---|"]
    for d, p, a in zip(f["days"], f["proposed_per_day"], f["accepted_per_day"], strict=True):
        if p or a:
            lines.append(f"| {d} | {p} | {a} |")
    lines += ["", "## Most denied actions", ""]
    lines += [f"- `{a}`: {n}" for a, n in f["top_denied"]] or ["None."]
    lat = f["approval_latency_s"]
    lines += ["", "## Approval latency", ""]
    lines.append(
        f"{lat['count']} approvals; median {lat['median']} s, p90 {lat['p90']} s."
        if lat["count"]
        else "No approvals."
    )
    lines += ["", "## Breaker trips", ""]
    lines += [f"- {t['at']} `{t['breaker']}`: {t['reason']}" for t in f["breaker_trips"]] or [
        "None."
    ]
    r = f["reviews"]
    lines += [
        "",
        "## Post-hoc reviews",
        "",
        f"{r['sampled']} sampled, {r['fine']} fine, {r['wrong']} wrong.",
    ]
    lines += [
        "",
        "## Policy versions in force",
        "",
        "| version | first | last | plans |",
        "|---|---|---|---|",
    ]
    for v, s in f["policy_versions"].items():
        lines.append(f"| `{v[:19]}…` | {s['first']} | {s['last']} | {s['plans']} |")
    return "\n".join(lines) + "\n"


def _bars(labels: list[str], series: list[tuple[str, list[int], str]], title: str) -> str:
    """An SVG bar chart, drawn here: no chart library, no outside request."""
    width, height, pad = 720, 200, 30
    n = max(len(labels), 1)
    top = max([max(v, default=0) for _, v, _ in series] + [1])
    slot = (width - 2 * pad) / n
    bar = slot / (len(series) + 1)
    parts = [
        f'<svg role="img" aria-label="{html.escape(title)}" viewBox="0 0 {width} {height + 30}" '
        f'xmlns="http://www.w3.org/2000/svg" font-size="10">',
        f"<title>{html.escape(title)}</title>",
    ]
    for si, (name, values, color) in enumerate(series):
        for i, v in enumerate(values):
            h = (height - pad) * v / top
            x = pad + i * slot + si * bar
            parts.append(
                f'<rect x="{x:.1f}" y="{height - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{color}"><title>{html.escape(labels[i])} {html.escape(name)}: {v}'
                "</title></rect>"
            )
        parts.append(
            f'<text x="{pad + si * 120}" y="{height + 25}" fill="{color}">'
            f"■ {html.escape(name)}</text>"
        )
    for i, label in enumerate(labels):
        if i % 5 == 0:
            parts.append(
                f'<text x="{pad + i * slot:.1f}" y="{height + 12}">{html.escape(label)}</text>'
            )
    parts.append(f'<text x="2" y="{pad - 5}">{top}</text></svg>')
    return "".join(parts)


def _html(month: str, origin: str, f: dict[str, Any]) -> str:
    e = html.escape
    rows = "".join(f"<tr><th scope='row'>{e(a)}</th><td>{e(b)}</td></tr>" for a, b in _kpi_rows(f))
    chart = _bars(
        f["days"],
        [
            ("proposed", f["proposed_per_day"], "#1f5f99"),
            ("accepted", f["accepted_per_day"], "#2e7d32"),
        ],
        "Plans proposed and accepted per day",
    )
    denied = (
        "".join(f"<li><code>{e(a)}</code>: {n}</li>" for a, n in f["top_denied"])
        or "<li>None.</li>"
    )
    trips = (
        "".join(
            f"<li>{e(t['at'])} <code>{e(str(t['breaker']))}</code>: {e(str(t['reason']))}</li>"
            for t in f["breaker_trips"]
        )
        or "<li>None.</li>"
    )
    lat, r = f["approval_latency_s"], f["reviews"]
    versions = "".join(
        f"<tr><td><code>{e(v[:19])}…</code></td><td>{e(s['first'])}</td><td>{e(s['last'])}</td>"
        f"<td>{s['plans']}</td></tr>"
        for v, s in f["policy_versions"].items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Governance review {e(month)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#111}}
table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:.3rem .6rem;text-align:left}}</style>
</head><body>
<h1>Governance review {e(month)}</h1><p>Instance <code>{e(origin)}</code>.</p>
<h2>KPIs</h2><table>{rows}</table>
<h2>Plans per day</h2>{chart}
<h2>Most denied actions</h2><ul>{denied}</ul>
<h2>Approval latency</h2>
<p>{lat["count"]} approvals; median {lat["median"]} s, p90 {lat["p90"]} s.</p>
<h2>Breaker trips</h2><ul>{trips}</ul>
<h2>Post-hoc reviews</h2><p>{r["sampled"]} sampled, {r["fine"]} fine, {r["wrong"]} wrong.</p>
<h2>Policy versions in force</h2>
<table><tr><th>version</th><th>first</th><th>last</th><th>plans</th></tr>{versions}</table>
</body></html>
"""
