"""OpenAI Agents SDK: the SDK's own ``agents.testing.ScriptedModel`` drives a real ``Runner``
whose tools are governed by Proctor, in process and against a real ``proctor serve``;
approvals interrupt the run and resume its state."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

pytest.importorskip("agents", reason="the openai-agents extra is not installed")

import datetime as dt

from agents import Agent, RunContextWrapper, Runner, RunState, function_tool, set_tracing_disabled
from agents.testing import ModelCall, ModelStep, ScriptedModel, assistant_message, function_call
from agents.tool_guardrails import ToolGuardrailFunctionOutput, ToolInputGuardrail
from pydantic import BaseModel

from proctor.errors import ConfigError
from proctor.integrations.openai_agents import ProctorTools

from .conftest import REFUND_SCHEMA, assert_audited

set_tracing_disabled(True)  # no trace export: these runs never leave the machine

CALLS: list[tuple[int, str]] = []


def refund(amount: int, customer: str) -> dict[str, Any]:
    """Refund a customer.

    Args:
        amount: Amount in minor units.
        customer: The customer id.
    """
    CALLS.append((amount, customer))
    return {"refunded": amount, "customer": customer}


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.clear()


def _echo(call: ModelCall) -> list[Any]:
    """The model's second turn: it answers with the tool outputs it read."""
    items = [call.input] if isinstance(call.input, str) else list(call.input)
    outputs = [
        i["output"]
        for i in items
        if isinstance(i, dict) and i.get("type") == "function_call_output"
    ]
    return [
        assistant_message(" | ".join(o if isinstance(o, str) else json.dumps(o) for o in outputs))
    ]


def scripted(*calls: dict[str, Any]) -> ScriptedModel:
    """The SDK's own deterministic test model: asks for ``calls``, then echoes the outputs."""
    return ScriptedModel(
        [
            [
                function_call("refund", args, call_id=f"call_{i}_{args['amount']}")
                for i, args in enumerate(calls)
            ],
            ModelStep.respond(_echo),
            ModelStep.respond(_echo),
        ]
    )


def agent(target, model: ScriptedModel) -> tuple[Agent, ProctorTools]:
    governance = ProctorTools(
        target,
        [refund],
        agent_id="bot",
        on_behalf_of="alice",
        specs={"refund": {"category": "financial", "params_schema": REFUND_SCHEMA}},
    )
    return Agent(name="support", model=model, tools=governance.tools), governance


def run(coro):
    return asyncio.run(coro)


