"""The installed ``proctor`` script in remote mode: ``--server URL --token T`` against a real
``proctor serve`` subprocess on 127.0.0.1 (and once through PROCTOR_SERVER/PROCTOR_TOKEN).

Every test acts on plans of its own (explicit plan ids), so the order does not matter.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proctor.testing import free_port, stop_process, wait_until_serving

pytestmark = pytest.mark.cli

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


def manifest(plan_id: str, *steps: tuple[str, dict[str, Any]], user: str = "alice") -> dict:
    """A plan of the agent ``bot`` (the agent token's name) on behalf of ``user``."""
    return {
        "plan_id": plan_id,
        "actor": {"type": "agent", "name": "bot", "model_version": "m-1", "agent_id": "bot"},
        "on_behalf_of": user,
        "intent": f"remote test {plan_id}",
        "steps": [{"id": f"s{i + 1}", "action": a, "params": p} for i, (a, p) in enumerate(steps)],
    }


@dataclass(frozen=True)
class World:
    """A served instance: its home, URL and one token per principal."""

    home: Path
    url: str
    tokens: dict[str, str]
    plans_dir: Path


@pytest.fixture(scope="module")
def world(cli, proctor_exe, tmp_path_factory) -> Iterator[World]:
    """`proctor init`, tokens from `proctor tokens create --json`, then `proctor serve`."""
    tmp = tmp_path_factory.mktemp("remote")
    home = tmp / "instance"
    assert cli("init", home=home).code == 0
    tokens = {}
    for name, roles, groups in (
        ("bot", ["agent"], ""),
        ("alice", ["user"], ""),
        ("hank", ["approver"], "hr"),
        ("aud", ["auditor"], ""),
    ):
        args = ["tokens", "create", "--name", name, "--json"]
        for role in roles:
            args += ["--role", role]
        if groups:
            args += ["--groups", groups]
        made = cli(*args, home=home)
        assert made.code == 0, str(made)
        tokens[name] = made.json()["token"]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCTOR_")}
    with (tmp / "serve.err").open("wb") as err:
        proc = subprocess.Popen(
            [proctor_exe, "serve", "--home", str(home), "--port", str(port), "--no-access-log"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
    try:
        wait_until_serving(url, proc=proc, timeout=30, output=(tmp / "serve.err").read_text)
        plans_dir = tmp / "plans"
        plans_dir.mkdir()
        yield World(home, url, tokens, plans_dir)
    finally:
        stop_process(proc)


def remote(cli, w: World, who: str, *args: str | Path):
    """Run ``proctor ARGS --server URL --token TOKEN-OF-who``."""
    return cli(*args, "--server", w.url, "--token", w.tokens[who])


def submit(cli, w: World, plan: dict[str, Any], *extra: str):
    """Submit ``plan`` as the agent token; return the run."""
    path = w.plans_dir / f"{plan['plan_id']}.json"
    path.write_text(json.dumps(plan))
    return remote(cli, w, "bot", "submit", path, *extra)


class TestPlans:
    def test_an_executed_plan_shows_as_it_does_locally(self, cli, world):
        """submit --json runs the plan; `show --json` is the local output, events included."""
        w = world
        sub = submit(cli, w, manifest("r-exec", SEARCH), "--json")
        shown = remote(cli, w, "bot", "show", "r-exec", "--json")
        local = cli("show", "r-exec", "--json", home=w.home)
        human = remote(cli, w, "bot", "show", "r-exec")

        assert sub.code == 0, str(sub)
        assert sub.json()["status"] == "succeeded"
        assert sub.json()["agent_id"] == "bot"
        assert shown.code == 0, str(shown)
        assert shown.json() == local.json()
        assert "plan.submitted" in [e["type"] for e in shown.json()["events"]]
        assert human.code == 0, str(human)
        for text in ("r-exec", "succeeded", "travel.search", "Audit events", "plan.submitted"):
            assert text in human.out, text

    def test_human_submit_and_a_denied_plan_exits_1(self, cli, world):
        """A denied plan exits 1 (as locally); the human output shows the manifest's intent."""
        w = world
        denied = submit(cli, w, manifest("r-denied", HR_SEARCH, EXTERNAL_EMAIL))

        assert denied.code == 1, str(denied)
        assert "denied" in denied.out
        assert "intent: remote test r-denied" in denied.out

    def test_approve_with_the_hr_token(self, cli, world):
        """An hr approver's token approves and the plan runs; --as/--role only draw a warning."""
        w = world
        sub = submit(cli, w, manifest("r-approve", HR_SEARCH, user="hiring-manager"))
        waiting = remote(cli, w, "hank", "show", "r-approve", "--json")
        flags = ("--as", "mallory", "--role", "finance", "-m", "ok", "--json")
        approved = remote(cli, w, "hank", "approve", "r-approve", *flags)

        assert sub.code == 0, str(sub)
        assert "awaiting_approval" in sub.out
        assert f"next: proctor approve r-approve --server {w.url}" in sub.out
        assert waiting.json()["status"] == "awaiting_approval"
        assert "plan.submitted" in [e["type"] for e in waiting.json()["events"]]
        assert approved.code == 0, str(approved)
        doc = approved.json()
        assert doc["status"] == "succeeded"
        assert [(a["principal"], a["roles"], a["comment"]) for a in doc["approvals"]] == [
            ("hank", ["hr"], "ok")
        ]
        assert "--as is ignored with --server" in approved.err
        assert "--role is ignored with --server" in approved.err

    def test_reject_and_an_agent_cannot_approve(self, cli, world):
        """The approver rejects (exit 0, as locally); the agent's approve is permission_denied."""
        w = world
        assert submit(cli, w, manifest("r-reject", HR_SEARCH, user="hiring-manager")).code == 0
        by_agent = remote(cli, w, "bot", "approve", "r-reject", "--json")
        rejected = remote(cli, w, "hank", "reject", "r-reject", "-m", "no", "--json")

        assert by_agent.code == 1, str(by_agent)
        assert by_agent.error()["code"] == "permission_denied"
        assert rejected.code == 0, str(rejected)
        assert rejected.json()["status"] == "rejected"

    def test_confirm_and_undo_with_the_user_token(self, cli, world):
        """The on-behalf-of user's token confirms one plan and undoes another."""
        w = world
        assert submit(cli, w, manifest("r-confirm", SUBSCRIPTION)).code == 0
        booked = submit(cli, w, manifest("r-undo", BOOKING), "--json")
        confirmed = remote(cli, w, "alice", "confirm", "r-confirm", "--json")
        undone = remote(cli, w, "alice", "undo", "r-undo", "--json")

        assert booked.json()["status"] == "succeeded"
        assert confirmed.code == 0, str(confirmed)
        assert confirmed.json()["status"] == "succeeded"
        assert undone.code == 0, str(undone)
        assert undone.json()["status"] == "undone"

    def test_plans_through_the_environment(self, cli, world):
        """PROCTOR_SERVER/PROCTOR_TOKEN select remote mode: the auditor lists every plan."""
        w = world
        assert submit(cli, w, manifest("r-env", SEARCH)).code == 0
        env = {"PROCTOR_SERVER": w.url, "PROCTOR_TOKEN": w.tokens["aud"]}

        listed = cli("plans", "--json", "--limit", "1000", env=env)
        succeeded = cli("plans", "--json", "--status", "succeeded", env=env)
        human = cli("plans", env=env)

        assert listed.code == 0, str(listed)
        assert "r-env" in [p["plan_id"] for p in listed.json()["plans"]]
        assert set(listed.json()) == {"plans"}
        assert {p["status"] for p in succeeded.json()["plans"]} == {"succeeded"}
        assert "r-env" in human.out


class TestAudit:
    def test_events_checkpoint_proofs_and_keys(self, cli, world):
        """The auditor's reads answer as the local commands do on the same instance."""
        w = world
        assert submit(cli, w, manifest("r-audit", SEARCH)).code == 0
        assert cli("audit", "checkpoint", "--sign", home=w.home).code == 0

        def both(*args: str) -> tuple[Any, Any]:
            there = remote(cli, w, "aud", *args, "--json")
            here = cli(*args, "--json", home=w.home)
            assert there.code == 0, str(there)
            return there.json(), here.json()

        events = both("audit", "events", "--limit", "3")
        of_plan = both("audit", "events", "--plan", "r-audit")
        checkpoint = remote(cli, w, "aud", "audit", "checkpoint", "--json").json()
        note = remote(cli, w, "aud", "audit", "checkpoint")
        size = checkpoint["size"]
        inclusion = both("audit", "prove", "--index", "1", "--size", str(size))
        consistency = both("audit", "prove", "--from", "1", "--to", str(size))
        keys = both("keys", "list")
        vkeys = remote(cli, w, "aud", "keys", "list", "--vkey")

        assert events[0] == events[1]
        assert [e["seq"] for e in events[0]["events"]] == [0, 1, 2]
        assert of_plan[0] == of_plan[1]
        assert {e["plan_id"] for e in of_plan[0]["events"]} == {"r-audit"}
        lines = checkpoint["note"].split("\n")
        assert (int(lines[1]), lines[2]) == (size, checkpoint["root_hash"])
        assert note.out == checkpoint["note"]
        assert inclusion[0] == inclusion[1]
        assert consistency[0] == consistency[1]
        assert keys[0] == keys[1]
        assert vkeys.out.split() == [k["vkey"] for k in keys[0]["keys"]]


class TestErrors:
    def test_a_wrong_token_is_unauthenticated(self, cli, world):
        """A token the server does not know: exit 1 with the server's code."""
        as_json = cli("plans", "--json", "--server", world.url, "--token", "prt_wrong")
        human = cli("plans", "--server", world.url, "--token", "prt_wrong")

        assert as_json.code == 1, str(as_json)
        assert as_json.error()["code"] == "unauthenticated"
        assert human.code == 1
        assert "error[unauthenticated]" in human.err
        assert "Traceback" not in human.err

    def test_a_server_that_is_down(self, cli):
        """Nothing listens: exit 1 with a hint naming the URL."""
        url = f"http://127.0.0.1:{free_port()}"

        as_json = cli("plans", "--json", "--server", url, "--token", "t")
        human = cli("show", "p-x", "--server", url, "--token", "t")

        assert as_json.code == 1, str(as_json)
        assert as_json.error()["code"] == "storage_error"
        assert url in as_json.error()["hint"]
        assert human.code == 1
        assert f"hint: Is `proctor serve` running and reachable at {url}?" in human.err
        assert "Traceback" not in human.err

    @pytest.mark.parametrize("doc", [[1, 2], "a plan", 7, None], ids=repr)
    def test_a_manifest_that_is_not_an_object(self, cli, tmp_path, doc):
        """A JSON array, string, number or null is refused before anything is sent."""
        path = tmp_path / "plan.json"
        path.write_text(json.dumps(doc))
        url = f"http://127.0.0.1:{free_port()}"  # nothing listens: nothing may be sent

        result = cli("submit", path, "--json", "--server", url, "--token", "t")

        assert result.code == 1, str(result)
        assert result.error()["code"] == "invalid_request"
        assert result.error()["message"] == "plan must be an object"
        assert result.error()["field"] == "plan"

    @pytest.mark.parametrize(
        "args",
        [
            pytest.param(("init", "--server", "http://127.0.0.1:9"), id="init"),
            pytest.param(("audit", "verify", "--server", "http://127.0.0.1:9"), id="verify"),
            pytest.param(("tokens", "list", "--server", "http://127.0.0.1:9"), id="tokens"),
            pytest.param(("keys", "rotate", "--server", "http://127.0.0.1:9"), id="rotate"),
            pytest.param(
                ("audit", "checkpoint", "--sign", "--server", "http://127.0.0.1:9"), id="sign"
            ),
            pytest.param(
                ("submit", "p.json", "--sandbox", "--server", "http://127.0.0.1:9"), id="sandbox"
            ),
            pytest.param(("plans", "--home", "h", "--server", "http://127.0.0.1:9"), id="both"),
            pytest.param(("plans", "--server", "ftp://host"), id="not-http"),
            pytest.param(("plans", "--server", "http://[::1", "--token", "t"), id="bad-url"),
            pytest.param(("guards", "--server", "http://host:port", "--token", "t"), id="bad-port"),
            pytest.param(("plans", "--token", "t"), id="token-alone"),
            pytest.param(("approve", "p-x", "--as", "ann"), id="local-needs-role"),
            pytest.param(("undo", "p-x"), id="local-needs-as"),
        ],
    )
    def test_usage_errors_exit_2(self, cli, args):
        """Local-only commands and options refuse --server; local mode needs --as/--role."""
        result = cli(*args)

        assert result.code == 2, str(result)
        assert "Traceback" not in result.err
        assert "Error:" in result.err
