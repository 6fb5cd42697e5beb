"""``proctor kpi`` and ``proctor report``: the operational KPIs and the monthly review."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.table import Table

from proctor.cli.commands import Home, Json, Verbose, _open
from proctor.cli.render import console, esc, print_json

__all__ = ["kpi", "report"]


def _when(value: str | None, flag: str) -> datetime | None:
    """``--since`` / ``--until``: ISO 8601, and UTC when it gives no offset.

    UTC as the monthly review's months and the console's days are, so one date means the
    same period everywhere; the local time zone of whoever runs the command would not.
    """
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            "an ISO 8601 date or time, e.g. 2026-11-01", param_hint=flag
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _utc(at: datetime) -> str:
    """``at`` for the table's title, in UTC (as given if UTC cannot hold it: year 1)."""
    try:
        return f"{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    except OverflowError:
        return f"{at:%Y-%m-%d %H:%M%z}"


def kpi(
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="Start (ISO 8601; UTC unless it has an offset); default 30 days ago."
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", help="End (ISO 8601; UTC unless it has an offset); default now."),
    ] = None,
    by: Annotated[str | None, typer.Option("--by", help="Group by agent, action or user.")] = None,
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
) -> int:
    """Show the operational KPIs for a period, overall or per agent, action or user.

    Acceptance and false-action rates, time to recovery, audit coverage, cost per action and
    anomaly delta (docs/observability.md).
    """
    if by is not None and by not in ("agent", "action", "user"):
        raise typer.BadParameter("agent, action or user", param_hint="'--by'")
    from proctor.app.kpis import from_store, look_back

    with _open(home) as p:
        end = _when(until, "'--until'") or p.gateway.clock.now()
        start = _when(since, "'--since'") or look_back(end, timedelta(days=30))
        if start >= end:
            raise typer.BadParameter(
                "--since must be before --until",
                param_hint="'--since'" if since is not None else "'--until'",
            )
        groups = from_store(p.gateway.store, since=start, until=end, by=by)
    if as_json:
        print_json({"since": start.isoformat(), "until": end.isoformat(), "by": by, "kpis": groups})
        return 0
    t = Table(title=f"KPIs {_utc(start)} → {_utc(end)}")
    for col in (
        esc(by or "scope"),
        "acceptance",
        "false actions",
        "recovery (median s)",
        "coverage",
        "cost/action",
        "anomaly Δ",
        "executed",
    ):
        t.add_column(col)

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    for name, k in groups.items():
        t.add_row(
            esc(name),
            pct(k["acceptance_rate"]),
            pct(k["false_action_rate"]),
            "-"
            if k["time_to_recovery_s"]["median"] is None
            else str(k["time_to_recovery_s"]["median"]),
            pct(k["audit_coverage"]),
            "-" if k["cost_per_action"] is None else str(k["cost_per_action"]),
            f"{k['anomaly_delta']:+d}",
            str(k["counts"]["executed_steps"]),
        )
    console.print(t)
    return 0


def report(
    month: Annotated[str, typer.Option("--month", help="The month to review, YYYY-MM.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the Markdown and HTML.")] = Path(
        "."
    ),
    home: Home = None,
    as_json: Json = False,
    verbose: Verbose = False,
) -> int:
    """Write the monthly governance review (Markdown and HTML with charts)."""
    from proctor.app.kpis import look_back, relevant
    from proctor.app.report import build_report, month_bounds

    try:
        start, end = month_bounds(month)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--month'") from None
    # Before the work: a bad --out is a usage error, not a traceback after the figures.
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise typer.BadParameter(
            f"cannot use {out} as a directory: {exc.strerror or exc}", param_hint="'--out'"
        ) from None
    # The month before is the trend's baseline; older rows are parsed only when they matter:
    # and as far back as a plan may have waited for a human into this month (its routing
    # and approvals time the latency of an approval in it).
    prev_start = (start - timedelta(days=1)).replace(day=1)
    with _open(home) as p:
        options = p.gateway.options
        wait = max(options.approval_ttl, options.confirm_ttl)
        reach = min(prev_start, look_back(start, wait))
        rows = relevant(p.gateway.store.iter_events(), since=reach, until=end)
        bodies = (orjson.loads(r.body) for r in rows)
        origin = p.gateway.audit_log.origin if p.gateway.audit_log is not None else "proctor"
        rep = build_report(bodies, month, origin=origin)
    md, page = out / f"review-{month}.md", out / f"review-{month}.html"
    _write_both(((md, rep.markdown), (page, rep.html)))
    if as_json:
        print_json({"month": month, "markdown": str(md), "html": str(page), "figures": rep.figures})
    else:
        console.print(esc(f"Wrote {md} and {page}."))
    return 0


def _write_both(files: tuple[tuple[Path, str], ...]) -> None:
    """Write every file or none: each goes to a temporary name first, then all are renamed.

    A rename in one directory fails only when the target is a directory, so that is checked
    before anything is written.
    """
    for path, _ in files:
        if path.is_dir():
            raise typer.BadParameter(
                f"cannot write {path}: it is a directory", param_hint="'--out'"
            )
    temps: list[Path] = []
    try:
        for path, text in files:
            tmp = path.with_name(f".{path.name}.tmp")
            temps.append(tmp)
            try:
                tmp.write_text(text)
            except OSError as exc:
                raise typer.BadParameter(
                    f"cannot write {path}: {exc.strerror or exc}", param_hint="'--out'"
                ) from None
    except typer.BadParameter:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise
    for (path, _), tmp in zip(files, temps, strict=True):
        tmp.replace(path)
