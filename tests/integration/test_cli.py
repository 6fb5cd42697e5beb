"""The installed ``proctor`` console script, run as a subprocess against real homes."""

from __future__ import annotations

import json
import shutil
import sqlite3
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyotp
import pytest

pytestmark = pytest.mark.cli

COMMANDS = (
    "init",
    "demo",
    "submit",
    "plans",
    "show",
    "confirm",
    "approve",
    "reject",
    "undo",
    "assess",
    "audit",
    "totp",
)

SEARCH = ("travel.search", {"destination": "Lisbon", "date": "2027-03-12"})
HR_SEARCH = ("hr.search_candidates", {"skill": "python", "limit": 5})
EXTERNAL_EMAIL = (
    "email.send",
    {"to": "ada@example.org", "subject": "Opportunity", "body": "Hello Ada", "external": True},
)
SUBSCRIPTION = ("billing.change_subscription", {"customer": "cust-42", "plan": "pro"})
BOOKING = (
    "restaurant.book",
    {"restaurant": "Tasca do Chico", "party": 4, "time": "2027-03-12T20:00"},
)
BIG_PAYMENT = ("travel.pay", {"amount": 640_000, "currency": "EUR", "traveller": "alice"})

# ---------------------------------------------------------------------------- helpers


def manifest(
    *steps: tuple[str, dict[str, Any]],
    agent: str = "test-bot",
    user: str = "alice",
    plan_id: str | None = None,
    intent: str = "a test plan",
) -> dict[str, Any]:
    """Build a plan manifest from ``(action, params)`` pairs."""
    plan: dict[str, Any] = {
        "actor": {"type": "agent", "name": agent, "model_version": "m-1", "agent_id": agent},
        "on_behalf_of": user,
        "intent": intent,
        "reasoning": "because the test says so",
        "steps": [
            {"id": f"s{i + 1}", "action": action, "params": params}
            for i, (action, params) in enumerate(steps)
        ],
    }
    if plan_id is not None:
        plan["plan_id"] = plan_id
    return plan


def write_json(directory: Path, name: str, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``directory/name`` and return the path."""
    path = directory / name
    path.write_text(json.dumps(obj))
    return path


def submit(cli, home: Path, tmp_path: Path, plan: dict[str, Any], *extra: str) -> dict[str, Any]:
    """Submit ``plan`` with ``--json`` and return the printed plan (asserts it was accepted)."""
    path = write_json(tmp_path, f"plan-{len(list(tmp_path.iterdir()))}.json", plan)
    result = cli("submit", path, "--json", *extra, home=home)
    assert result.code in (0, 1), str(result)
    doc = result.json()
    assert "plan_id" in doc, str(result)
    return doc


def plans(cli, home: Path, *extra: str) -> list[dict[str, Any]]:
    """Return ``proctor plans --json`` (every plan, newest first)."""
    result = cli("plans", "--json", "--limit", "1000", *extra, home=home)
    assert result.code == 0, str(result)
    return result.json()["plans"]


def events(cli, home: Path) -> list[dict[str, Any]]:
    """Return every audit event body of the home."""
    result = cli("audit", "events", "--json", "--limit", "10000", home=home)
    assert result.code == 0, str(result)
    return result.json()["events"]


def show(cli, home: Path, plan_id: str) -> dict[str, Any]:
    """Return ``proctor show ID --json``."""
    result = cli("show", plan_id, "--json", home=home)
    assert result.code == 0, str(result)
    return result.json()


def db_rows(home: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read rows straight from the instance's SQLite file (cheaper than another subprocess)."""
    con = sqlite3.connect(home / "proctor.db")
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def db_status(home: Path, plan_id: str) -> str:
    """Return a plan's stored status, read straight from the database."""
    rows = db_rows(home, f"SELECT status FROM plans WHERE plan_id = '{plan_id}'")
    assert len(rows) == 1, plan_id
    return rows[0][0]


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Map every file under ``root`` to its (mode, mtime_ns, bytes)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_mtime_ns, p.read_bytes())
    return out


# ---------------------------------------------------------------------------- help


class TestHelp:
    """``proctor --help`` and usage errors."""

    def test_help_lists_every_command(self, cli):
        """--help exits 0 and names every command."""
        result = cli("--help")

        assert result.code == 0, str(result)
        for command in COMMANDS:
            assert f" {command} " in result.out, command

    @pytest.mark.parametrize(
        "args",
        [
            pytest.param(("no-such-command",), id="unknown-command"),
            pytest.param(("submit",), id="missing-argument"),
        ],
    )
    def test_usage_error_exits_2(self, cli, args):
        """A usage error exits 2 with a usage message and no traceback."""
        result = cli(*args)

        assert result.code == 2, str(result)
        assert "Traceback" not in result.err

    def test_a_usage_error_with_json_is_an_error_object_on_stdout(self, cli):
        """With --json a script gets the usage error as JSON on stdout (people, on stderr)."""
        result = cli("plans", "--limit", "abc", "--json")

        assert result.code == 2, str(result)
        error = result.error()
        assert error["code"] == "usage_error"
        assert error["field"] == "--limit"
        assert "proctor plans --help" in error["hint"]
        assert "Usage:" in result.err


# ---------------------------------------------------------------------------- init


