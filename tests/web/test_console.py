"""The web console in a real browser (Chromium) against a real ``proctor serve``.

The core actions run in contexts with JavaScript turned off, to show they need none; the
live parts (countdowns, the in-browser proof check) run with it. Every page visited is saved
as a screenshot under ``tests/web/artifacts/``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest

pytestmark = [pytest.mark.server, pytest.mark.cli, pytest.mark.slow]

ARTIFACTS = Path(__file__).parent / "artifacts"
WAIT = 30_000  # ms: generous, so a slow, shared machine never fails a test

PO = (
    "procurement.create_po",
    {"supplier": "acme", "item": "servers", "quantity": 10, "amount": 250_000},
)
PAY = ("travel.pay", {"amount": 640_000, "currency": "EUR", "traveller": "alice"})
RESTART = ("devops.restart_service", {"service": "api", "environment": "production"})
TABLE = ("restaurant.book", {"restaurant": "Casa Lisboa", "party": 2, "time": "2027-03-12T20:00"})
SUBSCRIPTION = ("billing.change_subscription", {"customer": "alice", "plan": "pro"})


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


class Person:
    """One person's browser context (own cookies), signed in or not."""

    def __init__(self, browser: Any, server: Any, *, js: bool) -> None:
        self.server = server
        self.context = browser.new_context(java_script_enabled=js, base_url=server.url)
        self.context.set_default_timeout(WAIT)
        self.page = self.context.new_page()

    def sign_in(self, name: str) -> Any:
        page = self.page
        page.goto("/login")
        page.get_by_label("API token").fill(self.server.tokens[name])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda url: "/login" not in url)
        return page

    def cookie(self) -> str | None:
        for c in self.context.cookies():
            if c["name"] == "proctor_session":
                return str(c["value"])
        return None

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def people(browser: Any, server: Any) -> Iterator[Any]:
    opened: list[Person] = []

    def open_(*, js: bool = False) -> Person:
        person = Person(browser, server, js=js)
        opened.append(person)
        return person

    yield open_
    for person in opened:
        person.close()


class TestSignIn:
    def test_an_agent_token_is_refused(self, people, server):
        """An agent's token opens no session: the sign-in page says why, with a 403."""
        p = people()
        p.page.goto("/login")
        p.page.get_by_label("API token").fill(server.tokens["bot"])
        with p.page.expect_response(
            lambda r: r.url.endswith("/login") and r.request.method == "POST"
        ) as resp:
            p.page.get_by_role("button", name="Sign in").click()
        shot(p.page, "login-agent-refused")

        assert resp.value.status == 403
        assert "Agent tokens cannot sign in" in p.page.locator("#login-error").inner_text()
        assert p.cookie() is None
        p.page.goto("/inbox")
        assert p.page.url.startswith(f"{server.url}/login")

    def test_a_bad_token_is_refused(self, people, server):
        """A token that does not verify gets 401 and no session."""
        p = people()
        p.page.goto("/login")
        p.page.get_by_label("API token").fill("prt_not-a-real-token")
        with p.page.expect_response(lambda r: r.request.method == "POST") as resp:
            p.page.get_by_role("button", name="Sign in").click()

        assert resp.value.status == 401
        assert p.cookie() is None

    def test_sign_in_shows_only_the_roles_pages_and_sign_out_ends_the_session(self, people, server):
        """A user sees Inbox and Timeline, not Audit or Dashboard; after sign-out the old
        cookie opens nothing."""
        p = people()
        page = p.sign_in("alice")
        nav = page.get_by_role("navigation", name="Console").inner_text()
        cookie = p.cookie()
        flags = next(c for c in p.context.cookies() if c["name"] == "proctor_session")
        audit = page.goto("/audit")
        shot(page, "user-audit-forbidden")
        page.goto("/inbox")
        page.get_by_role("button", name="Sign out").click()
        after = httpx.get(
            f"{server.url}/inbox", cookies={"proctor_session": cookie or ""}, follow_redirects=False
        )

        assert "Inbox" in nav and "Timeline" in nav
        assert "Audit" not in nav and "Dashboard" not in nav
        assert cookie
        assert flags["httpOnly"] is True and flags["sameSite"] == "Strict"
        assert audit.status == 403
        assert page.url.startswith(f"{server.url}/login")
        assert after.status_code == 303 and after.headers["location"].startswith("/login")


