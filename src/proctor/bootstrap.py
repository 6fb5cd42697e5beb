"""The composition root: settings → store, policy engine, signer, tools → ``Gateway``.

This is the one module where adapters meet. Everything else receives its collaborators.
"""

from __future__ import annotations

import datetime as _dt
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from proctor.app.auditlog import AuditLog, CheckpointPolicy
from proctor.app.dispatch import Dispatcher
from proctor.app.gateway import Gateway, GatewayOptions
from proctor.app.guards import Guards
from proctor.app.journal import record_rotation
from proctor.app.notify import Notifier
from proctor.app.stepup import TotpStepUp
from proctor.app.telemetry import Telemetry
from proctor.audit.events import KeyInfo
from proctor.audit.keys import Keyring
from proctor.config import Settings, load, load_catalog_file
from proctor.core.assessment import Thresholds
from proctor.core.catalog import Catalog
from proctor.core.plans import Limits
from proctor.core.ports import Clock, PolicyEngine, Signer, Store
from proctor.errors import ConfigError, MissingDependencyError, ProctorError, StorageError
from proctor.policy import RegoPolicyEngine, bundle_version, default_bundle_path
from proctor.storage import open_store
from proctor.tools import PythonTools

__all__ = [
    "InitReport",
    "SystemClock",
    "build_gateway",
    "init_home",
    "load_catalog",
    "load_policy",
    "open_existing_store",
    "open_instance",
    "open_log_view",
    "start_dispatcher",
    "starter_catalog_path",
]


class SystemClock:
    """The real clock (UTC). The one place that reads the system time."""

    def now(self) -> datetime:
        """Return the current UTC time."""
        return _dt.datetime.now(_dt.UTC)  # noqa: TID251 - the Clock port's one real reader


def starter_catalog_path() -> Path:
    """Return the packaged starter catalog (the demo tools)."""
    return Path(str(resources.files("proctor.demo").joinpath("catalog.toml")))


_CONFIG_TEMPLATE = """\
# Proctor instance configuration. Precedence: this file, then PROCTOR_* variables, then flags.

[instance]
id = "{instance_id}"

[database]
# sqlite:///relative/to/home.db, sqlite:////absolute/path.db, or memory://
url = "sqlite:///proctor.db"
# FULL: every acknowledged action survives power loss. NORMAL: survives a crash only.
synchronous = "FULL"
# PostgreSQL: the most connections one process holds (size max_connections for the sum).
# pool_size = 8

[policy]
# Directory with *.rego files and data.json (compiled once at start-up)
bundle = "policy"

[catalog]
files = ["catalog.toml"]

[thresholds]
agentic_max = 10
hybrid_max = 15

[execution]
# sandbox = true runs no handler at all: only simulations, every decision recorded
sandbox = false
confirm_ttl_seconds = 3600
approval_ttl_seconds = 86400
# Durable execution (docs/execution.md): a dead worker's plans are taken over after its
# lease; attempts past their timeout are retried (idempotent actions) or need attention.
lease_ttl_seconds = 30
step_timeout_seconds = 60
max_attempts = 3
plan_deadline_seconds = 900
# A confirmed or approved plan that waits for a process serving its runner (or whose catalog
# has its actions) expires unstarted after this, instead of running whenever one appears.
queue_ttl_seconds = 3600
# A call handed to a remote MCP proxy (`proctor mcp --server`) needs attention when the proxy
# reports no outcome within the call's timeout plus this many seconds.
report_grace_seconds = 60

# [limits]
# Longest string in a step's params, in characters (up to 262144; an action's maxLength
# narrows it per field). A whole manifest stays at most 256 KiB.
# max_param_string = 65536

[audit]
# The raw intent (prompt) is stored in audit events only when true; its hash always is.
store_prompt = false
# First line of every signed checkpoint (default "proctor/<instance id>")
# origin = "example.com/proctor"
checkpoint_every = 1000
checkpoint_interval_seconds = 60

[keys]
# Rotate the signing key automatically when it is older than this (0 = never)
rotate_every_days = 0

# Agents that sign their manifests (Ed25519, base64 of the 32-byte public key):
# [agents.travel-bot]
# public_key = "..."

# Base URL of the web console, for the links in webhook notifications:
# [console]
# url = "https://proctor.example.com"

# Webhooks (docs/webhooks.md). Deliveries are signed with HMAC-SHA256; the secret is read
# from the environment variable named by secret_env, never from this file.
# [[webhooks]]
# url = "https://hooks.example.com/proctor"
# events = ["approval.needed", "plan.decided", "plan.executed", "plan.failed", "plan.undone"]
# secret_env = "PROCTOR_WEBHOOK_SECRET"
# format = "json"  # or "slack"
#
# Escalations (anomaly, breaker opened) to a ticketing endpoint:
# [[tickets]]
# url = "https://tickets.example.com/hooks/proctor"
# secret_env = "PROCTOR_TICKETS_SECRET"
"""