class TestInit:
    """``proctor init``."""

    def test_creates_the_instance(self, cli, tmp_path):
        """init creates config, catalog, policy, a 0600 private key and the database."""
        home = tmp_path / "inst"

        result = cli("init", "--json", home=home)

        assert result.code == 0, str(result)
        doc = result.json()
        assert doc["home"] == str(home)
        assert set(doc["created"]) == {
            "config.toml",
            "catalog.toml",
            "policy/",
            "keys/",
            "database",
        }
        assert doc["existing"] == []
        assert (home / "config.toml").is_file()
        assert (home / "catalog.toml").is_file()
        assert list((home / "policy").glob("*.rego"))
        pems = list((home / "keys").glob("*.pem"))
        assert len(pems) == 1
        assert stat.S_IMODE(pems[0].stat().st_mode) == 0o600
        assert b"PRIVATE KEY" in pems[0].read_bytes()
        assert (home / "proctor.db").is_file()

    def test_second_run_changes_nothing(self, cli, tmp_path):
        """A second init exits 0, creates nothing, says so and leaves every file as it was."""
        home = tmp_path / "inst"
        assert cli("init", home=home).code == 0
        before = snapshot(home)

        again = cli("init", "--json", home=home)
        human = cli("init", home=home)

        assert again.code == 0, str(again)
        assert again.json()["created"] == []
        assert "config.toml" in again.json()["existing"]
        assert human.code == 0, str(human)
        assert "Nothing to do" in human.out
        assert "unchanged" in human.out
        assert snapshot(home) == before

    def test_proctor_home_is_honoured(self, cli, tmp_path):
        """Without --home, init and later commands use PROCTOR_HOME, not ./.proctor."""
        home = tmp_path / "from-env"
        env = {"PROCTOR_HOME": str(home)}

        result = cli("init", "--json", env=env, cwd=tmp_path)
        listed = cli("plans", "--json", env=env, cwd=tmp_path)

        assert result.code == 0, str(result)
        assert result.json()["home"] == str(home)
        assert (home / "config.toml").is_file()
        assert not (tmp_path / ".proctor").exists()
        assert listed.code == 0, str(listed)
        assert listed.json() == {"plans": []}

    def test_home_flag_beats_proctor_home(self, cli, tmp_path):
        """--home wins over PROCTOR_HOME."""
        result = cli(
            "init", "--json", home=tmp_path / "flag", env={"PROCTOR_HOME": str(tmp_path / "env")}
        )

        assert result.code == 0, str(result)
        assert (tmp_path / "flag" / "config.toml").is_file()
        assert not (tmp_path / "env").exists()

    def test_home_that_is_a_file_fails(self, cli, tmp_path):
        """init on a path that is a regular file exits 1 with a config error on home."""
        path = tmp_path / "file"
        path.write_text("not a directory")

        result = cli("init", "--json", home=path)

        assert result.code == 1, str(result)
        assert result.error()["code"] == "config_error"
        assert result.error()["field"] == "home"

    def test_a_bad_pattern_in_the_catalog_is_a_config_error(self, cli, fresh_home):
        """pattern = "([" makes commands exit 1 naming the action and param, not crash.

        Regression: every command died with re.error: unterminated character set.
        """
        with (fresh_home / "catalog.toml").open("a") as catalog:
            catalog.write(
                '\n[actions."shop.dated"]\nsummary = "dated"\ncategory = "general"\n'
                'handler = "a.b:c"\n'
                "baselines = { risk = 1, auditability = 1, ux = 1, recovery = 1, cost = 1 }\n"
                '[actions."shop.dated".params]\ntype = "object"\n'
                'properties.date = { type = "string", pattern = "([" }\n'
            )

        result = cli("plans", "--json", home=fresh_home)

        assert result.code == 1, str(result)
        err = result.error()
        assert err["code"] == "config_error"
        assert err["field"] == "catalog.shop.dated.params.properties.date.pattern"
        assert "catalog.toml" in err["message"]
        assert "'shop.dated'" in err["message"] and "'date'" in err["message"]
        assert "Traceback" not in result.err


# ---------------------------------------------------------------------------- demo

EXPECTED_DEMO = {
    # name: (decided outcome, status right after the decision, final status)
    "travel": ("execute", "succeeded", "succeeded"),
    "subscription": ("confirm", "awaiting_confirmation", "succeeded"),
    "restaurant": ("execute", "succeeded", "undone"),
    "devops": ("approve", "awaiting_approval", "succeeded"),
    "procurement": ("execute", "succeeded", "succeeded"),
    "hr": ("approve", "awaiting_approval", "succeeded"),
}


@pytest.fixture(scope="class")
def demo_run(cli):
    """One ``proctor demo --json`` run, shared by the class."""
    return cli("demo", "--json")


class TestDemo:
    """``proctor demo``."""

    def test_runs_the_six_scenarios(self, demo_run):
        """demo --json exits 0 and runs exactly the six scenarios, in order."""
        assert demo_run.code == 0, str(demo_run)
        names = [s["name"] for s in demo_run.json()["scenarios"]]
        assert names == ["travel", "subscription", "restaurant", "devops", "procurement", "hr"]

    def test_each_scenario_reports_its_assessment_and_decision(self, demo_run):
        """Every scenario has five scores summing to its total, a pattern, outcome and status."""
        for s in demo_run.json()["scenarios"]:
            assert set(s["scores"]) == {"risk", "auditability", "ux", "recovery", "cost"}
            assert sum(s["scores"].values()) == s["total"]
            assert s["pattern"] in {"agentic", "hybrid", "orchestrator-first"}
            assert s["outcome"] in {"execute", "confirm", "approve", "deny"}
            assert s["status"]
            assert s["reasons"], s["name"]

    @pytest.mark.parametrize("name", list(EXPECTED_DEMO))
    def test_scenario_outcome_follows_the_default_policy(self, demo_run, name):
        """Each scenario is routed as the default policy says and ends in the expected state."""
        by_name = {s["name"]: s for s in demo_run.json()["scenarios"]}
        outcome, decided, final = EXPECTED_DEMO[name]

        s = by_name[name]

        assert (s["outcome"], s["decided_status"], s["status"]) == (outcome, decided, final)

    def test_a_file_as_home_is_refused(self, cli, tmp_path):
        """demo --home FILE: exit 1 naming the home, no traceback; the file is untouched."""
        path = tmp_path / "a-file"
        path.write_text("keep me")

        result = cli("demo", "--json", "--home", path)

        assert result.code == 1, str(result)
        assert "Traceback" not in result.err
        assert result.error()["field"] == "home"
        assert (
            result.error()["message"]
            == f"{path} is not a directory; the demo needs a new directory"
        )
        assert path.read_text() == "keep me"

    def test_travel_is_hybrid_with_total_12(self, demo_run):
        """The travel booking scores 12 and maps to the hybrid pattern."""
        travel = demo_run.json()["scenarios"][0]

        assert (travel["total"], travel["pattern"]) == (12, "hybrid")

    def test_hr_flow_rule_denies_pii_with_external_email(self, demo_run):
        """The HR scenario shows the flow rule denying PII plus external email."""
        hr = demo_run.json()["scenarios"][-1]

        assert hr["extra"][0]["flow_rule"] == "denied"

    def test_audit_log_verifies(self, demo_run):
        """The demo's audit log verifies and is not empty."""
        audit = demo_run.json()["audit"]

        assert audit["ok"] is True
        assert audit["events"] > 0

    def test_human_output(self, cli):
        """Without --json the demo prints each scenario and says the audit log verified."""
        result = cli("demo")

        assert result.code == 0, str(result)
        assert "audit log verified" in result.out
        assert "final status: undone" in result.out


# ---------------------------------------------------------------------------- submit

PLAN_KEYS = {"plan_id", "status", "outcome", "assessment", "reasons", "steps"}


def _bad_unknown_action(tmp_path: Path) -> Path:
    return write_json(tmp_path, "p.json", manifest(("travel.teleport", {"to": "Mars"})))


def _bad_schema(tmp_path: Path) -> Path:
    pay = ("travel.pay", {"amount": "12", "currency": "EUR", "traveller": "alice"})
    return write_json(tmp_path, "p.json", manifest(pay))


def _amount_text(tmp_path: Path, step: tuple[str, dict[str, Any]], literal: str) -> Path:
    """A manifest whose amount is the JSON literal ``literal`` (json.dumps cannot write 6.4e5)."""
    action, params = step
    path = write_json(tmp_path, "p.json", manifest((action, {**params, "amount": 0})))
    path.write_text(path.read_text().replace('"amount": 0', f'"amount": {literal}'))
    return path


def _float_amount(tmp_path: Path) -> Path:
    return _amount_text(tmp_path, BIG_PAYMENT, "640000.0")


