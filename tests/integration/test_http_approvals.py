"""The approval workflow over HTTP: quorum, separation of duties, expiry, replay, step-up.

The gateway implements the rules; these tests check that the API maps each of them to the
documented status and error code, and that comments land in the plan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pyotp
import pytest

from proctor import Proctor
from proctor.app.executor import Executor
from proctor.app.tokens import TokenService
from proctor.core.assessment import Thresholds
from proctor.core.catalog import Catalog
from proctor.errors import PermissionDeniedError
from proctor.http import create_app
from proctor.testing import FrozenClock, RecordingTool, make_plan

pytestmark = pytest.mark.anyio

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}
BIG_PAYMENT = ("travel.pay", {"amount": 640_000, "currency": "EUR", "traveller": "alice"})
SUBSCRIPTION = ("billing.change_subscription", {"customer": "cust-42", "plan": "pro"})
BOOKING = ("restaurant.book", {"restaurant": "Tasca", "party": 2, "time": "2027-03-12T20:00"})


class QuorumPolicy:
    """A policy engine (a fake, not a mock): shop.buy needs two finance approvals."""

    version = "sha256:quorum-1"

    def evaluate(self, input: Mapping[str, Any]) -> Any:
        steps = {
            s["id"]: {
                "outcome": "approve",
                "reasons": ["two finance approvers"],
                "approvals": 2,
                "approver_roles": ["finance"],
            }
            for s in input["steps"]
        }
        return {"steps": steps, "plan": {"deny": [], "adjustments": []}}


@dataclass
class Api:
    """An ASGI client over an instance, with a token per principal."""

    client: httpx.AsyncClient
    proctor: Proctor
    clock: FrozenClock
    tokens: dict[str, str]

    async def call(
        self,
        who: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        sent = {"Authorization": f"Bearer {self.tokens[who]}", **(headers or {})}
        return await self.client.request(method, path, json=body, headers=sent)

    async def submit(self, *steps: tuple[str, dict[str, Any]]) -> dict[str, Any]:
        resp = await self.call(
            "bot", "POST", "/v1/plans", make_plan([*steps], agent_id="bot", on_behalf_of="alice")
        )
        assert resp.status_code == 201, resp.text
        return resp.json()


PRINCIPALS = {
    "bot": (("agent",), ()),
    "ann": (("approver",), ("finance",)),
    "fred": (("approver",), ("finance",)),
    "sam": (("approver",), ("sre",)),
    "alice": (("user", "approver"), ("finance",)),  # the beneficiary, also an approver
    "bot-approver": (("approver",), ("finance",)),
    # Other spellings of the names above: other tokens, one person to separation of duties.
    "Alice": (("approver",), ("finance",)),
    "Ann": (("approver",), ("finance",)),
    "Bot-Approver": (("approver",), ("finance",)),
    "root": (("admin",), ()),
}


async def _api(proctor: Proctor, clock: FrozenClock) -> AsyncIterator[Api]:
    tokens = TokenService(proctor.gateway.store, clock)
    secrets = {
        name: tokens.create(name=name, roles=roles, groups=groups).token
        for name, (roles, groups) in PRINCIPALS.items()
    }
    transport = httpx.ASGITransport(app=create_app(proctor))
    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as client:
        yield Api(client, proctor, clock, secrets)


@pytest.fixture
async def quorum() -> AsyncIterator[Api]:
    """An instance whose policy asks two finance approvals for shop.buy."""
    clock = FrozenClock()
    proctor = Proctor.in_memory(catalog=Catalog(), policy=QuorumPolicy(), clock=clock)
    proctor.action("shop.buy", category="general", baselines=LOW)(RecordingTool())
    async for api in _api(proctor, clock):
        yield api


class Execute:
    """A policy engine (a fake, not a mock) that executes every step."""

    version = "sha256:execute-1"

    def evaluate(self, input: Mapping[str, Any]) -> Any:
        return {"steps": {s["id"]: {"outcome": "execute"} for s in input["steps"]}, "plan": {}}


class Crash(BaseException):
    """Stands for the process dying inside a handler: nothing after it runs."""


@pytest.fixture
async def unknown() -> AsyncIterator[Api]:
    """An instance whose plan ``crashy`` needs attention: its payment died mid-call."""
    clock = FrozenClock()
    proctor = Proctor.in_memory(catalog=Catalog(), policy=Execute(), clock=clock)

    def dies(params: Any, call: Any) -> Any:
        raise Crash

    proctor.action("shop.pay", category="general", baselines=LOW)(dies)
    with pytest.raises(Crash):
        proctor.submit(make_plan([("shop.pay", {})], plan_id="crashy", agent_id="bot"))
    clock.advance(proctor.gateway.options.lease_ttl + timedelta(seconds=1))
    taken = Executor(proctor.gateway, owner="elsewhere:1:1:abc").resume("crashy")
    assert taken is not None and taken.status.value == "needs_attention"
    async for api in _api(proctor, clock):
        yield api


@pytest.fixture
async def default() -> AsyncIterator[Api]:
    """An instance with the default policy and the starter catalog."""
    clock = FrozenClock()
    async for api in _api(Proctor.in_memory(clock=clock), clock):
        yield api


class TestQuorum:
    async def test_two_distinct_approvers_are_needed(self, quorum):
        """The first approval leaves the plan waiting; the second one runs it."""
        plan = await quorum.submit(("shop.buy", {}))
        path = f"/v1/plans/{plan['plan_id']}/approve"

        first = await quorum.call("ann", "POST", path, {"comment": "looks right"})
        second = await quorum.call("fred", "POST", path, {"comment": "ok"})

        assert plan["status"] == "awaiting_approval"
        assert first.status_code == 200
        assert first.json()["status"] == "awaiting_approval"
        assert second.status_code == 200
        assert second.json()["status"] == "succeeded"
        approvals = second.json()["approvals"]
        assert [(a["principal"], a["kind"], a["comment"]) for a in approvals] == [
            ("ann", "approve", "looks right"),
            ("fred", "approve", "ok"),
        ]
        assert approvals[0]["roles"] == ["finance"]

    async def test_the_same_approver_counts_once(self, quorum):
        """A second approval by the same principal is refused (403)."""
        plan = await quorum.submit(("shop.buy", {}))
        path = f"/v1/plans/{plan['plan_id']}/approve"

        await quorum.call("ann", "POST", path)
        again = await quorum.call("ann", "POST", path)

        assert again.status_code == 403
        assert again.json()["code"] == "permission_denied"

    async def test_the_same_approver_under_another_case_counts_once(self, quorum):
        """``Ann`` cannot add a second vote to ``ann``'s (403); the plan still waits."""
        plan = await quorum.submit(("shop.buy", {}))
        path = f"/v1/plans/{plan['plan_id']}/approve"

        await quorum.call("ann", "POST", path)
        again = await quorum.call("Ann", "POST", path)
        after = await quorum.call("bot", "GET", f"/v1/plans/{plan['plan_id']}")

        assert again.status_code == 403
        assert "already approved" in again.json()["message"]
        assert after.json()["status"] == "awaiting_approval"

    async def test_a_replayed_approval_after_the_quorum_conflicts(self, quorum):
        """Once the approvals are consumed, another approval gets 409 invalid_transition."""
        plan = await quorum.submit(("shop.buy", {}))
        path = f"/v1/plans/{plan['plan_id']}/approve"
        await quorum.call("ann", "POST", path)
        await quorum.call("fred", "POST", path)

        replay = await quorum.call("fred", "POST", path)

        assert replay.status_code == 409
        assert replay.json()["code"] == "invalid_transition"

    async def test_an_approver_outside_the_groups_is_refused(self, quorum):
        """An approver without one of the plan's groups may not read it: 404, as for a plan
        that does not exist, before any state check."""
        plan = await quorum.submit(("shop.buy", {}))

        resp = await quorum.call("sam", "POST", f"/v1/plans/{plan['plan_id']}/approve")

        assert resp.status_code == 404


