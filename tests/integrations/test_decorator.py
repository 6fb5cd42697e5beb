"""``@governed`` on a plain function, in process and against a real ``proctor serve``."""

from __future__ import annotations

import pytest

from proctor.integrations import ApprovalPending, ToolDenied, ToolFailed, governed
from proctor.testing import FrozenClock

from .conftest import REFUND_SCHEMA, assert_audited

CALLS: list[tuple[int, str]] = []


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.clear()


def refund_for(target):
    @governed(
        target,
        action="refund",
        agent_id="bot",
        on_behalf_of="alice",
        category="financial",
        params_schema=REFUND_SCHEMA,
    )
    def refund(amount: int, customer: str) -> dict:
        """Refund a customer."""
        CALLS.append((amount, customer))
        return {"refunded": amount}

    return refund


class TestInProcess:
    def test_execute_returns_the_result(self, proctor):
        """An allowed call runs once, in Proctor, and returns the function's result."""
        refund = refund_for(proctor)

        assert refund(amount=50, customer="c1") == {"refunded": 50}

        assert CALLS == [(50, "c1")]
        (plan,) = proctor.plans()
        assert_audited(proctor, plan.plan_id, "plan.submitted", "policy.decided", "step.succeeded")

    def test_calls_without_a_call_id_get_plan_ids_in_time_order(self, proctor):
        """Each call is a new plan whose id starts with the time (from Proctor's clock), so
        the store's plan-id indexes grow at their right edge."""
        refund = refund_for(proctor)
        clock = proctor.gateway.clock = FrozenClock()

        for _ in range(5):
            refund(amount=50, customer="c1")
            clock.advance(1)

        ids = [p.plan_id for p in sorted(proctor.plans(), key=lambda p: p.created_at)]
        assert len(set(ids)) == 5
        assert ids == sorted(ids)
        assert all(i.startswith("tc-20260105090") for i in ids)

    def test_deny_raises_a_readable_tool_error(self, proctor):
        """A denied call never runs; ToolDenied carries the policy's reasons."""
        refund = refund_for(proctor)

        with pytest.raises(ToolDenied, match="10000 or more are not allowed"):
            refund(amount=20_000, customer="c1")

        assert CALLS == []
        (plan,) = proctor.plans()
        assert plan.status.value == "denied"
        assert_audited(proctor, plan.plan_id, "policy.decided", "plan.routed")

    def test_approve_is_pending_until_approved(self, proctor):
        """approve → ApprovalPending with the plan id; once approved, calling again with
        ``plan_id=`` returns the result of the one execution."""
        refund = refund_for(proctor)

        with pytest.raises(ApprovalPending) as pending:
            refund(amount=500, customer="c2")
        assert pending.value.status == "awaiting_approval"
        assert "approval by finance" in str(pending.value)
        with pytest.raises(ApprovalPending):
            refund(plan_id=pending.value.plan_id)  # nobody decided yet
        assert CALLS == []

        proctor.approve(pending.value.plan_id, "fiona", roles=["finance"])

        assert refund(plan_id=pending.value.plan_id) == {"refunded": 500}
        assert CALLS == [(500, "c2")]
        assert_audited(
            proctor,
            pending.value.plan_id,
            "plan.submitted",
            "policy.decided",
            "plan.routed",
            "approval.granted",
            "step.succeeded",
            "plan.finished",
        )
        assert proctor.verify().ok

    def test_confirm_is_pending_until_the_user_confirms(self, proctor):
        """confirm → ApprovalPending naming the user's confirmation; then the result."""
        refund = refund_for(proctor)

        with pytest.raises(ApprovalPending) as pending:
            refund(amount=70, customer="c3")
        assert pending.value.status == "awaiting_confirmation"
        proctor.confirm(pending.value.plan_id, "alice")

        assert refund(plan_id=pending.value.plan_id) == {"refunded": 70}
        assert CALLS == [(70, "c3")]
        assert_audited(proctor, pending.value.plan_id, "confirmation.granted", "step.succeeded")

    def test_rejection_is_a_tool_error(self, proctor):
        """A human's rejection raises ToolDenied with who rejected and why."""
        refund = refund_for(proctor)
        with pytest.raises(ApprovalPending) as pending:
            refund(amount=800, customer="c4")

        proctor.reject(pending.value.plan_id, "fiona", roles=["finance"], comment="duplicate")

        with pytest.raises(ToolDenied, match="rejected by fiona: duplicate"):
            refund(plan_id=pending.value.plan_id)
        assert CALLS == []

    def test_a_failing_tool_is_a_tool_error(self, proctor):
        """A tool that raises is ToolFailed with the error, and the failure is audited."""

        @governed(proctor, action="payments.flaky", agent_id="bot", on_behalf_of="alice")
        def flaky(amount: int) -> None:
            raise RuntimeError("the bank is down")

        with pytest.raises(ToolFailed, match="the bank is down"):
            flaky(amount=1)
        (plan,) = proctor.plans()
        assert_audited(proctor, plan.plan_id, "step.started", "step.failed")


@pytest.mark.server
@pytest.mark.slow
class TestOverHttp:
    """Against a real ``proctor serve``: the server's catalog handler runs, not this body."""

    def test_execute_deny_approve_confirm(self, served):
        """Each route over HTTP, with humans deciding through the API; all audited."""
        bot = served.client("bot")

        @governed(bot, action="refund", agent_id="bot", on_behalf_of="alice")
        def refund(amount: int, customer: str) -> dict:
            """Runs on the server."""
            raise AssertionError("never called on the client")

        assert refund(amount=7, customer="d1") == {
            "by": "server",
            "customer": "d1",
            "refunded": 7,
        }
        with pytest.raises(ToolDenied, match="10000 or more are not allowed"):
            refund(amount=50_000, customer="d2")
        with pytest.raises(ApprovalPending) as approve:
            refund(amount=700, customer="d3")
        with pytest.raises(ApprovalPending) as confirm:
            refund(amount=61, customer="d4")
        assert served.calls("d1", "d2", "d3", "d4") == [(7, "d1")]

        served.client("fiona").approve(approve.value.plan_id)
        served.client("alice").confirm(confirm.value.plan_id)

        assert refund(plan_id=approve.value.plan_id)["refunded"] == 700
        assert refund(plan_id=confirm.value.plan_id)["refunded"] == 61
        assert served.calls("d1", "d2", "d3", "d4") == [(7, "d1"), (700, "d3"), (61, "d4")]
        served.assert_audited(served.plan_for("d1"), "policy.decided", "step.succeeded")
        types = served.assert_audited(served.plan_for("d2"), "policy.decided", "plan.routed")
        assert "step.started" not in types
        served.assert_audited(approve.value.plan_id, "approval.granted", "plan.finished")
        served.assert_audited(confirm.value.plan_id, "confirmation.granted", "plan.finished")


def test_positional_arguments_and_defaults_become_named_params(proctor):
    """A call with positional arguments (and a default left out) submits every parameter by
    name, so the plan states exactly what runs; a call that does not fit raises TypeError."""

    @governed(proctor, action="shop.lookup", agent_id="bot", on_behalf_of="alice")
    def lookup(item: str, limit: int = 3) -> dict:
        return {"item": item, "limit": limit}

    assert lookup("tea") == {"item": "tea", "limit": 3}

    (plan,) = proctor.plans()
    assert plan.steps[0].params == {"item": "tea", "limit": 3}
    with pytest.raises(TypeError):
        lookup("tea", 3, 4)
    assert len(proctor.plans()) == 1  # nothing submitted
