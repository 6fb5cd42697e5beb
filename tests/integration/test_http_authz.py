"""The HTTP API's authorization matrix: every route for every kind of caller.

Each cell of ``MATRIX`` is the status a caller gets on a route, on a fresh plan made for
that cell. Callers hold real API tokens (``TokenService``); the plans come from the default
policy and starter catalog:

* ``bot`` (agent) submits every plan, on behalf of ``alice`` (user);
* ``ann`` (approver, group finance) approves purchase orders; ``sam`` (approver, sre) does
  not; ``bot2`` and ``bob`` are another agent and another user;
* ``aud`` is an auditor, ``root`` an admin; ``none`` sends no token, ``wrong`` a bad one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from proctor import Proctor
from proctor.app.tokens import TokenService
from proctor.core.guards import BreakerSettings, GuardSettings
from proctor.http import HttpSettings, create_app
from proctor.testing import FrozenClock, make_plan

pytestmark = pytest.mark.anyio

CALLERS = ("bot", "bot2", "alice", "bob", "ann", "sam", "aud", "root", "none", "wrong")
ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "bot": (("agent",), ()),
    "bot2": (("agent",), ()),
    "alice": (("user",), ()),
    "bob": (("user",), ()),
    "ann": (("approver",), ("finance",)),
    "sam": (("approver",), ("sre",)),
    "aud": (("auditor",), ()),
    "root": (("admin",), ()),
}

SEARCH = ("travel.search", {"destination": "Lisbon", "date": "2027-03-12"})
BOOKING = ("restaurant.book", {"restaurant": "Tasca", "party": 2, "time": "2027-03-12T20:00"})
SUBSCRIPTION = ("billing.change_subscription", {"customer": "cust-42", "plan": "pro"})
BIG_PO = (
    "procurement.create_po",
    {"supplier": "acme", "item": "servers", "quantity": 10, "amount": 250_000},
)

#                                          bot  bot2 alice bob  ann  sam  aud  root none wrong
MATRIX: dict[str, tuple[int, ...]] = {
    "POST /v1/plans":                       (201, 201, 403, 403, 403, 403, 403, 403, 401, 401),
    # A plan the caller may not read is missing (404, the very answer of a missing plan:
    # ``test_matrix`` compares the bodies); 403 is for a role the route needs and the
    # caller lacks, asked before the plan, or for an action on a plan the caller may read.
    "GET /v1/plans/{waiting}":              (200, 404, 200, 404, 200, 404, 200, 200, 401, 401),
    "GET /v1/plans/{decided}":              (200, 404, 200, 404, 200, 404, 200, 200, 401, 401),
    "GET /v1/plans/{done}":                 (200, 404, 200, 404, 404, 404, 200, 200, 401, 401),
    "GET /v1/plans/{waiting}?wait=0.1":     (200, 404, 200, 404, 200, 404, 200, 200, 401, 401),
    "GET /v1/plans":                        (200, 200, 200, 200, 200, 200, 200, 200, 401, 401),
    "GET /v1/plans/{done}/events":          (200, 404, 200, 404, 404, 404, 200, 200, 401, 401),
    "POST /v1/plans/{confirmable}/confirm": (403, 403, 200, 404, 403, 403, 403, 403, 401, 401),
    "POST /v1/plans/{waiting}/approve":     (403, 403, 403, 403, 200, 404, 403, 403, 401, 401),
    # alice, on whose behalf the waiting plan acts, may decline it while approvers decide.
    "POST /v1/plans/{waiting}/reject":      (403, 403, 200, 404, 200, 404, 403, 403, 401, 401),
    "POST /v1/plans/{confirmable}/reject":  (403, 403, 200, 404, 404, 404, 403, 403, 401, 401),
    "POST /v1/plans/{undoable}/undo":       (403, 403, 200, 404, 403, 403, 403, 200, 401, 401),
    "GET /v1/audit/events":                 (403, 403, 403, 403, 403, 403, 200, 200, 401, 401),
    "GET /v1/audit/checkpoint":             (403, 403, 403, 403, 403, 403, 200, 200, 401, 401),
    "GET /v1/audit/proofs/inclusion?index=0": (403, 403, 403, 403, 403, 403, 200, 200, 401, 401),
    "GET /v1/audit/proofs/consistency?from=1&to=2":
                                            (403, 403, 403, 403, 403, 403, 200, 200, 401, 401),
    "GET /v1/audit/keys":                   (403, 403, 403, 403, 403, 403, 200, 200, 401, 401),
    "GET /v1/webhooks/dead-letters":        (403, 403, 403, 403, 403, 403, 403, 200, 401, 401),
    "GET /v1/guards":                       (403, 403, 403, 403, 403, 403, 200, 200, 401, 401),
    "POST /v1/guards/kill":                 (403, 403, 403, 403, 403, 403, 403, 200, 401, 401),
    "POST /v1/guards/unkill":               (403, 403, 403, 403, 403, 403, 403, 200, 401, 401),
    "POST /v1/guards/breakers/open":        (403, 403, 403, 403, 403, 403, 403, 200, 401, 401),
    "POST /v1/guards/breakers/reset":       (403, 403, 403, 403, 403, 403, 403, 200, 401, 401),
    "PUT /v1/guards/whitelists/bot9":       (403, 403, 403, 403, 403, 403, 403, 200, 401, 401),
    "POST /v1/mcp/tools":                   (200, 403, 403, 403, 403, 403, 403, 403, 401, 401),
    "GET /v1/autonomy":                     (403, 403, 200, 200, 403, 403, 403, 200, 401, 401),
    "PUT /v1/autonomy":                     (403, 403, 200, 200, 403, 403, 403, 200, 401, 401),
    "GET /v1/reviews":                      (403, 403, 403, 403, 403, 403, 200, 200, 401, 401),
    "GET /metrics":                         (403, 403, 403, 403, 403, 403, 200, 200, 401, 401),
    "GET /v1/kpis?by=agent":                (403, 403, 403, 403, 403, 403, 200, 200, 401, 401),
    "POST /v1/plans/{sampled}/review":      (403, 403, 403, 403, 403, 403, 200, 200, 401, 401),
    "POST /v1/plans/{done}/complaints":     (403, 403, 201, 404, 403, 403, 403, 201, 401, 401),
    "GET /healthz":                         (200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    "GET /readyz":                          (200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    "GET /openapi.json":                    (200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    "GET /v1/me":                           (200, 200, 200, 200, 200, 200, 200, 200, 401, 401),
}  # fmt: skip

CASES = [
    pytest.param(route, caller, MATRIX[route][i], id=f"{route} as {caller}")
    for route in MATRIX
    for i, caller in enumerate(CALLERS)
]


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    """One instance with a token per caller (cells make their own plans)."""
    clock = FrozenClock()
    # The cells undo many of bot's plans in one frozen instant: with the default breaker that
    # rollback rate would (rightly) send bot's later plans to approval, whatever the order
    # the cells run in. Authorization is what this module tests.
    quiet = GuardSettings(breaker=BreakerSettings(min_calls=1_000_000))
    proctor = Proctor.in_memory(clock=clock, guards=quiet)
    tokens = TokenService(proctor.gateway.store, clock)
    secrets = {
        name: tokens.create(name=name, roles=roles, groups=groups).token
        for name, (roles, groups) in ROLES.items()
    }
    secrets["wrong"] = "prt_" + "x" * 43
    # One plan first, so that the log has a signed checkpoint whatever order the cells run in
    # (GET /v1/audit/checkpoint of an empty log is a 404, not an authorization answer).
    _plan(proctor, SEARCH)
    app = create_app(proctor, settings=HttpSettings(auth_failures_per_minute=1000))
    return {"proctor": proctor, "tokens": secrets, "app": app, "clock": clock}


def _plan(proctor: Proctor, *step: tuple[str, dict[str, Any]]) -> str:
    return proctor.submit(make_plan([*step], agent_id="bot", on_behalf_of="alice")).plan_id


SETUP: dict[str, Callable[[Proctor], str]] = {
    "waiting": lambda p: _plan(p, BIG_PO),
    "decided": lambda p: p.approve(_plan(p, BIG_PO), "ann", roles=["finance"]).plan_id,
    "done": lambda p: _plan(p, SEARCH),
    "confirmable": lambda p: _plan(p, SUBSCRIPTION),
    "undoable": lambda p: _plan(p, BOOKING),
    "sampled": lambda p: _sampled(p),
}


def _sampled(proctor: Proctor) -> str:
    """A plan picked for post-hoc review (the sampling itself is deterministic by digest)."""
    import dataclasses

    plan_id = _plan(proctor, SEARCH)
    with proctor.gateway.store.transaction() as tx:
        tx.save_plan(dataclasses.replace(tx.get_plan(plan_id), review=True))
    return plan_id


BODIES: dict[str, Any] = {
    "/v1/guards/kill": {
        "scope": "action",
        "key": "nothing.here",
        "reason": "authz test",
        "allow_unknown": True,
    },
    "/v1/guards/unkill": {"scope": "action", "key": "nothing.here"},
    "/v1/guards/breakers/open": {
        "scope": "action",
        "key": "nothing.here",
        "reason": "authz",
        "allow_unknown": True,
    },
    "/v1/guards/breakers/reset": {"scope": "action", "key": "nothing.here"},
    "/v1/guards/whitelists/bot9": {"actions": None},
    "/v1/autonomy": {"action": "travel.search", "level": "auto"},
    "/v1/mcp/tools": {"agent_id": "bot", "tools": []},  # only bot may speak for bot
}


def _request(route: str, caller: str, proctor: Proctor) -> tuple[str, str, Any, str | None]:
    method, _, path = route.partition(" ")
    made = None
    for key, make in SETUP.items():
        if "{" + key + "}" in path:
            made = make(proctor)
            path = path.replace("{" + key + "}", made)
    body: Any = None
    if method == "POST" and path == "/v1/plans":
        agent = caller if caller in ROLES else "bot"
        body = make_plan([SEARCH], agent_id=agent, on_behalf_of="alice")
    elif path in BODIES:
        body = BODIES[path]
    elif path.endswith("/review"):
        body = {"verdict": "fine", "note": f"by {caller}"}
    elif path.endswith("/complaints"):
        body = {"reason": f"by {caller}"}
    elif method == "POST":
        body = {"comment": f"by {caller}"}
    return method, path, body, made


@pytest.mark.parametrize(("route", "caller", "expected"), CASES)
async def test_matrix(world, route, caller, expected, request):
    """The caller gets the status of its cell, and errors use the JSON error shape.

    A 404 is byte for byte the answer for a plan that does not exist (the id aside).
    """
    method, path, body, plan_id = _request(route, caller, world["proctor"])
    headers = {}
    if caller != "none":
        headers["Authorization"] = f"Bearer {world['tokens'][caller]}"
    transport = httpx.ASGITransport(app=world["app"])

    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as client:
        resp = await client.request(method, path, json=body, headers=headers)
        ghost = None
        if expected == 404:
            assert plan_id is not None
            ghost_id = "ghost-" + "0" * (len(plan_id) - 6)
            ghost = await client.request(
                method, path.replace(plan_id, ghost_id), json=body, headers=headers
            )

    assert resp.status_code == expected, (route, caller, resp.text)
    if expected >= 400:
        error = resp.json()
        assert set(error) >= {"code", "message", "field"}
        codes = {401: "unauthenticated", 403: "permission_denied", 404: "not_found"}
        assert error["code"] == codes[expected]
    if ghost is not None:
        assert plan_id is not None
        assert ghost.status_code == 404
        assert ghost.content.replace(ghost_id.encode(), plan_id.encode()) == resp.content
        assert dict(ghost.headers) == dict(resp.headers) | {
            "content-length": ghost.headers["content-length"]
        }


async def test_list_is_filtered_to_what_the_caller_may_read(world):
    """GET /v1/plans returns only plans the caller may read, for every caller."""
    proctor = world["proctor"]
    mine = SETUP["done"](proctor)
    others = proctor.submit(make_plan([SEARCH], agent_id="bot2", on_behalf_of="bob")).plan_id
    waiting = SETUP["waiting"](proctor)
    transport = httpx.ASGITransport(app=world["app"])
    seen: dict[str, set[str]] = {}

    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as client:
        for caller in ROLES:
            headers = {"Authorization": f"Bearer {world['tokens'][caller]}"}
            resp = await client.get("/v1/plans?limit=200", headers=headers)
            assert resp.status_code == 200
            seen[caller] = {p["plan_id"] for p in resp.json()["plans"]}

    assert mine in seen["bot"] and others not in seen["bot"]
    assert others in seen["bot2"] and mine not in seen["bot2"]
    assert mine in seen["alice"] and waiting in seen["alice"] and others not in seen["alice"]
    assert others in seen["bob"] and mine not in seen["bob"]
    assert waiting in seen["ann"] and mine not in seen["ann"]
    assert not {mine, others, waiting} & seen["sam"]
    for caller in ("aud", "root"):
        assert {mine, others, waiting} <= seen[caller]
    for caller in ROLES:
        for plan_id in seen[caller]:
            proctor.get(plan_id)  # every listed plan exists


async def test_an_agent_submits_only_as_itself(world):
    """An agent whose manifest names another agent gets 403 and nothing is stored."""
    proctor = world["proctor"]
    before = len(proctor.plans(limit=1000))
    transport = httpx.ASGITransport(app=world["app"])
    plan = make_plan([SEARCH], agent_id="bot2", on_behalf_of="alice")

    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as client:
        resp = await client.post(
            "/v1/plans", json=plan, headers={"Authorization": f"Bearer {world['tokens']['bot']}"}
        )

    assert resp.status_code == 403
    assert resp.json()["field"] == "actor.agent_id"
    assert len(proctor.plans(limit=1000)) == before


async def test_me_names_the_caller_as_its_token_says(world):
    """``GET /v1/me`` answers the token's own name, roles and groups, nothing else."""
    transport = httpx.ASGITransport(app=world["app"])
    headers = {"Authorization": f"Bearer {world['tokens']['ann']}"}

    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as client:
        ann = await client.get("/v1/me", headers=headers)

    assert ann.status_code == 200
    assert ann.json() == {"name": "ann", "roles": ["approver"], "groups": ["finance"]}


async def test_a_revoked_token_stops_working(world):
    """After revocation (and the cache's two seconds) a token gets 401."""
    proctor = world["proctor"]
    tokens = TokenService(proctor.gateway.store, world["clock"])
    new = tokens.create(name="temp", roles=["auditor"])
    app = create_app(proctor, settings=HttpSettings(token_cache_seconds=0))
    headers = {"Authorization": f"Bearer {new.token}"}
    transport = httpx.ASGITransport(app=app)

    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as client:
        ok = await client.get("/v1/audit/keys", headers=headers)
        tokens.revoke(new.record.token_id)
        after = await client.get("/v1/audit/keys", headers=headers)

    assert ok.status_code == 200
    assert after.status_code == 401
    assert after.json()["code"] == "unauthenticated"