@dataclass(frozen=True, slots=True)
class InitReport:
    """What ``init_home`` created and what already existed."""

    home: Path
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)


def init_home(
    home: Path, *, clock: Clock | None = None, instance_id: str | None = None
) -> InitReport:
    """Create an instance directory; idempotent (existing files are left untouched).

    Raises:
        ConfigError: if ``home`` exists and is not a directory, or cannot be written; or if
            it has no keyring while its database holds audit events (``keys/`` was lost: a
            new keyring would sign on, but could not verify a single event before it).
    """
    clock = clock or SystemClock()
    report = InitReport(home=home)
    if home.exists() and not home.is_dir():
        raise ConfigError(f"{home} exists and is not a directory", field="home")
    try:
        if not home.exists():
            home.mkdir(parents=True, exist_ok=True)
            # Private whatever the umask: the database (TOTP secrets, the log) and keys/ are
            # in it. An existing home keeps its mode; the store warns if the database is
            # readable by others (docs/operations.md).
            home.chmod(0o700)
        cfg = home / "config.toml"
        if cfg.exists():
            report.existing.append("config.toml")
        else:
            iid = instance_id or f"proctor-{home.resolve().name.strip('.') or 'instance'}"
            cfg.write_text(_CONFIG_TEMPLATE.format(instance_id=iid))
            report.created.append("config.toml")
        catalog = home / "catalog.toml"
        if catalog.exists():
            report.existing.append("catalog.toml")
        else:
            shutil.copyfile(starter_catalog_path(), catalog)
            report.created.append("catalog.toml")
        policy = home / "policy"
        if policy.exists():
            report.existing.append("policy/")
        else:
            shutil.copytree(default_bundle_path(), policy)
            report.created.append("policy/")
        keyring = Keyring(home / "keys")
        if not keyring.exists():
            _refuse_new_keyring_for_a_log(home, keyring)
        if keyring.create_first(clock.now()) is None:
            report.existing.append("keys/")
        else:
            report.created.append("keys/")
        keyring.payload_key()  # the masked payloads' hash key; a home of before gets one too
    except OSError as exc:
        raise ConfigError(f"cannot write the instance at {home}: {exc}", field="home") from exc
    settings = load(home)
    db_existed = _db_exists(settings)
    store = _settings_store(settings)
    store.close()
    (report.existing if db_existed else report.created).append("database")
    return report


_RESTORE_KEYS = (
    "Restore keys/ from the backup of this instance, or copy it from another replica of it"
    " (docs/operations.md, Backups). `proctor init` makes a new keyring only for an instance"
    " whose audit log is empty: a new key could not verify the events already signed."
)


def _refuse_new_keyring_for_a_log(home: Path, keyring: Keyring) -> None:
    """Refuse to create a keyring beside a database that already holds audit events.

    A new key would sign on, but ``audit verify`` would then stop at the first event with
    ``unknown_key``: the old public keys are gone with ``keys/``. A database whose events
    cannot be counted is treated as holding some.
    """
    settings = load(home)
    if not _db_exists(settings):
        return
    try:
        store = _settings_store(settings, migrate=False)
        try:
            empty = store.event_count() == 0
        finally:
            store.close()
    except ProctorError:
        empty = False
    if not empty:
        raise ConfigError(
            f"{home} has no keyring ({keyring.directory / 'keyring.json'}) but its database"
            f" ({settings.database_url}) holds audit events; init creates no new keyring",
            field="keys",
            hint=_RESTORE_KEYS,
        )


