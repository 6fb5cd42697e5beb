"""The guard commands, in process: local (--home) and remote (--server/--token) mode.

Remote mode talks to a real uvicorn server on 127.0.0.1 (a thread) serving an instance with
real API tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def home(run, tmp_path) -> Path:
    h = tmp_path / "instance"
    assert run("init", "--home", str(h)).code == 0
    return h


class TestLocal:
    def test_kill_guards_unkill(self, run, home):
        """kill engages (exit 0), guards shows it, unkill releases it once (then exit 1)."""
        h = ("--home", str(home))
        assert (
            run("kill", "--action", "travel.search", "--as", "ops", "--reason", "x", *h).code == 0
        )

        shown = run("guards", "--json", *h).json()

        assert shown["kill"]["action:travel.search"]["reason"] == "x"
        assert "Kill switch" not in run("guards", *h).out  # the table, not the kill message
        assert "action:travel.search" in run("guards", *h).out
        assert run("unkill", "--action", "travel.search", "--as", "ops", *h).code == 0
        assert run("unkill", "--action", "travel.search", "--as", "ops", *h).code == 1

    def test_kill_refuses_an_action_the_catalog_does_not_know(self, run, home):
        """A typo (payments.refnd) exits 1 naming the field and the close match, and engages
        nothing; an MCP tool's action and --allow-unknown are accepted; unkill releases a
        switch on any name (a mistaken one must be removable)."""
        h = ("--home", str(home))

        typo = run("kill", "--action", "payments.refnd", "--as", "ops", "--json", *h)

        assert typo.code == 1, str(typo)
        error = typo.json()["error"]
        assert (error["code"], error["field"]) == ("invalid_request", "key")
        assert "payments.refnd" in error["message"]
        assert "close matches: payments.refund" in error["message"]
        assert run("guards", "--json", *h).json()["kill"] == {}
        assert run("kill", "--action", "mcp.fs.write_file", "--as", "ops", *h).code == 0
        assert run("kill", "--action", "mcp.FS.write", "--as", "ops", *h).code == 1
        allowed = ("kill", "--action", "elsewhere.only", "--allow-unknown", "--as", "ops", *h)
        assert run(*allowed).code == 0
        assert sorted(run("guards", "--json", *h).json()["kill"]) == [
            "action:elsewhere.only",
            "action:mcp.fs.write_file",
        ]
        assert run("unkill", "--action", "elsewhere.only", "--as", "ops", *h).code == 0
        assert run("unkill", "--action", "mcp.fs.write_file", "--as", "ops", *h).code == 0

    def test_local_mode_needs_a_principal(self, run, home):
        """Without --server, kill, review mark and complain need --as: a usage error (2)."""
        h = ("--home", str(home))
        assert run("kill", "--global", *h).code == 2
        assert run("complain", "p-1", "--reason", "bad", *h).code == 2
        assert run("review", "mark", "p-1", "fine", *h).code == 2

    def test_promotion_aliases_and_per_user_show(self, run, home):
        """accept-promotion is accept; show USER lists that user's suggestions."""
        h = ("--home", str(home))
        assert run("autonomy", "set", "alice", "travel.search", "confirm", *h).code == 0

        shown = run("autonomy", "show", "alice", "--json", *h).json()
        none = run("autonomy", "accept-promotion", "alice", "travel.search", "--json", *h)

        assert shown == {
            "autonomy": {"alice|travel.search": {"level": "confirm", "below": None, "by": "admin"}},
            "promotions": {},
            "suggestions": [],
        }
        assert run("autonomy", "show", "bob", "--json", *h).json()["autonomy"] == {}
        assert none.code == 1
        assert none.json()["error"]["code"] == "not_found"
        assert run("autonomy", "decline-promotion", "alice", "travel.search", *h).code == 1
        assert (
            run("autonomy", "set", "alice", "travel.search", "auto", "--below", "-1", *h).code == 2
        )

    @pytest.mark.parametrize(
        ("table", "field"),
        [
            ('[[guards.budgets]]\nscope = "agent"\nkey = "*"\nlimit = 10.5', "budgets[0].limit"),
            ('[[guards.rate_limits]]\nscope = "agent"\nkey = "*"\nlimit = 2.5', "limit"),
            ('[[guards.rate_limits]]\nscope = "agent"\nkey = "*"\nlimit = true', "limit"),
        ],
    )
    def test_a_fractional_limit_in_the_config_is_an_error(self, run, home, table, field):
        """A budget of 10.5 or a rate limit of 2.5 calls: exit 1 naming the field, not a run."""
        config = home / "config.toml"
        config.write_text(config.read_text() + "\n" + table + "\n")

        r = run("guards", "--home", str(home))

        assert r.code == 1, r
        assert field in r.err, r
        assert "integer" in r.err, r


