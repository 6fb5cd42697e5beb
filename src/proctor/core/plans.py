"""Plans: the deterministic manifest an agent submits, and its digest.

A plan is exactly what will run: every step is an action name plus literal params. Params
never refer to the results of other steps; an agent that needs a result submits a new plan
after it. That is what makes an approval meaningful: the approver sees, and the digest binds,
every byte that will execute.

The digest is ``sha256:<hex>`` over the RFC 8785 canonical form of the manifest without its
``signature`` member. A ``Plan`` that exists has passed structural validation; catalog and
schema checks come after, in the gateway, because they need the catalog.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from proctor.core.canonical import canonical, printable, sha256_tagged
from proctor.errors import InvalidRequestError

__all__ = [
    "AGENT_ID",
    "CANARY_SUFFIX",
    "DERIVED_PLAN_ID_PREFIXES",
    "ID_RULE",
    "MAX_MANIFEST_BYTES",
    "MAX_PARAM_STRING_DEFAULT",
    "PERSON_NAME",
    "PERSON_NAME_HINT",
    "PERSON_NAME_RULE",
    "Actor",
    "Limits",
    "Plan",
    "Signature",
    "Step",
    "check_chosen_plan_id",
    "idempotency_key",
    "new_plan_id",
]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}\Z")  # \Z: "$" admits a final "\n"

ID_RULE = (
    "1-128 ASCII characters: letters A-Z and a-z, digits, '_', '.', ':' or '-', starting with a"
    " letter or digit"
)
"""How a refusal of a plan, step or agent id describes its grammar."""

AGENT_ID = _ID
"""The grammar of ``actor.agent_id`` (plan and step ids share it; a step id has no ``:``, see
``idempotency_key``): a name that does not match it is no agent's, so a guard naming it would
stop nothing."""

CANARY_SUFFIX = ":staging"
"""What a canary's staging run appends to its step's idempotency key."""
_CANARY_STEP = CANARY_SUFFIX[1:]

PERSON_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}\Z")
"""The one grammar of a person's name: a plan's ``on_behalf_of`` and an API token's name.

The ids' grammar plus ``@``: a user who signs in as ``alice@example.com`` (a token name, a
JWT's e-mail or UPN claim) must be able to be the user a plan acts for, or they could never
confirm or undo anything. Plan, step and agent ids keep ``_ID`` (no ``@``).

