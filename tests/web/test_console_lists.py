"""The console's inbox and timeline read exactly the caller's plans, in SQLite and PostgreSQL.

They once read the 1,000 newest plans of everyone and filtered them: a user's own plans (and
their Confirm, Approve and Undo buttons) vanished once others had made a thousand more, and
the inbox, sorted soonest deadline first, lost exactly its most urgent plans. The store now
filters and orders (``list_plans(on_behalf_of=, statuses=)``, ``waiting_plans``).
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from proctor import Proctor
from proctor.app.tokens import TokenService
from proctor.http import HttpSettings, create_app
from proctor.testing import FrozenClock, make_plan

pytestmark = pytest.mark.anyio

T0 = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)

TABLE = ("restaurant.book", {"restaurant": "Casa", "party": 2, "time": "20:00"})
SUBSCRIPTION = ("billing.change_subscription", {"customer": "alice", "plan": "pro"})
REFUND = ("payments.refund", {"amount": 5000, "currency": "EUR", "customer": "c-1"})
OTHERS = 1_100  # of each kind, all newer than the plans the test looks for


async def sign_in(app: Any, token: str) -> httpx.AsyncClient:
    """A client signed in through the sign-in form, as a browser does it."""
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proctor")
    form = await client.get("/login")
    match = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert match, form.text
    r = await client.post(
        "/login",
        data={"csrf": match.group(1), "token": token, "next": "/"},
        headers={"Origin": "http://proctor"},
    )
    assert r.status_code == 303, r.text
    return client


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    if request.param == "postgres":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'console.db'}"


async def test_own_plans_stay_reachable_behind_thousands_of_others(database_url):
    """Alice's waiting confirmation and her undoable action, and the approval with the
    soonest deadline, are on the pages after 3,300 newer plans of other users."""
    clock = FrozenClock(T0)
    p = Proctor.in_memory(clock=clock, database_url=database_url)
    tokens = TokenService(p.gateway.store, clock)
    alice = tokens.create(name="alice", roles=["user"]).token
    fiona = tokens.create(name="fiona", roles=["approver"], groups=["finance"]).token
    confirm = p.submit(make_plan([SUBSCRIPTION], agent_id="bot", on_behalf_of="alice"))
    done = p.submit(make_plan([TABLE], agent_id="bot", on_behalf_of="alice"))
    urgent = p.submit(make_plan([REFUND], agent_id="bot", on_behalf_of="carol"))
    assert (confirm.status.value, done.status.value, urgent.status.value) == (
        "awaiting_confirmation",
        "succeeded",
        "awaiting_approval",
    )
    with p.gateway.store.transaction() as tx:
        for i in range(OTHERS):
            later = timedelta(seconds=1 + i)
            for rec, tag in ((confirm, "c"), (done, "d"), (urgent, "a")):
                tx.save_plan(
                    dataclasses.replace(
                        rec,
                        plan_id=f"other-{tag}-{i:05}",
                        on_behalf_of="bob",
                        created_at=rec.created_at + later,
                        expires_at=rec.expires_at + later if rec.expires_at else None,
                    )
                )
    clock.advance(timedelta(minutes=1))
    app = create_app(p, settings=HttpSettings(auth_failures_per_minute=1000))
    as_alice = await sign_in(app, alice)
    as_fiona = await sign_in(app, fiona)

    inbox = await as_alice.get("/inbox")
    timeline = await as_alice.get("/timeline")
    approvals = await as_fiona.get("/inbox")
    for client in (as_alice, as_fiona):
        await client.aclose()
    p.close()

    assert inbox.status_code == timeline.status_code == approvals.status_code == 200
    assert f'action="/plans/{confirm.plan_id}/confirm"' in inbox.text
    assert "Waiting for your confirmation (1)" in inbox.text
    assert "other-c-" not in inbox.text  # bob's confirmations are not alice's
    assert f'action="/plans/{done.plan_id}/undo"' in timeline.text
    assert "other-d-" not in timeline.text
    cards = re.findall(r'<article class="card plan" id="plan-([^"]+)"', approvals.text)
    assert cards[0] == urgent.plan_id  # the soonest deadline, on top
    assert cards[1:3] == ["other-a-00000", "other-a-00001"]
    assert len(cards) == 200
    assert 'id="inbox-more"' in approvals.text


async def test_a_users_plans_are_hers_whatever_the_agent_spelt_her_name(database_url):
    """Plans made for ``Bob@Example.com`` are in the inbox and timeline of the user
    ``bob@example.com``, with their Confirm and Undo buttons, and the confirmation runs.

    Regression: they were in neither, and her confirmation was refused.
    """
    clock = FrozenClock(T0)
    p = Proctor.in_memory(clock=clock, database_url=database_url)
    bob = TokenService(p.gateway.store, clock).create(name="bob@example.com", roles=["user"])
    confirm = p.submit(make_plan([SUBSCRIPTION], agent_id="bot", on_behalf_of="Bob@Example.com"))
    done = p.submit(make_plan([TABLE], agent_id="bot", on_behalf_of="BOB@EXAMPLE.COM"))
    app = create_app(p, settings=HttpSettings(auth_failures_per_minute=1000))
    client = await sign_in(app, bob.token)

    inbox = await client.get("/inbox")
    timeline = await client.get("/timeline")
    page = await client.get(f"/plans/{confirm.plan_id}")
    await client.aclose()
    confirmed = p.confirm(confirm.plan_id, "bob@example.com")
    p.close()

    assert inbox.status_code == timeline.status_code == page.status_code == 200
    assert f'action="/plans/{confirm.plan_id}/confirm"' in inbox.text
    assert f'action="/plans/{done.plan_id}/undo"' in timeline.text
    assert confirmed.status.value == "succeeded"
    assert confirmed.on_behalf_of == "Bob@Example.com"


async def test_the_timeline_pages_to_older_actions():
    """Past a page of 50 actions, an "Older" link continues exactly where it stopped, and
    "Newest" goes back; only the user's own actions are listed."""
    clock = FrozenClock(T0)
    p = Proctor.in_memory(clock=clock)
    alice = TokenService(p.gateway.store, clock).create(name="alice", roles=["user"]).token
    ids = []
    for i in range(55):
        rec = p.submit(make_plan([TABLE], agent_id="bot", plan_id=f"tl-{i:02}"))
        ids.append(rec.plan_id)
        clock.advance(timedelta(seconds=1))
    p.submit(make_plan([TABLE], agent_id="bot", on_behalf_of="bob", plan_id="bobs"))
    app = create_app(p, settings=HttpSettings(auth_failures_per_minute=1000))
    client = await sign_in(app, alice)

    first = await client.get("/timeline")
    older = re.search(r'id="tl-older"', first.text)
    link = re.search(r'href="(/timeline\?[^"]+)" id="tl-older"', first.text)
    assert link is not None, first.text
    second = await client.get(link.group(1).replace("&amp;", "&"))
    bad = await client.get("/timeline?cursor=%%%")
    await client.aclose()
    p.close()

    def listed(html: str) -> list[str]:
        return re.findall(r'<article class="card row" id="tl-([^"]+)"', html)

    assert older is not None
    assert listed(first.text) == ids[::-1][:50]
    assert listed(second.text) == ids[::-1][50:]
    assert 'id="tl-older"' not in second.text
    assert 'id="tl-newest"' in second.text
    assert bad.status_code == 422 and "cursor" in bad.text