class TestSeparationOfDuties:
    async def test_the_beneficiary_cannot_approve(self, quorum):
        """The on-behalf-of user, even holding the group, cannot approve its own plan."""
        plan = await quorum.submit(("shop.buy", {}))

        resp = await quorum.call("alice", "POST", f"/v1/plans/{plan['plan_id']}/approve")

        assert resp.status_code == 403
        assert resp.json()["field"] == "principal"
        assert "Separation of duties" in resp.json()["hint"]

    async def test_the_requesting_agent_cannot_approve(self, quorum):
        """A principal named like the plan's agent cannot approve it."""
        plan = make_plan([("shop.buy", {})], agent_id="bot-approver", on_behalf_of="alice")
        rec = quorum.proctor.submit(plan)

        resp = await quorum.call("bot-approver", "POST", f"/v1/plans/{rec.plan_id}/approve")

        assert resp.status_code == 403

    async def test_the_beneficiary_under_another_case_cannot_approve(self, quorum):
        """An approver token ``Alice`` cannot approve a plan made on behalf of ``alice``."""
        plan = await quorum.submit(("shop.buy", {}))

        resp = await quorum.call("Alice", "POST", f"/v1/plans/{plan['plan_id']}/approve")

        assert resp.status_code == 403
        assert resp.json()["field"] == "principal"
        assert "Separation of duties" in resp.json()["hint"]

    async def test_the_requesting_agent_under_another_case_cannot_approve(self, quorum):
        """``Bot-Approver`` cannot approve a plan its agent ``bot-approver`` made."""
        plan = make_plan([("shop.buy", {})], agent_id="bot-approver", on_behalf_of="alice")
        rec = quorum.proctor.submit(plan)

        resp = await quorum.call("Bot-Approver", "POST", f"/v1/plans/{rec.plan_id}/approve")

        assert resp.status_code == 403
        assert resp.json()["field"] == "principal"