class TestInProcess:
    def test_execute(self, proctor):
        """An allowed call runs once, in Proctor; the model reads its result."""
        a, _ = agent(proctor, scripted({"amount": 50, "customer": "c1"}))

        result = run(Runner.run(a, "refund c1"))

        assert json.loads(result.final_output) == {"customer": "c1", "refunded": 50}
        assert CALLS == [(50, "c1")]
        (plan,) = proctor.plans()
        assert_audited(proctor, plan.plan_id, "policy.decided", "step.succeeded", "plan.finished")

    def test_deny_is_a_rejection_the_model_reads(self, proctor):
        """A denied call never runs: the guardrail rejects it with Proctor's reasons."""
        a, _ = agent(proctor, scripted({"amount": 50_000, "customer": "c1"}))

        result = run(Runner.run(a, "refund c1"))

        assert "denied" in result.final_output
        assert "10000 or more are not allowed" in result.final_output
        assert CALLS == []
        (plan,) = proctor.plans()
        assert plan.status.value == "denied"
        assert any(
            g.output.output_info and g.output.output_info["kind"] == "denied"
            for g in result.tool_input_guardrail_results
        )

    def test_invalid_arguments_are_rejected(self, proctor):
        """Arguments that break the action's schema reach the model as an error."""
        a, _ = agent(proctor, scripted({"amount": 5, "customer": "c1", "extra": 1}))

        result = run(Runner.run(a, "refund c1"))

        assert "invalid arguments" in result.final_output
        assert CALLS == []

    def test_approve_interrupts_and_resumes_the_run_state(self, proctor):
        """approve → needs_approval interrupts; after Proctor's approval the state resumes
        and the tool output is the executed result."""
        a, governance = agent(proctor, scripted({"amount": 500, "customer": "c2"}))

        async def scenario():
            first = await Runner.run(a, "refund c2")
            (item,) = first.interruptions
            plan_id = governance.plan_id(item, first)
            assert proctor.get(plan_id).status.value == "awaiting_approval"
            state = first.to_state()
            # Not decided yet: nothing to apply, the call still waits.
            waiting = await governance.apply_decisions(state)
            assert [w.call_id for w in waiting] == [item.call_id]
            assert CALLS == []

            await asyncio.to_thread(proctor.approve, plan_id, "fiona", roles=["finance"])
            assert await governance.apply_decisions(state) == []
            return plan_id, await Runner.run(a, state)

        plan_id, result = run(scenario())

        assert not result.interruptions
        assert json.loads(result.final_output) == {"customer": "c2", "refunded": 500}
        assert CALLS == [(500, "c2")]
        assert_audited(
            proctor, plan_id, "plan.routed", "approval.granted", "step.succeeded", "plan.finished"
        )
        assert proctor.verify().ok

    def test_sdk_approval_alone_runs_nothing(self, proctor):
        """Approving the interruption in the SDK without Proctor's approval executes nothing:
        the model is told the call still waits."""
        a, _ = agent(proctor, scripted({"amount": 600, "customer": "c3"}))

        async def scenario():
            first = await Runner.run(a, "refund c3")
            state = first.to_state()
            state.approve(first.interruptions[0])
            return await Runner.run(a, state)

        result = run(scenario())

        assert "waits for approval by finance" in result.final_output
        assert CALLS == []

    def test_confirm_interrupts_until_the_user_confirms(self, proctor):
        """confirm → the run stops with the call in ``interruptions``; once the user confirms
        in Proctor the resumed run reads the executed result."""
        a, governance = agent(proctor, scripted({"amount": 75, "customer": "c5"}))

        async def scenario():
            first = await Runner.run(a, "refund c5")
            (item,) = first.interruptions
            plan_id = governance.plan_id(item, first)
            assert proctor.get(plan_id).status.value == "awaiting_confirmation"
            await asyncio.to_thread(proctor.confirm, plan_id, "alice")
            state = first.to_state()
            assert await governance.apply_decisions(state) == []
            return plan_id, await Runner.run(a, state)

        plan_id, result = run(scenario())

        assert json.loads(result.final_output) == {"customer": "c5", "refunded": 75}
        assert CALLS == [(75, "c5")]
        assert_audited(proctor, plan_id, "plan.routed", "confirmation.granted", "step.succeeded")

    def test_rejection_reaches_the_model(self, proctor):
        """A human's rejection in Proctor becomes the SDK's rejection, with the comment."""
        a, governance = agent(proctor, scripted({"amount": 700, "customer": "c4"}))

        async def scenario():
            first = await Runner.run(a, "refund c4")
            (item,) = first.interruptions
            await asyncio.to_thread(
                proctor.reject,
                governance.plan_id(item, first),
                "fiona",
                roles=["finance"],
                comment="not eligible",
            )
            state = first.to_state()
            await governance.apply_decisions(state)
            return await Runner.run(a, state)

        result = run(scenario())

        assert "rejected by fiona: not eligible" in result.final_output
        assert CALLS == []


def _one_call(name: str, args: dict[str, Any], call_id: str = "call_0") -> ScriptedModel:
    return ScriptedModel([[function_call(name, args, call_id=call_id)], ModelStep.respond(_echo)])


def _outputs(result: Any) -> list[Any]:
    return [i.output for i in result.new_items if type(i).__name__ == "ToolCallOutputItem"]


