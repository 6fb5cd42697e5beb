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

import asyncio
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from proctor._library import Proctor
from proctor.client import ProctorClient
from proctor.errors import ConfigError, NotFoundError, ProctorError
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


_RESERVED = ("plan_id", "intent")
"""Keyword arguments the decorated call keeps for itself (a resume, the plan's intent)."""


def _default_action(fn: Callable[..., Any]) -> str:
    """``module.function``, lower-cased; in a script, the function's name alone.

    A script's module is ``__main__`` (``__mp_main__`` in a multiprocessing child), which says
    nothing about the tool and is not a valid action name.
    """
    module = fn.__module__ or "__main__"
    if module in ("__main__", "__mp_main__"):
        return fn.__name__.lower()
    return f"{module.split('.')[-1]}.{fn.__name__}".lower()


def _check_signature(fn: Callable[..., Any], signature: inspect.Signature) -> None:
    """Refuse at decoration what a governed call could not carry faithfully.

    Raises:
        ConfigError: ``fn`` is a method (Proctor may run it after an approval, in another
            thread or process, where no instance exists), or a parameter is named like a
            reserved keyword (``plan_id``, ``intent``), which the call would take for itself.
    """
    params = list(signature.parameters.values())
    first = params[0] if params else None
    if (
        first is not None
        and first.name in ("self", "cls")
        and first.kind
        in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        )
    ):
        raise ConfigError(
            f"@governed cannot govern the method {fn.__qualname__}: its {first.name!r} is not "
            "JSON, and Proctor may run the call after an approval, where no instance exists",
            field=first.name,
            hint="Govern a module-level function (or a staticmethod) that takes what it needs "
            "as JSON arguments, and call it from the method.",
        )
    named = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    clash = [p.name for p in params if p.name in _RESERVED and p.kind not in named]
    if clash:
        raise ConfigError(
            f"@governed cannot govern {fn.__qualname__}: its parameter {clash[0]!r} is a "
            "keyword the governed call reserves (plan_id= resumes a pending call, intent= "
            "states the plan's intent)",
            field=clash[0],
            hint=f"Rename the parameter (for example {clash[0]}_ or a more specific name).",
        )


def _params(
    signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The call's arguments by name, defaults included: the plan states exactly what runs.

    Raises:
        TypeError: the arguments do not fit the function (as calling it would), it takes
            ``*args`` (a plan's params are named), or a ``**kwargs`` key repeats the name of
            a positional-only parameter (the plan could not tell them apart).
    """
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    params: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise TypeError("a governed function's arguments must be named (no *args)")
        elif kind is inspect.Parameter.VAR_KEYWORD:
            extra = value
        else:
            params[name] = value
    clash = params.keys() & extra.keys()
    if clash:
        raise TypeError(
            f"a governed function's keyword argument {sorted(clash)[0]!r} repeats a "
            "positional-only parameter's name"
        )
    params.update(extra)
    return params


def _handler(fn: Callable[..., Any], signature: inspect.Signature) -> Callable[..., Any]:
    """``fn`` as the action's handler, which is called with the params by name.

    Positional-only parameters are passed by position, in order (up to the first one the
    params lack: the function then says what is missing, as a call would).
    """
    positional = [
        p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.POSITIONAL_ONLY
    ]
    if not positional:
        return fn

    def split(params: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        rest = dict(params)
        args: list[Any] = []
        for name in positional:
            if name not in rest:
                break
            args.append(rest.pop(name))
        return args, rest

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(**params: Any) -> Any:
            args, kwargs = split(params)
            return await fn(*args, **kwargs)

        return run_async

    @functools.wraps(fn)
    def run(**params: Any) -> Any:
        args, kwargs = split(params)
        return fn(*args, **kwargs)

    return run


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

    An ``async def`` stays one: awaiting it submits the plan off the event loop. The
    keywords ``plan_id=`` (resume a pending call) and ``intent=`` (the plan's intent) belong
    to the governed call, so the function may not have parameters of those names; it may
    not be a method either (govern a module-level function and call it from the method).

    Args:
        proctor: A ``Proctor`` (in process) or a ``ProctorClient`` (over HTTP).
        action: The catalog action; default the function's module-qualified name,
            lower-cased (``tools.refund``), or its bare name in a script (``__main__``).
        agent_id: Who calls (the actor of each plan).
        on_behalf_of: For whom.
        model_version: The agent's model version, for the audit log.
        category: The action's risk category, when it is registered here (in process).
        baselines: Its five-axis baselines (default all 1).
        params_schema: Its params' JSON Schema.
        **spec: Other ``Proctor.action`` options (``reversible``, ``compensate``, ...).

    Raises:
        ConfigError: at decoration, for a method, a parameter named ``plan_id`` or
            ``intent``, or (in process) an invalid action name.
    """
    governor = Governor(
        proctor, agent_id=agent_id, on_behalf_of=on_behalf_of, model_version=model_version
    )

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)
        _check_signature(fn, signature)
        name = action or _default_action(fn)
        governor.register(
            name,
            _handler(fn, signature),
            category=category,
            baselines=baselines,
            params_schema=params_schema,
            **spec,
        )

        # Every parameter named, none left to a default: the keyword arguments are the
        # params as they are (binding costs ~10 µs a call; this check well under one).
        plain = all(
            p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            for p in signature.parameters.values()
        )
        names = signature.parameters.keys()

        def params_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
            if plain and not args and kwargs.keys() == names:
                return kwargs
            return _params(signature, args, kwargs)

        def resumed(plan_id: str) -> ToolOutcome:
            # A plan id is only an answer for this function's own calls: the plan of another
            # action, agent or user must not come back as this tool's result. Unknown and
            # foreign ids fail alike, so the error does not say which plans exist.
            owner: tuple[object, object, list[object]] | None
            try:
                if isinstance(governor.proctor, Proctor):
                    rec = governor.proctor.get(plan_id)
                    owner = (rec.agent_id, rec.on_behalf_of, [s.action for s in rec.steps])
                else:
                    doc = governor.proctor.get(plan_id)
                    steps = doc.get("steps") or []
                    owner = (
                        doc.get("agent_id"),
                        doc.get("on_behalf_of"),
                        [s.get("action") for s in steps],
                    )
            except NotFoundError:
                owner = None
            if owner != (agent_id, on_behalf_of, [name]):
                raise NotFoundError(
                    f"no call of {name} by {agent_id} for {on_behalf_of} has plan id {plan_id!r}",
                    field="plan_id",
                )
            return governor.outcome(plan_id)

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def acall(
                *args: Any, plan_id: str | None = None, intent: str = "", **kwargs: Any
            ) -> Any:
                if plan_id is not None:
                    return raise_for_outcome(await asyncio.to_thread(resumed, plan_id))
                params = params_of(args, kwargs)
                return raise_for_outcome(await governor.acall(name, params, intent=intent))

            return acall

        @functools.wraps(fn)
        def call(*args: Any, plan_id: str | None = None, intent: str = "", **kwargs: Any) -> Any:
            if plan_id is not None:
                return raise_for_outcome(resumed(plan_id))
            params = params_of(args, kwargs)
            return raise_for_outcome(governor.call(name, params, intent=intent))

        return call

    return wrap