class TestSelfConfirmation:
    """A plan's agent never confirms it, whatever roles its token holds (it may withdraw it)."""

    @staticmethod
    def _token(api: Api, name: str, *roles: str) -> None:
        made = TokenService(api.proctor.gateway.store, api.clock).create(name=name, roles=roles)
        api.tokens[name] = made.token

    async def test_a_token_with_agent_and_user_roles_cannot_confirm_its_own_plan(self, default):
        """One token, both roles, its own plan: 403 on principal, nothing runs; a decline
        withdraws it.

        Regression: ``desk`` (agent and user) submitted on its own behalf and confirmed it,
        so the policy's "ask the user" asked nobody.
        """
        self._token(default, "desk", "agent", "user")
        manifest = make_plan([SUBSCRIPTION], agent_id="desk", on_behalf_of="desk")
        submitted = await default.call("desk", "POST", "/v1/plans", manifest)
        plan_id = submitted.json()["plan_id"]

        confirm = await default.call("desk", "POST", f"/v1/plans/{plan_id}/confirm")
        after = await default.call("desk", "GET", f"/v1/plans/{plan_id}")
        decline = await default.call("desk", "POST", f"/v1/plans/{plan_id}/reject")

        assert submitted.status_code == 201, submitted.text
        assert submitted.json()["status"] == "awaiting_confirmation"
        assert confirm.status_code == 403, confirm.text
        assert confirm.json()["code"] == "permission_denied"
        assert confirm.json()["field"] == "principal"
        assert "person must confirm" in confirm.json()["hint"]
        assert after.json()["status"] == "awaiting_confirmation"
        assert after.json()["approvals"] == []
        assert [s["status"] for s in after.json()["steps"]] == ["pending"]
        assert decline.status_code == 200, decline.text
        assert decline.json()["status"] == "rejected"
        kinds = [e.type for e in default.proctor.events(plan_id=plan_id)]
        assert "confirmation.granted" not in kinds and "step.started" not in kinds

    async def test_the_gateway_refuses_it_too(self, default):
        """The library path applies the same rule (the API's checks are not the only ones)."""
        self._token(default, "desk", "agent", "user")
        manifest = make_plan([SUBSCRIPTION], agent_id="desk", on_behalf_of="DESK")
        submitted = await default.call("desk", "POST", "/v1/plans", manifest)

        with pytest.raises(PermissionDeniedError, match="cannot confirm it"):
            default.proctor.confirm(submitted.json()["plan_id"], "DESK")

    async def test_a_separate_user_token_confirms_and_the_plan_runs(self, default):
        """The agent's token and the user's are two names: the user's confirm runs it."""
        self._token(default, "desk-agent", "agent")
        self._token(default, "desk", "user")
        manifest = make_plan([SUBSCRIPTION], agent_id="desk-agent", on_behalf_of="desk")
        submitted = await default.call("desk-agent", "POST", "/v1/plans", manifest)
        plan_id = submitted.json()["plan_id"]

        by_agent = await default.call("desk-agent", "POST", f"/v1/plans/{plan_id}/confirm")
        by_user = await default.call("desk", "POST", f"/v1/plans/{plan_id}/confirm")

        assert by_agent.status_code == 403  # no user role
        assert by_user.status_code == 200, by_user.text
        assert by_user.json()["status"] == "succeeded"
        assert by_user.json()["approvals"][0]["principal"] == "desk"


