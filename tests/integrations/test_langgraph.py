"""LangGraph: a scripted chat model drives a real graph whose ToolNode is governed by Proctor,
in process and over HTTP; approvals surface as LangGraph interrupts and resume."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any

import pytest

pytest.importorskip("langgraph", reason="the langgraph extra is not installed")

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import InjectedToolCallId, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import (
    InjectedState,
    InjectedStore,
    ToolNode,
    ToolRuntime,
    tools_condition,
)
from langgraph.types import Command

from proctor.errors import ConfigError
from proctor.integrations._governor import LOW
from proctor.integrations.langgraph import ProctorToolMiddleware, governed_tool_node

from .conftest import assert_audited

CALLS: list[tuple[int, str]] = []


@tool
def refund(amount: int, customer: str) -> dict[str, Any]:
    """Refund a customer."""
    CALLS.append((amount, customer))
    return {"refunded": amount, "customer": customer}


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.clear()


def scripted(*tool_calls: dict[str, Any]) -> GenericFakeChatModel:
    """A chat model that asks for ``tool_calls`` once, then answers "done"."""
    return GenericFakeChatModel(
        messages=iter(
            [
                AIMessage(
                    content="",
                    tool_calls=[
                        {"name": "refund", "args": args, "id": f"call_{i}_{args['amount']}"}
                        for i, args in enumerate(tool_calls)
                    ],
                ),
                AIMessage(content="done"),
            ]
        )
    )


def build(model: GenericFakeChatModel, tools: ToolNode):
    def agent(state: MessagesState):
        return {"messages": [model.invoke(state["messages"])]}

    g = StateGraph(MessagesState)
    g.add_node("agent", agent)
    g.add_node("tools", tools)
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", tools_condition)
    g.add_edge("tools", "agent")
    return g.compile(checkpointer=InMemorySaver())


def node(target) -> ToolNode:
    return governed_tool_node(target, [refund], agent_id="bot", on_behalf_of="alice")


def tool_messages(state) -> list[ToolMessage]:
    return [m for m in state["messages"] if isinstance(m, ToolMessage)]


CONFIG = {"configurable": {"thread_id": "t1"}}


class TestInProcess:
    def test_execute_returns_the_result_and_audits_it(self, proctor):
        """An allowed call runs once, in Proctor, and its result is the ToolMessage."""
        graph = build(scripted({"amount": 50, "customer": "c1"}), node(proctor))

        state = graph.invoke({"messages": [("user", "refund c1")]}, CONFIG)

        (msg,) = tool_messages(state)
        assert msg.status == "success"
        assert json.loads(msg.content) == {"customer": "c1", "refunded": 50}
        assert CALLS == [(50, "c1")]
        plan_id = msg.artifact["plan_id"]
        assert_audited(proctor, plan_id, "policy.decided", "step.succeeded", "plan.finished")
        assert state["messages"][-1].content == "done"

    def test_deny_is_a_tool_error_the_model_reads(self, proctor):
        """A denied call never runs; the model gets an error ToolMessage with the reasons."""
        graph = build(scripted({"amount": 50_000, "customer": "c1"}), node(proctor))

        state = graph.invoke({"messages": [("user", "refund c1")]}, CONFIG)

        (msg,) = tool_messages(state)
        assert msg.status == "error"
        assert "denied" in msg.content and "10000 or more are not allowed" in msg.content
        assert CALLS == []
        assert proctor.get(msg.artifact["plan_id"]).status.value == "denied"
        assert_audited(proctor, msg.artifact["plan_id"], "policy.decided", "plan.routed")

    def test_invalid_arguments_are_a_tool_error(self, proctor):
        """Arguments that break the tool's schema are rejected by Proctor, nothing runs."""
        graph = build(scripted({"amount": "lots", "customer": "c1"}), node(proctor))

        state = graph.invoke({"messages": [("user", "refund c1")]}, CONFIG)

        (msg,) = tool_messages(state)
        assert msg.status == "error" and "invalid arguments" in msg.content
        assert "amount" in msg.content
        assert CALLS == []

    def test_approve_interrupts_then_resumes_with_the_executed_result(self, proctor):
        """approve → interrupt; resumed early it interrupts again; after approval the run
        resumes and the ToolMessage is the executed result, run exactly once."""
        graph = build(scripted({"amount": 500, "customer": "c2"}), node(proctor))

        state = graph.invoke({"messages": [("user", "refund c2")]}, CONFIG)
        (intr,) = state["__interrupt__"]
        payload = intr.value
        plan_id = payload["plan_id"]
        assert payload["status"] == "awaiting_approval"
        assert payload["approver_roles"] == ["finance"]
        assert payload["tool_call_id"] == "call_0_500"
        assert CALLS == []

        # A resume that claims approval is not an approval: Proctor's record decides.
        state = graph.invoke(Command(resume={"approved": True}), CONFIG)
        assert state["__interrupt__"][0].value["plan_id"] == plan_id
        assert CALLS == []

        proctor.approve(plan_id, "fiona", roles=["finance"])
        assert CALLS == [(500, "c2")]  # Proctor executed it at approval
        state = graph.invoke(Command(resume="approved"), CONFIG)

        assert "__interrupt__" not in state
        (msg,) = tool_messages(state)
        assert json.loads(msg.content) == {"customer": "c2", "refunded": 500}
        assert msg.artifact["plan_id"] == plan_id
        assert CALLS == [(500, "c2")]  # the resumed node did not run it again
        assert_audited(
            proctor,
            plan_id,
            "plan.submitted",
            "policy.decided",
            "plan.routed",
            "approval.granted",
            "step.started",
            "step.succeeded",
            "plan.finished",
        )
        assert proctor.verify().ok

    def test_confirm_interrupts_until_the_user_confirms(self, proctor):
        """confirm → interrupt naming the user's confirmation; after ``confirm`` the resumed
        graph gets the executed result."""
        graph = build(scripted({"amount": 80, "customer": "c8"}), node(proctor))

        state = graph.invoke({"messages": [("user", "refund c8")]}, CONFIG)
        payload = state["__interrupt__"][0].value
        assert payload["status"] == "awaiting_confirmation"
        assert "its user's confirmation" in payload["message"]
        assert CALLS == []

        proctor.confirm(payload["plan_id"], "alice")
        state = graph.invoke(Command(resume=True), CONFIG)

        (msg,) = tool_messages(state)
        assert json.loads(msg.content)["refunded"] == 80
        assert CALLS == [(80, "c8")]
        assert_audited(
            proctor,
            payload["plan_id"],
            "policy.decided",
            "plan.routed",
            "confirmation.granted",
            "step.succeeded",
            "plan.finished",
        )

    def test_rejection_is_a_tool_error(self, proctor):
        """A human's rejection reaches the model as an error with who rejected and why."""
        graph = build(scripted({"amount": 700, "customer": "c3"}), node(proctor))
        state = graph.invoke({"messages": [("user", "refund c3")]}, CONFIG)
        plan_id = state["__interrupt__"][0].value["plan_id"]

        proctor.reject(plan_id, "fiona", roles=["finance"], comment="duplicate request")
        state = graph.invoke(Command(resume="decided"), CONFIG)

        (msg,) = tool_messages(state)
        assert msg.status == "error"
        assert "rejected" in msg.content and "duplicate request" in msg.content
        assert CALLS == []

    def test_async_graph(self, proctor):
        """The async path (awrap_tool_call) interrupts and resumes the same way."""
        graph = build(scripted({"amount": 300, "customer": "c4"}), node(proctor))

        async def run():
            state = await graph.ainvoke({"messages": [("user", "refund c4")]}, CONFIG)
            plan_id = state["__interrupt__"][0].value["plan_id"]
            await asyncio.to_thread(proctor.approve, plan_id, "fiona", roles=["finance"])
            return await graph.ainvoke(Command(resume=True), CONFIG)

        state = asyncio.run(run())

        (msg,) = tool_messages(state)
        assert json.loads(msg.content)["refunded"] == 300
        assert CALLS == [(300, "c4")]

    def test_a_reused_tool_call_id_is_a_new_call(self, proctor):
        """A model that reuses a tool-call id (same args, another turn) gets a new plan: the
        tool runs again instead of returning the first call's result."""
        tools = node(proctor)
        for thread in ("a", "b"):
            graph = build(scripted({"amount": 5, "customer": "c7"}), tools)
            graph.invoke(
                {"messages": [("user", "refund")]}, {"configurable": {"thread_id": thread}}
            )

        assert CALLS == [(5, "c7"), (5, "c7")]
        assert len(proctor.plans()) == 2

    def test_middleware_on_your_own_tool_node(self, proctor):
        """ProctorToolMiddleware plugs into a ToolNode built by hand (the one-line form)."""
        mw = ProctorToolMiddleware(proctor, [refund], agent_id="bot", on_behalf_of="alice")
        graph = build(
            scripted({"amount": 10, "customer": "c5"}, {"amount": 20_000, "customer": "c6"}),
            ToolNode([refund], wrap_tool_call=mw, awrap_tool_call=mw.awrap),
        )

        state = graph.invoke({"messages": [("user", "two refunds")]}, CONFIG)

        ok, denied = sorted(tool_messages(state), key=lambda m: m.status != "success")
        assert json.loads(ok.content)["refunded"] == 10
        assert denied.status == "error" and "10000" in denied.content
        assert CALLS == [(10, "c5")]


