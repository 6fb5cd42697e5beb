"""``proctor policy test|check|eval|explain`` and hot reload of the bundle, audited."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from proctor import Proctor
from proctor.app.policy_reload import PolicyReloader
from proctor.policy import RegoPolicyEngine

from .test_cli import SEARCH, manifest, submit
from .test_http_serve import serve

pytestmark = pytest.mark.cli

FAILING = """package proctor_extra_test

import rego.v1

test_this_fails if {
    1 == 2
}

test_this_passes if {
    1 == 1
}
"""
INPUT = {
    "steps": [
        {
            "id": "s1",
            "category": "financial",
            "amount": 5000,
            "reversible": False,
            "params": {"amount": 5000},
            "action": "payments.refund",
        }
    ],
    "baseline": {"risk": 4, "auditability": 4, "ux": 2, "recovery": 3, "cost": 2},
    "baseline_total": 15,
    "context": {"thresholds": {"hybrid_max": 15}},
    "plan": {"agent_id": "bot", "on_behalf_of": "alice"},
}


class TestAuthoring:
    def test_policy_tests_pass_then_one_fails(self, cli, fresh_home):
        ok = cli("policy", "test", "--json", home=fresh_home)
        assert ok.code == 0, str(ok)
        assert ok.json()["failed"] == 0 and ok.json()["passed"] > 5
        (fresh_home / "policy" / "extra_test.rego").write_text(FAILING)
        bad = cli("policy", "test", "--json", home=fresh_home)
        assert bad.code == 1
        tests = {t["name"]: t for t in bad.json()["tests"]}
        assert tests["test_this_fails"]["passed"] is False
        assert tests["test_this_passes"]["passed"] is True

    def test_check_and_eval(self, cli, fresh_home, tmp_path):
        ok = cli("policy", "check", "--json", home=fresh_home)
        assert ok.code == 0 and ok.json()["version"].startswith("sha256:")
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "p.rego").write_text("package proctor\ndecision := {\n")
        r = cli("policy", "check", broken, "--json")
        assert r.code == 1 and r.error()["code"] == "invalid_policy"
        path = tmp_path / "input.json"
        path.write_text(json.dumps(INPUT))
        r = cli("policy", "eval", path, "--json", home=fresh_home)
        assert r.code == 0, str(r)
        assert r.json()["decision"]["outcome"] == "approve"
        assert r.json()["decision"]["steps"][0]["approver_roles"] == ["finance"]
        path.write_text('{"steps": "no"}')
        r = cli("policy", "eval", path, "--json", home=fresh_home)
        assert r.code == 1 and r.error()["field"] == "input.steps"

    def test_explain(self, cli, fresh_home, tmp_path):
        doc = submit(cli, fresh_home, tmp_path, manifest(SEARCH))
        r = cli("policy", "explain", doc["plan_id"], "--json", home=fresh_home)
        assert r.code == 0, str(r)
        e = r.json()
        assert e["policy_version"] == e["policy_in_force"]
        assert e["steps"][0]["outcome"] == "execute" and e["steps"][0]["reasons"]
        assert e["assessment"]["pattern"] == "agentic"
        assert cli("policy", "explain", "nope", home=fresh_home).code == 1


class TestHotReload:
    def test_a_new_bundle_replaces_the_old_and_a_broken_one_is_refused(self, fresh_home):
        with Proctor.open(fresh_home) as p:
            bundle = fresh_home / "policy"
            reloader = PolicyReloader(p.gateway, bundle, RegoPolicyEngine.from_directory)
            before = p.gateway.policy.version
            assert reloader.check() is None  # nothing changed
            data = json.loads((bundle / "data.json").read_text())
            data["proctor"]["settings"]["review_sample_rate"] = 0.5
            (bundle / "data.json").write_text(json.dumps(data))
            after = reloader.check()
            assert after is not None and after != before
            assert p.gateway.policy.version == after
            (bundle / "broken.rego").write_text("package proctor\ndecision := {\n")
            assert reloader.check() is None
            assert p.gateway.policy.version == after  # the previous policy stays
            types = [e.type for e in p.events()]
            assert types.count("policy.loaded") == 1 and types.count("policy.rejected") == 1
            assert p.verify().ok

    @pytest.mark.server
    @pytest.mark.slow
    def test_a_running_server_reloads(self, cli, proctor_exe, fresh_home, tmp_path):
        with serve(proctor_exe, fresh_home, tmp_path):
            shutil.copy(fresh_home / "policy" / "data.json", tmp_path / "data.json")
            data = json.loads((fresh_home / "policy" / "data.json").read_text())
            data["proctor"]["settings"]["review_sample_rate"] = 0.25
            (fresh_home / "policy" / "data.json").write_text(json.dumps(data))
            deadline = time.monotonic() + 20
            while True:
                events = cli("audit", "events", "--json", home=fresh_home).json()["events"]
                if any(e["type"] == "policy.loaded" for e in events):
                    break
                assert time.monotonic() < deadline, "the server never reloaded its policy"
                time.sleep(0.5)
        loaded = next(e for e in events if e["type"] == "policy.loaded")
        assert loaded["data"]["version"] != loaded["data"]["previous"]
