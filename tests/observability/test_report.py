"""The monthly review generated for a seeded month and checked for its figures; the CLI."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from proctor import Proctor
from proctor.app.gateway import GatewayOptions
from proctor.app.report import build_report, month_bounds
from proctor.core.catalog import Catalog
from proctor.core.guards import GuardSettings
from proctor.testing import FrozenClock, RecordingTool, make_plan

from .conftest import LOW, History, clean_env, manifest, run_cli

OUTCOMES = {
    "shop.buy": "execute",
    "shop.big": "approve",
    "shop.huge": "approve",
    "shop.ask": "confirm",
    "shop.no": "deny",
}


class Scripted:
    version = "sha256:november"

    def evaluate(self, input):
        steps = {}
        for s in input["steps"]:
            d = {"outcome": OUTCOMES[s["action"]], "undo_window": 3600}
            if d["outcome"] == "approve":
                # shop.huge needs two approvers
                n = 2 if s["action"] == "shop.huge" else 1
                d |= {"approvals": n, "approver_roles": ["finance"]}
            steps[s["id"]] = d
        return {"steps": steps, "plan": {"review_sample_rate": 1}}


def _instance(at: datetime, **options: Any) -> tuple[Proctor, FrozenClock]:
    """An in-memory instance under ``Scripted``, its clock at ``at``."""
    clock = FrozenClock(at)
    p = Proctor.in_memory(
        catalog=Catalog(),
        policy=Scripted(),
        clock=clock,
        options=GatewayOptions(**options),
        guards=GuardSettings(),
    )
    for name in OUTCOMES:
        p.action(
            name, category="general", baselines=LOW, reversible=True, compensate=RecordingTool()
        )(RecordingTool())
    return p, clock


def _report(p: Proctor, month: str = "2026-11") -> dict[str, Any]:
    bodies = [orjson.loads(e.body) for e in p.gateway.store.iter_events()]
    return build_report(bodies, month, origin="test").figures


def _seeded_month():
    """November 2026, by hand: every figure below is counted from this script."""
    p, clock = _instance(datetime(2026, 10, 20, 9, tzinfo=UTC))

    def submit(action, agent="bot-a"):
        return p.submit(make_plan([(action, {})], agent_id=agent))

    # October (the baseline month): two plans, one undone.
    old = submit("shop.buy")
    submit("shop.buy")
    p.undo(old.plan_id, "alice")
    # Week 1 of November (day 2): three buys by bot-a, one denied, one to confirm.
    clock.advance(datetime(2026, 11, 2, 9, tzinfo=UTC) - clock.now())
    buys = [submit("shop.buy") for _ in range(3)]
    submit("shop.no")
    ask = submit("shop.ask", agent="bot-b")
    clock.advance(300)
    p.confirm(ask.plan_id, "alice")
    # Week 2 (day 10): bot-b; two approvals after 2 minutes and 2 hours; a complaint.
    clock.advance(datetime(2026, 11, 10, 9, tzinfo=UTC) - clock.now())
    big1, big2 = submit("shop.big", agent="bot-b"), submit("shop.big", agent="bot-b")
    submit("shop.no", agent="bot-b")
    clock.advance(120)
    p.approve(big1.plan_id, "fiona", roles=["finance"])
    clock.advance(7200 - 120)
    p.approve(big2.plan_id, "fiona", roles=["finance"])
    p.guards.complain(buys[0].plan_id, by="alice", reason="not what I asked")
    p.guards.mark_review(buys[1].plan_id, "fine", reviewer="rita")
    p.guards.mark_review(buys[2].plan_id, "wrong", reviewer="rita")
    p.guards.kill("action", "shop.big", by="ops", reason="supplier incident")
    # December: outside the month.
    clock.advance(datetime(2026, 12, 1, 0, tzinfo=UTC) - clock.now())
    submit("shop.buy")
    bodies = [orjson.loads(e.body) for e in p.gateway.store.iter_events()]
    return build_report(bodies, "2026-11", origin="test/november"), buys


class TestSeededMonth:
    def test_the_figures_are_the_ones_the_script_produced(self):
        """KPIs, their trend, weeks, agents, denials, latencies, kills, reviews, versions."""
        rep, buys = _seeded_month()
        f = rep.figures

        k, before = f["kpis"], f["kpis_before"]
        assert k["counts"]["proposed"] == 8
        # Executed: 3 buys, the confirmed ask, the 2 approved bigs = 6; the complaint and
        # the wrong review make 2 false; accepted = 6 - 2 = 4 of 8 proposed.
        assert k["counts"]["executed_plans"] == 6
        assert k["false_action_rate"] == round(2 / 6, 4)
        assert k["counts"]["false_signals"] == {"complaint": 1, "review_wrong": 1}
        assert k["acceptance_rate"] == 0.5
        assert before["counts"]["proposed"] == 2 and before["false_action_rate"] == 0.5
        assert [w["proposed"] for w in f["weeks"]] == [5, 3, 0, 0, 0]
        assert [w["label"] for w in f["weeks"]][::4] == ["11-01-11-07", "11-29-11-30"]
        # Each week is judged as of the month's end: the complaint and the review of the
        # 10th count against the plans of the 2nd.
        assert f["weeks"][0]["acceptance_rate"] == round(2 / 5, 4)
        assert f["weeks"][0]["false_action_rate"] == 0.5
        assert f["weeks"][1]["acceptance_rate"] == round(2 / 3, 4)
        assert set(f["kpis_by_agent"]) == {"bot-a", "bot-b"}
        assert f["kpis_by_agent"]["bot-a"]["counts"]["proposed"] == 4
        assert f["top_denied"] == [("shop.no", 2)]
        assert f["approval_latency_s"] == {"count": 2, "median": 3660.0, "p90": 7200.0}
        assert f["confirmation_latency_s"] == {"count": 1, "median": 300.0, "p90": 300.0}
        assert dict(f["latency_histogram"]["approval"])["≤5 min"] == 1
        assert dict(f["latency_histogram"]["approval"])["≤4 h"] == 1
        assert [(x["switch"], x["reason"]) for x in f["kill_switches"]] == [
            ("action:shop.big", "supplier incident")
        ]
        sampled = {s["plan_id"]: (s["verdict"], s["reviewer"]) for s in f["sampled_reviews"]}
        assert sampled[buys[1].plan_id] == ("fine", "rita")
        assert sampled[buys[2].plan_id] == ("wrong", "rita")
        assert f["reviews"] == {
            "sampled": 3,
            "fine": 1,
            "wrong": 1,
            "pending": 1,
        }  # the auto-run buys
        assert f["policy_versions"]["sha256:november"]["plans"] == 8

    def test_both_renderings_carry_the_figures_and_load_nothing(self):
        """Markdown and HTML show the same numbers; the HTML has charts and no outside request."""
        rep, _ = _seeded_month()

        assert "| False-action rate | 33.3% (-16.7 pts) |" in rep.markdown
        assert "| 11-01-11-07 | 5 | 40.0% | 50.0% |" in rep.markdown
        assert "| bot-b | 4 | 75.0% | 0.0% |" in rep.markdown
        assert "2 approvals; median 3660.0 s, p90 7200.0 s." in rep.markdown
        assert "`action:shop.big` by ops: supplier incident" in rep.markdown
        assert rep.html.count("<svg") == 3
        assert "33.3% (-16.7 pts)" in rep.html
        assert "supplier incident" in rep.html
        assert not re.search(r"<script|<link|<img|src=|href=|@import|url\(", rep.html)


class TestApprovalLatency:
    def test_it_runs_to_the_decisive_approval_once_per_plan(self):
        """Two approvers at 10 and 60 minutes: one sample, 60 minutes (the quorum's)."""
        p, clock = _instance(datetime(2026, 11, 2, 9, tzinfo=UTC))
        plan = p.submit(make_plan([("shop.huge", {})], agent_id="bot"))
        clock.advance(600)
        p.approve(plan.plan_id, "ann", roles=["finance"])
        clock.advance(3000)
        p.approve(plan.plan_id, "bob", roles=["finance"])

        f = _report(p)

        assert p.get(plan.plan_id).status.value == "succeeded"
        assert f["approval_latency_s"] == {"count": 1, "median": 3600.0, "p90": 3600.0}
        assert sum(n for _, n in f["latency_histogram"]["approval"]) == 1

    def test_each_approving_step_needs_its_own_quorum(self):
        """Steps needing two and one finance approvers: the second approver is decisive."""
        p, clock = _instance(datetime(2026, 11, 2, 9, tzinfo=UTC))
        plan = p.submit(make_plan([("shop.huge", {}), ("shop.big", {})], agent_id="bot"))
        clock.advance(600)
        p.approve(plan.plan_id, "ann", roles=["finance"])
        clock.advance(3000)
        p.approve(plan.plan_id, "bob", roles=["finance"])

        f = _report(p)

        assert p.get(plan.plan_id).status.value == "succeeded"
        assert f["approval_latency_s"] == {"count": 1, "median": 3600.0, "p90": 3600.0}

    def test_a_plan_confirmed_then_approved_is_proposed_once(self):
        """Her confirmation, then the approval wait: each latency from its own routing."""
        p, clock = _instance(datetime(2026, 11, 2, 9, tzinfo=UTC))
        plan = p.submit(make_plan([("shop.ask", {}), ("shop.big", {})], agent_id="bot"))
        clock.advance(300)
        p.confirm(plan.plan_id, "alice")
        clock.advance(600)
        p.approve(plan.plan_id, "ann", roles=["finance"])

        f = _report(p)

        assert p.get(plan.plan_id).status.value == "succeeded"
        assert sum(f["proposed_per_day"]) == 1
        assert f["confirmation_latency_s"]["median"] == 300.0
        assert f["approval_latency_s"] == {"count": 1, "median": 600.0, "p90": 600.0}

    def test_an_approval_short_of_the_quorum_is_no_sample(self):
        """One approver of two, then the plan expires: no approval latency at all."""
        p, clock = _instance(datetime(2026, 11, 2, 9, tzinfo=UTC))
        plan = p.submit(make_plan([("shop.huge", {})], agent_id="bot"))
        clock.advance(600)
        p.approve(plan.plan_id, "ann", roles=["finance"])
        clock.advance(86_400)
        p.tick()

        f = _report(p)

        assert p.get(plan.plan_id).status.value == "expired"
        assert f["approval_latency_s"]["count"] == 0

    def test_a_wait_that_crosses_into_the_month_counts_in_it(self):
        """Routed on Oct 31 at 23:00, approved on Nov 1 at 02:00: a 3-hour sample in November."""
        p, clock = _instance(datetime(2026, 10, 31, 23, tzinfo=UTC))
        late = p.submit(make_plan([("shop.huge", {})], agent_id="bot"))
        clock.advance(3 * 3600)
        p.approve(late.plan_id, "ann", roles=["finance"])
        p.approve(late.plan_id, "bob", roles=["finance"])
        ask = p.submit(make_plan([("shop.ask", {})], agent_id="bot"))
        clock.advance(60)
        p.confirm(ask.plan_id, "alice")

        november, october = _report(p), _report(p, "2026-10")

        assert november["approval_latency_s"] == {"count": 1, "median": 10800.0, "p90": 10800.0}
        assert november["confirmation_latency_s"]["count"] == 1
        assert october["approval_latency_s"]["count"] == 0

    def test_a_wait_longer_than_a_month_still_counts(self):
        """An approval TTL of 60 days: routed Sep 20, approved Nov 3, counted in November."""
        p, clock = _instance(datetime(2026, 9, 20, 9, tzinfo=UTC), approval_ttl=timedelta(days=60))
        plan = p.submit(make_plan([("shop.big", {})], agent_id="bot"))
        clock.advance(datetime(2026, 11, 3, 9, tzinfo=UTC) - clock.now())
        p.approve(plan.plan_id, "fiona", roles=["finance"])

        f = _report(p)

        assert f["approval_latency_s"]["count"] == 1
        assert f["approval_latency_s"]["median"] == 44 * 86_400


class TestPreviousMonth:
    def test_its_anomaly_delta_compares_it_with_the_month_before_it(self):
        """Three anomalies in September, one in October: October's delta is -2, not +1."""
        h = History(datetime(2026, 9, 10, 9, tzinfo=UTC))
        for agent in ("bot-a", "bot-b", "bot-c"):
            h.ev("anomaly.detected", None, data={"agent_id": agent})
        h.at(60 * 24 * 30).ev("anomaly.detected", None, data={"agent_id": "bot-d"})
        h.at(60 * 24 * 60).ev("anomaly.detected", None, data={"agent_id": "bot-d"})

        f = build_report(h.events, "2026-11", origin="test").figures

        before = f["kpis_before"]
        assert (before["counts"]["anomalies"], before["counts"]["anomalies_before"]) == (1, 3)
        assert before["anomaly_delta"] == -2
        assert f["kpis"]["anomaly_delta"] == 0


class TestCorrections:
    def test_a_review_corrected_to_fine_is_accepted(self):
        """``wrong`` then ``fine``: no false action, and the plan counts as accepted that day."""
        p, clock = _instance(datetime(2026, 11, 2, 9, tzinfo=UTC))
        plan = p.submit(make_plan([("shop.buy", {})], agent_id="bot"))
        clock.advance(60)
        p.guards.mark_review(plan.plan_id, "wrong", reviewer="rita")
        clock.advance(60)
        p.guards.mark_review(plan.plan_id, "fine", reviewer="rita", note="it was right")

        f = _report(p)

        assert f["reviews"]["fine"] == 1 and f["reviews"]["wrong"] == 0
        assert f["kpis"]["false_action_rate"] == 0.0
        assert f["kpis"]["acceptance_rate"] == 1.0
        assert sum(f["accepted_per_day"]) == 1


class TestMonthBounds:
    @pytest.mark.parametrize(
        ("month", "end"),
        [("2026-02", "2026-03-01"), ("2028-02", "2028-03-01"), ("2026-12", "2027-01-01")],
    )
    def test_a_month_ends_where_the_next_begins(self, month, end):
        """Month lengths, leap years and the year boundary."""
        assert month_bounds(month)[1] == datetime.fromisoformat(end).replace(tzinfo=UTC)

    @pytest.mark.parametrize("bad", ["2026-13", "2026-1", "26-11", "2026-11-01", "", "1970-01"])
    def test_a_bad_month_is_refused(self, bad):
        """Anything but YYYY-MM (from 1970-02 on) is a ValueError naming the value."""
        with pytest.raises(ValueError, match="month must be"):
            month_bounds(bad)

    def test_the_last_month_of_the_calendar_is_refused(self):
        """9999-12 ends past the last datetime: a ValueError, not an OverflowError."""
        with pytest.raises(ValueError, match="9999-11 or earlier"):
            month_bounds("9999-12")

        assert month_bounds("9999-11")[1] == datetime(9999, 12, 1, tzinfo=UTC)


@pytest.mark.cli
@pytest.mark.slow
class TestCli:
    def test_kpi_and_report_on_an_instance(self, proctor_exe, home, tmp_path):
        """`proctor kpi` and `proctor report` read the instance; bad flags exit 2."""
        plan = tmp_path / "plan.json"
        plan.write_text(
            json.dumps(manifest(("travel.search", {"destination": "Lisbon", "date": "2027-03-12"})))
        )
        submitted = run_cli(proctor_exe, "submit", plan, "--json", home=home)
        assert submitted.returncode == 0, submitted.stderr
        month = json.loads(submitted.stdout)["created_at"][:7]

        kpi = run_cli(proctor_exe, "kpi", "--by", "agent", "--json", home=home)
        table = run_cli(proctor_exe, "kpi", home=home)
        report = run_cli(
            proctor_exe, "report", "--month", month, "--out", tmp_path / "out", "--json", home=home
        )
        bad_by = run_cli(proctor_exe, "kpi", "--by", "planet", home=home)
        bad_since = run_cli(proctor_exe, "kpi", "--since", "yesterday", home=home)
        inverted = run_cli(
            proctor_exe, "kpi", "--since", "2030-01-02", "--until", "2030-01-01", home=home
        )
        bad_month = run_cli(proctor_exe, "report", "--month", "2026-13", home=home)

        assert kpi.returncode == 0, kpi.stderr
        groups = json.loads(kpi.stdout)["kpis"]
        assert groups["bot"]["counts"]["executed_steps"] == 1
        assert groups["bot"]["acceptance_rate"] == 1.0
        assert table.returncode == 0 and "acceptance" in table.stdout
        assert report.returncode == 0, report.stderr
        doc = json.loads(report.stdout)
        assert doc["figures"]["kpis"]["counts"]["proposed"] == 1
        md = (tmp_path / "out" / f"review-{month}.md").read_text()
        assert f"# Governance review {month}" in md
        assert (tmp_path / "out" / f"review-{month}.html").read_text().count("<svg") == 3
        for bad in (bad_by, bad_since, inverted, bad_month):
            assert bad.returncode == 2, bad.stderr
        assert "--month" in bad_month.stderr and "--by" in bad_by.stderr

    def test_kpi_reads_a_date_without_offset_as_utc(self, proctor_exe, home, tmp_path):
        """In a zone 9 hours ahead, --since 2026-11-01 still starts at midnight UTC."""
        with Proctor.open(home, clock=FrozenClock(datetime(2026, 10, 31, 23, 30, tzinfo=UTC))) as p:
            p.submit(manifest(("travel.search", {"destination": "Lisbon", "date": "2027-03-12"})))

        def kpi(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [proctor_exe, "kpi", *args, "--home", str(home)],
                capture_output=True,
                text=True,
                env=clean_env({"TZ": "XST-9"}),  # POSIX: 9 hours east of UTC
                timeout=60,
                check=False,
            )

        november = kpi("--since", "2026-11-01", "--until", "2026-11-02", "--json")
        halloween = kpi("--since", "2026-10-31T23:00", "--until", "2026-11-01", "--json")
        table = kpi("--since", "2026-11-01T09:00+09:00", "--until", "2026-11-02")

        assert november.returncode == 0, november.stderr
        doc = json.loads(november.stdout)
        assert doc["since"] == "2026-11-01T00:00:00+00:00"
        assert doc["kpis"]["all"]["counts"]["proposed"] == 0
        assert json.loads(halloween.stdout)["kpis"]["all"]["counts"]["proposed"] == 1
        assert "KPIs 2026-11-01 00:00 UTC → 2026-11-02 00:00 UTC" in table.stdout

    def test_report_reaches_back_as_far_as_an_approval_may_wait(self, proctor_exe, home, tmp_path):
        """approval_ttl_seconds of 60 days: a plan routed Sep 20, approved Nov 3, is timed."""
        cfg = home / "config.toml"
        cfg.write_text(
            re.sub(r"approval_ttl_seconds = \d+", "approval_ttl_seconds = 5184000", cfg.read_text())
        )
        hr = manifest(("hr.search_candidates", {"skill": "python", "limit": 5}), agent="recruiter")
        with Proctor.open(home, clock=FrozenClock(datetime(2026, 9, 20, 9, tzinfo=UTC))) as p:
            plan = p.submit(hr)
        assert plan.status.value == "awaiting_approval"
        with Proctor.open(home, clock=FrozenClock(datetime(2026, 11, 3, 9, tzinfo=UTC))) as p:
            assert p.approve(plan.plan_id, "hannah", roles=["hr"]).status.value == "succeeded"

        r = run_cli(
            proctor_exe, "report", "--month", "2026-11", "--out", tmp_path, "--json", home=home
        )

        assert r.returncode == 0, r.stderr
        latency = json.loads(r.stdout)["figures"]["approval_latency_s"]
        assert latency == {"count": 1, "median": 44 * 86_400.0, "p90": 44 * 86_400.0}

    def test_dates_at_the_ends_of_the_calendar_and_bad_out_dirs(self, proctor_exe, home, tmp_path):
        """Years 1 and 9999 are read, clamped or refused (exit 2), a bad --out exits 2."""
        a_file = tmp_path / "a-file"
        a_file.write_text("keep me")
        taken = tmp_path / "taken"
        (taken / "review-2026-11.html").mkdir(parents=True)

        old = run_cli(proctor_exe, "kpi", "--since", "1000-01-01T00:00:00Z", "--json", home=home)
        early = run_cli(proctor_exe, "kpi", "--until", "0001-01-05T00:00:00Z", "--json", home=home)
        naive = run_cli(proctor_exe, "kpi", "--since", "0001-01-01", "--json", home=home)
        last = run_cli(proctor_exe, "report", "--month", "9999-12", home=home)
        runs = {
            out: run_cli(proctor_exe, "report", "--month", "2026-11", "--out", out, home=home)
            for out in ("/dev/null/x", a_file, taken)
        }

        assert old.returncode == 0, old.stderr
        assert early.returncode == 0, early.stderr
        assert json.loads(early.stdout)["since"] == "0001-01-01T00:00:00+00:00"
        assert naive.returncode == 0, naive.stderr  # UTC: no local zone to shift it out of range
        assert json.loads(naive.stdout)["since"] == "0001-01-01T00:00:00+00:00"
        for bad in (last, *runs.values()):
            assert bad.returncode == 2, bad.stderr
            assert "Traceback" not in bad.stderr
        assert "--month" in last.stderr and "9999-11" in last.stderr
        assert all("--out" in r.stderr for r in runs.values())
        assert a_file.read_text() == "keep me"
        assert [p.name for p in taken.iterdir()] == ["review-2026-11.html"]  # nothing half-written
