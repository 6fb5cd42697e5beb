"""The pure guard rules: windows, breakers, anomalies, autonomy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from proctor.core.guards import (
    AnomalySettings,
    AutonomyLevel,
    AutonomySettings,
    BreakerSettings,
    BreakerState,
    Budget,
    RateLimit,
    anomalies,
    autonomy_outcome,
    breaker_after,
    breaker_before,
    kill_keys,
    minute,
    next_level,
    period_bucket,
    promotion_due,
    window_start,
)
from proctor.errors import ConfigError

T0 = datetime(2026, 11, 24, 3, 41, 30, tzinfo=UTC)
S = BreakerSettings(window_seconds=300, min_calls=4, error_rate=0.5, open_seconds=60, trials=2)


def after(state, ok=True, calls=4, errors=0, rollbacks=0, cost=0, window_cost=0):
    return breaker_after(
        state,
        ok=ok,
        calls=calls,
        errors=errors,
        rollbacks=rollbacks,
        cost=cost,
        window_cost=window_cost,
        now=T0,
        settings=S,
    )


class TestBuckets:
    def test_minute_and_windows(self):
        assert minute(T0) == "2026-11-24T03:41"
        assert window_start(T0, 60) == "2026-11-24T03:40"  # the bucket of now - 60 s: at least 60 s
        assert window_start(T0, 300) == "2026-11-24T03:36"
        assert period_bucket(T0, "day") == "2026-11-24"
        assert period_bucket(T0, "month") == "2026-11"
        # Buckets sort as time does.
        assert window_start(T0, 3600) < minute(T0)


class TestBreaker:
    def test_closed_lets_agentic_execution_through(self):
        assert breaker_before(BreakerState(), T0, S) == (BreakerState(), True)

    def test_opens_on_error_rate_only_with_enough_calls(self):
        assert after(BreakerState(), ok=False, calls=3, errors=3).state == "closed"
        opened = after(BreakerState(), ok=False, calls=4, errors=2)
        assert opened.state == "open" and "error rate 2/4" in opened.reason

    def test_opens_on_rollback_rate_and_cost_spike(self):
        assert after(BreakerState(), calls=4, rollbacks=2).state == "open"
        spike = after(BreakerState(), calls=10, cost=5000, window_cost=5900)  # others: 100
        assert spike.state == "open" and "cost spike" in spike.reason
        assert after(BreakerState(), calls=10, cost=500, window_cost=5000).state == "closed"

    def test_open_then_half_open_with_limited_trials(self):
        opened = BreakerState(state="open", opened_at=T0.isoformat(), reason="x")
        assert breaker_before(opened, T0 + timedelta(seconds=30), S)[1] is False
        later = T0 + timedelta(seconds=61)
        s1, ok1 = breaker_before(opened, later, S)
        s2, ok2 = breaker_before(s1, later, S)
        _, ok3 = breaker_before(s2, later, S)
        assert (s1.state, ok1, ok2, ok3) == ("half_open", True, True, False)
        assert s2.trials == 2

    def test_half_open_closes_after_good_trials_and_reopens_on_a_bad_one(self):
        half = BreakerState(state="half_open", opened_at=T0.isoformat(), trials=2)
        assert after(half).state == "closed"
        assert after(half, ok=False).state == "open"
        assert after(BreakerState(state="half_open", trials=1)).state == "half_open"

    def test_state_round_trips_through_its_stored_value(self):
        s = BreakerState(state="open", opened_at=T0.isoformat(), trials=1, reason="r")
        assert BreakerState.from_value(s.value()) == s
        assert BreakerState.from_value(None) == BreakerState()


class TestAnomalies:
    A = AnomalySettings(rate_factor=5, min_rate=10, denials=3, cost_factor=10)

    def detect(self, **kw):
        base = {"last_minute": 0, "last_hour": 0, "denials": 0}
        base |= {"plan_cost": 0, "hour_cost": 0, "hour_plans": 0}
        return anomalies(**(base | kw), settings=self.A)

    def test_quiet_agent(self):
        assert self.detect(last_minute=3, last_hour=120) == []

    def test_burst_above_baseline(self):
        assert self.detect(last_minute=30, last_hour=60)  # baseline 1/min, 30 now
        assert not self.detect(last_minute=30, last_hour=3000)  # baseline 50/min
        assert not self.detect(last_minute=9, last_hour=9)  # below min_rate

    def test_repeated_denials_and_cost_jump(self):
        assert "3 denials" in self.detect(denials=3)[0]
        assert self.detect(plan_cost=50_000, hour_cost=1_000, hour_plans=10)
        assert not self.detect(plan_cost=500, hour_cost=1_000, hour_plans=10)


class TestAutonomy:
    def test_levels_require_confirmation_below_auto(self):
        assert autonomy_outcome(AutonomyLevel.PROPOSE, None, 0) == "confirm"
        assert autonomy_outcome(AutonomyLevel.CONFIRM, None, 0) == "confirm"
        assert autonomy_outcome(AutonomyLevel.AUTO, None, 10**9) is None
        assert autonomy_outcome(AutonomyLevel.AUTO, 5000, 4999) is None
        assert autonomy_outcome(AutonomyLevel.AUTO, 5000, 5000) == "confirm"

    def test_promotion(self):
        s = AutonomySettings(min_accepted=5, min_rate=0.8)
        assert not promotion_due(4, 0, s)
        assert promotion_due(8, 2, s)
        assert not promotion_due(8, 3, s)
        assert next_level(AutonomyLevel.PROPOSE) is AutonomyLevel.CONFIRM
        assert next_level(AutonomyLevel.AUTO) is None


class TestSettings:
    def test_bad_settings_name_the_field(self):
        with pytest.raises(ConfigError) as e:
            RateLimit(scope="planet", key="*", limit=1)
        assert e.value.field == "guards.rate_limits.scope"
        with pytest.raises(ConfigError):
            RateLimit(scope="agent", key="*", limit=0)
        with pytest.raises(ConfigError):
            Budget(scope="agent", key="*", limit=10, on_exceed="ignore")
        with pytest.raises(ConfigError):
            Budget(scope="agent", key="*", limit=10, period="year")

    @pytest.mark.parametrize("limit", [2.5, 2.0, True, "5"])
    def test_a_rate_limit_is_a_whole_number_of_calls(self, limit):
        """2.5 calls (or True, or "5") is refused naming the limit: it would count as 2."""
        with pytest.raises(ConfigError) as e:
            RateLimit(scope="agent", key="*", limit=limit)

        assert e.value.field == "guards.rate_limits.limit"

    def test_a_window_is_whole_seconds(self):
        """per_seconds = 90.5 is refused naming it."""
        with pytest.raises(ConfigError) as e:
            RateLimit(scope="agent", key="*", limit=1, per_seconds=90.5)

        assert e.value.field == "guards.rate_limits.per_seconds"

    @pytest.mark.parametrize("limit", [10.5, 10.0, False, "100"])
    def test_a_budget_is_whole_minor_units(self, limit):
        """A budget of 10.5 (minor units are integers) or False is refused naming the limit."""
        with pytest.raises(ConfigError) as e:
            Budget(scope="agent", key="*", limit=limit)

        assert e.value.field == "guards.budgets.limit"
        assert "minor units" in e.value.message

    def test_a_key_that_is_no_name_is_refused(self):
        """key = 5 would match no one and leave the limit applying to nobody."""
        with pytest.raises(ConfigError) as e:
            Budget(scope="agent", key=5, limit=1)

        assert e.value.field == "guards.budgets.key"

    def test_budget_counters(self):
        assert Budget(scope="agent", key="*", limit=1).counter("bot") == "budget:agent:bot"
        assert Budget(scope="global", key="*", limit=1).counter("bot") == "budget:global:*"
        assert Budget(scope="user", key="ann", limit=1).applies("bob") is False

    def test_kill_keys(self):
        assert kill_keys("bot", ["a", "b", "a"]) == ["global", "agent:bot", "action:a", "action:b"]
