"""The pure guard rules (proctor.core.guards): windows, budgets, breakers, autonomy, anomalies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proctor.core.guards import (
    AnomalySettings,
    AutonomyLevel,
    AutonomySettings,
    BreakerSettings,
    BreakerState,
    anomalies,
    autonomy_outcome,
    breaker_after,
    breaker_before,
    breaker_view,
    budget_refuses,
    kill_keys,
    minute,
    next_level,
    outside_whitelist,
    over_budget,
    period_bucket,
    promotion_due,
    window_start,
)

T0 = datetime(2026, 11, 24, 3, 41, 17, tzinfo=UTC)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
amounts = st.integers(min_value=0, max_value=10**12)


class TestWindows:
    @given(now=instants, seconds=st.integers(min_value=60, max_value=86_400 * 40))
    def test_a_window_covers_at_least_what_was_asked(self, now, seconds):
        """Every instant within ``seconds`` of ``now`` is in a bucket at or after the start."""
        start = window_start(now, seconds)

        assert start <= minute(now)
        assert minute(now - timedelta(seconds=seconds)) >= start
        # ... and the window is never more than one minute longer than asked.
        assert minute(now - timedelta(seconds=seconds + 60)) < start

    @given(a=instants, b=instants)
    def test_buckets_sort_like_time(self, a, b):
        """Minute, day and month buckets compare as their instants do (store range scans)."""
        if a <= b:
            assert minute(a) <= minute(b)
            assert period_bucket(a, "day") <= period_bucket(b, "day")
            assert period_bucket(a, "month") <= period_bucket(b, "month")

    def test_periods(self):
        """A day budget's bucket is the date, a month budget's the month."""
        assert period_bucket(T0, "day") == "2026-11-24"
        assert period_bucket(T0, "month") == "2026-11"
        assert window_start(T0, 60) == "2026-11-24T03:40"


class TestBudgetArithmetic:
    def test_reaching_the_limit_exactly_is_within_it(self):
        """limit 1000: 600 + 400 fits, 600 + 401 does not; nothing to spend never exceeds."""
        assert not over_budget(600, 400, 1000)
        assert over_budget(600, 401, 1000)
        assert not over_budget(5000, 0, 1000)
        assert over_budget(0, 1, 0)

    @given(spent=amounts, amount=amounts, more=amounts, limit=amounts)
    def test_more_spent_or_asked_never_fits_better(self, spent, amount, more, limit):
        """Over budget stays over budget when the spend or the amount grows."""
        if over_budget(spent, amount, limit):
            assert over_budget(spent + more, amount, limit)
            assert over_budget(spent, amount + more, limit)
            assert not over_budget(spent, amount, limit + spent + amount)

    def test_a_spent_budget_refuses_a_portion_with_no_amount(self):
        """limit 1000: nothing to spend fits while something is left (999), not once the
        spend reaches the limit (1000) or passed it (a reported cost, 5000); with an amount
        it is over_budget."""
        assert not budget_refuses(999, 0, 1000)
        assert budget_refuses(1000, 0, 1000)
        assert budget_refuses(5000, 0, 1000)
        assert not budget_refuses(600, 400, 1000)
        assert budget_refuses(600, 401, 1000)

    @given(spent=amounts, amount=amounts, limit=amounts)
    def test_refusal_is_at_least_over_budget(self, spent, amount, limit):
        """Whatever over_budget refuses, budget_refuses refuses too (it only adds refusals)."""
        if over_budget(spent, amount, limit):
            assert budget_refuses(spent, amount, limit)


class TestWhitelist:
    def test_no_whitelist_allows_everything(self):
        """An agent without a whitelist row may use any action."""
        assert outside_whitelist(None, ["a", "b"]) == []

    def test_listed_and_unlisted_actions(self):
        """Only the actions outside the list are reported, once each, in plan order."""
        allowed = {"actions": ["a"]}
        assert outside_whitelist(allowed, ["a", "a"]) == []
        assert outside_whitelist(allowed, ["c", "a", "b", "c"]) == ["c", "b"]

    @pytest.mark.parametrize("damaged", [{}, {"actions": "a"}, [], "a", 3])
    def test_a_damaged_row_allows_nothing(self, damaged):
        """A whitelist value of the wrong shape fails closed: every action is outside it."""
        assert outside_whitelist(damaged, ["a", "b"]) == ["a", "b"]


class TestKillKeys:
    def test_every_switch_that_can_stop_a_plan(self):
        """Global, the agent's, and each action's switch once."""
        assert kill_keys("bot", ["x", "y", "x"]) == ["global", "agent:bot", "action:x", "action:y"]


FAST = BreakerSettings(min_calls=4, error_rate=0.5, open_seconds=60, trials=2)


def opened(at=T0) -> BreakerState:
    return BreakerState(state="open", opened_at=at.isoformat(), reason="test")


class TestBreaker:
    def test_closed_lets_calls_through_and_stays_closed(self):
        """A closed breaker is agentic and unchanged by the check."""
        assert breaker_before(BreakerState(), T0, FAST) == (BreakerState(), True)

    def test_open_holds_until_open_seconds_then_half_opens(self):
        """While open nothing runs agentically; after open_seconds the next call is a trial."""
        state, agentic = breaker_before(opened(), T0 + timedelta(seconds=59), FAST)
        assert (state.state, agentic) == ("open", False)

        state, agentic = breaker_before(opened(), T0 + timedelta(seconds=60), FAST)

        assert (state.state, state.trials, agentic) == ("half_open", 1, True)

    def test_the_view_does_not_consume_a_trial(self):
        """breaker_view reports half-open past open_seconds without changing anything."""
        s = opened()
        assert breaker_view(s, T0, FAST) == "open"
        assert breaker_view(s, T0 + timedelta(seconds=61), FAST) == "half_open"
        assert breaker_view(BreakerState(), T0, FAST) == "closed"

    def test_half_open_lets_only_its_trials_through(self):
        """trials=2: two calls pass, the third is held."""
        now = T0 + timedelta(seconds=61)
        s, a1 = breaker_before(opened(), now, FAST)
        s, a2 = breaker_before(s, now, FAST)
        s, a3 = breaker_before(s, now, FAST)
        assert (a1, a2, a3) == (True, True, False)
        assert s.trials == 2

    def test_lost_trials_start_a_new_round(self):
        """Trials that never report back do not keep the breaker half-open for good."""
        now = T0 + timedelta(seconds=61)
        s, _ = breaker_before(opened(), now, FAST)
        s, _ = breaker_before(s, now, FAST)
        assert breaker_before(s, now + timedelta(seconds=59), FAST)[1] is False

        s, agentic = breaker_before(s, now + timedelta(seconds=60), FAST)

        assert agentic is True
        assert (s.state, s.trials) == ("half_open", 1)

    def test_good_trials_close_and_a_bad_one_reopens(self):
        """All trials succeeding closes it; any failing trial opens it again, from now."""
        now = T0 + timedelta(seconds=61)
        s, _ = breaker_before(opened(), now, FAST)
        s, _ = breaker_before(s, now, FAST)
        kw = {
            "calls": 1,
            "errors": 0,
            "rollbacks": 0,
            "cost": 0,
            "window_cost": 0,
            "now": now,
            "settings": FAST,
        }
        assert breaker_after(s, ok=True, **kw) == BreakerState()
        bad = breaker_after(s, ok=False, **kw)
        assert bad.state == "open"
        assert bad.opened_at == now.isoformat()

    @pytest.mark.parametrize(
        ("calls", "errors", "rollbacks", "cost", "window_cost", "opens"),
        [
            (3, 3, 0, 0, 0, False),  # below min_calls: never
            (4, 2, 0, 0, 0, True),  # error rate 0.5
            (4, 1, 0, 0, 0, False),
            (4, 0, 2, 0, 0, True),  # rollback rate 0.5
            (4, 0, 0, 1000, 1030, True),  # 1000 against an average of 10
            (4, 0, 0, 90, 120, False),  # 90 against 10: below 10x
        ],
    )
    def test_what_opens_a_closed_breaker(self, calls, errors, rollbacks, cost, window_cost, opens):
        """Error rate, rollback rate or a cost spike over the window, with enough calls."""
        s = breaker_after(
            BreakerState(),
            ok=errors == 0,
            calls=calls,
            errors=errors,
            rollbacks=rollbacks,
            cost=cost,
            window_cost=window_cost,
            now=T0,
            settings=FAST,
        )
        assert (s.state == "open") is opens
        if opens:
            assert s.reason

    @settings(max_examples=200, deadline=None)
    @given(
        events=st.lists(
            st.tuples(
                st.sampled_from(["call", "ok", "fail"]), st.integers(min_value=0, max_value=90)
            ),
            max_size=40,
        )
    )
    def test_state_machine_invariants(self, events):
        """Any sequence of checks and outcomes keeps the breaker's promises.

        Only the three states occur; an open breaker within open_seconds of opening lets
        nothing through; a half-open round lets at most ``trials`` calls through; the stored
        form round-trips.
        """
        s = BreakerState()
        now = T0
        round_passed = 0
        for kind, dt in events:
            now += timedelta(seconds=dt)
            before = s
            if kind == "call":
                s, agentic = breaker_before(s, now, FAST)
                if before.state == "open" and before.opened_at is not None:
                    opened_at = datetime.fromisoformat(before.opened_at)
                    if now < opened_at + timedelta(seconds=FAST.open_seconds):
                        assert not agentic
                if s.state == "half_open":
                    round_passed = s.trials
                    assert s.trials <= FAST.trials
                if before.state == "closed":
                    assert agentic
            else:
                s = breaker_after(
                    s,
                    ok=kind == "ok",
                    calls=FAST.min_calls,
                    errors=FAST.min_calls if kind == "fail" else 0,
                    rollbacks=0,
                    cost=0,
                    window_cost=0,
                    now=now,
                    settings=FAST,
                )
            assert s.state in ("closed", "open", "half_open")
            assert round_passed <= FAST.trials
            assert BreakerState.from_value(s.value()) == s

    def test_a_missing_or_damaged_value_reads_as_closed(self):
        """No row (None) or a value that is not an object is a closed breaker."""
        assert BreakerState.from_value(None) == BreakerState()
        assert BreakerState.from_value("open") == BreakerState()


class TestAnomalies:
    A = AnomalySettings(rate_factor=5, min_rate=20, denials=5, cost_factor=10)

    def find(self, **kw):
        base = {
            "last_minute": 0,
            "last_hour": 0,
            "denials": 0,
            "plan_cost": 0,
            "hour_cost": 0,
            "hour_plans": 0,
        }
        return anomalies(**(base | kw), settings=self.A)

    def test_a_quiet_agent(self):
        """Nothing unusual: no reason."""
        assert self.find(last_minute=3, last_hour=120) == []

    def test_a_burst_above_its_baseline(self):
        """25 in the last minute against 1/min: an anomaly; 25 against 10/min is not."""
        assert self.find(last_minute=25, last_hour=60)
        assert self.find(last_minute=25, last_hour=600) == []

    def test_repeated_denials_and_a_cost_jump(self):
        """Five denials in ten minutes; a plan costing more than 10x the hourly average."""
        assert self.find(denials=5)
        assert self.find(plan_cost=1100, hour_cost=500, hour_plans=5)
        assert self.find(plan_cost=900, hour_cost=500, hour_plans=5) == []

    @given(
        m=st.integers(min_value=0, max_value=10_000),
        h=st.integers(min_value=0, max_value=100_000),
        extra=st.integers(min_value=0, max_value=1000),
    )
    def test_more_actions_in_the_last_minute_never_look_calmer(self, m, h, extra):
        """The rate rule is monotonic in the last minute's count."""
        if self.find(last_minute=m, last_hour=h):
            assert self.find(last_minute=m + extra, last_hour=h)


