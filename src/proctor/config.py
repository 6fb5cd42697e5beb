"""Settings: the instance's ``config.toml``, then ``PROCTOR_*`` environment, then flags.

Precedence, lowest to highest:

1. defaults (the attribute docstrings below);
2. ``<home>/config.toml``;
3. environment variables: ``PROCTOR_DATABASE_URL``, ``PROCTOR_SANDBOX``,
   ``PROCTOR_POLICY_BUNDLE``, ``PROCTOR_SYNCHRONOUS``; webhook secrets are only ever read from
   the environment (the variable each ``secret_env`` names), never from the file;
4. command-line flags (applied by the CLI with ``dataclasses.replace``).

The home itself comes from ``--home``, else ``PROCTOR_HOME``, else ``./.proctor``. Only entry
points (the CLI, ``bootstrap``) call ``load``; the core and the app receive values.

This module also reads catalog TOML files into ``ActionSpec`` values.
"""

from __future__ import annotations

import base64
import dataclasses
import difflib
import math
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from proctor.core.assessment import Scores
from proctor.core.catalog import ActionSpec
from proctor.core.guards import (
    AnomalySettings,
    AutonomySettings,
    BreakerSettings,
    Budget,
    GuardSettings,
    RateLimit,
)
from proctor.core.plans import MAX_MANIFEST_BYTES, MAX_PARAM_STRING_DEFAULT
from proctor.errors import ConfigError, InvalidRequestError, ProctorError

__all__ = [
    "DEFAULT_HOME",
    "TICKET_EVENTS",
    "WEBHOOK_EVENTS",
    "Settings",
    "WebhookSettings",
    "home_from",
    "load",
    "load_catalog_file",
    "parse_bool",
    "reject_unknown",
]

DEFAULT_HOME = Path(".proctor")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def parse_bool(value: str, *, name: str) -> bool:
    """Parse a boolean environment value from a fixed vocabulary.

    Raises:
        ConfigError: for anything outside ``1/true/yes/on`` and ``0/false/no/off``.
    """
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean", field=name, hint="Use true or false.")


def home_from(flag: str | Path | None, env: Mapping[str, str] | None = None) -> Path:
    """Return the instance home: the flag, else ``PROCTOR_HOME``, else ``./.proctor``."""
    env = os.environ if env is None else env
    if flag:
        return Path(flag)
    if env.get("PROCTOR_HOME"):
        return Path(env["PROCTOR_HOME"])
    return DEFAULT_HOME