def _require_keyring(settings: Settings, keyring: Keyring) -> None:
    """Stop on a missing keyring with the hint that fits: init a new home, or restore keys/.

    Raises:
        ConfigError: if the keyring is missing.
    """
    if keyring.exists():
        return
    try:
        has_db = _db_exists(settings)
    except ProctorError:  # a server database that cannot be reached: assume it is there
        has_db = True
    raise ConfigError(
        f"no keyring at {keyring.directory / 'keyring.json'}",
        field="keys",
        hint=_RESTORE_KEYS if has_db else "Run `proctor init` to create the instance.",
    )


def _settings_store(settings: Settings, *, migrate: bool = True) -> Store:
    """Open the store of ``settings`` (its URL, durability and pool size)."""
    return open_store(
        settings.database_url,
        synchronous=settings.synchronous,
        pool_size=settings.pool_size,
        migrate=migrate,
    )


def _db_exists(settings: Settings) -> bool:
    url = settings.database_url
    if url.startswith(("postgresql://", "postgres://")):
        store = open_store(url, migrate=False)  # a server database exists: has it a schema?
        try:
            return int(store.schema_version()) > 0  # type: ignore[attr-defined]
        finally:
            store.close()
    return url.startswith("sqlite:///") and Path(url.removeprefix("sqlite:///")).exists()


def load_catalog(settings: Settings) -> Catalog:
    """Read every catalog file of the settings into one catalog."""
    catalog = Catalog()
    for path in settings.catalog_files:
        for spec in load_catalog_file(path):
            catalog.add(spec)
    return catalog


def load_policy(settings: Settings) -> PolicyEngine:
    """Compile the instance's policy bundle.

    Raises:
        ConfigError: if the bundle directory is missing.
        InvalidPolicyError: if it does not compile.
    """
    bundle = settings.policy_bundle or settings.home / "policy"
    if not bundle.is_dir():
        raise ConfigError(
            f"policy bundle {bundle} is missing",
            field="policy.bundle",
            hint="Run `proctor init` to install the default policy.",
        )
    return RegoPolicyEngine.from_directory(bundle)


def precheck_policy(home: Path) -> list[str]:
    """Compile ``home``'s policy bundle in a child process before a server loads it.

    Some bundles crash rego-cpp (SIGSEGV) instead of failing to compile; loaded straight
    into ``proctor serve`` such a bundle would kill it with no word of why. The packaged
    default bundle, unchanged, is known good and skips the child (about a second).

    Returns:
        The bundle's policy-contract violations (empty when it answers the contract).

    Raises:
        InvalidPolicyError: it does not compile, or the engine crashed or hung on it.
    """
    from proctor.app.policy_reload import validate_bundle

    settings = load(home)
    bundle = settings.policy_bundle or settings.home / "policy"
    if not bundle.is_dir():
        return []  # opening the instance reports it, with its hint
    if bundle_version(bundle) == bundle_version(default_bundle_path()):
        return []
    _, violations = validate_bundle(RegoPolicyEngine.from_directory, bundle)
    return violations


def start_policy_reloader(gateway: Gateway, home: Path, *, interval: float = 2.0) -> Any:
    """Start hot reload of ``home``'s policy bundle (``proctor serve`` does)."""
    from proctor.app.policy_reload import PolicyReloader

    settings = load(home)
    bundle = settings.policy_bundle or settings.home / "policy"
    reloader = PolicyReloader(gateway, bundle, RegoPolicyEngine.from_directory, interval=interval)
    reloader.start()
    return reloader


def wal_checkpointer(home: Path) -> Callable[[Callable[[], bool]], int] | None:
    """The WAL checkpointer of ``proctor serve --workers N`` for this instance's store.

    Returns ``run(stop)`` (``proctor.storage.sqlite_wal.checkpoint_wal`` on the instance's
    SQLite file, until ``stop()``), or None when the store is not SQLite.
    """
    settings = load(home)
    url = settings.database_url
    if not url.startswith("sqlite:///"):
        return None
    from proctor.storage.sqlite_wal import checkpoint_wal

    path, synchronous = url.removeprefix("sqlite:///"), settings.synchronous
    return lambda stop: checkpoint_wal(path, stop=stop, synchronous=synchronous)


def policy_tools() -> Any:
    """The policy adapter's authoring functions, for the CLI (which may not import it)."""
    from proctor import policy

    return policy


