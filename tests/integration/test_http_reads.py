"""Reading over HTTP: plans (pages and cursors), audit events, checkpoint, proofs, keys,
dead letters. What the API returns is checked against the library and verified offline."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest

from proctor import Proctor
from proctor.app.tokens import TokenService
from proctor.audit.merkle import verify_consistency, verify_inclusion
from proctor.audit.note import Checkpoint, open_note, verifiers_from_vkeys
from proctor.cli.render import plan_json
from proctor.core.notifications import Delivery, DeliveryStatus
from proctor.http import create_app
from proctor.testing import FrozenClock, make_plan

pytestmark = pytest.mark.anyio

SEARCH = ("travel.search", {"destination": "Lisbon", "date": "2027-03-12"})


class World:
    def __init__(self) -> None:
        self.clock = FrozenClock()
        self.proctor = Proctor.in_memory(clock=self.clock)
        tokens = TokenService(self.proctor.gateway.store, self.clock)
        self.tokens = {
            "aud": tokens.create(name="aud", roles=["auditor"]).token,
            "root": tokens.create(name="root", roles=["admin"]).token,
            "alice": tokens.create(name="alice", roles=["user"]).token,
            "bot": tokens.create(name="bot", roles=["agent"]).token,
        }

    def submit(self, n: int, *, user: str = "alice", agent: str = "bot") -> list[str]:
        ids = []
        for _ in range(n):
            self.clock.advance(1)
            plan = make_plan([SEARCH], agent_id=agent, on_behalf_of=user)
            ids.append(self.proctor.submit(plan).plan_id)
        return ids


@pytest.fixture
async def world() -> AsyncIterator[tuple[World, httpx.AsyncClient]]:
    w = World()
    transport = httpx.ASGITransport(app=create_app(w.proctor))
    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as client:
        yield w, client


async def _get(client: httpx.AsyncClient, w: World, who: str, url: str) -> httpx.Response:
    return await client.get(url, headers={"Authorization": f"Bearer {w.tokens[who]}"})


async def _all_pages(client, w, who: str, url: str) -> tuple[list[str], int]:
    ids: list[str] = []
    pages = 0
    cursor = None
    while True:
        page_url = url + (f"&cursor={cursor}" if cursor else "")
        resp = await _get(client, w, who, page_url)
        assert resp.status_code == 200, resp.text
        pages += 1
        ids += [p["plan_id"] for p in resp.json()["plans"]]
        cursor = resp.json()["next_cursor"]
        if cursor is None:
            return ids, pages
        assert pages < 100


class TestPlans:
    async def test_a_plan_is_exactly_plan_json(self, world):
        """GET /v1/plans/{id} is the CLI's plan JSON, field for field."""
        w, client = world
        (plan_id,) = w.submit(1)

        resp = await _get(client, w, "bot", f"/v1/plans/{plan_id}")

        assert resp.json() == json.loads(json.dumps(plan_json(w.proctor.get(plan_id))))

    async def test_pages_cover_every_plan_once_newest_first(self, world):
        """An auditor pages through 7 plans 3 at a time: 3 pages, every plan once, in order."""
        w, client = world
        ids = w.submit(7)

        seen, pages = await _all_pages(client, w, "aud", "/v1/plans?limit=3")

        assert seen == list(reversed(ids))
        assert pages == 3

    async def test_filtered_pages_cover_what_the_user_may_read(self, world):
        """A user pages through its own plans mixed with others'; nothing else leaks in."""
        w, client = world
        mine = []
        for _ in range(5):
            mine += w.submit(1, user="alice")
            w.submit(2, user="bob")

        seen, _ = await _all_pages(client, w, "alice", "/v1/plans?limit=2")

        assert seen == list(reversed(mine))

    async def test_status_and_agent_filters(self, world):
        """status and agent narrow the list."""
        w, client = world
        w.submit(2, agent="bot")
        w.submit(1, agent="bot2")

        by_agent = await _get(client, w, "aud", "/v1/plans?agent=bot2")
        by_status = await _get(client, w, "aud", "/v1/plans?status=awaiting_approval")
        other_agent = await _get(client, w, "bot", "/v1/plans?agent=bot2")

        assert [p["agent_id"] for p in by_agent.json()["plans"]] == ["bot2"]
        assert by_status.json() == {"plans": [], "next_cursor": None}
        assert other_agent.json()["plans"] == []