WEBHOOK_EVENTS: Final = (
    "approval.needed",
    "plan.decided",
    "plan.executed",
    "plan.failed",
    "plan.undone",
    "breaker.opened",
    "anomaly",
)
"""Every event a webhook can subscribe to (docs/webhooks.md)."""
TICKET_EVENTS: Final = ("anomaly", "breaker.opened")
"""The escalations a ``[[tickets]]`` target receives."""
_FORMATS = ("json", "slack")


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookSettings:
    """One notification target: a ``[[webhooks]]`` or ``[[tickets]]`` table.

    Invariants are checked at construction (``ConfigError``): an http(s) URL, known events,
    a known format and a non-empty secret. Every delivery is signed: there is no unsigned
    mode, because a receiver that cannot authenticate a POST would act on forged approvals.
    """

    url: str
    """Where deliveries are POSTed (http or https)."""
    secret: bytes = field(repr=False)
    """The HMAC-SHA256 key, read from the environment variable ``secret_env``."""
    events: tuple[str, ...] = WEBHOOK_EVENTS
    """Events to deliver. Default all of ``WEBHOOK_EVENTS``."""
    format: str = "json"
    """``json`` (default) or ``slack`` (incoming-webhook ``text`` + ``blocks``)."""
    name: str = ""
    """The target's name in the outbox. Default the URL."""
    secret_env: str = ""
    """The environment variable the secret came from (for messages only)."""

    def __post_init__(self) -> None:
        where = self.name or self.url
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"webhook URL {self.url!r} is not http(s)", field="webhooks.url")
        unknown = sorted(set(self.events) - set(WEBHOOK_EVENTS))
        if unknown:
            raise ConfigError(
                f"webhook {where}: unknown event {unknown[0]!r}",
                field="webhooks.events",
                hint="Known events: " + ", ".join(WEBHOOK_EVENTS) + ".",
            )
        if self.format not in _FORMATS:
            raise ConfigError(
                f"webhook {where}: format {self.format!r} is not json or slack",
                field="webhooks.format",
            )
        if not self.secret:
            raise ConfigError(
                f"webhook {where} has an empty secret",
                field="webhooks.secret_env",
                hint="Set the variable named by secret_env to a long random value.",
            )

    @property
    def target(self) -> str:
        """The name deliveries are stored under: ``name``, else the URL."""
        return self.name or self.url


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything an instance is configured with."""

    home: Path
    """The instance directory."""
    instance_id: str = "proctor"
    """A name for this instance; the audit log's origin derives from it."""
    database_url: str = ""
    """Store URL. Default ``sqlite:///<home>/proctor.db``."""
    synchronous: str = "FULL"
    """SQLite durability: FULL (default, survives power loss) or NORMAL."""
    pool_size: int = 8
    """PostgreSQL: the most connections this process holds at once. Default 8."""
    policy_bundle: Path | None = None
    """Directory of the Rego bundle. Default ``<home>/policy``."""
    catalog_files: tuple[Path, ...] = ()
    """Catalog TOML files. Default ``(<home>/catalog.toml,)``."""
    agentic_max: int = 10
    """Highest total still agentic. Default 10."""
    hybrid_max: int = 15
    """Highest total still hybrid. Default 15."""
    sandbox: bool = False
    """Run no handler, only simulations. Default False."""
    confirm_ttl_seconds: int = 3600
    """How long a plan waits for its user's confirmation. Default 3600."""
    approval_ttl_seconds: int = 86_400
    """How long a plan waits for approvers. Default 86400."""
    lease_ttl_seconds: float = 30.0
    """How long a worker's claim on a running plan lasts without renewal. Default 30."""
    plan_deadline_seconds: int = 900
    """No step starts or retries later than this after a plan started. Default 900."""
    queue_ttl_seconds: int = 3600
    """How long a plan a human cleared waits for a process that runs it before it expires
    unstarted (``[execution] queue_ttl_seconds``). Default 3600."""
    report_grace_seconds: int = 60
    """How long past the call's timeout the server waits for a remote MCP proxy to report
    the outcome of a call handed to it before the plan needs attention. Default 60."""
    step_timeout_seconds: float = 60.0
    """Seconds one attempt may run (0: no limit; an action's timeout wins). Default 60."""
    max_attempts: int = 3
    """Attempts per step for retryable failures. Default 3."""
    worker_threads: int = 4
    """Threads that resume interrupted plans. Default 4."""
    runners: tuple[str, ...] = ()
    """Runner names this process serves (actions with another runner wait for one)."""
    store_prompt: bool = False
    """Keep the raw intent in audit events; its hash is always kept. Default False."""
    max_param_string: int = MAX_PARAM_STRING_DEFAULT
    """``[limits] max_param_string``: the longest string in a step's params, in characters,
    whatever the action's schema allows. Default 65,536; at most 262,144 (a manifest's
    limit in bytes)."""
    agent_keys: Mapping[str, bytes] = field(default_factory=dict)
    """Ed25519 public keys of agents that sign their manifests, by agent id."""
    origin: str = ""
    """The audit log's origin (checkpoint first line). Default ``proctor/<instance id>``."""
    checkpoint_every: int = 1000
    """Sign a checkpoint after this many events. Default 1000."""
    checkpoint_interval_seconds: int = 60
    """Sign a checkpoint when the last is older than this and there are new events."""
    rotate_every_days: int = 0
    """Rotate the signing key when it is older than this many days; 0 (default) never.
    Refused with a PostgreSQL database (replicas): rotate there with ``proctor keys rotate``."""
    webhooks: tuple[WebhookSettings, ...] = ()
    """``[[webhooks]]`` targets. Default none."""
    tickets: tuple[WebhookSettings, ...] = ()
    """``[[tickets]]`` targets: escalations (anomaly, breaker opened). Default none."""
    console_url: str = "http://127.0.0.1:8700"
    """Base URL of the web console, for links in notifications (``[console] url``)."""
    otlp_endpoint: str | None = None
    """``[observability] otlp_endpoint``: send spans there (OTLP over HTTP). Default none."""
    service_name: str = "proctor"
    """``[observability] service_name`` of the spans. Default ``proctor``."""
    log_format: str = "text"
    """``[observability] log_format``: ``text`` or ``json`` (JSON lines, masked)."""
    guards: GuardSettings = field(default_factory=GuardSettings)
    """``[guards]``: rate limits, budgets, breaker, anomaly and autonomy thresholds."""

    @property
    def notification_targets(self) -> tuple[WebhookSettings, ...]:
        """Every webhook and ticket target, webhooks first."""
        return (*self.webhooks, *self.tickets)

    @property
    def keys_dir(self) -> Path:
        """Where the signing keyring lives."""
        return self.home / "keys"


