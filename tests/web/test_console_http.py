"""The console in-process (httpx over ASGI): what a browser test cannot easily reach.

The cookie's ``Secure`` flag over TLS, sign-out deleting the stored session, the
timeline's rollback TTL (it needs a policy that sets one), and the step-up lock.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pyotp
import pytest

from proctor import Proctor
from proctor.app.tokens import TokenService
from proctor.http import HttpSettings, create_app
from proctor.testing import FrozenClock, make_plan
from proctor.web.sessions import KIND

pytestmark = pytest.mark.anyio

T0 = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
TABLE = ("restaurant.book", {"restaurant": "Casa", "party": 2, "time": "20:00"})


class RollbackPolicy:
    """Executes every step with a 15-minute undo window and a 10-minute rollback TTL."""

    version = "sha256:rollback-test"

    def evaluate(self, input: dict[str, Any]) -> dict[str, Any]:
        steps = {
            s["id"]: {
                "outcome": "execute",
                "reasons": ["test policy"],
                "undo_window": 900,
                "rollback_ttl": 600,
            }
            for s in input["steps"]
        }
        return {"steps": steps, "plan": {}}


@pytest.fixture
def world():
    clock = FrozenClock(T0)
    p = Proctor.in_memory(clock=clock, policy=RollbackPolicy())
    tokens = TokenService(p.gateway.store, clock)
    secrets = {
        name: tokens.create(name=name, roles=[role]).token
        for name, role in (("alice", "user"), ("root", "admin"))
    }
    app = create_app(p, settings=HttpSettings(auth_failures_per_minute=1000))
    yield p, clock, app, secrets
    p.close()


async def sign_in(
    app: Any, token: str, *, base: str = "http://proctor"
) -> tuple[httpx.AsyncClient, httpx.Response]:
    """A client signed in through the sign-in form, as a browser does it; and the answer."""
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)
    form = await client.get("/login")
    match = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert match, form.text
    r = await client.post(
        "/login",
        data={"csrf": match.group(1), "token": token, "next": "/"},
        headers={"Origin": base},
    )
    assert r.status_code == 303, r.text
    return client, r


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match
    return match.group(1)


async def test_the_cookie_is_secure_over_tls_only(world):
    """Over https the session cookie is Secure (and HttpOnly, SameSite=Strict); over http
    it cannot be, or the browser would never send it back."""
    _p, _clock, app, secrets = world
    tls, signed_tls = await sign_in(app, secrets["alice"], base="https://proctor")
    plain, signed_plain = await sign_in(app, secrets["alice"])

    cookie_tls = signed_tls.headers["set-cookie"].lower()
    cookie_plain = signed_plain.headers["set-cookie"].lower()
    await tls.aclose()
    await plain.aclose()

    assert "proctor_session=" in cookie_tls
    assert "; secure" in cookie_tls
    assert "httponly" in cookie_tls and "samesite=strict" in cookie_tls
    assert "proctor_session=" in cookie_plain
    assert "; secure" not in cookie_plain


async def test_sign_out_deletes_the_stored_session(world):
    """After POST /logout the store holds no record of the session."""
    p, _clock, app, secrets = world
    client, _ = await sign_in(app, secrets["alice"])
    during = len(p.gateway.store.list_state(KIND))
    page = await client.get("/timeline")

    out = await client.post(
        "/logout", data={"csrf": csrf_of(page.text)}, headers={"Origin": "http://proctor"}
    )
    await client.aclose()

    assert during == 1
    assert out.status_code == 303
    assert p.gateway.store.list_state(KIND) == {}


async def test_a_sign_in_purges_expired_sessions(world):
    """A session that expired is deleted when someone signs in."""
    p, clock, app, secrets = world
    first, _ = await sign_in(app, secrets["alice"])
    await first.aclose()
    clock.advance(timedelta(hours=9))

    second, _ = await sign_in(app, secrets["root"])
    await second.aclose()

    stored = p.gateway.store.list_state(KIND)
    assert [v["name"] for v in stored.values()] == ["root"]


async def test_the_timeline_shows_the_rollback_ttl(world):
    """A step with a rollback TTL shows when it rolls back by itself and the time left."""
    p, _clock, app, secrets = world
    rec = p.submit(
        {
            "actor": {"type": "agent", "name": "bot", "model_version": "m", "agent_id": "bot"},
            "on_behalf_of": "alice",
            "intent": "dinner",
            "steps": [{"id": "s1", "action": TABLE[0], "params": TABLE[1]}],
        }
    )
    client, _ = await sign_in(app, secrets["alice"])

    page = await client.get("/timeline")
    await client.aclose()

    assert rec.status.value == "succeeded"
    assert page.status_code == 200
    assert "Rolled back automatically in <strong>10 min 0 s</strong>" in page.text
    assert "2027-03-01 12:10:00 UTC" in page.text
    assert "Undo window:" in page.text


async def test_the_kpi_chart_buckets_are_utc_calendar_days(world):
    """A plan at 12:00 UTC shows under its own date, the last of seven, at 13:00 that day."""
    p, clock, app, secrets = world
    p.submit(make_plan([TABLE], agent_id="bot"))
    clock.advance(timedelta(hours=1))
    client, _ = await sign_in(app, secrets["root"])

    page = await client.get("/dashboard?days=7")
    await client.aclose()

    html = page.text
    acceptance = html.split('id="kpi-acceptance_rate"', 1)[1].split("</figure>", 1)[0]
    days = re.findall(r"<title>(\d\d-\d\d): [^<]*</title>", acceptance)
    assert page.status_code == 200
    assert "KPIs, per day (UTC)" in html
    assert days == ["02-23", "02-24", "02-25", "02-26", "02-27", "02-28", "03-01"]
    assert "<title>03-01: 100%</title>" in acceptance


async def test_breaker_forms_fail_closed(world):
    """A bad scope or a missing name is a 422 page naming the field, an unknown verb a 404,
    a user's toggle a 403; none of them changes a breaker."""
    p, _clock, app, secrets = world
    root, _ = await sign_in(app, secrets["root"])
    alice, _ = await sign_in(app, secrets["alice"])
    root_csrf = csrf_of((await root.get("/dashboard")).text)
    alice_csrf = csrf_of((await alice.get("/timeline")).text)
    origin = {"Origin": "http://proctor"}

    async def post(client: httpx.AsyncClient, path: str, data: dict[str, str]) -> httpx.Response:
        return await client.post(path, data=data, headers=origin)

    global_ = await post(
        root, "/guards/breakers/open", {"csrf": root_csrf, "scope": "global", "key": "x"}
    )
    nameless = await post(root, "/guards/breakers/open", {"csrf": root_csrf, "scope": "agent"})
    verb = await post(
        root, "/guards/breakers/melt", {"csrf": root_csrf, "scope": "agent", "key": "bot"}
    )
    user = await post(
        alice, "/guards/breakers/open", {"csrf": alice_csrf, "scope": "agent", "key": "bot"}
    )
    await root.aclose()
    await alice.aclose()

    assert global_.status_code == 422 and "<code>scope</code>" in global_.text
    assert nameless.status_code == 422 and "<code>key</code>" in nameless.text
    assert verb.status_code == 404
    assert user.status_code == 403 and "admin role" in user.text
    assert p.gateway.store.list_state("breaker") == {}


