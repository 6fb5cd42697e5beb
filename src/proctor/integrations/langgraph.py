"""LangGraph / LangChain: every tool call of a ``ToolNode`` governed by Proctor.

One line::

    tools = governed_tool_node(proctor, [refund, lookup], agent_id="bot", on_behalf_of="alice")

or, on a ``ToolNode`` you build yourself, ``wrap_tool_call=`` / ``awrap_tool_call=`` a
``ProctorToolMiddleware``. Each tool call becomes a one-step plan whose action is the tool's
name (or ``actions[name]``):

- ``execute``: Proctor runs the tool (its function is the action's handler in process; the
  server's catalog handler over HTTP) and the ``ToolMessage`` carries the result;
- ``confirm`` / ``approve``: the node calls LangGraph's ``interrupt()`` with the plan (its id,
  reasons, approver roles). After a human decides in Proctor (``proctor approve``, the console,
  ``Proctor.approve``), resume the graph with ``Command(resume=...)``: the node re-runs, Proctor
  recognises the same call (same plan id) and the ``ToolMessage`` carries the executed result.
  The resume value is ignored: Proctor's record, not the caller, says whether the call was
  approved, so a forged resume cannot run a tool. Resumed too early, it interrupts again;
- ``deny`` (or a human's rejection, or expiry): a ``ToolMessage`` with ``status="error"`` whose
  content gives the reasons, for the model to read.

Requires the ``langgraph`` extra (``pip install 'proctor[langgraph]'``).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson

from proctor._library import Proctor
from proctor.client import ProctorClient
from proctor.errors import ConfigError, InvalidRequestError, MissingDependencyError
from proctor.integrations._governor import Governor, ToolOutcome, invalid_call_message

try:
    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_core.tools import BaseTool
    from langchain_core.tools import tool as as_tool
    from langgraph.prebuilt import ToolNode
    from langgraph.prebuilt.tool_node import ToolCallRequest
    from langgraph.types import Command, interrupt
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        "the LangGraph integration needs langgraph and langchain-core",
        field="langgraph",
        hint="pip install 'proctor[langgraph]'",
    ) from exc

__all__ = ["ProctorToolMiddleware", "governed_tool_node"]

Execute = Callable[[ToolCallRequest], "ToolMessage | Command[Any]"]
AsyncExecute = Callable[[ToolCallRequest], Awaitable["ToolMessage | Command[Any]"]]


def _tool_function(tool: BaseTool) -> Callable[..., Any]:
    """The tool as a keyword-argument function (the in-process handler)."""
    if getattr(tool, "func", None) is None and getattr(tool, "coroutine", None) is not None:

        async def arun(**params: Any) -> Any:
            return await tool.ainvoke(params)

        return arun

    def run(**params: Any) -> Any:
        return tool.invoke(params)

    return run


def _injected_args(tool: BaseTool) -> list[str]:
    """The arguments ``ToolNode`` injects: the tool's, less the model's.

    (``InjectedState``, ``InjectedStore``, ``InjectedToolCallId``, ``ToolRuntime``, ...)
    """
    model_args = getattr(tool.tool_call_schema, "model_fields", None)
    if model_args is None:  # a JSON-schema dict: nothing is injected
        return []
    return sorted(set(getattr(tool.get_input_schema(), "model_fields", {})) - set(model_args))


def _params_schema(tool: BaseTool) -> dict[str, Any]:
    """The tool's arguments as JSON Schema (what Proctor validates the params against)."""
    schema: dict[str, Any] = dict(tool.tool_call_schema.model_json_schema())  # type: ignore[union-attr]
    schema.pop("title", None)
    schema.pop("description", None)
    return schema


def _content(result: Any) -> str:
    if isinstance(result, str):
        return result
    return orjson.dumps(result, option=orjson.OPT_SORT_KEYS).decode()