_MAX_SECONDS: Final = 10 * 365 * 86_400
"""The longest duration a setting may name (ten years). Longer is a mistake, and far longer
(``1e15``) overflows the date arithmetic of every plan submitted."""
_MAX_STEP_SECONDS: Final = 86_400
"""The longest attempt or lease (a day), as for an action's ``timeout``."""

_SECTIONS: Final[Mapping[str, frozenset[str] | None]] = {
    "instance": frozenset({"id"}),
    "database": frozenset({"url", "synchronous", "pool_size"}),
    "policy": frozenset({"bundle"}),
    "catalog": frozenset({"files"}),
    "thresholds": frozenset({"agentic_max", "hybrid_max"}),
    "execution": frozenset(
        {
            "sandbox",
            "confirm_ttl_seconds",
            "approval_ttl_seconds",
            "lease_ttl_seconds",
            "plan_deadline_seconds",
            "queue_ttl_seconds",
            "report_grace_seconds",
            "step_timeout_seconds",
            "max_attempts",
            "worker_threads",
            "runners",
        }
    ),
    "audit": frozenset(
        {"store_prompt", "origin", "checkpoint_every", "checkpoint_interval_seconds"}
    ),
    "keys": frozenset({"rotate_every_days"}),
    "limits": frozenset({"max_param_string"}),
    "console": frozenset({"url"}),
    "observability": frozenset({"otlp_endpoint", "service_name", "log_format"}),
    # [auth.jwt] is read and checked by ``proctor.http.settings`` (``proctor serve``), with
    # ``reject_unknown`` as here.
    "auth": frozenset({"jwt"}),
    # Free-form here: one table per agent id; arrays of tables and [guards], checked by
    # their own readers below.
    "agents": None,
    "webhooks": None,
    "tickets": None,
    "guards": None,
}
"""Every section of ``config.toml`` and its keys (None: checked by its own reader)."""


def reject_unknown(
    table: Mapping[str, Any], known: Iterable[str], *, where: str, path: Path | None = None
) -> None:
    """Raise ``ConfigError`` for the first key of ``table`` not in ``known``.

    A misspelt key would otherwise be ignored and its default used silently, for example
    ``sandbx = true`` leaving handlers running: fail closed and say what was meant.
    ``proctor.http.settings`` checks ``[auth.jwt]`` with it too, so every section of
    ``config.toml`` answers a misspelt key the same way.

    Args:
        table: The table as read.
        known: Its known keys.
        where: Its dotted name (``auth.jwt``); empty for the top level.
        path: The file, named in the message.

    Raises:
        ConfigError: naming ``<where>.<key>``, with the closest known key as a hint, or the
            section the key belongs in, or the known keys.
    """
    names = sorted(known)
    unknown = sorted(set(table) - set(names))
    if not unknown:
        return
    key = unknown[0]
    field_name = f"{where}.{key}" if where else key
    label = (where if "[" in where else f"[{where}]") if where else "the top level"
    if path is not None:
        label += f" of {path}"
    what = "section" if not where and isinstance(table[key], dict) else "key"
    close = difflib.get_close_matches(key, names, n=1)
    home = [s for s, keys in _SECTIONS.items() if keys and key in keys and s != where]
    if close:
        hint = f"Did you mean {close[0]!r}?"
    elif home:
        hint = f"{key} belongs under [{home[0]}]."
    else:
        hint = "Known: " + ", ".join(names) + "."
    raise ConfigError(f"{label} has unknown {what} {key!r}", field=field_name, hint=hint)


