"""The Guards service's hooks, called directly in a store transaction with a Journal.

This is how the gateway calls them (admit in the decide transaction, recheck before running,
on_step after each step, on_finish at the end); each test runs on memory, SQLite and
PostgreSQL stores.
"""

from __future__ import annotations

import dataclasses
import threading
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proctor.core.decisions import Outcome
from proctor.core.guards import BreakerSettings, BreakerState, Budget, RateLimit
from proctor.core.lifecycle import PlanStatus, StepStatus
from proctor.errors import InvalidRequestError, NotFoundError
from proctor.testing import make_plan

from .conftest import World


def day(w: World) -> str:
    return w.clock.now().strftime("%Y-%m-%d")


class TestAdmit:
    def test_nothing_configured_leaves_the_decision_alone(self, url):
        """No guard row and no configuration: the same decision object comes back."""
        w = World(url)
        rec = w.record()
        decision = w.decision(rec)

        assert w.run("admit", rec, [w.p.gateway.catalog.get("shop.buy")], decision) is decision

    def test_kill_switch_and_whitelist_deny_with_their_events(self, url):
        """An engaged switch denies (guard.killed); a whitelist denies what it lacks."""
        w = World(url)
        spec = [w.p.gateway.catalog.get("shop.buy")]
        w.guards.kill("action", "shop.buy", by="ops", reason="incident")
        rec = w.record()

        out = w.run("admit", rec, spec, w.decision(rec))

        assert out.outcome is Outcome.DENY
        assert out.plan_reasons == ("kill switch action:shop.buy is engaged: incident",)
        assert "guard.killed" in w.types(rec.plan_id)
        w.guards.unkill("action", "shop.buy", by="ops")
        w.guards.set_whitelist("bot", ["shop.read"], by="ops")
        rec = w.record()
        out = w.run("admit", rec, spec, w.decision(rec))
        assert out.outcome is Outcome.DENY
        assert out.plan_reasons == ("agent 'bot' may not use shop.buy",)
        assert "guard.whitelist_denied" in w.types(rec.plan_id)

    def test_rate_limit_counts_steps_and_denies_over_the_limit(self, url):
        """Per action: three steps fit a limit of three, the fourth is denied and audited."""
        w = World(url, rate_limits=(RateLimit(scope="action", key="*", limit=3),))
        spec = [w.p.gateway.catalog.get("shop.buy")] * 3
        rec = w.record(n=3)
        assert w.run("admit", rec, spec, w.decision(rec)).outcome is Outcome.EXECUTE

        rec = w.record()
        out = w.run("admit", rec, spec[:1], w.decision(rec))

        assert out.outcome is Outcome.DENY
        [ev] = w.events("guard.rate_limited")
        assert ev["data"]["used"] == 3

    def test_a_rate_limit_window_is_never_shorter_than_asked(self, url):
        """5 per 60 s: five plans at 09:00:58 leave none for 09:01:00, nor for 09:01:57; 3 per
        120 s: a fourth plan 119 s after the first three is denied, one 180 s after runs."""
        w = World(url, rate_limits=(RateLimit(scope="agent", key="*", limit=5),))
        w.clock.advance(58)  # the clock starts at 09:00:00
        assert all(w.p.submit(w.plan()).status is PlanStatus.SUCCEEDED for _ in range(5))
        for seconds in (2, 55):
            w.clock.advance(seconds)
            assert w.p.submit(w.plan()).status is PlanStatus.DENIED
        w = World(url, rate_limits=(RateLimit(scope="agent", key="*", limit=3, per_seconds=120),))
        w.clock.advance(1)  # the same store: another agent
        assert all(w.p.submit(w.plan(agent="b2")).status is PlanStatus.SUCCEEDED for _ in range(3))
        w.clock.advance(timedelta(seconds=119))
        assert w.p.submit(w.plan(agent="b2")).status is PlanStatus.DENIED
        w.clock.advance(timedelta(seconds=61))
        assert w.p.submit(w.plan(agent="b2")).status is PlanStatus.SUCCEEDED

    def test_a_rate_limit_denial_says_when_there_is_room_and_to_use_a_new_plan_id(self, url):
        """2 plans at 09:00:10 and 1 at 09:01:20, 3 per 60 s: at 09:01:30 the denial says room
        again in 30 s and a new plan_id; a retry of its id stays denied, a new plan 29 s
        later is denied and one 30 s later runs. A plan that alone exceeds a per-action limit is
        told to split. The event carries the wait as ``retry_after`` (null: split)."""
        w = World(url, rate_limits=(RateLimit(scope="agent", key="*", limit=3),))
        w.clock.advance(10)  # the clock starts at 09:00:00
        assert all(w.p.submit(w.plan()).status is PlanStatus.SUCCEEDED for _ in range(2))
        w.clock.advance(70)
        assert w.p.submit(w.plan()).status is PlanStatus.SUCCEEDED
        w.clock.advance(10)

        manifest = {**w.plan(), "plan_id": "p-retry"}
        denied = w.p.submit(manifest)
        [limited] = w.events("guard.rate_limited")
        w.clock.advance(30)
        retried = w.p.submit(manifest)
        w.clock.advance(-1)
        early = w.p.submit(w.plan())
        w.clock.advance(1)
        later = w.p.submit(w.plan())
        w = World(url, rate_limits=(RateLimit(scope="action", key="*", limit=3),))
        whole = w.p.submit(w.plan(n=4))
        [split] = [e for e in w.events("guard.rate_limited") if e["plan_id"] == whole.plan_id]

        assert denied.status is PlanStatus.DENIED
        # The event says when as a number: seconds, or null when waiting never helps.
        assert limited["plan_id"] == "p-retry" and limited["data"]["retry_after"] == 30
        assert split["data"]["retry_after"] is None
        assert denied.decision["plan_reasons"] == [
            "rate limit: agent 'bot' used 3 of 3 per 60 s "
            "(room again in 30 s; retry with a new plan_id)"
        ]
        assert (retried.status, retried.decision) == (PlanStatus.DENIED, denied.decision)
        assert early.status is PlanStatus.DENIED
        assert later.status is PlanStatus.SUCCEEDED
        assert whole.decision["plan_reasons"] == [
            "rate limit: action 'shop.buy' used 0 of 3 per 60 s (this plan alone needs 4: split it)"
        ]

    def test_guard_denials_count_towards_the_anomaly_check(self, url):
        """Repeated denials by a whitelist, a rate limit or a deny budget raise an anomaly,
        as the policy's do; a kill switch's do not (an operator stopped everything)."""
        from proctor.core.guards import AnomalySettings

        w = World(
            url,
            anomaly=AnomalySettings(denials=3),
            rate_limits=(RateLimit(scope="agent", key="rl", limit=1),),
            budgets=(Budget(scope="agent", key="bu", limit=5, on_exceed="deny"),),
        )
        w.guards.set_whitelist("wl", ["shop.read"], by="ops")
        w.guards.kill("agent", "ki", by="ops", reason="incident", allow_unknown=True)
        for agent in ("wl", "rl", "bu", "ki"):
            statuses = [w.p.submit(w.plan(amount=10, agent=agent)).status for _ in range(4)]
            assert statuses.count(PlanStatus.DENIED) >= 3

        flagged = sorted(e["data"]["agent_id"] for e in w.events("anomaly.detected"))
        assert flagged == ["bu", "rl", "wl"]

    def test_budget_reserves_then_routes_to_approval(self, url):
        """Spend is reserved at decision (budget.reserved); a plan over the limit needs approval."""
        w = World(url, budgets=(Budget(scope="user", key="*", limit=1000),))
        spec = [w.p.gateway.catalog.get("shop.buy")]
        first = w.record(amount=700)
        assert w.run("admit", first, spec, w.decision(first)).outcome is Outcome.EXECUTE
        assert w.store.counter_sum("budget:user:alice", day(w)) == (0, 700)
        assert "budget.reserved" in w.types(first.plan_id)

        second = w.record(amount=400)
        out = w.run("admit", second, spec, w.decision(second))

        assert out.outcome is Outcome.APPROVE
        assert "budget budget:user:alice" in out.steps[0].reasons[-1]
        assert w.store.counter_sum("budget:user:alice", day(w)) == (0, 1100)

    @pytest.mark.parametrize(
        "budgets",
        [
            pytest.param(
                (
                    Budget(scope="user", key="*", limit=1000),
                    Budget(scope="user", key="alice", limit=1000),
                ),
                id="one-user-and-every-user",
            ),
            pytest.param(
                (
                    Budget(scope="user", key="*", limit=1000, period="day"),
                    Budget(scope="user", key="*", limit=1000, period="month"),
                ),
                id="a-day-and-a-month",
            ),
        ],
    )
    def test_budgets_over_the_same_spend_count_it_once(self, url, budgets):
        """Two budgets that both cover alice's spend (her own and everyone's; a daily and a
        monthly one) each see it once: 400 + 400 of a 1,000 limit needs no approval."""
        w = World(url, budgets=budgets)
        spec = [w.p.gateway.catalog.get("shop.buy")]
        for amount in (400, 400):
            rec = w.record(amount=amount)
            assert w.run("admit", rec, spec, w.decision(rec)).outcome is Outcome.EXECUTE
        assert w.store.counter_sum("budget:user:alice", day(w))[1] == 800
        assert w.store.counter_sum("budget:user:alice", day(w)[:7])[1] == 800

        third = w.record(amount=400)  # 1,200 > 1,000 for both
        out = w.run("admit", third, spec, w.decision(third))
        assert out.outcome is Outcome.APPROVE
        assert w.store.counter_sum("budget:user:alice", day(w)[:7])[1] == 1200

    def test_budget_deny_reserves_nothing(self, url):
        """A deny budget that would be exceeded denies and leaves the counters as they were."""
        w = World(url, budgets=(Budget(scope="global", key="*", limit=100, on_exceed="deny"),))
        rec = w.record(amount=101)

        out = w.run("admit", rec, [w.p.gateway.catalog.get("shop.buy")], w.decision(rec))

        assert out.outcome is Outcome.DENY
        assert w.store.counter_sum("budget:global:*", day(w))[1] == 0
        assert "budget.reserved" not in w.types(rec.plan_id)

    def test_negative_amounts_never_lower_the_spend(self, url):
        """A step of -100000 is refused at validation, alone or paired with +5000: nothing
        runs, nothing is refunded, and the next payments are checked against real spend."""
        w = World(url, budgets=(Budget(scope="agent", key="*", limit=1000, on_exceed="deny"),))
        with pytest.raises(InvalidRequestError) as credit:
            w.p.submit(w.plan("shop.mail", amount=-100_000))
        assert credit.value.field == "steps[0].params.amount"
        paired = make_plan(
            [("shop.mail", {"amount": 5000}), ("shop.mail", {"amount": -5000})], agent_id="pair"
        )
        with pytest.raises(InvalidRequestError) as pair:
            w.p.submit(paired)
        assert pair.value.field == "steps[1].params.amount"
        assert w.store.counter_sum("budget:agent:bot", day(w))[1] == 0

        assert w.p.submit(w.plan("shop.mail", amount=900)).status is PlanStatus.SUCCEEDED
        assert w.p.submit(w.plan("shop.mail", amount=900)).status is PlanStatus.DENIED
        assert len(w.tools["shop.mail"].calls) == 1
        assert w.store.counter_sum("budget:agent:bot", day(w))[1] == 900

    def test_a_negative_reported_cost_settles_at_zero(self, url):
        """A tool reporting {"cost": -1000000} spent nothing: the budget is not refilled."""
        w = World(url, budgets=(Budget(scope="agent", key="*", limit=1000, on_exceed="deny"),))
        w.tools["shop.buy"].result = {"ok": True, "cost": -1_000_000}
        assert w.p.submit(w.plan(amount=10)).status is PlanStatus.SUCCEEDED
        assert w.store.counter_sum("budget:agent:bot", day(w))[1] == 0
        w.tools["shop.buy"].result = {"ok": True}

        ran = [w.p.submit(w.plan(amount=900)).status for _ in range(3)]

        assert ran == [PlanStatus.SUCCEEDED, PlanStatus.DENIED, PlanStatus.DENIED]

    def test_open_breaker_turns_execute_into_approve_but_not_confirm(self, url):
        """execute → approve while a breaker is open; other outcomes keep theirs."""
        w = World(url)
        with w.store.transaction() as tx:
            tx.put_state(
                "breaker",
                "agent:bot",
                BreakerState(state="open", opened_at=w.clock.now().isoformat()).value(),
                at=w.clock.now(),
            )
        spec = [w.p.gateway.catalog.get("shop.buy")]
        rec = w.record()
        assert w.run("admit", rec, spec, w.decision(rec)).outcome is Outcome.APPROVE
        rec = w.record()
        assert w.run("admit", rec, spec, w.decision(rec, Outcome.CONFIRM)).outcome is (
            Outcome.CONFIRM
        )

    def test_autonomy_confirm_and_tolerance(self, url):
        """confirm: every step is confirmed; auto below 500: 499 runs, 500 is confirmed."""
        w = World(url)
        spec = [w.p.gateway.catalog.get("shop.buy")]
        w.guards.set_autonomy("alice", "shop.buy", "auto", below=500, by="alice")
        rec = w.record(amount=499)
        assert w.run("admit", rec, spec, w.decision(rec)).outcome is Outcome.EXECUTE
        rec = w.record(amount=500)
        assert w.run("admit", rec, spec, w.decision(rec)).outcome is Outcome.CONFIRM
        w.guards.set_autonomy("alice", "shop.buy", "propose", by="alice")
        rec = w.record(amount=1)
        assert w.run("admit", rec, spec, w.decision(rec)).outcome is Outcome.CONFIRM

    def test_per_user_guards_fold_the_users_name(self, url):
        """alice's autonomy, rate limit and budget apply to plans for ALICE and Alice too."""
        w = World(
            url,
            rate_limits=(RateLimit(scope="user", key="Alice", limit=2),),
            budgets=(Budget(scope="user", key="*", limit=1000, on_exceed="deny"),),
        )
        w.guards.set_autonomy("alice", "shop.buy", "propose", by="ops")
        for who in ("ALICE", "Alice"):
            assert w.p.submit(w.plan(amount=400, user=who)).status is (
                PlanStatus.AWAITING_CONFIRMATION
            )
        assert w.tools["shop.buy"].calls == []
        assert w.p.submit(w.plan("shop.read", user="alice")).status is PlanStatus.DENIED
        assert w.store.counter_sum("rate:user:alice", "0")[0] == 2
        assert w.store.counter_sum("budget:user:alice", day(w))[1] == 800
        assert w.guards.status()["rate_limits"][0]["used"] == 2

    def test_a_setting_stored_under_an_unfolded_name_still_applies(self, url):
        """A row written as 'Alice|shop.buy' before keys were folded keeps applying to Alice;
        setting the level again replaces it with the folded key."""
        w = World(url)
        spec = [w.p.gateway.catalog.get("shop.buy")]
        with w.store.transaction() as tx:
            tx.put_state("autonomy", "Alice|shop.buy", {"level": "propose"}, at=w.clock.now())
        w.guards._invalidate()
        rec = w.record(user="Alice")
        assert w.run("admit", rec, spec, w.decision(rec)).outcome is Outcome.CONFIRM

        w.guards.set_autonomy("ALICE", "shop.buy", "auto", by="ops")

        assert set(w.store.list_state("autonomy")) == {"alice|shop.buy"}
        rec = w.record(user="Alice")
        assert w.run("admit", rec, spec, w.decision(rec)).outcome is Outcome.EXECUTE


