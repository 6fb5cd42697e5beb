"""Actions an agent may request: their schema, category, baselines and handlers.

The catalog is the allow-list of the whole system: an action that is not in it is rejected at
validation, before any policy runs. Each action names a category of the risk taxonomy
(``CATEGORIES``); an unknown category is a configuration error, because the policy could not
reason about it (fail closed). Handlers are import paths (``package.module:function``) that the
``tools`` adapter resolves; the core never imports user code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import fastjsonschema

from proctor.core.assessment import Scores
from proctor.errors import ConfigError, InvalidRequestError

__all__ = ["CATEGORIES", "HIGH_RISK_CATEGORIES", "ActionSpec", "Catalog"]

CATEGORIES: Mapping[str, str] = MappingProxyType(
    {
        "general": "low-impact actions with no external commitment",
        "read": "read-only look-ups",
        "booking": "reservations that can be cancelled (travel, restaurants)",
        "payment": "payments to a merchant for the user's own purchase",
        "subscription": "changes to a customer's subscription or payment method",
        "purchase": "purchase orders within a procurement budget",
        "financial": "money transfers and refunds",
        "pii": "access to personal data (candidates, customers, employees)",
        "health": "health records",
        "iam": "permission changes: IAM, roles, firewall rules",
        "legal": "legally binding communications and signatures",
        "production": "changes to production systems: deploys, restarts, schema changes",
        "communication": "messages sent on the user's behalf (email, chat)",
    }
)
"""The risk taxonomy: category name -> what belongs in it."""

HIGH_RISK_CATEGORIES: frozenset[str] = frozenset(
    {"financial", "pii", "health", "iam", "legal", "production"}
)
"""Categories that default to orchestrator-first with human approval (DESIGN section 2)."""

_NAME = re.compile(r"^[a-z][a-z0-9_]*(?:[.\-][a-z0-9_]+)*\Z")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*\Z")
_PLACEHOLDER = re.compile(r"{(\w+)}")
_SUMMARY_VALUE_MAX = 2_000  # what a param string could hold before [limits] max_param_string
_AMOUNT_HINT = "Amounts are JSON integers in minor units (cents): 640000, not 640000.0 or 6.4e5."


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionSpec:
    """One action of the catalog.

    Attributes:
        name: Dotted name, for example ``payments.refund``.
        summary: Plain-words template, for example ``"Refund {amount} {currency} to {customer}"``.
        params_schema: JSON Schema of the params object.
        category: One of ``CATEGORIES``.
        baselines: Baseline scores on the five axes.
        reversible: Whether a completed step can be undone (compensated).
        compensation: Name of the catalog action that undoes this one, if any.
        idempotent: Whether re-running with the same idempotency key is harmless.
        cost: Cost per call in minor currency units (cents).
        amount_param: Name of the param holding a money amount in minor units, if any.
        handler: Import path of the function that performs the action.
        simulate: Import path of the dry-run function, if any.
        compensate: Import path of the undo function, if any.
        mask: JSON pointers into params whose values are masked in the audit log.
        timeout: Seconds one attempt may take before it counts as timed out (None: the
            gateway's default).
        runner: Name of the runner that must execute it (for example ``mcp``: only a process
            serving that runner has the handler's connection); None runs anywhere.
        canary: Staging first: ``{"param": name, "staging": value, "check": import path}``.
            The step runs with ``params[param] = staging``, the check decides from that
            result whether it is promoted to the real params.
    """

    name: str
    summary: str
    params_schema: Mapping[str, Any]
    category: str
    baselines: Scores
    reversible: bool = False
    compensation: str | None = None
    idempotent: bool = False
    cost: int = 0
    amount_param: str | None = None
    handler: str | None = None
    simulate: str | None = None
    compensate: str | None = None
    mask: tuple[str, ...] = ()
    timeout: float | None = None
    runner: str | None = None
    canary: Mapping[str, Any] | None = None
    _validator: Callable[[Any], Any] = field(repr=False, compare=False, default=lambda v: v)

    def __post_init__(self) -> None:
        where = f"catalog.{self.name}"
        if not _NAME.match(self.name):
            raise ConfigError(
                f"action name {self.name!r} must be dotted lower-case words", field=where
            )
        if self.category not in CATEGORIES:
            raise ConfigError(
                f"action {self.name!r} has unknown category {self.category!r}",
                field=f"{where}.category",
                hint=f"Use one of: {', '.join(CATEGORIES)}.",
            )
        for attr in ("handler", "simulate", "compensate"):
            path = getattr(self, attr)
            if path is not None and not _IMPORT_PATH.match(path):
                raise ConfigError(
                    f"{attr} {path!r} must be an import path 'package.module:function'",
                    field=f"{where}.{attr}",
                )
        if type(self.cost) is not int or self.cost < 0:
            raise ConfigError(
                "cost must be a non-negative integer (minor units)", field=f"{where}.cost"
            )
        if self.timeout is not None and not (
            type(self.timeout) in (int, float) and 0 < self.timeout <= 86_400
        ):
            raise ConfigError("timeout must be seconds in (0, 86400]", field=f"{where}.timeout")
        if self.canary is not None:
            _check_canary(self.canary, f"{where}.canary")
        if self.reversible and not (self.compensate or self.compensation):
            raise ConfigError(
                f"reversible action {self.name!r} needs a compensate handler or a compensation",
                field=f"{where}.reversible",
            )
        if not isinstance(self.params_schema, Mapping):
            raise ConfigError(
                f"params schema of {self.name!r} must be a JSON Schema object, not "
                f"{self.params_schema!r}",
                field=f"{where}.params",
            )
        schema = _ecma_patterns(self.params_schema, self.name, f"{where}.params")
        try:
            validator = fastjsonschema.compile(schema)
        except (fastjsonschema.JsonSchemaDefinitionException, re.error) as exc:
            # re.error: a pattern in a place _ecma_patterns does not walk (it names the
            # exact place for the usual ones). Either way a config error, never a crash.
            raise ConfigError(
                f"params schema of {self.name!r} is not valid JSON Schema: {exc}",
                field=f"{where}.params",
            ) from exc
        object.__setattr__(self, "_validator", validator)

    def validate_params(self, params: Mapping[str, Any], *, field_prefix: str) -> None:
        """Check params against the schema.

        Raises:
            InvalidRequestError: naming the offending field and the violated rule.
        """
        try:
            self._validator(params)
        except fastjsonschema.JsonSchemaValueException as exc:
            # fastjsonschema names the value "data", "data.amount", ...; rewrite to our path.
            name = exc.name or "data"
            suffix = name[4:] if name.startswith("data") else f".{name}"
            message = exc.message.replace(name, "params" + suffix, 1)
            # Show the pattern as the catalog wrote it, without the flag _ecma_patterns adds.
            message = message.replace(f"must match pattern {_ASCII}", "must match pattern ", 1)
            raise InvalidRequestError(
                f"{message} (rule: {exc.rule})",
                field=f"{field_prefix}{suffix}",
                hint=_AMOUNT_HINT if suffix == f".{self.amount_param}" else None,
                rule=exc.rule,
            ) from None
        self._amount_param(params, field_prefix=field_prefix)

    def _amount_param(self, params: Mapping[str, Any], *, field_prefix: str) -> int:
        """The amount param's value, which must be present and a JSON integer >= 0.

        The schema alone cannot guarantee it: JSON Schema's ``integer`` admits ``640000.0``
        (fastjsonschema follows it), and a catalog may declare no type at all. Guards,
        budgets and the policy's limits all read this number, so a value they cannot read
        as an integer is refused rather than counted as some default: counting it as 0 let
        a float amount execute as "a payment of 0" past every limit (fail closed).

        Raises:
            InvalidRequestError: naming ``<field_prefix>.<amount_param>``.
        """
        if self.amount_param is None:
            return 0
        where = f"{field_prefix}.{self.amount_param}"
        if self.amount_param not in params:
            # The default policy would send a step without a numeric amount to approval,
            # but budgets and autonomy tolerances need a number too: refusing the plan is
            # the one answer that is closed for all of them, and it says what to send.
            raise InvalidRequestError(
                f"{self.name!r} needs its amount param {self.amount_param!r}",
                field=where,
                hint=_AMOUNT_HINT,
            )
        value = params[self.amount_param]
        # type() and not isinstance(): True is an int to Python, and no amount to anyone.
        if type(value) is not int:
            raise InvalidRequestError(
                f"{where} must be an integer amount in minor units, not {value!r}",
                field=where,
                hint=_AMOUNT_HINT,
            )
        # An amount is the money at stake. Guards clamp a negative one to 0 and the policy
        # compares it with thresholds, so -5 would pass every limit as "less than nothing":
        # a refund or payment of a negative amount means nothing, and is refused.
        if value < 0:
            raise InvalidRequestError(
                f"{where} must not be negative, got {value}",
                field=where,
                hint=_AMOUNT_HINT,
                rule="minimum",
            )
        return value

    @property
    def nothing_to_undo(self) -> bool:
        """Whether a completed step of this action left no effect to undo (a read-only look-up).

        The one rule for "skip this step" in an undo (the user's and its check) and in a
        saga after a failure: such a step is neither a reason to refuse the undo nor a
        compensation that failed. Only the ``read`` category qualifies, and only when the
        action declares no compensation of its own (one that does is compensated as declared).
        Any other irreversible action stays what it is: an effect nobody can undo.
        """
        return self.category == "read" and self.compensate is None and self.compensation is None

    def describe(self, params: Mapping[str, Any]) -> str:
        """Render the summary template with the params; unknown placeholders stay visible.

        A value longer than 2,000 characters is cut there, with its full length: a summary
        is one line for a person (the console, an approval request, a Slack message), and
        the event that holds it holds the params whole beside it.
        """

        def sub(match: re.Match[str]) -> str:
            key = match.group(1)
            if key not in params:
                return match.group(0)
            text = str(params[key])
            if len(text) > _SUMMARY_VALUE_MAX:
                return f"{text[:_SUMMARY_VALUE_MAX]}… ({len(text)} characters)"
            return text

        return _PLACEHOLDER.sub(sub, self.summary)

    def amount(self, params: Mapping[str, Any]) -> int:
        """Return the money amount of a call (minor units): its amount param plus cost.

        Params that passed ``validate_params`` have a valid amount. Anything else raises
        rather than count as 0, which would pass every limit (fail closed).

        Raises:
            InvalidRequestError: the amount param is missing, not an integer or negative.
        """
        return self._amount_param(params, field_prefix="params") + self.cost

    def recorded_amount(self, params: Mapping[str, Any]) -> int:
        """The amount to record for a step that ran (or a human resolved), else 0.

        0 when the catalog no longer reads an amount from its params.

        Only for an outcome, never for a decision (``amount`` refuses there): a plan decided
        under an older catalog (or before negative amounts were refused) ran all the same,
        and its outcome must be recorded, without a cost, rather than fail after the fact.
        """
        try:
            return self.amount(params)
        except InvalidRequestError:
            return 0

    def policy_view(self) -> dict[str, Any]:
        """Return the per-action constants the policy sees in ``data.proctor.catalog``."""
        return {
            "category": self.category,
            "reversible": self.reversible,
            "idempotent": self.idempotent,
            "canary": self.canary is not None,
            "cost": self.cost,
            "amount_param": self.amount_param,
            "baselines": self.baselines.as_dict(),
        }


def _check_canary(canary: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(canary) - {"param", "staging", "check"})
    if unknown:
        raise ConfigError(f"unknown canary key {unknown[0]!r}", field=f"{where}.{unknown[0]}")
    if not isinstance(canary.get("param"), str) or not canary["param"]:
        raise ConfigError("canary.param must name the target param", field=f"{where}.param")
    if "staging" not in canary:
        raise ConfigError("canary.staging must give the staging value", field=f"{where}.staging")
    check = canary.get("check")
    if not isinstance(check, str) or not _IMPORT_PATH.match(check):
        raise ConfigError(
            "canary.check must be an import path 'package.module:function'",
            field=f"{where}.check",
        )


_ASCII = "(?a)"
r"""The inline flag that gives a Python regex ECMA-262's ASCII ``\d``, ``\w`` and ``\b``."""

# Where JSON Schema (drafts 4 to 2020-12) nests subschemas: one schema, a list of schemas,
# or a mapping of names to schemas. Values of other keywords (enum, const, default, ...) are
# data, so a "pattern" key inside them is left alone.
_ONE = frozenset(
    {
        "additionalItems",
        "additionalProperties",
        "contains",
        "else",
        "if",
        "items",
        "not",
        "propertyNames",
        "then",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
_LIST = frozenset({"allOf", "anyOf", "items", "oneOf", "prefixItems"})
_MAP = frozenset({"$defs", "definitions", "dependencies", "dependentSchemas", "properties"})


def _ecma_patterns(schema: Mapping[str, Any], action: str, where: str) -> dict[str, Any]:
    r"""Return a copy of ``schema`` whose regexes match as JSON Schema says they do.

    JSON Schema's ``pattern`` and ``patternProperties`` are ECMA-262 regexes, where ``\d``
    is ``[0-9]`` and ``\w`` is ``[A-Za-z0-9_]``. Python's ``re`` is Unicode-aware by default:
    its ``\d`` also matches fullwidth (U+FF10..U+FF19) or Arabic-Indic digits, so a date
    pattern would let through values that a handler then misreads or chokes on.
    fastjsonschema compiles patterns with plain ``re.compile`` and has no hook for flags, so
    each pattern gets the inline ASCII flag ``(?a)`` in front: one visible token with the
    effect of ``re.ASCII``. (Swapping the compiled regexes in the validator's globals would
    work too, but leans on how fastjsonschema lays out its generated code.)

    NOTE(catalog): ``(?a)`` also makes ``\s`` ASCII whitespace, where ECMA-262's ``\s``
    also matches Unicode spaces (U+00A0, U+3000, ...): ``\s`` is stricter than ECMA-262
    here and ``\S`` laxer. docs/catalog.md says so.

    Each pattern is compiled here, so a bad one is a ``ConfigError`` naming its action and
    param instead of an ``re.error`` from inside fastjsonschema.

    Raises:
        ConfigError: a pattern is not a string or not a valid regex.
    """
    out: dict[str, Any] = _walk(schema, action=action, where=where, param=None)
    return out


def _walk(node: Any, *, action: str, where: str, param: str | None) -> Any:
    if not isinstance(node, Mapping):
        return node  # true / false schemas, or a malformed value fastjsonschema reports
    out: dict[str, Any] = {}
    for key, value in node.items():
        here = f"{where}.{key}"
        if key == "pattern":
            out[key] = _ascii_regex(value, action=action, where=here, param=param)
        elif key == "patternProperties" and isinstance(value, Mapping):
            out[key] = {
                _ascii_regex(k, action=action, where=f"{here}.{k}", param=param): _walk(
                    v, action=action, where=f"{here}.{k}", param=param
                )
                for k, v in value.items()
            }
        elif key in _MAP and isinstance(value, Mapping):
            out[key] = {
                k: _walk(v, action=action, where=f"{here}.{k}", param=_param(param, key, k))
                for k, v in value.items()
            }
        elif key in _LIST and isinstance(value, list):
            out[key] = [
                _walk(v, action=action, where=f"{here}[{i}]", param=param)
                for i, v in enumerate(value)
            ]
        elif key in _ONE:
            out[key] = _walk(value, action=action, where=here, param=param)
        else:
            out[key] = value
    return out


def _param(parent: str | None, keyword: str, name: str) -> str | None:
    """The param a subschema constrains, for messages (``properties`` names one)."""
    if keyword != "properties":
        return parent
    return name if parent is None else f"{parent}.{name}"


def _ascii_regex(pattern: Any, *, action: str, where: str, param: str | None) -> str:
    what = f"param {param!r}" if param is not None else "the params object"
    if not isinstance(pattern, str):
        raise ConfigError(
            f"action {action!r}: the pattern of {what} must be a string, not {pattern!r}",
            field=where,
        )
    try:
        re.compile(_ASCII + pattern)
    except (re.error, ValueError) as exc:
        # ValueError: a pattern with its own (?u) flag, which cannot be combined with (?a).
        reason = str(exc)
        if isinstance(exc, re.error) and exc.pos is not None:
            reason = f"{exc.msg} at position {exc.pos - len(_ASCII)}"
        raise ConfigError(
            f"action {action!r}: the pattern {pattern!r} of {what} is not a valid regular "
            f"expression: {reason}",
            field=where,
            hint="Patterns are ECMA-262 regular expressions, as in JSON Schema.",
        ) from exc
    return _ASCII + pattern


class Catalog:
    """The set of actions, by name. Registering a name twice is a configuration error."""

    __slots__ = ("_actions", "has_masks")

    def __init__(self, actions: Iterable[ActionSpec] = ()) -> None:
        self._actions: dict[str, ActionSpec] = {}
        #: Whether any action masks params: without one, the audit log's redaction of
        #: masked values (``proctor.app.redaction``) is skipped altogether.
        self.has_masks = False
        for spec in actions:
            self.add(spec)

    def add(self, spec: ActionSpec, *, replace: bool = False) -> None:
        """Add an action.

        Raises:
            ConfigError: if the name is taken and ``replace`` is false.
        """
        if spec.name in self._actions and not replace:
            raise ConfigError(f"action {spec.name!r} is declared twice", field="catalog")
        old = self._actions.get(spec.name)
        self._actions[spec.name] = spec
        if spec.mask:
            self.has_masks = True
        elif old is not None and old.mask:
            self.has_masks = any(s.mask for s in self._actions.values())

    def get(self, name: str) -> ActionSpec | None:
        """Return the action or None."""
        return self._actions.get(name)

    def require(self, name: str, *, field: str = "action") -> ActionSpec:
        """Return the action.

        Raises:
            InvalidRequestError: if the action is not in the catalog.
        """
        spec = self._actions.get(name)
        if spec is None:
            raise InvalidRequestError(
                f"unknown action {name!r}: it is not in the catalog",
                field=field,
                hint="Declare the action in a catalog TOML file or with @proctor.action.",
            )
        return spec

    def __contains__(self, name: object) -> bool:
        return name in self._actions

    def __iter__(self) -> Any:
        return iter(sorted(self._actions.values(), key=lambda s: s.name))

    def __len__(self) -> int:
        return len(self._actions)

    def policy_data(self) -> dict[str, Any]:
        """Return ``{name: policy_view}`` for the policy's data document."""
        return {name: spec.policy_view() for name, spec in sorted(self._actions.items())}