def _section(doc: Mapping[str, Any], name: str, path: Path) -> Mapping[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] in {path} must be a table", field=name)
    known = _SECTIONS.get(name)
    if known is not None:
        reject_unknown(value, known, where=name, path=path)
    return value


_KINDS: Final[Mapping[type, tuple[str, str]]] = {
    bool: ("true or false", "Write {key} = true or {key} = false, without quotes."),
    str: ("a string", 'Write {key} = "...", with quotes.'),
    list: ("a list", 'Write {key} = ["...", ...], in square brackets.'),
    dict: ("a table", "Write {key} = {{ name = value, ... }}, or a table of its own."),
}


def _typed(table: Mapping[str, Any], key: str, default: Any, kind: type, section: str) -> Any:
    """Return a setting of TOML type ``kind`` (a ``_KINDS`` key), or its default when absent.

    Nothing is converted: ``bool("false")`` is True, so a quoted boolean would silently mean
    the opposite, and ``str(5)`` would hide a misplaced number. Refused, naming the field.
    """
    value = table.get(key, default)
    if not isinstance(value, kind):
        what, hint = _KINDS[kind]
        raise ConfigError(
            f"{section}.{key} must be {what}, not {value!r}",
            field=f"{section}.{key}",
            hint=hint.format(key=key),
        )
    return value


def _flag(table: Mapping[str, Any], key: str, default: bool, *, section: str) -> bool:
    """Return a boolean setting, which must be a TOML boolean (see ``_typed``)."""
    value: bool = _typed(table, key, default, bool, section)
    return value


def _text(table: Mapping[str, Any], key: str, default: str, *, section: str) -> str:
    """Return a string setting, which must be a TOML string (see ``_typed``)."""
    value: str = _typed(table, key, default, str, section)
    return value


def _optional_text(table: Mapping[str, Any], key: str, *, section: str) -> str | None:
    """Return a string setting, or None when absent (see ``_typed``)."""
    return _text(table, key, "", section=section) if key in table else None


def _texts(table: Mapping[str, Any], key: str, *, section: str) -> tuple[str, ...]:
    """Return a list-of-strings setting (see ``_typed``): ``tuple("/card")`` would be five."""
    value: list[Any] = _typed(table, key, [], list, section)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError(
                f"{section}.{key}[{i}] must be a string, not {item!r}",
                field=f"{section}.{key}[{i}]",
                hint=_KINDS[str][1].format(key=f"{key}[{i}]"),
            )
    return tuple(value)


def load(home: Path, env: Mapping[str, str] | None = None) -> Settings:
    """Read ``<home>/config.toml`` and the environment.

    The file is checked strictly (docs/operations.md): every section and key must be known
    (a misspelt one gets a suggestion), booleans must be TOML booleans, strings strings, and
    numbers finite and within their range.

    Raises:
        ConfigError: if the home or its config is missing, unreadable or invalid; the
            message names the file and the key.
    """
    env = os.environ if env is None else env
    path = home / "config.toml"
    if not home.is_dir():
        raise ConfigError(
            f"no Proctor instance at {home}",
            field="home",
            hint=f"Run `proctor init --home {home}` first, or pass --home / set PROCTOR_HOME.",
        )
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path} is missing", field="config.toml", hint="Run `proctor init` to create it."
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", field="config.toml") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", field="config.toml") from exc
    try:
        return _settings(home, doc, path, env)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid value in {path}: {exc}", field="config.toml") from exc


