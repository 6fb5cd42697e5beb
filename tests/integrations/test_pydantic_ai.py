"""pydantic-ai: a ``FunctionModel`` drives a real agent whose toolset is governed by Proctor, in
process and over HTTP; approvals use pydantic-ai's deferred-tool flow."""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import json
from typing import Any, ClassVar

import pytest

pytest.importorskip("pydantic_ai", reason="the pydantic-ai extra is not installed")

from pydantic import BaseModel
from pydantic_ai import Agent, DeferredToolRequests, DeferredToolResults, ToolApproved
from pydantic_ai.messages import (
    ModelMessage,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel
from pydantic_core import core_schema

from proctor.integrations.pydantic_ai import ProctorToolset

from .conftest import assert_audited

CALLS: list[tuple[int, str]] = []


def refund(amount: int, customer: str) -> dict[str, Any]:
    """Refund a customer."""
    CALLS.append((amount, customer))
    return {"refunded": amount, "customer": customer}


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.clear()


def scripted(*calls: dict[str, Any]) -> FunctionModel:
    """Asks for ``calls`` first; then answers with every tool result it read."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returns = [
            p
            for m in messages
            for p in getattr(m, "parts", [])
            if isinstance(p, ToolReturnPart) or p.part_kind == "retry-prompt"
        ]
        if not returns:
            return ModelResponse(
                parts=[
                    ToolCallPart("refund", args, tool_call_id=f"call_{i}_{args['amount']}")
                    for i, args in enumerate(calls)
                ]
            )
        text = " | ".join(p.model_response_str() for p in returns)
        return ModelResponse(parts=[TextPart(text)])

    return FunctionModel(respond)


def toolset(target) -> ProctorToolset:
    return ProctorToolset.of(
        target,
        [refund],
        agent_id="bot",
        on_behalf_of="alice",
        specs={"refund": {"category": "financial"}},
    )


def go(coro):
    # One asyncio.run per call: ``run_sync`` leaves its event loop open for reuse, which
    # this suite's warnings-as-errors reports as a leak when mixed with ``asyncio.run``.
    return asyncio.run(coro)


def agent(model, ts: ProctorToolset) -> Agent:
    return Agent(model, toolsets=[ts], output_type=[str, DeferredToolRequests])


class TestInProcess:
    def test_execute(self, proctor):
        """An allowed call runs once, in Proctor; the model reads its result."""
        result = go(
            agent(scripted({"amount": 50, "customer": "c1"}), toolset(proctor)).run("refund c1")
        )

        assert json.loads(result.output) == {"customer": "c1", "refunded": 50}
        assert CALLS == [(50, "c1")]
        (plan,) = proctor.plans()
        assert_audited(proctor, plan.plan_id, "policy.decided", "step.succeeded", "plan.finished")

    def test_test_model(self, proctor):
        """pydantic-ai's own TestModel (it calls every tool with generated args) is governed."""
        result = go(Agent(TestModel(), toolsets=[toolset(proctor)]).run("go"))

        assert "refund" in result.output
        assert len(CALLS) == 1
        assert proctor.plans()[0].status.value == "succeeded"

    def test_a_reused_tool_call_id_is_a_new_call(self, proctor):
        """TestModel reuses its tool-call ids and args on every run: each run is still its
        own plan, and the tool runs each time."""
        a = Agent(TestModel(), toolsets=[toolset(proctor)])

        go(a.run("one"))
        go(a.run("two"))

        assert len(CALLS) == 2
        assert len(proctor.plans()) == 2

    def test_deny_is_a_failed_tool_result_the_model_reads(self, proctor):
        """A denied call never runs; the model gets a failed tool result with the reasons."""
        result = go(
            agent(scripted({"amount": 50_000, "customer": "c1"}), toolset(proctor)).run("refund c1")
        )

        assert "denied" in result.output and "10000 or more are not allowed" in result.output
        assert CALLS == []
        assert proctor.plans()[0].status.value == "denied"

    def test_approve_defers_then_resumes_with_the_executed_result(self, proctor):
        """approve → DeferredToolRequests; after Proctor's approval, the results built from its
        record resume the run and the model reads the executed result."""
        ts = toolset(proctor)
        a = agent(scripted({"amount": 500, "customer": "c2"}), ts)

        first = go(a.run("refund c2"))
        assert isinstance(first.output, DeferredToolRequests)
        (part,) = first.output.approvals
        meta = first.output.metadata[part.tool_call_id]
        assert meta["status"] == "awaiting_approval" and meta["approver_roles"] == ["finance"]
        assert CALLS == []
        # Not decided yet: no results to give.
        assert go(ts.results(first.output)).approvals == {}

        proctor.approve(meta["plan_id"], "fiona", roles=["finance"])
        results = go(ts.results(first.output))
        assert isinstance(results.approvals[part.tool_call_id], ToolApproved)
        second = go(a.run(message_history=first.all_messages(), deferred_tool_results=results))

        assert json.loads(second.output) == {"customer": "c2", "refunded": 500}
        assert CALLS == [(500, "c2")]
        assert_audited(
            proctor, meta["plan_id"], "approval.granted", "step.succeeded", "plan.finished"
        )
        assert proctor.verify().ok

    def test_approval_in_pydantic_ai_alone_runs_nothing(self, proctor):
        """Approving the deferred call without Proctor's approval executes nothing."""
        a = agent(scripted({"amount": 600, "customer": "c3"}), toolset(proctor))
        first = go(a.run("refund c3"))
        (part,) = first.output.approvals

        second = go(
            a.run(
                message_history=first.all_messages(),
                deferred_tool_results=DeferredToolResults(approvals={part.tool_call_id: True}),
            )
        )

        assert "waits for approval by finance" in second.output
        assert CALLS == []

    def test_confirm_defers_until_the_user_confirms(self, proctor):
        """confirm → a deferred approval naming the user's confirmation; once the user
        confirms in Proctor the resumed run reads the executed result."""
        ts = toolset(proctor)
        a = agent(scripted({"amount": 90, "customer": "c5"}), ts)

        first = go(a.run("refund c5"))
        (part,) = first.output.approvals
        meta = first.output.metadata[part.tool_call_id]
        assert meta["status"] == "awaiting_confirmation"
        assert "its user's confirmation" in meta["message"]
        proctor.confirm(meta["plan_id"], "alice")
        second = go(
            a.run(
                message_history=first.all_messages(),
                deferred_tool_results=go(ts.results(first.output)),
            )
        )

        assert json.loads(second.output) == {"customer": "c5", "refunded": 90}
        assert CALLS == [(90, "c5")]
        assert_audited(
            proctor, meta["plan_id"], "plan.routed", "confirmation.granted", "step.succeeded"
        )

    def test_rejection_reaches_the_model(self, proctor):
        """A human's rejection in Proctor is a denial with the comment."""
        ts = toolset(proctor)
        a = agent(scripted({"amount": 700, "customer": "c4"}), ts)
        first = go(a.run("refund c4"))
        (part,) = first.output.approvals
        plan_id = first.output.metadata[part.tool_call_id]["plan_id"]

        proctor.reject(plan_id, "fiona", roles=["finance"], comment="duplicate")
        second = go(
            a.run(
                message_history=first.all_messages(),
                deferred_tool_results=go(ts.results(first.output)),
            )
        )

        assert "rejected by fiona: duplicate" in second.output
        assert CALLS == []


@pytest.mark.server
@pytest.mark.slow
class TestOverHttp:
    """Against a real ``proctor serve`` subprocess: the server runs the tool, humans decide
    through the API, the deferred-tool flow resumes the same way."""

    def test_execute_approve_and_deny_in_one_turn(self, served):
        """The small refund runs, the large one is deferred until finance approves over HTTP,
        the huge one is a failed tool result with the reasons; all three audited."""
        ts = toolset(served.client("bot"))
        a = agent(
            scripted(
                {"amount": 20, "customer": "h1"},
                {"amount": 400, "customer": "h2"},
                {"amount": 70_000, "customer": "h3"},
            ),
            ts,
        )

        first = go(a.run("refunds"))
        (part,) = first.output.approvals
        assert part.tool_call_id == "call_1_400"
        assert served.calls("h1", "h2", "h3") == [(20, "h1")]
        plan_id = first.output.metadata[part.tool_call_id]["plan_id"]
        served.client("fiona").approve(plan_id)
        second = go(
            a.run(
                message_history=first.all_messages(),
                deferred_tool_results=go(ts.results(first.output)),
            )
        )

        parts = [json.loads(p) for p in second.output.split(" | ")]
        results = [p for p in parts if "refunded" in p]
        assert sorted(r["refunded"] for r in results) == [20, 400]
        assert all(r["by"] == "server" for r in results)
        (huge,) = [p["error"] for p in parts if "error" in p]  # a failed tool result
        assert "denied" in huge and "10000 or more are not allowed" in huge
        assert served.calls("h1", "h2", "h3") == [(20, "h1"), (400, "h2")]
        served.assert_audited(
            plan_id, "policy.decided", "approval.granted", "step.succeeded", "plan.finished"
        )
        denied = served.plan_for("h3")
        types = served.assert_audited(denied, "plan.submitted", "policy.decided", "plan.routed")
        assert "step.started" not in types
        served.assert_audited(
            served.plan_for("h1"), "policy.decided", "step.succeeded", "plan.finished"
        )

    def test_confirm_by_the_user(self, served):
        """confirm → deferred; after the user confirms over HTTP the run resumes."""
        ts = toolset(served.client("bot"))
        a = agent(scripted({"amount": 66, "customer": "h4"}), ts)

        first = go(a.run("refund h4"))
        (part,) = first.output.approvals
        meta = first.output.metadata[part.tool_call_id]
        assert meta["status"] == "awaiting_confirmation"
        served.client("alice").confirm(meta["plan_id"])
        second = go(
            a.run(
                message_history=first.all_messages(),
                deferred_tool_results=go(ts.results(first.output)),
            )
        )

        assert json.loads(second.output)["refunded"] == 66
        assert served.calls("h4") == [(66, "h4")]
        served.assert_audited(meta["plan_id"], "confirmation.granted", "step.succeeded")


class Item(BaseModel):
    sku: str
    qty: int


class Speed(enum.Enum):
    slow = "slow"
    fast = "fast"


class Opaque:
    """A parameter type pydantic validates (from a string) but cannot write as JSON."""

    def __init__(self, value: str) -> None:
        self.value = value

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        return core_schema.no_info_after_validator_function(cls, core_schema.str_schema())

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> Any:
        return {"type": "string"}


TYPED: list[tuple[Any, ...]] = []


def ship(amount: int, item: Item, when: dt.date, speed: Speed = Speed.slow) -> str:
    """Ship an item."""
    TYPED.append((amount, item, when, speed))
    return f"{item.qty} x {item.sku} on {when.isoformat()} ({speed.value}) for {amount}"


def calling(tool: str, args: dict[str, Any]) -> FunctionModel:
    """Asks for one call of ``tool``; then answers with every tool result it read."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returns = [
            p
            for m in messages
            for p in getattr(m, "parts", [])
            if isinstance(p, ToolReturnPart) or p.part_kind == "retry-prompt"
        ]
        if not returns:
            return ModelResponse(parts=[ToolCallPart(tool, args, tool_call_id="call_typed")])
        return ModelResponse(parts=[TextPart(" | ".join(p.model_response_str() for p in returns))])

    return FunctionModel(respond)


class TestTypedArguments:
    """Tools whose parameters are models, dates and enums: the plan holds their JSON form, and
    the function gets the typed values, as it would without Proctor."""

    ARGS: ClassVar[dict[str, Any]] = {
        "item": {"sku": "A", "qty": 2},
        "when": "2026-01-02",
        "speed": "fast",
    }

    @pytest.fixture(autouse=True)
    def _reset_typed(self):
        TYPED.clear()

    def test_execute_gets_typed_values(self, proctor):
        ts = ProctorToolset.of(proctor, [ship], agent_id="bot", on_behalf_of="alice")

        result = go(agent(calling("ship", {"amount": 5, **self.ARGS}), ts).run("ship"))

        assert result.output == "2 x A on 2026-01-02 (fast) for 5"
        assert [(5, Item(sku="A", qty=2), dt.date(2026, 1, 2), Speed.fast)] == TYPED
        (plan,) = proctor.plans()
        assert plan.steps[0].params == {"amount": 5, **self.ARGS}

    def test_an_approved_call_runs_with_typed_values_from_the_plan(self, proctor):
        """After an approval, the handler reads the plan's JSON params back into the
        function's types (the default enum value included)."""
        ts = ProctorToolset.of(proctor, [ship], agent_id="bot", on_behalf_of="alice")
        args = {"amount": 500, "item": {"sku": "B", "qty": 1}, "when": "2026-03-04"}
        a = agent(calling("ship", args), ts)

        first = go(a.run("ship"))
        (part,) = first.output.approvals
        plan_id = first.output.metadata[part.tool_call_id]["plan_id"]
        assert proctor.get(plan_id).steps[0].params == {**args, "speed": "slow"}
        assert TYPED == []

        proctor.approve(plan_id, "fiona", roles=["finance"])
        second = go(
            a.run(
                message_history=first.all_messages(),
                deferred_tool_results=go(ts.results(first.output)),
            )
        )

        assert second.output == "1 x B on 2026-03-04 (slow) for 500"
        assert [(500, Item(sku="B", qty=1), dt.date(2026, 3, 4), Speed.slow)] == TYPED

    def test_a_single_model_argument_positional_only_and_async(self, proctor):
        async def restock(item: Item, /) -> dict[str, Any]:
            """Restock an item."""
            TYPED.append((item,))
            return {"restocked": item.sku, "qty": item.qty}

        ts = ProctorToolset.of(proctor, [restock], agent_id="bot", on_behalf_of="alice")

        result = go(agent(calling("restock", {"sku": "C", "qty": 3}), ts).run("restock"))

        assert json.loads(result.output) == {"restocked": "C", "qty": 3}
        assert [(Item(sku="C", qty=3),)] == TYPED

    def test_arguments_that_cannot_be_json_are_a_tool_error(self, proctor):
        """A validated argument with no JSON form cannot be a plan: the model reads a tool
        error, nothing is submitted and nothing runs."""

        def tag(label: Opaque) -> str:
            """Tag something."""
            TYPED.append((label,))
            return label.value

        ts = ProctorToolset.of(proctor, [tag], agent_id="bot", on_behalf_of="alice")

        result = go(agent(calling("tag", {"label": "x"}), ts).run("tag"))

        assert "tag was rejected by Proctor (invalid arguments)" in result.output
        assert "cannot be written as JSON" in result.output
        assert TYPED == []
        assert proctor.plans() == []