class TestDecisions:
    def test_approve_a_plan_without_javascript_and_see_it_execute(self, people, server):
        """The inbox card says what, for whom, who, why, the scores and the deadline; the
        approval form (no JavaScript) runs the plan."""
        plan = server.submit(PO)
        p = people(js=False)
        page = p.sign_in("fiona")
        page.goto("/inbox")
        card = page.locator(f"#plan-{plan['plan_id']}")
        text = card.inner_text()
        bars = card.locator("svg rect.bar").count()
        shot(page, "inbox")
        form = page.locator(f"form[action='/plans/{plan['plan_id']}/approve']")
        form.get_by_label("Comment (optional)").fill("within the quarter's budget")
        form.get_by_role("button", name="Approve").click()
        page.wait_for_url(re.compile(r"done=approved"))
        shot(page, "plan-approved")
        status = page.locator("#plan-status").inner_text()
        after = server.plan(plan["plan_id"])

        assert plan["status"] == "awaiting_approval"
        assert "Order 10 x servers from acme for 250000 (minor units)" in text
        assert "alice" in text and "bot" in text and "gpt-x-2026-10" in text
        assert "console test plan" in text and "the cheapest option" in text
        assert "exceeds po_auto_max" in text
        assert "left" in text
        assert bars == 5
        assert page.locator("#notice").inner_text() == "You approved this plan."
        assert status == "succeeded"
        assert after["status"] == "succeeded"
        assert after["approvals"][0]["comment"] == "within the quarter's budget"
        assert page.locator("#events").inner_text().count("approval.granted") == 1

    def test_reject_a_plan(self, people, server):
        """Rejecting with a reason stops the plan; nothing runs."""
        plan = server.submit(PO)
        p = people(js=False)
        page = p.sign_in("fiona")
        page.goto(f"/plans/{plan['plan_id']}")
        page.get_by_label("Reason for rejecting (optional)").fill("wrong supplier")
        page.get_by_role("button", name="Reject").click()
        page.wait_for_url(re.compile(r"done=rejected"))
        shot(page, "plan-rejected")
        after = server.plan(plan["plan_id"])

        assert after["status"] == "rejected"
        assert [s["status"] for s in after["steps"]] == ["skipped"]
        assert after["approvals"][0]["kind"] == "reject"
        assert after["approvals"][0]["comment"] == "wrong supplier"

    def test_step_up_approval_needs_a_valid_code(self, people, server):
        """A payment over the limit asks for the step-up code: a wrong one is refused (403,
        nothing runs), the authenticator's code approves it."""
        plan = server.submit(PAY)
        p = people(js=False)
        page = p.sign_in("fiona")
        page.goto("/inbox")
        card = page.locator(f"#plan-{plan['plan_id']}").inner_text()
        form = page.locator(f"form[action='/plans/{plan['plan_id']}/approve']")
        form.get_by_label("Step-up code").fill("000000")
        with page.expect_response(lambda r: r.request.method == "POST") as wrong:
            form.get_by_role("button", name="Approve").click()
        shot(page, "step-up-wrong-code")
        message = page.locator("#error-message").inner_text()
        still = server.plan(plan["plan_id"])["status"]
        page.goto("/inbox")
        form = page.locator(f"form[action='/plans/{plan['plan_id']}/approve']")
        form.get_by_label("Step-up code").fill(pyotp.TOTP(server.totp_secret).now())
        form.get_by_role("button", name="Approve").click()
        page.wait_for_url(re.compile(r"done=approved"))
        shot(page, "step-up-approved")
        after = server.plan(plan["plan_id"])

        assert plan["step_up"] is True
        assert "step-up code" in card
        assert wrong.value.status == 403
        assert "step-up code" in message
        assert still == "awaiting_approval"
        assert after["status"] == "succeeded"

    def test_the_simulation_is_shown_as_a_diff(self, people, server):
        """A production change is dry-run first: the approver sees its predicted diff."""
        plan = server.submit(RESTART)
        p = people(js=False)
        page = p.sign_in("fiona")
        page.goto("/inbox")
        diff = page.locator(f"#plan-{plan['plan_id']} table.diff")
        rows = diff.locator("tbody tr").inner_text()
        cells = (diff.locator("td.del").count(), diff.locator("td.add").count())
        shot(page, "inbox-diff")
        form = page.locator(f"form[action='/plans/{plan['plan_id']}/reject']")
        form.get_by_label("Reason for rejecting (optional)").fill("not now")
        form.get_by_role("button", name="Reject").click()
        page.wait_for_url(re.compile(r"done=rejected"))

        assert "state" in rows and "healthy" in rows
        assert cells == (1, 1)

    def test_confirm_a_plan_as_its_user(self, people, server):
        """The on-behalf-of user confirms a subscription change from the inbox (no JS)."""
        plan = server.submit(SUBSCRIPTION)
        p = people(js=False)
        page = p.sign_in("alice")
        page.goto("/inbox")
        page.locator(f"form[action='/plans/{plan['plan_id']}/confirm'] button").click()
        page.wait_for_url(re.compile(r"done=confirmed"))

        assert plan["status"] == "awaiting_confirmation"
        assert server.plan(plan["plan_id"])["status"] == "succeeded"


