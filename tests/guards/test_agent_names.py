"""Agent names in the guards are compared ignoring case, as users' are.

An operator who stops ``OPS-BOT`` means the agent whose plans say ``ops-bot``, and an agent in
process writes its own ``actor.agent_id``: kill switches, whitelists, forced breakers, the
limits configured for an agent and the anomaly counters must hold it however it spells its
id. Rows stored by earlier versions as typed (``agent:OPS-BOT``) keep stopping the agent.
Each test runs on memory, SQLite and PostgreSQL stores.
"""

from __future__ import annotations

import pytest

from proctor.core.decisions import Outcome
from proctor.core.guards import AnomalySettings, Budget, RateLimit, agent_key, agent_names
from proctor.core.lifecycle import PlanStatus

from .conftest import World

SPELLINGS = ("ops-bot", "Ops-Bot", "OPS-BOT")


def seen(url: str) -> World:
    """An instance where ops-bot has acted (a read), so that a switch may name it."""
    w = World(url)
    assert w.p.submit(w.plan("shop.read", agent="ops-bot")).status is PlanStatus.SUCCEEDED
    return w


class TestAgentKey:
    def test_ascii_names_fold_and_others_stay_as_given(self):
        """agent_key lower-cases an ASCII name (every plan's agent id is ASCII); a non-ASCII
        name stays as given, so it matches no agent."""
        assert agent_key("OPS-Bot") == "ops-bot"
        assert agent_key("ops-bot") == "ops-bot"
        fullwidth = "\uff2f\uff30\uff33"  # OPS in fullwidth letters: not folded onto "ops"
        assert agent_key(fullwidth) == fullwidth

    def test_agent_names_lists_the_key_the_spelling_and_the_stored_aliases(self):
        """The key first, then the plan's own spelling, then rows stored under other ones."""
        assert agent_names("ops-bot") == ("ops-bot",)
        assert agent_names("Ops-Bot") == ("ops-bot", "Ops-Bot")
        aliases = {"ops-bot": ("OPS-BOT", "Ops-Bot")}
        assert agent_names("Ops-Bot", aliases) == ("ops-bot", "Ops-Bot", "OPS-BOT")
        assert agent_names("bot", aliases) == ("bot",)


class TestKillSwitch:
    @pytest.mark.parametrize("typed", ["OPS-BOT", "ops-bot"])
    def test_an_agent_switch_stops_every_spelling_and_unkill_finds_it(self, url, typed):
        """kill --agent OPS-BOT stops plans from ops-bot and Ops-Bot (and kill --agent ops-bot
        a plan from Ops-Bot); the switch is stored under the agent's key; unkill in any
        spelling releases it."""
        w = seen(url)

        switch = w.guards.kill("agent", typed, by="oncall", reason="case test")
        plans = [w.p.submit(w.plan(agent=agent)) for agent in SPELLINGS]

        assert switch == "agent:ops-bot"
        assert [p.status for p in plans] == [PlanStatus.DENIED] * 3
        assert w.tools["shop.buy"].calls == []
        assert set(w.store.list_state("kill")) == {"agent:ops-bot"}
        assert w.guards.unkill("agent", "Ops-Bot", by="oncall") is True
        assert w.guards.unkill("agent", "ops-bot", by="oncall") is False
        assert w.p.submit(w.plan(agent="OPS-BOT")).status is PlanStatus.SUCCEEDED

    def test_a_switch_stops_a_cleared_plan_of_another_spelling(self, url):
        """recheck (a confirmed plan) and stopped (a queued one) match the key too."""
        w = seen(url)
        w.guards.kill("agent", "OPS-BOT", by="oncall", reason="incident")

        rechecked = w.run("recheck", w.record(agent="ops-bot", outcome="confirm"))
        stopped = w.run("stopped", w.record(agent="Ops-Bot"))

        assert rechecked == "kill switch agent:ops-bot is engaged: incident"
        assert stopped == "kill switch agent:ops-bot is engaged: incident"

    def test_the_policy_sees_the_switch_for_every_spelling(self, url):
        """input.guards.kill names the agent's switch for a plan of another spelling."""
        w = seen(url)
        w.guards.kill("agent", "OPS-BOT", by="oncall")

        w.p.submit(w.plan(agent="Ops-Bot"))

        assert w.policy.inputs[-1]["guards"]["kill"] == ["agent:ops-bot"]


