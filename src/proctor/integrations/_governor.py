"""The part every integration shares: one tool call as one governed, one-step plan.

``Governor`` submits the plan (in process through ``Proctor`` or over HTTP through
``ProctorClient``), reads it back, and returns a ``ToolOutcome``: a closed union of
``executed`` / ``pending`` / ``denied`` / ``failed`` that each framework adapter maps onto its
own vocabulary (a return value, an interrupt, a deferred call, a tool error).

Two rules every adapter relies on:

- **Proctor executes, the framework only asks.** The tool's function is the action's handler
  (registered here in process; the server's catalog over HTTP), so an approved call runs once,
  in Proctor, with an idempotency key, whoever approved it and whenever.
- **A tool call maps to one plan id.** The id is derived from the framework's tool-call id,
  the actor and the call itself, so a framework that re-runs a node or a tool on resume
  re-submits the *same* manifest and Proctor answers with the plan it already has (the
  gateway treats an identical resubmission as idempotent) instead of running it again.

Implementation-only (leading underscore): the adapters' public names are in their modules.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import inspect
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from proctor._library import Proctor
from proctor.bootstrap import SystemClock
from proctor.client import ProctorClient
from proctor.core.lifecycle import PlanRecord
from proctor.core.plans import new_plan_id
from proctor.errors import ConfigError, InvalidRequestError

__all__ = ["BYTES", "LOW", "UNSERIALISABLE", "Governor", "ToolOutcome", "plan_id_for"]

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}
"""Five-axis baselines of an action registered without any: all at the minimum."""

_EXECUTED = frozenset({"succeeded", "simulated"})
_PENDING = frozenset({"awaiting_confirmation", "awaiting_approval", "running", "compensating"})
_DENIED = frozenset({"denied", "rejected", "expired"})
# Everything else (failed, compensated, needs_attention, undone) is a failure the model reads.
_IN_FLIGHT = frozenset({"running", "compensating"})

OutcomeKind = Literal["executed", "pending", "denied", "failed"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolOutcome:
    """What became of one governed tool call.

    Attributes:
        kind: ``executed`` (``result`` holds the tool's result), ``pending`` (a human must
            confirm or approve, or the approved call is still running), ``denied`` (policy,
            guard or human said no; ``reasons`` says why) or ``failed`` (the tool failed).
        plan_id: The plan that carries the call.
        status: The plan's status (``succeeded``, ``awaiting_approval``, ...).
        action: The catalog action.
        reasons: The decision's reasons (and a rejecting human's comment).
        result: The tool's result, for ``executed``.
        error: The failure, for ``failed``.
        approver_roles: Who may approve, for ``pending``.
    """

    kind: OutcomeKind
    plan_id: str
    status: str
    action: str
    reasons: tuple[str, ...] = ()
    result: Any = None
    error: str | None = None
    approver_roles: tuple[str, ...] = field(default=())

    def message(self) -> str:
        """A sentence for the model (or a human) that says what happened and why."""
        why = "; ".join(self.reasons) or "no reason given"
        match self.kind:
            case "executed":
                return f"{self.action} executed (plan {self.plan_id})"
            case "pending":
                if self.status in _IN_FLIGHT:
                    return f"{self.action} was approved and is still running (plan {self.plan_id})"
                if self.status == "awaiting_confirmation":
                    who = "its user's confirmation"
                elif self.approver_roles:
                    who = f"approval by {', '.join(self.approver_roles)}"
                else:
                    who = "approval"
                return f"{self.action} waits for {who} (plan {self.plan_id}): {why}"
            case "denied":
                return f"{self.action} was {self.status} by Proctor (plan {self.plan_id}): {why}"
            case "failed":
                return (
                    f"{self.action} {self.status} (plan {self.plan_id}): "
                    f"{self.error or 'see the audit log'}"
                )

    def to_json(self) -> dict[str, Any]:
        """A JSON object (an interrupt's or a deferred call's payload)."""
        return {
            "proctor": True,
            "kind": self.kind,
            "plan_id": self.plan_id,
            "status": self.status,
            "action": self.action,
            "reasons": list(self.reasons),
            "approver_roles": list(self.approver_roles),
            "message": self.message(),
        }


def plan_id_for(
    call_id: str,
    *,
    agent_id: str,
    on_behalf_of: str,
    action: str,
    params: Mapping[str, Any],
    scope: str | None = None,
) -> str:
    """The plan id of a framework tool call: stable across the framework's re-runs.

    The params are part of it, so a reused tool-call id with other arguments is another plan
    (never a ``plan_id_reused`` conflict, and never the old call's result). ``scope`` is
    what else identifies the call where the framework keeps it across a resume (the id or
    time of the model response that asked for it): some models (test models, some local
    servers) reuse tool-call ids, and two calls must not share a plan just because of that.
    """
    material = orjson.dumps(
        [call_id, agent_id, on_behalf_of, action, params, scope], option=orjson.OPT_SORT_KEYS
    )
    return "tc-" + hashlib.sha256(material).hexdigest()[:32]


BYTES = "proctor.bytes_base64"
"""The key of the object that stands for ``bytes`` in a tool's result: ``{BYTES: base64}``."""
UNSERIALISABLE = "proctor.unserialisable_result"
"""The key of the object that stands for a result that is not JSON data (the tool ran)."""


def _jsonable(value: Any) -> Any:
    """A tool's result as JSON data: the step result is stored and audited as JSON.

    Keys that are not strings become strings, ``bytes`` become ``{BYTES: base64}``, pydantic
    models their JSON dump, other objects their ``str``. This runs after the tool did: a
    result that still cannot be JSON (a cycle, a tuple key) becomes
    ``{UNSERIALISABLE: type, "error": why}``, never a failure that would invite a re-run.

    Raises:
        TypeError: the result is a generator, which nothing ran (its body runs when iterated).
    """
    if inspect.isgenerator(value) or inspect.isasyncgen(value):
        raise TypeError(
            f"the tool returned a {type(value).__name__}, which Proctor does not iterate "
            "(its body did not run): return a list instead"
        )

    def default(obj: Any) -> Any:
        if isinstance(obj, bytes | bytearray | memoryview):
            return {BYTES: base64.b64encode(bytes(obj)).decode("ascii")}
        dump = getattr(obj, "model_dump", None)  # pydantic models, without importing pydantic
        if callable(dump):
            return dump(mode="json")
        return str(obj)

    try:
        return orjson.loads(orjson.dumps(value, default=default, option=orjson.OPT_NON_STR_KEYS))
    except (TypeError, ValueError) as exc:  # orjson.JSONEncodeError is a TypeError
        return {UNSERIALISABLE: type(value).__name__, "error": str(exc)}


def _run_coroutine(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run an async tool to completion from sync handler code.

    Proctor calls handlers synchronously (in the submitting thread, or a worker's). When that
    thread already runs an event loop (an approval given from async code), ``asyncio.run``
    would refuse, so the coroutine gets a thread and a loop of its own.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread below
            box["error"] = exc

    thread = threading.Thread(target=target, name="proctor-async-tool")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


_REGISTERING = threading.Lock()
# Per Proctor: action → the function the integrations registered as its handler (its identity,
# ``key``), so another function under the same name is a clash, not a silent alias.
_REGISTERED: weakref.WeakKeyDictionary[Proctor, dict[str, Any]] = weakref.WeakKeyDictionary()


def _same_function(a: Any, b: Any) -> bool:
    """True if ``a`` and ``b`` are one function.

    The same object, the same bound method, or closures of one factory over the same objects
    (an adapter's per-call wrapper of one tool).
    """
    if a is b or a == b:
        return True
    code_a, code_b = getattr(a, "__code__", None), getattr(b, "__code__", None)
    if code_a is None or code_a is not code_b:
        return False
    cells_a, cells_b = a.__closure__ or (), b.__closure__ or ()
    return len(cells_a) == len(cells_b) and all(
        x.cell_contents is y.cell_contents for x, y in zip(cells_a, cells_b, strict=True)
    )


def handler_for(fn: Callable[..., Any]) -> Callable[[dict[str, Any], Any], Any]:
    """A Proctor handler (``handler(params, call)``) that calls ``fn(**params)``."""
    if inspect.iscoroutinefunction(fn):

        def run_async(params: dict[str, Any], call: Any) -> Any:
            return _jsonable(_run_coroutine(fn(**params)))

        return run_async

    def run(params: dict[str, Any], call: Any) -> Any:
        result = fn(**params)
        if inspect.iscoroutine(result):  # an async tool behind a sync wrapper
            result = _run_coroutine(result)
        return _jsonable(result)

    return run


class Governor:
    """Submits tool calls as one-step plans and reads what became of them.

    Args:
        proctor: A ``Proctor`` (in process) or a ``ProctorClient`` (over HTTP).
        agent_id: The acting agent (each plan's ``actor.agent_id``).
        on_behalf_of: The user the agent acts for.
        model_version: The agent's model, recorded in the plan.
        wait_seconds: How long to wait for an approved call that is still running
            (executed by a worker) before reporting it as pending.
    """

    def __init__(
        self,
        proctor: Proctor | ProctorClient,
        *,
        agent_id: str,
        on_behalf_of: str,
        model_version: str = "unknown",
        wait_seconds: float = 30.0,
    ) -> None:
        if not isinstance(proctor, (Proctor, ProctorClient)):
            raise ConfigError(
                f"expected a Proctor or a ProctorClient, got {type(proctor).__name__}",
                field="proctor",
            )
        self.proctor = proctor
        self.agent_id = agent_id
        self.on_behalf_of = on_behalf_of
        self.model_version = model_version
        self.wait_seconds = wait_seconds

    @property
    def local(self) -> bool:
        """True in process (this process executes the tools)."""
        return isinstance(self.proctor, Proctor)

    def register(
        self,
        action: str,
        fn: Callable[..., Any] | None,
        *,
        category: str = "general",
        baselines: Mapping[str, int] | None = None,
        params_schema: Mapping[str, Any] | None = None,
        summary: str | None = None,
        key: Any = None,
        **spec: Any,
    ) -> None:
        """In process, make ``fn`` the handler of ``action`` unless the catalog has it.

        An action already in the catalog keeps its own spec and handler (the catalog is the
        administrator's, not the agent's), except that an action an integration registered
        from one function cannot be registered again from another: two tools of one name
        must not silently share the first one's function. Registering the same function
        again (another agent, another tool node, a parallel first call) is fine. Thread-safe.
        Over HTTP this does nothing: the server's catalog decides what runs.

        ``key`` identifies the function when ``fn`` is a per-call wrapper (the wrapped tool's
        own function); default ``fn``.

        Raises:
            ConfigError: in process, if ``action`` is unknown and there is no ``fn`` to run,
                or if an integration registered ``action`` from another function.
        """
        proctor = self.proctor
        if not isinstance(proctor, Proctor):
            return
        key = fn if key is None else key
        if any(inspect.isgeneratorfunction(f) or inspect.isasyncgenfunction(f) for f in (fn, key)):
            raise ConfigError(
                f"the function of action {action!r} is a generator: its body runs only when "
                "iterated, and Proctor records the call's result, it does not iterate it",
                field="action",
                hint="Return a list (or another JSON value) instead of yielding.",
            )
        with _REGISTERING:
            mine = _REGISTERED.setdefault(proctor, {})
            if action in mine:
                if fn is not None and not _same_function(mine[action], key):
                    raise ConfigError(
                        f"two different functions are governed as action {action!r}: the "
                        f"second ({_describe(key)}) would silently run the first "
                        f"({_describe(mine[action])})",
                        field="action",
                        hint="Give the tools distinct names, or map one to another action "
                        '(actions={"search": "hr.search"}; action= for @governed).',
                    )
                return
            if action in proctor.gateway.catalog:
                return
            if fn is None:
                raise ConfigError(
                    f"action {action!r} is not in the catalog and has no function to run",
                    field="action",
                    hint="Add it to the catalog, or govern a tool that wraps a plain function.",
                )
            proctor.action(
                action,
                category=category,
                baselines=baselines or LOW,
                params=params_schema,
                summary=summary or (fn.__doc__ or action).strip().splitlines()[0],
                **spec,
            )(handler_for(fn))
            mine[action] = key

    def manifest(
        self, action: str, params: Mapping[str, Any], *, plan_id: str, intent: str = ""
    ) -> dict[str, Any]:
        """The one-step plan manifest of a call (deterministic for a given ``plan_id``).

        The params are a deep copy: a caller that changes a list it passed after the
        decision (while the plan waits for approval) does not change what runs.
        """
        try:
            params = copy.deepcopy(dict(params))
        except Exception:  # noqa: BLE001 - not data: the gateway rejects it, as before
            params = dict(params)
        return {
            "plan_id": plan_id,
            "actor": {
                "type": "agent",
                "name": self.agent_id,
                "model_version": self.model_version,
                "agent_id": self.agent_id,
            },
            "on_behalf_of": self.on_behalf_of,
            "intent": intent or f"call {action}",
            "steps": [{"id": "s1", "action": action, "params": params}],
        }

    def call(
        self,
        action: str,
        params: Mapping[str, Any],
        *,
        call_id: str | None = None,
        scope: str | None = None,
        intent: str = "",
    ) -> ToolOutcome:
        """Submit a call (idempotently, given the framework's ``call_id``) and return its outcome.

        Without a ``call_id`` every call is a new plan. With one, the plan id is
        ``plan_id_for(call_id, ..., scope=scope)``.

        Raises:
            InvalidRequestError: the params break the action's schema (nothing executed); the
                adapters turn it into a tool error for the model.
        """
        if call_id is None:
            p = self.proctor
            clock = p.gateway.clock if isinstance(p, Proctor) else SystemClock()
            plan_id = new_plan_id("tc", clock.now())
        else:
            plan_id = plan_id_for(
                call_id,
                agent_id=self.agent_id,
                on_behalf_of=self.on_behalf_of,
                action=action,
                params=params,
                scope=scope,
            )
        manifest = self.manifest(action, params, plan_id=plan_id, intent=intent)
        if isinstance(self.proctor, Proctor):
            outcome = _from_record(self.proctor.submit(manifest))
        else:
            outcome = _from_json(self.proctor.submit(manifest))
        return self._settle(outcome)

    def outcome(self, plan_id: str) -> ToolOutcome:
        """Read a plan's outcome now (waiting a while if it is running)."""
        return self._settle(self._read(plan_id))

    async def acall(
        self,
        action: str,
        params: Mapping[str, Any],
        *,
        call_id: str | None = None,
        scope: str | None = None,
        intent: str = "",
    ) -> ToolOutcome:
        """``call`` off the event loop (in process, the tool itself runs in that thread)."""
        return await asyncio.to_thread(
            self.call, action, params, call_id=call_id, scope=scope, intent=intent
        )

    async def aoutcome(self, plan_id: str) -> ToolOutcome:
        """``outcome`` off the event loop."""
        return await asyncio.to_thread(self.outcome, plan_id)

    def _read(self, plan_id: str, wait: float | None = None) -> ToolOutcome:
        if isinstance(self.proctor, Proctor):
            return _from_record(self.proctor.get(plan_id))
        return _from_json(self.proctor.get(plan_id, wait=wait))

    def _settle(self, outcome: ToolOutcome) -> ToolOutcome:
        # An approved plan may be executed by a worker rather than by the approving call:
        # wait for it (bounded), so the resumed tool returns the executed result.
        deadline = time.monotonic() + self.wait_seconds
        delay = 0.01
        while outcome.status in _IN_FLIGHT:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if isinstance(self.proctor, Proctor):
                time.sleep(min(delay, left))
                delay = min(delay * 2, 0.25)
                outcome = self._read(outcome.plan_id)
            else:
                outcome = self._read(outcome.plan_id, wait=min(left, 30.0))
        return outcome


def _describe(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "name", None) or type(fn).__name__
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module else str(name)


def _kind(status: str) -> OutcomeKind:
    if status in _EXECUTED:
        return "executed"
    if status in _PENDING:
        return "pending"
    if status in _DENIED:
        return "denied"
    return "failed"


def _from_record(rec: PlanRecord) -> ToolOutcome:
    decision = rec.decision
    reasons = [r for s in decision["steps"] for r in s["reasons"]] + list(decision["plan_reasons"])
    reasons += [
        f"rejected by {a.principal}" + (f": {a.comment}" if a.comment else "")
        for a in rec.approvals
        if a.kind == "reject"
    ]
    step = rec.steps[0]
    status = rec.status.value
    result = step.result
    if status == "simulated":
        result = {"simulated": True, "prediction": step.simulation}
    return ToolOutcome(
        kind=_kind(status),
        plan_id=rec.plan_id,
        status=status,
        action=step.action,
        reasons=tuple(reasons),
        result=result,
        error=rec.error or step.error,
        approver_roles=tuple(decision.get("approver_roles") or ()),
    )


def _from_json(doc: Mapping[str, Any]) -> ToolOutcome:
    step = doc["steps"][0]
    prefix = f"{step['id']}: "
    reasons = [r.removeprefix(prefix) for r in doc.get("reasons", [])]
    reasons += [
        f"rejected by {a['principal']}" + (f": {a['comment']}" if a.get("comment") else "")
        for a in doc.get("approvals", [])
        if a.get("kind") == "reject"
    ]
    status = str(doc["status"])
    result = step.get("result")
    if status == "simulated":
        result = {"simulated": True, "prediction": step.get("simulation")}
    return ToolOutcome(
        kind=_kind(status),
        plan_id=str(doc["plan_id"]),
        status=status,
        action=str(step["action"]),
        reasons=tuple(reasons),
        result=result,
        error=doc.get("error") or step.get("error"),
        approver_roles=tuple(doc.get("approver_roles") or ()),
    )


def invalid_call_message(action: str, exc: InvalidRequestError) -> str:
    """The model-facing message for a call Proctor rejected before deciding anything.

    Bad arguments are the model's to fix; an action the catalog does not have is not.
    """
    what = "unknown action" if (exc.field or "").endswith(".action") else "invalid arguments"
    return f"{action} was rejected by Proctor ({what}): {exc}"