NOTE: ASCII only, on purpose. Names decide separation of duties, and ``person_key`` (NFKC,
case-folded) does not fold look-alikes from other scripts: with Unicode letters allowed,
``alice`` spelt with a Cyrillic U+0430 for its ``a`` would be a person other than ``alice``
who reads the same on a console or in an e-mail, so an approver could not tell whose plan
she approves, and a token named so would pass "not the beneficiary". Folding those needs a
confusables table (UTS #39) that the core does not carry. A user whose name has other
letters (``josé``, ``李雷``) goes by their login or e-mail address; every refusal says so
(``PERSON_NAME_RULE``, ``PERSON_NAME_HINT``).
"""

PERSON_NAME_RULE = (
    "1-128 ASCII characters: letters A-Z and a-z, digits, '_', '.', ':', '@' or '-',"
    " starting with a letter or digit"
)
"""How a refusal of a name against ``PERSON_NAME`` describes the rule."""

PERSON_NAME_HINT = (
    "Names are ASCII (look-alike letters from other scripts would make two people read the"
    " same): give the user's login or e-mail address, e.g. 'jose' or 'jose@example.com' for"
    " 'José'."
)
"""The hint of a refusal against ``PERSON_NAME``."""


def new_plan_id(prefix: str, now: datetime) -> str:
    """Return a fresh plan id, ``<prefix>-<YYYYMMDDhhmmss>-<12 random hex digits>``.

    The time first, so that ids sort by creation: a store's indexes keyed by plan id (the
    plans' primary key, the events by plan) then grow at their right edge. With random ids
    every plan dirtied its own leaf page of ``events_by_plan``, and a WAL checkpoint wrote
    a third more pages, scattered over the file (docs/benchmarks.md, "Peer").
    """
    stamp = f"{now.year:04d}{now.month:02d}{now.day:02d}{now.hour:02d}{now.minute:02d}"
    return f"{prefix}-{stamp}{now.second:02d}-{os.urandom(6).hex()}"


DERIVED_PLAN_ID_PREFIXES = ("mcp-", "idem-")
"""The prefixes of the plan ids Proctor derives, reserved: no caller chooses an id under them.

``mcp-<sha256(agent, client, tool, arguments)[:24]>-<n>`` (an MCP call,
``proctor.mcp.governance``) and ``idem-<sha256(principal:key)[:24]>`` (an HTTP submission
with an ``Idempotency-Key``) are predictable: anyone who can guess a call's arguments or a
key can compute them. Plan ids are one namespace, so a plan submitted under such an id by
someone else (a squatter: its own plan, waiting 24 h for an approval) made the owner's
call or retry fail ``plan_id_reused`` for as long. Refused whatever their case, so that no
chosen id reads as a derived one either. The random ids (``p-``, ``tc-`` with a time and
random digits, ``new_plan_id``) are not predictable and not reserved; nor are the
decorator's ``tc-<sha256(...)>`` ids, which clients submit themselves over HTTP.
"""


def check_chosen_plan_id(plan_id: str | None) -> None:
    """Refuse a plan id a caller chose under a prefix Proctor derives ids under.

    Asked of a submission unless the code that derived its id says so (the gateway's
    ``derived_id``): the MCP proxies, and the HTTP API for an ``Idempotency-Key``.

    Raises:
        InvalidRequestError: ``field="plan_id"``.
    """
    if plan_id is None:
        return
    folded = plan_id.lower()
    for prefix in DERIVED_PLAN_ID_PREFIXES:
        if folded.startswith(prefix):
            raise InvalidRequestError(
                f"plan_id may not start with {prefix!r}: Proctor derives the ids under it",
                field="plan_id",
                hint="Leave plan_id out (the server picks a random id), send an"
                " Idempotency-Key header instead, or choose an id of your own that other"
                " agents cannot guess, e.g. with a random part.",
            )


def idempotency_key(plan_id: str, step_id: str) -> str:
    """Return the key a step's tool calls receive: ``<plan_id>:<step_id>``.

    The same on every retry of the step, and never the key of another step of any plan
    submitted since step ids lost their ``:`` (``Plan.from_dict``): a step id has none, so a
    key splits at its last ``:`` into exactly one (plan, step). With ``:`` allowed on both
    sides, plan ``ord`` step ``42:s1`` and plan ``ord:42`` step ``s1`` shared ``ord:42:s1``,
    and a provider that deduplicates on the key (as tool authors are told to) answered the
    second call with the first one's result: a payment recorded as made that never was.

    NOTE(ids): the shape is unchanged, so a plan stored before (even one whose step id holds a
    ``:``) gets the same key when it is re-run after an upgrade: a different key would make a
    non-idempotent provider act twice. A canary's staging run appends ``CANARY_SUFFIX``.
    """
    return f"{plan_id}:{step_id}"


MAX_MANIFEST_BYTES = 256 * 1024
"""The largest manifest, in canonical bytes: as large as an HTTP request body may be."""
MAX_PARAM_STRING_DEFAULT = 64 * 1024
"""The default cap on one param string, in characters: an e-mail, a source file or a diff
fits, and four of them still fit in one manifest."""

_MANIFEST_KEYS = frozenset(
    {"plan_id", "actor", "on_behalf_of", "intent", "reasoning", "steps", "signature"}
)
_ACTOR_KEYS = frozenset({"type", "name", "model_version", "agent_id"})
_STEP_KEYS = frozenset({"id", "action", "params"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Size limits on a manifest.

    A param string is what an action works on (a file's content, an e-mail's body, a
    diff), so it gets its own cap, far above the one for names: the action's JSON Schema
    (``maxLength``) narrows it per field, and ``max_bytes`` still bounds the manifest as a
    whole, and with it what one audit event and one policy input can hold.

    Attributes:
        max_steps: Most steps a plan may have. Default 32.
        max_text: Longest intent or reasoning, in characters. Default 8,000.
        max_string: Longest actor type, name or model version. Default 2,000.
        max_param_string: Longest string anywhere in a step's params, in characters
            (``[limits] max_param_string``). Default 65,536. ``max_bytes`` binds first
            when it is smaller.
        max_bytes: Largest manifest, in canonical bytes. Default 256 KiB.
        max_depth: Deepest nesting of params. Default 8.
    """

    max_steps: int = 32
    max_text: int = 8_000
    max_string: int = 2_000
    max_param_string: int = MAX_PARAM_STRING_DEFAULT
    max_bytes: int = MAX_MANIFEST_BYTES
    max_depth: int = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class Actor:
    """Who proposes the plan: the agent and the model behind it."""

    type: str
    name: str
    model_version: str
    agent_id: str

    def as_dict(self) -> dict[str, str]:
        """Return the manifest form."""
        return {
            "type": self.type,
            "name": self.name,
            "model_version": self.model_version,
            "agent_id": self.agent_id,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One action with literal params."""

    id: str
    action: str
    params: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """Return the manifest form."""
        return {"id": self.id, "action": self.action, "params": dict(self.params)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Signature:
    """An agent's Ed25519 signature over the canonical manifest without ``signature``."""

    key_id: str
    value: str  # base64 of the 64-byte signature

    def as_dict(self) -> dict[str, str]:
        """Return the manifest form."""
        return {"key_id": self.key_id, "value": self.value}


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """A validated manifest. Build it with ``Plan.from_dict``."""

    plan_id: str | None
    actor: Actor
    on_behalf_of: str
    intent: str
    reasoning: str
    steps: tuple[Step, ...]
    signature: Signature | None = None
    digest: str = field(default="")

    def manifest(self) -> dict[str, Any]:
        """Return the manifest without its signature: the object the digest covers."""
        out: dict[str, Any] = {
            "actor": self.actor.as_dict(),
            "on_behalf_of": self.on_behalf_of,
            "intent": self.intent,
            "reasoning": self.reasoning,
            "steps": [s.as_dict() for s in self.steps],
        }
        if self.plan_id is not None:
            out["plan_id"] = self.plan_id
        return out

    def signing_bytes(self) -> bytes:
        """Return the bytes an agent signs: the canonical manifest without ``signature``."""
        return canonical(self.manifest())

    @classmethod
    def from_dict(cls, data: Any, *, limits: Limits | None = None) -> Plan:
        """Parse and check a manifest.

        Raises:
            InvalidRequestError: naming the field and the rule it breaks.
        """
        lim = limits or Limits()
        obj = _require_object(data, "plan")
        _no_unknown(obj, _MANIFEST_KEYS, "")
        plan_id = obj.get("plan_id")
        if plan_id is not None:
            _require_id(plan_id, "plan_id")
        actor = _require_object(obj.get("actor"), "actor")
        _no_unknown(actor, _ACTOR_KEYS, "actor.")
        actor_v = Actor(
            type=_require_str(actor.get("type", "agent"), "actor.type", lim.max_string),
            name=_require_str(actor.get("name"), "actor.name", lim.max_string),
            model_version=_require_str(
                actor.get("model_version"), "actor.model_version", lim.max_string
            ),
            agent_id=_require_id(actor.get("agent_id"), "actor.agent_id"),
        )
        on_behalf_of = _require_person(obj.get("on_behalf_of"), "on_behalf_of")
        intent = _require_str(obj.get("intent"), "intent", lim.max_text)
        reasoning = _require_str(obj.get("reasoning", ""), "reasoning", lim.max_text, empty=True)
        raw_steps = obj.get("steps")
        if not isinstance(raw_steps, list) or not raw_steps:
            raise InvalidRequestError("steps must be a non-empty array", field="steps")
        if len(raw_steps) > lim.max_steps:
            raise InvalidRequestError(
                f"a plan may have at most {lim.max_steps} steps, got {len(raw_steps)}",
                field="steps",
            )
        steps: list[Step] = []
        seen: set[str] = set()
        for i, raw in enumerate(raw_steps):
            where = f"steps[{i}]"
            st = _require_object(raw, where)
            _no_unknown(st, _STEP_KEYS, f"{where}.")
            step_id = _require_step_id(st.get("id", f"s{i + 1}"), f"{where}.id", plan_id)
            if step_id in seen:
                raise InvalidRequestError(f"duplicate step id {step_id!r}", field=f"{where}.id")
            seen.add(step_id)
            action = _require_str(st.get("action"), f"{where}.action", 200)
            params = _require_object(st.get("params", {}), f"{where}.params")
            _check_value(params, f"{where}.params", lim, 0)
            steps.append(Step(id=step_id, action=action, params=params))
        signature = None
        if obj.get("signature") is not None:
            sig = _require_object(obj["signature"], "signature")
            _no_unknown(sig, frozenset({"key_id", "value"}), "signature.")
            signature = Signature(
                key_id=_require_str(sig.get("key_id"), "signature.key_id", 200),
                value=_require_str(sig.get("value"), "signature.value", 200),
            )
        plan = cls(
            plan_id=plan_id,
            actor=actor_v,
            on_behalf_of=on_behalf_of,
            intent=intent,
            reasoning=reasoning,
            steps=tuple(steps),
            signature=signature,
        )
        body = plan.signing_bytes()
        if len(body) > lim.max_bytes:
            raise InvalidRequestError(
                f"the manifest is {len(body)} bytes; the limit is {lim.max_bytes}",
                field="plan",
                hint="Split the work over several steps or plans, each under the limit.",
            )
        # The digest is over the same canonical bytes the agent signs.
        object.__setattr__(plan, "digest", sha256_tagged(body))
        return plan


def _require_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{where} must be an object", field=where)
    return value


def _no_unknown(obj: Mapping[str, Any], allowed: frozenset[str], prefix: str) -> None:
    for key in obj:
        if key not in allowed:
            name = printable(str(key))  # it may hold a lone surrogate
            raise InvalidRequestError(
                f"unknown field {prefix}{name}; allowed: {', '.join(sorted(allowed))}",
                field=f"{prefix}{name}",
            )


def _require_str(value: Any, where: str, max_len: int, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty):
        raise InvalidRequestError(f"{where} must be a non-empty string", field=where)
    if len(value) > max_len:
        raise InvalidRequestError(
            f"{where} is {len(value)} characters; the limit is {max_len}", field=where
        )
    return value


def _require_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise InvalidRequestError(f"{where} must be {ID_RULE}", field=where)
    return value


def _require_step_id(value: Any, where: str, plan_id: str | None) -> str:
    """A step id: the ids' grammar without ``:``, so that keys are unique (``idempotency_key``).

    And not ``staging`` in a plan whose id holds a ``:``: plan ``P:S`` step ``staging`` has
    the key ``P:S:staging``, that of the canary's staging run of step ``S`` of plan ``P``.
    """
    step_id = _require_id(value, where)
    if ":" in step_id:
        raise InvalidRequestError(
            f"{where} may not contain ':' (got {step_id!r})",
            field=where,
            hint="Tools receive the idempotency key '<plan_id>:<step_id>'; a ':' in the step"
            " id would let two plans share one key. Use '-', '_' or '.' instead.",
        )
    if step_id == _CANARY_STEP and plan_id is not None and ":" in plan_id:
        raise InvalidRequestError(
            f"{where} may not be {_CANARY_STEP!r} in a plan whose id contains ':'",
            field=where,
            hint=f"The key '{plan_id}{CANARY_SUFFIX}' is that of a canary's staging run of"
            " another plan's step. Rename the step, or use a plan id without ':'.",
        )
    return step_id


def _require_person(value: Any, where: str) -> str:
    if not isinstance(value, str) or not PERSON_NAME.match(value):
        raise InvalidRequestError(
            f"{where} must be {PERSON_NAME_RULE}", field=where, hint=PERSON_NAME_HINT
        )
    return value


def _check_value(value: Any, where: str, lim: Limits, depth: int) -> None:
    if depth > lim.max_depth:
        raise InvalidRequestError(f"{where} nests deeper than {lim.max_depth}", field=where)
    if isinstance(value, str):
        if len(value) > lim.max_param_string:
            raise InvalidRequestError(
                f"{where} is {len(value)} characters; the limit for a param string is"
                f" {lim.max_param_string}",
                field=where,
                hint=(
                    "The instance-wide cap is [limits] max_param_string in config.toml"
                    f" (at most {lim.max_bytes}, the manifest's own limit in bytes)."
                ),
            )
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_value(v, f"{where}.{k}", lim, depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_value(v, f"{where}[{i}]", lim, depth + 1)
    elif isinstance(value, float) and value != value:  # NaN has no JSON form
        raise InvalidRequestError(f"{where} is NaN", field=where)