SEVERITY = [Outcome.EXECUTE, Outcome.CONFIRM, Outcome.APPROVE, Outcome.DENY]


class TestNeverRelaxes:
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        outcome=st.sampled_from(SEVERITY),
        kill=st.booleans(),
        listed=st.sampled_from([None, ["shop.buy"], ["shop.read"]]),
        breaker=st.sampled_from([None, "open", "half_open", "closed"]),
        level=st.sampled_from([None, "propose", "confirm", "auto"]),
        below=st.sampled_from([None, 0, 50, 10_000]),
        amount=st.integers(min_value=0, max_value=2000),
    )
    def test_admit_only_ever_escalates(self, outcome, kill, listed, breaker, level, below, amount):
        """Whatever the guard state, admit's outcome is at least the policy's."""
        w = World("memory://", budgets=(Budget(scope="agent", key="*", limit=1000),))
        now = w.clock.now()
        with w.store.transaction() as tx:
            if kill:
                tx.put_state("kill", "agent:bot", {"reason": "x"}, at=now)
            if listed is not None:
                tx.put_state("whitelist", "bot", {"actions": listed}, at=now)
            if breaker is not None:
                value = BreakerState(state=breaker, opened_at=now.isoformat()).value()
                tx.put_state("breaker", "action:shop.buy", value, at=now)
            if level is not None:
                tx.put_state("autonomy", "alice|shop.buy", {"level": level, "below": below}, at=now)
        rec = w.record(amount=amount)

        out = w.run("admit", rec, [w.p.gateway.catalog.get("shop.buy")], w.decision(rec, outcome))

        assert SEVERITY.index(out.outcome) >= SEVERITY.index(outcome)
        if kill or listed == ["shop.read"]:
            assert out.outcome is Outcome.DENY


