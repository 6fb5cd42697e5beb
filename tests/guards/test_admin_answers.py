"""What the guards' administrative operations answer, and what they leave alone.

Engaging a kill switch that is already engaged (or forcing open a breaker already held open)
changes nothing: the first engager's name, time and reason stay, no second event is written,
and the caller is told who engaged it. A forced breaker says since when it is open. A name is
refused where it means nothing (the global switch), and a missing name is named as such.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from proctor.core.lifecycle import PlanStatus
from proctor.errors import InvalidRequestError

from .conftest import World
from .test_http import api, call  # noqa: F401 - the fixture is used by name


class TestKillAlreadyEngaged:
    def test_a_second_engagement_keeps_the_first_and_says_so(self, url):
        """oncall engages action:shop.buy; bob engages it again: the switch still says
        oncall and oncall's reason, one kill.engaged event, and bob is told who and why."""
        w = World(url)
        first = w.guards.engage("action", "shop.buy", by="oncall", reason="supplier down")
        w.clock.advance(timedelta(minutes=5))

        again = w.guards.engage("action", "shop.buy", by="bob", reason="me too")

        stored = w.store.list_state("kill")["action:shop.buy"]
        assert first["already"] is None
        assert again == {
            "switch": "action:shop.buy",
            "engaged": True,
            "already": {
                "switch": "action:shop.buy",
                "by": "oncall",
                "reason": "supplier down",
                "at": stored["at"],
            },
        }
        assert (stored["by"], stored["reason"]) == ("oncall", "supplier down")
        assert [e["data"]["by"] for e in w.events("kill.engaged")] == ["oncall"]
        assert w.guards.kill("action", "shop.buy", by="carol") == "action:shop.buy"
        assert w.store.list_state("kill")["action:shop.buy"]["by"] == "oncall"

    def test_an_agent_switch_of_an_earlier_version_counts_as_engaged(self, url):
        """agent:OPS-BOT stored as typed: engaging ops-bot reports it, writes nothing."""
        w = World(url)
        w.p.submit(w.plan("shop.read", agent="ops-bot"))
        with w.store.transaction() as tx:
            old = {"by": "alice", "reason": "old", "at": "2026-01-01T00:00:00+00:00"}
            tx.put_state("kill", "agent:OPS-BOT", old, at=w.clock.now())

        again = w.guards.engage("agent", "ops-bot", by="bob")

        assert again["switch"] == "agent:ops-bot"
        assert again["already"] == {"switch": "agent:OPS-BOT", **old}
        assert set(w.store.list_state("kill")) == {"agent:OPS-BOT"}
        assert "kill.engaged" not in w.types()


class TestNames:
    def test_the_global_switch_takes_no_name_and_a_missing_name_is_named(self, url):
        """kill("global", "x") is refused on key (it engaged everything, silently dropping
        the name); kill("agent") without a name is refused on key, not scope."""
        w = World(url)
        cases = [
            (lambda: w.guards.kill("global", "ops-bot", by="ops"), "key"),
            (lambda: w.guards.kill("agent", None, by="ops"), "key"),
            (lambda: w.guards.unkill("action", "", by="ops"), "key"),
            (lambda: w.guards.unkill("global", "x", by="ops"), "key"),
            (lambda: w.guards.kill("team", "x", by="ops"), "scope"),
        ]
        for fn, field in cases:
            with pytest.raises(InvalidRequestError) as e:
                fn()
            assert e.value.field == field, e.value
        assert w.store.list_state("kill") == {}


class TestForcedBreaker:
    def test_a_forced_breaker_says_since_when_and_stays_held(self, url):
        """opened_at is set when forced (it was null); past open_seconds it is still open
        (held), and forcing it again keeps who forced it and records nothing."""
        w = World(url)
        w.p.submit(w.plan())
        w.guards.force_open("agent", "bot", by="ops", reason="supplier")
        opened_at = w.clock.now().isoformat()
        w.clock.advance(timedelta(hours=1))

        again = w.guards.force_open("agent", "bot", by="bob", reason="me too")
        status = w.guards.status()["breakers"]["agent:bot"]

        assert status["opened_at"] == opened_at
        assert status["held"] is True
        assert status["view"] == "open"
        assert status["forced"]["by"] == "ops"
        assert again["already"] == {"by": "ops", "reason": "supplier", "at": opened_at}
        assert len(w.events("breaker.opened")) == 1
        assert w.p.submit(w.plan()).status is PlanStatus.AWAITING_APPROVAL

    def test_a_breaker_forced_by_an_earlier_version_is_held(self, url):
        """A row of an earlier version (forced, no held, no opened_at) stays open and counts
        as held: forcing it again does not overwrite who forced it."""
        w = World(url)
        w.p.submit(w.plan())
        forced = {"by": "ops", "at": "2026-01-01T00:00:00+00:00", "reason": "old"}
        row = {"state": "open", "opened_at": None, "trials": 0, "reason": "forced open by ops"}
        with w.store.transaction() as tx:
            tx.put_state("breaker", "agent:bot", row | {"forced": forced}, at=w.clock.now())
        w.guards._invalidate()

        again = w.guards.force_open("agent", "bot", by="bob")

        assert again["already"] == forced
        assert w.store.list_state("breaker")["agent:bot"]["forced"] == forced
        assert w.guards.status()["breakers"]["agent:bot"]["view"] == "open"


@pytest.mark.anyio
async def test_over_http_a_second_engagement_answers_who_engaged_it(api):  # noqa: F811
    """POST /v1/guards/kill twice: the second 200 names the first engager in ``already``;
    POST /v1/guards/breakers/open twice: likewise."""
    w, app, secrets = api
    kill = {"scope": "action", "key": "shop.buy", "reason": "first"}
    await call(app, secrets, "root", "POST", "/v1/guards/kill", kill)

    r = await call(app, secrets, "root", "POST", "/v1/guards/kill", kill | {"reason": "second"})
    breaker = {"scope": "action", "key": "shop.buy"}
    await call(app, secrets, "root", "POST", "/v1/guards/breakers/open", breaker)
    b = await call(app, secrets, "root", "POST", "/v1/guards/breakers/open", breaker)

    assert r.status_code == 200, r.text
    assert r.json()["already"]["by"] == "root"
    assert r.json()["already"]["reason"] == "first"
    assert w.store.list_state("kill")["action:shop.buy"]["reason"] == "first"
    assert b.json()["already"]["by"] == "root"


def test_the_cli_says_a_switch_was_already_engaged(run, tmp_path):
    """proctor kill on an engaged switch exits 0 and says by whom it was engaged and why;
    guards still shows the first engager."""
    h = ("--home", str(tmp_path / "h"))
    assert run("init", *h).code == 0
    kill = ("kill", "--action", "travel.search", "--as")
    assert run(*kill, "alice", "-m", "incident 7", *h).code == 0

    again = run(*kill, "bob", "-m", "me too", *h)

    assert again.code == 0, str(again)
    assert "was already engaged by alice at" in again.out
    assert "incident 7; left as it is." in again.out
    shown = run("guards", "--json", *h).json()["kill"]["action:travel.search"]
    assert (shown["by"], shown["reason"]) == ("alice", "incident 7")
