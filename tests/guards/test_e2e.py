"""Guards end to end: the default Rego bundle, the gateway's wiring, memory and SQLite stores.

Every plan here goes through ``Proctor.submit`` / ``confirm`` / ``approve``: the policy sees
``input.guards`` (its reasons show it), the gateway's ``admit`` enforces each guard exactly,
``recheck`` runs before a human-cleared plan starts, and ``on_step`` / ``on_finish`` feed
budgets, breakers and autonomy.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from proctor.core.guards import AutonomySettings, BreakerSettings, Budget, RateLimit
from proctor.core.lifecycle import PlanStatus
from proctor.errors import ConflictError, InvalidTransitionError

from .conftest import World


@pytest.fixture(params=["memory", "sqlite"])
def e2e_url(request, tmp_path):
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'e2e.db'}"


def reasons(rec):
    return [r for s in rec.decision["steps"] for r in s["reasons"]]


class TestKillSwitch:
    def test_kill_denies_new_plans_and_stops_a_confirmed_one(self, e2e_url):
        """Killed: submissions are denied, a waiting plan cannot be confirmed; unkill: it runs."""
        w = World(e2e_url, policy="default")
        waiting = w.p.submit(w.plan("shop.mail", external=True))
        assert waiting.status is PlanStatus.AWAITING_CONFIRMATION
        w.p.kill("agent", "bot", by="ops", reason="runaway")

        denied = w.p.submit(w.plan())
        with pytest.raises(ConflictError, match="kill switch agent:bot is engaged: runaway"):
            w.p.confirm(waiting.plan_id, "alice")

        assert denied.status is PlanStatus.DENIED
        assert w.tools["shop.buy"].calls == []
        assert w.tools["shop.mail"].calls == []
        assert w.p.get(waiting.plan_id).status is PlanStatus.AWAITING_CONFIRMATION
        assert w.p.unkill("agent", "bot", by="ops")
        assert w.p.confirm(waiting.plan_id, "alice").status is PlanStatus.SUCCEEDED
        assert len(w.tools["shop.mail"].calls) == 1
        assert w.p.verify().ok


class TestWhitelistAndRateLimit:
    def test_whitelist_denies_with_the_policys_view(self, e2e_url):
        """An action outside the agent's whitelist is denied; the policy saw whitelisted=false."""
        w = World(e2e_url, policy="default")
        w.guards.set_whitelist("bot", ["shop.read"], by="ops")

        assert w.p.submit(w.plan("shop.read")).status is PlanStatus.SUCCEEDED
        denied = w.p.submit(w.plan("shop.buy"))

        assert denied.status is PlanStatus.DENIED
        assert "agent 'bot' may not use shop.buy" in reasons(denied)
        assert w.tools["shop.buy"].calls == []
        assert w.guards.policy_input(_manifest(w, "shop.buy"), [_spec(w)]) == {"whitelisted": False}

    def test_rate_limit_denies_in_the_window_and_recovers(self, e2e_url):
        """Two plans a minute per agent: the third is denied, the next minute it runs."""
        w = World(
            e2e_url, policy="default", rate_limits=(RateLimit(scope="agent", key="*", limit=2),)
        )
        assert w.p.submit(w.plan()).status is PlanStatus.SUCCEEDED
        assert w.p.submit(w.plan()).status is PlanStatus.SUCCEEDED

        third = w.p.submit(w.plan())

        assert third.status is PlanStatus.DENIED
        assert any(r.startswith("rate limit: agent 'bot' used 2 of 2") for r in reasons(third))
        w.clock.advance(timedelta(seconds=120))
        assert w.p.submit(w.plan()).status is PlanStatus.SUCCEEDED


