"""What governing a tool call costs from agent code, per integration (in process).

One allowed tool call (routed to ``execute``, a no-op tool) through each integration, against
an in-memory Proctor with the packaged Rego policy: the plain decorator, a LangGraph
``ToolNode`` (``ProctorToolMiddleware``), an OpenAI Agents SDK tool's invocation path
(``needs_approval`` + ``on_invoke_tool``, called directly, without a model) and a
pydantic-ai agent run with ``TestModel`` and one tool call through a ``ProctorToolset``. The
raw call of each framework (ungoverned) is measured too, alternately with the governed one,
so the difference is what Proctor adds.

Usage: python bench/integrations.py [--calls 300]
Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py shadows the standard library's http package for scripts run from bench/.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from proctor import Proctor

BASE = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}


def lookup(item: str) -> dict[str, Any]:
    """Look an item up (a no-op tool)."""
    return {"item": item}


def paired_us(
    raw: Callable[[int], Any], governed: Callable[[int], Any], n: int
) -> tuple[float, float]:
    """Median µs of the raw and the governed call, measured alternately.

    Alternating keeps slow drift (another process on the shared cores, a growing in-memory
    store, a garbage collection) from landing on one side only: measured one after the other,
    a noisy run once made a governed pydantic-ai run look faster than the raw one.
    """
    for i in range(10):  # warm-up
        raw(-1 - i)
        governed(-1 - i)
    raw_times, gov_times = [], []
    for i in range(n):
        for fn, times in ((raw, raw_times), (governed, gov_times)):
            t = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t)
    return (
        round(statistics.median(raw_times) * 1e6, 1),
        round(statistics.median(gov_times) * 1e6, 1),
    )


def proctor_instance() -> Proctor:
    p = Proctor.in_memory()
    return p


def bench_decorator(n: int) -> tuple[float, float]:
    from proctor.integrations import governed

    p = proctor_instance()
    tool = governed(
        p,
        action="shop.lookup",
        agent_id="bot",
        on_behalf_of="alice",
        category="read",
        baselines=BASE,
    )(lookup)
    return paired_us(lambda i: lookup(item=f"x{i}"), lambda i: tool(item=f"x{i}"), n)


def bench_langgraph(n: int) -> tuple[float, float]:
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool as as_tool
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode

    from proctor.integrations.langgraph import governed_tool_node

    t = as_tool(lookup)
    p = proctor_instance()
    raw = ToolNode([t])
    gov = governed_tool_node(
        p,
        [t],
        agent_id="bot",
        on_behalf_of="alice",
        specs={"lookup": {"category": "read", "baselines": BASE}},
    )

    def call(node: ToolNode) -> Callable[[int], Any]:
        g = StateGraph(MessagesState)
        g.add_node("tools", node)
        g.add_edge(START, "tools")
        graph = g.compile()

        def go(i: int) -> Any:
            call = {"name": "lookup", "args": {"item": f"x{i}"}, "id": f"c{i}"}
            return graph.invoke({"messages": [AIMessage(content="", tool_calls=[call])]})

        return go

    return paired_us(call(raw), call(gov), n)


def bench_openai_agents(n: int) -> tuple[float, float]:
    from agents import function_tool
    from agents.tool_context import ToolContext

    from proctor.integrations.openai_agents import ProctorTools

    p = proctor_instance()
    raw = function_tool(lookup)
    (gov,) = ProctorTools(
        p,
        [lookup],
        agent_id="bot",
        on_behalf_of="alice",
        specs={"lookup": {"category": "read", "baselines": BASE}},
    ).tools
    loop = asyncio.new_event_loop()

    def call(t: Any, governed: bool) -> Callable[[int], Any]:
        async def one(i: int) -> Any:
            args = json.dumps({"item": f"x{i}"})
            ctx = ToolContext(
                context=None, tool_name="lookup", tool_call_id=f"c{i}", tool_arguments=args
            )
            if governed:
                await t.needs_approval(ctx, json.loads(args), f"c{i}")
            return await t.on_invoke_tool(ctx, args)

        return lambda i: loop.run_until_complete(one(i))

    try:
        return paired_us(call(raw, False), call(gov, True), n)
    finally:
        loop.close()


def bench_pydantic_ai(n: int) -> tuple[float, float]:
    from pydantic_ai import Agent
    from pydantic_ai.models.test import TestModel

    from proctor.integrations.pydantic_ai import ProctorToolset

    p = proctor_instance()
    gov = ProctorToolset.of(
        p,
        [lookup],
        agent_id="bot",
        on_behalf_of="alice",
        specs={"lookup": {"category": "read", "baselines": BASE}},
    )
    raw_agent = Agent(TestModel(call_tools=["lookup"]), tools=[lookup])
    gov_agent = Agent(TestModel(call_tools=["lookup"]), toolsets=[gov])
    loop = asyncio.new_event_loop()

    def run(agent: Agent[None, str]) -> Callable[[int], Any]:
        return lambda i: loop.run_until_complete(agent.run(f"go {i}"))

    try:
        return paired_us(run(raw_agent), run(gov_agent), n)
    finally:
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    rows = {
        "decorator": bench_decorator(args.calls),
        "langgraph": bench_langgraph(args.calls),
        "openai_agents": bench_openai_agents(args.calls),
        "pydantic_ai": bench_pydantic_ai(args.calls),
    }
    print(f"integrations: {args.calls} allowed calls each, in process, memory store, p50")
    print(f"{'integration':<16}{'raw (µs)':>12}{'governed (µs)':>16}{'added (µs)':>12}")
    out: dict[str, Any] = {"calls": args.calls}
    for name, (raw, gov) in rows.items():
        print(f"{name:<16}{raw:>12}{gov:>16}{round(gov - raw, 1):>12}")
        out[f"{name}_raw_us"] = raw
        out[f"{name}_governed_us"] = gov
        out[f"{name}_added_us"] = round(gov - raw, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
