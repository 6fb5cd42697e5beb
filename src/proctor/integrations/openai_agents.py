"""OpenAI Agents SDK: function tools whose every call is governed by Proctor.

One line::

    governance = ProctorTools(proctor, [refund, lookup], agent_id="bot", on_behalf_of="alice")
    agent = Agent(name="support", tools=governance.tools)

Each tool call becomes a one-step plan (action = the tool's name, or ``actions[name]``).
Proctor backs three SDK surfaces of every tool:

- ``needs_approval``: the SDK asks before each call; Proctor decides (and, for ``execute``,
  runs the tool in the same step). A ``confirm`` / ``approve`` decision answers True, so the run
  stops with the call in ``result.interruptions``.
- a tool input guardrail: a ``deny`` (or a human's rejection, or expiry) rejects the call with
  the reasons as the message the model reads.
- ``on_invoke_tool``: returns the result Proctor executed (the in-process handler is the tool's
  function; over HTTP the server's catalog handler runs).

After a human decides in Proctor (``proctor approve``, the console, ``Proctor.approve``),
``await governance.apply_decisions(state)`` marks each interruption approved or rejected in
the SDK's ``RunState`` *from Proctor's record*, and ``Runner.run(agent, state)`` resumes: the
approved call's output is the executed result. Approving an interruption in the SDK alone
runs nothing: the tool then tells the model the call still waits for Proctor.

Requires the ``openai-agents`` extra (``pip install 'proctor[openai-agents]'``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from proctor._library import Proctor
from proctor.client import ProctorClient
from proctor.errors import InvalidRequestError, MissingDependencyError, NotFoundError
from proctor.integrations._governor import Governor, ToolOutcome, invalid_call_message, plan_id_for

try:
    from agents import FunctionTool, RunContextWrapper, RunState, function_tool
    from agents.items import ToolApprovalItem
    from agents.tool_context import ToolContext
    from agents.tool_guardrails import (
        ToolGuardrailFunctionOutput,
        ToolInputGuardrail,
        ToolInputGuardrailData,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        "the OpenAI Agents SDK integration needs openai-agents",
        field="openai-agents",
        hint="pip install 'proctor[openai-agents]'",
    ) from exc

__all__ = ["ProctorTools"]


def _content(result: Any) -> str:
    if isinstance(result, str):
        return result
    return orjson.dumps(result, option=orjson.OPT_SORT_KEYS).decode()


def _arguments(raw: str | None) -> dict[str, Any] | None:
    try:
        parsed = json.loads(raw or "{}")
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _invoker_handler(tool: FunctionTool) -> Callable[..., Any]:
    """A keyword-argument function that runs an SDK tool outside a run (the handler)."""
    invoke = tool.on_invoke_tool

    async def run(**params: Any) -> Any:
        raw = json.dumps(params)
        ctx = ToolContext(
            context=None, tool_name=tool.name, tool_call_id="proctor", tool_arguments=raw
        )
        return await invoke(ctx, raw)

    return run


class ProctorTools:
    """Agents SDK function tools governed by Proctor, and the bridge back from its decisions.

    Args:
        proctor: A ``Proctor`` (in process) or a ``ProctorClient`` (over HTTP).
        tools: Plain functions (wrapped with ``function_tool``) or ``FunctionTool``s.
        agent_id: The acting agent.
        on_behalf_of: The user the agent acts for.
        model_version: The agent's model, recorded in each plan.
        actions: Tool name → catalog action (default: the tool's name, lower-cased).
        specs: Tool name → ``Proctor.action`` options for tools registered in process
            (``category``, ``baselines``, ``reversible``, ...).
        wait_seconds: How long a resumed call waits for an approved plan still running.

    Attributes:
        tools: The governed tools, for ``Agent(tools=...)``.
    """

    def __init__(
        self,
        proctor: Proctor | ProctorClient,
        tools: Sequence[FunctionTool | Callable[..., Any]],
        *,
        agent_id: str,
        on_behalf_of: str,
        model_version: str = "unknown",
        actions: Mapping[str, str] | None = None,
        specs: Mapping[str, Mapping[str, Any]] | None = None,
        wait_seconds: float = 30.0,
    ) -> None:
        self.governor = Governor(
            proctor,
            agent_id=agent_id,
            on_behalf_of=on_behalf_of,
            model_version=model_version,
            wait_seconds=wait_seconds,
        )
        self._actions = dict(actions or {})
        self._specs = dict(specs or {})
        self._by_tool: dict[str, str] = {}
        self.tools: list[FunctionTool] = [self._govern(t) for t in tools]

    def _govern(self, tool: FunctionTool | Callable[..., Any]) -> FunctionTool:
        fn: Callable[..., Any] | None = None
        if not isinstance(tool, FunctionTool):
            fn = tool
            tool = function_tool(tool)
        action = self._actions.get(tool.name, tool.name.lower())
        self._by_tool[tool.name] = action
        spec = dict(self._specs.get(tool.name, {}))
        spec.setdefault("params_schema", tool.params_json_schema)
        spec.setdefault("summary", (tool.description or tool.name).strip().splitlines()[0])
        self.governor.register(action, fn or _invoker_handler(tool), **spec)
        governor = self.governor

        async def needs_approval(
            ctx: RunContextWrapper[Any], params: dict[str, Any], call_id: str
        ) -> bool:
            try:
                outcome = await governor.acall(action, params, call_id=call_id)
            except InvalidRequestError:
                return False  # the guardrail tells the model what is wrong; nothing ran
            return outcome.kind == "pending"

        async def guard(data: ToolInputGuardrailData) -> ToolGuardrailFunctionOutput:
            ctx = data.context
            params = _arguments(ctx.tool_arguments)
            if params is None:
                return ToolGuardrailFunctionOutput.reject_content(
                    f"{action}: the arguments are not a JSON object"
                )
            try:
                outcome = await governor.acall(action, params, call_id=ctx.tool_call_id)
            except InvalidRequestError as exc:
                return ToolGuardrailFunctionOutput.reject_content(invalid_call_message(action, exc))
            if outcome.kind in ("denied", "failed"):
                return ToolGuardrailFunctionOutput.reject_content(
                    outcome.message(), output_info=outcome.to_json()
                )
            return ToolGuardrailFunctionOutput.allow(output_info=outcome.to_json())

        async def invoke(ctx: ToolContext[Any], raw: str) -> str:
            params = _arguments(raw)
            if params is None:
                return f"{action}: the arguments are not a JSON object"
            try:
                outcome = await governor.acall(action, params, call_id=ctx.tool_call_id)
            except InvalidRequestError as exc:
                return invalid_call_message(action, exc)
            if outcome.kind == "executed":
                return _content(outcome.result)
            return outcome.message()

        return dataclasses.replace(
            tool,
            on_invoke_tool=invoke,
            needs_approval=needs_approval,
            tool_input_guardrails=[
                ToolInputGuardrail(guardrail_function=guard, name="proctor"),
                *(tool.tool_input_guardrails or []),
            ],
        )

    def plan_id(self, item: ToolApprovalItem) -> str | None:
        """The Proctor plan behind an interruption (None if it is not a governed tool's)."""
        action = self._by_tool.get(item.tool_name or "")
        params = _arguments(item.arguments)
        if action is None or params is None or item.call_id is None:
            return None
        return plan_id_for(
            item.call_id,
            agent_id=self.governor.agent_id,
            on_behalf_of=self.governor.on_behalf_of,
            action=action,
            params=params,
        )

    async def outcome(self, item: ToolApprovalItem) -> ToolOutcome | None:
        """Proctor's outcome of an interrupted call, or None if Proctor has no such plan."""
        plan_id = self.plan_id(item)
        if plan_id is None:
            return None
        try:
            return await self.governor.aoutcome(plan_id)
        except NotFoundError:
            return None

    async def apply_decisions(self, state: RunState[Any]) -> list[ToolApprovalItem]:
        """Mark the run's interruptions as Proctor decided them; return those still waiting.

        A call Proctor approved (and executed) is approved in ``state``; a call it denied,
        a human rejected or that expired is rejected with Proctor's reasons as the message
        the model reads. Interruptions of other tools are left alone.
        """
        waiting = []
        for item in state.get_interruptions():
            outcome = await self.outcome(item)
            if outcome is None:
                continue
            if outcome.kind == "executed":
                state.approve(item)
            elif outcome.kind in ("denied", "failed"):
                state.reject(item, rejection_message=outcome.message())
            else:
                waiting.append(item)
        return waiting