class TestBudgets:
    def test_over_budget_routes_to_approval_then_runs_when_approved(self, e2e_url):
        """600 + 600 > 1000: approval by a supervisor (the policy's reason and the guard's)."""
        w = World(e2e_url, policy="default", budgets=(Budget(scope="agent", key="*", limit=1000),))
        assert w.p.submit(w.plan(amount=600)).status is PlanStatus.SUCCEEDED

        over = w.p.submit(w.plan(amount=600))

        assert over.status is PlanStatus.AWAITING_APPROVAL
        day = w.clock.now().strftime("%Y-%m-%d")
        expected = f"budget budget:agent:bot ({day}): 600 spent + 600 > 1000"
        assert reasons(over).count(expected) == 2  # the policy's, then the gateway's
        assert len(w.tools["shop.buy"].calls) == 1  # the first plan only
        done = w.p.approve(over.plan_id, "sue", roles=["supervisor"])
        assert done.status is PlanStatus.SUCCEEDED
        assert w.store.counter_sum("budget:agent:bot", day)[1] == 1200

    def test_a_deny_setting_in_data_json_denies(self, e2e_url, tmp_path):
        """data.proctor.settings.budget_exceeded = "deny" makes the policy deny over budget."""
        import json
        import shutil

        from proctor.policy.bundle_io import default_bundle_path
        from proctor.policy.engine import RegoPolicyEngine

        bundle = tmp_path / "bundle"
        shutil.copytree(default_bundle_path(), bundle)
        data = json.loads((bundle / "data.json").read_text())
        data["proctor"]["settings"]["budget_exceeded"] = "deny"
        (bundle / "data.json").write_text(json.dumps(data))
        w = World(
            e2e_url,
            policy=RegoPolicyEngine.from_directory(bundle),
            budgets=(Budget(scope="agent", key="*", limit=1000),),
        )
        assert w.p.submit(w.plan(amount=600)).status is PlanStatus.SUCCEEDED

        over = w.p.submit(w.plan(amount=600))

        assert over.status is PlanStatus.DENIED
        assert len(w.tools["shop.buy"].calls) == 1

    def test_a_plan_rejected_meanwhile_keeps_no_reservation(self, tmp_path):
        """A confirmation re-checks the budget of a plan decided before the budget existed,
        reserving its amount. If the plan was rejected since the confirmation read it (its
        ``on_finish`` released nothing: it held nothing), the re-check must not reserve for
        it: the reservation would never be released. Here the stale read is handed to the
        re-check directly, the race's window."""
        url = f"sqlite:///{tmp_path / 'race.db'}"
        before = World(url, policy="default")
        waiting = before.p.submit(before.plan("shop.mail", amount=300, external=True))
        assert waiting.status is PlanStatus.AWAITING_CONFIRMATION
        w = World(url, policy="default", budgets=(Budget(scope="agent", key="*", limit=1000),))
        stale = w.p.get(waiting.plan_id)
        assert w.p.reject(waiting.plan_id, "alice").status is PlanStatus.REJECTED

        w.p.gateway._recheck_guards(stale)

        day = w.clock.now().strftime("%Y-%m-%d")
        assert w.store.counter_sum("budget:agent:bot", day)[1] == 0
        assert waiting.plan_id not in w.store.list_state("reservation")
        with pytest.raises(InvalidTransitionError, match="rejected"):
            w.p.confirm(waiting.plan_id, "alice")
        assert w.tools["shop.mail"].calls == []


class TestBreaker:
    def test_errors_trip_it_execute_becomes_approve_and_a_trial_closes_it(self, e2e_url):
        """Three failures open the breakers; agentic plans need approval, confirmed ones wait;
        after open_seconds a trial runs and closes it."""
        settings = BreakerSettings(min_calls=3, error_rate=0.5, open_seconds=60, trials=1)
        w = World(e2e_url, policy="default", breaker=settings)
        waiting = w.p.submit(w.plan("shop.mail", external=True))
        for _ in range(3):
            assert w.p.submit(w.plan("shop.flaky")).status is PlanStatus.FAILED
        assert {e["data"]["breaker"] for e in w.events("breaker.opened")} == {
            "action:shop.flaky",
            "agent:bot",
        }

        held = w.p.submit(w.plan("shop.buy"))
        with pytest.raises(ConflictError, match="circuit breaker agent:bot is open"):
            w.p.confirm(waiting.plan_id, "alice")

        assert held.status is PlanStatus.AWAITING_APPROVAL
        assert "circuit breaker agent:bot is open: agentic execution is off" in reasons(held)
        assert w.tools["shop.buy"].calls == []
        # An approver's decision is not held by the breaker.
        assert w.p.approve(held.plan_id, "sue", roles=["supervisor"]).status is (
            PlanStatus.SUCCEEDED
        )
        w.clock.advance(timedelta(seconds=61))
        assert w.guards.policy_input(_manifest(w, "shop.buy"), [_spec(w)]) == {
            "breakers": {"agent:bot": "half_open"}
        }
        assert w.guards.status()["breakers"]["agent:bot"]["state"] == "open"  # still stored
        # The confirmed plan now runs as the half-open breaker's one trial, and closes it.
        assert w.p.confirm(waiting.plan_id, "alice").status is PlanStatus.SUCCEEDED
        assert w.guards.status()["breakers"]["agent:bot"]["state"] == "closed"
        assert [e["data"]["breaker"] for e in w.events("breaker.half_open")] == ["agent:bot"]
        assert "agent:bot" in [e["data"]["breaker"] for e in w.events("breaker.closed")]
        assert w.p.submit(w.plan("shop.buy")).status is PlanStatus.SUCCEEDED
        assert w.p.verify().ok


