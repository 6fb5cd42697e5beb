"""The monthly governance review: Markdown and HTML with charts, from the audit log.

``proctor report --month YYYY-MM`` writes ``review-YYYY-MM.md`` and ``review-YYYY-MM.html``,
the rollout playbook's periodic review:

- the KPIs and their trend: against the month before, and week by week inside the month
  (a line chart of acceptance and false-action rates);
- the KPIs per agent;
- plans proposed and accepted per day (a bar chart);
- the most denied actions;
- approval and confirmation latency (from routing to the decisive approval), with a chart
  of its distribution;
- breaker trips and kill switches engaged;
- the plans sampled for post-hoc review, with their verdicts;
- the policy versions in force.

Everything is as the log stood at the end of the month, so a review regenerated later gives
the same figures. Charts are inline SVG drawn here: the page loads nothing from anywhere
(no script, no stylesheet, no font, no image), so it can be archived and opened offline.
"""

from __future__ import annotations

import html
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from proctor.app.kpis import compute, look_back
from proctor.core.approvals import quorum_requirements, tally

__all__ = ["MonthlyReport", "build_report", "month_bounds"]

# Events before the previous month still needed: submissions and decisions of plans that
# ran in the month after a long wait (their provenance). Anomalies are kept from the
# previous month's own look-back (its anomaly delta), routings and approvals of plans that
# waited into the month (approval latency): see ``build_report``.
_KEEP_BEFORE = frozenset({"plan.submitted", "policy.decided"})
_LATENCY_BUCKETS = (60, 300, 900, 3600, 4 * 3600, 86400)  # seconds: 1 min ... 1 day


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """Return ``[start, end)`` of ``YYYY-MM`` in UTC.

    Raises:
        ValueError: if ``month`` is not ``YYYY-MM`` from 1970-02 to 9999-11 (the review
            compares with the month before; the log's timestamps are Unix-era UTC; the end
            of 9999-12 is past the last instant a ``datetime`` holds).
    """
    try:
        if len(month) != 7:
            raise ValueError(month)
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"month must be YYYY-MM, not {month!r}") from None
    if start < datetime(1970, 2, 1, tzinfo=UTC):
        raise ValueError(f"month must be 1970-02 or later, not {month!r}")
    if start.year == 9999 and start.month == 12:
        raise ValueError(f"month must be 9999-11 or earlier, not {month!r}")
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
    """Compute and render the review of ``month`` from audit event bodies in log order.

    Raises:
        ValueError: if ``month`` is not ``YYYY-MM``.
    """
    start, end = month_bounds(month)
    prev_start, _ = month_bounds((start - timedelta(days=1)).strftime("%Y-%m"))
    bodies = []
    # Plans routed before the previous month that still waited for a human when this month
    # began (an approval TTL longer than a month): their routing and approvals are what the
    # latency of an approval in this month is measured from. Bounded by each plan's own
    # deadline (``expires_at``): nothing else of theirs is kept.
    waiting: set[str] = set()
    # The previous month's anomaly delta compares it with the period of its length before.
    look_back_from = look_back(prev_start, start - prev_start)
    for b in events:
        t = datetime.fromisoformat(b["timestamp"])
        if t >= end:
            continue
        kind, pid = b["type"], b.get("plan_id")
        kept = t >= prev_start or kind in _KEEP_BEFORE
        if kept or (kind == "anomaly.detected" and t >= look_back_from):
            bodies.append(b)
        elif kind == "plan.routed" and pid and _waits_past(b, start):
            waiting.add(pid)
            bodies.append(b)
        elif kind in ("approval.granted", "confirmation.granted") and pid in waiting:
            bodies.append(b)
    figures = _figures(bodies, start, end)
    figures["kpis"] = compute(bodies, since=start, until=end)["all"]
    # The month before and each week are judged as of the month's end, like the month:
    # a complaint on the 20th about a plan of the 2nd belongs to the first week's figures.
    figures["kpis_before"] = compute(bodies, since=prev_start, until=start, as_of=end)["all"]
    figures["kpis_by_agent"] = compute(bodies, since=start, until=end, by="agent")
    figures["weeks"] = [
        {"label": f"{lo:%m-%d}-{hi - timedelta(days=1):%m-%d}", **_weekly(bodies, lo, hi, end)}
        for lo, hi in _weeks(start, end)
    ]
    md = _markdown(month, origin, figures)
    return MonthlyReport(
        month=month, figures=figures, markdown=md, html=_html(month, origin, figures)
    )