async def test_the_sign_in_form_is_csrf_protected(world):
    """Without the form's token, with one minted for another nonce, or from another origin, a
    valid token opens no session (login CSRF)."""
    p, _clock, app, secrets = world
    token = secrets["alice"]

    async def attempt(*, csrf: bool, cookie: bool, origin: str) -> httpx.Response:
        """Fetch the form, then post it with or without its token and its nonce cookie."""
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as client:
            form = await client.get("/login")
            if not cookie:
                client.cookies.clear()
            data = {"token": token, "next": "/"}
            if csrf:
                data["csrf"] = csrf_of(form.text)
            return await client.post("/login", data=data, headers={"Origin": origin})

    no_token = await attempt(csrf=False, cookie=True, origin="http://proctor")
    no_nonce = await attempt(csrf=True, cookie=False, origin="http://proctor")
    cross = await attempt(csrf=True, cookie=True, origin="https://evil.example")
    before = len(p.gateway.store.list_state(KIND))
    ok = await attempt(csrf=True, cookie=True, origin="http://proctor")

    for refused in (no_token, no_nonce, cross):
        assert refused.status_code == 403
        assert "proctor_session" not in refused.headers.get("set-cookie", "")
    assert before == 0
    assert ok.status_code == 303
    assert "proctor_session=" in ok.headers["set-cookie"]
    assert len(p.gateway.store.list_state(KIND)) == 1


