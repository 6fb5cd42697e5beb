"""``@governed``: a plain decorator that puts Proctor in front of any Python function.

Calling the decorated function submits a one-step plan (action = the tool, params = the
keyword arguments) and acts on the decision:

- ``execute``: Proctor runs the function (as the action's handler, with the idempotency
  key in ``call``) and the call returns its result;
- ``confirm`` / ``approve``: raises ``ApprovalPending`` with the plan id; call again with the
  same arguments and ``plan_id=`` once a human decided, and it returns the result;
- ``deny``: raises ``ToolDenied`` whose message gives the reasons, for the model to read.

In process, pass a ``Proctor``: the function is registered as the action's handler. Over
HTTP, pass a ``ProctorClient``: the server runs the action's handler from its catalog, and
the function's body is only its documentation here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

from proctor._library import Proctor
from proctor.client import ProctorClient
from proctor.core.lifecycle import PlanRecord
from proctor.errors import ProctorError

__all__ = ["ApprovalPending", "ToolDenied", "ToolFailed", "governed"]

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}


class ToolDenied(ProctorError):
    """The policy (or a guard) denied the call; the message says why."""

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


def _outcome(plan_id: str, status: str, reasons: list[str], result: Any, error: str | None) -> Any:
    if status == "succeeded":
        return result
    if status in ("awaiting_confirmation", "awaiting_approval"):
        who = "its user's confirmation" if status == "awaiting_confirmation" else "approval"
        raise ApprovalPending(
            f"plan {plan_id} waits for {who} ({'; '.join(reasons)}); "
            f"call again with plan_id={plan_id!r} once it is decided",
            plan_id=plan_id,
            status=status,
        )
    if status in ("denied", "rejected", "expired"):
        raise ToolDenied(f"the call was {status}: {'; '.join(reasons) or error or 'no reason'}")
    if status == "running":
        raise ApprovalPending(
            f"plan {plan_id} is running; call again with plan_id={plan_id!r}",
            plan_id=plan_id,
            status=status,
        )
    raise ToolFailed(f"the call {status}: {error or 'see the audit log'}")


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

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = action or f"{fn.__module__.split('.')[-1]}.{fn.__name__}".lower()
        if isinstance(proctor, Proctor) and name not in proctor.gateway.catalog:
            proctor.action(
                name,
                category=category,
                baselines=baselines or LOW,
                params=params_schema,
                **spec,
            )(lambda params, call: fn(**params))

        @functools.wraps(fn)
        def call(*, plan_id: str | None = None, intent: str = "", **kwargs: Any) -> Any:
            if plan_id is not None:
                return _wait(plan_id)
            manifest = {
                "plan_id": f"gov-{os.urandom(8).hex()}",
                "actor": {
                    "type": "agent",
                    "name": agent_id,
                    "model_version": model_version,
                    "agent_id": agent_id,
                },
                "on_behalf_of": on_behalf_of,
                "intent": intent or f"call {name}",
                "steps": [{"id": "s1", "action": name, "params": kwargs}],
            }
            if isinstance(proctor, Proctor):
                return _local(proctor.submit(manifest))
            return _remote(proctor.submit(manifest))

        def _wait(plan_id: str) -> Any:
            if isinstance(proctor, Proctor):
                return _local(proctor.get(plan_id))
            return _remote(proctor.get(plan_id))

        return call

    return wrap


def _local(rec: PlanRecord) -> Any:
    reasons = [r for s in rec.decision["steps"] for r in s["reasons"]] + list(
        rec.decision["plan_reasons"]
    )
    return _outcome(rec.plan_id, rec.status.value, reasons, rec.steps[0].result, rec.error)


def _remote(doc: Mapping[str, Any]) -> Any:
    step = doc["steps"][0]
    return _outcome(
        doc["plan_id"],
        doc["status"],
        list(doc.get("reasons", [])),
        step.get("result"),
        doc.get("error"),
    )
