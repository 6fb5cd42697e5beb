"""Spans per plan and per stage (the SDK's in-memory exporter), ids in the audit events."""

from __future__ import annotations

import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proctor import Proctor
from proctor.app.gateway import GatewayOptions
from proctor.app.telemetry import Telemetry, parse_traceparent
from proctor.core.catalog import Catalog
from proctor.errors import NotFoundError
from proctor.testing import FrozenClock, RecordingTool, make_plan

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}
PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Scripted:
    version = "sha256:s"

    def __init__(self, outcome="execute"):
        self.outcome = outcome

    def evaluate(self, input):
        steps = {s["id"]: {"outcome": self.outcome} for s in input["steps"]}
        if self.outcome == "approve":
            steps = {k: v | {"approvals": 1, "approver_roles": ["ops"]} for k, v in steps.items()}
        return {"steps": steps, "plan": {}}


def make(outcome="execute", tracing=True):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    p = Proctor.in_memory(
        catalog=Catalog(), policy=Scripted(outcome), clock=FrozenClock(), options=GatewayOptions()
    )
    p.gateway.telemetry = Telemetry(provider if tracing else None)
    p.action("shop.buy", category="general", baselines=LOW)(RecordingTool())
    return p, exporter


def bodies(p, plan_id):
    return [orjson.loads(e.body) for e in p.gateway.store.read_events(plan_id=plan_id)]


class TestSpans:
    def test_a_span_per_plan_and_stage_under_the_agents_trace(self):
        p, exporter = make()
        rec = p.submit(make_plan([("shop.buy", {})]), traceparent=PARENT)
        spans = {s.name: s for s in exporter.get_finished_spans()}
        assert {
            "proctor.submit",
            "proctor.validate",
            "proctor.decide",
            "proctor.route",
            "proctor.step",
        } <= set(spans)
        root = spans["proctor.submit"]
        assert format(root.context.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert format(root.parent.span_id, "016x") == "00f067aa0ba902b7"
        step = spans["proctor.step"]
        assert step.attributes["proctor.action"] == "shop.buy"
        assert step.parent.span_id == root.context.span_id
        # Every audit event of the plan carries the trace, and the span it was written in.
        events = bodies(p, rec.plan_id)
        assert {e["trace_id"] for e in events} == {"4bf92f3577b34da6a3ce929d0e0e4736"}
        span_ids = {format(s.context.span_id, "016x") for s in exporter.get_finished_spans()}
        assert {e["span_id"] for e in events} <= span_ids
        assert p.verify().ok

    def test_approval_wait_is_a_span(self):
        p, exporter = make("approve")
        rec = p.submit(make_plan([("shop.buy", {})]))
        p.gateway.clock.advance(90)
        p.approve(rec.plan_id, "olga", roles=["ops"], traceparent=None)
        wait = next(s for s in exporter.get_finished_spans() if s.name == "proctor.approval_wait")
        assert (wait.end_time - wait.start_time) == 90 * 1_000_000_000

    def test_reject_and_resolve_are_spans_under_the_callers_trace(self):
        """A human action's span is a child of the caller's ``traceparent``, even when it fails."""
        p, exporter = make("approve")
        waiting = p.submit(make_plan([("shop.buy", {})]))
        p.reject(waiting.plan_id, "olga", roles=["ops"], traceparent=PARENT)
        with pytest.raises(NotFoundError):
            p.resolve("nope", "s1", succeeded=True, principal="ops", traceparent=PARENT)

        spans = {s.name: s for s in exporter.get_finished_spans()}

        for name in ("proctor.reject", "proctor.resolve"):
            assert format(spans[name].parent.span_id, "016x") == "00f067aa0ba902b7", name
        assert spans["proctor.reject"].attributes["proctor.plan_id"] == waiting.plan_id
        assert not spans["proctor.resolve"].status.is_ok

    def test_without_a_tracer_an_agents_trace_id_still_reaches_the_log(self):
        p, exporter = make(tracing=False)
        rec = p.submit(make_plan([("shop.buy", {})]), traceparent=PARENT)
        assert exporter.get_finished_spans() == ()
        events = bodies(p, rec.plan_id)
        assert {(e["trace_id"], e["span_id"]) for e in events} == {
            ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
        }
        other = p.submit(make_plan([("shop.buy", {})]))
        assert {e["trace_id"] for e in bodies(p, other.plan_id)} == {None}


class TestTraceparent:
    @pytest.mark.parametrize(
        "value",
        [
            None,
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ],
    )
    def test_malformed_values_are_ignored(self, value):
        assert parse_traceparent(value) is None

    def test_a_valid_value(self):
        assert parse_traceparent(PARENT.upper()) == (
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "00f067aa0ba902b7",
        )


class TestOtlpConfiguration:
    def test_an_endpoint_builds_an_exporting_provider(self, tmp_path):
        from opentelemetry.sdk.trace import TracerProvider as SdkProvider

        from proctor.bootstrap import init_home, tracer_provider
        from proctor.config import load

        init_home(tmp_path / "h")
        settings = load(tmp_path / "h")
        assert settings.otlp_endpoint is None and tracer_provider(settings) is None
        cfg = (tmp_path / "h" / "config.toml").read_text()
        cfg += '\n[observability]\notlp_endpoint = "http://127.0.0.1:4318"\nservice_name = "p1"\n'
        (tmp_path / "h" / "config.toml").write_text(cfg)
        provider = tracer_provider(load(tmp_path / "h"))
        try:
            assert isinstance(provider, SdkProvider)
            assert provider.resource.attributes["service.name"] == "p1"
        finally:
            provider.shutdown()

    def test_a_bad_endpoint_names_the_field(self, tmp_path):
        from proctor.bootstrap import init_home
        from proctor.config import load
        from proctor.errors import ConfigError

        init_home(tmp_path / "h")
        cfg = (
            tmp_path / "h" / "config.toml"
        ).read_text() + '\n[observability]\notlp_endpoint = "grpc:x"\n'
        (tmp_path / "h" / "config.toml").write_text(cfg)
        with pytest.raises(ConfigError) as e:
            load(tmp_path / "h")
        assert e.value.field == "observability.otlp_endpoint"
