"""Guards over the HTTP API (in-process ASGI, real tokens, the default policy)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from proctor.app.tokens import TokenService
from proctor.core.guards import AutonomySettings
from proctor.http import HttpSettings, create_app

from .conftest import World

pytestmark = pytest.mark.anyio

ROLES = {
    "bot": ("agent",),
    "alice": ("user",),
    "bob": ("user",),
    "aud": ("auditor",),
    "root": ("admin",),
    "sue": ("approver",),
}


@pytest.fixture
def api(tmp_path):
    w = World(
        f"sqlite:///{tmp_path / 'http.db'}",
        policy="default",
        autonomy=AutonomySettings(min_accepted=2, min_rate=1.0),
    )
    tokens = TokenService(w.store, w.clock)
    secrets = {
        name: tokens.create(
            name=name, roles=roles, groups=("supervisor",) if name == "sue" else ()
        ).token
        for name, roles in ROLES.items()
    }
    app = create_app(w.p, settings=HttpSettings(auth_failures_per_minute=1000))
    return w, app, secrets


async def call(app, secrets, who: str, method: str, path: str, body: Any = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as client:
        return await client.request(
            method, path, json=body, headers={"Authorization": f"Bearer {secrets[who]}"}
        )


async def test_admin_kill_switch_stops_agent_plans(api):
    """POST /v1/guards/kill (admin): the agent's next plan is denied, nothing runs; unkill."""
    w, app, secrets = api
    kill = {"scope": "action", "key": "shop.buy", "reason": "bad supplier"}
    assert (await call(app, secrets, "bot", "POST", "/v1/guards/kill", kill)).status_code == 403

    r = await call(app, secrets, "root", "POST", "/v1/guards/kill", kill)
    plan = await call(app, secrets, "bot", "POST", "/v1/plans", w.plan())

    assert r.status_code == 200
    assert r.json() == {"switch": "action:shop.buy", "engaged": True, "already": None}
    assert plan.status_code == 201
    assert plan.json()["status"] == "denied"
    assert w.tools["shop.buy"].calls == []
    status = (await call(app, secrets, "aud", "GET", "/v1/guards")).json()
    assert status["kill"]["action:shop.buy"]["reason"] == "bad supplier"
    r = await call(app, secrets, "root", "POST", "/v1/guards/unkill", kill | {"reason": ""})
    assert r.json() == {"released": True}
    plan = await call(app, secrets, "bot", "POST", "/v1/plans", w.plan())
    assert plan.json()["status"] == "succeeded"


async def test_a_kill_switch_on_an_unknown_action_is_a_422_and_engages_nothing(api):
    """POST /v1/guards/kill for an action not in the catalog: 422 on key with close matches,
    no switch and no event; an MCP tool's action, or allow_unknown, is engaged; unkill
    releases any name."""
    w, app, secrets = api
    typo = {"scope": "action", "key": "shop.bye", "reason": "typo"}

    r = await call(app, secrets, "root", "POST", "/v1/guards/kill", typo)

    assert r.status_code == 422, r.text
    assert (r.json()["code"], r.json()["field"]) == ("invalid_request", "key")
    assert "close matches: shop.buy" in r.json()["message"]
    assert w.store.list_state("kill") == {}
    assert "kill.engaged" not in w.types()
    mcp = {"scope": "action", "key": "mcp.fs.write_file-0123abcd"}
    assert (await call(app, secrets, "root", "POST", "/v1/guards/kill", mcp)).status_code == 200
    r = await call(app, secrets, "root", "POST", "/v1/guards/kill", typo | {"allow_unknown": True})
    assert r.json() == {"switch": "action:shop.bye", "engaged": True, "already": None}
    r = await call(app, secrets, "root", "POST", "/v1/guards/unkill", typo | {"reason": ""})
    assert r.json() == {"released": True}
    assert set(w.store.list_state("kill")) == {"action:mcp.fs.write_file-0123abcd"}