class TestLive:
    def test_the_plan_page_updates_itself(self, people, server):
        """With JavaScript, a plan approved elsewhere (the API) turns succeeded on an open
        page without a reload, and the page says it changed."""
        plan = server.submit(PO)
        p = people(js=True)
        page = p.sign_in("alice")
        page.goto(f"/plans/{plan['plan_id']}")
        before = page.locator("#plan-status").inner_text()
        r = httpx.post(
            f"{server.url}/v1/plans/{plan['plan_id']}/approve",
            json={"comment": "from the API"},
            headers={"Authorization": f"Bearer {server.tokens['fiona']}"},
            timeout=30,
        )
        # A locator assertion polls the DOM without eval (the console's CSP forbids eval).
        expect(page.locator("#plan-status")).to_have_text("succeeded", timeout=WAIT)
        expect(page.locator("#live")).to_contain_text("This plan changed", timeout=WAIT)
        shot(page, "plan-live")

        assert before == "awaiting_approval"
        assert r.status_code == 200
        assert page.locator("[data-step-status='s1']").first.inner_text() == "succeeded"

    def test_the_inbox_is_not_changed_by_the_case_of_plan_ids(self, people, server):
        """Plan ids in upper and lower case do not make a freshly loaded inbox say it
        changed (the page and the live stream once sorted them differently); a real change
        still does."""
        tag = secrets.token_hex(4)
        for plan_id in (f"Zz-{tag}", f"aa-{tag}", f"Mm-{tag}"):
            server.submit(SUBSCRIPTION, plan_id=plan_id)
        p = people(js=True)
        page = p.sign_in("alice")
        page.goto("/inbox")
        expect(page.locator(f"#plan-Zz-{tag}")).to_be_visible()
        page.wait_for_timeout(3_000)  # the stream's first message comes within a second
        quiet = page.locator("#live").inner_text()
        server.submit(SUBSCRIPTION, plan_id=f"bb-{tag}")
        expect(page.locator("#live")).to_contain_text("Your inbox changed", timeout=WAIT)

        assert quiet == ""