@pytest.mark.server
@pytest.mark.slow
class TestOverHttp:
    """Against a real ``proctor serve`` subprocess: the server runs the tool (its catalog's
    handler), humans decide through the API, the graph only asks and reads."""

    def test_execute_approve_and_deny_in_one_turn(self, served):
        """Three calls in one message: the small refund runs, the large one interrupts until
        finance approves over HTTP, the huge one is an error the model reads; all audited."""
        graph = build(
            scripted(
                {"amount": 40, "customer": "h1"},
                {"amount": 900, "customer": "h2"},
                {"amount": 50_000, "customer": "h3"},
            ),
            node(served.client("bot")),
        )

        state = graph.invoke({"messages": [("user", "refunds")]}, CONFIG)
        (intr,) = state["__interrupt__"]
        plan_id = intr.value["plan_id"]
        assert intr.value["status"] == "awaiting_approval"
        assert intr.value["approver_roles"] == ["finance"]
        assert served.calls("h1", "h2", "h3") == [(40, "h1")]

        served.client("fiona").approve(plan_id, comment="ok")
        state = graph.invoke(Command(resume=True), CONFIG)

        assert "__interrupt__" not in state
        by_id = {m.tool_call_id: m for m in tool_messages(state)}
        assert json.loads(by_id["call_0_40"].content) == {
            "by": "server",
            "customer": "h1",
            "refunded": 40,
        }
        assert json.loads(by_id["call_1_900"].content)["refunded"] == 900
        denied = by_id["call_2_50000"]
        assert denied.status == "error"
        assert "10000 or more are not allowed" in denied.content
        assert served.calls("h1", "h2", "h3") == [
            (40, "h1"),
            (900, "h2"),
        ]  # each ran once, denied never
        executed = by_id["call_0_40"].artifact["plan_id"]
        served.assert_audited(
            executed, "plan.submitted", "policy.decided", "step.succeeded", "plan.finished"
        )
        served.assert_audited(
            plan_id,
            "plan.submitted",
            "policy.decided",
            "plan.routed",
            "approval.granted",
            "step.succeeded",
            "plan.finished",
        )
        types = served.assert_audited(
            denied.artifact["plan_id"], "plan.submitted", "policy.decided", "plan.routed"
        )
        assert "step.started" not in types

    def test_confirm_by_the_user(self, served):
        """confirm → interrupt; resumed before the user confirms it interrupts again; after
        the user confirms over HTTP the resumed graph reads the executed result."""
        graph = build(scripted({"amount": 70, "customer": "h4"}), node(served.client("bot")))

        state = graph.invoke({"messages": [("user", "refund h4")]}, CONFIG)
        payload = state["__interrupt__"][0].value
        assert payload["status"] == "awaiting_confirmation"
        assert "confirmation" in payload["message"]
        state = graph.invoke(Command(resume="confirmed"), CONFIG)  # nobody confirmed yet
        assert state["__interrupt__"][0].value["plan_id"] == payload["plan_id"]

        served.client("alice").confirm(payload["plan_id"])
        state = graph.invoke(Command(resume="confirmed"), CONFIG)

        (msg,) = tool_messages(state)
        assert json.loads(msg.content)["refunded"] == 70
        assert served.calls("h4") == [(70, "h4")]
        served.assert_audited(
            payload["plan_id"], "policy.decided", "confirmation.granted", "step.succeeded"
        )


