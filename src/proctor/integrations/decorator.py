"""``@governed``: a plain decorator that puts Proctor in front of any Python function.

Calling the decorated function submits a one-step plan (action = the tool, params = its
arguments by name, defaults included) and acts on the decision:

- ``execute``: Proctor runs the function (as the action's handler, with the idempotency
  key in ``call``) and the call returns its result;
- ``confirm`` / ``approve``: raises ``ApprovalPending`` with the plan id; call again with
  ``plan_id=`` once a human decided, and it returns the result;
- ``deny``: raises ``ToolDenied`` whose message gives the reasons, for the model to read.

In process, pass a ``Proctor``: the function is registered as the action's handler. Over
HTTP, pass a ``ProctorClient``: the server runs the action's handler from its catalog, and
the function's body is only its documentation here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from proctor._library import Proctor
from proctor.client import ProctorClient
from proctor.errors import ProctorError
from proctor.integrations._governor import Governor, ToolOutcome

__all__ = ["ApprovalPending", "ToolDenied", "ToolFailed", "governed", "raise_for_outcome"]


class ToolDenied(ProctorError):
    """The policy (or a guard, or a human) denied the call; the message says why."""

    code = "tool_denied"


class ToolFailed(ProctorError):
    """The call was allowed but the tool failed (completed steps were compensated)."""

    code = "tool_failed"


class ApprovalPending(ProctorError):
    """A human must confirm or approve first; retry with ``plan_id=`` afterwards."""

    code = "approval_pending"

    def __init__(self, message: str, *, plan_id: str, status: str) -> None:
        super().__init__(message, field="plan_id")
        self.plan_id = plan_id
        self.status = status


def raise_for_outcome(outcome: ToolOutcome) -> Any:
    """Return an executed call's result, or raise the exception that says why not.

    Raises:
        ApprovalPending: a human must decide first (or the approved call still runs).
        ToolDenied: the call was denied, rejected or expired.
        ToolFailed: the tool failed.
    """
    match outcome.kind:
        case "executed":
            return outcome.result
        case "pending":
            raise ApprovalPending(
                f"{outcome.message()}; call again with plan_id={outcome.plan_id!r} "
                "once it is decided",
                plan_id=outcome.plan_id,
                status=outcome.status,
            )
        case "denied":
            raise ToolDenied(outcome.message())
        case "failed":
            raise ToolFailed(outcome.message())


def _params(
    signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The call's arguments by name, defaults included: the plan states exactly what runs.

    Raises:
        TypeError: the arguments do not fit the function (as calling it would), or it takes
            ``*args`` (a plan's params are named).
    """
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    params: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise TypeError("a governed function's arguments must be named (no *args)")
        elif kind is inspect.Parameter.VAR_KEYWORD:
            params.update(value)
        else:
            params[name] = value
    return params


def governed(
    proctor: Proctor | ProctorClient,
    *,
    action: str | None = None,
    agent_id: str,
    on_behalf_of: str,
    model_version: str = "unknown",
    category: str = "general",
    baselines: Mapping[str, int] | None = None,
    params_schema: Mapping[str, Any] | None = None,
    **spec: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Govern every call of the decorated function through ``proctor``.

    Args:
        proctor: A ``Proctor`` (in process) or a ``ProctorClient`` (over HTTP).
        action: The catalog action; default the function's module-qualified name.
        agent_id: Who calls (the actor of each plan).
        on_behalf_of: For whom.
        model_version: The agent's model version, for the audit log.
        category: The action's risk category, when it is registered here (in process).
        baselines: Its five-axis baselines (default all 1).
        params_schema: Its params' JSON Schema.
        **spec: Other ``Proctor.action`` options (``reversible``, ``compensate``, ...).
    """
    governor = Governor(
        proctor, agent_id=agent_id, on_behalf_of=on_behalf_of, model_version=model_version
    )

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = action or f"{fn.__module__.split('.')[-1]}.{fn.__name__}".lower()
        governor.register(
            name,
            fn,
            category=category,
            baselines=baselines,
            params_schema=params_schema,
            **spec,
        )

        signature = inspect.signature(fn)
        # Every parameter named, none left to a default: the keyword arguments are the
        # params as they are (binding costs ~10 µs a call; this check well under one).
        plain = all(
            p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            for p in signature.parameters.values()
        )
        names = signature.parameters.keys()

        @functools.wraps(fn)
        def call(*args: Any, plan_id: str | None = None, intent: str = "", **kwargs: Any) -> Any:
            if plan_id is not None:
                return raise_for_outcome(governor.outcome(plan_id))
            if plain and not args and kwargs.keys() == names:
                params = kwargs
            else:
                params = _params(signature, args, kwargs)
            return raise_for_outcome(governor.call(name, params, intent=intent))

        return call

    return wrap