class TestLayout:
    def test_an_unbroken_long_string_wraps_inside_its_box(self, people, server):
        """An agent's 3,000-character word (intent, reasoning, model, a param) wraps: the
        plan page and the inbox are no wider than the window, and no box's content spills
        out over its neighbours (the Steps and the approval form)."""
        word = "A" * 3000
        plan = server.submit(
            (PAY[0], {**PAY[1], "traveller": "T" * 128}),
            intent="I" + word,
            reasoning="R" + word,
            actor={
                "type": "agent",
                "name": "n" + "N" * 500,
                "model_version": "M" * 500,
                "agent_id": "bot",
            },
        )
        p = people(js=True)
        page = p.sign_in("fiona")
        page.set_viewport_size({"width": 1280, "height": 900})
        widths = {}
        spills = {}
        for path in (f"/plans/{plan['plan_id']}", "/inbox"):
            page.goto(path)
            expect(page.locator("h1")).to_be_visible()
            shot(page, "long-" + path.split("/")[1])
            widths[path] = page.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
            )
            spills[path] = page.evaluate(
                "Array.from(document.querySelectorAll('.card, .decide, main'))"
                ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.className || e.id)"
            )

        assert plan["status"] == "awaiting_approval"
        for path, (scroll, client) in widths.items():
            assert scroll <= client, (path, scroll, client)
        assert spills == {f"/plans/{plan['plan_id']}": [], "/inbox": []}


class TestTimeline:
    def test_undo_within_the_window(self, people, server):
        """A booking shows on the user's timeline with the time left; Undo compensates it."""
        plan = server.submit(TABLE)
        p = people(js=False)
        page = p.sign_in("alice")
        page.goto("/timeline")
        row = page.locator(f"#tl-{plan['plan_id']}")
        text = row.inner_text()
        shot(page, "timeline")
        row.get_by_label("Why undo (optional)").fill("booked the wrong evening")
        row.get_by_role("button", name="Undo").click()
        page.wait_for_url(re.compile(r"/timeline\?done=undone"))
        shot(page, "timeline-undone")
        after = server.plan(plan["plan_id"])
        started = server.events(plan_id=plan["plan_id"], type_="compensation.started")

        assert plan["status"] == "succeeded"
        assert re.search(r"Undo window: \d+ min \d+ s left", text)
        assert after["status"] == "undone"
        assert (
            page.locator(f"#tl-{plan['plan_id']}").get_by_role("button", name="Undo").count() == 0
        )
        assert [e["data"]["reason"] for e in started] == [
            "undone by alice: booked the wrong evening"
        ]

    def test_an_admin_undoes_from_the_plan_page_with_a_comment(self, people, server):
        """The plan page's undo form carries the comment too; one too long for the record is
        refused naming the field, and nothing is undone."""
        plan = server.submit(TABLE)
        p = people(js=False)
        page = p.sign_in("root")
        page.goto(f"/plans/{plan['plan_id']}")
        csrf = page.locator("input[name=csrf]").first.get_attribute("value")
        too_long = httpx.post(
            f"{server.url}/plans/{plan['plan_id']}/undo",
            data={"csrf": csrf, "comment": "x" * 301},
            cookies={"proctor_session": p.cookie() or ""},
        )
        still = server.plan(plan["plan_id"])["status"]
        page.get_by_label("Why undo (optional)").fill("the user asked support")
        page.get_by_role("button", name=re.compile(r"^Undo")).click()
        page.wait_for_url(re.compile(r"done=undone"))
        shot(page, "plan-undone-by-admin")
        started = server.events(plan_id=plan["plan_id"], type_="compensation.started")

        assert too_long.status_code == 422
        assert "comment" in too_long.text
        assert still == "succeeded"
        assert page.locator("#plan-status").inner_text() == "undone"
        assert [e["data"]["reason"] for e in started] == ["undone by root: the user asked support"]

    def test_a_forged_form_without_the_csrf_token_is_refused(self, people, server):
        """A same-origin form without (or with a wrong) CSRF token, and a cross-site form,
        change nothing."""
        plan = server.submit(TABLE)
        p = people(js=True)
        page = p.sign_in("alice")
        statuses = []
        for token in (None, "forged"):
            page.goto("/timeline")
            with page.expect_navigation() as resp:
                page.evaluate(
                    """([id, token]) => {
                        const f = document.createElement('form');
                        f.method = 'post'; f.action = '/plans/' + id + '/undo';
                        if (token) { const i = document.createElement('input');
                          i.type = 'hidden'; i.name = 'csrf'; i.value = token; f.appendChild(i); }
                        document.body.appendChild(f); setTimeout(() => f.submit(), 0); }""",
                    [plan["plan_id"], token],
                )
            statuses.append(resp.value.status)
        shot(page, "csrf-refused")
        message = page.locator("#error-message").inner_text()
        cross = p.context.new_page()
        cross.set_content(
            f"<form method=post action='{server.url}/plans/{plan['plan_id']}/undo'>"
            "<input name=csrf value=x><button>go</button></form>"
        )
        with cross.expect_response(lambda r: r.request.method == "POST") as resp:
            cross.get_by_role("button", name="go").click()

        assert statuses == [403, 403]
        assert "CSRF token" in message
        assert resp.value.status in (401, 403)
        assert server.plan(plan["plan_id"])["status"] == "succeeded"


