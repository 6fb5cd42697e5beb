"""The guard commands through the installed script: kill, unkill, guards, whitelist, autonomy,
review, complain, resolve and worker."""

from __future__ import annotations

import pytest

from .test_cli import BOOKING, SEARCH, SUBSCRIPTION, manifest, submit

pytestmark = pytest.mark.cli


class TestKill:
    def test_kill_denies_and_unkill_restores(self, cli, fresh_home, tmp_path):
        # test-bot has not acted yet in this instance: a pre-emptive stop needs --allow-unknown.
        kill = ("kill", "--agent", "test-bot", "--allow-unknown", "--as", "ops", "-m", "incident 7")
        r = cli(*kill, home=fresh_home)
        assert r.code == 0, str(r)
        denied = submit(cli, fresh_home, tmp_path, manifest(SEARCH))
        assert denied["status"] == "denied"
        assert "incident 7" in " ".join(denied["reasons"])
        status = cli("guards", "--json", home=fresh_home).json()
        assert status["kill"]["agent:test-bot"]["reason"] == "incident 7"
        assert cli("unkill", "--agent", "test-bot", "--as", "ops", home=fresh_home).code == 0
        assert cli("unkill", "--agent", "test-bot", "--as", "ops", home=fresh_home).code == 1
        assert submit(cli, fresh_home, tmp_path, manifest(SEARCH))["status"] == "succeeded"

    @pytest.mark.parametrize(
        "args",
        [
            ("kill", "--as", "ops"),
            ("kill", "--global", "--agent", "x", "--as", "ops"),
            ("whitelist", "bot"),
            ("autonomy", "set", "alice", "travel.pay", "auto", "--below", str(10**23)),
            ("autonomy", "set", "alice", "travel.pay", "auto", "--below", str(2**53)),
        ],
    )
    def test_usage_errors_exit_2(self, cli, fresh_home, args):
        r = cli(*args, home=fresh_home)
        assert r.code == 2, str(r)
        assert "Traceback" not in r.err

    def test_help_shows_the_mcp_action_shape(self, cli):
        """kill --help names mcp.<server>.<tool> whole: the markdown help read <server> and
        <tool> as HTML tags and printed "an MCP tool's mcp.." (ops review D9)."""
        shown = cli("kill", "--help")

        assert shown.code == 0, str(shown)
        assert "mcp.<server>.<tool>" in shown.out
        assert "mcp.." not in shown.out


class TestWhitelistAndAutonomy:
    def test_whitelist(self, cli, fresh_home, tmp_path):
        assert cli("whitelist", "test-bot", "travel.search", home=fresh_home).code == 0
        assert submit(cli, fresh_home, tmp_path, manifest(SEARCH))["status"] == "succeeded"
        assert submit(cli, fresh_home, tmp_path, manifest(BOOKING))["status"] == "denied"
        bad = cli("whitelist", "test-bot", "no.such", "--json", home=fresh_home)
        assert bad.code == 1 and bad.error()["field"] == "actions"
        assert cli("whitelist", "test-bot", "--clear", home=fresh_home).code == 0
        assert submit(cli, fresh_home, tmp_path, manifest(BOOKING))["status"] == "succeeded"

    def test_autonomy_confirm_level(self, cli, fresh_home, tmp_path):
        r = cli("autonomy", "set", "alice", "travel.search", "confirm", home=fresh_home)
        assert r.code == 0, str(r)
        doc = submit(cli, fresh_home, tmp_path, manifest(SEARCH))
        assert doc["status"] == "awaiting_confirmation"
        shown = cli("autonomy", "show", "--json", home=fresh_home).json()
        assert shown["autonomy"]["alice|travel.search"]["level"] == "confirm"
        bad = cli("autonomy", "set", "alice", "travel.search", "yolo", "--json", home=fresh_home)
        assert bad.code == 1 and bad.error()["field"] == "level"
        none = cli("autonomy", "accept", "alice", "travel.search", "--json", home=fresh_home)
        assert none.code == 1 and none.error()["code"] == "not_found"


class TestReviewAndComplaints:
    def test_complain_and_review_errors(self, cli, fresh_home, tmp_path):
        doc = submit(cli, fresh_home, tmp_path, manifest(SUBSCRIPTION))
        r = cli("complain", doc["plan_id"], "--as", "alice", "-m", "not me", home=fresh_home)
        assert r.code == 0, str(r)
        assert cli("review", "list", "--json", home=fresh_home).json()["plans"] == []
        r = cli(
            "review", "mark", doc["plan_id"], "wrong", "--as", "rita", "--json", home=fresh_home
        )
        assert r.code == 1 and r.error()["code"] == "conflict"  # it was not sampled
        missing = cli("complain", "nope", "--as", "alice", "-m", "x", "--json", home=fresh_home)
        assert missing.code == 1 and missing.error()["code"] == "not_found"


class TestWorkerAndResolve:
    def test_worker_once_and_resolve_of_a_plan_without_attention(self, cli, fresh_home, tmp_path):
        r = cli("worker", "--once", "--json", home=fresh_home)
        assert r.code == 0, str(r)
        assert r.json() == {"timers_fired": 0, "plans_resumed": 0}
        doc = submit(cli, fresh_home, tmp_path, manifest(SEARCH))
        r = cli(
            "resolve", doc["plan_id"], "s1", "--succeeded", "--as", "ops", "--json", home=fresh_home
        )
        assert r.code == 1 and r.error()["code"] == "conflict"
        r = cli("resolve", doc["plan_id"], "s1", "--as", "ops", home=fresh_home)
        assert r.code == 2


class TestKpiAndReport:
    def test_kpi_and_report_commands(self, cli, fresh_home, tmp_path):
        submit(cli, fresh_home, tmp_path, manifest(SEARCH))
        r = cli("kpi", "--json", "--by", "action", home=fresh_home)
        assert r.code == 0, str(r)
        assert r.json()["kpis"]["travel.search"]["counts"]["executed_steps"] == 1
        assert cli("kpi", "--since", "not-a-date", home=fresh_home).code == 2
        assert cli("kpi", "--by", "planet", home=fresh_home).code == 2
        month = cli("kpi", "--json", home=fresh_home).json()["until"][:7]
        out = tmp_path / "review"
        r = cli("report", "--month", month, "--out", out, "--json", home=fresh_home)
        assert r.code == 0, str(r)
        assert r.json()["figures"]["kpis"]["counts"]["proposed"] == 1
        assert (out / f"review-{month}.md").read_text().startswith(f"# Governance review {month}")
        assert (out / f"review-{month}.html").exists()
        assert cli("report", "--month", "2026-13", home=fresh_home).code == 2