class TestExpiry:
    async def test_an_approval_after_the_deadline_is_gone(self, quorum):
        """Past the approval window: 410 approval_expired, and the plan reads expired."""
        plan = await quorum.submit(("shop.buy", {}))
        quorum.clock.advance(25 * 3600)

        resp = await quorum.call("ann", "POST", f"/v1/plans/{plan['plan_id']}/approve")
        after = await quorum.call("bot", "GET", f"/v1/plans/{plan['plan_id']}")

        assert resp.status_code == 410
        assert resp.json()["code"] == "approval_expired"
        assert after.json()["status"] == "expired"

    async def test_a_confirmation_after_the_deadline_is_gone(self, default):
        """Past the confirmation window the user's confirm gets 410."""
        plan = await default.submit(SUBSCRIPTION)
        default.clock.advance(2 * 3600)

        resp = await default.call("alice", "POST", f"/v1/plans/{plan['plan_id']}/confirm")

        assert resp.status_code == 410


class TestStepUp:
    async def test_a_step_up_approval_needs_a_fresh_totp(self, default):
        """No code or a wrong code: 403 on field otp; the right code runs the plan once."""
        secret, _ = default.proctor.enrol_totp("ann")
        plan = await default.submit(BIG_PAYMENT)
        path = f"/v1/plans/{plan['plan_id']}/approve"
        code = pyotp.TOTP(secret).at(default.clock.now())
        wrong = "000000" if code != "000000" else "111111"

        missing = await default.call("ann", "POST", path, {"comment": "big one"})
        bad = await default.call("ann", "POST", path, {"otp": wrong})
        good = await default.call("ann", "POST", path, {"otp": code, "comment": "checked"})

        assert plan["step_up"] is True
        assert missing.status_code == 403
        assert missing.json()["field"] == "otp"
        assert bad.status_code == 403
        assert good.status_code == 200, good.text
        assert good.json()["status"] == "succeeded"
        assert good.json()["approvals"][0]["comment"] == "checked"

    async def test_a_used_code_cannot_be_replayed(self, default):
        """The same TOTP code does not approve a second plan."""
        secret, _ = default.proctor.enrol_totp("ann")
        first = await default.submit(BIG_PAYMENT)
        second = await default.submit(BIG_PAYMENT)
        code = pyotp.TOTP(secret).at(default.clock.now())

        ok = await default.call(
            "ann", "POST", f"/v1/plans/{first['plan_id']}/approve", {"otp": code}
        )
        replay = await default.call(
            "ann", "POST", f"/v1/plans/{second['plan_id']}/approve", {"otp": code}
        )

        assert ok.status_code == 200
        assert replay.status_code == 403
        assert replay.json()["field"] == "otp"

    async def test_one_code_for_seven_approvals_gives_used_not_429(self, default):
        """Seven step-up approvals with one window's code: 200, then six 403 "used already"
        (no 429), then the next window's code approves; a wrong code still counts.

        Regression: each reuse counted as a wrong code; the 7th approval got 429 and the
        next window's code was refused for 15 minutes.
        """
        secret, _ = default.proctor.enrol_totp("ann")
        totp = pyotp.TOTP(secret)
        plans = [(await default.submit(BIG_PAYMENT))["plan_id"] for _ in range(9)]
        code = totp.at(default.clock.now())
        wrong = next(
            c
            for c in ("000000", "111111", "222222")
            if c not in {code, totp.at(default.clock.now(), counter_offset=-1)}
        )

        replies = [
            await default.call("ann", "POST", f"/v1/plans/{p}/approve", {"otp": code})
            for p in plans[:7]
        ]
        bad = await default.call("ann", "POST", f"/v1/plans/{plans[7]}/approve", {"otp": wrong})
        default.clock.advance(30)
        fresh = await default.call(
            "ann", "POST", f"/v1/plans/{plans[8]}/approve", {"otp": totp.at(default.clock.now())}
        )

        assert [r.status_code for r in replies] == [200] + [403] * 6, replies[-1].text
        assert replies[0].json()["status"] == "succeeded"
        used = replies[-1].json()
        assert (used["code"], used["field"]) == ("permission_denied", "otp")
        assert "used already" in used["message"]
        assert "next code (at most 30 s)" in used["hint"]
        assert bad.status_code == 403
        assert "4 more wrong codes" in bad.json()["hint"]
        assert fresh.status_code == 200, fresh.text
        failed = [e for e in default.proctor.events() if e.type == "stepup.failed"]
        assert [e.plan_id for e in failed] == [plans[7]]

    async def test_five_wrong_codes_lock_step_up_with_429_and_retry_after(self, default):
        """After 5 wrong codes in 15 minutes even the right one gets 429 until they age out."""
        secret, _ = default.proctor.enrol_totp("ann")
        plan = await default.submit(BIG_PAYMENT)
        path = f"/v1/plans/{plan['plan_id']}/approve"
        code = pyotp.TOTP(secret).at(default.clock.now())
        wrong = "000000" if code != "000000" else "111111"

        bad = [(await default.call("ann", "POST", path, {"otp": wrong})) for _ in range(5)]
        locked = await default.call("ann", "POST", path, {"otp": code})
        default.clock.advance(15 * 60)
        later = await default.call(
            "ann", "POST", path, {"otp": pyotp.TOTP(secret).at(default.clock.now())}
        )

        assert [r.status_code for r in bad] == [403] * 5
        assert locked.status_code == 429, locked.text
        assert locked.headers["Retry-After"] == "900"
        assert (locked.json()["code"], locked.json()["field"]) == ("rate_limited", "otp")
        assert later.status_code == 200, later.text
        failed = [e for e in default.proctor.events() if e.type == "stepup.failed"]
        assert [e.plan_id for e in failed] == [plan["plan_id"]] * 5


