"""One test per scenario of DESIGN section 2, against the default Rego policy."""

from __future__ import annotations

import pytest

from proctor import Proctor
from proctor.demo import scenarios
from proctor.demo.tools import WORLD


@pytest.fixture
def p():
    WORLD.reset()
    with Proctor.in_memory() as instance:
        yield instance


class TestScenarios:
    def test_travel_low_cost_executes_high_cost_needs_step_up(self, p):
        """Travel scores 12 (hybrid); a low-cost booking runs, a costly payment needs finance
        approval with step-up."""
        r = scenarios.travel(p)
        assert r.scores == {"risk": 2, "auditability": 3, "ux": 4, "recovery": 2, "cost": 1}
        assert (r.total, r.pattern, r.outcome, r.status) == (12, "hybrid", "execute", "succeeded")
        big = r.extra[0]
        assert big["decided_status"] == "awaiting_approval"
        assert big["outcome"] == "approve"
        assert "step-up" in big["waits_for"]
        assert big["status"] == "succeeded"
        assert r.notes == [
            "second plan, business class to Tokyo (640000): total 13 → hybrid,"
            " decision approve → awaiting_approval; after fiona's approval: succeeded"
        ]

    def test_subscription_waits_for_customer(self, p):
        """A subscription change waits for the customer's confirmation."""
        r = scenarios.subscription(p)
        assert (r.outcome, r.decided_status, r.status) == (
            "confirm",
            "awaiting_confirmation",
            "succeeded",
        )
        assert WORLD.subscriptions["cust-42"] == "pro"

    def test_restaurant_executes_with_undo(self, p):
        """A table booking executes with an undo window and the user can undo it."""
        r = scenarios.restaurant(p)
        assert (r.outcome, r.decided_status, r.status) == ("execute", "succeeded", "undone")
        booking = next(iter(WORLD.bookings.values()))
        assert booking["status"] == "cancelled"

    def test_devops_dry_run_then_approval(self, p):
        """DevOps remediation dry-runs, needs SRE approval, and runs staging before production."""
        r = scenarios.devops(p)
        assert (r.outcome, r.decided_status, r.status) == (
            "approve",
            "awaiting_approval",
            "succeeded",
        )
        assert set(r.extra[0]["dry_run"]) == {"s1", "s3"}
        assert [x.split(":")[0] for x in r.ran] == [
            "s1 devops.restart_service",
            "s2 devops.check_health",
            "s3 devops.restart_service",
            "s4 devops.check_health",
        ]

    def test_devops_failing_check_stops_before_production(self, p):
        """If the staging check fails, production is never touched and staging is rolled back."""
        WORLD.services["staging"]["checkout"] = "degraded"

        def broken_restart(params, call):
            return {"state": "still broken"}

        p.gateway.tools.register("proctor.demo.tools:devops_restart", broken_restart)
        rec = p.submit(
            scenarios._plan(
                "ops-bot",
                "oncall",
                "restart",
                [
                    ("devops.restart_service", {"service": "checkout", "environment": "staging"}),
                    ("devops.check_health", {"service": "checkout", "environment": "staging"}),
                    (
                        "devops.restart_service",
                        {"service": "checkout", "environment": "production"},
                    ),
                ],
            )
        )
        rec = p.approve(rec.plan_id, "sam", roles=["sre"])
        assert rec.status.value == "compensated"
        assert [s.status.value for s in rec.steps] == ["compensated", "failed", "skipped"]
        assert WORLD.services["production"]["checkout"] == "degraded"

    def test_procurement_executes_within_limit(self, p):
        """A low-dollar purchase order executes and carries a review sample rate."""
        r = scenarios.procurement(p)
        assert (r.outcome, r.status) == ("execute", "succeeded")
        assert r.extra[0]["review_sample_rate"] == "0.1"

    def test_procurement_over_limit_needs_finance(self, p):
        """A purchase order over the limit waits for finance."""
        rec = p.submit(
            scenarios._plan(
                "procure-bot",
                "carol",
                "big order",
                [
                    (
                        "procurement.create_po",
                        {"supplier": "S", "item": "servers", "quantity": 2, "amount": 2_500_000},
                    )
                ],
            )
        )
        assert rec.status.value == "awaiting_approval"
        assert rec.decision["approver_roles"] == ["finance"]

    def test_hr_needs_hr_approval_and_flow_rule_denies_email(self, p):
        """PII search waits for HR (orchestrator-first); with external email it is denied."""
        r = scenarios.hr(p)
        assert (r.pattern, r.outcome, r.decided_status, r.status) == (
            "orchestrator-first",
            "approve",
            "awaiting_approval",
            "succeeded",
        )
        assert r.extra[0]["flow_rule"] == "denied"
        assert r.notes[0].startswith(
            "a second plan that also emails the candidates outside: denied ("
        )

    def test_hr_approver_without_role_is_refused(self, p):
        """An approver without the hr role cannot approve the PII search."""
        from proctor.errors import PermissionDeniedError

        rec = p.submit(
            scenarios._plan(
                "recruit-bot", "hm", "search", [("hr.search_candidates", {"skill": "python"})]
            )
        )
        with pytest.raises(PermissionDeniedError):
            p.approve(rec.plan_id, "fiona", roles=["finance"])

    def test_run_all_verifies(self, p):
        """All scenarios together leave an intact audit log."""
        results = scenarios.run_all(p)
        assert [r.name for r in results] == [
            "travel",
            "subscription",
            "restaurant",
            "devops",
            "procurement",
            "hr",
        ]
        assert p.verify().ok
