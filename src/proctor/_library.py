"""``Proctor``: the one object for in-process use.

Open an instance home (``Proctor.open``) or configure one in code (``Proctor.in_memory``),
register actions with ``@proctor.action``, submit plans, act as the humans, read the log.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from proctor.app.auditlog import AuditLog
from proctor.app.dispatch import Dispatcher
from proctor.app.gateway import Gateway, GatewayOptions
from proctor.app.guards import Guards
from proctor.app.journal import record_rotation
from proctor.app.notify import Notifier
from proctor.app.stepup import TotpStepUp
from proctor.app.tokens import TokenService
from proctor.audit.archive import ArchiveReport, archive_export, parse_s3_url
from proctor.audit.events import UNSIGNED, KeyInfo, VerifyReport
from proctor.audit.export import ExportManifest, export_log
from proctor.audit.keys import KeyEntry, Keyring, LocalSigner, NoSigner
from proctor.audit.note import vkey
from proctor.audit.verify import MAX_CLOCK_SKEW, verify_log
from proctor.bootstrap import SystemClock, open_home, starter_catalog_path
from proctor.config import WebhookSettings, home_from, load_catalog_file
from proctor.core.assessment import Scores
from proctor.core.catalog import ActionSpec, Catalog
from proctor.core.guards import GuardSettings
from proctor.core.lifecycle import PlanRecord
from proctor.core.ports import CheckpointRow, Clock, EventRow, PolicyEngine, Signer
from proctor.errors import ConfigError, ProctorError
from proctor.policy import RegoPolicyEngine, default_bundle_path
from proctor.storage import open_store
from proctor.tools import PythonTools

__all__ = ["Proctor"]

log = logging.getLogger("proctor.audit")


class Proctor:
    """A governed-action supervisor in this process.

    Example:
        >>> p = Proctor.in_memory()
        >>> record = p.submit(plan_dict)  # doctest: +SKIP
    """

    def __init__(
        self,
        gateway: Gateway,
        tools: PythonTools,
        keys: Mapping[str, KeyInfo],
        *,
        keyring: Keyring | None = None,
    ) -> None:
        self.gateway = gateway
        self._tools = tools
        self._keys = dict(keys)
        self.keyring = keyring
        self._keys_mtime = _mtime(keyring)

    # ------------------------------------------------------------------ construction

    @classmethod
    def open(cls, home: str | Path | None = None, *, clock: Clock | None = None) -> Proctor:
        """Open an initialised instance home (``proctor init``).

        Raises:
            ConfigError: if the home is missing or broken.
        """
        inst = open_home(home_from(home), clock=clock)
        return cls(inst.gateway, inst.tools, inst.keys, keyring=inst.keyring)

    @classmethod
    def in_memory(
        cls,
        *,
        catalog: Catalog | None = None,
        starter_catalog: bool = True,
        policy: PolicyEngine | str | None = "default",
        clock: Clock | None = None,
        options: GatewayOptions | None = None,
        database_url: str = "memory://",
        origin: str = "proctor/in-memory",
        webhooks: Sequence[WebhookSettings] = (),
        console_url: str = "http://127.0.0.1:8700",
        guards: GuardSettings | None = None,
        audit_signatures: bool = True,
    ) -> Proctor:
        """Configure an instance in code, with an in-memory store and a throwaway key.

        Args:
            catalog: Actions to start with; default the starter catalog (demo tools).
            starter_catalog: Load the starter catalog when ``catalog`` is None.
            policy: ``"default"`` for the packaged bundle, an engine, or None (deny all).
            clock: The clock; default the system clock.
            options: Gateway options.
            database_url: Store URL, ``memory://`` by default.
            origin: The audit log's origin line for checkpoints.
            webhooks: Notification targets; their deliveries are queued in the outbox with
                the events that announce them (send them with ``dispatcher()``).
            console_url: Base URL of the web console, for links in notifications.
            guards: Rate limits, budgets and thresholds; default none configured (kill
                switches, whitelists, breakers and autonomy work regardless).
            audit_signatures: False writes the audit events without Ed25519 signatures
                (``key_id`` ``unsigned``): still hash-chained and in the Merkle tree, but no
                checkpoints, and only this instance's ``verify`` accepts them. For tests and
                throwaway runs; a persistent home always signs.
        """
        if catalog is None:
            catalog = Catalog(load_catalog_file(starter_catalog_path()) if starter_catalog else ())
        engine: PolicyEngine | None
        if policy == "default":
            engine = RegoPolicyEngine.from_directory(default_bundle_path())
        else:
            engine = policy  # type: ignore[assignment]
        clock = clock or SystemClock()
        store = open_store(database_url)
        signer: Signer = LocalSigner.generate() if audit_signatures else NoSigner()
        tools = PythonTools()
        audit_log = AuditLog(store, signer, clock, origin=origin)
        audit_log.open()
        gateway = Gateway(
            store=store,
            catalog=catalog,
            policy=engine,
            signer=signer,
            clock=clock,
            tools=tools,
            options=options,
            step_up=TotpStepUp(store, clock),
            audit_log=audit_log,
            guards=Guards(guards or GuardSettings(), store=store, clock=clock, catalog=catalog),
        )
        if webhooks:
            gateway.listeners.append(Notifier(webhooks, clock=clock, console_url=console_url))
        keys = {k: KeyInfo(v) for k, v in signer.public_keys().items()}
        return cls(gateway, tools, keys)

    # ------------------------------------------------------------------ catalog

    def add_action(self, spec: ActionSpec, *, replace: bool = False) -> None:
        """Add an action to the catalog."""
        self.gateway.catalog.add(spec, replace=replace)

    def action(
        self,
        name: str,
        *,
        category: str,
        baselines: Mapping[str, int],
        summary: str | None = None,
        params: Mapping[str, Any] | None = None,
        reversible: bool = False,
        idempotent: bool = False,
        cost: int = 0,
        amount_param: str | None = None,
        compensate: Callable[..., Any] | None = None,
        simulate: Callable[..., Any] | None = None,
        mask: Sequence[str] = (),
        timeout: float | None = None,
        runner: str | None = None,
        canary: Mapping[str, Any] | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register a Python function as the handler of a new action.

        The function is called as ``fn(params, call)``; ``call.idempotency_key`` is stable
        across retries. ``canary`` is ``{"param": name, "staging": value, "check": fn}``:
        the step first runs with ``params[name] = value`` and ``fn({"result": staged},
        call)`` must return ``{"ok": True, ...}`` (or True) for it to run for real.
        """

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            handler = f"{name}:handler"
            self._tools.register(handler, fn)
            sim = comp = None
            if simulate is not None:
                sim = f"{name}:simulate"
                self._tools.register(sim, simulate)
            if compensate is not None:
                comp = f"{name}:compensate"
                self._tools.register(comp, compensate)
            canary_spec = None
            if canary is not None:
                canary_spec = dict(canary)
                if callable(canary_spec.get("check")):
                    self._tools.register(f"{name}:canary_check", canary_spec["check"])
                    canary_spec["check"] = f"{name}:canary_check"
            self.add_action(
                ActionSpec(
                    name=name,
                    summary=summary or (fn.__doc__ or name).strip().splitlines()[0],
                    params_schema=params or {"type": "object"},
                    category=category,
                    baselines=Scores.from_mapping(baselines),
                    reversible=reversible,
                    idempotent=idempotent,
                    cost=cost,
                    amount_param=amount_param,
                    handler=handler,
                    simulate=sim,
                    compensate=comp,
                    mask=tuple(mask),
                    timeout=timeout,
                    runner=runner,
                    canary=canary_spec,
                )
            )
            return fn

        return register

    # ------------------------------------------------------------------ the flow

    def submit(
        self, plan: Any, *, sandbox: bool | None = None, traceparent: str | None = None
    ) -> PlanRecord:
        """Submit a plan manifest (a JSON object); see ``Gateway.submit``.

        ``traceparent`` (W3C trace context) joins the caller's trace.

        Raises:
            InvalidRequestError: for anything that is not a valid manifest (audited).
        """
        return self.gateway.submit(
            dict(plan) if isinstance(plan, Mapping) else plan,
            sandbox=sandbox,
            traceparent=traceparent,
        )

    def confirm(
        self, plan_id: str, principal: str, *, comment: str = "", traceparent: str | None = None
    ) -> PlanRecord:
        """Confirm a plan as its on-behalf-of user."""
        return self.gateway.confirm(plan_id, principal, comment=comment, traceparent=traceparent)

    def approve(
        self,
        plan_id: str,
        principal: str,
        *,
        roles: Sequence[str],
        comment: str = "",
        otp: str | None = None,
        traceparent: str | None = None,
    ) -> PlanRecord:
        """Approve a plan as ``principal`` holding ``roles``."""
        return self.gateway.approve(
            plan_id, principal, roles=roles, comment=comment, otp=otp, traceparent=traceparent
        )

    def reject(
        self,
        plan_id: str,
        principal: str,
        *,
        roles: Sequence[str] = (),
        comment: str = "",
        traceparent: str | None = None,
    ) -> PlanRecord:
        """Reject a waiting plan."""
        return self.gateway.reject(
            plan_id, principal, roles=roles, comment=comment, traceparent=traceparent
        )

    def undo(
        self,
        plan_id: str,
        principal: str,
        *,
        admin: bool = False,
        comment: str = "",
        traceparent: str | None = None,
    ) -> PlanRecord:
        """Undo a succeeded plan within its undo window (its user, or an admin).

        ``comment`` says why; the audit log records it with the undo.
        """
        return self.gateway.undo(
            plan_id, principal, admin=admin, comment=comment, traceparent=traceparent
        )

    def tick(self) -> list[PlanRecord]:
        """Fire due timers (expiry, rollback TTLs)."""
        return self.gateway.tick()

    def resolve(
        self,
        plan_id: str,
        step_id: str,
        *,
        succeeded: bool,
        principal: str,
        comment: str = "",
        traceparent: str | None = None,
    ) -> PlanRecord:
        """Say what happened to a step whose outcome is unknown; the plan carries on."""
        return self.gateway.resolve(
            plan_id,
            step_id,
            succeeded=succeeded,
            principal=principal,
            comment=comment,
            traceparent=traceparent,
        )

    def recover(self) -> int:
        """Hand plans whose worker died (or whose lease lapsed) to worker threads."""
        return self.gateway.recover()

    # ------------------------------------------------------------------ guards

    @property
    def guards(self) -> Guards:
        """The guards (docs/guards.md): kill switches, whitelists, autonomy, reviews."""
        if self.gateway.guards is None:
            raise ConfigError("this instance has no guards")
        guards: Guards = self.gateway.guards
        return guards

    def kill(
        self,
        scope: str,
        key: str | None = None,
        *,
        by: str,
        reason: str = "",
        allow_unknown: bool = False,
    ) -> str:
        """Engage a kill switch: ``kill("global")``, ``kill("agent", "bot")``, or an action.

        An action must be in the catalog or an MCP tool's ``mcp.<server>.<tool>``, an agent
        known here (a plan, an API token or a guard named it; compared ignoring case); with
        ``allow_unknown=True`` any name (an action only another process declares, an agent
        that has not acted yet) that could be one.

        Raises:
            InvalidRequestError: an unknown action or agent (``key``, with close matches);
                nothing written.
        """
        return self.guards.kill(scope, key, by=by, reason=reason, allow_unknown=allow_unknown)

    def unkill(self, scope: str, key: str | None = None, *, by: str) -> bool:
        """Release a kill switch; False if it was not engaged."""
        return self.guards.unkill(scope, key, by=by)

    def open_breaker(
        self, scope: str, key: str, *, by: str, reason: str = "", allow_unknown: bool = False
    ) -> str:
        """Force a circuit breaker open (``"agent", "bot"`` or ``"action", "shop.buy"``).

        It stays open until ``reset_breaker``: agentic execution needs approval meanwhile.
        Returns the breaker's key (``agent:bot``). The name must be known here, as for
        ``kill``, unless ``allow_unknown=True``.

        Raises:
            InvalidRequestError: an unknown action or agent (``key``); nothing written.
        """
        return self.guards.open_breaker(
            scope, key, by=by, reason=reason, allow_unknown=allow_unknown
        )

    def reset_breaker(self, scope: str, key: str, *, by: str, reason: str = "") -> bool:
        """Close an open or half-open circuit breaker; False if it was not open."""
        return self.guards.reset_breaker(scope, key, by=by, reason=reason)

    def set_autonomy(
        self, user: str, action: str, level: str, *, below: int | None = None, by: str
    ) -> None:
        """Set ``user``'s autonomy level (``propose``, ``confirm``, ``auto``) for ``action``.

        ``below`` is auto's tolerance in minor units: at or above it the user confirms.
        """
        self.guards.set_autonomy(user, action, level, below=below, by=by)

    def mark_review(self, plan_id: str, verdict: str, *, reviewer: str, note: str = "") -> None:
        """Mark a plan sampled for post-hoc review ``fine`` or ``wrong``."""
        self.guards.mark_review(plan_id, verdict, reviewer=reviewer, note=note)

    def complain(self, plan_id: str, *, by: str, reason: str) -> None:
        """File a user's complaint about a plan (a false action in the KPIs)."""
        self.guards.complain(plan_id, by=by, reason=reason)

    def dispatcher(self, **options: Any) -> Dispatcher:
        """Return a webhook dispatcher for this instance's outbox (not started).

        Call ``run_once()`` to send what is due, or ``start()`` / ``stop()`` for a background
        thread. ``options`` are ``Dispatcher``'s keyword arguments (``retry``, ``timeout``,
        ``interval``, ...).
        """
        return Dispatcher.for_gateway(self.gateway, **options)

    def enrol_totp(self, principal: str, *, by: str | None = None) -> tuple[str, str]:
        """Enrol an approver for step-up; return the secret and its otpauth:// URI.

        Audited as ``stepup.enrolled`` (``by``: who enrolled them; never the secret).
        """
        step_up = self.gateway.step_up
        assert isinstance(step_up, TotpStepUp)
        return step_up.enrol(principal, journal=self.gateway._journal, by=by)

    @property
    def tokens(self) -> TokenService:
        """API tokens of this instance; creations and revocations are audited."""
        return TokenService(self.gateway.store, self.gateway.clock, journal=self.gateway._journal)

    # ------------------------------------------------------------------ reading

    def get(self, plan_id: str) -> PlanRecord:
        """Return a plan (raises ``NotFoundError``)."""
        return self.gateway.get(plan_id)

    def plans(
        self, *, status: str | None = None, agent_id: str | None = None, limit: int = 50
    ) -> list[PlanRecord]:
        """List plans, newest first."""
        return list(self.gateway.store.list_plans(status=status, agent_id=agent_id, limit=limit))

    def events(
        self, *, after: int = -1, limit: int = 1000, plan_id: str | None = None
    ) -> list[EventRow]:
        """Read audit events."""
        return self.gateway.store.read_events(after=after, limit=limit, plan_id=plan_id)

    def verify(
        self,
        *,
        check_signatures: bool = True,
        progress: Callable[[int], None] | None = None,
        max_clock_skew: timedelta = MAX_CLOCK_SKEW,
    ) -> VerifyReport:
        """Verify the whole audit log: events, chain, signatures, Merkle tree, checkpoints.

        Args:
            check_signatures: Full mode (every Ed25519 signature, key validity and time
                order); False is fast mode.
            progress: Called with the number of events checked so far.
            max_clock_skew: How far an event's timestamp may lie before the latest one
                logged before it (full mode; see ``proctor.audit.verify.verify_log``).
        """
        store = self.gateway.store
        return verify_log(
            list(store.iter_events()),
            [c.note for c in store.checkpoints()],
            self._current_keys(),
            origin=self.origin,
            full=check_signatures,
            progress=progress,
            max_clock_skew=max_clock_skew,
        )

    def export(
        self,
        directory: str | Path,
        *,
        segment_size: int = 10_000,
        progress: Callable[[int], None] | None = None,
    ) -> ExportManifest:
        """Write a self-contained export: JSONL segments, checkpoints and verifier keys.

        Events not yet covered by a signed checkpoint are covered by a new one first: the
        export then proves its whole length.

        Raises:
            InvalidRequestError: if the directory is not empty.
        """
        self._checkpoint_pending()
        if self.keyring is not None:
            keys = self.keyring.entries()
        else:
            now = self.gateway.clock.now()
            keys = [
                KeyEntry(key_id=k, public_key=v.public_key, created_at=v.not_before or now)
                for k, v in self._keys.items()
            ]
        return export_log(
            self.gateway.store,
            keys=keys,
            origin=self.origin,
            directory=Path(directory),
            segment_size=segment_size,
            progress=progress,
            now=self.gateway.clock.now(),
        )

    def archive(
        self,
        url: str,
        *,
        retention_days: int,
        export_dir: str | Path,
        endpoint_url: str | None = None,
        region_name: str | None = None,
    ) -> ArchiveReport:
        """Upload the sealed segments and checkpoints of an export to S3 with Object Lock.

        The archive is recorded in the audit log itself (event ``audit.archived``).
        """
        bucket, prefix = parse_s3_url(url)
        report = archive_export(
            Path(export_dir),
            bucket=bucket,
            prefix=prefix,
            retention_days=retention_days,
            now=self.gateway.clock.now(),
            endpoint_url=endpoint_url,
            region_name=region_name,
        )
        self.gateway.record(
            "audit.archived",
            {
                "bucket": bucket,
                "prefix": prefix,
                "retain_until": report.retain_until.isoformat(),
                "uploaded": [o.key for o in report.uploaded],
                "sha256": [o.sha256 for o in report.uploaded],
            },
        )
        return report

    # ------------------------------------------------------------------ transparency log

    @property
    def audit_log(self) -> AuditLog:
        """The Merkle tree and checkpoints over this instance's events."""
        log = self.gateway.audit_log
        assert log is not None
        return log

    @property
    def origin(self) -> str:
        """The audit log's origin (first line of its checkpoints, key name of its notes)."""
        return self.audit_log.origin

    def checkpoint(self) -> CheckpointRow | None:
        """Sign a checkpoint of the log as it is now; None while the log is empty."""
        return self.audit_log.checkpoint()

    def latest_checkpoint(self) -> CheckpointRow | None:
        """Return the latest signed checkpoint."""
        return self.audit_log.latest_checkpoint()

    def inclusion_proof(self, index: int, size: int | None = None) -> dict[str, Any]:
        """Return an RFC 9162 inclusion proof for event ``index`` in the tree of ``size``."""
        tree_size, hashes = self.audit_log.inclusion_proof(index, size)
        return {
            "index": index,
            "tree_size": tree_size,
            "leaf_hash": base64.b64encode(self.audit_log.leaf_hash(index)).decode(),
            "hashes": [base64.b64encode(h).decode() for h in hashes],
            "root_hash": base64.b64encode(self.audit_log.root(tree_size)).decode(),
        }

    def consistency_proof(self, old: int, new: int) -> dict[str, Any]:
        """Return an RFC 9162 consistency proof between two tree sizes."""
        hashes = self.audit_log.consistency_proof(old, new)
        return {
            "from": old,
            "to": new,
            "hashes": [base64.b64encode(h).decode() for h in hashes],
            "from_root": base64.b64encode(self.audit_log.root(old)).decode(),
            "to_root": base64.b64encode(self.audit_log.root(new)).decode(),
        }

    def vkeys(self) -> list[str]:
        """Return the signed-note verifier keys of every signing key, oldest first."""
        return [
            vkey(self.origin, info.public_key)
            for key_id, info in self._current_keys().items()
            if key_id != UNSIGNED  # an unsigned log has no key (and signs no note)
        ]

    def rotate_key(self, *, by: str | None = None) -> str:
        """Make a new signing key current (old public keys are kept); return its id.

        Recorded as ``keys.rotated`` (``by``, the operator, as its ``user_id`` and actor). The
        keyring is written first and cannot be rolled back with the event: if this process
        dies in between, the first event signed with the new key records the rotation
        instead (``proctor.app.journal``), so the log never changes key unannounced.

        Raises:
            ConfigError: for an in-memory instance, which has no keyring on disk.
        """
        if self.keyring is None:
            raise ConfigError("this instance has no keyring on disk", field="keys")
        entry = self.keyring.create(self.gateway.clock.now())
        previous = self.keyring.previous(entry.key_id)
        self._keys, self._keys_mtime = self.keyring.key_infos(), _mtime(self.keyring)
        gw = self.gateway
        record_rotation(gw.store, gw._journal, key_id=entry.key_id, previous=previous, by=by)
        return entry.key_id

    @property
    def key_infos(self) -> dict[str, KeyInfo]:
        """Public keys that verify this instance's events (as the keyring has them now)."""
        return dict(self._current_keys())

    def _current_keys(self) -> dict[str, KeyInfo]:
        """The keyring's public keys, re-read when keyring.json changed since the last read.

        Another process (``proctor keys rotate``, another worker's scheduled rotation) may
        rotate the keyring while this instance is open: keys read at open would report the
        new key's events as ``unknown_key`` and list only the old key.
        """
        if self.keyring is not None:
            mtime = _mtime(self.keyring)
            if mtime != self._keys_mtime:
                self._keys, self._keys_mtime = self.keyring.key_infos(), mtime
        return self._keys

    def close(self) -> None:
        """Stop the worker threads (running handlers finish first), then release the store.

        Events appended since the last checkpoint are covered by a new one first, so that
        the log's newest events cannot be cut once this process has left (``docs/audit.md``).
        """
        self.gateway.executor.close()
        try:
            self._checkpoint_pending()
        except ProctorError:  # closing must go on; the next process signs them
            log.warning("could not sign the closing checkpoint", exc_info=True)
        self.gateway.telemetry.shutdown()  # export the spans still queued
        self.gateway.store.close()

    def _checkpoint_pending(self) -> CheckpointRow | None:
        log_ = self.gateway.audit_log
        return None if log_ is None else log_.checkpoint_pending()

    def __enter__(self) -> Proctor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _mtime(keyring: Keyring | None) -> float | None:
    """keyring.json's modification time, or None (no keyring, or it cannot be read)."""
    if keyring is None:
        return None
    try:
        return keyring.mtime()
    except OSError:
        return None