class TestTheToolsOwnGates:
    """What the tool itself declares is honoured before Proctor runs anything."""

    def test_a_tool_with_input_guardrails_is_refused(self, proctor):
        """The SDK runs tool guardrails after ``needs_approval``, where Proctor runs an allowed
        call: a guardrail could not stop it, so such a tool is not governed silently."""

        async def no_vip(data):
            return ToolGuardrailFunctionOutput.reject_content("never the VIP")

        guarded = function_tool(
            refund,
            tool_input_guardrails=[ToolInputGuardrail(guardrail_function=no_vip, name="no_vip")],
        )

        with pytest.raises(ConfigError, match="tool input guardrails"):
            ProctorTools(proctor, [guarded], agent_id="bot", on_behalf_of="alice")
        assert proctor.plans() == []

    def test_own_needs_approval_comes_first(self, proctor):
        """A tool marked ``needs_approval=True`` interrupts and nothing reaches Proctor (so
        nothing runs); once approved in the SDK, Proctor decides and runs it once."""
        gated = function_tool(refund, needs_approval=True)
        governance = ProctorTools(
            proctor,
            [gated],
            agent_id="bot",
            on_behalf_of="alice",
            specs={"refund": {"category": "financial", "params_schema": REFUND_SCHEMA}},
        )
        a = Agent(
            name="support",
            model=_one_call("refund", {"amount": 40, "customer": "g1"}),
            tools=governance.tools,
        )

        async def scenario():
            first = await Runner.run(a, "refund g1")
            (item,) = first.interruptions
            assert CALLS == [] and proctor.plans() == []
            state = first.to_state()
            assert await governance.apply_decisions(state) == []  # not Proctor's to decide
            assert [i.call_id for i in state.get_interruptions()] == [item.call_id]
            state.approve(item)
            return await Runner.run(a, state)

        result = run(scenario())

        assert json.loads(result.final_output) == {"customer": "g1", "refunded": 40}
        assert CALLS == [(40, "g1")]
        (plan,) = proctor.plans()
        assert plan.status.value == "succeeded"

    def test_own_needs_approval_rejected_runs_nothing(self, proctor):
        """A callable ``needs_approval`` is asked too; rejecting in the SDK submits nothing."""
        asked: list[dict[str, Any]] = []

        async def big(ctx, params, call_id):
            asked.append(params)
            return params["amount"] > 10

        governance = ProctorTools(
            proctor,
            [function_tool(refund, needs_approval=big)],
            agent_id="bot",
            on_behalf_of="alice",
        )
        a = Agent(
            name="support",
            model=_one_call("refund", {"amount": 40, "customer": "g2"}),
            tools=governance.tools,
        )

        async def scenario():
            first = await Runner.run(a, "refund g2")
            state = first.to_state()
            state.reject(first.interruptions[0], rejection_message="no")
            return await Runner.run(a, state)

        result = run(scenario())

        assert asked == [{"amount": 40, "customer": "g2"}]
        assert "no" in result.final_output
        assert CALLS == [] and proctor.plans() == []


class Order(BaseModel):
    sku: str
    qty: int


def ship(order: Order, when: dt.date) -> str:
    """Ship an order."""
    return f"{order.qty} x {order.sku} on {when.strftime('%A %d %B')}"


def whoami(ctx: RunContextWrapper[dict], greeting: str) -> str:
    """Greet the current user."""
    return f"{greeting}, {ctx.context['user']}"


@function_tool
def charge(amount: int) -> str:
    """Charge the card."""
    raise RuntimeError("card declined")


class TestTheToolRunsAsTheSdkRunsIt:
    def test_typed_arguments_are_parsed(self, proctor):
        """A plain function's pydantic and date parameters get parsed values, as
        ``function_tool`` gives them, not the raw JSON."""
        governance = ProctorTools(proctor, [ship], agent_id="bot", on_behalf_of="alice")
        args = {"order": {"sku": "A", "qty": 2}, "when": "2026-01-02"}
        a = Agent(name="s", model=_one_call("ship", args), tools=governance.tools)

        result = run(Runner.run(a, "ship"))

        assert _outputs(result) == ["2 x A on Friday 02 January"]
        (plan,) = proctor.plans()
        assert plan.status.value == "succeeded"
        assert plan.steps[0].result == "2 x A on Friday 02 January"

    @pytest.mark.parametrize("tool", [whoami, function_tool(whoami)], ids=["plain", "tool"])
    def test_a_tool_taking_the_run_context_is_refused(self, proctor, tool):
        """Proctor runs an approved call outside the run: there is no context to give."""
        with pytest.raises(ConfigError, match="takes the run context"):
            ProctorTools(proctor, [tool], agent_id="bot", on_behalf_of="alice")

    def test_a_raising_tool_fails_the_plan(self, proctor):
        """The exception reaches Proctor (the plan fails, audited); the model reads it."""
        governance = ProctorTools(proctor, [charge], agent_id="bot", on_behalf_of="alice")
        a = Agent(name="s", model=_one_call("charge", {"amount": 5}), tools=governance.tools)

        result = run(Runner.run(a, "charge"))

        (plan,) = proctor.plans()
        assert plan.status.value == "failed"
        assert "card declined" in (plan.error or plan.steps[0].error or "")
        assert_audited(proctor, plan.plan_id, "step.started", "step.failed")
        (out,) = _outputs(result)
        assert "failed" in out and "card declined" in out


