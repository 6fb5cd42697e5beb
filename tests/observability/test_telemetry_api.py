"""The telemetry API the gateway calls, driven directly and through the gateway.

Spans are read from the OpenTelemetry SDK's in-memory exporter.
"""

from __future__ import annotations

import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, StatusCode, TraceFlags

from proctor import Proctor
from proctor.app.gateway import GatewayOptions
from proctor.app.metrics import STAGE_SECONDS
from proctor.app.telemetry import Telemetry, current_ids, parse_traceparent
from proctor.core.catalog import Catalog
from proctor.testing import FrozenClock, RecordingTool, make_plan

from .conftest import LOW, PARENT, PARENT_SPAN, PARENT_TRACE


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _count(stage: str) -> float:
    for metric in STAGE_SECONDS.collect():
        for s in metric.samples:
            if s.name.endswith("_count") and s.labels == {"stage": stage}:
                return s.value
    return 0.0


class Everything:
    """A policy that executes every step, undo window ten minutes."""

    version = "sha256:everything"

    def evaluate(self, input):
        steps = {s["id"]: {"outcome": "execute", "undo_window": 600} for s in input["steps"]}
        return {"steps": steps, "plan": {}}


def _proctor(telemetry: Telemetry) -> tuple[Proctor, RecordingTool]:
    p = Proctor.in_memory(
        catalog=Catalog(), policy=Everything(), clock=FrozenClock(), options=GatewayOptions()
    )
    p.gateway.telemetry = telemetry
    undo = RecordingTool()
    p.action("shop.buy", category="general", baselines=LOW, reversible=True, compensate=undo)(
        RecordingTool()
    )
    p.action("shop.fail", category="general", baselines=LOW)(
        RecordingTool(fail_with=RuntimeError("the shop is closed"))
    )
    return p, undo


