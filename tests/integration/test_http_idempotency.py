"""Idempotent submission over HTTP: the Idempotency-Key header and client plan ids."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from proctor import Proctor
from proctor.app.tokens import TokenService
from proctor.core.catalog import Catalog
from proctor.http import create_app
from proctor.testing import FrozenClock, RecordingTool, make_plan

pytestmark = pytest.mark.anyio

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}


class ExecutePolicy:
    """A policy engine (a fake): every step executes."""

    version = "sha256:execute-1"

    def evaluate(self, input: Any) -> Any:
        steps = {s["id"]: {"outcome": "execute", "reasons": ["ok"]} for s in input["steps"]}
        return {"steps": steps, "plan": {"deny": [], "adjustments": []}}


class World:
    def __init__(self) -> None:
        clock = FrozenClock()
        self.proctor = Proctor.in_memory(catalog=Catalog(), policy=ExecutePolicy(), clock=clock)
        self.tool = RecordingTool()
        self.proctor.action(
            "shop.order",
            category="general",
            baselines=LOW,
            params={"type": "object", "properties": {"n": {"type": "integer"}}},
        )(self.tool)
        tokens = TokenService(self.proctor.gateway.store, clock)
        self.tokens = {n: tokens.create(name=n, roles=["agent"]).token for n in ("bot", "bot2")}
        self.app = create_app(self.proctor)


@pytest.fixture
async def world() -> AsyncIterator[tuple[World, httpx.AsyncClient]]:
    w = World()
    transport = httpx.ASGITransport(app=w.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as client:
        yield w, client


async def _post(
    client: httpx.AsyncClient, w: World, plan: dict[str, Any], key: str | None, who: str = "bot"
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {w.tokens[who]}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post("/v1/plans", json=plan, headers=headers)


def _plan(n: int = 1, agent: str = "bot") -> dict[str, Any]:
    return make_plan([("shop.order", {"n": n})], agent_id=agent)


async def test_same_key_same_body_returns_the_original(world):
    """The replay is 200 with the original body; the action ran once."""
    w, client = world

    first = await _post(client, w, _plan(), "order-1")
    replay = await _post(client, w, _plan(), "order-1")

    assert first.status_code == 201
    assert replay.status_code == 200
    assert replay.json() == first.json()
    assert first.headers["location"] == f"/v1/plans/{first.json()['plan_id']}"
    assert len(w.tool.calls) == 1


async def test_the_plan_id_derives_from_principal_and_key(world):
    """Without a plan_id the plan id is idem- and 24 hex digits of sha256(name:key)."""
    w, client = world

    resp = await _post(client, w, _plan(), "order-2")

    digest = hashlib.sha256(b"bot:order-2").hexdigest()[:24]
    assert resp.json()["plan_id"] == f"idem-{digest}"


async def test_same_key_different_body_conflicts(world):
    """A changed manifest under a used key is 409 plan_id_reused; nothing more runs."""
    w, client = world

    await _post(client, w, _plan(1), "order-3")
    changed = await _post(client, w, _plan(2), "order-3")

    assert changed.status_code == 409
    assert changed.json()["code"] == "plan_id_reused"
    assert changed.json()["field"] == "plan_id"
    assert len(w.tool.calls) == 1


async def test_keys_are_per_principal(world):
    """Two agents using the same key get two plans."""
    w, client = world

    a = await _post(client, w, _plan(agent="bot"), "shared", who="bot")
    b = await _post(client, w, _plan(agent="bot2"), "shared", who="bot2")

    assert a.status_code == b.status_code == 201
    assert a.json()["plan_id"] != b.json()["plan_id"]


async def test_a_client_plan_id_is_idempotent_too(world):
    """Without a key, resubmitting a plan_id with the same digest is 200; another is 409."""
    w, client = world
    plan = make_plan([("shop.order", {"n": 1})], agent_id="bot", plan_id="client-1")

    first = await _post(client, w, plan, None)
    replay = await _post(client, w, plan, None)
    changed = await _post(
        client, w, make_plan([("shop.order", {"n": 9})], agent_id="bot", plan_id="client-1"), None
    )

    assert (first.status_code, replay.status_code, changed.status_code) == (201, 200, 409)
    assert replay.json() == first.json()


async def test_a_key_does_not_override_a_client_plan_id(world):
    """With both, the manifest's plan_id is the plan's id."""
    w, client = world
    plan = make_plan([("shop.order", {"n": 1})], agent_id="bot", plan_id="client-2")

    resp = await _post(client, w, plan, "some-key")

    assert resp.json()["plan_id"] == "client-2"


async def test_concurrent_replays_make_one_plan(world):
    """Eight concurrent submissions with one key: one 201, seven 200, one execution."""
    w, client = world

    responses = await asyncio.gather(*(_post(client, w, _plan(), "burst") for _ in range(8)))

    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 7 + [201]
    assert len({r.json()["plan_id"] for r in responses}) == 1
    assert len(w.tool.calls) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "with space", "tab\tkey"])
async def test_a_malformed_key_is_refused(world, key):
    """An empty, over-long or non-printable key is 422 on the header, and nothing runs."""
    w, client = world

    resp = await _post(client, w, _plan(), key)

    assert resp.status_code == 422
    assert resp.json()["field"] == "Idempotency-Key"
    assert w.tool.calls == []