class TestAutonomy:
    def test_promotion_suggested_after_n_accepted_then_opted_in(self, e2e_url):
        """confirm level: each plan waits for alice; after 3 accepted, promotion to auto."""
        w = World(
            e2e_url, policy="default", autonomy=AutonomySettings(min_accepted=3, min_rate=1.0)
        )
        w.guards.set_autonomy("alice", "shop.buy", "confirm", by="alice")
        for _i in range(3):
            rec = w.p.submit(w.plan())
            assert rec.status is PlanStatus.AWAITING_CONFIRMATION
            assert "the user's autonomy level is confirm: the user confirms" in reasons(rec)
            assert w.guards.suggestions("alice") == []
            w.p.confirm(rec.plan_id, "alice")

        [suggestion] = w.guards.suggestions("alice")
        assert (suggestion["from"], suggestion["to"], suggestion["accepted"]) == (
            "confirm",
            "auto",
            3,
        )
        assert w.guards.answer_promotion("alice", "shop.buy", accept=True) == "auto"
        assert w.guards.suggestions("alice") == []
        assert w.p.submit(w.plan()).status is PlanStatus.SUCCEEDED
        types = [e.type for e in w.store.read_events(limit=100_000)]
        assert types.count("autonomy.changed") == 2
        assert types.count("autonomy.promotion_suggested") == 1

    def test_auto_with_a_tolerance(self, e2e_url):
        """auto below 5000: 4999 runs agentically, 5000 waits for the user."""
        w = World(e2e_url, policy="default")
        w.guards.set_autonomy("alice", "shop.buy", "auto", below=5000, by="alice")

        assert w.p.submit(w.plan(amount=4999)).status is PlanStatus.SUCCEEDED
        at = w.p.submit(w.plan(amount=5000))

        assert at.status is PlanStatus.AWAITING_CONFIRMATION
        assert "the user's autonomy level is auto below 5000: the user confirms" in reasons(at)


def _spec(w):
    return w.p.gateway.catalog.get("shop.buy")


def _manifest(w, action):
    from proctor.core.plans import Plan

    return Plan.from_dict(w.plan(action))


class TestReviewSampling:
    def test_a_configured_floor_samples_auto_executed_plans(self, e2e_url):
        """[guards] review_sample_rate = 1: every auto-executed plan waits for a reviewer."""
        w = World(e2e_url, policy="default", review_sample_rate=1.0)
        ran = w.p.submit(w.plan())
        waiting = w.p.submit(w.plan("shop.mail", external=True))

        assert ran.status is PlanStatus.SUCCEEDED
        assert ran.review is True
        assert "review.sampled" in w.types(ran.plan_id)
        assert waiting.review is False  # not auto-executed: a human looks anyway
        assert [r.plan_id for r in w.guards.review_queue()] == [ran.plan_id]
        w.p.mark_review(ran.plan_id, "wrong", reviewer="rita", note="wrong shop")
        assert w.p.get(ran.plan_id).review_verdict == "wrong"
        assert w.guards.review_queue() == []
        w.p.complain(ran.plan_id, by="alice", reason="not what I asked")
        assert {"review.marked", "complaint.filed"} <= set(w.types(ran.plan_id))

    def test_no_floor_leaves_the_policys_rate(self, e2e_url):
        """Without the setting a general action is never sampled by the default policy."""
        w = World(e2e_url, policy="default")
        assert w.p.submit(w.plan()).review is False


class TestSettings:
    @pytest.mark.parametrize("bad", [-0.1, 1.5, "half", True])
    def test_a_bad_review_rate_names_the_field(self, bad):
        """[guards] review_sample_rate outside 0..1 (or not a number) is a ConfigError."""
        from proctor.config import guard_settings
        from proctor.errors import ConfigError

        with pytest.raises(ConfigError) as e:
            guard_settings({"review_sample_rate": bad})
        assert e.value.field == "guards.review_sample_rate"

    def test_the_guards_section_reads_every_table(self):
        """rate_limits, budgets, breaker, anomaly, autonomy and the review floor."""
        from proctor.config import guard_settings

        g = guard_settings(
            {
                "rate_limits": [{"scope": "agent", "key": "*", "limit": 10}],
                "budgets": [{"scope": "user", "key": "*", "limit": 500, "on_exceed": "deny"}],
                "breaker": {"min_calls": 3},
                "anomaly": {"rate_factor": 2},
                "autonomy": {"min_accepted": 5, "min_rate": 0.8},
                "review_sample_rate": 0.25,
            }
        )

        assert g.rate_limits[0].limit == 10
        assert g.budgets[0].on_exceed == "deny"
        assert (g.breaker.min_calls, g.anomaly.rate_factor) == (3, 2)
        assert (g.autonomy.min_accepted, g.review_sample_rate) == (5, 0.25)


class TestLibrary:
    def test_set_autonomy_from_the_library(self, e2e_url):
        """Proctor.set_autonomy is the guards' set_autonomy (audited)."""
        w = World(e2e_url, policy="default")
        w.p.set_autonomy("alice", "shop.buy", "propose", by="alice")

        assert w.p.submit(w.plan()).status is PlanStatus.AWAITING_CONFIRMATION
        assert "autonomy.changed" in w.types()