@pytest.mark.server
@pytest.mark.slow
def test_a_tool_the_catalog_lacks_over_http_is_a_tool_error(served):
    """Over HTTP the server's catalog decides what exists: a tool it lacks is a tool error
    naming the unknown action (the model cannot fix it by changing the arguments)."""

    @tool
    def wire_money(amount: int) -> str:
        """Wire money."""
        return "sent"

    model = GenericFakeChatModel(
        messages=iter(
            [
                AIMessage(
                    content="",
                    tool_calls=[{"name": "wire_money", "args": {"amount": 5}, "id": "call_w"}],
                ),
                AIMessage(content="done"),
            ]
        )
    )
    graph = build(
        model,
        governed_tool_node(
            served.client("bot"), [wire_money], agent_id="bot", on_behalf_of="alice"
        ),
    )

    state = graph.invoke({"messages": [("user", "wire")]}, CONFIG)

    (msg,) = tool_messages(state)
    assert msg.status == "error"
    assert "unknown action" in msg.content and "wire_money" in msg.content


def one_node_graph(tools: ToolNode):
    """A graph that only runs ``tools`` on the messages it is given."""
    g = StateGraph(MessagesState)
    g.add_node("tools", tools)
    g.add_edge(START, "tools")
    return g.compile(checkpointer=InMemorySaver())