def _legacy(w: World, kind: str, key: str, value: object) -> None:
    """Write a row as an earlier version did: the agent's name as typed."""
    with w.store.transaction() as tx:
        tx.put_state(kind, key, value, at=w.clock.now())


class TestRowsOfEarlierVersions:
    @pytest.fixture(params=["sqlite", "postgres"])
    def shared(self, request, tmp_path) -> str:
        """A store two instances open in turn (the version before, the one after)."""
        if request.param == "postgres":
            pg: str = request.getfixturevalue("pg_url")
            return pg
        return f"sqlite:///{tmp_path / 'upgrade.db'}"

    def test_a_switch_stored_as_typed_keeps_stopping_every_spelling(self, shared):
        """agent:OPS-BOT, stored before names were folded, stops ops-bot in a process started
        after the upgrade: at once in a worker's path (stopped, no policy snapshot read yet),
        at submission, and before a confirmed plan runs; unkill ops-bot releases it."""
        before = World(shared)
        _legacy(before, "kill", "agent:OPS-BOT", {"by": "oncall", "reason": "old", "at": "t"})

        w = World(shared)  # the upgraded process
        stopped = w.run("stopped", w.record(agent="ops-bot"))
        denied = w.p.submit(w.plan(agent="Ops-Bot"))
        rechecked = w.run("recheck", w.record(agent="ops-bot", outcome="confirm"))

        assert stopped == "kill switch agent:OPS-BOT is engaged: old"
        assert denied.status is PlanStatus.DENIED
        assert rechecked == "kill switch agent:OPS-BOT is engaged: old"
        assert w.guards.unkill("agent", "ops-bot", by="oncall") is True
        assert w.store.list_state("kill") == {}
        assert [e["data"]["switch"] for e in w.events("kill.released")] == ["agent:OPS-BOT"]
        assert w.p.submit(w.plan(agent="OPS-BOT")).status is PlanStatus.SUCCEEDED

    def test_a_whitelist_stored_as_typed_restricts_every_spelling_until_replaced(self, shared):
        """A whitelist stored for Ops-Bot restricts ops-bot; setting ops-bot's replaces it."""
        before = World(shared)
        _legacy(before, "whitelist", "Ops-Bot", {"actions": ["shop.read"]})

        w = World(shared)
        spec = [w.p.gateway.catalog.get("shop.buy")]
        rec = w.record(agent="ops-bot")
        denied = w.run("admit", rec, spec, w.decision(rec))
        w.guards.set_whitelist("OPS-BOT", ["shop.buy"], by="ops")

        assert denied.outcome is Outcome.DENY
        assert w.store.list_state("whitelist") == {"ops-bot": {"actions": ["shop.buy"]}}
        assert w.events("whitelist.changed")[-1]["data"] == {
            "agent": "ops-bot",
            "actions": ["shop.buy"],
            "replaced": ["Ops-Bot"],
        }
        rec = w.record(agent="Ops-Bot")
        assert w.run("admit", rec, spec, w.decision(rec)).outcome is Outcome.EXECUTE


class TestWhitelist:
    def test_a_whitelist_restricts_every_spelling(self, url):
        """whitelist OPS-BOT shop.read: a plan from ops-bot or Ops-Bot for shop.buy is denied,
        and the policy is told so; --clear in another spelling removes it."""
        w = World(url)
        w.guards.set_whitelist("OPS-BOT", ["shop.read"], by="ops")

        plans = [w.p.submit(w.plan(agent=agent)) for agent in SPELLINGS]

        assert [p.status for p in plans] == [PlanStatus.DENIED] * 3
        assert w.policy.inputs[-1]["guards"]["whitelisted"] is False
        assert w.store.list_state("whitelist") == {"ops-bot": {"actions": ["shop.read"]}}
        w.guards.set_whitelist("Ops-Bot", None, by="ops")
        assert w.p.submit(w.plan(agent="OPS-BOT")).status is PlanStatus.SUCCEEDED


