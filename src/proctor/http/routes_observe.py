"""``/metrics`` (Prometheus) and ``/v1/kpis`` (the operational KPIs), for auditors and admins."""

# NOTE(http): no `from __future__ import annotations` here: FastAPI reads the route
# signatures at runtime.

from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.responses import PlainTextResponse, Response

from proctor.app.kpis import from_store, look_back
from proctor.app.metrics import MetricsListener, StoreCollector, exposition
from proctor.core.principals import Principal
from proctor.errors import InvalidRequestError, PermissionDeniedError
from proctor.http.context import AUTH_ERRORS, Context, errors_doc, json_response

__all__ = ["router"]


def _when(value: str | None, field: str) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidRequestError(f"{field} must be an ISO 8601 date or time", field=field) from exc
    if at.tzinfo is None:
        raise InvalidRequestError(f"{field} needs a time zone (e.g. Z or +00:00)", field=field)
    return at


def router(ctx: Context) -> APIRouter:
    """Build the observability routes; starts the metrics of ``ctx``'s gateway."""
    r = APIRouter(tags=["observability"])
    proctor = ctx.proctor
    gateway = proctor.gateway
    if not any(isinstance(x, MetricsListener) for x in gateway.listeners):
        budgets = gateway.guards.settings.budgets if gateway.guards is not None else ()
        gateway.listeners.append(MetricsListener(budgets=budgets))
    gateway.telemetry.enable_metrics()
    registry = CollectorRegistry()
    registry.register(StoreCollector(gateway))
    Caller = Annotated[Principal, Depends(ctx.auth)]
    errors = errors_doc(400, *AUTH_ERRORS)

    def need_reader(p: Principal) -> None:
        if not (p.has("auditor") or p.has("admin")):
            raise PermissionDeniedError("this needs the auditor or admin role", field="role")

    @r.get(
        "/metrics",
        summary="Prometheus metrics (auditor, admin)",
        responses=errors,
        response_class=PlainTextResponse,
    )
    def metrics(caller: Caller) -> Response:
        """Counters, histograms and gauges in the Prometheus text format.

        With ``--workers N``, the counters and histograms of every worker added up (whichever
        worker answers); the gauges are read from the store by the one that answers.
        """
        need_reader(caller)
        body = exposition() + generate_latest(registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @r.get("/v1/kpis", summary="The operational KPIs (auditor, admin)", responses=errors)
    def kpis(
        caller: Caller,
        since: Annotated[
            str | None, Query(description="Start (ISO 8601); default 30 days before until.")
        ] = None,
        until: Annotated[str | None, Query(description="End (ISO 8601); default now.")] = None,
        by: Annotated[Literal["agent", "action", "user"] | None, Query()] = None,
    ) -> Response:
        """The KPIs for a period, overall or per agent, action or user.

        Acceptance and false-action rates, time to recovery, audit coverage, cost per action
        and anomaly delta (docs/observability.md).
        """
        need_reader(caller)
        end = _when(until, "until") or gateway.clock.now()
        start = _when(since, "since") or look_back(end, timedelta(days=30))
        if start >= end:
            raise InvalidRequestError(
                "since must be before until", field="since" if since is not None else "until"
            )
        groups = from_store(gateway.store, since=start, until=end, by=by)
        return json_response(
            {"since": start.isoformat(), "until": end.isoformat(), "by": by, "kpis": groups}
        )

    return r