class TestCallIdsAreScopedToTheRun:
    def test_a_reused_call_id_in_another_run_runs_again(self, proctor):
        """Two runs whose model reuses ``call_0`` with the same arguments are two plans and
        two refunds, not the first run's result told to the second."""
        governance = ProctorTools(proctor, [refund], agent_id="bot", on_behalf_of="alice")
        outputs = []
        for conversation in range(2):
            a = Agent(
                name="s",
                model=_one_call("refund", {"amount": 20, "customer": "r1"}),
                tools=governance.tools,
            )
            outputs += _outputs(run(Runner.run(a, f"conversation {conversation}")))

        assert CALLS == [(20, "r1"), (20, "r1")]
        assert len(proctor.plans()) == 2
        assert len(outputs) == 2

    def test_the_scope_survives_a_serialized_run_state(self, proctor):
        """The resumed run (from ``to_json``) finds the plan the first run created: the
        approved call runs once and its result is what the model reads."""
        a, governance = agent(proctor, scripted({"amount": 500, "customer": "s1"}))

        async def scenario():
            first = await Runner.run(a, "refund s1")
            (item,) = first.interruptions
            plan_id = governance.plan_id(item, first)
            await asyncio.to_thread(proctor.approve, plan_id, "fiona", roles=["finance"])
            state = await RunState.from_json(a, first.to_state().to_json())
            assert governance.plan_id(item, state) == plan_id
            assert await governance.apply_decisions(state) == []
            return await Runner.run(a, state)

        result = run(scenario())

        assert json.loads(result.final_output) == {"customer": "s1", "refunded": 500}
        assert CALLS == [(500, "s1")]
        assert len(proctor.plans()) == 1


@pytest.mark.server
@pytest.mark.slow
class TestOverHttp:
    """Against a real ``proctor serve`` subprocess: the server runs the tool, humans decide
    through the API, the run interrupts and resumes its state the same way."""

    def test_execute_approve_and_deny_in_one_turn(self, served):
        """The small refund runs, the large one interrupts until finance approves over HTTP,
        the huge one is rejected with the reasons; all three audited."""
        a, governance = agent(
            served.client("bot"),
            scripted(
                {"amount": 30, "customer": "h1"},
                {"amount": 800, "customer": "h2"},
                {"amount": 60_000, "customer": "h3"},
            ),
        )

        async def scenario():
            first = await Runner.run(a, "refunds")
            (item,) = first.interruptions
            assert item.call_id == "call_1_800"
            assert served.calls("h1", "h2", "h3") == [(30, "h1")]
            plan_id = governance.plan_id(item, first)
            await asyncio.to_thread(served.client("fiona").approve, plan_id)
            state = first.to_state()
            assert await governance.apply_decisions(state) == []
            return plan_id, await Runner.run(a, state)

        plan_id, result = run(scenario())

        parts = result.final_output.split(" | ")
        results = sorted((json.loads(p) for p in parts if p.startswith("{")), key=str)
        (huge,) = [p for p in parts if not p.startswith("{")]
        assert [r["refunded"] for r in results] == [30, 800]
        assert all(r["by"] == "server" for r in results)
        assert "denied" in huge and "10000 or more are not allowed" in huge
        assert served.calls("h1", "h2", "h3") == [(30, "h1"), (800, "h2")]
        served.assert_audited(
            plan_id, "policy.decided", "approval.granted", "step.succeeded", "plan.finished"
        )
        denied = served.plan_for("h3")
        assert served.client("bot").get(denied)["status"] == "denied"
        types = served.assert_audited(denied, "plan.submitted", "policy.decided", "plan.routed")
        assert "step.started" not in types
        served.assert_audited(
            served.plan_for("h1"), "policy.decided", "step.succeeded", "plan.finished"
        )

    def test_confirm_by_the_user(self, served):
        """confirm → interruption; after the user confirms over HTTP the state resumes."""
        a, governance = agent(served.client("bot"), scripted({"amount": 65, "customer": "h4"}))

        async def scenario():
            first = await Runner.run(a, "refund h4")
            (item,) = first.interruptions
            plan_id = governance.plan_id(item, first)
            outcome = await governance.outcome(item, first)
            assert outcome is not None and outcome.status == "awaiting_confirmation"
            await asyncio.to_thread(served.client("alice").confirm, plan_id)
            state = first.to_state()
            await governance.apply_decisions(state)
            return plan_id, await Runner.run(a, state)

        plan_id, result = run(scenario())

        assert json.loads(result.final_output)["refunded"] == 65
        assert served.calls("h4") == [(65, "h4")]
        served.assert_audited(plan_id, "confirmation.granted", "step.succeeded", "plan.finished")
