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

import functools
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
    from pydantic_core import PydanticSerializationError, to_jsonable_python
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


def _single_arg(schema: Any) -> str | None:
    """The parameter of a function tool whose one argument is model-like, else None.

    Such a tool's JSON schema is the model's own; its validated arguments are ``{name: model}``.
    """
    name = getattr(schema, "single_arg_name", None)
    return name if isinstance(name, str) else None


def _runner(tool: Tool[Any]) -> Callable[..., Any]:
    """The tool's function as an action handler: called with the plan's params (JSON).

    A plan's params are the JSON form of the arguments pydantic-ai validated, so they are
    validated again by the tool's own schema first: the function gets its typed values (a
    model, a date, an enum), as it would outside Proctor, and positional-only parameters
    by position.
    """
    schema = tool.function_schema
    # ``revalidate`` reads aliased parameters by name too (pydantic-ai's own path for
    # arguments that crossed a boundary as JSON).
    revalidate = getattr(schema, "revalidate", None) or schema.validator.validate_python
    single = _single_arg(schema)
    positional = list(getattr(schema, "positional_fields", ()))
    var_positional = getattr(schema, "var_positional_field", None)

    def arguments(params: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        # A single model-like argument's params are the model's fields, as the model sent
        # them (the tool's JSON schema is the model's): the validator reads that shape.
        kwargs = dict(schema.validator.validate_python(params) if single else revalidate(params))
        args = [kwargs.pop(name) for name in positional]
        if var_positional:
            args.extend(kwargs.pop(var_positional))
        return args, kwargs

    fn = schema.function
    if schema.is_async:

        @functools.wraps(fn)
        async def run_async(**params: Any) -> Any:
            args, kwargs = arguments(params)
            return await fn(*args, **kwargs)

        return run_async

    @functools.wraps(fn)
    def run(**params: Any) -> Any:
        args, kwargs = arguments(params)
        return fn(*args, **kwargs)

    return run


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
                fn = None if tool.takes_ctx else _runner(tool)
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
        params = self._params(action, name, tool_args, tool)
        try:
            outcome = await self.governor.acall(
                action, params, call_id=ctx.tool_call_id, scope=_scope(ctx)
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

    def _params(
        self, action: str, name: str, tool_args: dict[str, Any], tool: ToolsetTool[Any]
    ) -> dict[str, Any]:
        """A call's plan params: the JSON form of the arguments pydantic-ai validated.

        pydantic-ai hands over typed values (models, dates, enums); the plan carries their
        JSON form (by alias, as the tool's JSON schema names them), and the handler validates
        it back into the function's types. A function tool whose one argument is a model has
        the model's fields as params, the shape of its schema and of the model's call.

        Raises:
            ToolFailed: the arguments have no JSON form (nothing is submitted, nothing runs).
        """
        single = None
        if isinstance(self.wrapped, FunctionToolset):
            source = self.wrapped.tools.get(name)
            if source is not None and tool.args_validator is source.function_schema.validator:
                single = _single_arg(source.function_schema)
        try:
            params = to_jsonable_python(tool_args, by_alias=True)
        except PydanticSerializationError as exc:
            # Not JSON, so not a plan Proctor could decide or record: fail closed.
            raise ToolFailed(
                f"{action} was rejected by Proctor (invalid arguments): "
                f"they cannot be written as JSON: {exc}"
            ) from exc
        if single is not None:
            params = params.get(single) if isinstance(params, dict) else None
        if not isinstance(params, dict):
            raise ToolFailed(
                f"{action} was rejected by Proctor (invalid arguments): they are not a JSON object"
            )
        return params

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
