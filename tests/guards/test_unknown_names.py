"""A kill switch or a forced breaker on a name nothing here knows is refused, not engaged.

A typo (``ops.nope``, ``opsbot``) would be engaged, reported as engaged or forced open, and
stop nothing, while the operator believes the action or the agent is held. One check serves
``kill`` and ``breaker open``, with the same ``allow_unknown`` escape, in the library, over
HTTP (a real server on 127.0.0.1 for the CLI) and in the CLI.
"""

from __future__ import annotations

from typing import Any

import pytest

from proctor.app.tokens import TokenService
from proctor.core.guards import RateLimit
from proctor.core.lifecycle import PlanStatus
from proctor.errors import InvalidRequestError

from .conftest import World
from .test_http import api, call  # noqa: F401 - the fixture is used by name


def refused(fn: Any) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        fn()
    return info.value


class TestAgentKillSwitch:
    def test_an_agent_nothing_named_is_refused_with_close_matches(self, url):
        """kill --agent opsbot, where ops-bot has submitted plans: refused on key with the
        close match, nothing written, no event; --allow-unknown engages it."""
        w = World(url)
        assert w.p.submit(w.plan(agent="ops-bot")).status is PlanStatus.SUCCEEDED

        err = refused(lambda: w.guards.kill("agent", "opsbot", by="oncall"))

        assert err.field == "key"
        assert "unknown agent 'opsbot'" in str(err)
        assert "close matches: ops-bot" in str(err)
        assert "--allow-unknown" in (err.hint or "")
        assert w.store.list_state("kill") == {}
        assert "kill.engaged" not in w.types()
        assert w.guards.kill("agent", "opsbot", by="oncall", allow_unknown=True) == ("agent:opsbot")

    def test_an_agent_is_known_by_a_plan_a_token_a_guard_or_a_limit(self, url):
        """Known in any spelling: by its plans (also denied ones), an API token's name, a
        whitelist, or a configured agent limit; each is engaged without allow_unknown."""
        w = World(url, rate_limits=(RateLimit(scope="agent", key="Limited", limit=5),))
        w.p.submit(w.plan(agent="Planner"))
        TokenService(w.store, w.clock).create(name="tokened", roles=("agent",))
        w.guards.set_whitelist("listed", ["shop.read"], by="ops")
        w.p.submit(w.plan(agent="listed"))  # denied by its whitelist: still seen

        for name in ("PLANNER", "Tokened", "LISTED", "limited"):
            assert w.guards.kill("agent", name, by="oncall") == f"agent:{name.lower()}"

    def test_a_name_that_is_no_agent_id_is_refused_even_when_allowed(self, url):
        """No plan's actor.agent_id can be "ops bot", "ops@bot" or non-ASCII: such a switch
        would stop nothing whatever allow_unknown says."""
        w = World(url)

        for name in ("ops bot", "ops@bot", "\uff2f\uff30\uff33"):
            err = refused(lambda n=name: w.guards.kill("agent", n, by="oncall", allow_unknown=True))
            assert err.field == "key"
            assert "is no agent id" in str(err)
        assert w.store.list_state("kill") == {}


class TestForcedBreaker:
    def test_an_unknown_action_or_agent_is_refused(self, url):
        """breaker open --action shop.bye (a typo of shop.buy) or --agent opsbot: refused on
        key with close matches, nothing written; allow_unknown forces it open."""
        w = World(url)
        w.p.submit(w.plan(agent="ops-bot"))

        action = refused(lambda: w.p.open_breaker("action", "shop.bye", by="oncall"))
        agent = refused(lambda: w.p.open_breaker("agent", "opsbot", by="oncall"))

        assert (action.field, agent.field) == ("key", "key")
        assert "unknown action 'shop.bye'" in str(action)
        assert "close matches: shop.buy" in str(action)
        assert "close matches: ops-bot" in str(agent)
        assert w.store.list_state("breaker") == {}
        assert "breaker.opened" not in w.types()
        assert w.p.open_breaker("action", "shop.bye", by="oncall", allow_unknown=True) == (
            "action:shop.bye"
        )
        assert w.p.open_breaker("action", "mcp.fs.write_file", by="oncall") == (
            "action:mcp.fs.write_file"
        )
        assert w.p.open_breaker("agent", "OPS-BOT", by="oncall") == "agent:ops-bot"


@pytest.mark.anyio
async def test_over_http_an_unknown_name_is_a_422_on_key(api):  # noqa: F811 - the fixture
    """POST /v1/guards/breakers/open {"scope": "action", "key": "ops.nope"}: 422 on key, no
    breaker; with allow_unknown, 200. The same for an agent kill switch."""
    w, app, secrets = api
    nope = {"scope": "action", "key": "ops.nope"}
    nobody = {"scope": "agent", "key": "nobody"}

    opened = await call(app, secrets, "root", "POST", "/v1/guards/breakers/open", nope)
    killed = await call(app, secrets, "root", "POST", "/v1/guards/kill", nobody)

    for r in (opened, killed):
        assert r.status_code == 422, r.text
        assert (r.json()["code"], r.json()["field"]) == ("invalid_request", "key")
    assert w.store.list_state("breaker") == {}
    assert w.store.list_state("kill") == {}
    allowed = nope | {"allow_unknown": True}
    r = await call(app, secrets, "root", "POST", "/v1/guards/breakers/open", allowed)
    assert r.status_code == 200, r.text
    assert r.json()["breaker"] == "action:ops.nope"
    r = await call(
        app, secrets, "root", "POST", "/v1/guards/kill", {"scope": "agent", "key": "BOT"}
    )
    assert r.json()["switch"] == "agent:bot"  # bot's token is known


class TestCli:
    def test_breaker_open_refuses_an_unknown_action(self, run, tmp_path):
        """proctor breaker open --action ops.nope exits 1 naming key; --allow-unknown opens."""
        home = ("--home", str(tmp_path / "h"))
        assert run("init", *home).code == 0

        typo = run("breaker", "open", "--action", "ops.nope", "--as", "oncall", "--json", *home)
        allowed = run(
            "breaker", "open", "--action", "ops.nope", "--allow-unknown", "--as", "oncall", *home
        )

        assert typo.code == 1, str(typo)
        assert typo.json()["error"]["field"] == "key"
        assert "unknown action 'ops.nope'" in typo.json()["error"]["message"]
        assert allowed.code == 0, str(allowed)
        assert list(run("guards", "--json", *home).json()["breakers"]) == ["action:ops.nope"]

    @pytest.mark.server
    def test_kill_refuses_an_unknown_agent_over_http(self, run, served):
        """proctor kill --agent opsbot --server ...: exit 1 on key; --allow-unknown engages."""
        w, url, secrets = served
        remote = ("--server", url, "--token", secrets["root"])

        typo = run("kill", "--agent", "opsbot", "--json", *remote)
        allowed = run("kill", "--agent", "opsbot", "--allow-unknown", "--json", *remote)

        assert typo.code == 1, str(typo)
        assert typo.json()["error"]["field"] == "key"
        assert allowed.code == 0, str(allowed)
        assert set(w.store.list_state("kill")) == {"agent:opsbot"}