def ask(graph, *calls: tuple[str, dict[str, Any]], thread: str = "t1") -> list[ToolMessage]:
    """Run ``graph`` on one AI message asking for ``calls``; return its tool messages."""
    message = AIMessage(
        content="",
        tool_calls=[
            {"name": n, "args": a, "id": f"call_{i}_{n}"} for i, (n, a) in enumerate(calls)
        ],
    )
    state = graph.invoke({"messages": [message]}, {"configurable": {"thread_id": thread}})
    return tool_messages(state)


class TestToolsTheNodeWasNotGiven:
    @pytest.mark.parametrize("asynchronous", [False, True])
    def test_a_catalog_action_or_an_unknown_name_is_not_a_valid_tool(self, proctor, asynchronous):
        """Only the node's own tools are governed: a catalog action the agent was not given
        (in any case) and a name nobody knows get ToolNode's own error; nothing is submitted
        and nothing runs."""
        wiped: list[Any] = []

        @proctor.action("wipe_account", category="general", baselines=LOW)
        def wipe(params, call):
            wiped.append(params)
            return {"wiped": params["customer"]}

        graph = one_node_graph(node(proctor))
        calls = [("wipe_account", {"customer": "c1"}), ("WIPE_ACCOUNT", {"customer": "c1"})]
        calls += [("REFUND", {"amount": 5, "customer": "c1"}), ("nope", {})]
        if asynchronous:
            message = AIMessage(
                content="",
                tool_calls=[
                    {"name": n, "args": a, "id": f"call_{i}"} for i, (n, a) in enumerate(calls)
                ],
            )
            state = asyncio.run(graph.ainvoke({"messages": [message]}, CONFIG))
            msgs = tool_messages(state)
        else:
            msgs = ask(graph, *calls)

        assert [m.status for m in msgs] == ["error"] * 4
        for m, (name, _) in zip(msgs, calls, strict=True):
            assert f"{name} is not a valid tool, try one of [refund]" in m.content
        assert wiped == [] and CALLS == []
        assert proctor.plans() == []


