"""Metrics scraped from a real server, JSON logs with masking, and the monthly review."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proctor import Proctor
from proctor.app.gateway import GatewayOptions
from proctor.app.report import build_report
from proctor.core.catalog import Catalog
from proctor.core.guards import GuardSettings
from proctor.testing import FrozenClock, RecordingTool, make_plan

from .test_cli import BIG_PAYMENT, SEARCH, manifest
from .test_http_serve import _token, serve

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}
SECRET = "SECRET-BODY-8d1f"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.mark.server
@pytest.mark.cli
@pytest.mark.slow
class TestServer:
    def test_metrics_after_a_scripted_workload(self, cli, proctor_exe, fresh_home, tmp_path):
        agent = _token(cli, fresh_home, "bot", "agent")["token"]
        auditor = _token(cli, fresh_home, "aud", "auditor")["token"]
        with serve(proctor_exe, fresh_home, tmp_path) as s:
            headers = {"Authorization": f"Bearer {agent}"}
            for _ in range(3):
                r = httpx.post(
                    f"{s.url}/v1/plans", json=manifest(SEARCH, agent="bot"), headers=headers
                )
                assert r.json()["status"] == "succeeded"
            r = httpx.post(
                f"{s.url}/v1/plans", json=manifest(BIG_PAYMENT, agent="bot"), headers=headers
            )
            assert r.json()["status"] == "awaiting_approval"
            denied = httpx.get(f"{s.url}/metrics", headers=headers)
            assert denied.status_code == 403
            text = httpx.get(f"{s.url}/metrics", headers={"Authorization": f"Bearer {auditor}"})
            assert text.status_code == 200
            assert text.headers["content-type"].startswith("text/plain")
            kpis = httpx.get(
                f"{s.url}/v1/kpis?by=agent", headers={"Authorization": f"Bearer {auditor}"}
            ).json()
            bad = httpx.get(
                f"{s.url}/v1/kpis?since=yesterday", headers={"Authorization": f"Bearer {auditor}"}
            )
        m = _samples(text.text)
        assert m[("proctor_decisions_total", (("outcome", "execute"), ("pattern", "agentic")))] == 3
        assert m[("proctor_approvals_pending", (("kind", "approval"),))] == 1
        assert m[("proctor_stage_seconds_count", (("stage", "step"),))] == 3
        assert m[("proctor_stage_seconds_count", (("stage", "decide"),))] == 4
        assert m[("proctor_audit_log_events", ())] >= 4 * 3
        assert m[("proctor_audit_events_total", (("type", "plan.submitted"),))] == 4
        assert ("proctor_checkpoint_age_seconds", ()) in m
        assert kpis["kpis"]["bot"]["counts"]["proposed"] == 4
        assert kpis["kpis"]["bot"]["counts"]["executed_steps"] == 3
        assert bad.status_code == 422 and bad.json()["field"] == "since"

    def test_json_logs_carry_events_masked(self, cli, proctor_exe, fresh_home, tmp_path):
        agent = _token(cli, fresh_home, "bot", "agent")["token"]
        email = (
            "email.send",
            {"to": "ada@example.org", "subject": "Hello", "body": SECRET, "external": False},
        )
        with serve(proctor_exe, fresh_home, tmp_path, "--json-logs") as s:
            r = httpx.post(
                f"{s.url}/v1/plans",
                json=manifest(email, agent="bot"),
                headers={
                    "Authorization": f"Bearer {agent}",
                    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                },
            )
            assert r.status_code == 201, r.text
            s.stop()
            lines = [json.loads(x) for x in s.stderr().splitlines() if x.startswith("{")]
        events = [x for x in lines if x.get("logger") == "proctor.audit"]
        submitted = next(x for x in events if x["event"] == "plan.submitted")
        assert submitted["data"]["steps"][0]["params"]["body"] == "***"
        assert submitted["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert SECRET not in s.stderr()
        assert all({"ts", "level", "logger", "message"} <= set(x) for x in lines)


class Scripted:
    version = "sha256:monthly"

    def evaluate(self, input):
        steps = {}
        for s in input["steps"]:
            o = {"shop.buy": "execute", "shop.big": "approve", "shop.no": "deny"}[s["action"]]
            d = {"outcome": o, "undo_window": 3600}
            if o == "approve":
                d |= {"approvals": 1, "approver_roles": ["finance"]}
            steps[s["id"]] = d
        return {"steps": steps, "plan": {"review_sample_rate": 0}}


class TestMonthlyReview:
    def test_figures_of_a_seeded_month(self, tmp_path):
        clock = FrozenClock(datetime(2026, 10, 3, 9, tzinfo=UTC))
        p = Proctor.in_memory(
            catalog=Catalog(),
            policy=Scripted(),
            clock=clock,
            options=GatewayOptions(),
            guards=GuardSettings(),
        )
        for name in ("shop.buy", "shop.big", "shop.no"):
            p.action(
                name, category="general", baselines=LOW, reversible=True, compensate=RecordingTool()
            )(RecordingTool())
        buys = [p.submit(make_plan([("shop.buy", {})])) for _ in range(4)]
        clock.advance(60)
        p.undo(buys[0].plan_id, "alice")
        clock.advance(timedelta(days=1))
        p.submit(make_plan([("shop.no", {})]))
        p.submit(make_plan([("shop.no", {})]))
        big = p.submit(make_plan([("shop.big", {})]))
        clock.advance(120)
        p.approve(big.plan_id, "fiona", roles=["finance"])
        p.guards.complain(buys[1].plan_id, by="alice", reason="not what I asked")
        clock.advance(timedelta(days=40))  # November: outside the month
        p.submit(make_plan([("shop.buy", {})]))
        bodies = [orjson.loads(e.body) for e in p.gateway.store.iter_events()]
        rep = build_report(bodies, "2026-10", origin="test/monthly")
        f = rep.figures
        assert f["proposed_per_day"][2] == 4 and f["proposed_per_day"][3] == 3
        assert sum(f["proposed_per_day"]) == 7
        assert f["top_denied"] == [("shop.no", 2)]
        assert f["approval_latency_s"] == {"count": 1, "median": 120.0, "p90": 120.0}
        assert list(f["policy_versions"]) == ["sha256:monthly"]
        assert f["policy_versions"]["sha256:monthly"]["plans"] == 7
        k = f["kpis"]
        assert k["counts"]["proposed"] == 7
        assert k["counts"]["executed_plans"] == 5
        assert k["false_action_rate"] == 2 / 5  # one undone, one complaint
        assert k["acceptance_rate"] == round(3 / 7, 4)
        assert "| False-action rate | 40.0% |" in rep.markdown
        assert "<svg" in rep.html
        assert not any(x in rep.html for x in ("<script", "src=", "href=", "@import"))
        assert "shop.no" in rep.html
