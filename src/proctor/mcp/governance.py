"""From an MCP tool to a catalog action, and from a ``tools/call`` to a one-step plan.

- **Actions.** Tool ``t`` of server ``s`` is the action ``mcp.<s>.<t>`` (lower-cased, other
  characters as ``_``). Names that would share an action (``Read`` and ``read``, servers
  ``fs`` and ``FS``) each get their own: ``mcp.<s>.<t>-<8 hex>``, the hex from the exact
  names (``action_names``), so no call, decision or approval of one is ever the other's. A
  catalog entry of that name (TOML, with no handler) declares its
  category, baselines, masks and timeout; the proxy binds the handler and the runner
  ``mcp``. A tool with no entry is scored from its annotations, which are *untrusted
  hints* from the server: they may lower the risk of a read-only tool to 3, never below,
  and every other axis stays at 4, so the default policy asks for approval (fail closed).
  The tool's ``inputSchema`` becomes the params schema when the entry gives none, so bad
  arguments are refused by validation, audited, and never reach the server.
- **Plan ids.** A call is identified by (agent, client, action, canonical arguments) plus
  a *generation*: ``mcp-<hash>-<n>``. Generation ``n`` is reused while its plan waits
  (confirmation, approval, or approved and queued for this runner): an agent retrying the
  same call after an approval finds that plan and its approval. Once it is over (done,
  denied, rejected, expired) the same call is a new plan ``n + 1``. Generations fill up
  contiguously, so the current one is found with an exponential then binary search.
- **Held by a guard.** A retry whose plan a kill switch or the whitelist holds (approved or
  confirmed, then stopped at its claim) is refused at once, the same way by a local proxy
  and by ``/v1/mcp/calls`` for a remote one (``not_run_now``): nothing runs it until the
  guard allows it, so there is nothing to wait for, and the plan keeps its id for the retry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from proctor.core.assessment import Scores
from proctor.core.catalog import ActionSpec
from proctor.core.lifecycle import PlanRecord, PlanStatus
from proctor.errors import ConflictError

if TYPE_CHECKING:
    import mcp_types as types

__all__ = [
    "WAITING",
    "action_name",
    "action_names",
    "bind_schema",
    "bind_spec",
    "call_key",
    "clash_name",
    "current_plan_id",
    "manifest",
    "not_run_now",
    "spec_from_annotations",
    "spec_from_hints",
]

_BAD = re.compile(r"[^a-z0-9_]+")
WAITING = frozenset(
    {PlanStatus.AWAITING_APPROVAL, PlanStatus.AWAITING_CONFIRMATION, PlanStatus.RUNNING}
)
"""Statuses in which a retried call belongs to the same plan."""

_TRIVIAL_SCHEMA: Mapping[str, Any] = {"type": "object"}


def _slug(text: str) -> str:
    return _BAD.sub("_", text.lower()).strip("_") or "x"


def action_name(server: str, tool: str) -> str:
    """Return the catalog action of ``tool`` on ``server``: ``mcp.<server>.<tool>``."""
    return f"mcp.{_slug(server)}.{_slug(tool)}"


def clash_name(server: str, tool: str) -> str:
    """The action of ``tool`` on ``server`` when another tool's name slugs to the same one.

    ``mcp.<server>.<tool>-<hex>``: the first 8 hex digits of the SHA-256 of the JSON array
    ``["<server>","<tool>"]`` of the exact names. A slug never contains ``-``, so this name
    is never another tool's ``action_name``.
    """
    digest = hashlib.sha256(orjson.dumps([server, tool])).hexdigest()[:8]
    return f"{action_name(server, tool)}-{digest}"


def action_names(
    tools: Iterable[tuple[str, str]],
) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], str]]:
    """Give every (server, tool) its own action: ``action_name``, or ``clash_name`` on a clash.

    Args:
        tools: The exact (server, tool) names, each once.

    Returns:
        The action of each pair (no two share one; a pair left out could not get its own:
        refuse it), and the pairs that got a ``clash_name``, each with the ``action_name``
        they would have shared (for the operator's log).
    """
    by_name: dict[str, list[tuple[str, str]]] = {}
    for pair in tools:
        by_name.setdefault(action_name(*pair), []).append(pair)
    names: dict[tuple[str, str], str] = {}
    clashed: dict[tuple[str, str], str] = {}
    for plain, pairs in by_name.items():
        if len(pairs) == 1:
            names[pairs[0]] = plain
            continue
        # None keeps the plain name: which one would depend on the listing's order, and a
        # catalog entry written for one tool must not silently govern another.
        own = {pair: clash_name(*pair) for pair in pairs}
        taken = list(own.values())
        for pair, name in own.items():
            clashed[pair] = plain
            if taken.count(name) == 1:  # else a 32-bit digest collision: neither gets it
                names[pair] = name
    return names, clashed


def spec_from_annotations(name: str, tool: types.Tool) -> ActionSpec:
    """A catalog entry for a tool nobody declared: scores high enough to need approval.

    Args:
        name: The action name.
        tool: The upstream's description of the tool.

    Returns:
        See ``spec_from_hints``.
    """
    a = tool.annotations
    return spec_from_hints(
        name,
        tool_name=tool.name,
        description=tool.description,
        read_only=bool(a and a.read_only_hint is True),
        idempotent=bool(a and a.idempotent_hint is True),
    )


def spec_from_hints(
    name: str, *, tool_name: str, description: str | None, read_only: bool, idempotent: bool
) -> ActionSpec:
    """A catalog entry for an undeclared tool from its annotations (without the MCP SDK).

    ``proctor serve`` builds the entries of a remote proxy's tools with it (``/v1/mcp``).

    Args:
        name: The action name.
        tool_name: The tool's own name.
        description: Its description, if any.
        read_only: Its ``readOnlyHint`` is true.
        idempotent: Its ``idempotentHint`` is true.

    Returns:
        An entry in ``read`` (read-only hint) or ``general``; baselines risk 3 (read-only)
        or 5, every other axis 4: a total of at least 19.
    """
    # Hints, not facts: a server may say anything. Only "read-only" lowers anything, and only
    # to a middle risk; "destructive: false" or "idempotent" never lower a score.
    risk = 3 if read_only else 5
    return ActionSpec(
        name=name,
        summary=f"MCP tool {tool_name}"[:300] + (f": {description[:120]}" if description else ""),
        params_schema=_TRIVIAL_SCHEMA,
        category="read" if read_only else "general",
        baselines=Scores(risk=risk, auditability=4, ux=4, recovery=4, cost=4),
        # Idempotent only matters for retries after a timeout or a lost connection; a hint
        # cannot make a call that may write safe to repeat.
        idempotent=read_only and idempotent,
    )


def bind_spec(
    base: ActionSpec, tool: types.Tool, handler: str, *, on_bad_schema: Callable[[str], None]
) -> ActionSpec:
    """Return ``base`` bound to the proxy: handler, runner ``mcp``, the tool's schema.

    See ``bind_schema``.
    """
    return bind_schema(base, tool.input_schema, handler, on_bad_schema=on_bad_schema)


def bind_schema(
    base: ActionSpec,
    input_schema: Mapping[str, Any] | None,
    handler: str,
    *,
    on_bad_schema: Callable[[str], None],
) -> ActionSpec:
    """Return ``base`` bound to the proxy: handler, runner ``mcp``, the tool's input schema.

    The tool's ``inputSchema`` replaces a trivial params schema. A schema that does not
    compile is not used (the server still validates its own input) and reported through
    ``on_bad_schema``.
    """
    spec = dataclasses.replace(base, handler=handler, runner="mcp")
    if dict(base.params_schema) != _TRIVIAL_SCHEMA:
        return spec
    schema = dict(input_schema or {})
    # The upstream's $schema often names draft 2020-12, which the validator does not know;
    # the keywords tools use (type, properties, required, items, enum) mean the same.
    schema.pop("$schema", None)
    if not schema or schema == _TRIVIAL_SCHEMA:
        return spec
    try:
        return dataclasses.replace(spec, params_schema=schema)
    except Exception as exc:  # noqa: BLE001 - an unusable schema only loses early validation
        on_bad_schema(f"{base.name}: {exc}")
        return spec


def call_key(agent_id: str, client: str, action: str, arguments: Mapping[str, Any]) -> str:
    """Return the stable identity of a call (hex, 24 chars) from its canonical form."""
    body = orjson.dumps([agent_id, client, action, arguments], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(body).hexdigest()[:24]


def current_plan_id(key: str, get: Callable[[str], PlanRecord | None]) -> str:
    """Return the plan id a call with identity ``key`` belongs to now.

    Args:
        key: ``call_key(...)``.
        get: Reads a plan by id (None when absent).

    Returns:
        The id of the latest generation when its plan still waits, else the next one.
    """

    def pid(n: int) -> str:
        return f"mcp-{key}-{n}"

    if get(pid(0)) is None:
        return pid(0)
    # Generations 0..last exist: find the first absent one, exponentially then binary.
    hi = 1
    while get(pid(hi)) is not None:
        hi *= 2
    lo = hi // 2  # present (or 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if get(pid(mid)) is None:
            hi = mid
        else:
            lo = mid
    last = get(pid(lo))
    if last is not None and last.status in WAITING:
        return pid(lo)
    return pid(hi)


def manifest(
    *,
    plan_id: str | None,
    agent_id: str,
    client: str,
    on_behalf_of: str,
    action: str,
    tool: str,
    arguments: Mapping[str, Any],
) -> dict[str, Any]:
    """Return the one-step plan of a ``tools/call`` (deterministic for a given call).

    ``plan_id`` None lets the gateway choose one (for calls that can never be retried).
    """
    doc: dict[str, Any] = {
        "actor": {
            "type": "agent",
            "name": f"{agent_id} via {client}"[:200],
            "model_version": client[:200] or "unknown",
            "agent_id": agent_id,
        },
        "on_behalf_of": on_behalf_of,
        "intent": f"MCP tools/call {tool}"[:1000],
        "steps": [{"id": "s1", "action": action, "params": dict(arguments)}],
    }
    if plan_id is not None:
        doc["plan_id"] = plan_id
    return doc


def not_run_now(plan_id: str, reason: str) -> ConflictError:
    """The refusal of a call whose plan a guard holds (``reason``: the guard's).

    The call was not made, and it is not made later behind the agent's back: the plan waits
    (running, queued) under the same id, and the same call once the guard allows it finds
    and runs it.
    """
    return ConflictError(
        f"plan {plan_id} is not run now: {reason}",
        field="plan_id",
        hint="The call was not made: the plan keeps waiting. Call the tool again with the "
        "same arguments once the guard allows it (`proctor guards`): that call runs it.",
    )