def _waits_past(routed: Mapping[str, Any], at: datetime) -> bool:
    """Whether a ``plan.routed`` event left its plan waiting for a human past ``at``."""
    expires = (routed.get("data") or {}).get("expires_at")
    return isinstance(expires, str) and datetime.fromisoformat(expires) > at


def _quorum(decided: Mapping[str, Any]) -> tuple[tuple[str, int, tuple[str, ...]], ...]:
    """Each approving step's quorum ``(step_id, count, roles)``, from ``policy.decided``."""
    decision = (decided.get("data") or {}).get("decision") or {}
    try:
        return quorum_requirements(decision)
    except (KeyError, TypeError, ValueError):
        return (("", 1, ()),)


def _weeks(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """Days 1-7, 8-14, 15-21, 22-28 and the rest (if any) of the month."""
    out = []
    lo = start
    while lo < end:
        hi = min(lo + timedelta(days=7), end)
        out.append((lo, hi))
        lo = hi
    return out


def _weekly(
    bodies: list[Mapping[str, Any]], lo: datetime, hi: datetime, end: datetime
) -> dict[str, Any]:
    k = compute(bodies, since=lo, until=hi, as_of=end)["all"]
    return {
        "acceptance_rate": k["acceptance_rate"],
        "false_action_rate": k["false_action_rate"],
        "proposed": k["counts"]["proposed"],
        "executed_plans": k["counts"]["executed_plans"],
    }


def _latency(values: Sequence[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "median": round(statistics.median(ordered), 1) if ordered else None,
        # Nearest rank (the smallest value with at least 90% of the values at or below it).
        "p90": round(ordered[max(0, -(-9 * len(ordered) // 10) - 1)], 1) if ordered else None,
    }


def _histogram(values: Sequence[float]) -> list[tuple[str, int]]:
    labels = ["≤1 min", "≤5 min", "≤15 min", "≤1 h", "≤4 h", "≤1 day", ">1 day"]
    counts = [0] * len(labels)
    for v in values:
        i = next((i for i, b in enumerate(_LATENCY_BUCKETS) if v <= b), len(_LATENCY_BUCKETS))
        counts[i] += 1
    return list(zip(labels, counts, strict=True))


def _figures(bodies: list[Mapping[str, Any]], start: datetime, end: datetime) -> dict[str, Any]:
    days = (end - start).days
    proposed = [0] * days
    accepted = [0] * days
    plans: dict[str, dict[str, Any]] = {}
    routed_at: dict[str, datetime] = {}  # any time before the month's end
    quorum: dict[str, tuple[tuple[str, int, tuple[str, ...]], ...]] = {}
    votes: dict[str, dict[str, frozenset[str]]] = {}  # plan -> approver -> roles held
    met: set[str] = set()  # plans whose quorum was met
    denied: Counter[str] = Counter()
    approvals: list[float] = []
    confirmations: list[float] = []
    trips: list[dict[str, Any]] = []
    kills: list[dict[str, Any]] = []
    sampled: dict[str, dict[str, Any]] = {}
    versions: dict[str, dict[str, Any]] = {}
    succeeded_day: dict[str, int] = {}
    false_plans: set[str] = set()
    reviewed_wrong: set[str] = set()
    for b in bodies:
        t = datetime.fromisoformat(b["timestamp"])
        kind, pid = b["type"], b.get("plan_id")
        data = b.get("data") or {}
        if kind == "plan.submitted" and pid:
            plans[pid] = {
                "actions": [a["api"] for a in b.get("actions_attempted") or []],
                "agent": (b.get("actor") or {}).get("agent_id"),
            }
        elif kind == "policy.decided" and pid:
            quorum[pid] = _quorum(b)
        elif kind == "plan.routed" and pid:
            # Kept from before the month too: a wait that began last month ends in this one.
            routed_at[pid] = t
        # Approval latency runs to the decisive approval, the one that met the quorum (one
        # sample per plan): the earlier approvers' waits are part of it, not samples.
        decisive = (
            kind == "approval.granted"
            and pid is not None
            and _decisive(pid, data, quorum, votes, met)
        )
        if not start <= t < end:
            continue
        day = (t - start).days
        if kind == "plan.routed" and pid and not data.get("after"):
            # A plan routed on to its approvers after its user confirmed was proposed once.
            if not data.get("sandbox"):
                proposed[day] += 1
            if data.get("status") == "denied":
                denied.update(set(plans.get(pid, {}).get("actions", [])))
        elif decisive and pid in routed_at:
            approvals.append((t - routed_at[pid]).total_seconds())
        elif kind == "confirmation.granted" and pid in routed_at:
            confirmations.append((t - routed_at[pid]).total_seconds())
        elif kind == "plan.finished" and pid and data.get("status") == "succeeded":
            succeeded_day[pid] = day
        elif kind in ("undo.requested", "complaint.filed"):
            false_plans.add(pid or "")
        elif kind == "review.marked" and pid:
            # The last verdict wins, as in the KPIs: ``wrong`` corrected to ``fine`` is fine.
            if data.get("verdict") == "wrong":
                reviewed_wrong.add(pid)
            else:
                reviewed_wrong.discard(pid)
        if kind == "breaker.opened":
            trips.append(
                {"at": t.isoformat(), "breaker": data.get("breaker"), "reason": data.get("reason")}
            )
        elif kind == "kill.engaged":
            kills.append(
                {
                    "at": t.isoformat(),
                    "switch": data.get("switch"),
                    "by": data.get("by"),
                    "reason": data.get("reason"),
                }
            )
        elif kind == "review.sampled" and pid:
            p = plans.get(pid, {})
            sampled[pid] = {
                "plan_id": pid,
                "at": t.isoformat(),
                "agent": p.get("agent"),
                "actions": p.get("actions", []),
                "verdict": None,
                "reviewer": None,
            }
        elif kind == "review.marked" and pid in sampled:
            sampled[pid] |= {"verdict": data.get("verdict"), "reviewer": data.get("reviewer")}
        elif kind == "policy.decided":
            v = b.get("policy_version") or "?"
            seen = versions.setdefault(
                v, {"first": t.isoformat(), "last": t.isoformat(), "plans": 0}
            )
            seen["last"] = t.isoformat()
            seen["plans"] += 1
    for pid, day in succeeded_day.items():
        if pid not in false_plans and pid not in reviewed_wrong:
            accepted[day] += 1
    verdicts = Counter(s["verdict"] or "pending" for s in sampled.values())
    return {
        "days": [(start + timedelta(days=i)).strftime("%m-%d") for i in range(days)],
        "proposed_per_day": proposed,
        "accepted_per_day": accepted,
        "top_denied": denied.most_common(10),
        "approval_latency_s": _latency(approvals),
        "confirmation_latency_s": _latency(confirmations),
        "latency_histogram": {
            "approval": _histogram(approvals),
            "confirmation": _histogram(confirmations),
        },
        "breaker_trips": trips,
        "kill_switches": kills,
        "reviews": {
            "sampled": len(sampled),
            "fine": verdicts["fine"],
            "wrong": verdicts["wrong"],
            "pending": verdicts["pending"],
        },
        "sampled_reviews": list(sampled.values()),
        "policy_versions": versions,
    }


def _decisive(
    pid: str,
    granted: Mapping[str, Any],
    quorum: Mapping[str, tuple[tuple[str, int, tuple[str, ...]], ...]],
    votes: dict[str, dict[str, frozenset[str]]],
    met: set[str],
) -> bool:
    """Count an ``approval.granted`` of ``pid``; True if it is the one that met the quorum.

    The gateway emits the event only for an approver it accepted (a distinct person, neither
    requester nor beneficiary, holding one of the roles), and the plan runs the moment every
    approving step's quorum is met (``proctor.core.approvals.step_quorums``): the same count
    over the events finds that approval.
    """
    roles = granted.get("roles") or ()
    who = str(granted.get("principal"))
    held = votes.setdefault(pid, {})
    held[who] = frozenset(r for r in roles if type(r) is str)
    if pid in met:
        return False
    needed = quorum.get(pid, (("", 1, ()),))
    if not all(q.met for q in tally(needed, held.items())):
        return False
    met.add(pid)
    return True


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


def _agent_rows(f: dict[str, Any]) -> list[tuple[str, ...]]:
    return [
        (
            agent,
            str(k["counts"]["proposed"]),
            _pct(k["acceptance_rate"]),
            _pct(k["false_action_rate"]),
            _pct(k["audit_coverage"]),
            f"{k['anomaly_delta']:+d}",
        )
        for agent, k in f["kpis_by_agent"].items()
    ]


_AGENT_HEAD = ("agent", "proposed", "acceptance", "false actions", "coverage", "anomaly Δ")


def _lat_line(name: str, lat: Mapping[str, Any]) -> str:
    if not lat["count"]:
        return f"No {name}s."
    return f"{lat['count']} {name}s; median {lat['median']} s, p90 {lat['p90']} s."


def _md_escape(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _markdown(month: str, origin: str, f: dict[str, Any]) -> str:
    lines = [f"# Governance review {month}", "", f"Instance `{origin}`.", "", "## KPIs", ""]
    lines += ["| KPI | value (trend vs previous month) |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in _kpi_rows(f)]
    lines += ["", "### Week by week", "", "| week | proposed | acceptance | false actions |"]
    lines.append("|---|---|---|---|")
    for w in f["weeks"]:
        lines.append(
            f"| {w['label']} | {w['proposed']} | {_pct(w['acceptance_rate'])} "
            f"| {_pct(w['false_action_rate'])} |"
        )
    lines += ["", "### Per agent", "", "| " + " | ".join(_AGENT_HEAD) + " |"]
    lines.append("|" + "---|" * len(_AGENT_HEAD))
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in _agent_rows(f)]
    lines += ["", "## Plans per day", "", "| day | proposed | accepted |", "|---|---|---|"]
    for d, p, a in zip(f["days"], f["proposed_per_day"], f["accepted_per_day"], strict=True):
        if p or a:
            lines.append(f"| {d} | {p} | {a} |")
    lines += ["", "## Most denied actions", ""]
    lines += [f"- `{a}`: {n}" for a, n in f["top_denied"]] or ["None."]
    lines += ["", "## Approval latency", ""]
    lines.append(_lat_line("approval", f["approval_latency_s"]))
    lines += ["", _lat_line("confirmation", f["confirmation_latency_s"])]
    lines += ["", "## Breaker trips", ""]
    lines += [
        f"- {t['at']} `{t['breaker']}`: {_md_escape(t['reason'])}" for t in f["breaker_trips"]
    ] or ["None."]
    lines += ["", "## Kill switches engaged", ""]
    lines += [
        f"- {k['at']} `{k['switch']}` by {_md_escape(k['by'])}: {_md_escape(k['reason'])}"
        for k in f["kill_switches"]
    ] or ["None."]
    r = f["reviews"]
    lines += [
        "",
        "## Post-hoc reviews",
        "",
        f"{r['sampled']} sampled: {r['fine']} fine, {r['wrong']} wrong, {r['pending']} pending.",
    ]
    if f["sampled_reviews"]:
        lines += ["", "| plan | agent | actions | verdict | reviewer |", "|---|---|---|---|---|"]
        for s in f["sampled_reviews"]:
            lines.append(
                f"| `{s['plan_id']}` | {_md_escape(s['agent'])} | "
                f"{_md_escape(', '.join(s['actions']))} | {s['verdict'] or 'pending'} | "
                f"{_md_escape(s['reviewer'] or '')} |"
            )
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


def _svg_open(title: str, width: int, height: int) -> list[str]:
    t = html.escape(title)
    return [
        f'<svg role="img" aria-label="{t}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" font-size="10">',
        f"<title>{t}</title>",
    ]


def _bars(labels: list[str], series: list[tuple[str, list[int], str]], title: str) -> str:
    """An SVG bar chart, drawn here: no chart library, no outside request."""
    width, height, pad = 720, 200, 30
    n = max(len(labels), 1)
    top = max([max(v, default=0) for _, v, _ in series] + [1])
    slot = (width - 2 * pad) / n
    bar = slot / (len(series) + 1)
    parts = _svg_open(title, width, height + 30)
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
    step = max(1, n // 6)
    for i, label in enumerate(labels):
        if i % step == 0:
            parts.append(
                f'<text x="{pad + i * slot:.1f}" y="{height + 12}">{html.escape(label)}</text>'
            )
    parts.append(f'<text x="2" y="{pad - 5}">{top}</text></svg>')
    return "".join(parts)


def _lines(labels: list[str], series: list[tuple[str, list[float | None], str]], title: str) -> str:
    """An SVG line chart of rates (0-100%); a missing value breaks the line."""
    width, height, pad = 720, 200, 40
    n = max(len(labels), 1)
    slot = (width - 2 * pad) / max(n - 1, 1)
    parts = _svg_open(title, width, height + 40)
    for pct in (0, 50, 100):
        y = height - (height - pad) * pct / 100
        parts.append(
            f'<line x1="{pad}" x2="{width - pad}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ccc"/>'
            f'<text x="2" y="{y + 3:.1f}">{pct}%</text>'
        )
    for si, (name, values, color) in enumerate(series):
        run: list[str] = []
        for i, v in enumerate([*values, None]):
            if v is not None:
                x, y = pad + i * slot, height - (height - pad) * v
                run.append(f"{x:.1f},{y:.1f}")
                parts.append(
                    f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}">'
                    f"<title>{html.escape(labels[i])} {html.escape(name)}: {100 * v:.1f}%"
                    "</title></circle>"
                )
            elif run:
                parts.append(
                    f'<polyline points="{" ".join(run)}" fill="none" stroke="{color}" '
                    'stroke-width="2"/>'
                )
                run = []
        parts.append(
            f'<text x="{pad + si * 160}" y="{height + 35}" fill="{color}">'
            f"■ {html.escape(name)}</text>"
        )
    for i, label in enumerate(labels):
        parts.append(
            f'<text x="{pad + i * slot:.1f}" y="{height + 15}">{html.escape(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    e = html.escape
    out = "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
    out += "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return out + "</table>"


def _html(month: str, origin: str, f: dict[str, Any]) -> str:
    e = html.escape
    rows = "".join(f"<tr><th scope='row'>{e(a)}</th><td>{e(b)}</td></tr>" for a, b in _kpi_rows(f))
    per_day = _bars(
        f["days"],
        [
            ("proposed", f["proposed_per_day"], "#1f5f99"),
            ("accepted", f["accepted_per_day"], "#2e7d32"),
        ],
        "Plans proposed and accepted per day",
    )
    weeks = f["weeks"]
    trend = _lines(
        [w["label"] for w in weeks],
        [
            ("acceptance rate", [w["acceptance_rate"] for w in weeks], "#2e7d32"),
            ("false-action rate", [w["false_action_rate"] for w in weeks], "#b3261e"),
        ],
        "Acceptance and false-action rates week by week",
    )
    lat, conf = f["approval_latency_s"], f["confirmation_latency_s"]
    hist = f["latency_histogram"]
    lat_chart = _bars(
        [label for label, _ in hist["approval"]],
        [
            ("approvals", [n for _, n in hist["approval"]], "#6a1b9a"),
            ("confirmations", [n for _, n in hist["confirmation"]], "#ef6c00"),
        ],
        "Time from routing to the decisive approval or confirmation",
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
    kills = (
        "".join(
            f"<li>{e(k['at'])} <code>{e(str(k['switch']))}</code> by {e(str(k['by']))}: "
            f"{e(str(k['reason']))}</li>"
            for k in f["kill_switches"]
        )
        or "<li>None.</li>"
    )
    r = f["reviews"]
    sampled = _table(
        ("plan", "agent", "actions", "verdict", "reviewer"),
        (
            (
                s["plan_id"],
                str(s["agent"]),
                ", ".join(s["actions"]),
                s["verdict"] or "pending",
                s["reviewer"] or "",
            )
            for s in f["sampled_reviews"]
        ),
    )
    versions = "".join(
        f"<tr><td><code>{e(v[:19])}…</code></td><td>{e(s['first'])}</td><td>{e(s['last'])}</td>"
        f"<td>{s['plans']}</td></tr>"
        for v, s in f["policy_versions"].items()
    )
    week_rows = _table(
        ("week", "proposed", "acceptance", "false actions"),
        (
            (
                w["label"],
                str(w["proposed"]),
                _pct(w["acceptance_rate"]),
                _pct(w["false_action_rate"]),
            )
            for w in weeks
        ),
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Governance review {e(month)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#111}}
table{{border-collapse:collapse;margin:.5rem 0}}
td,th{{border:1px solid #999;padding:.3rem .6rem;text-align:left}}
svg{{max-width:100%;height:auto}}</style>
</head><body>
<h1>Governance review {e(month)}</h1><p>Instance <code>{e(origin)}</code>.</p>
<h2>KPIs</h2><table>{rows}</table>
<h3>Week by week</h3>{trend}{week_rows}
<h3>Per agent</h3>{_table(_AGENT_HEAD, _agent_rows(f))}
<h2>Plans per day</h2>{per_day}
<h2>Most denied actions</h2><ul>{denied}</ul>
<h2>Approval latency</h2>
<p>{e(_lat_line("approval", lat))}</p><p>{e(_lat_line("confirmation", conf))}</p>{lat_chart}
<h2>Breaker trips</h2><ul>{trips}</ul>
<h2>Kill switches engaged</h2><ul>{kills}</ul>
<h2>Post-hoc reviews</h2>
<p>{r["sampled"]} sampled: {r["fine"]} fine, {r["wrong"]} wrong, {r["pending"]} pending.</p>
{sampled}
<h2>Policy versions in force</h2>
<table><tr><th>version</th><th>first</th><th>last</th><th>plans</th></tr>{versions}</table>
</body></html>
"""
