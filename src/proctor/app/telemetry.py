"""Traces and stage timings (OpenTelemetry, Prometheus), cheap when nobody looks.

The gateway opens a *plan* scope per request (``Telemetry.plan``) and a *stage* scope around
each stage (validate, decide, simulate, route, each step, each compensation, the approval
wait). Three modes, chosen once:

- **tracing** (a ``TracerProvider`` was given, e.g. by ``[observability] otlp_endpoint``): real
  spans; a W3C ``traceparent`` from the agent becomes their parent; the audit events carry
  the trace and span ids of the span they were written in;
- **ids only** (the default): no spans, but an agent's ``traceparent`` still reaches the
  audit events (its trace id and parent span id), so a log line can be joined to the
  agent's own trace;
- **stage timings** (``metrics=True``, on in ``proctor serve``): each stage's duration feeds
  the ``proctor_stage_seconds`` histogram of ``/metrics``.

With neither spans nor timings a stage scope costs one function call.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["Telemetry", "current_ids", "parse_traceparent"]

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_PROPAGATOR = TraceContextTextMapPropagator()
# (trace_id, span_id) for the audit events written now (ids-only mode).
_IDS: ContextVar[tuple[str, str] | None] = ContextVar("proctor_trace_ids", default=None)


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """Return ``(trace_id, parent_span_id)`` of a W3C traceparent, or None if malformed."""
    if not value:
        return None
    m = _TRACEPARENT.match(value.strip().lower())
    if m is None or m.group(1) == "0" * 32 or m.group(2) == "0" * 16:
        return None
    return m.group(1), m.group(2)


def current_ids() -> tuple[str, str] | None:
    """The trace and span ids the audit events written now should carry, or None."""
    span = trace.get_current_span()
    ctx = span.get_span_context()
    if ctx.is_valid:
        return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
    return _IDS.get()


class Telemetry:
    """Spans and stage timings for one gateway (see the module docstring).

    Args:
        provider: An OpenTelemetry ``TracerProvider``; None for no spans.
        metrics: Record stage durations in the Prometheus histogram.
    """

    def __init__(self, provider: TracerProvider | None = None, *, metrics: bool = False) -> None:
        self.tracer = provider.get_tracer("proctor") if provider is not None else None
        self._histogram: Any = None
        if metrics:
            from proctor.app.metrics import STAGE_SECONDS

            self._histogram = STAGE_SECONDS

    @property
    def tracing(self) -> bool:
        """Whether real spans are recorded."""
        return self.tracer is not None

    def enable_metrics(self) -> None:
        """Start recording stage durations (``proctor serve`` does)."""
        from proctor.app.metrics import STAGE_SECONDS

        self._histogram = STAGE_SECONDS

    def plan(
        self, name: str, traceparent: str | None = None, **attrs: Any
    ) -> contextlib.AbstractContextManager[Any]:
        """Scope of one request on a plan (submit, confirm, approve, resume...)."""
        if self.tracer is None and not traceparent:
            return _NULL
        return self._plan(name, traceparent, attrs)

    @contextlib.contextmanager
    def _plan(self, name: str, traceparent: str | None, attrs: dict[str, Any]) -> Iterator[None]:
        if self.tracer is None:
            ids = parse_traceparent(traceparent)
            if ids is None:
                yield
                return
            token = _IDS.set(ids)
            try:
                yield
            finally:
                _IDS.reset(token)
            return
        parent = _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None
        with self.tracer.start_as_current_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=_attrs(attrs)
        ):
            yield

    def stage(self, name: str, **attrs: Any) -> contextlib.AbstractContextManager[Any]:
        """Scope of one stage of the flow."""
        if self.tracer is None and self._histogram is None:
            return _NULL
        return self._stage(name, attrs)

    @contextlib.contextmanager
    def _stage(self, name: str, attrs: dict[str, Any]) -> Iterator[Span | None]:
        t0 = time.perf_counter()
        try:
            if self.tracer is not None:
                with self.tracer.start_as_current_span(
                    f"proctor.{name}", attributes=_attrs(attrs)
                ) as span:
                    yield span
            else:
                yield None
        finally:
            if self._histogram is not None:
                self._histogram.labels(name).observe(time.perf_counter() - t0)

    def waited(self, name: str, since: datetime, until: datetime, **attrs: Any) -> None:
        """Record a wait that already happened (a plan waiting for a human) as a span."""
        if self._histogram is not None:
            self._histogram.labels(name).observe(max((until - since).total_seconds(), 0.0))
        if self.tracer is None:
            return
        span = self.tracer.start_span(
            f"proctor.{name}", start_time=_ns(since), attributes=_attrs(attrs)
        )
        span.end(end_time=_ns(until))


_NULL = contextlib.nullcontext()


def _ns(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000_000)


def _attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    return {f"proctor.{k}": v for k, v in attrs.items() if v is not None}