class TestRecheck:
    def test_a_kill_switch_stops_any_plan(self, url):
        """Approved or confirmed: an engaged switch is a reason not to run."""
        w = World(url)
        w.guards.kill("global", None, by="ops")
        for outcome in ("approve", "confirm"):
            reason = w.run("recheck", w.record(outcome=outcome))
            assert reason is not None
            assert reason.startswith("kill switch global is engaged")

    def test_an_open_breaker_holds_a_confirmed_plan_not_an_approved_one(self, url):
        """A confirmation is not an approval: only the approved plan runs past an open breaker."""
        w = World(url, breaker=BreakerSettings(open_seconds=60, trials=1))
        now = w.clock.now()
        with w.store.transaction() as tx:
            value = BreakerState(state="open", opened_at=now.isoformat(), reason="errors").value()
            tx.put_state("breaker", "action:shop.buy", value, at=now)

        assert w.run("recheck", w.record(outcome="approve")) is None
        held = w.run("recheck", w.record(outcome="confirm"))
        assert held == "circuit breaker action:shop.buy is open: errors"

        # Half-open: the confirmed plan runs as the trial call, and only one does.
        w.clock.advance(timedelta(seconds=61))
        assert w.run("recheck", w.record(outcome="confirm")) is None
        assert w.store.list_state("breaker")["action:shop.buy"]["trials"] == 1
        assert "breaker.half_open" in w.types()
        assert w.run("recheck", w.record(outcome="confirm")) is not None

    def test_a_reservation_made_at_decision_holds(self, url):
        """A plan that reserved its spend runs even if others pushed the budget over since."""
        w = World(url, budgets=(Budget(scope="agent", key="*", limit=1000, on_exceed="deny"),))
        rec = w.record(amount=800, outcome="confirm")
        w.run("admit", rec, [w.p.gateway.catalog.get("shop.buy")], w.decision(rec))
        with w.store.transaction() as tx:
            tx.bump("budget:agent:bot", day(w), count=0, amount=500)  # spent elsewhere

        assert w.run("recheck", rec) is None

    def test_an_unreserved_plan_reserves_now_or_waits(self, url):
        """Decided before the budget existed: it reserves at recheck, or waits when over."""
        w = World(url, budgets=(Budget(scope="agent", key="*", limit=1000),))
        fits = w.record(amount=600, outcome="confirm")
        assert w.run("recheck", fits) is None
        assert w.store.counter_sum("budget:agent:bot", day(w))[1] == 600
        assert w.store.list_state("reservation")[fits.plan_id]["entries"]

        over = w.record(amount=600, outcome="confirm")
        reason = w.run("recheck", over)
        assert reason is not None
        assert "600 spent + 600 > 1000" in reason
        assert w.store.counter_sum("budget:agent:bot", day(w))[1] == 600  # nothing held
        assert [e["data"]["then"] for e in w.events("budget.exceeded")] == ["wait"]

        approved = w.record(amount=600, outcome="approve")
        assert w.run("recheck", approved) is None  # a human approved: it runs, and counts
        assert w.store.counter_sum("budget:agent:bot", day(w))[1] == 1200
        assert [e["data"]["then"] for e in w.events("budget.exceeded")] == ["wait", "run"]


