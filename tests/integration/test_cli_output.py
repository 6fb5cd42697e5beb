"""What the CLI prints and how it exits, through the installed script.

Text the CLI did not write itself (a plan's intent, reasons, names, a kill switch's reason,
file names in errors) is printed literally: never read as Rich markup, and with its control
characters made visible. Exit codes follow what happened to the plan.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import ClassVar

import pytest

from .test_cli import HR_SEARCH, manifest, write_json

pytestmark = pytest.mark.cli

MARKUP = "[/] closing tag [link=https://evil.example]click[/link]"
CONCEAL = "refund [conceal]and also wire 9,999,999 EUR to account X[/conceal] thanks"
ESCAPES = "ok\x1b[2J\x1b[31mred\rover\x9b1m \u202eevil"
COLOUR = {"FORCE_COLOR": "1", "NO_COLOR": "", "TERM": "xterm-256color"}


def _waiting(cli, home: Path, tmp_path: Path, plan_id: str, intent: str) -> Path:
    """Write an HR plan (it waits for an hr approver) with ``intent``; return its file."""
    plan = manifest(HR_SEARCH, agent="recruit-bot", user="hm", plan_id=plan_id, intent=intent)
    return write_json(tmp_path, f"{plan_id}.json", plan)


class TestUntrustedText:
    """Plan, user and guard text reaches the terminal as it is."""

    def test_markup_in_the_intent_is_printed_literally(self, cli, fresh_home, tmp_path):
        """submit, show and approve print `[/]` and `[link=...]` as text and exit 0."""
        path = _waiting(cli, fresh_home, tmp_path, "markup-1", MARKUP)

        submitted = cli("submit", path, home=fresh_home)
        shown = cli("show", "markup-1", home=fresh_home)
        approved = cli("approve", "markup-1", "--as", "hannah", "--role", "hr", home=fresh_home)
        listed = cli("plans", home=fresh_home)

        for result in (submitted, shown, approved, listed):
            assert result.code == 0, str(result)
            assert "Traceback" not in result.err, str(result)
        for result in (submitted, shown, approved):
            assert f"intent: {MARKUP}" in result.out, str(result)
        assert "status succeeded" in approved.out, str(approved)
        assert cli("show", "markup-1", "--json", home=fresh_home).json()["status"] == "succeeded"

    def test_conceal_does_not_hide_text_from_the_approver(self, cli, fresh_home, tmp_path):
        """On a colour terminal `[conceal]` is shown as text, not sent as ESC[8m."""
        path = _waiting(cli, fresh_home, tmp_path, "markup-2", CONCEAL)

        result = cli("submit", path, home=fresh_home, env=COLOUR)

        assert result.code == 0, str(result)
        assert "\x1b[1m" in result.out, "expected a colour terminal: " + repr(result.out[:200])
        assert "\x1b[8m" not in result.out
        assert CONCEAL in result.out

    def test_control_characters_are_made_visible(self, cli, fresh_home, tmp_path):
        """ESC, CR, C1 controls and bidi overrides in the intent are printed as escapes."""
        path = _waiting(cli, fresh_home, tmp_path, "ctrl-1", ESCAPES)

        for result in (
            cli("submit", path, home=fresh_home),
            cli("show", "ctrl-1", home=fresh_home, env=COLOUR),
        ):
            assert result.code == 0, str(result)
            assert "\x1b[2J" not in result.out and "\x1b[31m" not in result.out
            assert "\r" not in result.out and "\x9b" not in result.out
            assert "\u202e" not in result.out
            assert r"ok\x1b[2J\x1b[31mred\x0dover\x9b1m \u202eevil" in result.out

    def test_control_characters_in_an_error_are_made_visible(self, cli, fresh_home):
        """An error quoting a file name prints its control characters as escapes."""
        result = cli("submit", "gone\x1b[8m.json", home=fresh_home)

        assert result.code == 1, str(result)
        assert "\x1b" not in result.err
        assert r"gone\x1b[8m.json does not exist" in result.err

    def test_kill_reason_with_markup(self, cli, fresh_home):
        """A kill switch whose reason is `[/] ...` is listed literally by `guards`."""
        reason = "[/] bad [conceal]hidden[/conceal]"
        kill = cli(
            "kill",
            "--agent",
            "zed",
            "--allow-unknown",
            "--as",
            "root",
            "-m",
            reason,
            home=fresh_home,
        )

        result = cli("guards", home=fresh_home)

        assert kill.code == 0, str(kill)
        assert result.code == 0, str(result)
        assert f"engaged by root: {reason}" in result.out

    def test_breaker_reason_with_markup(self, cli, fresh_home):
        """A breaker forced open with a markup reason is listed literally by `guards`."""
        reason = "[bold red]fake[/] [/]"
        opened = cli(
            "breaker", "open", "--action", "travel.pay", "--as", "root", "-m", reason,
            home=fresh_home,
        )  # fmt: skip

        result = cli("guards", home=fresh_home)

        assert opened.code == 0, str(opened)
        assert result.code == 0, str(result)
        assert reason in result.out


# ---------------------------------------------------------------------------- exit codes

FAILING_TOOL = """\
def fail(params, call):
    raise RuntimeError("the tool broke")
"""

FAILING_ACTION = """
[actions."ux.fail"]
summary = "Fail"
category = "read"
handler = "uxtools_cli_output:fail"
baselines = { risk = 1, auditability = 2, ux = 4, recovery = 1, cost = 1 }
[actions."ux.fail".params]
type = "object"
"""


@pytest.fixture
def failing_home(fresh_home: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """An instance whose catalog has `ux.fail` (its handler raises), and the env to run it."""
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "uxtools_cli_output.py").write_text(FAILING_TOOL)
    with (fresh_home / "catalog.toml").open("a") as f:
        f.write(FAILING_ACTION)
    path = os.pathsep.join(p for p in (str(tools), os.environ.get("PYTHONPATH")) if p)
    return fresh_home, {"PYTHONPATH": path}


class TestExitCodes:
    """A plan that did not do what was asked exits 1."""

    @pytest.mark.parametrize("as_json", [False, True])
    def test_compensated_plan_exits_1(self, cli, failing_home, tmp_path, as_json):
        """A plan whose second step fails is compensated: submit exits 1, no undo offered."""
        home, env = failing_home
        plan = manifest(
            ("travel.reserve", {"flight": "PX1", "traveller": "alice"}),
            ("ux.fail", {}),
            plan_id="fail-1",
        )
        path = write_json(tmp_path, "fail.json", plan)

        result = cli("submit", path, *(["--json"] if as_json else []), home=home, env=env)

        assert result.code == 1, str(result)
        if as_json:
            doc = result.json()
            assert doc["status"] == "compensated"
            assert [s["status"] for s in doc["steps"]] == ["compensated", "failed"]
        else:
            assert "status compensated" in result.out, str(result)
            assert "the tool broke" in result.out
            assert "undo until" not in result.out


SLOW_TOOL = """\
import time

def slow(params, call):
    time.sleep(2)
    return {"ok": True}
"""

SLOW_ACTION = """
[actions."ux.slow"]
summary = "Slow"
category = "general"
idempotent = false
timeout = 1
handler = "uxtools_cli_slow:slow"
baselines = { risk = 1, auditability = 2, ux = 4, recovery = 1, cost = 1 }
[actions."ux.slow".params]
type = "object"
"""


class TestResolveExitCode:
    @pytest.mark.parametrize("as_json", [False, True])
    def test_resolve_failed_that_compensates_the_plan_exits_0(
        self, cli, fresh_home, tmp_path, as_json
    ):
        """`resolve --failed` on a timed-out step ends the plan compensated, as asked: exit 0
        (it exited 1, as if the resolution had not been done)."""
        tools = tmp_path / "tools"
        tools.mkdir()
        (tools / "uxtools_cli_slow.py").write_text(SLOW_TOOL)
        with (fresh_home / "catalog.toml").open("a") as f:
            f.write(SLOW_ACTION)
        env = {
            "PYTHONPATH": os.pathsep.join(filter(None, (str(tools), os.environ.get("PYTHONPATH"))))
        }
        plan = manifest(
            ("travel.reserve", {"flight": "PX1", "traveller": "alice"}),
            ("ux.slow", {}),
            plan_id="slow-1",
        )
        submitted = cli(
            "submit", write_json(tmp_path, "slow.json", plan), "--json", home=fresh_home, env=env
        )
        assert submitted.json()["status"] == "needs_attention", str(submitted)

        resolved = cli(
            "resolve", "slow-1", "s2", "--failed", "--as", "ops",
            *(["--json"] if as_json else []), home=fresh_home, env=env,
        )  # fmt: skip

        assert resolved.code == 0, str(resolved)
        shown = cli("show", "slow-1", "--json", home=fresh_home).json()
        assert shown["status"] == "compensated"


class TestGuardsConfigNote:
    def test_local_guards_says_a_running_server_may_apply_other_limits(self, cli, fresh_home):
        """With a budget in config.toml, local `proctor guards` says on stderr that a server
        started before the edit applies the earlier limits until restarted; without
        budgets or rate limits, and with --json, it says nothing."""
        plain = cli("guards", home=fresh_home)
        with (fresh_home / "config.toml").open("a") as f:
            f.write(
                '\n[[guards.budgets]]\nscope = "agent"\nkey = "ops-bot"\nlimit = 1000\n'
                'period = "day"\non_exceed = "deny"\n'
            )

        noted = cli("guards", home=fresh_home)
        as_json = cli("guards", "--json", home=fresh_home)

        assert plain.code == noted.code == as_json.code == 0, str(noted)
        assert "restarted" not in plain.err
        assert "until restarted" in noted.err, str(noted)
        assert "proctor guards --server URL" in noted.err
        assert "restarted" not in as_json.err


class TestNarrowTerminal:
    """At 80 columns, tables never cut the ids and statuses a reader copies or acts on."""

    NARROW: ClassVar[dict[str, str]] = {"COLUMNS": "80"}

    def test_tokens_list_shows_whole_ids_that_revoke_accepts(self, cli, fresh_home):
        """Every token id printed by `tokens list` at 80 columns is whole (it was
        `tok_5cd71bf53…`), and `tokens revoke` accepts the id read off the table."""
        for name, role in (("ops-bot-production-eu-west", "agent"), ("fiona", "approver")):
            made = cli("tokens", "create", "--name", name, "--role", role, home=fresh_home)
            assert made.code == 0, str(made)
        ids = [t["id"] for t in cli("tokens", "list", "--json", home=fresh_home).json()["tokens"]]

        listed = cli("tokens", "list", home=fresh_home, env=self.NARROW)
        shown = re.findall(r"tok_[0-9a-f]+", listed.out)
        revoked = cli("tokens", "revoke", shown[0], home=fresh_home, env=self.NARROW)

        assert listed.code == 0, str(listed)
        assert "…" not in listed.out, listed.out
        assert sorted(shown) == sorted(ids), listed.out
        assert revoked.code == 0, str(revoked)

    def test_plans_shows_whole_plan_ids_and_statuses(self, cli, fresh_home, tmp_path):
        """`proctor plans` at 80 columns prints each plan id and status whole (the status
        was cut to `awaiting_ap…`); the other columns fold instead."""
        plan = manifest(
            HR_SEARCH,
            agent="recruiting-assistant-production",
            user="hiring-manager-emea@example.org",
            plan_id="hr-search-2027-03-12-000001",
        )
        submitted = cli("submit", write_json(tmp_path, "p.json", plan), home=fresh_home)
        assert submitted.code == 0, str(submitted)

        listed = cli("plans", home=fresh_home, env=self.NARROW)

        assert listed.code == 0, str(listed)
        assert max(len(line) for line in listed.out.splitlines()) <= 80, listed.out
        assert "hr-search-2027-03-12-000001" in listed.out, listed.out
        assert "awaiting_approval" in listed.out, listed.out
        assert "…" not in listed.out, listed.out
