"""Prometheus metrics: counters fed by the audit events, gauges read from the store at scrape.

Counters and histograms live in the process-wide default registry (several gateways in one
process add up); ``StoreCollector`` reads the store of one instance when ``/metrics`` is
scraped, so the gauges are true across replicas.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from proctor.core.ports import EventRow, Transaction

if TYPE_CHECKING:
    from proctor.app.gateway import Gateway

__all__ = ["STAGE_SECONDS", "MetricsListener", "StoreCollector"]

STAGE_SECONDS = Histogram(
    "proctor_stage_seconds",
    "Duration of each stage of the flow (validate, decide, simulate, route, step, "
    "compensation, approval_wait).",
    ["stage"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30, 300, 3600),
)
EVENTS = Counter("proctor_audit_events", "Audit events appended, by type.", ["type"])
DECISIONS = Counter(
    "proctor_decisions", "Plans routed, by outcome and pattern.", ["outcome", "pattern"]
)
RATE_LIMITED = Counter("proctor_rate_limit_rejections", "Plans denied by a rate limit.", ["scope"])
BREAKER_TRIPS = Counter("proctor_breaker_trips", "Circuit breakers opened.", ["breaker"])


class MetricsListener:
    """Counts events as they are appended (called inside the appending transaction)."""

    def on_events(self, tx: Transaction, rows: Sequence[EventRow]) -> None:
        """Count ``rows``; parse only the few types whose data labels a metric."""
        for row in rows:
            EVENTS.labels(row.type).inc()
            if row.type == "policy.decided":
                data = orjson.loads(row.body).get("data", {})
                DECISIONS.labels(
                    data.get("decision", {}).get("outcome", "?"),
                    data.get("assessment", {}).get("pattern", "?"),
                ).inc()
            elif row.type == "guard.rate_limited":
                RATE_LIMITED.labels(orjson.loads(row.body)["data"].get("scope", "?")).inc()
            elif row.type == "breaker.opened":
                BREAKER_TRIPS.labels(orjson.loads(row.body)["data"].get("breaker", "?")).inc()


class StoreCollector(Collector):
    """Gauges read from the store at each scrape."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Any]:
        """Yield the gauges (each scrape reads the shared store, so replicas agree)."""
        store = self.gateway.store
        now = self.gateway.clock.now()
        waiting = GaugeMetricFamily(
            "proctor_approvals_pending", "Plans waiting for humans.", labels=["kind"]
        )
        oldest = GaugeMetricFamily(
            "proctor_approvals_oldest_seconds", "Age of the oldest waiting plan.", labels=["kind"]
        )
        for status, kind in (
            ("awaiting_approval", "approval"),
            ("awaiting_confirmation", "confirm"),
        ):
            plans = store.list_plans(status=status, limit=10_000)
            waiting.add_metric([kind], len(plans))
            age = max(((now - p.created_at).total_seconds() for p in plans), default=0.0)
            oldest.add_metric([kind], age)
        yield waiting
        yield oldest
        size = GaugeMetricFamily("proctor_audit_log_events", "Events in the audit log.")
        size.add_metric([], store.event_count())
        yield size
        cp = store.latest_checkpoint()
        age = GaugeMetricFamily(
            "proctor_checkpoint_age_seconds", "Age of the latest signed checkpoint."
        )
        if cp is not None:
            age.add_metric([], (now - datetime.fromisoformat(cp.created_at)).total_seconds())
        yield age
        depth = GaugeMetricFamily(
            "proctor_webhook_outbox", "Webhook deliveries by status.", labels=["status"]
        )
        for status in ("pending", "dead"):
            depth.add_metric([status], len(store.deliveries(status=status, limit=100_000)))
        yield depth
        guards = self.gateway.guards
        if guards is not None:
            st = guards.status()
            breakers = GaugeMetricFamily(
                "proctor_breaker_open",
                "1 if a circuit breaker is not closed.",
                labels=["breaker", "state"],
            )
            for key, v in st["breakers"].items():
                breakers.add_metric(
                    [key, v.get("state", "?")], 0 if v.get("state") == "closed" else 1
                )
            yield breakers
            kills = GaugeMetricFamily("proctor_kill_switches", "Kill switches engaged.")
            kills.add_metric([], len(st["kill"]))
            yield kills
            budget = GaugeMetricFamily(
                "proctor_budget_used",
                "Budget used in the current period.",
                labels=["budget", "period"],
            )
            limit = GaugeMetricFamily(
                "proctor_budget_limit", "Budget limit per period.", labels=["budget", "period"]
            )
            for b in st["budgets"]:
                name = f"{b['scope']}:{b['key']}"
                limit.add_metric([name, b["period"]], b["limit"])
                if b["used"] is not None:
                    budget.add_metric([name, b["period"]], b["used"])
            yield budget
            yield limit