class ProctorToolMiddleware:
    """A ``ToolNode`` tool-call wrapper that governs each call through Proctor.

    Use the instance as ``wrap_tool_call`` and its ``awrap`` as ``awrap_tool_call``.

    Args:
        proctor: A ``Proctor`` (in process) or a ``ProctorClient`` (over HTTP).
        tools: Tools to register as actions now (in process; others register on first use).
        agent_id: The acting agent.
        on_behalf_of: The user the agent acts for.
        model_version: The agent's model, recorded in each plan.
        actions: Tool name → catalog action (default: the tool's name, lower-cased).
        specs: Tool name → ``Proctor.action`` options for tools registered here
            (``category``, ``baselines``, ``reversible``, ...). Ignored over HTTP and for
            actions the catalog already has.
        wait_seconds: How long a resumed call waits for an approved plan still running.
    """

    def __init__(
        self,
        proctor: Proctor | ProctorClient,
        tools: Sequence[BaseTool] = (),
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
        self.actions = dict(actions or {})
        self.specs = dict(specs or {})
        self._registered: set[str] = set()
        self._lock = threading.Lock()
        for tool in tools:
            self._register(tool)

    def action_for(self, tool_name: str) -> str:
        """The catalog action a tool's calls map to."""
        return self.actions.get(tool_name, tool_name.lower())

    def _register(self, tool: BaseTool) -> str:
        name = tool.name
        action = self.action_for(name)
        if name in self._registered:
            return action
        with self._lock:  # a ToolNode runs parallel calls in threads: first use races
            if name in self._registered:
                return action
            proctor = self.governor.proctor
            injected = _injected_args(tool)
            if injected and isinstance(proctor, Proctor) and action not in proctor.gateway.catalog:
                raise ConfigError(
                    f"tool {name!r} takes arguments that LangGraph injects "
                    f"({', '.join(injected)}): Proctor runs a governed tool's function itself, "
                    "outside the graph (when a human approves, perhaps in another process), "
                    "where there is no state, store, runtime or tool-call id to give it",
                    field="tools",
                    hint=f"Put action {action!r} in the catalog with a handler that needs only "
                    "the model's arguments, or govern a tool that takes only those.",
                )
            spec = dict(self.specs.get(name, {}))
            spec.setdefault("params_schema", _params_schema(tool))
            spec.setdefault("summary", (tool.description or name).strip().splitlines()[0])
            # The tool's own function identifies it: one function given to two nodes (or
            # turned into a tool twice) is one action, two functions of one name a clash.
            key = getattr(tool, "func", None) or getattr(tool, "coroutine", None) or tool
            self.governor.register(action, _tool_function(tool), key=key, **spec)
            self._registered.add(name)
        return action

    # ------------------------------------------------------------------ the wrapper

    def __call__(self, request: ToolCallRequest, execute: Execute) -> ToolMessage | Command[Any]:
        """Govern one tool call (sync graphs); ``execute`` is not used: Proctor executes."""
        call = request.tool_call
        if request.tool is None:
            # Not one of the node's tools: ToolNode's own "is not a valid tool" error, and
            # nothing reaches Proctor (the catalog may hold actions this agent was not given).
            return execute(request)
        action = self._register(request.tool)
        try:
            outcome = self.governor.call(
                action, call["args"], call_id=call["id"], scope=_scope(request)
            )
        except InvalidRequestError as exc:
            return _error(call, invalid_call_message(action, exc))
        while outcome.kind == "pending":
            # The resume value is advisory: Proctor's record decides (see the module doc).
            interrupt(outcome.to_json() | {"tool_call_id": call["id"]})
            outcome = self.governor.outcome(outcome.plan_id)
        return _message(call, outcome)

    async def awrap(
        self, request: ToolCallRequest, execute: AsyncExecute
    ) -> ToolMessage | Command[Any]:
        """Govern one tool call (async graphs)."""
        call = request.tool_call
        if request.tool is None:
            return await execute(request)
        action = self._register(request.tool)
        try:
            outcome = await self.governor.acall(
                action, call["args"], call_id=call["id"], scope=_scope(request)
            )
        except InvalidRequestError as exc:
            return _error(call, invalid_call_message(action, exc))
        while outcome.kind == "pending":
            interrupt(outcome.to_json() | {"tool_call_id": call["id"]})
            outcome = await self.governor.aoutcome(outcome.plan_id)
        return _message(call, outcome)


def _scope(request: ToolCallRequest) -> str | None:
    """The thread and the AI message that asked for the call: both survive a resume."""
    state = request.state
    messages = state.get("messages") if isinstance(state, dict) else state
    if not isinstance(messages, list):
        messages = getattr(state, "messages", None) or []
    call_id = request.tool_call["id"]
    message_id = next(
        (
            m.id
            for m in reversed(messages)
            if isinstance(m, AIMessage) and any(c.get("id") == call_id for c in m.tool_calls)
        ),
        None,
    )
    config = getattr(request.runtime, "config", None) or {}
    thread = (config.get("configurable") or {}).get("thread_id")
    if message_id is None and thread is None:
        return None
    return f"{thread}:{message_id}"


def _error(call: Mapping[str, Any], text: str) -> ToolMessage:
    return ToolMessage(content=text, name=call["name"], tool_call_id=call["id"], status="error")


def _message(call: Mapping[str, Any], outcome: ToolOutcome) -> ToolMessage:
    if outcome.kind == "executed":
        return ToolMessage(
            content=_content(outcome.result),
            name=call["name"],
            tool_call_id=call["id"],
            artifact=outcome.to_json(),
        )
    message = _error(call, outcome.message())
    message.artifact = outcome.to_json()
    return message


def governed_tool_node(
    proctor: Proctor | ProctorClient,
    tools: Sequence[BaseTool | Callable[..., Any]],
    *,
    agent_id: str,
    on_behalf_of: str,
    model_version: str = "unknown",
    actions: Mapping[str, str] | None = None,
    specs: Mapping[str, Mapping[str, Any]] | None = None,
    wait_seconds: float = 30.0,
    **tool_node_options: Any,
) -> ToolNode:
    """A ``ToolNode`` over ``tools`` whose every call is governed by Proctor.

    Args:
        proctor: A ``Proctor`` (in process) or a ``ProctorClient`` (over HTTP).
        tools: LangChain tools (or plain functions, turned into tools by ``ToolNode``).
        agent_id: The acting agent.
        on_behalf_of: The user the agent acts for.
        model_version: The agent's model, recorded in each plan.
        actions: Tool name → catalog action (default: the tool's name, lower-cased).
        specs: Tool name → ``Proctor.action`` options for tools registered in process.
        wait_seconds: How long a resumed call waits for an approved plan still running.
        **tool_node_options: Other ``ToolNode`` options (``name``, ``messages_key``, ...).

    Returns:
        The tool node; give the graph a checkpointer so interrupts can resume.
    """
    lc_tools = [t if isinstance(t, BaseTool) else as_tool(t) for t in tools]
    middleware = ProctorToolMiddleware(
        proctor,
        lc_tools,
        agent_id=agent_id,
        on_behalf_of=on_behalf_of,
        model_version=model_version,
        actions=actions,
        specs=specs,
        wait_seconds=wait_seconds,
    )
    return ToolNode(
        lc_tools,
        wrap_tool_call=middleware,
        awrap_tool_call=middleware.awrap,
        **tool_node_options,
    )