class TestBreakers:
    def test_a_forced_breaker_holds_every_spelling_and_reset_closes_them_all(self, url):
        """breaker open --agent OPS-BOT holds plans from ops-bot and Ops-Bot; reset --agent
        ops-bot closes it and the open breaker the Ops-Bot spelling's calls tripped."""
        w = seen(url)
        key = w.p.open_breaker("agent", "OPS-BOT", by="ops", reason="supplier")
        _legacy(w, "breaker", "agent:Ops-Bot", {"state": "open", "opened_at": None})
        w.guards._invalidate()

        held = [w.p.submit(w.plan(agent=agent)) for agent in ("ops-bot", "Ops-Bot")]

        assert key == "agent:ops-bot"
        assert [p.status for p in held] == [PlanStatus.AWAITING_APPROVAL] * 2
        assert w.tools["shop.buy"].calls == []
        assert w.p.reset_breaker("agent", "ops-bot", by="ops") is True
        closed = sorted(e["data"]["breaker"] for e in w.events("breaker.closed"))
        assert closed == ["agent:Ops-Bot", "agent:ops-bot"]
        assert w.p.submit(w.plan(agent="OPS-BOT")).status is PlanStatus.SUCCEEDED


class TestConfiguredLimits:
    def test_a_rate_limit_and_a_budget_named_in_another_case_apply(self, url):
        """key = "OPS-BOT" limits ops-bot (it silently limited nobody); status counts it."""
        w = World(
            url,
            rate_limits=(RateLimit(scope="agent", key="OPS-BOT", limit=2),),
            budgets=(Budget(scope="agent", key="Ops-Bot", limit=500, on_exceed="deny"),),
        )

        first = w.p.submit(w.plan(amount=300, agent="ops-bot"))
        over_budget = w.p.submit(w.plan(amount=300, agent="ops-bot"))
        over_rate = w.p.submit(w.plan(agent="ops-bot"))

        assert first.status is PlanStatus.SUCCEEDED
        assert over_budget.status is PlanStatus.DENIED
        assert "budget budget:agent:ops-bot" in over_budget.decision["plan_reasons"][0]
        assert over_rate.status is PlanStatus.DENIED
        assert over_rate.decision["plan_reasons"][0].startswith("rate limit: agent 'ops-bot'")
        st = w.guards.status()
        assert st["rate_limits"][0]["used"] == 2
        assert st["budgets"][0]["used"] == 300


class TestAnomalies:
    def test_denials_in_several_spellings_count_as_one_agents(self, url):
        """Three whitelist denials, each under another spelling of the id, are one agent's
        repeated denials: an anomaly is raised."""
        w = World(url, anomaly=AnomalySettings(denials=3))
        w.guards.set_whitelist("ops-bot", ["shop.read"], by="ops")

        for agent in SPELLINGS:
            assert w.p.submit(w.plan(agent=agent)).status is PlanStatus.DENIED

        assert len(w.events("anomaly.detected")) == 1
        assert w.store.counter_sum("denials:agent:ops-bot", "0")[0] == 3


class TestHiddenTools:
    def test_mcp_tool_lists_hide_what_stops_the_agent_in_any_spelling(self, url):
        """The MCP proxies hide from an agent's tools/list what it may not use
        (``Guards.hidden``): its kill switch and whitelist are stored under its key, and an
        agent spelt ``Ops-Bot`` must see them as ``ops-bot`` does (before: nothing hidden)."""
        from types import SimpleNamespace

        from proctor.mcp.proxy import McpProxy

        w = seen(url)
        tools = ["shop.buy", "shop.read"]
        w.guards.set_whitelist("Ops-Bot", ["shop.read"], by="ops")
        proxy = SimpleNamespace(
            proctor=w.p,
            agent_id="Ops-Bot",
            tools={t: ("shop", SimpleNamespace(name=t.split(".")[-1])) for t in tools},
            _action=lambda server, tool: f"{server}.{tool}",
        )

        assert McpProxy._guard_hidden(proxy) == {"shop.buy"}
        for spelling in SPELLINGS:
            assert w.guards.hidden(spelling, tools) == {"shop.buy"}
        w.guards.kill("agent", "OPS-BOT", by="ops")
        assert McpProxy._guard_hidden(proxy) == set(tools)
        assert w.guards.hidden("ops-bot", tools) == set(tools)
        assert w.guards.hidden("other-bot", tools) == set()