class TestRecheckedBeforeItRuns:
    async def test_an_action_moved_to_another_category_is_409_and_expires(self, default):
        """travel.pay now personal data (hr approves): finance's approval is 409 policy_input."""
        secret, _ = default.proctor.enrol_totp("ann")
        plan = await default.submit(BIG_PAYMENT)
        spec = default.proctor.gateway.catalog.require("travel.pay")
        default.proctor.add_action(dataclasses.replace(spec, category="pii"), replace=True)
        code = pyotp.TOTP(secret).at(default.clock.now())

        resp = await default.call(
            "ann", "POST", f"/v1/plans/{plan['plan_id']}/approve", {"otp": code}
        )
        after = await default.call("bot", "GET", f"/v1/plans/{plan['plan_id']}")

        assert resp.status_code == 409, resp.text
        assert resp.json()["field"] == "policy_input"
        assert "new plan_id" in resp.json()["hint"]
        assert after.json()["status"] == "expired"

    async def test_a_lower_hybrid_max_is_409_on_confirm(self, default):
        """Total 13 was hybrid (confirm); under hybrid_max 12 the confirmation is refused."""
        plan = await default.submit(SUBSCRIPTION)
        gw = default.proctor.gateway
        gw.options = dataclasses.replace(gw.options, thresholds=Thresholds(hybrid_max=12))

        resp = await default.call("alice", "POST", f"/v1/plans/{plan['plan_id']}/confirm")

        assert resp.status_code == 409, resp.text
        assert resp.json()["field"] == "policy_input"

    async def test_a_kill_switch_refusal_leaves_the_step_up_code_valid(self, default):
        """Killed: 409 and the code is not spent; released: the same code approves."""
        secret, _ = default.proctor.enrol_totp("ann")
        plan = await default.submit(BIG_PAYMENT)
        path = f"/v1/plans/{plan['plan_id']}/approve"
        code = pyotp.TOTP(secret).at(default.clock.now())
        default.proctor.kill("action", "travel.pay", by="ops", reason="incident")

        killed = await default.call("ann", "POST", path, {"otp": code})
        default.proctor.unkill("action", "travel.pay", by="ops")
        again = await default.call("ann", "POST", path, {"otp": code})

        assert killed.status_code == 409, killed.text
        assert "kill switch" in killed.json()["message"]
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "succeeded"