def _exponent_amount(tmp_path: Path) -> Path:
    return _amount_text(tmp_path, BIG_PAYMENT, "6.4e5")


def _exponent_po(tmp_path: Path) -> Path:
    po = ("procurement.create_po", {"supplier": "acme", "item": "desk", "quantity": 1})
    return _amount_text(tmp_path, po, "5e7")


def _bad_json(tmp_path: Path) -> Path:
    path = tmp_path / "p.json"
    path.write_text('{"actor": {"type": "agent",')
    return path


def _missing_file(tmp_path: Path) -> Path:
    return tmp_path / "does-not-exist.json"


def _too_many_steps(tmp_path: Path) -> Path:
    return write_json(tmp_path, "p.json", manifest(*[SEARCH] * 33))


def _huge_integer(tmp_path: Path) -> Path:
    pay = ("travel.pay", {"amount": 640000, "currency": "EUR", "traveller": "alice"})
    path = tmp_path / "p.json"
    path.write_text(json.dumps(manifest(pay)).replace("640000", "1" + "0" * 5000))
    return path


def _lone_surrogate(tmp_path: Path) -> Path:
    search = ("travel.search", {"destination": "Lis\ud800bon", "date": "2027-03-12"})
    return write_json(tmp_path, "p.json", manifest(search))  # json.dumps escapes it


BAD_INPUTS = [
    pytest.param(_bad_unknown_action, "invalid_request", "steps[0].action", id="unknown-action"),
    pytest.param(_bad_schema, "invalid_request", "steps[0].params.amount", id="schema-violation"),
    pytest.param(_float_amount, "invalid_request", "steps[0].params.amount", id="float-amount"),
    pytest.param(_exponent_amount, "invalid_request", "steps[0].params.amount", id="6.4e5-amount"),
    pytest.param(_exponent_po, "invalid_request", "steps[0].params.amount", id="5e7-po"),
    pytest.param(_bad_json, "invalid_request", "<path>", id="malformed-json"),
    pytest.param(_missing_file, "invalid_request", "<path>", id="missing-file"),
    pytest.param(_too_many_steps, "invalid_request", "steps", id="33-steps"),
    pytest.param(_huge_integer, "invalid_request", "<path>", id="5001-digit-integer"),
    pytest.param(
        _lone_surrogate, "invalid_request", "steps[0].params.destination", id="lone-surrogate"
    ),
]


class TestSubmit:
    """``proctor submit``."""

    def test_read_only_search_executes(self, cli, shared_home, tmp_path):
        """A read-only travel.search executes at once, exits 0 and prints the plan as JSON."""
        path = write_json(tmp_path, "p.json", manifest(SEARCH))

        result = cli("submit", path, "--json", home=shared_home)

        assert result.code == 0, str(result)
        doc = result.json()
        assert set(doc) >= PLAN_KEYS
        assert set(doc["assessment"]) >= {"scores", "total", "pattern"}
        assert doc["assessment"]["total"] == sum(doc["assessment"]["scores"].values())
        assert set(doc["steps"][0]) >= {"id", "outcome", "status"}
        assert (doc["outcome"], doc["status"]) == ("execute", "succeeded")
        assert doc["steps"][0]["status"] == "succeeded"
        assert doc["steps"][0]["result"]["offers"]

    def test_pii_search_waits_for_approval(self, cli, shared_home, tmp_path):
        """An hr.search_candidates plan waits for an HR approver and exits 0."""
        path = write_json(tmp_path, "p.json", manifest(HR_SEARCH, agent="recruit-bot"))

        result = cli("submit", path, "--json", home=shared_home)

        assert result.code == 0, str(result)
        doc = result.json()
        assert (doc["outcome"], doc["status"]) == ("approve", "awaiting_approval")
        assert doc["approver_roles"] == ["hr"]
        assert doc["steps"][0]["status"] != "succeeded"

    def test_pii_with_external_email_is_denied(self, cli, shared_home, tmp_path):
        """Personal data plus an external email in one plan is denied and exits 1."""
        path = write_json(tmp_path, "p.json", manifest(HR_SEARCH, EXTERNAL_EMAIL))

        result = cli("submit", path, "--json", home=shared_home)

        assert result.code == 1, str(result)
        doc = result.json()
        assert (doc["outcome"], doc["status"]) == ("deny", "denied")
        assert any("external email" in r for r in doc["reasons"])
        assert all(s["status"] != "succeeded" for s in doc["steps"])

    @pytest.mark.parametrize(("make", "code", "field"), BAD_INPUTS)
    def test_bad_input_is_refused_and_nothing_runs(
        self, cli, shared_home, tmp_path, make, code, field
    ):
        """Bad input exits 1 with a JSON error naming the field; no plan is stored or run."""
        path = make(tmp_path)
        plans_before = db_rows(shared_home, "SELECT plan_id, status FROM plans ORDER BY plan_id")
        last_seq = db_rows(shared_home, "SELECT coalesce(max(seq), -1) FROM events")[0][0]

        result = cli("submit", path, "--json", home=shared_home)

        assert result.code == 1, str(result)
        err = result.error()
        assert err["code"] == code
        assert err["field"] == (str(path) if field == "<path>" else field)
        listed = sorted((p["plan_id"], p["status"]) for p in plans(cli, shared_home))
        assert listed == plans_before
        new = db_rows(shared_home, f"SELECT type FROM events WHERE seq > {last_seq}")
        assert {t for (t,) in new} <= {"plan.rejected"}

    def test_bad_input_human_diagnostics(self, cli, shared_home, tmp_path):
        """Without --json a refused plan prints error code and field on stderr, not stdout."""
        path = _bad_unknown_action(tmp_path)

        result = cli("submit", path, home=shared_home)

        assert result.code == 1, str(result)
        assert "error[invalid_request]" in result.err
        assert "field: steps[0].action" in result.err
        assert "Traceback" not in result.err

    @pytest.mark.parametrize("make", [_float_amount, _exponent_amount, _exponent_po])
    def test_a_float_amount_is_refused_with_a_hint_and_audited(
        self, cli, shared_home, tmp_path, make
    ):
        """A float amount exits 1 naming the amount, and the rejection is in the audit log.

        Regression: 640000.0 or 6.4e5 ran at once as "a payment of 0".
        """
        path = make(tmp_path)
        last_seq = db_rows(shared_home, "SELECT coalesce(max(seq), -1) FROM events")[0][0]

        result = cli("submit", path, home=shared_home)

        assert result.code == 1, str(result)
        assert "field: steps[0].params.amount" in result.err
        assert "minor units" in result.err
        new = db_rows(shared_home, f"SELECT type FROM events WHERE seq > {last_seq}")
        assert [t for (t,) in new] == ["plan.rejected"]

    def test_reused_plan_id_with_other_params_is_refused(self, cli, shared_home, tmp_path):
        """The same plan_id with different params exits 1 with plan_id_reused; nothing runs."""
        first = manifest(SEARCH, plan_id="p-reuse-1")
        changed = manifest(
            ("travel.search", {"destination": "Porto", "date": "2027-03-12"}),
            plan_id="p-reuse-1",
        )
        original = submit(cli, shared_home, tmp_path, first)
        last_seq = db_rows(shared_home, "SELECT max(seq) FROM events")[0][0]

        result = cli("submit", write_json(tmp_path, "c.json", changed), "--json", home=shared_home)

        assert original["status"] == "succeeded"
        assert result.code == 1, str(result)
        assert result.error()["code"] == "plan_id_reused"
        assert result.error()["field"] == "plan_id"
        reused = show(cli, shared_home, "p-reuse-1")
        assert reused["steps"] == original["steps"]
        assert reused["digest"] == original["digest"]
        new = db_rows(shared_home, f"SELECT type FROM events WHERE seq > {last_seq}")
        assert [t for (t,) in new] == ["plan.rejected"]

    def test_resubmitting_the_same_plan_is_idempotent(self, cli, shared_home, tmp_path):
        """Submitting an identical manifest with the same plan_id returns the first result."""
        plan = manifest(SEARCH, plan_id="p-idem-1")
        first = submit(cli, shared_home, tmp_path, plan)
        last_seq = db_rows(shared_home, "SELECT max(seq) FROM events")[0][0]

        again = submit(cli, shared_home, tmp_path, plan)

        assert again["plan_id"] == first["plan_id"] == "p-idem-1"
        assert again["steps"] == first["steps"]
        assert db_rows(shared_home, f"SELECT count(*) FROM events WHERE seq > {last_seq}") == [(0,)]

    def test_sandbox_simulates(self, cli, shared_home, tmp_path):
        """--sandbox records the decision but runs no handler: status simulated."""
        path = write_json(tmp_path, "p.json", manifest(SEARCH))

        result = cli("submit", path, "--sandbox", "--json", home=shared_home)

        assert result.code == 0, str(result)
        doc = result.json()
        assert doc["status"] == "simulated"
        assert doc["sandbox"] is True
        assert doc["steps"][0]["status"] != "succeeded"
        assert doc["steps"][0]["result"] is None

    def test_human_output(self, cli, shared_home, tmp_path):
        """Without --json submit prints the plan id, its status and outcome."""
        path = write_json(tmp_path, "p.json", manifest(SEARCH, plan_id="p-human-1"))

        result = cli("submit", path, home=shared_home)

        assert result.code == 0, str(result)
        assert "p-human-1" in result.out
        assert "succeeded" in result.out
        assert "execute" in result.out