class TestOnStepAndFinish:
    def test_settle_at_the_tools_cost_and_release_the_rest(self, url):
        """A step settles at what it cost; on_finish releases what was not spent."""
        w = World(url, budgets=(Budget(scope="agent", key="*", limit=10_000),))
        rec = w.record(amount=500, n=2)
        spec = [w.p.gateway.catalog.get("shop.buy")] * 2
        w.run("admit", rec, spec, w.decision(rec))
        assert w.store.counter_sum("budget:agent:bot", day(w))[1] == 1000
        ran = (
            rec.steps[0]
            .moved_to(StepStatus.RUNNING)
            .moved_to(StepStatus.SUCCEEDED, result={"cost": 120})
        )

        w.run("on_step", rec.with_step(ran), ran, ok=True)

        assert w.store.counter_sum("budget:agent:bot", day(w))[1] == 620
        finished = dataclasses.replace(rec.with_step(ran), status=PlanStatus.FAILED)
        w.run("on_finish", finished)
        assert w.store.counter_sum("budget:agent:bot", day(w))[1] == 120
        assert {"budget.settled", "budget.released"} <= set(w.types(rec.plan_id))
        assert rec.plan_id not in w.store.list_state("reservation")

    def test_a_reported_cost_counts_without_a_reservation(self, url):
        """A step that reserved nothing (no amount) but reports {"cost": 600} spends 600: the
        budget's counter moves, budget.exceeded records going over, the next payment is denied."""
        w = World(url, budgets=(Budget(scope="agent", key="*", limit=1000, on_exceed="deny"),))
        w.tools["shop.read"].result = {"ok": True, "cost": 600}
        for _ in range(2):
            assert w.p.submit(w.plan("shop.read")).status is PlanStatus.SUCCEEDED

        assert w.store.counter_sum("budget:agent:bot", day(w))[1] == 1200
        assert [e["data"]["then"] for e in w.events("budget.exceeded")] == ["recorded"]
        assert w.p.submit(w.plan(amount=1)).status is PlanStatus.DENIED
        assert w.store.counter_sum("budget:agent:other", day(w))[1] == 0

    @pytest.mark.parametrize("on_exceed", ["deny", "approve"])
    def test_a_budget_spent_by_reported_costs_refuses_plans_with_no_amount(self, url, on_exceed):
        """Once reported costs take a budget to or past its limit, a plan it covers that has no
        amount is refused (deny) or sent to approval (approve) and its tool does not run; the
        budget.exceeded event and the policy's input.guards.over_budget say so, and a plan of
        another agent (another budget counter) still runs."""
        w = World(url, budgets=(Budget(scope="agent", key="*", limit=1000, on_exceed=on_exceed),))
        w.tools["shop.read"].result = {"ok": True, "cost": 1000}
        assert w.p.submit(w.plan("shop.read")).status is PlanStatus.SUCCEEDED
        assert w.store.counter_sum("budget:agent:bot", day(w))[1] == 1000  # exactly the limit

        refused = w.p.submit(w.plan("shop.read"))

        expected = PlanStatus.DENIED if on_exceed == "deny" else PlanStatus.AWAITING_APPROVAL
        assert refused.status is expected
        assert len(w.tools["shop.read"].calls) == 1
        [ev] = [e for e in w.events("budget.exceeded") if e["data"]["then"] != "recorded"]
        assert ev["data"] | {"period": None} == {
            "budget": "budget:agent:bot",
            "period": None,
            "limit": 1000,
            "spent": 1000,
            "amount": 0,
            "then": on_exceed,
        }
        [over] = w.policy.inputs[-1]["guards"]["over_budget"]
        assert (over["spent"], over["amount"], over["on_exceed"]) == (1000, 0, on_exceed)
        assert w.store.counter_sum("budget:agent:bot", day(w))[1] == 1000  # nothing reserved
        assert w.p.submit(w.plan("shop.read", agent="other")).status is PlanStatus.SUCCEEDED

    def test_a_budget_with_room_left_admits_a_plan_with_no_amount(self, url):
        """Below the limit a plan with no amount runs and reserves nothing (its cost counts
        when the tool reports it); budgets covering other agents do not refuse it."""
        w = World(url, budgets=(Budget(scope="agent", key="bot", limit=1000, on_exceed="deny"),))
        w.tools["shop.read"].result = {"ok": True, "cost": 999}
        assert w.p.submit(w.plan("shop.read")).status is PlanStatus.SUCCEEDED
        assert w.p.submit(w.plan("shop.read")).status is PlanStatus.SUCCEEDED  # 999 < 1000
        assert w.p.submit(w.plan("shop.read")).status is PlanStatus.DENIED  # 1998 >= 1000

        assert w.p.submit(w.plan("shop.read", agent="b2")).status is PlanStatus.SUCCEEDED
        assert "budget.reserved" not in w.types()

    def test_a_waiting_plan_with_no_amount_meets_a_budget_spent_meanwhile(self, url):
        """A confirmed plan with no amount holds no reservation: when a reported cost spent
        the budget while it waited, recheck stops it (an approved one runs: an approver
        decided on an approve budget)."""
        w = World(url, budgets=(Budget(scope="agent", key="*", limit=1000),))
        waiting = w.record("shop.read", outcome="confirm")
        assert w.run("admit", waiting, [w.p.gateway.catalog.get("shop.read")], w.decision(waiting))
        with w.store.transaction() as tx:
            tx.bump("budget:agent:bot", day(w), count=0, amount=1200)  # a reported cost

        reason = w.run("recheck", waiting)

        assert reason == f"budget budget:agent:bot ({day(w)}) is spent: 1200 of 1000"
        approved = w.record("shop.read", outcome="approve")
        assert w.run("recheck", approved) is None
        assert [e["data"]["then"] for e in w.events("budget.exceeded")] == ["wait", "run"]
        assert w.store.counter_sum("budget:agent:bot", day(w))[1] == 1200

    def test_a_reported_cost_above_the_reservation_counts_in_full(self, url):
        """A step of amount 0 in a plan holding a reservation still counts what it reports."""
        w = World(url, budgets=(Budget(scope="agent", key="*", limit=10_000),))
        w.tools["shop.read"].result = {"ok": True, "cost": 300}
        plan = make_plan(
            [("shop.buy", {"amount": 500}), ("shop.read", {"amount": 0})], agent_id="bot"
        )

        assert w.p.submit(plan).status is PlanStatus.SUCCEEDED

        assert w.store.counter_sum("budget:agent:bot", day(w))[1] == 800
        settled = [x for e in w.events("budget.settled") for x in e["data"]["settled"]]
        assert {"budget": "budget:agent:bot", "reserved": 0, "spent": 300} in settled

    def test_errors_open_the_breakers(self, url):
        """Failed steps over min_calls open the action's and the agent's breaker (events)."""
        w = World(url, breaker=BreakerSettings(min_calls=3, error_rate=0.6))
        for _ in range(3):
            rec = w.record("shop.flaky")
            w.run("on_step", rec, rec.steps[0], ok=False)

        breakers = w.guards.status()["breakers"]
        assert breakers["action:shop.flaky"]["state"] == "open"
        assert breakers["agent:bot"]["view"] == "open"
        assert len(w.events("breaker.opened")) == 2

    def test_a_cost_spike_opens_the_breaker(self, url):
        """A step costing far above the window's average opens its breaker."""
        w = World(url, breaker=BreakerSettings(min_calls=4, cost_spike=10))
        for amount in (10, 10, 10, 500):
            rec = w.record(amount=amount)
            w.run("on_step", rec, rec.steps[0], ok=True)

        [ev, *_] = w.events("breaker.opened")
        assert "cost spike" in ev["data"]["reason"]

    def test_an_approved_or_confirmed_large_step_is_no_spike(self, url):
        """A human saw the amount: it joins the average but does not open the breaker."""
        w = World(url, breaker=BreakerSettings(min_calls=4, cost_spike=10))
        for amount in (10, 10, 10):
            rec = w.record(amount=amount)
            w.run("on_step", rec, rec.steps[0], ok=True)
        for outcome in ("approve", "confirm"):
            rec = w.record(amount=500)
            decided = rec.with_step(dataclasses.replace(rec.steps[0], outcome=outcome))
            w.run("on_step", decided, decided.steps[0], ok=True)
        assert w.events("breaker.opened") == []

        rec = w.record(amount=5000)  # an automatic one still does (others average 206)
        w.run("on_step", rec, rec.steps[0], ok=True)
        [ev, *_] = w.events("breaker.opened")
        assert "cost spike: 5000" in ev["data"]["reason"]

    def test_undone_plans_count_as_rollbacks(self, url):
        """Plans that end undone feed the rollback rate, which opens the breaker."""
        w = World(url, breaker=BreakerSettings(min_calls=2, rollback_rate=0.5))
        for _ in range(2):
            rec = w.record()
            w.run("on_step", rec, rec.steps[0], ok=True)
            undone = rec.with_step(dataclasses.replace(rec.steps[0], status=StepStatus.COMPENSATED))
            w.run("on_finish", dataclasses.replace(undone, status=PlanStatus.UNDONE))

        assert w.guards.status()["breakers"]["action:shop.buy"]["state"] == "open"
        assert "rollback rate" in w.events("breaker.opened")[0]["data"]["reason"]

    def test_accepted_proposals_lead_to_a_suggestion(self, url):
        """N confirmed plans that ran: autonomy.promotion_suggested, listed in suggestions()."""
        from proctor.core.guards import AutonomySettings

        w = World(url, autonomy=AutonomySettings(min_accepted=3, min_rate=0.75))
        w.guards.set_autonomy("alice", "shop.buy", "propose", by="alice")
        w.run("on_finish", w.record(outcome="confirm", status=PlanStatus.REJECTED))
        for _ in range(2):
            w.run("on_finish", w.record(outcome="confirm", status=PlanStatus.SUCCEEDED))
        assert w.guards.suggestions("alice") == []  # 2 of 3

        w.run("on_finish", w.record(outcome="confirm", status=PlanStatus.SUCCEEDED))

        assert w.guards.suggestions("alice") == [
            {
                "user": "alice",
                "action": "shop.buy",
                "from": "propose",
                "to": "confirm",
                "accepted": 3,
                "total": 4,
            }
        ]
        assert w.guards.suggestions("bob") == []
        assert len(w.events("autonomy.promotion_suggested")) == 1
        # Declining keeps the level and stops the suggestion from coming back.
        assert w.guards.answer_promotion("alice", "shop.buy", accept=False) == "propose"
        w.run("on_finish", w.record(outcome="confirm", status=PlanStatus.SUCCEEDED))
        assert w.guards.suggestions("alice") == []
        with pytest.raises(NotFoundError):
            w.guards.answer_promotion("alice", "shop.buy", accept=True)
        assert w.p.verify().ok

    def test_a_new_level_counts_proposals_afresh(self, url):
        """After an accepted promotion, or a level set anew, the old record earns nothing:
        min_accepted new acceptances are needed before the next suggestion."""
        from proctor.core.guards import AutonomySettings

        w = World(url, autonomy=AutonomySettings(min_accepted=3, min_rate=0.9))

        def accept(n: int) -> None:
            for _ in range(n):
                w.run("on_finish", w.record(outcome="confirm", status=PlanStatus.SUCCEEDED))

        w.guards.set_autonomy("alice", "shop.buy", "propose", by="ops")
        accept(3)
        assert w.guards.answer_promotion("alice", "shop.buy", accept=True) == "confirm"
        accept(2)
        assert w.guards.suggestions("alice") == []
        accept(1)
        assert [x["to"] for x in w.guards.suggestions("alice")] == ["auto"]

        w.guards.set_autonomy("alice", "shop.buy", "propose", by="ops")
        accept(2)
        assert w.guards.suggestions("alice") == []
        accept(1)
        assert [(x["to"], x["total"]) for x in w.guards.suggestions("alice")] == [("confirm", 3)]