class TestHumanActions:
    async def test_the_user_declines_a_plan_waiting_for_approvers(self, quorum):
        """alice (user role), on whose behalf it acts, rejects it while approvers decide."""
        plan = await quorum.submit(("shop.buy", {}))

        resp = await quorum.call(
            "alice", "POST", f"/v1/plans/{plan['plan_id']}/reject", {"comment": "not mine"}
        )

        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "rejected"
        assert resp.json()["approvals"][-1]["principal"] == "alice"

    async def test_an_approver_who_approved_rejects_before_the_quorum(self, quorum):
        """ann approved (one of two); she changes her mind: the plan is rejected."""
        plan = await quorum.submit(("shop.buy", {}))
        base = f"/v1/plans/{plan['plan_id']}"

        approved = await quorum.call("ann", "POST", f"{base}/approve")
        rejected = await quorum.call("ann", "POST", f"{base}/reject", {"comment": "on second look"})

        assert approved.json()["status"] == "awaiting_approval"
        assert rejected.status_code == 200, rejected.text
        assert rejected.json()["status"] == "rejected"
        assert [a["kind"] for a in rejected.json()["approvals"]] == ["approve", "reject"]

    async def test_an_approver_of_other_groups_and_the_agent_cannot_reject(self, quorum):
        """sam (sre, who may not read the plan) gets 404, the requesting agent (no approver
        or user role) 403; the plan keeps waiting."""
        plan = await quorum.submit(("shop.buy", {}))
        base = f"/v1/plans/{plan['plan_id']}"

        sam = await quorum.call("sam", "POST", f"{base}/reject")
        bot = await quorum.call("bot", "POST", f"{base}/reject")
        after = await quorum.call("bot", "GET", base)

        assert (sam.status_code, bot.status_code) == (404, 403)
        assert after.json()["status"] == "awaiting_approval"

    async def test_reject_records_the_comment(self, quorum):
        """A rejection ends the plan with the approver's comment; approving it then is 409
        for an approver who decided it, 404 for one who did not (it no longer waits for his
        group, so he may not read it)."""
        plan = await quorum.submit(("shop.buy", {}))
        base = f"/v1/plans/{plan['plan_id']}"

        rejected = await quorum.call("ann", "POST", f"{base}/reject", {"comment": "not now"})
        again = await quorum.call("ann", "POST", f"{base}/approve")
        late = await quorum.call("fred", "POST", f"{base}/approve")

        assert rejected.status_code == 200
        body = rejected.json()
        assert body["status"] == "rejected"
        assert body["approvals"][-1]["kind"] == "reject"
        assert body["approvals"][-1]["comment"] == "not now"
        assert again.status_code == 409
        assert late.status_code == 404

    async def test_confirm_runs_the_plan_once(self, default):
        """The user confirms with a comment; a second confirmation is 409."""
        plan = await default.submit(SUBSCRIPTION)
        path = f"/v1/plans/{plan['plan_id']}/confirm"

        first = await default.call("alice", "POST", path, {"comment": "yes please"})
        second = await default.call("alice", "POST", path)

        assert plan["status"] == "awaiting_confirmation"
        assert first.status_code == 200
        assert first.json()["status"] == "succeeded"
        assert first.json()["approvals"][0]["comment"] == "yes please"
        assert second.status_code == 409
        assert second.json()["code"] == "invalid_transition"

    async def test_a_user_named_like_an_e_mail_confirms_over_http(self, default):
        """A plan may act for ``alice@example.com`` (a token or JWT name), who confirms it.

        Regression: the API refused such an on_behalf_of (422), so that user could never
        confirm or undo anything.
        """
        user = "alice@example.com"
        created = TokenService(default.proctor.gateway.store, default.clock).create(
            name=user, roles=("user",)
        )
        default.tokens[user] = created.token
        manifest = make_plan([SUBSCRIPTION], agent_id="bot", on_behalf_of=user)

        submitted = await default.call("bot", "POST", "/v1/plans", manifest)
        plan_id = submitted.json()["plan_id"]
        confirmed = await default.call(user, "POST", f"/v1/plans/{plan_id}/confirm")

        assert submitted.status_code == 201, submitted.text
        assert submitted.json()["on_behalf_of"] == user
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["status"] == "succeeded"
        assert confirmed.json()["approvals"][0]["principal"] == user

    async def test_the_user_is_found_whatever_the_agent_spelt_her_name(self, default):
        """A plan made for ``Bob@Example.com`` is ``bob@example.com``'s: she reads it, finds
        it in her list, confirms it and undoes it (names compared as separation of duties
        compares them); the plan keeps the name as the agent gave it.

        Regression: the user got 403 "may not read plan", an empty list and a 403 confirm,
        and the plan waited until it expired.
        """
        user = "bob@example.com"
        created = TokenService(default.proctor.gateway.store, default.clock).create(
            name=user, roles=("user",)
        )
        default.tokens[user] = created.token
        pay = await default.call(
            "bot",
            "POST",
            "/v1/plans",
            make_plan([SUBSCRIPTION], agent_id="bot", on_behalf_of="Bob@Example.com"),
        )
        book = await default.call(
            "bot",
            "POST",
            "/v1/plans",
            make_plan([BOOKING], agent_id="bot", on_behalf_of="BOB@example.com"),
        )
        pid, booked = pay.json()["plan_id"], book.json()["plan_id"]

        read = await default.call(user, "GET", f"/v1/plans/{pid}")
        listed = await default.call(user, "GET", "/v1/plans?status=awaiting_confirmation")
        confirmed = await default.call(user, "POST", f"/v1/plans/{pid}/confirm")
        undone = await default.call(user, "POST", f"/v1/plans/{booked}/undo")
        stranger = await default.call("alice", "GET", f"/v1/plans/{pid}")

        assert read.status_code == 200, read.text
        assert read.json()["on_behalf_of"] == "Bob@Example.com"
        assert [p["plan_id"] for p in listed.json()["plans"]] == [pid]
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["status"] == "succeeded"
        assert undone.status_code == 200, undone.text
        assert undone.json()["status"] == "undone"
        assert stranger.status_code == 404

    async def test_the_user_rejects_a_confirmation(self, default):
        """The on-behalf-of user may reject what waits for its confirmation."""
        plan = await default.submit(SUBSCRIPTION)

        resp = await default.call(
            "alice", "POST", f"/v1/plans/{plan['plan_id']}/reject", {"comment": "no"}
        )

        assert resp.status_code == 200
        assert resp.json()["status"] == "rejected"

    async def test_undo_once(self, default):
        """The user undoes a succeeded booking; a second undo is 409 conflict."""
        plan = await default.submit(BOOKING)
        path = f"/v1/plans/{plan['plan_id']}/undo"

        first = await default.call("alice", "POST", path)
        second = await default.call("alice", "POST", path)

        assert plan["status"] == "succeeded"
        assert first.status_code == 200
        assert first.json()["status"] == "undone"
        assert second.status_code == 409
        assert second.json()["code"] == "conflict"

    async def test_a_comment_longer_than_the_limit_is_refused(self, quorum):
        """A 2,001-character comment is 422 on field comment, and nothing is recorded."""
        plan = await quorum.submit(("shop.buy", {}))

        resp = await quorum.call(
            "ann", "POST", f"/v1/plans/{plan['plan_id']}/approve", {"comment": "x" * 2001}
        )

        assert resp.status_code == 422
        assert resp.json()["field"] == "comment"
        assert quorum.proctor.get(plan["plan_id"]).approvals == ()