# ---------------------------------------------------------------------------- plans / show


@pytest.fixture(scope="class")
def three_plans(cli, shared_home, tmp_path_factory):
    """A succeeded search, an HR search awaiting approval and a subscription awaiting confirm."""
    d = tmp_path_factory.mktemp("plans")
    search = submit(cli, shared_home, d, manifest(SEARCH))
    hr = submit(cli, shared_home, d, manifest(HR_SEARCH, agent="recruit-bot", user="hm"))
    sub = submit(cli, shared_home, d, manifest(SUBSCRIPTION, agent="support-bot", user="cust-42"))
    return {"search": search["plan_id"], "hr": hr["plan_id"], "sub": sub["plan_id"]}


class TestPlansAndShow:
    """``proctor plans`` and ``proctor show``."""

    def test_lists_newest_first(self, cli, shared_home, three_plans):
        """plans --json lists every plan, newest first."""
        listed = [p["plan_id"] for p in plans(cli, shared_home)]

        assert listed == [three_plans["sub"], three_plans["hr"], three_plans["search"]]

    def test_status_filter(self, cli, shared_home, three_plans):
        """--status awaiting_approval lists only the plans waiting for approval."""
        listed = plans(cli, shared_home, "--status", "awaiting_approval")

        assert [p["plan_id"] for p in listed] == [three_plans["hr"]]
        assert listed[0]["status"] == "awaiting_approval"

    def test_unknown_status_is_refused(self, cli, shared_home):
        """An unknown --status exits 1 naming the status field."""
        result = cli("plans", "--status", "bogus", "--json", home=shared_home)

        assert result.code == 1, str(result)
        assert result.error()["field"] == "status"

    def test_human_table(self, cli, shared_home, three_plans):
        """Without --json plans prints a table with every plan id and its status."""
        result = cli("plans", home=shared_home)

        assert result.code == 0, str(result)
        assert "3 plan(s)" in result.out
        for plan_id in three_plans.values():
            assert plan_id in result.out
        assert "awaiting_confirmation" in result.out

    def test_show_includes_audit_events(self, cli, shared_home, three_plans):
        """show --json returns the plan with its audit events in order."""
        doc = show(cli, shared_home, three_plans["hr"])

        assert doc["plan_id"] == three_plans["hr"]
        assert doc["status"] == "awaiting_approval"
        types = [e["type"] for e in doc["events"]]
        assert types[:2] == ["plan.submitted", "policy.decided"]
        seqs = [e["seq"] for e in doc["events"]]
        assert seqs == sorted(seqs)

    def test_show_human(self, cli, shared_home, three_plans):
        """Without --json show says what the plan waits for and the next command."""
        result = cli("show", three_plans["sub"], home=shared_home)

        assert result.code == 0, str(result)
        assert f"proctor confirm {three_plans['sub']} --as cust-42" in result.out
        assert "plan.submitted" in result.out

    def test_show_a_plan_confirmed_then_approved(self, cli, fresh_home, tmp_path):
        """show says she confirms first, then which step waits for which approvers."""
        home = fresh_home
        plan = manifest(SUBSCRIPTION, BIG_PAYMENT, user="cust-42")
        plan_id = submit(cli, home, tmp_path, plan)["plan_id"]

        before = cli("show", plan_id, home=home)
        confirmed = cli("confirm", plan_id, "--as", "cust-42", "--json", home=home)
        doc = show(cli, home, plan_id)

        assert "waiting for cust-42 to confirm" in before.out, str(before)
        assert "s2: 0 of 1 approval(s) from finance" in before.out
        assert confirmed.code == 0, str(confirmed)
        assert doc["status"] == "awaiting_approval"
        assert [q["step_id"] for q in doc["step_quorums"]] == ["s2"]
        assert [(a["principal"], a["kind"]) for a in doc["approvals"]] == [("cust-42", "confirm")]

    def test_show_unknown_plan(self, cli, shared_home):
        """show of an unknown plan id exits 1 with code not_found."""
        result = cli("show", "p-nope", "--json", home=shared_home)

        assert result.code == 1, str(result)
        assert result.error()["code"] == "not_found"
        assert result.error()["field"] == "plan_id"


# ---------------------------------------------------------------------------- human actions

_SUB = manifest(SUBSCRIPTION, agent="support-bot", user="cust-42")
_HR = manifest(HR_SEARCH, agent="recruit-bot", user="hiring-manager")
_BOOK = manifest(BOOKING, agent="concierge-bot", user="bob")