class TestAutonomy:
    @given(amount=amounts)
    def test_propose_and_confirm_always_confirm_auto_never_without_tolerance(self, amount):
        """propose/confirm need the user's click; auto without a tolerance adds nothing."""
        assert autonomy_outcome(AutonomyLevel.PROPOSE, None, amount) == "confirm"
        assert autonomy_outcome(AutonomyLevel.CONFIRM, 100, amount) == "confirm"
        assert autonomy_outcome(AutonomyLevel.AUTO, None, amount) is None

    @given(below=amounts, amount=amounts)
    def test_auto_below_a_tolerance(self, below, amount):
        """auto below N: amounts under N run, N and above need a confirmation."""
        expected = None if amount < below else "confirm"
        assert autonomy_outcome(AutonomyLevel.AUTO, below, amount) == expected

    def test_promotion_ladder(self):
        """propose → confirm → auto, and nothing above auto."""
        assert next_level(AutonomyLevel.PROPOSE) is AutonomyLevel.CONFIRM
        assert next_level(AutonomyLevel.CONFIRM) is AutonomyLevel.AUTO
        assert next_level(AutonomyLevel.AUTO) is None

    def test_promotion_needs_enough_accepted_and_the_rate(self):
        """20 accepted at >= 90 %: due; 19, or 20 of 23, is not."""
        s = AutonomySettings(min_accepted=20, min_rate=0.9)
        assert promotion_due(20, 2, s)
        assert not promotion_due(19, 0, s)
        assert not promotion_due(20, 3, s)
        assert not promotion_due(0, 0, AutonomySettings(min_accepted=0, min_rate=0.0))

    @given(
        accepted=st.integers(min_value=0, max_value=500),
        declined=st.integers(min_value=0, max_value=500),
        more=st.integers(min_value=0, max_value=50),
    )
    def test_more_acceptance_never_withdraws_a_promotion(self, accepted, declined, more):
        """Due stays due with more accepted proposals; never due with fewer than min_accepted."""
        s = AutonomySettings(min_accepted=10, min_rate=0.8)
        if promotion_due(accepted, declined, s):
            assert promotion_due(accepted + more, declined, s)
        if accepted < s.min_accepted:
            assert not promotion_due(accepted, declined, s)