async def test_bad_guard_input_is_a_4xx_naming_the_field(api):
    """An agent switch without a name, an unknown action, a bad level: 422 naming the field."""
    _w, app, secrets = api
    cases = [
        ("root", "POST", "/v1/guards/kill", {"scope": "agent"}, "key"),
        ("root", "POST", "/v1/guards/kill", {"scope": "global", "key": "bot"}, "key"),
        ("root", "POST", "/v1/guards/unkill", {"scope": "action"}, "key"),
        ("root", "PUT", "/v1/guards/whitelists/bot", {"actions": ["x.y"]}, "actions"),
        ("alice", "PUT", "/v1/autonomy", {"action": "shop.buy", "level": "x"}, "level"),
        ("alice", "PUT", "/v1/autonomy", {"action": "no.such", "level": "auto"}, "action"),
        (
            "alice",
            "PUT",
            "/v1/autonomy",
            {"action": "shop.buy", "level": "auto", "below": 10**30},
            "below",
        ),
        (
            "alice",
            "PUT",
            "/v1/autonomy",
            {"action": "shop.buy", "level": "auto", "below": 2**53},
            "below",
        ),
        ("root", "POST", "/v1/guards/kill", {"scope": "everything"}, "scope"),
        # An amount is a JSON integer: lax validation read these as 1, 5000 and 5000.
        *(
            (
                "alice",
                "PUT",
                "/v1/autonomy",
                {"action": "shop.buy", "level": "auto", "below": v},
                "below",
            )
            for v in (True, 5000.0, "5000", 2.5)
        ),
    ]
    for who, method, path, body, field in cases:
        r = await call(app, secrets, who, method, path, body)
        assert r.status_code == 422, (path, body, r.text)
        assert r.json()["code"] == "invalid_request"
        assert field in r.json()["field"], r.json()


async def test_an_integer_too_long_to_read_is_a_422_naming_the_field(api):
    """A 5000-digit integer (past Python's conversion limit) in a route's body: 422 on it,
    not FastAPI's 400 "error parsing the body"; a body that is not UTF-8 stays a 400."""
    _w, app, secrets = api
    transport = httpx.ASGITransport(app=app)
    h = {"Authorization": f"Bearer {secrets['alice']}", "Content-Type": "application/json"}
    too_long = b'{"action": "shop.buy", "level": "auto", "below": ' + b"9" * 5000 + b"}"
    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as client:
        r = await client.put("/v1/autonomy", content=too_long, headers=h)
        latin1 = await client.put("/v1/autonomy", content=b'{"action": "\xe9"}', headers=h)

    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_request"
    assert r.json()["field"] == "below"
    assert "5000 digits" in r.json()["message"]
    assert latin1.status_code == 400, latin1.text


async def test_autonomy_promotion_over_http(api):
    """alice sets confirm for herself, confirms twice, sees the suggestion, opts in: auto."""
    w, app, secrets = api
    body = {"action": "shop.buy", "level": "confirm"}
    assert (await call(app, secrets, "alice", "PUT", "/v1/autonomy", body)).status_code == 200
    other = {"user": "bob", "action": "shop.buy", "level": "auto"}
    assert (await call(app, secrets, "alice", "PUT", "/v1/autonomy", other)).status_code == 403
    for _ in range(2):
        plan = (await call(app, secrets, "bot", "POST", "/v1/plans", w.plan())).json()
        assert plan["status"] == "awaiting_confirmation"
        path = f"/v1/plans/{plan['plan_id']}/confirm"
        assert (await call(app, secrets, "alice", "POST", path, {})).status_code == 200

    mine = (await call(app, secrets, "alice", "GET", "/v1/autonomy")).json()
    bobs = (await call(app, secrets, "bob", "GET", "/v1/autonomy")).json()

    assert [(s["action"], s["from"], s["to"]) for s in mine["suggestions"]] == [
        ("shop.buy", "confirm", "auto")
    ]
    assert bobs == {"autonomy": {}, "promotions": {}, "suggestions": []}
    r = await call(
        app,
        secrets,
        "alice",
        "POST",
        "/v1/autonomy/promotions",
        {"action": "shop.buy", "accept": True},
    )
    assert r.json() == {"action": "shop.buy", "level": "auto"}
    plan = (await call(app, secrets, "bot", "POST", "/v1/plans", w.plan())).json()
    assert plan["status"] == "succeeded"


async def test_only_the_plans_user_may_complain(api):
    """bob may not complain about alice's plan (404: he may not read it); alice may
    (complaint.filed)."""
    w, app, secrets = api
    plan = (await call(app, secrets, "bot", "POST", "/v1/plans", w.plan())).json()
    path = f"/v1/plans/{plan['plan_id']}/complaints"

    assert (await call(app, secrets, "bob", "POST", path, {"reason": "no"})).status_code == 404
    r = await call(app, secrets, "alice", "POST", path, {"reason": "wrong shop"})

    assert r.status_code == 201
    assert "complaint.filed" in w.types(plan["plan_id"])