class TestRegistration:
    def test_two_tools_of_one_name_are_a_config_error_not_an_alias(self, proctor):
        """Another agent's tool named like this one's would run instead of it: refused,
        naming both functions and how to tell them apart."""

        @tool("search")
        def hr_search(q: str) -> str:
            """Search the HR records."""
            return f"HR RECORDS for {q}"

        @tool("search")
        def web_search(q: str) -> str:
            """Search the web."""
            return f"web results for {q}"

        governed_tool_node(proctor, [hr_search], agent_id="hr-bot", on_behalf_of="alice")
        with pytest.raises(ConfigError) as err:
            governed_tool_node(proctor, [web_search], agent_id="web-bot", on_behalf_of="bob")

        text = str(err.value) + (err.value.hint or "")
        assert "'search'" in text and "web_search" in text and "hr_search" in text
        assert "actions=" in text
        assert proctor.plans() == []

    def test_one_function_in_two_nodes_is_one_action(self, proctor):
        """The same tool (or plain function) governed twice, by two agents, is no clash."""

        def lookup(customer: str) -> str:
            """Look a customer up."""
            return "found " + customer

        first = one_node_graph(node(proctor))
        second = one_node_graph(node(proctor))
        plain = [
            one_node_graph(governed_tool_node(proctor, [lookup], agent_id=a, on_behalf_of="x"))
            for a in ("a", "b")
        ]

        for i, graph in enumerate((first, second)):
            (msg,) = ask(graph, ("refund", {"amount": 5, "customer": f"c{i}"}))
            assert msg.status == "success"
        for graph in plain:
            (msg,) = ask(graph, ("lookup", {"customer": "c9"}))
            assert (msg.status, msg.content) == ("success", "found c9")
        assert CALLS == [(5, "c0"), (5, "c1")]

    def test_first_use_registration_is_safe_under_parallel_calls(self, proctor, monkeypatch):
        """Tools registered on first use (given only to the ToolNode) with parallel calls in
        one message: every call runs once, none fails on a half-made registration."""
        declare = proctor.action

        def slow_declare(*args, **kwargs):
            time.sleep(0.05)  # widen the window between "not in the catalog" and "declared"
            return declare(*args, **kwargs)

        monkeypatch.setattr(proctor, "action", slow_declare)

        @tool
        def lookup(customer: str) -> str:
            """Look a customer up."""
            return "found " + customer

        mw = ProctorToolMiddleware(proctor, agent_id="bot", on_behalf_of="alice")
        graph = one_node_graph(ToolNode([lookup], wrap_tool_call=mw))

        msgs = ask(graph, *[("lookup", {"customer": f"c{i}"}) for i in range(8)])

        assert [m.content for m in msgs] == [f"found c{i}" for i in range(8)]
        assert [m.status for m in msgs] == ["success"] * 8
        assert len(proctor.plans()) == 8


@tool
def count_messages(note: str, state: Annotated[dict, InjectedState]) -> str:
    """Count the messages."""
    return f"{note}: {len(state['messages'])} messages"


@tool
def who_called(note: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> str:
    """Echo the call id."""
    return f"{note} from {tool_call_id}"


@tool
def with_runtime(note: str, runtime: ToolRuntime) -> str:
    """Uses the runtime."""
    return f"{note} in {runtime.config['configurable'].get('thread_id')}"


@tool
def with_store(note: str, store: Annotated[Any, InjectedStore()]) -> str:
    """Uses the store."""
    return note


class TestInjectedArguments:
    @pytest.mark.parametrize(
        ("injecting", "arg"),
        [
            (count_messages, "state"),
            (who_called, "tool_call_id"),
            (with_runtime, "runtime"),
            (with_store, "store"),
        ],
    )
    def test_a_tool_with_injected_arguments_is_refused_in_process(self, proctor, injecting, arg):
        """Proctor runs the function outside the graph, where nothing is injected: such a
        tool would fail every call, so it is refused when the node is built."""
        with pytest.raises(ConfigError) as err:
            governed_tool_node(proctor, [injecting], agent_id="bot", on_behalf_of="alice")

        assert f"'{injecting.name}'" in str(err.value) and arg in str(err.value)
        assert "catalog" in (err.value.hint or "")
        assert injecting.name not in proctor.gateway.catalog

    def test_its_action_in_the_catalog_runs_with_the_model_arguments(self, proctor):
        """With the action in the catalog, the catalog's handler runs on what the model
        asked (the plan's params), and the tool's injected arguments never reach Proctor."""
        seen: list[Any] = []

        @proctor.action("count_messages", category="general", baselines=LOW)
        def count(params, call):
            seen.append(params)
            return "counted"

        graph = one_node_graph(
            governed_tool_node(proctor, [count_messages], agent_id="bot", on_behalf_of="alice")
        )
        (msg,) = ask(graph, ("count_messages", {"note": "hi"}))

        assert (msg.status, msg.content) == ("success", "counted")
        assert seen == [{"note": "hi"}]
