"""What observability costs on the hot path, and how fast the KPIs are computed.

- ``Telemetry.stage()`` in its three modes: nothing configured (the library default),
  stage timings only (``proctor serve`` without an exporter), and real spans (the
  OpenTelemetry SDK with a span processor that drops them, so no exporter I/O is timed);
- ``Telemetry.ids()`` (the journal calls it once per audit event);
- ``MetricsListener.on_events`` per event, on the six events of a one-step plan;
- ``kpis.compute`` throughput over a synthetic history.

Each figure is the median of several repeats of many calls: medians, because the machine
is shared.

Usage: python bench/observability.py [--calls 200000]
Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py shadows the standard library's http package for scripts run from bench/.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import statistics
import time
import timeit
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from proctor.app.kpis import compute
from proctor.app.metrics import MetricsListener
from proctor.app.telemetry import Telemetry
from proctor.core.ports import EventRow


class _Drop(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _per_call_us(fn: Any, calls: int, repeat: int = 7) -> float:
    return statistics.median(timeit.repeat(fn, number=calls, repeat=repeat)) / calls * 1e6


def _stage(t: Telemetry) -> Any:
    def run() -> None:
        with t.stage("validate"):
            pass

    return run


def _rows() -> list[EventRow]:
    decided = {
        "type": "policy.decided",
        "data": {
            "assessment": {"pattern": "agentic", "total": 5},
            "decision": {"outcome": "execute", "reasons": ["low risk"] * 4},
        },
    }
    kinds = ["plan.submitted", "policy.decided", "plan.routed", "step.started"]
    kinds += ["step.succeeded", "plan.finished"]
    rows = []
    for i, kind in enumerate(kinds):
        body = decided if kind == "policy.decided" else {"type": kind, "data": {"x": 1}}
        if kind == "plan.finished":
            body = {"type": kind, "data": {"status": "succeeded"}}
        rows.append(
            EventRow(
                seq=i,
                type=kind,
                plan_id="p",
                step_id=None,
                timestamp="2026-11-01T00:00:00+00:00",
                body=orjson.dumps(body | {"pad": "x" * 1500}),
                hash="sha256:0",
            )
        )
    return rows


def _history(plans: int) -> list[dict[str, Any]]:
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    out = []
    for i in range(plans):
        t = (t0 + timedelta(seconds=30 * i)).isoformat()
        base = {
            "timestamp": t,
            "plan_id": f"p{i}",
            "actor": {"agent_id": f"bot{i % 7}", "model_version": "m"},
            "user_id": f"u{i % 13}",
            "actions_attempted": [{"api": f"act.{i % 5}"}],
            "policy_version": "sha256:p",
            "signature": "s",
            "trace_id": "t",
        }
        out.append(base | {"type": "plan.submitted", "data": {}})
        out.append(base | {"type": "policy.decided", "data": {}})
        out.append(base | {"type": "plan.routed", "data": {"sandbox": False}})
        out.append(base | {"type": "step.succeeded", "data": {"cost": 10}})
        out.append(base | {"type": "plan.finished", "data": {"status": "succeeded"}})
        if i % 10 == 0:
            out.append(base | {"type": "complaint.filed", "data": {}})
    return out


def main() -> None:
    """Run the measurements and print the table and the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--plans", type=int, default=20_000)
    args = ap.parse_args()
    n = args.calls
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_Drop()))
    r: dict[str, Any] = {
        "stage_null_us": _per_call_us(_stage(Telemetry()), n),
        "stage_timed_us": _per_call_us(_stage(Telemetry(metrics=True)), n),
        "stage_span_us": _per_call_us(_stage(Telemetry(provider)), max(n // 20, 1000)),
        "ids_us": _per_call_us(Telemetry.ids, n),
    }
    listener, rows = MetricsListener(), _rows()
    r["listener_per_event_us"] = _per_call_us(
        lambda: listener.on_events(None, rows),  # type: ignore[arg-type]  # tx unused
        max(n // 20, 1000),
    ) / len(rows)
    history = _history(args.plans)
    since = datetime(2026, 11, 1, tzinfo=UTC)
    t0 = time.perf_counter()
    compute(history, since=since, until=since + timedelta(days=30), by="agent")
    r["kpi_events"] = len(history)
    r["kpi_events_per_s"] = round(len(history) / (time.perf_counter() - t0))
    print("observability: per-call cost (median of 7 repeats)")
    print(f"{'figure':<34}{'value':>12}")
    for key, label in (
        ("stage_null_us", "stage(), nothing configured µs"),
        ("stage_timed_us", "stage(), timings only µs"),
        ("stage_span_us", "stage(), SDK span µs"),
        ("ids_us", "ids() µs"),
        ("listener_per_event_us", "MetricsListener per event µs"),
        ("kpi_events_per_s", "KPI compute, events/s"),
    ):
        v = r[key]
        print(f"{label:<34}{v:>12.2f}" if isinstance(v, float) else f"{label:<34}{v:>12}")
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}))


if __name__ == "__main__":
    main()
