"""The default policy bundle, evaluated through the engine on the scenario plans.

The policy leaves out step fields that have their default (docs/policy.md), so most tests read
the decision as the gateway does, through ``Decision.from_policy_output``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from proctor.core.assessment import Adjustment
from proctor.core.decisions import Decision, Outcome
from proctor.errors import PolicyEngineError
from proctor.policy import RegoPolicyEngine, default_bundle_path

BASELINE = {"risk": 2, "auditability": 3, "ux": 4, "recovery": 2, "cost": 1}  # total 12
FIELDS = {
    "outcome",
    "reasons",
    "approvals",
    "approver_roles",
    "dry_run",
    "step_up",
    "undo_window",
    "rollback_ttl",
}
FLOW_DENY = "a plan that reads personal data must not also send external email"
PAY_ADJUSTMENT = Adjustment(axis="risk", delta=1, reason="a payment exceeds auto_payment_max 50000")


@pytest.fixture(scope="module")
def engine() -> RegoPolicyEngine:
    return RegoPolicyEngine.from_directory(default_bundle_path())


def step(
    step_id: str,
    action: str,
    category: str,
    params: dict[str, Any] | None = None,
    *,
    amount: int = 0,
    reversible: bool = True,
) -> dict[str, Any]:
    return {
        "id": step_id,
        "action": action,
        "category": category,
        "params": params or {},
        "amount": amount,
        "reversible": reversible,
        "idempotent": True,
    }


def plan_input(
    *steps: dict[str, Any],
    baseline: dict[str, int] | None = None,
    context: dict[str, Any] | None = None,
    agent: str = "travel-bot",
) -> dict[str, Any]:
    return {
        "contract": 1,
        "plan": {
            "plan_id": "p-123",
            "digest": "sha256:" + "ab" * 32,
            "actor": {
                "type": "agent",
                "name": agent,
                "model_version": "gpt-x-2026-01",
                "agent_id": agent,
            },
            "on_behalf_of": "alice",
            "intent": "scenario",
        },
        "steps": list(steps),
        "baseline": baseline or BASELINE,
        "context": {"sandbox": False} if context is None else context,
    }


def decide(engine: RegoPolicyEngine, value: dict[str, Any]) -> Decision:
    """Evaluate and read the output as the gateway does (defaults for omitted fields)."""
    raw = engine.evaluate(value)
    decision = Decision.from_policy_output(
        raw, [s["id"] for s in value["steps"]], policy_version="v"
    )
    assert not any("malformed" in r for r in decision.plan_reasons), decision.plan_reasons
    return decision


def minimal_input(value: dict[str, Any]) -> dict[str, Any]:
    """The smaller input docs/policy.md recommends: no plan members, steps first."""
    return {
        "steps": [
            {k: s[k] for k in ("id", "category", "amount", "reversible", "params") if k in s}
            for s in value["steps"]
        ],
        "baseline": value["baseline"],
        "baseline_total": sum(value["baseline"].values()),
        "context": {"thresholds": {"hybrid_max": 15}},
    }


def payment(amount: int) -> dict[str, Any]:
    return step(
        "pay",
        "travel.pay",
        "payment",
        {"amount": amount, "currency": "EUR"},
        amount=amount,
    )


TRAVEL_SEARCH = step("search", "travel.search_flights", "read", {"from": "BER", "to": "LIS"})
TRAVEL_BOOK = step("book", "travel.book_flight", "booking", {"flight": "TP 537"})


class TestDecisionShape:
    def test_steps_carry_only_fields_that_differ_from_the_defaults(
        self, engine: RegoPolicyEngine
    ) -> None:
        """A step decision has its outcome and reasons, plus only the non-default fields."""
        out = engine.evaluate(plan_input(TRAVEL_SEARCH, TRAVEL_BOOK, payment(180000)))
        assert set(out["steps"]) == {"search", "book", "pay"}
        assert out["steps"]["search"] == {"outcome": "execute", "reasons": ["read-only look-up"]}
        assert set(out["steps"]["book"]) == {"outcome", "reasons", "undo_window"}
        assert set(out["steps"]["pay"]) == {"outcome", "reasons", "approver_roles", "step_up"}
        for decision in out["steps"].values():
            assert set(decision) <= FIELDS
            assert decision["reasons"]
            assert all(isinstance(r, str) and r for r in decision["reasons"])

    def test_every_step_reads_with_valid_fields(self, engine: RegoPolicyEngine) -> None:
        """Read with the contract's defaults, every step has all eight fields in range."""
        decision = decide(engine, plan_input(TRAVEL_SEARCH, TRAVEL_BOOK, payment(180000)))
        assert [s.step_id for s in decision.steps] == ["search", "book", "pay"]
        for step_decision in decision.steps:
            assert step_decision.reasons
            assert 0 <= step_decision.approvals <= 10
            assert step_decision.undo_window >= 0
            assert step_decision.rollback_ttl == 0
        assert decision.step("search").approvals == 0
        assert decision.step("pay").approvals == 1

    def test_plan_fields(self, engine: RegoPolicyEngine) -> None:
        """The plan part is empty when no plan-level rule applies (all defaults)."""
        out = engine.evaluate(plan_input(TRAVEL_SEARCH))
        assert out["plan"] == {}
        decision = decide(engine, plan_input(TRAVEL_SEARCH))
        assert decision.plan_reasons == ()
        assert decision.adjustments == ()
        assert decision.review_sample_rate == 0

    def test_missing_baseline_axis_fails_closed(self, engine: RegoPolicyEngine) -> None:
        """A baseline without every axis leaves the decision undefined, an engine error."""
        with pytest.raises(PolicyEngineError, match="undefined"):
            engine.evaluate(plan_input(TRAVEL_SEARCH, baseline={"risk": 1}))

    @pytest.mark.parametrize(
        "steps",
        [
            (TRAVEL_SEARCH,),
            (TRAVEL_SEARCH, TRAVEL_BOOK, payment(180000)),
            (payment(100) | {"reversible": False},),
            (step("s1", "x", "pii"), step("s2", "m", "communication", {"external": True})),
            (step("po", "procurement.order", "purchase", {}, amount=100),),
        ],
    )
    def test_minimal_input_decides_the_same(
        self, engine: RegoPolicyEngine, steps: tuple[dict[str, Any], ...]
    ) -> None:
        """The smaller recommended input (with baseline_total) gives the same decision."""
        full = plan_input(*steps)
        assert decide(engine, minimal_input(full)) == decide(engine, full)

    def test_baseline_total_is_used_when_given(self, engine: RegoPolicyEngine) -> None:
        """baseline_total replaces the sum of the axes for the orchestrator guard."""
        value = minimal_input(plan_input(TRAVEL_BOOK)) | {"baseline_total": 16}
        assert decide(engine, value).step("book").outcome is Outcome.APPROVE