def build_gateway(
    settings: Settings,
    *,
    store: Store,
    catalog: Catalog,
    policy: PolicyEngine | None,
    clock: Clock,
    tools: PythonTools,
    signer: Signer,
    payload_key: bytes | None = None,
) -> Gateway:
    """Wire a gateway from parts (the audit log is opened and checked here)."""
    options = GatewayOptions(
        thresholds=Thresholds(agentic_max=settings.agentic_max, hybrid_max=settings.hybrid_max),
        limits=Limits(max_param_string=settings.max_param_string),
        sandbox=settings.sandbox,
        confirm_ttl=timedelta(seconds=settings.confirm_ttl_seconds),
        approval_ttl=timedelta(seconds=settings.approval_ttl_seconds),
        store_prompt=settings.store_prompt,
        agent_keys=settings.agent_keys,
        lease_ttl=timedelta(seconds=settings.lease_ttl_seconds),
        plan_deadline=timedelta(seconds=settings.plan_deadline_seconds),
        queue_ttl=timedelta(seconds=settings.queue_ttl_seconds),
        report_grace=timedelta(seconds=settings.report_grace_seconds),
        step_timeout=settings.step_timeout_seconds or None,
        max_attempts=settings.max_attempts,
        worker_threads=settings.worker_threads,
        runners=frozenset(settings.runners),
    )
    audit_log = AuditLog(
        store,
        signer,
        clock,
        origin=settings.origin or f"proctor/{settings.instance_id}",
        policy=CheckpointPolicy(
            every=settings.checkpoint_every,
            interval=timedelta(seconds=settings.checkpoint_interval_seconds),
        ),
    )
    audit_log.open()
    gateway = Gateway(
        store=store,
        catalog=catalog,
        policy=policy,
        signer=signer,
        clock=clock,
        tools=tools,
        options=options,
        step_up=TotpStepUp(store, clock),
        audit_log=audit_log,
        guards=Guards(settings.guards, store=store, clock=clock, catalog=catalog),
        telemetry=Telemetry(tracer_provider(settings)),
        payload_key=payload_key,
    )
    if settings.notification_targets:
        # Runs inside each event-appending transaction: a delivery commits with its event.
        gateway.listeners.append(
            Notifier(settings.notification_targets, clock=clock, console_url=settings.console_url)
        )
    return gateway


def tracer_provider(settings: Settings) -> Any:
    """An OpenTelemetry tracer provider exporting to ``otlp_endpoint``, or None.

    Raises:
        MissingDependencyError: when an endpoint is set but the SDK is not installed.
    """
    if not settings.otlp_endpoint:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise MissingDependencyError(
            "OTLP export needs the OpenTelemetry SDK",
            field="observability.otlp_endpoint",
            hint="pip install 'proctor[otel]'",
        ) from exc
    provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
    endpoint = settings.otlp_endpoint.rstrip("/")
    if not endpoint.endswith("/v1/traces"):
        endpoint += "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def start_dispatcher(gateway: Gateway, *, interval: float = 1.0) -> Dispatcher:
    """Start sending the webhook outbox of ``gateway`` in a background thread.

    ``proctor serve`` calls this at start-up (``start_dispatcher(proctor.gateway)``) and
    ``stop()`` on the result at shutdown. The targets are those ``build_gateway`` wired from
    the settings. With no webhook configured the dispatcher idles (deliveries left for
    targets removed from the configuration fail and end in the dead letters).

    Args:
        gateway: The instance's gateway (its store, clock and notifier listeners).
        interval: Seconds between outbox polls when idle; new deliveries wake it at once.
    """
    dispatcher = Dispatcher.for_gateway(gateway, interval=interval)
    dispatcher.start()
    return dispatcher


@dataclass(slots=True)
class Instance:
    """An opened instance: its settings, gateway and key infos for verification."""

    settings: Settings
    gateway: Gateway
    keys: dict[str, KeyInfo]
    tools: PythonTools
    keyring: Keyring | None = None