class TestAdministration:
    def test_status_shows_rate_limit_use_and_breaker_views(self, url):
        """status(): a named rate limit's use in its window; a breaker's effective state."""
        w = World(
            url,
            rate_limits=(RateLimit(scope="agent", key="bot", limit=5),),
            breaker=BreakerSettings(open_seconds=60),
        )
        spec = [w.p.gateway.catalog.get("shop.buy")]
        for _ in range(2):
            rec = w.record()
            w.run("admit", rec, spec, w.decision(rec))
        now = w.clock.now()
        with w.store.transaction() as tx:
            value = BreakerState(state="open", opened_at=now.isoformat()).value()
            tx.put_state("breaker", "agent:x", value, at=now)
        assert w.guards.status()["rate_limits"] == [
            {"scope": "agent", "key": "bot", "limit": 5, "per_seconds": 60, "used": 2}
        ]
        w.clock.advance(timedelta(seconds=121))

        st = w.guards.status()

        assert st["rate_limits"][0]["used"] == 0  # a new window (at most 119 s long)
        assert st["breakers"]["agent:x"]["state"] == "open"
        assert st["breakers"]["agent:x"]["view"] == "half_open"

    def test_bad_input_names_the_field(self, url):
        """Unknown actions, levels, verdicts and empty complaints are refused by field."""
        w = World(url)
        cases = [
            (lambda: w.guards.set_whitelist("bot", ["nope"], by="ops"), "actions"),
            (lambda: w.guards.set_autonomy("a", "shop.buy", "max", by="a"), "level"),
            (lambda: w.guards.set_autonomy("a", "nope", "auto", by="a"), "action"),
            (lambda: w.guards.set_autonomy("a", "shop.buy", "auto", below=-1, by="a"), "below"),
            (lambda: w.guards.mark_review("x", "meh", reviewer="r"), "verdict"),
            (lambda: w.guards.kill("team", "x", by="ops"), "scope"),
        ]
        for call, field in cases:
            with pytest.raises(InvalidRequestError) as e:
                call()
            assert e.value.field == field
        with pytest.raises(NotFoundError):
            w.guards.complain("no-such-plan", by="alice", reason="why")
        assert w.types() == []  # nothing was written