# One plan per test of the human actions, named by its plan id, with its expected state.
WAITING_PLANS = {
    "p-confirm-wrong-user": (_SUB, "awaiting_confirmation"),
    "p-confirm-right-user": (_SUB, "awaiting_confirmation"),
    "p-confirm-twice": (_SUB, "awaiting_confirmation"),
    "p-approve-ok": (_HR, "awaiting_approval"),
    "p-approve-recruit-bot": (_HR, "awaiting_approval"),
    "p-approve-hiring-manager": (_HR, "awaiting_approval"),
    "p-approve-wrong-role": (_HR, "awaiting_approval"),
    "p-reject-ok": (_HR, "awaiting_approval"),
    "p-reject-no-role": (_HR, "awaiting_approval"),
    "p-undo-ok": (_BOOK, "succeeded"),
    "p-undo-other": (_BOOK, "succeeded"),
    "p-undo-twice": (_BOOK, "succeeded"),
    "p-step-up": (manifest(BIG_PAYMENT, agent="travel-bot"), "awaiting_approval"),
    "p-step-up-locked": (manifest(BIG_PAYMENT, agent="travel-bot"), "awaiting_approval"),
}


@pytest.fixture(scope="module")
def pool(cli, tmp_path_factory):
    """One instance holding every plan of WAITING_PLANS, submitted concurrently via the CLI.

    Each test acts on its own plan, so the tests do not interfere; the concurrent submits
    also exercise several processes writing one SQLite log.
    """
    home = tmp_path_factory.mktemp("pool") / "instance"
    assert cli("init", home=home).code == 0, "init failed"
    d = tmp_path_factory.mktemp("pool-plans")
    paths = {
        plan_id: write_json(d, f"{plan_id}.json", plan | {"plan_id": plan_id})
        for plan_id, (plan, _) in WAITING_PLANS.items()
    }
    with ThreadPoolExecutor(max_workers=4) as ex:
        futures = {i: ex.submit(cli, "submit", p, "--json", home=home) for i, p in paths.items()}
        results = {plan_id: f.result() for plan_id, f in futures.items()}
    docs = {}
    for plan_id, result in results.items():
        assert result.code == 0, str(result)
        docs[plan_id] = result.json()
        assert docs[plan_id]["status"] == WAITING_PLANS[plan_id][1], str(result)
    return home, docs


class TestConfirm:
    """``proctor confirm``."""

    def test_wrong_user_is_refused(self, cli, pool):
        """Only the on-behalf-of user may confirm: anyone else gets permission_denied."""
        home, _ = pool

        result = cli("confirm", "p-confirm-wrong-user", "--as", "mallory", "--json", home=home)

        assert result.code == 1, str(result)
        assert result.error()["code"] == "permission_denied"
        assert db_status(home, "p-confirm-wrong-user") == "awaiting_confirmation"

    def test_right_user_runs_the_plan(self, cli, pool):
        """The customer's confirmation runs the plan to success and is recorded."""
        home, _ = pool

        result = cli(
            "confirm", "p-confirm-right-user", "--as", "cust-42", "-m", "yes", "--json", home=home
        )

        assert result.code == 0, str(result)
        doc = result.json()
        assert doc["status"] == "succeeded"
        assert doc["steps"][0]["status"] == "succeeded"
        assert [(a["principal"], a["kind"]) for a in doc["approvals"]] == [("cust-42", "confirm")]

    def test_confirming_twice_is_an_invalid_transition(self, cli, pool):
        """A second confirmation finds the plan no longer waiting and exits 1."""
        home, _ = pool
        assert cli("confirm", "p-confirm-twice", "--as", "cust-42", home=home).code == 0

        result = cli("confirm", "p-confirm-twice", "--as", "cust-42", "--json", home=home)

        assert result.code == 1, str(result)
        assert result.error()["code"] == "invalid_transition"


class TestApprove:
    """``proctor approve``."""

    def test_hr_approver_runs_the_plan(self, cli, pool):
        """An approver holding the hr role approves and the plan runs to success."""
        home, docs = pool

        result = cli(
            "approve", "p-approve-ok", "--as", "hannah", "--role", "hr", "--json", home=home
        )

        assert docs["p-approve-ok"]["approver_roles"] == ["hr"]
        assert result.code == 0, str(result)
        doc = result.json()
        assert doc["status"] == "succeeded"
        assert doc["steps"][0]["status"] == "succeeded"
        assert [a["principal"] for a in doc["approvals"]] == ["hannah"]

    @pytest.mark.parametrize("principal", ["recruit-bot", "hiring-manager"])
    def test_requester_or_beneficiary_cannot_approve(self, cli, pool, principal):
        """The requesting agent and the on-behalf-of user may not approve (separation of duties)."""
        home, _ = pool
        plan_id = f"p-approve-{principal}"

        result = cli("approve", plan_id, "--as", principal, "--role", "hr", "--json", home=home)

        assert result.code == 1, str(result)
        assert result.error()["code"] == "permission_denied"
        assert result.error()["field"] == "principal"
        assert db_status(home, plan_id) == "awaiting_approval"

    def test_wrong_role_cannot_approve(self, cli, pool):
        """An approver without the hr role gets permission_denied on the role."""
        home, _ = pool

        result = cli(
            "approve", "p-approve-wrong-role", "--as", "fiona", "--role", "finance", "--json",
            home=home,
        )  # fmt: skip

        assert result.code == 1, str(result)
        assert result.error()["code"] == "permission_denied"
        assert result.error()["field"] == "role"
        assert db_status(home, "p-approve-wrong-role") == "awaiting_approval"


class TestReject:
    """``proctor reject``."""

    def test_reject_then_approve(self, cli, pool):
        """A rejected plan is final: a later approval exits 1 with invalid_transition."""
        home, _ = pool

        rejected = cli(
            "reject", "p-reject-ok", "--as", "hannah", "--role", "hr", "-m", "no", "--json",
            home=home,
        )  # fmt: skip
        approved = cli(
            "approve", "p-reject-ok", "--as", "harry", "--role", "hr", "--json", home=home
        )

        assert rejected.code == 0, str(rejected)
        assert rejected.json()["status"] == "rejected"
        assert all(s["status"] != "succeeded" for s in rejected.json()["steps"])
        assert approved.code == 1, str(approved)
        assert approved.error()["code"] == "invalid_transition"
        assert db_status(home, "p-reject-ok") == "rejected"

    def test_reject_needs_the_role(self, cli, pool):
        """Rejecting without an approver role is refused and the plan keeps waiting."""
        home, _ = pool

        result = cli("reject", "p-reject-no-role", "--as", "mallory", "--json", home=home)

        assert result.code == 1, str(result)
        assert result.error()["code"] == "permission_denied"
        assert db_status(home, "p-reject-no-role") == "awaiting_approval"