class TestTravel:
    def test_low_cost_trip_executes(self, engine: RegoPolicyEngine) -> None:
        """Search, booking and a payment within the limit all execute, with undo windows."""
        decision = decide(engine, plan_input(TRAVEL_SEARCH, TRAVEL_BOOK, payment(18000)))
        assert decision.outcome is Outcome.EXECUTE
        assert decision.step("search").reasons == ("read-only look-up",)
        assert decision.step("search").undo_window == 0
        assert decision.step("book").undo_window == 900
        assert decision.step("pay").undo_window == 900
        assert decision.step("pay").reasons == (
            "payment of 18000 is within auto_payment_max 50000",
        )
        assert decision.adjustments == ()

    def test_high_cost_payment_needs_finance(self, engine: RegoPolicyEngine) -> None:
        """A payment above the limit needs one finance approval with step-up, and adds risk."""
        decision = decide(engine, plan_input(TRAVEL_SEARCH, TRAVEL_BOOK, payment(180000)))
        pay = decision.step("pay")
        assert pay.outcome is Outcome.APPROVE
        assert pay.approvals == 1
        assert pay.approver_roles == ("finance",)
        assert pay.step_up is True
        assert pay.reasons == ("payment of 180000 exceeds auto_payment_max 50000",)
        assert decision.adjustments == (PAY_ADJUSTMENT,)
        assert decision.step("book").outcome is Outcome.EXECUTE  # 12 + 1 stays hybrid

    def test_payment_at_the_limit_executes(self, engine: RegoPolicyEngine) -> None:
        """The limit itself is still within auto_payment_max."""
        out = engine.evaluate(plan_input(payment(50000)))
        assert out["steps"]["pay"]["outcome"] == "execute"

    def test_irreversible_payment_has_no_undo_window(self, engine: RegoPolicyEngine) -> None:
        """Only a reversible payment gets an undo window."""
        pay = payment(100) | {"reversible": False}
        assert decide(engine, plan_input(pay)).step("pay").undo_window == 0
        unknown = {k: v for k, v in payment(100).items() if k != "reversible"}
        decision = decide(engine, plan_input(unknown)).step("pay")
        assert (decision.outcome, decision.undo_window) == (Outcome.EXECUTE, 0)


class TestSubscription:
    def test_subscription_change_is_confirmed_by_the_customer(
        self, engine: RegoPolicyEngine
    ) -> None:
        """Changing a subscription waits for the on-behalf-of user's confirmation."""
        change = step("s1", "billing.change_plan", "subscription", {"plan": "pro"})
        decision = decide(engine, plan_input(change, agent="support-bot")).step("s1")
        assert decision.outcome is Outcome.CONFIRM
        assert decision.approvals == 0
        assert decision.reasons == (
            "changes a customer's payment or subscription: the customer confirms",
        )