@pytest.mark.server
class TestRemote:
    def test_admin_commands_over_http(self, run, served):
        """kill, guards, whitelist and unkill with an admin token; the server's state changes."""
        w, url, secrets = served

        def as_(who: str) -> tuple[str, ...]:
            return ("--server", url, "--token", secrets[who])

        r = run("kill", "--agent", "bot", "--reason", "remote", "--json", *as_("root"))
        assert r.code == 0, str(r)
        assert r.json() == {"switch": "agent:bot", "engaged": True, "already": None}
        assert w.store.list_state("kill")["agent:bot"]["by"] == "root"  # the token's principal
        assert run("guards", "--json", *as_("aud")).json()["kill"]["agent:bot"]["reason"] == (
            "remote"
        )
        denied = run("kill", "--global", "--json", *as_("alice"))
        assert denied.code == 1
        assert denied.json()["error"]["code"] == "permission_denied"
        assert run("whitelist", "bot", "shop.read", *as_("root")).code == 0
        assert w.store.list_state("whitelist")["bot"] == {"actions": ["shop.read"]}
        assert run("unkill", "--agent", "bot", *as_("root")).code == 0
        assert run("unkill", "--agent", "bot", *as_("root")).code == 1
        assert w.store.list_state("kill") == {}
        typo = run("kill", "--action", "shop.bye", "--json", *as_("root"))
        assert typo.code == 1, str(typo)
        assert typo.json()["error"]["field"] == "key"
        assert "close matches: shop.buy" in typo.json()["error"]["message"]
        assert "action:shop.bye" not in w.store.list_state("kill")
        r = run("kill", "--action", "shop.bye", "--allow-unknown", *as_("root"))
        assert r.code == 0, str(r)
        assert run("unkill", "--action", "shop.bye", *as_("root")).code == 0

    def test_user_commands_over_http(self, run, served):
        """A user sets and shows their autonomy, complains; reviews are an auditor's."""
        w, url, secrets = served

        def as_(who: str) -> tuple[str, ...]:
            return ("--server", url, "--token", secrets[who])

        assert run("autonomy", "set", "alice", "shop.buy", "confirm", *as_("alice")).code == 0
        shown = run("autonomy", "show", "--json", *as_("alice")).json()
        assert shown["autonomy"]["alice|shop.buy"]["level"] == "confirm"
        assert shown["suggestions"] == []
        plan = w.p.submit(w.plan())
        assert plan.on_behalf_of == "alice"
        r = run("complain", plan.plan_id, "--reason", "not this shop", *as_("alice"))
        assert r.code == 0, str(r)
        assert "complaint.filed" in w.types(plan.plan_id)
        assert run("review", "list", "--json", *as_("aud")).json() == {"plans": []}
        mark = run("review", "mark", plan.plan_id, "fine", "--json", *as_("aud"))
        assert mark.code == 1
        assert mark.json()["error"]["code"] == "conflict"  # it was not sampled
        none = run("autonomy", "accept", "alice", "shop.buy", *as_("alice"))
        assert none.code == 1
        assert "not_found" in none.err