async def test_the_autonomy_form_takes_ascii_digits_only(world):
    """below="²" (a digit to str.isdigit, not to int) is a 422 naming below, not a 500."""
    p, _clock, app, secrets = world
    alice, _ = await sign_in(app, secrets["alice"])
    csrf = csrf_of((await alice.get("/timeline")).text)
    action = sorted(spec.name for spec in p.gateway.catalog)[0]

    r = await alice.post(
        "/autonomy",
        data={"csrf": csrf, "action": action, "level": "auto", "below": "²"},
        headers={"Origin": "http://proctor"},
    )
    await alice.aclose()

    assert r.status_code == 422 and "<code>below</code>" in r.text


async def test_five_wrong_step_up_codes_lock_the_approve_form():
    """The console's approve form counts wrong step-up codes as the API does: after 5 the
    right code gets a 429 page saying so (with Retry-After), and the plan still waits."""
    clock = FrozenClock(T0)
    p = Proctor.in_memory(clock=clock)  # the default policy: a big travel.pay needs step-up
    fiona = TokenService(p.gateway.store, clock).create(
        name="fiona", roles=["approver"], groups=["finance"]
    )
    secret, _ = p.enrol_totp("fiona")
    code = pyotp.TOTP(secret).at(clock.now())
    wrong = "000000" if code != "000000" else "111111"
    big = ("travel.pay", {"amount": 640_000, "currency": "EUR", "traveller": "alice"})
    plan = p.submit(make_plan([big], agent_id="travel-bot"))
    app = create_app(p, settings=HttpSettings(auth_failures_per_minute=1000))
    client, _ = await sign_in(app, fiona.token)
    csrf = csrf_of((await client.get(f"/plans/{plan.plan_id}")).text)

    async def approve(otp: str) -> httpx.Response:
        return await client.post(
            f"/plans/{plan.plan_id}/approve",
            data={"csrf": csrf, "otp": otp},
            headers={"Origin": "http://proctor"},
        )

    bad = [await approve(wrong) for _ in range(5)]
    locked = await approve(code)
    await client.aclose()
    status = p.get(plan.plan_id).status.value
    p.close()

    assert [r.status_code for r in bad] == [403] * 5
    assert "step-up code" in bad[0].text
    assert locked.status_code == 429
    assert locked.headers["Retry-After"] == "900"
    assert "too many wrong step-up codes" in locked.text
    assert status == "awaiting_approval"


async def test_the_inbox_tells_another_spelling_of_the_beneficiary_to_leave_it():
    """An approver token ``Alice`` sees a plan made on behalf of ``alice`` as its own (the
    gateway refuses its approval: separation of duties ignores case)."""
    clock = FrozenClock(T0)
    p = Proctor.in_memory(clock=clock)  # the default policy: a refund waits for finance
    token = TokenService(p.gateway.store, clock).create(
        name="Alice", roles=["approver"], groups=["finance"]
    )
    refund = ("payments.refund", {"amount": 5000, "currency": "EUR", "customer": "c-1"})
    plan = p.submit(make_plan([refund], agent_id="bot", on_behalf_of="alice"))
    app = create_app(p, settings=HttpSettings(auth_failures_per_minute=1000))
    client, _ = await sign_in(app, token.token)

    inbox = await client.get("/inbox")
    await client.aclose()
    p.close()

    assert plan.status.value == "awaiting_approval"
    assert plan.plan_id in inbox.text
    assert "someone else must approve it" in inbox.text