def _settings(home: Path, doc: Mapping[str, Any], path: Path, env: Mapping[str, str]) -> Settings:
    reject_unknown(doc, _SECTIONS, where="", path=path)
    inst = _section(doc, "instance", path)
    db = _section(doc, "database", path)
    pol = _section(doc, "policy", path)
    cat = _section(doc, "catalog", path)
    ex = _section(doc, "execution", path)
    au = _section(doc, "audit", path)
    agents = _section(doc, "agents", path)
    _section(doc, "auth", path)  # only its keys here; proctor serve reads [auth.jwt]

    def rel(p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else home / q

    url = _text(db, "url", "sqlite:///proctor.db", section="database")
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rest = url.removeprefix("sqlite:///")
        url = "sqlite:///" + str(rel(rest))
    url = env.get("PROCTOR_DATABASE_URL") or url
    bundle = env.get("PROCTOR_POLICY_BUNDLE") or _text(pol, "bundle", "policy", section="policy")
    # The file is checked even when the environment overrides it: a bad file fails closed.
    sandbox = _flag(ex, "sandbox", False, section="execution")
    if "PROCTOR_SANDBOX" in env:
        sandbox = parse_bool(env["PROCTOR_SANDBOX"], name="PROCTOR_SANDBOX")
    keys: dict[str, bytes] = {}
    for agent_id, spec in agents.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("public_key"), str):
            raise ConfigError(
                f"[agents.{agent_id}] needs public_key = base64 of a 32-byte Ed25519 key",
                field=f"agents.{agent_id}.public_key",
            )
        raw = base64.b64decode(spec["public_key"], validate=True)
        if len(raw) != 32:
            raise ConfigError(
                f"agents.{agent_id}.public_key is {len(raw)} bytes, not 32",
                field=f"agents.{agent_id}.public_key",
            )
        keys[agent_id] = raw
    files = cat.get("files", ["catalog.toml"])
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise ConfigError("catalog.files must be a list of paths", field="catalog.files")
    instance_id = _text(inst, "id", "proctor", section="instance")
    return Settings(
        home=home,
        instance_id=instance_id,
        database_url=url,
        synchronous=env.get("PROCTOR_SYNCHRONOUS")
        or _text(db, "synchronous", "FULL", section="database"),
        pool_size=_pool_size(db, env),
        policy_bundle=rel(bundle),
        catalog_files=tuple(rel(f) for f in files),
        **_thresholds(_section(doc, "thresholds", path)),
        sandbox=sandbox,
        **_execution_settings(ex),
        **_audit_settings(au, _section(doc, "keys", path), instance_id=instance_id),
        agent_keys=keys,
        max_param_string=_number(
            _section(doc, "limits", path),
            "max_param_string",
            MAX_PARAM_STRING_DEFAULT,
            low=1,
            high=MAX_MANIFEST_BYTES,
            integer=True,
            section="limits",
        ),
        **_notification_settings(doc, path, env),
        guards=guard_settings(_section(doc, "guards", path)),
        **_observability(_section(doc, "observability", path), env),
    )


def _thresholds(th: Mapping[str, Any]) -> dict[str, Any]:
    # The totals of five 1-5 axes run from 5 to 25 (``core.assessment.Thresholds``).
    agentic = _number(th, "agentic_max", 10, low=5, high=25, integer=True, section="thresholds")
    hybrid = _number(th, "hybrid_max", 15, low=5, high=25, integer=True, section="thresholds")
    if not agentic < hybrid:
        raise ConfigError(
            f"thresholds.agentic_max ({agentic}) must be below hybrid_max ({hybrid})",
            field="thresholds.agentic_max",
            hint="Totals up to agentic_max are agentic, up to hybrid_max hybrid; the defaults"
            " are 10 and 15.",
        )
    return {"agentic_max": agentic, "hybrid_max": hybrid}


def _audit_settings(
    au: Mapping[str, Any], keys: Mapping[str, Any], *, instance_id: str
) -> dict[str, Any]:
    origin = _text(au, "origin", "", section="audit")
    return {
        "store_prompt": _flag(au, "store_prompt", False, section="audit"),
        "origin": origin or f"proctor/{instance_id}",
        "checkpoint_every": _number(
            au, "checkpoint_every", 1000, low=1, high=1_000_000, integer=True, section="audit"
        ),
        # 0 signs a checkpoint whenever there are new events.
        "checkpoint_interval_seconds": _number(
            au,
            "checkpoint_interval_seconds",
            60,
            low=0,
            high=_MAX_SECONDS,
            integer=True,
            section="audit",
        ),
        "rotate_every_days": _number(
            keys, "rotate_every_days", 0, low=0, high=3650, integer=True, section="keys"
        ),
    }


