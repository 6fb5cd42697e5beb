"""OpenAI Agents SDK: a scripted ``Model`` drives a real ``Runner`` whose tools are governed by
Proctor, in process and over HTTP; approvals interrupt the run and resume its state."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

pytest.importorskip("agents", reason="the openai-agents extra is not installed")

from agents import Agent, Runner, set_tracing_disabled
from agents.items import ModelResponse
from agents.models.interface import Model
from agents.usage import Usage
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

from proctor.integrations.openai_agents import ProctorTools

from .conftest import REFUND_SCHEMA, assert_audited, serving

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


class ScriptedModel(Model):
    """Asks for the scripted tool calls first; then answers with the tool outputs it read."""

    def __init__(self, *calls: dict[str, Any]) -> None:
        self.calls = calls
        self.seen: list[list[Any]] = []

    async def get_response(self, system_instructions, input, *args, **kwargs) -> ModelResponse:
        items = [input] if isinstance(input, str) else list(input)
        self.seen.append(items)
        outputs = [
            i["output"]
            for i in items
            if isinstance(i, dict) and i.get("type") == "function_call_output"
        ]
        if not outputs:
            out: list[Any] = [
                ResponseFunctionToolCall(
                    type="function_call",
                    id=f"fc_{i}",
                    call_id=f"call_{i}_{args['amount']}",
                    name="refund",
                    arguments=json.dumps(args),
                    status="completed",
                )
                for i, args in enumerate(self.calls)
            ]
        else:
            text = " | ".join(o if isinstance(o, str) else json.dumps(o) for o in outputs)
            out = [
                ResponseOutputMessage(
                    id="msg_1",
                    type="message",
                    role="assistant",
                    status="completed",
                    content=[ResponseOutputText(type="output_text", text=text, annotations=[])],
                )
            ]
        return ModelResponse(output=out, usage=Usage(), response_id=None)

    def stream_response(self, *args, **kwargs):
        raise NotImplementedError("these tests do not stream")


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
        a, _ = agent(proctor, ScriptedModel({"amount": 50, "customer": "c1"}))

        result = run(Runner.run(a, "refund c1"))

        assert json.loads(result.final_output) == {"customer": "c1", "refunded": 50}
        assert CALLS == [(50, "c1")]
        (plan,) = proctor.plans()
        assert_audited(proctor, plan.plan_id, "policy.decided", "step.succeeded", "plan.finished")

    def test_deny_is_a_rejection_the_model_reads(self, proctor):
        """A denied call never runs: the guardrail rejects it with Proctor's reasons."""
        a, _ = agent(proctor, ScriptedModel({"amount": 50_000, "customer": "c1"}))

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
        a, _ = agent(proctor, ScriptedModel({"amount": 5, "customer": "c1", "extra": 1}))

        result = run(Runner.run(a, "refund c1"))

        assert "invalid arguments" in result.final_output
        assert CALLS == []

    def test_approve_interrupts_and_resumes_the_run_state(self, proctor):
        """approve → needs_approval interrupts; after Proctor's approval the state resumes
        and the tool output is the executed result."""
        a, governance = agent(proctor, ScriptedModel({"amount": 500, "customer": "c2"}))

        async def scenario():
            first = await Runner.run(a, "refund c2")
            (item,) = first.interruptions
            plan_id = governance.plan_id(item)
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
        a, _ = agent(proctor, ScriptedModel({"amount": 600, "customer": "c3"}))

        async def scenario():
            first = await Runner.run(a, "refund c3")
            state = first.to_state()
            state.approve(first.interruptions[0])
            return await Runner.run(a, state)

        result = run(scenario())

        assert "waits for approval by finance" in result.final_output
        assert CALLS == []

    def test_rejection_reaches_the_model(self, proctor):
        """A human's rejection in Proctor becomes the SDK's rejection, with the comment."""
        a, governance = agent(proctor, ScriptedModel({"amount": 700, "customer": "c4"}))

        async def scenario():
            first = await Runner.run(a, "refund c4")
            (item,) = first.interruptions
            await asyncio.to_thread(
                proctor.reject,
                governance.plan_id(item),
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


@pytest.mark.server
def test_over_http(proctor):
    """Over HTTP the server runs the tool; the run interrupts and resumes the same way."""
    agent(proctor, ScriptedModel())  # registers refund as the server's action handler
    with serving(proctor) as client:
        a, governance = agent(
            client,
            ScriptedModel({"amount": 30, "customer": "h1"}, {"amount": 800, "customer": "h2"}),
        )

        async def scenario():
            first = await Runner.run(a, "refunds")
            (item,) = first.interruptions
            assert item.call_id == "call_1_800"
            assert CALLS == [(30, "h1")]
            await asyncio.to_thread(
                proctor.approve, governance.plan_id(item), "fiona", roles=["finance"]
            )
            state = first.to_state()
            assert await governance.apply_decisions(state) == []
            return await Runner.run(a, state)

        result = run(scenario())

    outputs = [json.loads(part) for part in result.final_output.split(" | ")]
    assert sorted(o["refunded"] for o in outputs) == [30, 800]
    assert sorted(CALLS) == [(30, "h1"), (800, "h2")]