class TestAudit:
    def test_explorer_checkpoint_and_proof_verified_in_the_browser(self, people, server):
        """The explorer filters events, shows the checkpoint verified, and an event's
        inclusion proof checks out on the server and again with WebCrypto in the page."""
        server.submit(TABLE)
        p = people(js=True)
        page = p.sign_in("audrey")
        page.goto("/audit?type=plan.submitted")
        types = page.locator("#audit-events tbody tr td:nth-child(3)").all_inner_texts()
        checkpoint = page.locator("#cp-status").inner_text()
        shot(page, "audit")
        page.locator("#audit-events tbody tr td a").first.click()
        page.wait_for_selector("#proof-browser.okmsg")
        shot(page, "audit-event-proof")
        server_check = page.locator("#proof-server").inner_text()
        browser_check = page.locator("#proof-browser").inner_text()
        page.goto("/audit?verify=1")
        report = page.locator("#verify-report").inner_text()

        assert types and all(t == "plan.submitted" for t in types)
        assert checkpoint.startswith("Verified: signed by")
        assert "the event is in the log" in server_check
        assert "verified here with WebCrypto" in browser_check
        assert report.startswith("The whole log verifies")


class TestDashboard:
    def test_kpis_guards_and_a_kill_switch_toggle(self, people, server):
        """The admin sees the six KPI charts, engages and releases a kill switch."""
        p = people(js=False)
        page = p.sign_in("root")
        page.goto("/dashboard")
        charts = page.locator("figure.kpi").count()
        acceptance = page.locator("#kpi-acceptance_rate .overall").inner_text()
        page.get_by_label("Scope").select_option("agent")
        page.get_by_label("Agent or action name (not for global)").fill("bot")
        page.get_by_label("Reason").fill("console test")
        page.get_by_role("button", name="Engage kill switch").click()
        page.wait_for_url(re.compile(r"done=guards"))
        shot(page, "dashboard-killed")
        engaged = page.locator("#kill-switches").inner_text()
        refused = httpx.post(
            f"{server.url}/v1/plans",
            json={
                "actor": {"type": "agent", "name": "b", "model_version": "m", "agent_id": "bot"},
                "on_behalf_of": "alice",
                "intent": "while killed",
                "steps": [{"id": "s1", "action": TABLE[0], "params": TABLE[1]}],
            },
            headers={"Authorization": f"Bearer {server.tokens['bot']}"},
        ).json()
        page.get_by_role("button", name="Release agent:bot").click()
        page.wait_for_url(re.compile(r"done=guards"))
        shot(page, "dashboard")

        assert charts == 6
        assert acceptance.endswith("%") or acceptance == "no data"
        assert "agent:bot" in engaged and "console test" in engaged
        assert refused["status"] != "succeeded"
        assert page.locator("#no-kill").count() == 1

    def test_an_auditor_sees_the_dashboard_without_toggles(self, people, server):
        """An auditor reads the dashboard but gets no admin forms; posting one is refused."""
        p = people(js=False)
        page = p.sign_in("audrey")
        page.goto("/dashboard")
        forms = page.locator("form[action^='/guards/']").count()
        shot(page, "dashboard-auditor")
        csrf = page.locator("input[name=csrf]").first.get_attribute("value")
        cookies = {"proctor_session": p.cookie() or ""}
        posted = httpx.post(
            f"{server.url}/guards/kill",
            data={"csrf": csrf, "scope": "global", "reason": "not mine to pull"},
            cookies=cookies,
        )
        breaker = httpx.post(
            f"{server.url}/guards/breakers/open",
            data={"csrf": csrf, "scope": "agent", "key": "bot"},
            cookies=cookies,
        )

        assert page.locator("figure.kpi").count() == 6
        assert forms == 0
        assert posted.status_code == 403
        assert "admin role" in posted.text
        assert breaker.status_code == 403
        assert "admin role" in breaker.text
        assert "agent:bot" not in guards(server)["breakers"]

    def test_breaker_toggles(self, people, server):
        """The admin forces a breaker open (plans it covers wait for an approver), an
        auditor's reset is refused, the admin resets it; both toggles are in the audit log."""
        search = ("travel.search", {"destination": "Lisbon", "date": "2027-03-12"})
        p = people(js=False)
        page = p.sign_in("root")
        page.goto("/dashboard")
        page.get_by_label("Breaker of").select_option("action")
        page.get_by_label("Breaker name (the action or agent)").fill("travel.search")
        page.get_by_label("Why (recorded)").fill("search provider incident")
        page.get_by_role("button", name="Force breaker open").click()
        page.wait_for_url(re.compile(r"done=breaker-opened"))
        shot(page, "dashboard-breaker-open")
        row = page.locator("[id='breaker-action:travel.search']").inner_text()
        held = server.submit(search)
        a = people(js=False)
        a.sign_in("audrey")
        a.page.goto("/dashboard")
        refused = httpx.post(
            f"{server.url}/guards/breakers/reset",
            data={
                "csrf": a.page.locator("input[name=csrf]").first.get_attribute("value"),
                "scope": "action",
                "key": "travel.search",
            },
            cookies={"proctor_session": a.cookie() or ""},
        )
        still = guards(server)["breakers"]["action:travel.search"]["view"]
        page.get_by_role("button", name="Reset action:travel.search").click()
        page.wait_for_url(re.compile(r"done=breaker-reset"))
        shot(page, "dashboard-breaker-reset")
        after = page.locator("[id='breaker-action:travel.search']").inner_text()
        ran = server.submit(search)
        events = [
            (e["type"], e["data"]["breaker"], e["data"]["by"])
            for e in server.events(type_="breaker.")
            if e["data"].get("manual")
        ]
        httpx.post(
            f"{server.url}/v1/plans/{held['plan_id']}/reject",
            json={"comment": "test cleanup"},
            headers={"Authorization": f"Bearer {server.tokens['fiona']}"},
            timeout=30,
        )

        assert "open" in row and "held open by root until reset" in row
        assert "search provider incident" in row
        assert held["status"] == "awaiting_approval"
        assert refused.status_code == 403 and "admin role" in refused.text
        assert still == "open"
        assert "closed" in after
        assert page.locator("#notice").inner_text() == "The breaker is closed."
        assert ran["status"] == "succeeded"
        assert ("breaker.opened", "action:travel.search", "root") in events
        assert ("breaker.closed", "action:travel.search", "root") in events