class TestConcurrentPlans:
    """Plans of different agents decided at once on PostgreSQL (as replicas would).

    Only the per-agent activity row serialised admission before: a budget or rate limit
    shared by several agents (global, per user, per action) was read by each transaction
    before any had bumped it, and all passed.
    """

    @staticmethod
    def _race(w: World, plans: list) -> list[PlanStatus]:
        barrier = threading.Barrier(len(plans))
        out: list[PlanStatus] = []

        def go(plan: object) -> None:
            barrier.wait(timeout=20)
            out.append(w.p.submit(plan).status)

        threads = [threading.Thread(target=go, args=(p,), daemon=True) for p in plans]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(out) == len(plans), "a submission hung"
        return out

    def test_a_global_budget_admits_exactly_its_limit(self, pg_url):
        """Eight agents each spending 600 of a global 1000 (deny): exactly one runs, each day."""
        w = World(pg_url, budgets=(Budget(scope="global", key="*", limit=1000, on_exceed="deny"),))
        for rnd in range(3):
            w.clock.advance(timedelta(days=1))
            plans = [w.plan(amount=600, agent=f"b{rnd}-{i}", user=f"u{i}") for i in range(8)]

            out = self._race(w, plans)

            assert out.count(PlanStatus.SUCCEEDED) == 1
            assert out.count(PlanStatus.DENIED) == 7
            assert w.store.counter_sum("budget:global:*", day(w))[1] == 600

    def test_a_user_rate_limit_admits_exactly_its_limit(self, pg_url):
        """Eight agents acting for one user limited to 2 per minute: exactly two run."""
        w = World(pg_url, rate_limits=(RateLimit(scope="user", key="*", limit=2),))
        for rnd in range(3):
            w.clock.advance(timedelta(days=1))
            plans = [w.plan(agent=f"r{rnd}-{i}", user=f"carol{rnd}") for i in range(8)]

            out = self._race(w, plans)

            assert out.count(PlanStatus.SUCCEEDED) == 2
            assert out.count(PlanStatus.DENIED) == 6