class TestAudit:
    async def test_events_page_through_the_whole_log(self, world):
        """Pages of events join into the log exactly as stored; next_after ends with null."""
        w, client = world
        w.submit(3)
        stored = w.proctor.events()
        events: list[dict] = []
        after = -1

        while after is not None:
            resp = await _get(client, w, "aud", f"/v1/audit/events?after={after}&limit=4")
            events += resp.json()["events"]
            after = resp.json()["next_after"]

        assert [e["seq"] for e in events] == [r.seq for r in stored]
        assert events == [json.loads(r.body) for r in stored]

    async def test_checkpoint_and_proofs_verify_offline(self, world):
        """The checkpoint opens with the served vkeys; the proofs verify against its root."""
        w, client = world
        w.submit(2)
        w.proctor.checkpoint()
        keys = (await _get(client, w, "aud", "/v1/audit/keys")).json()
        note = (await _get(client, w, "aud", "/v1/audit/checkpoint")).text
        text, _ = open_note(note, verifiers_from_vkeys(keys["vkeys"]))
        cp = Checkpoint.parse(text)
        first = w.proctor.latest_checkpoint()

        inclusion = (
            await _get(client, w, "aud", f"/v1/audit/proofs/inclusion?index=3&size={cp.size}")
        ).json()
        consistency = (
            await _get(client, w, "aud", f"/v1/audit/proofs/consistency?from=1&to={cp.size}")
        ).json()

        assert note == first.note
        assert keys["origin"] == w.proctor.origin == cp.origin
        assert [k["current"] for k in keys["keys"]] == [True]
        b = base64.b64decode
        verify_inclusion(
            b(inclusion["leaf_hash"]), 3, cp.size, [b(h) for h in inclusion["hashes"]], cp.root
        )
        assert b(inclusion["root_hash"]) == cp.root
        verify_consistency(
            1,
            cp.size,
            b(consistency["from_root"]),
            b(consistency["to_root"]),
            [b(h) for h in consistency["hashes"]],
        )
        assert (consistency["from"], consistency["to"]) == (1, cp.size)

    async def test_dead_letters_for_admins(self, world):
        """Dead-lettered deliveries are listed for admins, newest first."""
        w, client = world
        now = w.clock.now()
        with w.proctor.gateway.store.transaction() as tx:
            tx.enqueue(
                [
                    Delivery(
                        delivery_id=f"d{i}",
                        event="plan.executed",
                        target="https://hooks.example.test/x",
                        payload=b'{"ok": true}',
                        created_at=now + timedelta(seconds=i),
                        next_at=now,
                        attempts=8,
                        status=DeliveryStatus.DEAD if i < 2 else DeliveryStatus.PENDING,
                        last_error="HTTP 500",
                    )
                    for i in range(3)
                ]
            )

        resp = await _get(client, w, "root", "/v1/webhooks/dead-letters")

        deliveries = resp.json()["deliveries"]
        assert [d["delivery_id"] for d in deliveries] == ["d1", "d0"]
        assert deliveries[0]["payload"] == '{"ok": true}'
        assert deliveries[0]["status"] == "dead"


async def test_an_unsigned_log_publishes_no_keys():
    """``/v1/audit/keys`` of an unsigned in-memory instance lists no key (it has none)."""
    with Proctor.in_memory(audit_signatures=False) as p:
        token = TokenService(p.gateway.store, p.gateway.clock).create(name="aud", roles=["auditor"])
        transport = httpx.ASGITransport(app=create_app(p))
        async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as client:
            resp = await client.get(
                "/v1/audit/keys", headers={"Authorization": f"Bearer {token.token}"}
            )

    assert resp.status_code == 200
    assert resp.json()["keys"] == []
    assert resp.json()["vkeys"] == []