class TestUndo:
    """``proctor undo``."""

    def test_user_undoes_a_booking(self, cli, pool):
        """The on-behalf-of user undoes a succeeded booking within its undo window."""
        home, docs = pool

        result = cli(
            "undo", "p-undo-ok", "--as", "bob", "--comment", "booked twice", "--json", home=home
        )

        assert docs["p-undo-ok"]["steps"][0]["undo_until"] is not None
        assert result.code == 0, str(result)
        assert result.json()["status"] == "undone"
        types = [e["type"] for e in show(cli, home, "p-undo-ok")["events"]]
        assert "undo.requested" in types
        assert "compensation.succeeded" in types
        events = cli("audit", "events", "--plan", "p-undo-ok", "--json", home=home)
        assert "undone by bob: booked twice" in events.out  # the reason is on the record

    def test_someone_else_cannot_undo(self, cli, pool):
        """Another principal's undo exits 1 and the booking stays."""
        home, _ = pool

        result = cli("undo", "p-undo-other", "--as", "mallory", "--json", home=home)

        assert result.code == 1, str(result)
        assert result.error()["code"] == "permission_denied"
        assert db_status(home, "p-undo-other") == "succeeded"

    def test_undo_twice_is_refused(self, cli, pool):
        """An undone plan cannot be undone again."""
        home, _ = pool
        assert cli("undo", "p-undo-twice", "--as", "bob", home=home).code == 0

        result = cli("undo", "p-undo-twice", "--as", "bob", "--json", home=home)

        assert result.code == 1, str(result)
        assert result.error()["code"] == "conflict"
        assert db_status(home, "p-undo-twice") == "undone"


class TestStepUp:
    """Approvals with a step-up code (``proctor totp enrol`` and ``approve --otp``)."""

    def test_enrol_returns_a_secret(self, cli, pool):
        """totp enrol --json returns a base32 secret and its otpauth URI."""
        home, _ = pool

        result = cli("totp", "enrol", "--as", "frank", "--json", home=home)

        assert result.code == 0, str(result)
        doc = result.json()
        assert doc["principal"] == "frank"
        assert len(pyotp.TOTP(doc["secret"]).now()) == 6
        assert doc["uri"].startswith("otpauth://totp/")

    def test_large_payment_needs_finance_with_step_up(self, cli, pool):
        """A 640000 payment waits for finance; approval needs a valid TOTP code, then it runs."""
        home, docs = pool
        approve = ("approve", "p-step-up", "--as", "fiona", "--role", "finance", "--json")
        enrol = cli("totp", "enrol", "--as", "fiona", "--json", home=home)
        code = pyotp.TOTP(enrol.json()["secret"]).now()
        wrong = f"{(int(code) + 500_000) % 1_000_000:06d}"

        without = cli(*approve, home=home)
        bad = cli(*approve, "--otp", wrong, home=home)
        good = cli(*approve, "--otp", code, home=home)

        doc = docs["p-step-up"]
        assert (doc["approver_roles"], doc["step_up"]) == (["finance"], True)
        assert without.code == 1, str(without)
        assert (without.error()["code"], without.error()["field"]) == ("permission_denied", "otp")
        assert bad.code == 1, str(bad)
        assert bad.error()["field"] == "otp"
        assert good.code == 0, str(good)
        assert good.json()["status"] == "succeeded"
        assert good.json()["steps"][0]["status"] == "succeeded"

    def test_the_next_step_names_the_otp_only_when_step_up_is_needed(self, cli, pool):
        """A step-up plan's `next:` line ends in --otp CODE (following it without one is a
        403); a plain approval's does not."""
        home, _ = pool

        step_up = cli("show", "p-step-up-locked", home=home)
        plain = cli("show", "p-approve-wrong-role", home=home)

        assert (
            "next: proctor approve p-step-up-locked --as NAME --role ROLE --otp CODE" in step_up.out
        ), str(step_up)
        assert "next: proctor approve p-approve-wrong-role --as NAME --role ROLE\n" in plain.out
        assert "--otp" not in plain.out

    def test_five_wrong_codes_lock_step_up(self, cli, pool):
        """After 5 wrong codes the right one exits 1 with rate_limited; the plan still waits."""
        home, _ = pool
        approve = ("approve", "p-step-up-locked", "--as", "gwen", "--role", "finance", "--json")
        totp = pyotp.TOTP(
            cli("totp", "enrol", "--as", "gwen", "--json", home=home).json()["secret"]
        )
        wrong = f"{(int(totp.now()) + 500_000) % 1_000_000:06d}"

        bad = [cli(*approve, "--otp", wrong, home=home) for _ in range(5)]
        locked = cli(*approve, "--otp", totp.now(), home=home)

        assert [(r.code, r.error()["code"]) for r in bad] == [(1, "permission_denied")] * 5
        assert locked.code == 1, str(locked)
        assert (locked.error()["code"], locked.error()["field"]) == ("rate_limited", "otp")
        assert db_status(home, "p-step-up-locked") == "awaiting_approval"


# ---------------------------------------------------------------------------- assess

SCORES_TOML = """\
name = "travel booking"
[scores]
risk = 2
auditability = 3
ux = 4
recovery = 2
cost = 1
"""

CHECKLIST_TOML = """\
[checklist]
harm_if_wrong = "severe"
regulation = "regulated"
speed_need = "moderate"
recovery = "hard"
cost_per_action = "high"
"""


