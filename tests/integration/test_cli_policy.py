"""``proctor policy test|check|eval|explain`` and hot reload of the bundle, audited."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from proctor import Proctor
from proctor.app.policy_reload import PolicyReloader
from proctor.policy import RegoPolicyEngine
from proctor.testing import free_port

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
# Two modules of one package defining one function with different arities: rego-cpp (regopy
# 1.5.2) crashes with SIGSEGV while compiling them.
ARITY_A = """package proctor

import rego.v1

f(x) := 1

decision := {"steps": {s.id: {"outcome": "execute"} | some s in input.steps}} if f(1) == 1
"""
ARITY_B = """package proctor

import rego.v1

f(x, y) := 2
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
        assert ok.json()["contract"] == 1
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

    @pytest.mark.parametrize(
        ("rego", "says"),
        [
            pytest.param(
                'package proctr\n\nimport rego.v1\n\ndecision := {"steps": {}}\n',
                "data.proctor.decision is undefined",
                id="wrong-package",
            ),
            pytest.param(
                "package proctor\n\nimport rego.v1\n\n"
                'decision := {"steps": {s.id: {"outcome": "allow"} | some s in input.steps}}\n',
                "'allow' is not a valid Outcome",
                id="unknown-outcome",
            ),
            pytest.param(
                "package proctor\n\nimport rego.v1\n\n"
                'decision := {"steps": {s.id: {"outcome": "execute"} |\n'
                '    some s in input.steps; s.category != "pii"}}\n',
                "a step has no decision (for a pii step",
                id="a-category-left-out",
            ),
        ],
    )
    def test_check_refuses_a_bundle_that_compiles_but_breaks_the_contract(
        self, cli, tmp_path, rego, says
    ):
        """A bundle that compiles is still refused when its answers break the contract: an
        undefined entrypoint, an unknown outcome, a step left without a decision."""
        bundle = tmp_path / "bundle"
        bundle.mkdir()
        (bundle / "p.rego").write_text(rego)

        r = cli("policy", "check", bundle, "--json")

        assert r.code == 1
        assert r.error()["code"] == "invalid_policy"
        assert "breaks the policy contract (version 1)" in r.error()["message"]
        assert says in r.error()["message"]

    def test_check_survives_a_bundle_that_crashes_the_engine(self, cli, tmp_path):
        """A function defined with two arities in one package makes rego-cpp segfault while
        compiling: check reports it (exit 1, invalid_policy) instead of dying of SIGSEGV."""
        bundle = tmp_path / "bundle"
        bundle.mkdir()
        (bundle / "a.rego").write_text(ARITY_A)
        (bundle / "b.rego").write_text(ARITY_B)

        r = cli("policy", "check", bundle, "--json")

        assert r.code == 1, str(r)
        assert r.error()["code"] == "invalid_policy"
        assert "crashed (signal SIGSEGV)" in r.error()["message"]

    def test_explain(self, cli, fresh_home, tmp_path):
        doc = submit(cli, fresh_home, tmp_path, manifest(SEARCH))
        r = cli("policy", "explain", doc["plan_id"], "--json", home=fresh_home)
        assert r.code == 0, str(r)
        e = r.json()
        assert e["policy_version"] == e["policy_in_force"]
        assert e["steps"][0]["outcome"] == "execute" and e["steps"][0]["reasons"]
        assert e["assessment"]["pattern"] == "agentic"
        assert e["assessment"]["total"] == sum(e["assessment"]["scores"].values())
        assert cli("policy", "explain", "nope", home=fresh_home).code == 1

    def test_explain_tells_the_deciding_version_from_the_one_in_force(
        self, cli, fresh_home, tmp_path
    ):
        """After the bundle changes, explain still names the version that decided the plan
        and says which one is in force now."""
        doc = submit(cli, fresh_home, tmp_path, manifest(SEARCH))
        data_json = fresh_home / "policy" / "data.json"
        data = json.loads(data_json.read_text())
        data["proctor"]["settings"]["review_sample_rate"] = 0.5
        data_json.write_text(json.dumps(data))

        e = cli("policy", "explain", doc["plan_id"], "--json", home=fresh_home).json()
        human = cli("policy", "explain", doc["plan_id"], home=fresh_home)

        assert e["policy_version"] == doc["policy_version"]
        assert e["policy_in_force"] != e["policy_version"]
        assert f"in force now: {e['policy_in_force']}" in human.out


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

    def test_a_bundle_that_compiles_but_breaks_the_contract_is_refused(self, fresh_home):
        """A misspelt package compiles but leaves data.proctor.decision undefined: the
        reloader refuses it (policy.rejected, with the reason) and keeps the policy in force,
        which still decides plans."""
        with Proctor.open(fresh_home) as p:
            bundle = fresh_home / "policy"
            reloader = PolicyReloader(p.gateway, bundle, RegoPolicyEngine.from_directory)
            before = p.gateway.policy.version
            rego = (bundle / "proctor.rego").read_text()
            (bundle / "proctor.rego").write_text(
                rego.replace("package proctor\n", "package proctr\n", 1)
            )

            assert reloader.check() is None

            assert p.gateway.policy.version == before
            (row,) = [e for e in p.events() if e.type == "policy.rejected"]
            rejected = json.loads(row.body)["data"]
            assert rejected["kept"] == before
            assert "breaks the policy contract (version 1)" in rejected["reason"]
            assert "undefined" in rejected["reason"]
            rec = p.submit(manifest(SEARCH))
            assert rec.status.value == "succeeded" and rec.policy_version == before

    @pytest.mark.server
    def test_serve_refuses_to_start_on_a_bundle_that_crashes_the_engine(self, cli, fresh_home):
        """`proctor serve` compiles a custom bundle in a child first: one that crashes
        rego-cpp ends it with exit 1 and the reason (it used to die of SIGSEGV, silently)."""
        bundle = fresh_home / "policy"
        for path in bundle.glob("*.rego"):
            path.unlink()
        (bundle / "a.rego").write_text(ARITY_A)
        (bundle / "b.rego").write_text(ARITY_B)

        r = cli("serve", "--port", str(free_port()), home=fresh_home, timeout=120)

        assert r.code == 1, str(r)
        assert "crashed (signal SIGSEGV)" in r.err, str(r)

    def test_the_start_up_check_skips_the_default_bundle_and_reports_contract_problems(
        self, fresh_home, monkeypatch
    ):
        """The packaged bundle, unchanged, is not compiled in a child (it is known good); a
        custom one is, and its contract violations come back for serve to print."""
        import proctor.app.policy_reload as policy_reload
        from proctor.bootstrap import precheck_policy

        real = policy_reload.validate_bundle
        calls: list[object] = []

        def counting(*args, **kwargs):
            calls.append(args[1])
            return real(*args, **kwargs)

        monkeypatch.setattr(policy_reload, "validate_bundle", counting)
        assert precheck_policy(fresh_home) == [] and calls == []

        bundle = fresh_home / "policy"
        for path in bundle.glob("*.rego"):
            path.unlink()
        (bundle / "p.rego").write_text(
            'package proctor\n\nimport rego.v1\n\ndecision := {"steps": {}, "plan": {}}\n'
        )
        problems = precheck_policy(fresh_home)
        assert calls == [bundle]
        assert problems and any("no decision" in p for p in problems), problems

    def test_a_bundle_that_crashes_the_engine_is_refused_and_the_process_lives(self, fresh_home):
        """The reloader compiles a new bundle in a child process first: one that crashes
        rego-cpp is refused (policy.rejected) and this process keeps its policy."""
        with Proctor.open(fresh_home) as p:
            bundle = fresh_home / "policy"
            reloader = PolicyReloader(p.gateway, bundle, RegoPolicyEngine.from_directory)
            before = p.gateway.policy.version
            for path in bundle.glob("*.rego"):
                path.unlink()
            (bundle / "a.rego").write_text(ARITY_A)
            (bundle / "b.rego").write_text(ARITY_B)

            assert reloader.check() is None

            assert p.gateway.policy.version == before
            (row,) = [e for e in p.events() if e.type == "policy.rejected"]
            assert "crashed (signal SIGSEGV)" in json.loads(row.body)["data"]["reason"]
            assert p.submit(manifest(SEARCH)).status.value == "succeeded"

    @pytest.mark.server
    @pytest.mark.slow
    def test_a_running_server_reloads(self, cli, proctor_exe, fresh_home, tmp_path):
        """A running `proctor serve` picks up a changed bundle: policy.loaded is audited with
        the new and previous versions, and the next plan is decided by the new policy (and
        records its version) while the plan decided before keeps the old one."""

        def token(name: str, role: str) -> dict[str, str]:
            args = ("tokens", "create", "--name", name, "--role", role, "--json")
            return {"Authorization": f"Bearer {cli(*args, home=fresh_home).json()['token']}"}

        auth, auditor = token("test-bot", "agent"), token("audrey", "auditor")
        payment = manifest(
            ("travel.pay", {"amount": 30_000, "currency": "EUR", "traveller": "alice"})
        )
        bundle = fresh_home / "policy"
        with serve(proctor_exe, fresh_home, tmp_path) as s:
            before = httpx.post(f"{s.url}/v1/plans", json=payment, headers=auth).json()
            assert "policy_version" in before, before
            data = json.loads((bundle / "data.json").read_text())
            data["proctor"]["settings"]["auto_payment_max"] = 10_000
            (bundle / "data.json").write_text(json.dumps(data))
            deadline = time.monotonic() + 20
            while True:
                events = httpx.get(f"{s.url}/v1/audit/events", headers=auditor).json()["events"]
                if any(e["type"] == "policy.loaded" for e in events):
                    break
                assert time.monotonic() < deadline, "the server never reloaded its policy"
                time.sleep(0.5)
            after = httpx.post(f"{s.url}/v1/plans", json=payment, headers=auth).json()
            (bundle / "broken.rego").write_text("package proctor\ndecision := {\n")
            while True:
                events = httpx.get(f"{s.url}/v1/audit/events", headers=auditor).json()["events"]
                if any(e["type"] == "policy.rejected" for e in events):
                    break
                assert time.monotonic() < deadline + 20, "the broken bundle was not refused"
                time.sleep(0.5)
            still = httpx.post(f"{s.url}/v1/plans", json=payment, headers=auth).json()

        loaded = next(e for e in events if e["type"] == "policy.loaded")
        assert loaded["data"]["previous"] == before["policy_version"]
        assert loaded["data"]["version"] != loaded["data"]["previous"]
        assert before["status"] == "succeeded"
        assert after["status"] == "awaiting_approval"
        assert after["policy_version"] == loaded["data"]["version"]
        assert any("auto_payment_max 10000" in r for r in after["reasons"]), after["reasons"]
        rejected = next(e for e in events if e["type"] == "policy.rejected")
        assert rejected["data"]["kept"] == loaded["data"]["version"]
        assert still["policy_version"] == loaded["data"]["version"]  # the broken one never ran
        assert cli("audit", "verify", home=fresh_home).code == 0