class TestRestaurant:
    def test_booking_executes_with_undo_window(self, engine: RegoPolicyEngine) -> None:
        """A table reservation executes and can be undone for 15 minutes."""
        book = step("s1", "restaurant.book_table", "booking", {"guests": 4, "time": "20:00"})
        out = engine.evaluate(plan_input(book, agent="concierge"))
        assert out["steps"]["s1"]["outcome"] == "execute"
        assert out["steps"]["s1"]["undo_window"] == 900


class TestDevOps:
    def test_staging_executes_and_production_needs_sre(self, engine: RegoPolicyEngine) -> None:
        """Staging runs after a dry run; production needs an SRE approval after a dry run."""
        baseline = {"risk": 5, "auditability": 4, "ux": 2, "recovery": 3, "cost": 1}  # 15
        staging = step("stg", "deploy.release", "production", {"environment": "staging"})
        prod = step("prd", "deploy.release", "production", {"environment": "production"})
        out = engine.evaluate(plan_input(staging, prod, baseline=baseline, agent="devops-bot"))
        assert out["steps"]["stg"]["outcome"] == "execute"
        assert out["steps"]["stg"]["dry_run"] is True
        assert out["steps"]["prd"]["outcome"] == "approve"
        assert out["steps"]["prd"]["approver_roles"] == ["sre"]
        assert out["steps"]["prd"]["dry_run"] is True


class TestProcurement:
    def test_small_order_executes_and_is_sampled(self, engine: RegoPolicyEngine) -> None:
        """A purchase order within po_auto_max executes and is sampled for review."""
        order = step("po", "procurement.order", "purchase", {"sku": "A4"}, amount=100000)
        decision = decide(engine, plan_input(order, agent="procurement-bot"))
        assert decision.step("po").outcome is Outcome.EXECUTE
        assert decision.review_sample_rate == pytest.approx(0.1)

    def test_large_order_needs_finance(self, engine: RegoPolicyEngine) -> None:
        """A purchase order above po_auto_max needs one finance approval and is not sampled."""
        order = step("po", "procurement.order", "purchase", {"sku": "server"}, amount=250000)
        decision = decide(engine, plan_input(order, agent="procurement-bot"))
        po = decision.step("po")
        assert po.outcome is Outcome.APPROVE
        assert po.approvals == 1
        assert po.approver_roles == ("finance",)
        assert decision.review_sample_rate == 0


class TestHighRisk:
    def test_hr_candidate_lookup_needs_hr(self, engine: RegoPolicyEngine) -> None:
        """Reading a candidate's personal data needs an HR approval."""
        lookup = step("s1", "hr.read_candidate", "pii", {"candidate": "c-42"})
        decision = decide(engine, plan_input(lookup, agent="hr-bot")).step("s1")
        assert decision.outcome is Outcome.APPROVE
        assert decision.approvals == 1
        assert decision.approver_roles == ("hr",)

    @pytest.mark.parametrize(
        ("category", "group"),
        [
            ("financial", "finance"),
            ("health", "privacy"),
            ("iam", "security"),
            ("legal", "legal"),
        ],
    )
    def test_category_needs_its_group(
        self, engine: RegoPolicyEngine, category: str, group: str
    ) -> None:
        """Each high-risk category is approved by the group named in approver_groups."""
        out = engine.evaluate(plan_input(step("s1", "x.act", category)))
        assert out["steps"]["s1"]["outcome"] == "approve"
        assert out["steps"]["s1"]["approver_roles"] == [group]


class TestCommunication:
    def test_internal_message_executes(self, engine: RegoPolicyEngine) -> None:
        """A message whose recipients are all at internal domains executes."""
        msg = step("s1", "mail.send", "communication", {"to": "bob@example.com"})
        assert engine.evaluate(plan_input(msg))["steps"]["s1"]["outcome"] == "execute"

    def test_external_message_is_confirmed(self, engine: RegoPolicyEngine) -> None:
        """A message to the outside waits for the user's confirmation."""
        msg = step("s1", "mail.send", "communication", {"to": "x@example.com", "external": True})
        assert engine.evaluate(plan_input(msg))["steps"]["s1"]["outcome"] == "confirm"