class TestAssess:
    """``proctor assess``."""

    def test_scores(self, cli, tmp_path):
        """Given scores 2/3/4/2/1 the total is 12 and the pattern hybrid, with its controls."""
        path = tmp_path / "s.toml"
        path.write_text(SCORES_TOML)

        result = cli("assess", path, "--json")

        assert result.code == 0, str(result)
        doc = result.json()
        assert doc["scores"] == {"risk": 2, "auditability": 3, "ux": 4, "recovery": 2, "cost": 1}
        assert (doc["total"], doc["pattern"], doc["name"]) == (12, "hybrid", "travel booking")
        assert doc["controls"]
        assert doc["reasons"][-1] == "total 12 -> hybrid"

    def test_checklist(self, cli, tmp_path):
        """Checklist answers map to scores 4/4/3/4/4, total 19, orchestrator-first."""
        path = tmp_path / "c.toml"
        path.write_text(CHECKLIST_TOML)

        result = cli("assess", path, "--json")

        assert result.code == 0, str(result)
        doc = result.json()
        assert doc["scores"] == {"risk": 4, "auditability": 4, "ux": 3, "recovery": 4, "cost": 4}
        assert (doc["total"], doc["pattern"]) == (19, "orchestrator-first")

    def test_json_scenario_with_thresholds(self, cli, tmp_path):
        """A JSON scenario with custom thresholds moves the same total to another pattern."""
        doc = {
            "scores": {"risk": 2, "auditability": 3, "ux": 4, "recovery": 2, "cost": 1},
            "thresholds": {"agentic_max": 12, "hybrid_max": 20},
        }
        path = write_json(tmp_path, "s.json", doc)

        result = cli("assess", path, "--json")

        assert result.code == 0, str(result)
        assert (result.json()["total"], result.json()["pattern"]) == (12, "agentic")

    @pytest.mark.parametrize(
        ("text", "field"),
        [
            pytest.param(SCORES_TOML.replace("risk = 2", "risk = 6"), "scores.risk", id="score-6"),
            pytest.param(SCORES_TOML.replace("cost = 1\n", ""), "scores.cost", id="missing-axis"),
            pytest.param(
                CHECKLIST_TOML.replace('"hard"', '"tricky"'), "checklist.recovery", id="bad-answer"
            ),
            pytest.param('name = "x"\n', "scores", id="neither-table"),
        ],
    )
    def test_invalid_scenario(self, cli, tmp_path, text, field):
        """An invalid scenario exits 1 with an error naming the field."""
        path = tmp_path / "s.toml"
        path.write_text(text)

        result = cli("assess", path, "--json")

        assert result.code == 1, str(result)
        assert result.error()["code"] == "invalid_request"
        assert result.error()["field"] == field

    def test_malformed_toml(self, cli, tmp_path):
        """A scenario that is not valid TOML exits 1 naming the file."""
        path = tmp_path / "s.toml"
        path.write_text("[scores\nrisk = 2\n")

        result = cli("assess", path, "--json")

        assert result.code == 1, str(result)
        assert result.error()["field"] == str(path)
        assert "not valid TOML" in result.error()["message"]

    @pytest.mark.parametrize(
        "table",
        [
            pytest.param("foo = 3", id="unknown-key"),
            pytest.param('agentic_max = "x"\nhybrid_max = 15', id="not-a-number"),
            pytest.param("agentic_max = 15\nhybrid_max = 12", id="out-of-order"),
        ],
    )
    def test_bad_thresholds(self, cli, tmp_path, table):
        """A bad [thresholds] table exits 1 with an invalid_request on the thresholds field."""
        path = tmp_path / "s.toml"
        scores = SCORES_TOML.removeprefix('name = "travel booking"\n')
        path.write_text(f"[thresholds]\n{table}\n{scores}")

        result = cli("assess", path, "--json")

        assert result.code == 1, str(result)
        assert "Traceback" not in result.err
        assert result.error()["code"] == "invalid_request"
        assert result.error()["field"] == "thresholds"

    def test_instance_thresholds(self, cli, fresh_home, tmp_path):
        """Without a thresholds table, assess --home uses the instance's configured thresholds."""
        config = fresh_home / "config.toml"
        config.write_text(config.read_text().replace("agentic_max = 10", "agentic_max = 12"))
        path = tmp_path / "s.toml"
        path.write_text(SCORES_TOML)

        result = cli("assess", path, "--json", home=fresh_home)

        assert result.code == 0, str(result)
        assert (result.json()["total"], result.json()["pattern"]) == (12, "agentic")

    def test_human_output(self, cli, tmp_path):
        """Without --json assess prints the recommended pattern and its controls."""
        path = tmp_path / "s.toml"
        path.write_text(SCORES_TOML)

        result = cli("assess", path)

        assert result.code == 0, str(result)
        assert "recommended: hybrid" in result.out
        assert "step-up approval above a value threshold" in result.out


# ---------------------------------------------------------------------------- audit verify


@pytest.fixture(scope="class")
def busy_template(cli, tmp_path_factory):
    """An instance with a few plans in its audit log, built once per class; (home, events)."""
    home = tmp_path_factory.mktemp("busy") / "instance"
    assert cli("init", home=home).code == 0
    d = tmp_path_factory.mktemp("busy-plans")
    plans = [manifest(SEARCH), manifest(HR_SEARCH, agent="recruit-bot"), manifest(BOOKING)]
    paths = [write_json(d, f"p{i}.json", plan) for i, plan in enumerate(plans)]
    with ThreadPoolExecutor(max_workers=3) as ex:
        for result in ex.map(lambda path: cli("submit", path, "--json", home=home), paths):
            assert result.code == 0, str(result)
    return home, db_rows(home, "SELECT count(*) FROM events")[0][0]


@pytest.fixture
def busy_home(busy_template, tmp_path):
    """A private copy of the busy instance, free to tamper with; returns (home, events)."""
    template, count = busy_template
    home = tmp_path / "instance"
    shutil.copytree(template, home)
    return home, count


def _tamper(home: Path, sql: str, *params: Any) -> None:
    con = sqlite3.connect(home / "proctor.db")
    try:
        with con:
            assert con.execute(sql, params).rowcount == 1
    finally:
        con.close()


def _modify_body(home: Path, seq: int) -> None:
    """Change one value inside event ``seq``'s body, keeping it valid canonical JSON."""
    con = sqlite3.connect(home / "proctor.db")
    try:
        (body,) = con.execute("SELECT body FROM events WHERE seq = ?", (seq,)).fetchone()
        raw = bytes(body)
        event = json.loads(raw)
        ts = event["timestamp"]  # 2026-01-05T09:00:00.123456+00:00
        digit = "1" if ts[-7] != "1" else "2"
        old = json.dumps(ts).encode()
        new = json.dumps(ts[:-7] + digit + ts[-6:]).encode()
        assert old != new and raw.count(old) == 1
        with con:
            con.execute(
                "UPDATE events SET body = ? WHERE seq = ?",
                (sqlite3.Binary(raw.replace(old, new)), seq),
            )
    finally:
        con.close()