class TestNothingConfigured:
    def test_a_stage_is_the_shared_null_scope(self):
        """Without spans or timings, stage() returns one shared no-op context (no allocation)."""
        t = Telemetry()
        before = _count("validate")

        with t.stage("validate", action="x") as a, t.stage("decide") as b:
            pass

        assert a is None and b is None
        assert t.stage("validate") is t.stage("route")
        assert not t.tracing and not t.timing
        assert _count("validate") == before

    def test_ids_are_none_outside_any_trace(self):
        """No trace, no ids: the journal writes null trace and span ids."""
        assert Telemetry.ids() is None
        assert Telemetry.traceparent() is None

    def test_an_agents_traceparent_gives_its_ids_inside_the_plan_scope_only(self):
        """Ids-only mode: the agent's trace id and span id, restored after the scope."""
        t = Telemetry()

        with t.plan("proctor.submit", PARENT):
            inside = t.ids()
            header = t.traceparent()
        after = t.ids()

        assert inside == (PARENT_TRACE, PARENT_SPAN)
        assert parse_traceparent(header) == inside
        assert after is None

    @pytest.mark.parametrize(
        "bad", ["00-xyz", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "ff-" + PARENT[3:]]
    )
    def test_a_malformed_traceparent_is_ignored(self, bad):
        """A bad header never puts a made-up trace id into the audit log."""
        with Telemetry().plan("proctor.submit", bad):
            assert current_ids() is None

    def test_an_instrumented_host_applications_span_reaches_the_ids(self):
        """A library user whose own code is traced gets its trace ids in the audit events."""
        ctx = SpanContext(
            trace_id=int(PARENT_TRACE, 16),
            span_id=int(PARENT_SPAN, 16),
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        p, _ = _proctor(Telemetry())

        with trace.use_span(NonRecordingSpan(ctx)):
            rec = p.submit(make_plan([("shop.buy", {})]))

        events = [orjson.loads(e.body) for e in p.gateway.store.read_events(plan_id=rec.plan_id)]
        assert {(e["trace_id"], e["span_id"]) for e in events} == {(PARENT_TRACE, PARENT_SPAN)}


class TestTimings:
    def test_each_stage_is_one_observation_even_when_it_raises(self):
        """Timings only: each scope adds one observation to its stage, errors included."""
        t = Telemetry(metrics=True)
        before = _count("simulate")

        with t.stage("simulate"):
            pass
        with pytest.raises(KeyError), t.stage("simulate"):
            raise KeyError("boom")

        assert t.timing and not t.tracing
        assert _count("simulate") == before + 2

    def test_a_wait_that_happened_is_observed_once(self):
        """waited() records a human wait without any scope."""
        from datetime import UTC, datetime, timedelta

        t = Telemetry(metrics=True)
        before = _count("approval_wait")
        at = datetime(2026, 11, 1, tzinfo=UTC)

        t.waited("approval_wait", at, at + timedelta(minutes=5))

        assert _count("approval_wait") == before + 1


class TestSpans:
    def test_a_failing_stage_is_an_error_span_and_the_error_propagates(self):
        """The exception leaves the scope unchanged; the span says what happened."""
        provider, exporter = _provider()
        t = Telemetry(provider)

        with (
            pytest.raises(ValueError, match="bad"),
            t.plan("proctor.submit", PARENT),
            t.stage("validate", plan_id="p1", empty=None),
        ):
            raise ValueError("bad")

        spans = {s.name: s for s in exporter.get_finished_spans()}
        validate = spans["proctor.validate"]
        assert validate.status.status_code is StatusCode.ERROR
        assert dict(validate.attributes) == {"proctor.plan_id": "p1"}
        assert validate.parent.span_id == spans["proctor.submit"].context.span_id
        assert format(validate.context.trace_id, "032x") == PARENT_TRACE

    def test_ids_inside_a_stage_are_the_stage_span(self):
        """The journal writes the innermost span: the stage an event was written in."""
        provider, exporter = _provider()
        t = Telemetry(provider)

        with t.plan("proctor.submit", PARENT), t.stage("route"):
            ids = t.ids()

        route = next(s for s in exporter.get_finished_spans() if s.name == "proctor.route")
        assert ids == (PARENT_TRACE, format(route.context.span_id, "016x"))

    def test_a_failed_step_and_its_compensation_are_spans_with_their_events(self):
        """Step spans and compensation spans, and the events written in them."""
        provider, exporter = _provider()
        p, undo = _proctor(Telemetry(provider))

        rec = p.submit(make_plan([("shop.buy", {}), ("shop.fail", {})]), traceparent=PARENT)

        spans = exporter.get_finished_spans()
        names = [s.name for s in spans]
        assert rec.status.value == "compensated"
        assert names.count("proctor.step") == 2
        assert "proctor.compensation" in names
        assert len(undo.calls) == 1
        comp = next(s for s in spans if s.name == "proctor.compensation")
        assert comp.attributes["proctor.action"] == "shop.buy"
        events = [orjson.loads(e.body) for e in p.gateway.store.read_events(plan_id=rec.plan_id)]
        # Every event names a span of this trace that was exported. (The executor writes a
        # step's outcome after its span closes, so those events name the plan's span.)
        assert {e["span_id"] for e in events} <= {format(s.context.span_id, "016x") for s in spans}
        assert {e["trace_id"] for e in events} == {PARENT_TRACE}

    def test_shutdown_exports_what_is_queued_and_close_calls_it(self):
        """A batch processor's queue is flushed by Proctor.close (proctor serve's exit path)."""
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        # A long delay: nothing is exported before shutdown unless shutdown flushes.
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=600_000))
        p, _ = _proctor(Telemetry(provider))
        p.submit(make_plan([("shop.buy", {})]), traceparent=PARENT)
        queued = len(exporter.get_finished_spans())

        p.close()

        assert queued == 0
        assert "proctor.submit" in {s.name for s in exporter.get_finished_spans()}
        assert not p.gateway.telemetry.tracing
        p.gateway.telemetry.shutdown()  # idempotent