async def test_the_plan_page_credits_each_event_to_its_actor():
    """The plan's audit timeline says who did each thing (name and type) and, apart, whom
    it was for: the agent submitted and ran the plan, the user confirmed it."""
    clock = FrozenClock(T0)
    p = Proctor.in_memory(clock=clock)  # the default policy: a subscription change confirms
    alice = TokenService(p.gateway.store, clock).create(name="alice", roles=["user"]).token
    change = ("billing.change_subscription", {"customer": "alice", "plan": "pro"})
    plan = p.submit(make_plan([change], agent_id="bot", on_behalf_of="alice"))
    app = create_app(p, settings=HttpSettings(auth_failures_per_minute=1000))
    client, _ = await sign_in(app, alice)
    page = await client.get(f"/plans/{plan.plan_id}")
    await client.post(
        f"/plans/{plan.plan_id}/confirm",
        data={"csrf": csrf_of(page.text)},
        headers={"Origin": "http://proctor"},
    )
    page = await client.get(f"/plans/{plan.plan_id}")
    await client.aclose()
    p.close()

    rows = re.findall(
        r"<td><code>([^<]+)</code></td><td>[^<]*</td>"
        r'<td class="by">(.*?)</td><td class="for">([^<]*)</td>',
        page.text,
    )
    by = {kind: (re.sub(r"<[^>]+>", "", who), user) for kind, who, user in rows}
    assert plan.status.value == "awaiting_confirmation"
    assert by["plan.submitted"] == ("bot (agent)", "alice")
    assert by["policy.decided"] == ("bot (agent)", "alice")
    assert by["confirmation.granted"] == ("alice (human)", "alice")
    assert by["step.started"] == ("bot (agent)", "alice")
    assert by["plan.finished"] == ("bot (agent)", "alice")


async def test_a_bad_address_gets_the_console_error_page(world):
    """A browser's bad query or path value, or an unknown path, gets the console's HTML
    error page naming the field, with a 4xx; the API, and clients not asking for HTML, keep
    JSON; /favicon.ico is no error."""
    _p, _clock, app, secrets = world
    client, _ = await sign_in(app, secrets["root"])
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    bad = {
        "/audit?limit=0": "limit",
        "/audit?after=abc": "after",
        "/audit?verify=maybe": "verify",
        "/dashboard?days=0": "days",
        "/audit/events/abc": "seq",
        "/timeline?user=" + "u" * 200: "user",
    }
    pages = {path: await client.get(path, headers=html) for path in bad}
    unknown = await client.get("/nope", headers=html)
    icon = await client.get("/favicon.ico", headers={"Accept": "image/*"})
    api = await client.get(
        "/v1/plans?limit=0", headers={**html, "Authorization": f"Bearer {secrets['root']}"}
    )
    machine = await client.get("/nope", headers={"Accept": "application/json"})
    await client.aclose()

    for path, field in bad.items():
        r = pages[path]
        assert r.status_code == 422, (path, r.status_code)
        assert r.headers["content-type"].startswith("text/html"), path
        assert 'id="error-message"' in r.text, path
        assert f"<code>{field}</code>" in r.text, path
        assert "Signed in as <strong>root</strong>" in r.text, path
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("text/html")
    assert "no page at /nope" in unknown.text
    assert icon.status_code == 204
    assert api.status_code == 422 and api.json()["field"] == "limit"
    assert machine.status_code == 404 and machine.json()["code"] == "not_found"