class TestAuditVerify:
    """``proctor audit verify``."""

    @pytest.mark.parametrize("mode", [(), ("--fast",)], ids=["full", "fast"])
    def test_intact_log(self, cli, busy_home, mode):
        """An untouched log verifies: ok with the number of events."""
        home, count = busy_home

        result = cli("audit", "verify", "--json", *mode, home=home)

        assert result.code == 0, str(result)
        assert result.json()["ok"] is True
        assert result.json()["events"] == count > 0
        assert result.json()["first_bad_seq"] is None

    @pytest.mark.parametrize("mode", [(), ("--fast",)], ids=["full", "fast"])
    def test_modified_event(self, cli, busy_home, mode):
        """Changing one value in a middle event fails verification at exactly that seq."""
        home, count = busy_home
        seq = count // 2
        _modify_body(home, seq)

        result = cli("audit", "verify", "--json", *mode, home=home)

        assert result.code == 1, str(result)
        doc = result.json()
        assert (doc["ok"], doc["first_bad_seq"], doc["problem"]) == (False, seq, "modified")

    def test_modified_event_with_sql_replace(self, cli, busy_home):
        """A tamperer's in-place SQL replace() on a middle event is reported as modified."""
        home, count = busy_home
        seq = count // 2
        _tamper(
            home,
            "UPDATE events SET body = replace(body, '\"seq\":' || seq, '\"seq\":' || seq || '.0')"
            " WHERE seq = ?",
            seq,
        )

        result = cli("audit", "verify", "--json", home=home)

        assert result.code == 1, str(result)
        assert "Traceback" not in result.err
        doc = result.json()
        assert (doc["first_bad_seq"], doc["problem"]) == (seq, "modified")

    def test_deleted_event(self, cli, busy_home):
        """Deleting a middle event fails verification at its seq with problem deleted."""
        home, count = busy_home
        seq = count // 2
        _tamper(home, "DELETE FROM events WHERE seq = ?", seq)

        result = cli("audit", "verify", "--json", home=home)
        fast = cli("audit", "verify", "--json", "--fast", home=home)

        assert result.code == 1, str(result)
        doc = result.json()
        assert (doc["ok"], doc["first_bad_seq"], doc["problem"]) == (False, seq, "deleted")
        assert fast.code == 1, str(fast)
        assert fast.json()["first_bad_seq"] == seq

    def test_concurrent_writers_leave_an_intact_log(self, cli, pool):
        """Plans submitted by concurrent processes leave a log that verifies in full."""
        home, docs = pool

        result = cli("audit", "verify", "--json", home=home)

        assert result.code == 0, str(result)
        assert result.json()["ok"] is True
        assert result.json()["events"] >= 3 * len(docs)

    def test_events_lists_the_whole_log(self, cli, busy_home):
        """audit events --json lists every event in seq order, each with its type and plan."""
        home, count = busy_home

        listed = events(cli, home)

        assert [e["seq"] for e in listed] == list(range(count))
        assert listed[0]["type"] == "plan.submitted"
        assert all(e["type"] and e["signature"] for e in listed)

    def test_deleted_event_is_refused(self, cli, busy_home):
        """Deleting a middle event makes audit verify exit 1 with an audit_integrity error."""
        home, count = busy_home
        _tamper(home, "DELETE FROM events WHERE seq = ?", count // 2)

        result = cli("audit", "verify", "--json", home=home)

        assert result.code == 1, str(result)
        assert "Traceback" not in result.err
        doc = result.json()
        assert doc.get("ok") is False or doc["error"]["code"] == "audit_integrity"

    def test_human_output(self, cli, busy_home):
        """Without --json verify prints ok for an intact log and FAILED with the seq after tampering."""
        home, count = busy_home
        seq = count // 2
        intact = cli("audit", "verify", home=home)
        _modify_body(home, seq)

        broken = cli("audit", "verify", home=home)

        assert intact.code == 0, str(intact)
        assert f"{count} events verified" in intact.out
        assert broken.code == 1, str(broken)
        assert f"FAILED at seq {seq}: modified" in broken.out


# ---------------------------------------------------------------------------- missing home


class TestMissingHome:
    """Commands against a home that does not exist or is broken."""

    def test_missing_home_says_run_init(self, cli, tmp_path):
        """plans on a missing home exits 1 and tells the user to run proctor init."""
        result = cli("plans", home=tmp_path / "nonexistent")

        assert result.code == 1, str(result)
        assert "proctor init" in result.err
        assert "Traceback" not in result.err

    def test_missing_home_json(self, cli):
        """With --json the error is a config_error on the home field."""
        result = cli("plans", "--json", home=Path("/nonexistent"))

        assert result.code == 1, str(result)
        assert result.error()["code"] == "config_error"
        assert result.error()["field"] == "home"
        assert "proctor init" in result.error()["hint"]

    def test_default_home_is_dot_proctor(self, cli, tmp_path):
        """Without --home or PROCTOR_HOME the CLI looks for ./.proctor in the working directory."""
        result = cli("plans", "--json", cwd=tmp_path)

        assert result.code == 1, str(result)
        assert ".proctor" in result.error()["message"]

    def test_home_without_config(self, cli, tmp_path):
        """A home directory without config.toml exits 1 and says to run proctor init."""
        (tmp_path / "empty").mkdir()

        result = cli("plans", "--json", home=tmp_path / "empty")

        assert result.code == 1, str(result)
        assert result.error()["code"] == "config_error"
        assert "proctor init" in result.error()["hint"]

    def test_broken_policy(self, cli, fresh_home):
        """A home whose policy does not compile exits 1 with invalid_policy, no traceback."""
        (fresh_home / "policy" / "proctor.rego").write_text("package proctor\n\nthis is not rego\n")

        result = cli("plans", home=fresh_home)

        assert result.code == 1, str(result)
        assert "error[invalid_policy]" in result.err


class TestBadConfig:
    @pytest.mark.parametrize(
        ("old", "new", "field"),
        [
            pytest.param(
                "store_prompt = false", 'store_prompt = "false"', "audit.store_prompt", id="str"
            ),
            pytest.param(
                "confirm_ttl_seconds = 3600",
                "confirm_ttl_seconds = inf",
                "execution.confirm_ttl_seconds",
                id="inf",
            ),
            pytest.param("sandbox = false", "sandbx = true", "execution.sandbx", id="unknown"),
        ],
    )
    def test_a_bad_config_value(self, cli, fresh_home, old, new, field):
        """A bad config.toml value exits 1 with a config_error naming the field, no traceback."""
        config = fresh_home / "config.toml"
        config.write_text(config.read_text().replace(old, new, 1))

        as_json = cli("plans", "--json", home=fresh_home)
        human = cli("plans", home=fresh_home)

        assert as_json.code == 1, str(as_json)
        assert as_json.error()["code"] == "config_error"
        assert as_json.error()["field"] == field
        assert as_json.error()["hint"]
        assert human.code == 1, str(human)
        assert "Traceback" not in human.err
        assert f"field: {field}" in human.err


def test_the_cli_loads_neither_httpx_nor_cffi_until_a_command_needs_them():
    """Every CLI command imports the library; what only some commands use (httpx for
    webhooks and remote servers, cffi for the policy engine) is imported when used."""
    code = (
        "import sys, proctor.cli\nprint(sorted(m for m in ('httpx', 'cffi') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_token_and_step_up_administration_is_in_the_audit_log(cli, fresh_home):
    """Who may act changes only with a signed record: `tokens create/revoke`, `totp enrol`."""
    made = cli(
        "tokens", "create", "--name", "fiona", "--role", "approver", "--json", home=fresh_home
    )
    assert made.code == 0, str(made)
    token = made.json()
    assert cli("tokens", "revoke", token["id"], home=fresh_home).code == 0
    enrolled = cli("totp", "enrol", "--as", "fiona", "--json", home=fresh_home)
    assert enrolled.code == 0, str(enrolled)

    found = {e["type"]: e for e in events(cli, fresh_home)}
    created, revoked = found["token.created"], found["token.revoked"]
    assert created["data"]["token_id"] == revoked["data"]["token_id"] == token["id"]
    assert created["data"]["roles"] == ["approver"]
    assert created["data"]["by"].startswith("local:")
    assert found["stepup.enrolled"]["data"]["principal"] == "fiona"
    dump = json.dumps(list(found.values()))
    assert token["token"] not in dump and enrolled.json()["secret"] not in dump
    assert cli("audit", "verify", home=fresh_home).code == 0


def test_a_token_name_outside_ascii_is_refused_saying_so(cli, fresh_home):
    """`tokens create --name josé` exits 1, says the name must be ASCII and hints at the
    login or e-mail address; no token is made."""
    made = cli("tokens", "create", "--name", "jos\u00e9", "--role", "user", home=fresh_home)
    listed = cli("tokens", "list", "--json", home=fresh_home)

    assert made.code == 1, str(made)
    assert "ASCII" in made.err and "e-mail address" in made.err, made.err
    assert "josé" not in listed.out