def _table(g: Mapping[str, Any], key: str, cls: Any) -> Any:
    t = g.get(key, {})
    if not isinstance(t, dict):
        raise ConfigError(f"guards.{key} must be a table", field=f"guards.{key}")
    reject_unknown(t, (f.name for f in dataclasses.fields(cls)), where=f"guards.{key}")
    for f in dataclasses.fields(cls):
        # An int default marks a count or whole seconds (``trials = 2.5`` would let three
        # trial calls through): those must be integers, the rates and factors may be floats.
        if f.name in t:
            integer = type(f.default) is int
            _number(t, f.name, 0, low=0, integer=integer, section=f"guards.{key}")
    return cls(**t)


def _entries(g: Mapping[str, Any], key: str, cls: Any) -> tuple[Any, ...]:
    items = g.get(key, [])
    if not isinstance(items, list):
        raise ConfigError(f"guards.{key} must be an array of tables", field=f"guards.{key}")
    out = []
    for i, t in enumerate(items):
        where = f"guards.{key}[{i}]"
        if not isinstance(t, dict):
            raise ConfigError(f"{where} must be a table", field=where)
        reject_unknown(t, (f.name for f in dataclasses.fields(cls)), where=where)
        for k, v in t.items():
            # An infinite limit or window would overflow the window arithmetic at run time.
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{where}.{k} must be a finite number", field=f"{where}.{k}")
        try:
            out.append(cls(**t))
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}", field=where) from None
        except ConfigError as exc:
            # guards.budgets.limit -> guards.budgets[2].limit: name the entry and its key.
            field_name = where + (exc.field or "").removeprefix(f"guards.{key}")
            raise ConfigError(f"{where}: {exc.message}", field=field_name, hint=exc.hint) from None
    return tuple(out)


