"""``@governed`` on a plain function, in process and against a real ``proctor serve``."""

from __future__ import annotations

import asyncio
import inspect
import threading

import pytest

from proctor.errors import ConfigError, InvalidRequestError, NotFoundError
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

    def test_a_negative_amount_is_refused_and_nothing_runs(self, proctor):
        """The quickstart's refund with ``amount=-5`` is refused naming the amount.

        Regression: its schema (from the signature) has no ``minimum``, and -5 executed at
        once: the guards and the policy read it as no money at stake.
        """

        @governed(
            proctor,
            action="shop.refund",
            agent_id="support-bot",
            on_behalf_of="alice",
            category="payment",
            amount_param="amount",
            baselines={"risk": 3, "auditability": 3, "ux": 3, "recovery": 2, "cost": 1},
        )
        def refund(amount: int, customer: str) -> dict:
            CALLS.append((amount, customer))
            return {"refunded": amount}

        with pytest.raises(InvalidRequestError) as ei:
            refund(amount=-5, customer="c1")

        assert ei.value.field == "steps[0].params.amount"
        assert "negative" in ei.value.message
        assert CALLS == []
        assert proctor.plans() == []
        assert [e.type for e in proctor.events()] == ["plan.rejected"]
        assert refund(amount=0, customer="c1") == {"refunded": 0}

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

        for_bob = governed(bot, action="refund", agent_id="bot", on_behalf_of="bob")(refund)
        with pytest.raises(NotFoundError, match="no call of refund by bot for bob"):
            for_bob(plan_id=approve.value.plan_id)  # alice's plan, read over HTTP
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


class TestSignatures:
    """What a decorated function may look like: async, positional-only, in a script; and
    what is refused at decoration (methods, parameters named like the reserved keywords)."""

    def test_an_async_function_stays_async_and_runs_off_the_event_loop(self, proctor):
        """Awaiting a governed ``async def`` returns its result; the plan is submitted (and
        the tool run) in another thread, so the event loop is not blocked."""
        ran_in: list[int] = []

        @governed(proctor, action="shop.fetch", agent_id="bot", on_behalf_of="alice")
        async def fetch(url: str) -> str:
            ran_in.append(threading.get_ident())
            await asyncio.sleep(0)
            return "body of " + url

        assert inspect.iscoroutinefunction(fetch)

        async def main() -> tuple[str, int]:
            return await fetch(url="x"), threading.get_ident()

        body, loop_thread = asyncio.run(main())
        assert body == "body of x"
        assert len(ran_in) == 1 and ran_in[0] != loop_thread
        (plan,) = proctor.plans()
        assert plan.steps[0].params == {"url": "x"}
        assert_audited(proctor, plan.plan_id, "policy.decided", "step.succeeded")

    def test_an_async_function_pends_and_resumes(self, proctor):
        """approve → ApprovalPending from the await; ``await f(plan_id=...)`` afterwards
        returns the result of the one execution; deny raises ToolDenied."""

        @governed(proctor, action="refund", agent_id="bot", on_behalf_of="alice")
        async def refund(amount: int, customer: str) -> dict:
            CALLS.append((amount, customer))
            return {"refunded": amount}

        with pytest.raises(ApprovalPending) as pending:
            asyncio.run(refund(amount=500, customer="a1"))
        with pytest.raises(ToolDenied, match="10000 or more"):
            asyncio.run(refund(amount=20_000, customer="a2"))
        assert CALLS == []

        proctor.approve(pending.value.plan_id, "fiona", roles=["finance"])

        assert asyncio.run(refund(plan_id=pending.value.plan_id)) == {"refunded": 500}
        assert CALLS == [(500, "a1")]

    def test_positional_only_parameters_are_passed_by_position(self, proctor):
        """The plan names every parameter; the handler passes the positional-only ones by
        position, so the function runs (also after an approval)."""

        @governed(proctor, action="refund", agent_id="bot", on_behalf_of="alice")
        def refund(amount: int, /, customer: str, **notes: str) -> dict:
            CALLS.append((amount, customer))
            return {"refunded": amount, "notes": notes}

        assert refund(30, customer="p1", why="late") == {"refunded": 30, "notes": {"why": "late"}}
        with pytest.raises(ApprovalPending) as pending:
            refund(500, "p2")
        proctor.approve(pending.value.plan_id, "fiona", roles=["finance"])
        assert refund(plan_id=pending.value.plan_id) == {"refunded": 500, "notes": {}}

        assert CALLS == [(30, "p1"), (500, "p2")]
        params = sorted((p.steps[0].params for p in proctor.plans()), key=lambda p: p["amount"])
        assert params == [
            {"amount": 30, "customer": "p1", "why": "late"},
            {"amount": 500, "customer": "p2"},
        ]

    def test_a_keyword_argument_named_like_a_positional_only_one_is_refused(self, proctor):
        """``f(1, a=2)`` for ``f(a, /, **kw)`` cannot be one flat set of params: TypeError,
        nothing submitted."""

        @governed(proctor, action="shop.tag", agent_id="bot", on_behalf_of="alice")
        def tag(a: int, /, **labels: int) -> int:
            return a

        with pytest.raises(TypeError, match="positional-only"):
            tag(1, a=2)
        assert proctor.plans() == []

    def test_an_async_function_with_positional_only_parameters(self, proctor):
        @governed(proctor, action="shop.add", agent_id="bot", on_behalf_of="alice")
        async def add(a: int, b: int, /) -> int:
            return a + b

        assert asyncio.run(add(1, 2)) == 3

    def test_a_method_is_refused_at_decoration(self, proctor):
        """Proctor may run the call after an approval, without the instance: a method is a
        ConfigError that says what to do instead, and nothing is registered."""
        with pytest.raises(ConfigError, match=r"the method .*Payments\.pay:") as refused:

            class Payments:
                @governed(proctor, action="shop.pay", agent_id="bot", on_behalf_of="alice")
                def pay(self, amount: int) -> int:
                    return amount

        assert "module-level function" in (refused.value.hint or "")
        with pytest.raises(ConfigError, match="method"):

            class Factory:
                @governed(proctor, action="shop.make", agent_id="bot", on_behalf_of="alice")
                def make(cls, n: int) -> int:
                    return n

        assert "shop.pay" not in proctor.gateway.catalog
        assert "shop.make" not in proctor.gateway.catalog

    @pytest.mark.parametrize("reserved", ["plan_id", "intent"])
    def test_a_parameter_named_like_a_reserved_keyword_is_refused(self, proctor, reserved):
        """``plan_id=`` and ``intent=`` belong to the governed call: a function with such a
        parameter could never receive it, so it is refused at decoration."""
        namespace: dict[str, object] = {}
        exec(f"def tool({reserved}: str) -> str:\n    return {reserved}\n", namespace)

        with pytest.raises(ConfigError, match=f"parameter '{reserved}' is a keyword") as refused:
            governed(proctor, action="shop.note", agent_id="bot", on_behalf_of="alice")(
                namespace["tool"]
            )
        assert refused.value.field == reserved
        assert "shop.note" not in proctor.gateway.catalog

    def test_in_a_script_the_default_action_is_the_function_name(self, proctor):
        """``__main__.tool`` is no valid action: a script's function is its bare name."""

        def Script_Tool(x: int) -> int:
            return x * 2

        Script_Tool.__module__ = "__main__"
        tool = governed(proctor, agent_id="bot", on_behalf_of="alice")(Script_Tool)

        assert tool(x=4) == 8
        (plan,) = proctor.plans()
        assert plan.steps[0].action == "script_tool"

    def test_in_a_module_the_default_action_is_module_dot_name(self, proctor):
        def lookup(x: int) -> int:
            return x

        tool = governed(proctor, agent_id="bot", on_behalf_of="alice")(lookup)

        assert tool(x=1) == 1
        (plan,) = proctor.plans()
        assert plan.steps[0].action == "test_decorator.lookup"