def _refuse_shared_rotation_schedule(settings: Settings) -> None:
    """Refuse ``[keys] rotate_every_days`` when replicas may share the store (PostgreSQL).

    The keyring's lock serialises rotations of one ``keys/`` directory only. Replicas on one
    PostgreSQL database usually have copies of ``keys/``: each rotated its own copy to a key
    of its own, signed the shared log with it, and verification then failed on every replica
    with ``unknown_key`` (review finding t07). Whether the copies are one directory cannot be
    told from here, so the schedule is refused at open, before any key is made: the operator
    finds out at deployment, not when the key falls due.
    """
    if settings.rotate_every_days > 0 and settings.database_url.startswith(
        ("postgresql://", "postgres://")
    ):
        raise ConfigError(
            "[keys] rotate_every_days is not supported with a PostgreSQL database: replicas "
            "would each rotate their own copy of keys/ to a different key, and the shared log "
            "would fail verification (unknown_key)",
            field="keys.rotate_every_days",
            hint="set [keys] rotate_every_days = 0; rotate on one replica with `proctor keys "
            "rotate` and copy keys/ to the others within 5 minutes (docs/replicas.md, "
            '"Rotating keys")',
        )


def open_instance(settings: Settings, *, clock: Clock | None = None) -> Instance:
    """Open the store, keys, catalog and policy of an instance.

    Raises:
        ProctorError: a ``ConfigError``, ``InvalidPolicyError`` or ``StorageError`` saying
            which part is missing or broken.
    """
    clock = clock or SystemClock()
    keyring = Keyring(settings.keys_dir)
    _require_keyring(settings, keyring)  # a home without `proctor init`, or keys/ lost
    keyring.current()  # an unreadable keyring: stop before the store
    _refuse_shared_rotation_schedule(settings)
    catalog = load_catalog(settings)
    policy = load_policy(settings)
    tools = PythonTools()
    _refuse_missing_sqlite(settings)
    store = _settings_store(settings)
    try:
        # A scheduled rotation is recorded in the audit log, which needs the store: so it
        # waits until nothing but building the gateway can stop the opening (the catalog,
        # the policy and the store are loaded), and is recorded below.
        rotated = None
        if settings.rotate_every_days > 0:  # the rotation schedule of config.toml
            # Decided under the keyring's lock: of several processes opening the home at once
            # (`proctor serve --workers N`) exactly one rotates, and records it.
            rotated = keyring.rotate_if_due(
                clock.now(), every=timedelta(days=settings.rotate_every_days)
            )
        gateway = build_gateway(
            settings,
            store=store,
            catalog=catalog,
            policy=policy,
            clock=clock,
            tools=tools,
            signer=keyring.signer(),  # after the rotation: the new key signs from the start
            payload_key=keyring.payload_key(),
        )
        if rotated is not None:
            # As ``Proctor.rotate_key`` records a manual rotation: the first event after it.
            # Killed before this commits, the rotation is recorded by the first event the
            # new key signs, in any process (``proctor.app.journal``), without "scheduled".
            record_rotation(
                gateway.store,
                gateway._journal,
                key_id=rotated.key_id,
                previous=keyring.previous(rotated.key_id),
                scheduled=True,
            )
    except ProctorError:
        store.close()
        raise
    return Instance(
        settings=settings, gateway=gateway, keys=keyring.key_infos(), tools=tools, keyring=keyring
    )


def _refuse_missing_sqlite(settings: Settings) -> None:
    """Refuse to open a home whose SQLite file is gone, rather than start a new audit log.

    ``proctor init`` creates the database. Past that, a missing file means it was deleted,
    moved or mistyped in config.toml: opening would create an empty database whose new log
    says nothing of the old one, and a read such as ``proctor plans`` would show an empty
    instance as if it were this one.
    """
    url = settings.database_url
    if not url.startswith("sqlite:///"):
        return
    path = Path(url.removeprefix("sqlite:///"))
    if not path.is_file():
        raise StorageError(
            f"no database at {path}",
            field="database.url",
            hint="Restore it from a backup, or check [database] url in config.toml and"
            " PROCTOR_DATABASE_URL. Only `proctor init` creates a database (a new, empty"
            " audit log); no other command does.",
        )


@dataclass(slots=True)
class LogView:
    """What verifying an instance's log needs, opened without checking it first."""

    store: Store
    keys: dict[str, KeyInfo]
    origin: str


def open_log_view(home: Path) -> LogView:
    """Open the store and public keys of ``home`` for verification only.

    Unlike ``open_instance`` this does not load the Merkle tree or check checkpoints, which
    refuse a tampered log: the verifier must be able to open it to say what is wrong. Nor
    does it create or migrate the database (``open_existing_store``): a verifier pointed at
    the wrong place must fail, not report an empty log as intact.

    Raises:
        StorageError: the database is missing, has no Proctor schema, or an older one.
        ConfigError: the database is in memory (another process's log cannot be read).
    """
    settings = load(home)
    keyring = Keyring(settings.keys_dir)
    _require_keyring(settings, keyring)
    store = open_existing_store(settings)
    return LogView(
        store=store,
        keys=keyring.key_infos(),
        origin=settings.origin or f"proctor/{settings.instance_id}",
    )