class TestAutonomy:
    def test_users_set_their_own_admins_anyones(self, people, server):
        """alice saves a level on her timeline (no JavaScript); setting bob's is refused;
        the admin sets carol's on the dashboard, where it is listed."""
        p = people(js=False)
        page = p.sign_in("alice")
        page.goto("/timeline")
        page.get_by_label("Action").select_option("hr.search_candidates")
        page.get_by_label("Level").select_option("auto")
        page.get_by_label("Auto only below (minor units, optional)").fill("500")
        page.get_by_role("button", name="Save").click()
        page.wait_for_url(re.compile(r"/timeline\?done=autonomy"))
        shot(page, "timeline-autonomy")
        mine = page.get_by_role("table", name="Your autonomy levels").inner_text()
        forged = httpx.post(
            f"{server.url}/autonomy",
            data={
                "csrf": page.locator("input[name=csrf]").first.get_attribute("value"),
                "user": "bob",
                "action": "hr.search_candidates",
                "level": "propose",
            },
            cookies={"proctor_session": p.cookie() or ""},
        )
        admin = people(js=False)
        apage = admin.sign_in("root")
        apage.goto("/dashboard")
        form = apage.get_by_role("form", name="Set a user's autonomy")
        form.get_by_label("User").fill("carol")
        form.get_by_label("Action").select_option("hr.search_candidates")
        form.get_by_label("Level").select_option("confirm")
        form.get_by_role("button", name="Save").click()
        apage.wait_for_url(re.compile(r"/dashboard\?done=autonomy"))
        listed = apage.locator("#autonomy").inner_text()
        state = guards(server)["autonomy"]

        assert "hr.search_candidates" in mine and "auto" in mine and "500" in mine
        assert forged.status_code == 403 and "autonomy" in forged.text
        assert "bob|hr.search_candidates" not in state
        assert state["alice|hr.search_candidates"] == {"level": "auto", "below": 500, "by": "alice"}
        assert state["carol|hr.search_candidates"]["by"] == "root"
        assert "carol" in listed and "confirm" in listed