class TestResumeOnlyOwnPlans:
    """``f(plan_id=...)`` answers only with a plan of ``f``'s own action, agent and user."""

    def test_another_actions_plan_is_not_returned(self, proctor):
        @governed(proctor, action="hr.secret_report", agent_id="bot", on_behalf_of="alice")
        def secret_report() -> dict:
            return {"salary": 123456}

        @governed(proctor, action="notes.post", agent_id="bot", on_behalf_of="alice")
        def post_note(text: str) -> str:
            return text

        secret_report()
        (secret,) = proctor.plans()

        with pytest.raises(NotFoundError, match=r"no call of notes\.post") as refused:
            post_note(plan_id=secret.plan_id)
        assert "salary" not in str(refused.value)
        assert refused.value.field == "plan_id"

    def test_another_agents_or_users_plan_is_not_returned(self, proctor):
        """The same action, called as another agent or for another user: not this call's."""
        refund = refund_for(proctor)
        # The same function (one action may be governed once per function), other callers.
        as_bob = governed(proctor, action="refund", agent_id="bot", on_behalf_of="bob")(
            refund.__wrapped__
        )
        other_bot = governed(proctor, action="refund", agent_id="bot2", on_behalf_of="alice")(
            refund.__wrapped__
        )

        assert refund(amount=20, customer="r1") == {"refunded": 20}
        (plan,) = proctor.plans()

        for caller in (as_bob, other_bot):
            with pytest.raises(NotFoundError, match="no call of refund"):
                caller(plan_id=plan.plan_id)
        assert refund(plan_id=plan.plan_id) == {"refunded": 20}  # its own: the result

    def test_an_unknown_plan_fails_alike(self, proctor):
        refund = refund_for(proctor)
        with pytest.raises(NotFoundError, match="no call of refund by bot for alice"):
            refund(plan_id="tc-nope")