def _trace(n: int) -> tuple[str, str]:
    """A W3C ``traceparent`` and its trace id, distinct per ``n``."""
    trace_id = f"{n:x}" * 32
    return f"00-{trace_id}-{'b' * 16}-01", trace_id


def _traces(api: Api, plan_id: str) -> dict[str, set[str | None]]:
    """The trace ids of a plan's audit events, by event type."""
    out: dict[str, set[str | None]] = {}
    for e in api.proctor.events(plan_id=plan_id):
        out.setdefault(e.type, set()).add(orjson.loads(e.body)["trace_id"])
    return out


class TestTraceparent:
    """Every route that acts on a plan joins the caller's trace, as ``POST /v1/plans`` does."""

    async def test_confirm_joins_the_users_trace(self, default):
        """The confirmation and the steps it runs carry the confirm request's trace id."""
        submitted, submit_id = _trace(1)
        confirming, confirm_id = _trace(2)
        resp = await default.client.post(
            "/v1/plans",
            json=make_plan([SUBSCRIPTION], agent_id="bot", on_behalf_of="alice"),
            headers={"Authorization": f"Bearer {default.tokens['bot']}", "traceparent": submitted},
        )
        plan_id = resp.json()["plan_id"]

        done = await default.call(
            "alice", "POST", f"/v1/plans/{plan_id}/confirm", headers={"traceparent": confirming}
        )

        assert done.status_code == 200 and done.json()["status"] == "succeeded"
        traces = _traces(default, plan_id)
        assert traces["plan.submitted"] == {submit_id}
        for kind in ("confirmation.granted", "step.started", "step.succeeded", "plan.finished"):
            assert traces[kind] == {confirm_id}, kind

    async def test_each_approval_joins_its_approvers_trace(self, quorum):
        """Two approvers, two traces; the steps run under the decisive approval's."""
        plan = await quorum.submit(("shop.buy", {}))
        path = f"/v1/plans/{plan['plan_id']}/approve"
        (first, first_id), (second, second_id) = _trace(3), _trace(4)

        await quorum.call("ann", "POST", path, headers={"traceparent": first})
        done = await quorum.call("fred", "POST", path, headers={"traceparent": second})

        assert done.json()["status"] == "succeeded"
        traces = _traces(quorum, plan["plan_id"])
        assert traces["approval.granted"] == {first_id, second_id}
        assert traces["step.succeeded"] == traces["plan.finished"] == {second_id}

    async def test_reject_and_undo_join_the_callers_trace(self, quorum, default):
        """A rejection's event and an undo's compensation carry their request's trace id."""
        waiting = await quorum.submit(("shop.buy", {}))
        booked = await default.submit(BOOKING)
        (rejecting, reject_id), (undoing, undo_id) = _trace(5), _trace(6)

        rejected = await quorum.call(
            "ann",
            "POST",
            f"/v1/plans/{waiting['plan_id']}/reject",
            headers={"traceparent": rejecting},
        )
        undone = await default.call(
            "alice",
            "POST",
            f"/v1/plans/{booked['plan_id']}/undo",
            headers={"traceparent": undoing},
        )

        assert rejected.json()["status"] == "rejected" and undone.json()["status"] == "undone"
        assert _traces(quorum, waiting["plan_id"])["approval.rejected"] == {reject_id}
        last = list(default.proctor.events(plan_id=booked["plan_id"]))[-1]
        assert _traces(default, booked["plan_id"])["compensation.started"] == {undo_id}
        assert (last.type, orjson.loads(last.body)["trace_id"]) == ("plan.finished", undo_id)

    async def test_resolve_joins_the_admins_trace(self, unknown):
        """The resolution and the plan's end carry the resolve request's trace id."""
        resolving, resolve_id = _trace(7)

        done = await unknown.call(
            "root",
            "POST",
            "/v1/plans/crashy/steps/s1/resolve",
            {"outcome": "succeeded"},
            headers={"traceparent": resolving},
        )

        assert done.status_code == 200, done.text
        traces = _traces(unknown, "crashy")
        assert traces["step.resolved"] == traces["plan.finished"] == {resolve_id}

    async def test_a_traceparent_too_long_is_refused_as_on_submit(self, default):
        """129 characters on confirm: 422 naming the header, and the plan still waits."""
        plan = await default.submit(SUBSCRIPTION)

        resp = await default.call(
            "alice",
            "POST",
            f"/v1/plans/{plan['plan_id']}/confirm",
            headers={"traceparent": "t" * 129},
        )

        assert resp.status_code == 422
        assert resp.json()["field"] == "traceparent"
        assert default.proctor.get(plan["plan_id"]).status.value == "awaiting_confirmation"
