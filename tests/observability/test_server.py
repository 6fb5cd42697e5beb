"""A real ``proctor serve``: spans exported over OTLP, metrics scraped after a workload."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import PARENT, PARENT_SPAN, PARENT_TRACE, add_config, manifest, serve, token

pytestmark = [pytest.mark.server, pytest.mark.cli, pytest.mark.slow]

SEARCH = ("travel.search", {"destination": "Lisbon", "date": "2027-03-12"})
BIG_PAYMENT = ("travel.pay", {"amount": 640_000, "currency": "EUR", "traveller": "alice"})


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _all_events(url: str, headers: dict[str, str]) -> list[dict]:
    events, after = [], -1
    while after is not None:
        page = httpx.get(f"{url}/v1/audit/events?after={after}&limit=1000", headers=headers)
        assert page.status_code == 200, page.text
        doc = page.json()
        events += doc["events"]
        after = doc["next_after"]
    return events


class TestOtlpExport:
    def test_spans_reach_the_collector_under_the_agents_trace(
        self, proctor_exe, home, tmp_path, otlp_sink
    ):
        """[observability] otlp_endpoint: the plan's spans join the agent's trace; the audit
        events name spans the collector received; SIGTERM flushes the batch queue."""
        add_config(
            home,
            f'[observability]\notlp_endpoint = "{otlp_sink.url}"\nservice_name = "proctor-e2e"',
        )
        agent = token(proctor_exe, home, "bot", "agent")
        auditor = token(proctor_exe, home, "aud", "auditor")
        with serve(proctor_exe, home, tmp_path) as s:
            r = httpx.post(
                f"{s.url}/v1/plans",
                json=manifest(SEARCH),
                headers={"Authorization": f"Bearer {agent}", "traceparent": PARENT},
            )
            assert r.status_code == 201, r.text
            plan_id = r.json()["plan_id"]
            events = [
                e
                for e in _all_events(s.url, {"Authorization": f"Bearer {auditor}"})
                if e["plan_id"] == plan_id
            ]
            assert s.stop() == 0

        spans = {sp.name: sp for sp in otlp_sink.spans}
        assert set(otlp_sink.paths) == {"/v1/traces"}
        assert {"proctor.submit", "proctor.validate", "proctor.decide", "proctor.route"} <= set(
            spans
        )
        assert "proctor.step" in spans
        root = spans["proctor.submit"]
        assert root.trace_id.hex() == PARENT_TRACE
        assert root.parent_span_id.hex() == PARENT_SPAN
        assert {sp.trace_id.hex() for sp in otlp_sink.spans} == {PARENT_TRACE}
        assert {"service.name": "proctor-e2e"}.items() <= otlp_sink.resources[0].items()
        assert events and {e["trace_id"] for e in events} == {PARENT_TRACE}
        assert {e["span_id"] for e in events} <= {sp.span_id.hex() for sp in otlp_sink.spans}


class TestMetricsAfterAWorkload:
    def test_counters_and_gauges_match_what_the_workload_did(self, proctor_exe, home, tmp_path):
        """Three runs, a rate-limit rejection, one plan waiting, a kill switch; then a scrape."""
        add_config(
            home,
            '[[guards.rate_limits]]\nscope = "agent"\nkey = "*"\nlimit = 4\nper_seconds = 3600\n',
        )
        agent = token(proctor_exe, home, "bot", "agent")
        auditor = token(proctor_exe, home, "aud", "auditor")
        admin = token(proctor_exe, home, "root", "admin")
        as_agent = {"Authorization": f"Bearer {agent}"}
        as_auditor = {"Authorization": f"Bearer {auditor}"}
        with serve(proctor_exe, home, tmp_path) as s:
            statuses = [
                httpx.post(f"{s.url}/v1/plans", json=manifest(step), headers=as_agent).json()[
                    "status"
                ]
                for step in (SEARCH, SEARCH, SEARCH, BIG_PAYMENT, SEARCH)
            ]
            kill = httpx.post(
                f"{s.url}/v1/guards/kill",
                json={"scope": "action", "key": "travel.pay", "reason": "drill"},
                headers={"Authorization": f"Bearer {admin}"},
            )
            assert kill.status_code == 200, kill.text
            scrape = httpx.get(f"{s.url}/metrics", headers=as_auditor)
            events = _all_events(s.url, as_auditor)

        assert statuses == ["succeeded"] * 3 + ["awaiting_approval", "denied"]
        assert scrape.status_code == 200
        m = _samples(scrape.text)
        types = Counter(e["type"] for e in events)
        # Every counter is derived from the events this server appended.
        for kind in ("plan.submitted", "plan.routed", "step.succeeded", "guard.rate_limited"):
            assert m[("proctor_audit_events_total", (("type", kind),))] == types[kind], kind
        assert types["guard.rate_limited"] == 1
        assert m[("proctor_rate_limit_rejections_total", (("scope", "agent"),))] == 1
        assert m[("proctor_guard_denials_total", (("guard", "rate_limit"),))] == 1
        assert m[("proctor_steps_total", (("outcome", "succeeded"),))] == 3
        assert m[("proctor_plans_finished_total", (("status", "succeeded"),))] == 3
        decided = Counter(
            (e["data"]["decision"]["outcome"], e["data"]["assessment"]["pattern"])
            for e in events
            if e["type"] == "policy.decided"
        )
        for (outcome, pattern), n in decided.items():
            key = ("proctor_decisions_total", (("outcome", outcome), ("pattern", pattern)))
            assert m[key] == n
        change = (("change", "engaged"), ("switch", "action:travel.pay"))
        assert m[("proctor_kill_switch_changes_total", change)] == 1
        # Gauges read from the store at the scrape.
        assert m[("proctor_kill_switches", ())] == 1
        assert m[("proctor_approvals_pending", (("kind", "approval"),))] == 1
        assert m[("proctor_audit_log_events", ())] == len(events)
        assert m[("proctor_webhook_outbox", (("status", "pending"),))] == 0
        # Stage timings: a validation per submission, a step per run.
        assert m[("proctor_stage_seconds_count", (("stage", "validate"),))] == 5
        assert m[("proctor_stage_seconds_count", (("stage", "step"),))] == 3
        assert m[("proctor_stage_seconds_sum", (("stage", "step"),))] > 0