async def test_the_audit_explorer_pages_older_and_newer_newest_first(world):
    """Unfiltered and filtered, the explorer opens on the newest events; "Older" goes back
    a page at a time to the first event, "Newer" comes forward again."""
    p, _clock, app, secrets = world
    plans = [p.submit(make_plan([TABLE], agent_id="bot")).plan_id for _ in range(12)]
    count = p.gateway.store.event_count()
    client, _ = await sign_in(app, secrets["root"])

    def seqs(html: str) -> list[int]:
        return [int(x) for x in re.findall(r'<tr><td><a href="/audit/events/(\d+)">', html)]

    def link(html: str, which: str) -> str | None:
        found = re.search(rf'id="ev-{which}" href="([^"]+)"', html)
        return found.group(1).replace("&amp;", "&") if found else None

    latest = await client.get("/audit?limit=10")
    pages = [seqs(latest.text)]
    page = latest
    href = link(latest.text, "older")
    while href is not None:
        page = await client.get(href)
        pages.append(seqs(page.text))
        href = link(page.text, "older")
    back = await client.get(link(page.text, "newer") or "")
    typed = await client.get("/audit?type=plan.submitted&limit=5")
    typed_older = await client.get(link(typed.text, "older") or "")
    await client.aclose()

    assert pages[0] == list(range(count - 10, count))
    assert link(latest.text, "newer") is None
    assert sorted(s for page in pages for s in page) == list(range(count))
    assert pages[-1][0] == 0
    assert seqs(back.text) == pages[-2]
    assert re.findall(r'<td><a href="/plans/([^"]+)">', typed.text) == plans[-5:]
    assert re.findall(r'<td><a href="/plans/([^"]+)">', typed_older.text) == plans[-10:-5]


async def test_dashboard_counts_render_breakdowns_not_python_reprs(world):
    """The dashboard's counts show a breakdown as `trace: 1` and an empty one as `none`,
    never a Python dict (`{'trace': 1}`, `{}`)."""
    p, clock, app, secrets = world
    p.submit(make_plan([TABLE], agent_id="bot"))
    clock.advance(timedelta(hours=1))
    client, _ = await sign_in(app, secrets["root"])

    page = await client.get("/dashboard?days=7")
    await client.aclose()

    counts = page.text.split("Counts over the period", 1)[1].split("</dl>", 1)[0]
    assert page.status_code == 200
    assert "<dt>uncovered</dt><dd>trace: 1</dd>" in counts, counts
    assert "<dt>false signals</dt><dd>none</dd>" in counts, counts
    assert "{" not in counts and "&#39;" not in counts, counts


async def test_the_guard_forms_refuse_an_unknown_name_unless_ticked(world):
    """Engaging a switch or forcing a breaker on a name nothing here knows is a 422 page on
    key, nothing engaged; the form's "not known here" box (allow_unknown=on) engages it; any
    other value of the box is a 422 on allow_unknown."""
    p, _clock, app, secrets = world
    root, _ = await sign_in(app, secrets["root"])
    csrf = csrf_of((await root.get("/dashboard")).text)
    origin = {"Origin": "http://proctor"}

    async def post(path: str, **data: str) -> httpx.Response:
        return await root.post(path, data={"csrf": csrf, **data}, headers=origin)

    kill = await post("/guards/kill", scope="agent", key="opsbot")
    breaker = await post("/guards/breakers/open", scope="action", key="ops.nope")
    odd = await post("/guards/kill", scope="agent", key="opsbot", allow_unknown="yes")
    stored = (p.gateway.store.list_state("kill"), p.gateway.store.list_state("breaker"))
    ticked = await post("/guards/kill", scope="agent", key="opsbot", allow_unknown="on")
    forced = await post("/guards/breakers/open", scope="action", key="ops.nope", allow_unknown="on")
    await root.aclose()

    assert kill.status_code == 422 and "<code>key</code>" in kill.text
    assert "unknown agent" in kill.text
    assert breaker.status_code == 422 and "<code>key</code>" in breaker.text
    assert odd.status_code == 422 and "<code>allow_unknown</code>" in odd.text
    assert stored == ({}, {})
    assert (ticked.status_code, forced.status_code) == (303, 303)
    assert set(p.gateway.store.list_state("kill")) == {"agent:opsbot"}
    assert set(p.gateway.store.list_state("breaker")) == {"action:ops.nope"}