def open_existing_store(settings: Settings) -> Store:
    """Open the database of ``settings`` as it is, to read it: never create nor migrate it.

    ``open_store`` creates a missing SQLite file and brings any schema up to date, which is
    what serving needs. A read-only command (``proctor audit verify``) must not: a deleted
    database, or a mistyped ``PROCTOR_DATABASE_URL``, would become a new empty log that
    verifies as intact.

    Raises:
        StorageError: the SQLite file does not exist, the database has no Proctor schema
            (an empty PostgreSQL database), or a schema other than this Proctor's.
        ConfigError: the URL is ``memory://``: a new process sees an empty store.
    """
    from proctor.storage import SCHEMA_VERSION

    url = settings.database_url
    where = _redacted(url)
    hint = (
        "Check [database] url in config.toml and PROCTOR_DATABASE_URL; restore the database"
        " from a backup if it was removed. This command never creates one."
    )
    if url.startswith("memory:"):
        raise ConfigError(
            "an in-memory database cannot be read from another process",
            field="database.url",
            hint="Verify in the process that holds it (Proctor.verify()), or use SQLite.",
        )
    _refuse_missing_sqlite(settings)
    store = _settings_store(settings, migrate=False)
    try:
        version = int(store.schema_version())  # type: ignore[attr-defined]
        if version == 0:
            raise StorageError(
                f"the database {where} holds no Proctor schema (no audit log)",
                field="database.url",
                hint=hint,
            )
        if version != SCHEMA_VERSION:
            raise StorageError(
                f"the database {where} has schema {version}; this Proctor reads {SCHEMA_VERSION}",
                field="database.url",
                hint="Run `proctor db upgrade` (or use the Proctor that wrote it) first."
                if version < SCHEMA_VERSION
                else "Install the Proctor version that wrote it (or restore the backup taken"
                " before the upgrade): a database is never downgraded.",
            )
    except BaseException:
        store.close()
        raise
    return store


def open_home(home: Path, *, clock: Clock | None = None) -> Instance:
    """Load the settings of ``home`` and open it."""
    return open_instance(load(home), clock=clock)


@dataclass(frozen=True, slots=True)
class DatabaseStatus:
    """A home's database: where, and which schema version against this Proctor's."""

    url: str  # without a password
    version: int
    expected: int
    exposed: tuple[str, ...] = ()  # SQLite files other local users can read, with their modes


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"


def database_status(home: Path, *, upgrade: bool = False) -> tuple[DatabaseStatus, DatabaseStatus]:
    """Return the database status of ``home`` before and after (``upgrade``: migrate it)."""
    from proctor.storage import SCHEMA_VERSION

    settings = load(home)
    if settings.database_url.startswith("memory:"):
        raise ConfigError("an in-memory database has no schema to upgrade", field="database.url")
    sqlite_path = settings.database_url.removeprefix("sqlite:///")
    if sqlite_path != settings.database_url and not upgrade and not Path(sqlite_path).is_file():
        # Opening it would create an empty file: a status must not write.
        raise StorageError(
            f"no database at {sqlite_path}",
            field="database.url",
            hint="Check [database] url and PROCTOR_DATABASE_URL; `proctor init` creates it.",
        )
    store = _settings_store(settings, migrate=False)
    try:
        before = int(store.schema_version())  # type: ignore[attr-defined]
    finally:
        store.close()
    after = before
    if upgrade:
        store = _settings_store(settings)
        try:
            after = int(store.schema_version())  # type: ignore[attr-defined]
        finally:
            store.close()
    url = _redacted(settings.database_url)
    exposed: tuple[str, ...] = ()
    if sqlite_path != settings.database_url:
        from proctor.storage.sqlite_wal import exposed_files

        exposed = tuple(exposed_files(sqlite_path))
    return (
        DatabaseStatus(url=url, version=before, expected=SCHEMA_VERSION, exposed=exposed),
        DatabaseStatus(url=url, version=after, expected=SCHEMA_VERSION, exposed=exposed),
    )
