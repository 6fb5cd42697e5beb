"""OpenAI Agents SDK: function tools whose every call is governed by Proctor.

One line::

    governance = ProctorTools(proctor, [refund, lookup], agent_id="bot", on_behalf_of="alice")
    agent = Agent(name="support", tools=governance.tools)

Each tool call becomes a one-step plan (action = the tool's name, or ``actions[name]``).
Proctor backs three SDK surfaces of every tool:

- ``needs_approval``: the SDK asks before each call. The tool's own ``needs_approval`` is
  asked first (yes: the run stops and nothing reaches Proctor until the SDK approves it).
  Then Proctor decides (and, for ``execute``, runs the tool in the same step, which is before
  any tool input guardrail: tools that carry their own are refused). A ``confirm`` /
  ``approve`` decision answers True, so the run stops with the call in
  ``result.interruptions``.
- a tool input guardrail: a ``deny`` (or a human's rejection, or expiry) rejects the call with
  the reasons as the message the model reads.
- ``on_invoke_tool``: returns the result Proctor executed (the in-process handler is the
  tool's own SDK invoker, which parses the arguments, minus its failure handler so an
  exception fails the plan; over HTTP the server's catalog handler runs).

A call's plan id comes from its tool-call id, its arguments and the run's input, so a model
that reuses call ids across runs does not get an earlier run's result.

After a human decides in Proctor (``proctor approve``, the console, ``Proctor.approve``),
``await governance.apply_decisions(state)`` marks each interruption approved or rejected in
the SDK's ``RunState`` *from Proctor's record*, and ``Runner.run(agent, state)`` resumes: the
approved call's output is the executed result. Approving an interruption in the SDK alone
runs nothing: the tool then tells the model the call still waits for Proctor.

Requires the ``openai-agents`` extra (``pip install 'proctor[openai-agents]'``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson

from proctor._library import Proctor
from proctor.client import ProctorClient
from proctor.errors import ConfigError, InvalidRequestError, MissingDependencyError, NotFoundError
from proctor.integrations._governor import Governor, ToolOutcome, invalid_call_message, plan_id_for

try:
    from agents import FunctionTool, ItemHelpers, RunContextWrapper, RunState, function_tool
    from agents.function_schema import function_schema
    from agents.items import ToolApprovalItem
    from agents.result import RunResultBase
    from agents.tool import set_function_tool_failure_error_function
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


def _raising_invoker(tool: FunctionTool) -> Callable[[ToolContext[Any], str], Awaitable[Any]]:
    """The tool's own invoker (argument parsing included), without its failure handler.

    ``function_tool`` turns an exception into a string for the model; Proctor must see the
    exception instead, or a failed call would be audited as succeeded.
    """
    copy = dataclasses.replace(tool)
    set_function_tool_failure_error_function(copy, None)
    return copy.on_invoke_tool


def _invoker_handler(tool: FunctionTool) -> Callable[..., Any]:
    """A keyword-argument function that runs an SDK tool outside a run (the handler).

    The SDK parses and validates the arguments (pydantic models, dates, ...) as it would in
    a run; an exception the tool raises reaches Proctor (the plan fails).
    """
    invoke = _raising_invoker(tool)

    async def run(**params: Any) -> Any:
        raw = json.dumps(params)
        ctx = ToolContext(
            context=None, tool_name=tool.name, tool_call_id="proctor", tool_arguments=raw
        )
        return await invoke(ctx, raw)

    return run


def _wrapped_callable(tool: FunctionTool) -> Callable[..., Any] | None:
    """The function a ``function_tool`` wraps, if the SDK says (None if unknown)."""
    get = getattr(tool.on_invoke_tool, "_get_wrapped_callable", None)
    fn = get() if callable(get) else None
    return fn if callable(fn) else None


def _takes_context(fn: Callable[..., Any]) -> bool:
    try:
        return function_schema(fn).takes_context
    except Exception:  # noqa: BLE001 - not a function the SDK can describe: it cannot tell
        return False


def _scope(run_input: Any) -> str:
    """The run a call belongs to: the run's input, which ``RunState`` keeps across a resume.

    Some models (test models, some local servers) reuse tool-call ids; without a scope a
    later run's identical call would be answered from the earlier run's plan.
    """
    items = ItemHelpers.input_to_new_input_list(run_input)
    material = orjson.dumps(items, option=orjson.OPT_SORT_KEYS, default=str)
    return "run:" + hashlib.sha256(material).hexdigest()[:32]


def _run_input(run: RunState[Any] | RunResultBase | RunContextWrapper[Any]) -> Any:
    """The input a run started from (what the SDK sets as each tool call's ``turn_input``)."""
    if isinstance(run, RunContextWrapper):
        return run.turn_input
    if isinstance(run, RunResultBase):
        return run.input
    if isinstance(run, RunState):
        # RunState has no public accessor for it.
        return run._original_input
    raise ConfigError(
        f"expected a run result, a RunState or a run context, got {type(run).__name__}",
        field="run",
    )


async def _needs_sdk_approval(
    setting: Any, ctx: RunContextWrapper[Any], params: dict[str, Any], call_id: str
) -> bool:
    """The developer's own ``needs_approval`` (a bool or a sync/async callable)."""
    if isinstance(setting, bool):
        return setting
    answer = setting(ctx, params, call_id)
    if inspect.isawaitable(answer):
        answer = await answer
    return bool(answer)


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
        if tool.tool_input_guardrails:
            raise ConfigError(
                f"tool {tool.name!r} has tool input guardrails, which the SDK runs only after "
                "Proctor has decided (and run) an allowed call: they could not stop it",
                field="tools",
                hint="Express the check in Proctor's policy, or make it part of the tool.",
            )
        wrapped = fn or _wrapped_callable(tool)
        if wrapped is not None and _takes_context(wrapped):
            raise ConfigError(
                f"tool {tool.name!r} takes the run context, which Proctor cannot give it: "
                "an approved call may run in another thread or process, after the run",
                field="tools",
                hint="Pass what the tool needs as arguments, or read it inside the tool.",
            )
        action = self._actions.get(tool.name, tool.name.lower())
        self._by_tool[tool.name] = action
        spec = dict(self._specs.get(tool.name, {}))
        spec.setdefault("params_schema", tool.params_json_schema)
        spec.setdefault("summary", (tool.description or tool.name).strip().splitlines()[0])
        self.governor.register(action, _invoker_handler(tool), **spec)
        governor = self.governor
        own_approval = tool.needs_approval

        async def needs_approval(
            ctx: RunContextWrapper[Any], params: dict[str, Any], call_id: str
        ) -> bool:
            if await _needs_sdk_approval(own_approval, ctx, params, call_id):
                # The tool's own approval comes first: nothing goes to Proctor (so nothing
                # runs) until it is given; the resumed call is then submitted by the guardrail.
                return True
            try:
                outcome = await governor.acall(
                    action, params, call_id=call_id, scope=_scope(ctx.turn_input)
                )
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
                outcome = await governor.acall(
                    action, params, call_id=ctx.tool_call_id, scope=_scope(ctx.turn_input)
                )
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
                outcome = await governor.acall(
                    action, params, call_id=ctx.tool_call_id, scope=_scope(ctx.turn_input)
                )
            except InvalidRequestError as exc:
                return invalid_call_message(action, exc)
            if outcome.kind == "executed":
                return _content(outcome.result)
            return outcome.message()

        return dataclasses.replace(
            tool,
            on_invoke_tool=invoke,
            needs_approval=needs_approval,
            tool_input_guardrails=[ToolInputGuardrail(guardrail_function=guard, name="proctor")],
        )

    def plan_id(
        self,
        item: ToolApprovalItem,
        run: RunState[Any] | RunResultBase | RunContextWrapper[Any],
    ) -> str | None:
        """The Proctor plan behind an interruption of ``run`` (None if not a governed tool's).

        ``run`` is the interrupted result, its ``RunState`` or its context: the plan id
        depends on the run's input as well as on the call, so that a tool-call id a model
        reuses in another run is another plan.
        """
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
            scope=_scope(_run_input(run)),
        )

    async def outcome(
        self,
        item: ToolApprovalItem,
        run: RunState[Any] | RunResultBase | RunContextWrapper[Any],
    ) -> ToolOutcome | None:
        """Proctor's outcome of an interruption of ``run``, or None if Proctor has no such plan."""
        plan_id = self.plan_id(item, run)
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
            outcome = await self.outcome(item, state)
            if outcome is None:
                continue
            if outcome.kind == "executed":
                state.approve(item)
            elif outcome.kind in ("denied", "failed"):
                state.reject(item, rejection_message=outcome.message())
            else:
                waiting.append(item)
        return waiting
