"""Admin toggles of circuit breakers: force one open, reset (close) it.

Through the library (every store backend), the HTTP API (real tokens, in-process ASGI) and the
CLI (local and remote against a real uvicorn). Every toggle is audited; only admins toggle
over HTTP, and a refused toggle changes nothing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from proctor.app.tokens import TokenService
from proctor.core.guards import BreakerSettings
from proctor.core.lifecycle import PlanStatus
from proctor.errors import ConflictError, InvalidRequestError
from proctor.http import HttpSettings, create_app

from .conftest import World

# Three calls decide; half of them failing opens the breaker; one trial closes it.
FAST = BreakerSettings(min_calls=3, error_rate=0.5, open_seconds=60, trials=1)


def reasons(rec: Any) -> list[str]:
    return [r for s in rec.decision["steps"] for r in s["reasons"]]


def trip(w: World) -> None:
    """Three failures of shop.flaky: the agent's and the action's breakers open."""
    for _ in range(3):
        assert w.p.submit(w.plan("shop.flaky")).status is PlanStatus.FAILED
    assert {e["data"]["breaker"] for e in w.events("breaker.opened")} == {
        "action:shop.flaky",
        "agent:bot",
    }


class TestLibrary:
    def test_reset_closes_a_tripped_breaker_and_only_later_calls_count(self, url):
        """After a reset the errors that tripped it no longer count: a success keeps it
        closed, and it opens again only when new calls fail often enough."""
        w = World(url, policy="default", breaker=FAST)
        trip(w)
        held = w.p.submit(w.plan())

        closed = w.p.reset_breaker("agent", "bot", by="ops", reason="supplier fixed")
        again = w.p.reset_breaker("agent", "bot", by="ops")
        w.p.reset_breaker("action", "shop.flaky", by="ops")
        ran = w.p.submit(w.plan())
        after_success = w.guards.status()["breakers"]["agent:bot"]["view"]
        w.p.submit(w.plan("shop.flaky"))  # 1 failure in 2 calls since the reset: too few
        after_one = w.guards.status()["breakers"]["agent:bot"]["view"]
        w.p.submit(w.plan("shop.flaky"))  # 2 failures in 3 calls: open again

        assert held.status is PlanStatus.AWAITING_APPROVAL
        assert (closed, again) == (True, False)
        assert ran.status is PlanStatus.SUCCEEDED
        assert w.tools["shop.buy"].calls != []
        assert after_success == "closed"
        assert after_one == "closed"
        assert w.guards.status()["breakers"]["agent:bot"]["view"] == "open"
        manual = [e for e in w.events("breaker.closed") if e["data"].get("manual")]
        assert [e["data"]["breaker"] for e in manual] == ["agent:bot", "action:shop.flaky"]
        assert manual[0]["data"] == {
            "breaker": "agent:bot",
            "by": "ops",
            "reason": "supplier fixed",
            "was": "open",
            "manual": True,
        }
        assert manual[0]["actor"] == {"type": "human", "name": "ops"}
        assert manual[0]["user_id"] == "ops"
        assert w.p.verify().ok

    def test_a_reset_counts_from_its_minute_on(self, url):
        """Minutes later, what the reset's minute held before it still does not count; once
        the window has passed it, the window is the usual one."""
        w = World(url, policy="default", breaker=FAST)
        trip(w)
        w.p.reset_breaker("agent", "bot", by="ops")
        w.p.reset_breaker("action", "shop.flaky", by="ops")
        w.clock.advance(timedelta(minutes=2))
        w.p.submit(w.plan("shop.flaky"))
        w.p.submit(w.plan())
        two_minutes_on = w.guards.status()["breakers"]["agent:bot"]["view"]
        w.clock.advance(timedelta(minutes=10))
        for _ in range(2):
            w.p.submit(w.plan("shop.flaky"))
        w.p.submit(w.plan())

        assert two_minutes_on == "closed"  # 1 failure in 2 calls
        assert w.guards.status()["breakers"]["agent:bot"]["view"] == "open"  # 2 in 3, new window

    def test_force_open_holds_until_reset(self, url):
        """A forced breaker routes agentic plans to approval and holds a confirmed plan, and
        does not turn half-open by itself; a reset lets both run."""
        w = World(url, policy="default", breaker=FAST)
        waiting = w.p.submit(w.plan("shop.mail", external=True))
        assert waiting.status is PlanStatus.AWAITING_CONFIRMATION

        key = w.p.open_breaker("agent", "bot", by="ops", reason="supplier incident")
        w.clock.advance(timedelta(minutes=30))  # far past open_seconds (not the expiry)
        held = w.p.submit(w.plan())
        with pytest.raises(ConflictError, match="circuit breaker agent:bot is open"):
            w.p.confirm(waiting.plan_id, "alice")
        status = w.guards.status()["breakers"]["agent:bot"]

        assert key == "agent:bot"
        assert held.status is PlanStatus.AWAITING_APPROVAL
        assert "circuit breaker agent:bot is open: agentic execution is off" in reasons(held)
        assert w.tools["shop.buy"].calls == [] and w.tools["shop.mail"].calls == []
        assert status["view"] == "open"
        assert status["forced"]["by"] == "ops"
        assert status["forced"]["reason"] == "supplier incident"
        opened = w.events("breaker.opened")
        assert [(e["data"]["breaker"], e["data"]["manual"], e["data"]["by"]) for e in opened] == [
            ("agent:bot", True, "ops")
        ]
        assert w.p.reset_breaker("agent", "bot", by="ops")
        assert w.guards.status()["breakers"]["agent:bot"]["forced"] is None
        assert w.p.confirm(waiting.plan_id, "alice").status is PlanStatus.SUCCEEDED
        assert w.p.submit(w.plan()).status is PlanStatus.SUCCEEDED
        assert w.p.verify().ok

    def test_forcing_a_half_open_breaker_stops_its_trials(self, url):
        """A tripped breaker past open_seconds would let a trial through; forced, it does not."""
        w = World(url, policy="default", breaker=FAST)
        trip(w)
        w.clock.advance(timedelta(seconds=61))
        assert w.guards.status()["breakers"]["agent:bot"]["view"] == "half_open"

        w.p.open_breaker("agent", "bot", by="ops")
        rec = w.p.submit(w.plan())

        assert rec.status is PlanStatus.AWAITING_APPROVAL
        assert w.guards.status()["breakers"]["agent:bot"]["view"] == "open"

    def test_bad_input_names_the_field_and_writes_nothing(self, url):
        """A breaker is an agent's or an action's, with a name."""
        w = World(url)
        cases = [
            (lambda: w.p.open_breaker("global", "x", by="ops"), "scope"),
            (lambda: w.p.open_breaker("agent", "", by="ops"), "key"),
            (lambda: w.p.reset_breaker("team", "x", by="ops"), "scope"),
            (lambda: w.guards.reset_breaker("action", None, by="ops"), "key"),
        ]
        for call, field in cases:
            with pytest.raises(InvalidRequestError) as e:
                call()
            assert e.value.field == field

        assert w.p.reset_breaker("agent", "nobody", by="ops") is False  # not open: no event
        assert w.types() == []
        assert w.store.list_state("breaker") == {}


ROLES = {
    "bot": ("agent",),
    "alice": ("user",),
    "aud": ("auditor",),
    "sue": ("approver",),
    "root": ("admin",),
}


@pytest.fixture
def api(tmp_path):
    w = World(f"sqlite:///{tmp_path / 'http.db'}", policy="default", breaker=FAST)
    tokens = TokenService(w.store, w.clock)
    secrets = {name: tokens.create(name=name, roles=roles).token for name, roles in ROLES.items()}
    app = create_app(w.p, settings=HttpSettings(auth_failures_per_minute=1000))
    return w, app, secrets


async def call(app, secrets, who: str, path: str, body: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as client:
        return await client.post(
            path, json=body, headers={"Authorization": f"Bearer {secrets[who]}"}
        )


@pytest.mark.anyio
class TestHttp:
    async def test_an_admin_forces_open_and_resets(self, api):
        """POST /v1/guards/breakers/open and /reset (admin): the state and the log change."""
        w, app, secrets = api
        body = {"scope": "action", "key": "shop.buy", "reason": "bad supplier"}

        opened = await call(app, secrets, "root", "/v1/guards/breakers/open", body)
        held = w.p.submit(w.plan())
        reset = await call(app, secrets, "root", "/v1/guards/breakers/reset", body)
        again = await call(app, secrets, "root", "/v1/guards/breakers/reset", body)

        assert opened.status_code == 200
        assert opened.json() == {"breaker": "action:shop.buy", "state": "open", "already": None}
        assert held.status is PlanStatus.AWAITING_APPROVAL
        assert reset.json() == {"breaker": "action:shop.buy", "reset": True}
        assert again.json() == {"breaker": "action:shop.buy", "reset": False}
        assert [e["data"]["by"] for e in w.events("breaker.opened")] == ["root"]
        assert [e["data"]["by"] for e in w.events("breaker.closed")] == ["root"]
        assert w.p.submit(w.plan()).status is PlanStatus.SUCCEEDED

    async def test_non_admins_get_403_and_nothing_changes(self, api):
        """Agent, user, auditor and approver tokens are refused both toggles; no event."""
        w, app, secrets = api
        trip(w)
        before = (w.store.list_state("breaker"), len(w.types()))
        body = {"scope": "agent", "key": "bot"}

        codes = [
            (await call(app, secrets, who, f"/v1/guards/breakers/{verb}", body)).status_code
            for who in ("bot", "alice", "aud", "sue")
            for verb in ("open", "reset")
        ]
        refused = await call(app, secrets, "sue", "/v1/guards/breakers/reset", body)

        assert codes == [403] * 8
        assert refused.json()["field"] == "role"
        assert (w.store.list_state("breaker"), len(w.types())) == before

    async def test_bad_bodies_are_4xx_naming_the_field(self, api):
        """No scope, a global scope, no name, a bad name, an unknown member: 422 by field."""
        w, app, secrets = api
        cases = [
            ({"key": "bot"}, "scope"),
            ({"scope": "global", "key": "bot"}, "scope"),
            ({"scope": "agent"}, "key"),
            ({"scope": "agent", "key": "bad name!"}, "key"),
            ({"scope": "agent", "key": "bot", "extra": 1}, "extra"),
            ({"scope": "agent", "key": "bot", "reason": "x" * 2001}, "reason"),
        ]
        for body, field in cases:
            r = await call(app, secrets, "root", "/v1/guards/breakers/open", body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["code"] == "invalid_request"
            assert field in (r.json()["field"] or ""), r.json()
        assert w.store.list_state("breaker") == {}


class TestCli:
    def test_local_open_and_reset(self, run, tmp_path):
        """breaker open / reset on --home; reset of a closed breaker exits 1; --as needed."""
        h = ("--home", str(tmp_path / "i"))
        assert run("init", *h).code == 0

        # No agent has acted in this fresh instance: a pre-emptive hold needs --allow-unknown.
        opening = ("breaker", "open", "--agent", "bot", "--allow-unknown", "--as", "ops", "-m", "x")
        opened = run(*opening, "--json", *h)
        shown = run("guards", "--json", *h).json()["breakers"]["agent:bot"]
        table = run("guards", *h).out
        reset = run("breaker", "reset", "--agent", "bot", "--as", "ops", *h)
        twice = run("breaker", "reset", "--agent", "bot", "--as", "ops", *h)

        assert opened.code == 0, str(opened)
        assert opened.json() == {"breaker": "agent:bot", "state": "open", "already": None}
        assert shown["view"] == "open" and shown["forced"]["by"] == "ops"
        assert "held until reset" in table
        assert reset.code == 0 and "Closed." in reset.out
        assert twice.code == 1
        assert run("breaker", "open", "--agent", "bot", *h).code == 2  # no --as
        assert run("breaker", "open", "--as", "ops", *h).code == 2  # no breaker named
        assert run("breaker", "open", "--agent", "a", "--action", "b", "--as", "o", *h).code == 2

    @pytest.mark.server
    def test_remote_open_and_reset(self, run, served):
        """Over --server with an admin token the server's breaker changes; a user's token is
        refused (permission_denied) and changes nothing."""
        w, url, secrets = served

        def as_(who: str) -> tuple[str, ...]:
            return ("--server", url, "--token", secrets[who])

        denied = run("breaker", "open", "--action", "shop.buy", "--json", *as_("alice"))
        r = run("breaker", "open", "--action", "shop.buy", "-m", "remote", "--json", *as_("root"))
        stored = w.store.list_state("breaker")["action:shop.buy"]
        reset = run("breaker", "reset", "--action", "shop.buy", "--json", *as_("root"))

        assert denied.code == 1
        assert denied.json()["error"]["code"] == "permission_denied"
        assert r.code == 0, str(r)
        assert stored["forced"]["by"] == "root" and stored["forced"]["reason"] == "remote"
        assert reset.json() == {"breaker": "action:shop.buy", "reset": True}
        assert w.store.list_state("breaker")["action:shop.buy"]["state"] == "closed"