def _observability(o: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    endpoint = env.get("PROCTOR_OTLP_ENDPOINT") or o.get("otlp_endpoint")
    if endpoint is not None and not (
        isinstance(endpoint, str) and endpoint.startswith(("http://", "https://"))
    ):
        raise ConfigError(
            "observability.otlp_endpoint must be an http(s) URL",
            field="observability.otlp_endpoint",
        )
    fmt = env.get("PROCTOR_LOG_FORMAT") or o.get("log_format", "text")
    if fmt not in ("text", "json"):
        raise ConfigError(
            "observability.log_format must be text or json", field="observability.log_format"
        )
    return {
        "otlp_endpoint": endpoint,
        "service_name": _text(o, "service_name", "proctor", section="observability"),
        "log_format": fmt,
    }


def guard_settings(g: Mapping[str, Any]) -> GuardSettings:
    """Read ``[guards]`` (docs/guards.md).

    Raises:
        ConfigError: naming the key at fault.
    """
    known = {"rate_limits", "budgets", "breaker", "anomaly", "autonomy", "review_sample_rate"}
    reject_unknown(g, known, where="guards")
    return GuardSettings(
        rate_limits=_entries(g, "rate_limits", RateLimit),
        budgets=_entries(g, "budgets", Budget),
        breaker=_table(g, "breaker", BreakerSettings),
        anomaly=_table(g, "anomaly", AnomalySettings),
        autonomy=_table(g, "autonomy", AutonomySettings),
        review_sample_rate=g.get("review_sample_rate", 0.0),
    )


def _number(
    ex: Mapping[str, Any],
    key: str,
    default: float,
    *,
    low: float,
    high: float | None = None,
    integer: bool,
    section: str = "execution",
) -> Any:
    """Return a numeric setting: an int (or, unless ``integer``, a float) in ``[low, high]``.

    TOML has ``inf`` and ``nan``: neither is a usable duration or count (``int(inf)`` raises
    in every command, and ``nan`` passes every comparison's negation), so a number must be
    finite. ``high`` keeps durations within what date arithmetic can add to now.
    """
    value = ex.get(key, default)
    kind = int if integer else (int, float)
    ok = (
        not isinstance(value, bool)
        and isinstance(value, kind)
        and (isinstance(value, int) or math.isfinite(value))
        and value >= low
        and (high is None or value <= high)
    )
    if not ok:
        what = "an integer" if integer else "a number"
        bounds = f">= {low}" if high is None else f"from {low} to {high}"
        raise ConfigError(
            f"{section}.{key} must be {what} {bounds}, not {value!r}",
            field=f"{section}.{key}",
            hint=f"Set it to {what} {bounds}, or remove it for the default.",
        )
    return value


def _pool_size(db: Mapping[str, Any], env: Mapping[str, str]) -> int:
    raw = env.get("PROCTOR_DATABASE_POOL_SIZE")
    if raw is None:
        return int(_number(db, "pool_size", 8, low=1, integer=True, section="database"))
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ConfigError(
            f"PROCTOR_DATABASE_POOL_SIZE must be an integer >= 1, not {raw!r}",
            field="PROCTOR_DATABASE_POOL_SIZE",
        )
    return int(raw)


def _execution_settings(ex: Mapping[str, Any]) -> dict[str, Any]:
    runners = ex.get("runners", [])
    if not isinstance(runners, list) or not all(isinstance(r, str) for r in runners):
        raise ConfigError("execution.runners must be a list of names", field="execution.runners")
    day, most = _MAX_STEP_SECONDS, _MAX_SECONDS
    return {
        # A plan that waits 0 s (or less) for its user or approvers expires at birth.
        "confirm_ttl_seconds": _number(
            ex, "confirm_ttl_seconds", 3600, low=1, high=most, integer=True
        ),
        "approval_ttl_seconds": _number(
            ex, "approval_ttl_seconds", 86_400, low=1, high=most, integer=True
        ),
        "lease_ttl_seconds": float(
            _number(ex, "lease_ttl_seconds", 30, low=1, high=day, integer=False)
        ),
        "plan_deadline_seconds": _number(
            ex, "plan_deadline_seconds", 900, low=1, high=most, integer=True
        ),
        "queue_ttl_seconds": _number(ex, "queue_ttl_seconds", 3600, low=1, high=most, integer=True),
        "report_grace_seconds": _number(
            ex, "report_grace_seconds", 60, low=1, high=day, integer=True
        ),
        "step_timeout_seconds": float(
            _number(ex, "step_timeout_seconds", 60, low=0, high=day, integer=False)
        ),
        "max_attempts": _number(ex, "max_attempts", 3, low=1, high=100, integer=True),
        "worker_threads": _number(ex, "worker_threads", 4, low=1, high=256, integer=True),
        "runners": tuple(runners),
    }


_WEBHOOK_KEYS = frozenset({"url", "events", "secret_env", "format", "name"})
_TICKET_KEYS = frozenset({"url", "secret_env", "format", "name"})


def _notification_settings(
    doc: Mapping[str, Any], path: Path, env: Mapping[str, str]
) -> dict[str, Any]:
    console = _section(doc, "console", path)
    webhooks = _targets(doc, "webhooks", path, env, keys=_WEBHOOK_KEYS)
    tickets = _targets(doc, "tickets", path, env, keys=_TICKET_KEYS)
    seen: set[str] = set()
    for i, t in enumerate((*webhooks, *tickets)):
        if t.target in seen:
            table = "webhooks" if i < len(webhooks) else "tickets"
            raise ConfigError(
                f"two notification targets in {path} are named {t.target!r}",
                field=f"{table}.name",
                hint="Give each [[webhooks]] / [[tickets]] table a distinct name.",
            )
        seen.add(t.target)
    return {
        "webhooks": webhooks,
        "tickets": tickets,
        "console_url": _text(console, "url", "http://127.0.0.1:8700", section="console").rstrip(
            "/"
        ),
    }


def _targets(
    doc: Mapping[str, Any],
    table: str,
    path: Path,
    env: Mapping[str, str],
    *,
    keys: frozenset[str],
) -> tuple[WebhookSettings, ...]:
    raw = doc.get(table, [])
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ConfigError(f"[[{table}]] in {path} must be an array of tables", field=table)
    out = []
    for i, t in enumerate(raw):
        where = f"{table}[{i}]"
        reject_unknown(t, keys, where=where, path=path)
        for key in ("url", "secret_env"):
            if not isinstance(t.get(key), str) or not t[key]:
                raise ConfigError(f'{where} in {path} needs {key} = "..."', field=f"{where}.{key}")
        var = t["secret_env"]
        if var not in env:
            raise ConfigError(
                f"{where} reads its HMAC secret from ${var}, which is not set",
                field=var,
                hint=f"export {var}=<a long random value>, shared with the receiver.",
            )
        events: Sequence[str] = (
            TICKET_EVENTS if table == "tickets" else t.get("events", WEBHOOK_EVENTS)
        )
        if not isinstance(events, list | tuple) or not all(isinstance(e, str) for e in events):
            raise ConfigError(f"{where}.events must be a list of strings", field=f"{where}.events")
        try:
            out.append(
                WebhookSettings(
                    url=t["url"],
                    secret=env[var].encode(),
                    events=tuple(events),
                    format=str(t.get("format", "json")),
                    # A ticket target is named apart from a webhook with the same URL.
                    name=str(t.get("name", "" if table == "webhooks" else f"ticket:{t['url']}")),
                    secret_env=var,
                )
            )
        except ConfigError as exc:
            raise ConfigError(
                f"{where} in {path}: {exc.message}", field=exc.field, hint=exc.hint
            ) from exc
    return tuple(out)


_ACTION_KEYS = frozenset(
    {
        "summary",
        "category",
        "params",
        "baselines",
        "reversible",
        "compensation",
        "idempotent",
        "cost",
        "amount_param",
        "handler",
        "simulate",
        "compensate",
        "mask",
        "timeout",
        "runner",
        "canary",
    }
)


def load_catalog_file(path: Path) -> list[ActionSpec]:
    """Read the ``[actions."name"]`` tables of a catalog TOML file.

    Raises:
        ConfigError: naming the file and the action or key at fault.
    """
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"catalog file {path} is missing", field="catalog.files") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read catalog {path}: {exc}", field="catalog.files") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"catalog {path} is not valid TOML: {exc}", field=str(path)) from exc
    actions = doc.get("actions", {})
    if not isinstance(actions, dict):
        raise ConfigError(f"[actions] in {path} must be a table", field="actions")
    specs = []
    for name, d in actions.items():
        where = f"{path.name}: actions.{name}"
        if not isinstance(d, dict):
            raise ConfigError(f"{where} must be a table", field=f"actions.{name}")
        reject_unknown(d, _ACTION_KEYS, where=f"actions.{name}", path=path)
        # Every key is type-checked as TOML wrote it: a number where a table or a string
        # belongs would otherwise surface as a TypeError from deep inside, naming nothing.
        section = f"actions.{name}"
        try:
            specs.append(
                ActionSpec(
                    name=name,
                    summary=_text(d, "summary", name, section=section),
                    params_schema=_typed(d, "params", {"type": "object"}, dict, section),
                    category=_text(d, "category", "", section=section),
                    baselines=Scores.from_mapping(
                        _typed(d, "baselines", {}, dict, section),
                        field_prefix=f"actions.{name}.baselines.",
                    ),
                    reversible=_flag(d, "reversible", False, section=section),
                    compensation=_optional_text(d, "compensation", section=section),
                    idempotent=_flag(d, "idempotent", False, section=section),
                    cost=d.get("cost", 0),
                    amount_param=_optional_text(d, "amount_param", section=section),
                    handler=_optional_text(d, "handler", section=section),
                    simulate=_optional_text(d, "simulate", section=section),
                    compensate=_optional_text(d, "compensate", section=section),
                    mask=_texts(d, "mask", section=section),
                    timeout=d.get("timeout"),
                    runner=_optional_text(d, "runner", section=section),
                    canary=_typed(d, "canary", None, dict, section) if "canary" in d else None,
                )
            )
        except InvalidRequestError as exc:
            raise ConfigError(f"{where}: {exc.message}", field=exc.field, hint=exc.hint) from exc
        except ProctorError as exc:
            raise ConfigError(
                f"{path.name}: {exc.message}", field=exc.field, hint=exc.hint
            ) from exc
    return specs