class TestBasics:
    def test_no_request_leaves_the_server(self, people, server):
        """With JavaScript on, every page loads only from the console's own origin."""
        plan = server.submit(TABLE)
        p = people(js=True)
        seen: list[str] = []
        p.page.on("request", lambda req: seen.append(req.url))
        page = p.sign_in("root")
        for path in (
            "/timeline?user=alice",
            f"/plans/{plan['plan_id']}",
            "/audit",
            "/audit/events/0",
            "/dashboard",
            "/no-such-page",
        ):
            page.goto(path)
            page.wait_for_load_state("networkidle")
        fiona = people(js=True)
        fiona.page.on("request", lambda req: seen.append(req.url))
        fiona.sign_in("fiona").goto("/inbox")
        fiona.page.wait_for_load_state("domcontentloaded")

        assert len(seen) > 10
        assert [u for u in seen if not u.startswith(server.url + "/")] == []
        assert any(u.endswith("/static/console.js") for u in seen)

    def test_sign_in_and_act_with_the_keyboard_alone(self, people, server):
        """The token field has focus; Enter signs in; Tab reaches the skip link, then the
        menu; a confirm form submits with Enter on its button."""
        plan = server.submit(SUBSCRIPTION)
        p = people(js=False)
        page = p.page
        page.goto("/login")
        expect(page.locator("#token")).to_be_focused()  # autofocus, before any typing
        page.keyboard.type(server.tokens["alice"])
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"/inbox"))
        page.keyboard.press("Tab")
        first = page.evaluate("document.activeElement.textContent")
        button = page.locator(f"form[action='/plans/{plan['plan_id']}/confirm'] button")
        button.focus()
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"done=confirmed"))

        assert first == "Skip to content"
        assert server.plan(plan["plan_id"])["status"] == "succeeded"


def guards(server: Any) -> dict[str, Any]:
    """GET /v1/guards as the admin."""
    r = httpx.get(
        f"{server.url}/v1/guards",
        headers={"Authorization": f"Bearer {server.tokens['root']}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())