async def test_engaging_an_engaged_switch_says_so_and_keeps_the_first(world):
    """The kill form on a switch already engaged redirects to a notice that it stays as it
    was; the switch keeps its first engager's reason. The same for a held breaker."""
    p, _clock, app, secrets = world
    root, _ = await sign_in(app, secrets["root"])
    csrf = csrf_of((await root.get("/dashboard")).text)
    origin = {"Origin": "http://proctor"}

    async def post(path: str, **data: str) -> httpx.Response:
        return await root.post(path, data={"csrf": csrf, **data}, headers=origin)

    first = await post("/guards/kill", scope="global", reason="first")
    again = await post("/guards/kill", scope="global", reason="second")
    await post("/guards/breakers/open", scope="action", key="restaurant.book")
    held = await post("/guards/breakers/open", scope="action", key="restaurant.book")
    page = await root.get(again.headers["location"])
    await root.aclose()

    assert first.headers["location"] == "/dashboard?done=guards"
    assert again.headers["location"] == "/dashboard?done=kill-already"
    assert held.headers["location"] == "/dashboard?done=breaker-already"
    assert "That kill switch was already engaged" in page.text
    assert p.gateway.store.list_state("kill")["global"]["reason"] == "first"


async def test_a_plan_the_user_may_not_read_is_a_missing_plan(world):
    """Another user's plan, on its page, its live status and its undo form, answers as a
    plan that does not exist: a 403 would confirm that a guessed plan id exists."""
    p, clock, app, secrets = world
    secrets = {
        **secrets,
        "bob": TokenService(p.gateway.store, clock).create(name="bob", roles=["user"]).token,
    }
    plan_id = p.submit(make_plan([TABLE], plan_id="alice-table-1")).plan_id
    ghost = "ghost-table-1"
    bob, _ = await sign_in(app, secrets["bob"])
    csrf = csrf_of((await bob.get("/timeline")).text)
    answers = {}
    for pid in (plan_id, ghost):
        answers[pid] = [
            await bob.get(f"/plans/{pid}"),
            await bob.get(f"/live/plans/{pid}"),
            await bob.post(
                f"/plans/{pid}/undo",
                data={"csrf": csrf, "comment": "mine"},
                headers={"Origin": "http://proctor"},
            ),
        ]
    await bob.aclose()

    for seen, missing in zip(answers[plan_id], answers[ghost], strict=True):
        assert seen.status_code == missing.status_code == 404
        assert seen.text == missing.text.replace(ghost, plan_id)
    assert p.get(plan_id).status.value == "succeeded"


async def test_events_are_credited_to_the_authenticated_agent_not_its_free_text_name(world):
    """An agent's token submits with ``actor`` ``{"type": "human", "name": "alice"}``: the audit
    explorer's actor column and the plan page's "by" column say ``bot``, never ``alice``."""
    p, clock, app, secrets = world
    bot = TokenService(p.gateway.store, clock).create(name="bot", roles=["agent"]).token
    plan = make_plan([TABLE], plan_id="posing-1")
    plan["actor"] = {"type": "human", "name": "alice", "model_version": "m"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as api:
        made = await api.post("/v1/plans", json=plan, headers={"Authorization": f"Bearer {bot}"})
    assert made.status_code == 201, made.text
    client, _ = await sign_in(app, secrets["root"])
    explorer = await client.get("/audit?plan=posing-1")
    page = await client.get("/plans/posing-1")
    await client.aclose()

    rows = re.findall(
        r"<td><code>([^<]+)</code></td>\s*<td>.*?</td><td>[^<]*</td><td>([^<]*)</td>"
        r"<td>([^<]*)</td></tr>",
        explorer.text,
        flags=re.S,
    )
    actors = {kind: actor for kind, _user, actor in rows}
    assert actors["plan.submitted"] == "bot"
    assert set(actors.values()) == {"bot"}
    by = re.findall(r'<td class="by">(.*?)</td>', page.text)
    assert by and {re.sub(r"<[^>]+>", "", who) for who in by} == {"bot (agent)"}
