"""pydantic-ai: a toolset wrapper whose every tool call is governed by Proctor.

One line::

    agent = Agent(model, toolsets=[ProctorToolset.of(proctor, [refund], agent_id="bot",
                                                     on_behalf_of="alice")],
                  output_type=[str, DeferredToolRequests])

(or ``ProctorToolset(wrapped=any_toolset, governor=Governor(...))``). Each tool call becomes a
one-step plan (action = the tool's name, or ``actions[name]``):

- ``execute``: Proctor runs the tool (in process its function is the action's handler; over
  HTTP the server's catalog handler runs) and the call returns the result;
- ``confirm`` / ``approve``: the call raises pydantic-ai's ``ApprovalRequired`` with the plan
  (id, reasons, approver roles) as metadata, so the run ends with ``DeferredToolRequests``.
  After a human decides in Proctor, ``await toolset.results(requests)`` builds the
  ``DeferredToolResults`` from Proctor's record (approved, or denied with the reasons); the
  next ``agent.run(message_history=..., deferred_tool_results=...)`` returns the executed
  result to the model. An approval given in pydantic-ai alone runs nothing: the model is told
  the call still waits for Proctor;
- ``deny`` (or a human's rejection, or expiry): ``ToolFailed`` with the reasons, a failed tool
  result the model reads (it does not use up the tool's retries).

Requires the ``pydantic-ai`` extra (``pip install 'proctor[pydantic-ai]'``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proctor._library import Proctor
from proctor.client import ProctorClient
from proctor.errors import InvalidRequestError, MissingDependencyError, NotFoundError
from proctor.integrations._governor import Governor, invalid_call_message

try:
    from pydantic_ai import (
        DeferredToolRequests,
        DeferredToolResults,
        FunctionToolset,
        RunContext,
        Tool,
        ToolDenied,
    )
    from pydantic_ai.exceptions import ApprovalRequired, ToolFailed
    from pydantic_ai.messages import ModelResponse, ToolCallPart
    from pydantic_ai.tools import ToolApproved
    from pydantic_ai.toolsets import ToolsetTool, WrapperToolset
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        "the pydantic-ai integration needs pydantic-ai-slim",
        field="pydantic-ai",
        hint="pip install 'proctor[pydantic-ai]'",
    ) from exc

__all__ = ["ProctorToolset"]


def _scope(ctx: RunContext[Any]) -> str | None:
    """When the model asked for the call: kept in the message history across a resume."""
    for message in reversed(ctx.messages):
        if isinstance(message, ModelResponse) and any(
            isinstance(p, ToolCallPart) and p.tool_call_id == ctx.tool_call_id
            for p in message.parts
        ):
            return message.timestamp.isoformat()
    return None


@dataclass
class ProctorToolset(WrapperToolset[Any]):
    """Wraps a toolset so that Proctor decides, and executes, each of its tool calls.

    Attributes:
        wrapped: The toolset whose tools are governed.
        governor: Who the calls are submitted as, and to which Proctor.
        actions: Tool name → catalog action (default: the tool's name, lower-cased).
        specs: Tool name → ``Proctor.action`` options for tools registered in process.
    """

    governor: Governor = field(kw_only=True)
    actions: Mapping[str, str] = field(default_factory=dict, kw_only=True)
    specs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, kw_only=True)

    def __post_init__(self) -> None:
        # In process, the plain functions of a FunctionToolset become the actions' handlers
        # now; a tool that needs a RunContext cannot run outside the agent's run, so its
        # action must already be in the catalog (``Governor.register`` says so otherwise).
        if isinstance(self.wrapped, FunctionToolset):
            for name, tool in self.wrapped.tools.items():
                fn = None if tool.takes_ctx else tool.function
                spec = dict(self.specs.get(name, {}))
                spec.setdefault("params_schema", tool.tool_def.parameters_json_schema)
                spec.setdefault("summary", (tool.description or name).strip().splitlines()[0])
                self.governor.register(self.action_for(name), fn, **spec)

    @classmethod
    def of(
        cls,
        proctor: Proctor | ProctorClient,
        tools: Sequence[Tool[Any] | Callable[..., Any]],
        *,
        agent_id: str,
        on_behalf_of: str,
        model_version: str = "unknown",
        actions: Mapping[str, str] | None = None,
        specs: Mapping[str, Mapping[str, Any]] | None = None,
        wait_seconds: float = 30.0,
    ) -> ProctorToolset:
        """A governed ``FunctionToolset`` of ``tools`` (plain functions or ``Tool``s).

        Args:
            proctor: A ``Proctor`` (in process) or a ``ProctorClient`` (over HTTP).
            tools: The tools.
            agent_id: The acting agent.
            on_behalf_of: The user the agent acts for.
            model_version: The agent's model, recorded in each plan.
            actions: Tool name → catalog action.
            specs: Tool name → ``Proctor.action`` options (``category``, ``baselines``, ...).
            wait_seconds: How long a resumed call waits for an approved plan still running.
        """
        governor = Governor(
            proctor,
            agent_id=agent_id,
            on_behalf_of=on_behalf_of,
            model_version=model_version,
            wait_seconds=wait_seconds,
        )
        return cls(
            FunctionToolset(list(tools)),
            governor=governor,
            actions=dict(actions or {}),
            specs=dict(specs or {}),
        )

    def action_for(self, tool_name: str) -> str:
        """The catalog action a tool's calls map to."""
        return self.actions.get(tool_name, tool_name.lower())

    async def call_tool(
        self,
        name: str,
        tool_args: dict[str, Any],
        ctx: RunContext[Any],
        tool: ToolsetTool[Any],
    ) -> Any:
        """Submit the call to Proctor; return, defer or fail as it decided."""
        action = self.action_for(name)
        try:
            outcome = await self.governor.acall(
                action, tool_args, call_id=ctx.tool_call_id, scope=_scope(ctx)
            )
        except InvalidRequestError as exc:
            raise ToolFailed(invalid_call_message(action, exc)) from exc
        match outcome.kind:
            case "executed":
                return outcome.result
            case "pending":
                if ctx.tool_call_approved:
                    # Approved in pydantic-ai, not (yet) in Proctor: Proctor's record rules.
                    raise ToolFailed(outcome.message())
                raise ApprovalRequired(metadata=outcome.to_json())
            case "denied" | "failed":
                raise ToolFailed(outcome.message())

    async def results(self, requests: DeferredToolRequests) -> DeferredToolResults:
        """The deferred results of the approvals Proctor decided (still-waiting ones omitted).

        An approved (and executed) call is ``ToolApproved``; a denied, rejected, expired or
        failed one is ``ToolDenied`` with Proctor's reasons. A call left out is deferred again
        by the next run.
        """
        results = DeferredToolResults()
        for part in requests.approvals:
            meta = requests.metadata.get(part.tool_call_id) or {}
            plan_id = meta.get("plan_id")
            if not isinstance(plan_id, str) or not meta.get("proctor"):
                continue  # another toolset's approval: not ours to decide
            try:
                outcome = await self.governor.aoutcome(plan_id)
            except NotFoundError:
                continue
            if outcome.kind == "executed":
                results.approvals[part.tool_call_id] = ToolApproved()
            elif outcome.kind in ("denied", "failed"):
                results.approvals[part.tool_call_id] = ToolDenied(outcome.message())
        return results