class TestFlowRule:
    def test_personal_data_and_external_email_deny_the_plan(self, engine: RegoPolicyEngine) -> None:
        """A plan that reads PII and sends external email gets a plan-level deny."""
        lookup = step("s1", "hr.read_candidate", "pii", {"candidate": "c-42"})
        mail = step("s2", "mail.send", "communication", {"to": "x@example.com", "external": True})
        out = engine.evaluate(plan_input(lookup, mail, agent="hr-bot"))
        assert out["plan"]["deny"] == [FLOW_DENY]

    def test_health_data_counts_as_personal_data(self, engine: RegoPolicyEngine) -> None:
        """Health records trigger the same flow rule as PII."""
        lookup = step("s1", "health.read_record", "health")
        mail = step("s2", "mail.send", "communication", {"external": True})
        assert engine.evaluate(plan_input(lookup, mail))["plan"]["deny"] == [FLOW_DENY]

    def test_internal_email_is_allowed(self, engine: RegoPolicyEngine) -> None:
        """Personal data with an internal message does not trigger the flow rule."""
        lookup = step("s1", "hr.read_candidate", "pii")
        mail = step("s2", "mail.send", "communication", {"to": "bob@example.com"})
        assert decide(engine, plan_input(lookup, mail)).plan_reasons == ()


class TestUnknownCategory:
    def test_unknown_category_is_denied(self, engine: RegoPolicyEngine) -> None:
        """A category outside the taxonomy is denied, fail closed, next to normal steps."""
        odd = step("s2", "x.teleport", "teleportation")
        out = engine.evaluate(plan_input(TRAVEL_SEARCH, odd))
        assert out["steps"]["s2"]["outcome"] == "deny"
        assert out["steps"]["s2"]["reasons"] == ["unknown category teleportation: fail closed"]
        assert out["steps"]["search"]["outcome"] == "execute"

    def test_missing_category_is_denied(self, engine: RegoPolicyEngine) -> None:
        """A step without a category still gets a decision: deny."""
        odd = {"id": "s1", "action": "x", "params": {}, "amount": 0}
        assert engine.evaluate(plan_input(odd))["steps"]["s1"]["outcome"] == "deny"

    def test_quotes_in_a_category_survive(self, engine: RegoPolicyEngine) -> None:
        """A category with quotes and a newline is echoed intact, not as broken JSON."""
        odd = step("s1", "x", 'we"ird\\cat\n')
        out = engine.evaluate(plan_input(odd))
        assert out["steps"]["s1"]["reasons"] == ['unknown category we"ird\\cat\n: fail closed']


class TestOrchestratorGuard:
    HIGH: ClassVar[dict[str, int]] = {
        "risk": 5,
        "auditability": 4,
        "ux": 4,
        "recovery": 2,
        "cost": 1,
    }  # total 16

    def test_execute_and_confirm_become_supervisor_approvals(
        self, engine: RegoPolicyEngine
    ) -> None:
        """Above hybrid_max, steps that would execute or confirm need a supervisor."""
        change = step("sub", "billing.change_plan", "subscription")
        decision = decide(engine, plan_input(TRAVEL_BOOK, change, baseline=self.HIGH))
        for step_id in ("book", "sub"):
            guarded = decision.step(step_id)
            assert guarded.outcome is Outcome.APPROVE
            assert guarded.approvals == 1
            assert guarded.approver_roles == ("supervisor",)
            assert guarded.reasons[-1] == (
                "adjusted total 16 exceeds hybrid_max 15: orchestrator-first, "
                "approval by supervisor"
            )
        assert decision.step("book").undo_window == 900  # the base decision is kept

    def test_approvals_and_denials_are_kept(self, engine: RegoPolicyEngine) -> None:
        """The guard leaves steps that already need approval or are denied unchanged."""
        odd = step("odd", "x", "teleportation")
        out = engine.evaluate(plan_input(payment(180000), odd, baseline=self.HIGH))
        assert out["steps"]["pay"]["approver_roles"] == ["finance"]
        assert out["steps"]["odd"]["outcome"] == "deny"

    def test_adjustment_tips_the_total(self, engine: RegoPolicyEngine) -> None:
        """The payment's risk adjustment counts: 15 + 1 = 16 puts the plan above hybrid_max."""
        baseline = {"risk": 4, "auditability": 4, "ux": 4, "recovery": 2, "cost": 1}  # 15
        out = engine.evaluate(plan_input(TRAVEL_BOOK, payment(180000), baseline=baseline))
        assert out["steps"]["book"]["outcome"] == "approve"
        assert out["steps"]["book"]["approver_roles"] == ["supervisor"]

    def test_threshold_comes_from_the_context(self, engine: RegoPolicyEngine) -> None:
        """context.thresholds.hybrid_max replaces the default of 15."""
        context = {"sandbox": False, "thresholds": {"agentic_max": 10, "hybrid_max": 16}}
        out = engine.evaluate(plan_input(TRAVEL_BOOK, baseline=self.HIGH, context=context))
        assert out["steps"]["book"]["outcome"] == "execute"
