"""Writing audit events in the same transaction as the state change they record.

A ``Journal`` collects the events of one transaction and seals them (chain + signature)
against the log head read *inside* that transaction, so the chain has no fork or gap even
when several writers race: the store's write lock orders them.

The log also records every change of signing key. A rotation writes the keyring first and
its ``keys.rotated`` event after (``record_rotation``); a process killed in between, or a
signer switched to another key by other means, would leave events signed by a new key that
the log never announced. So the writer that first appends with a key other than the head's
records the change itself, first in its own transaction, unless the log already names that
key (``rotation_recorded``): under the log's lock, so of several processes or replicas
exactly one records it. ``proctor audit verify`` reports a key change the log does not
record (``unrecorded_rotation``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from proctor.app.auditlog import AuditLog
from proctor.app.redaction import Redaction
from proctor.app.telemetry import current_ids
from proctor.audit.events import pinned, seal
from proctor.core.canonical import canonical, fast_path_ok
from proctor.core.events import EventType as E
from proctor.core.lifecycle import PlanRecord
from proctor.core.ports import Clock, EventListener, EventRow, Signer, Store, Transaction

__all__ = [
    "Journal",
    "keyed_payload_hash",
    "payload_hash",
    "record_rotation",
    "rotation_recorded",
]

_SYSTEM = {"type": "system", "name": "proctor"}


def payload_hash(params: Mapping[str, Any]) -> str:
    """Return ``sha256:<hex>`` of the canonical, unmasked params."""
    return "sha256:" + hashlib.sha256(canonical(params)).hexdigest()


def keyed_payload_hash(key: bytes, params: Mapping[str, Any]) -> str:
    """Return ``hmac-sha256:<hex>`` of the canonical, unmasked params under ``key``.

    For the params of a step whose action masks some: a plain hash of them would let anyone
    holding the log try every value of a short masked param (a 4-digit ``card_last4``) until
    the hash matches, since every other param is logged. Keyed with the instance's secret
    (``keys/payload-hmac.key``, never in the log), only its holder can test a payload.
    """
    return "hmac-sha256:" + hmac.new(key, canonical(params), hashlib.sha256).hexdigest()


class Journal:
    """Events of one transaction, sealed and appended by ``flush``."""

    __slots__ = (
        "_bodies",
        "_clock",
        "_fast",
        "_keyed",
        "_listeners",
        "_log",
        "_parts",
        "_redact",
        "_redactions",
        "_signer",
        "_tx",
        "store_prompt",
    )

    def __init__(
        self,
        tx: Transaction,
        signer: Signer,
        clock: Clock,
        *,
        store_prompt: bool = False,
        log: AuditLog | None = None,
        listeners: Sequence[EventListener] = (),
        redact: Callable[[PlanRecord], Redaction | None] | None = None,
        keyed: Callable[[Mapping[str, Any]], str] | None = None,
    ) -> None:
        self._tx = tx
        # One key for the whole transaction, taken before any event is timestamped: a
        # rotation meanwhile cannot sign an event dated before the new key existed (which
        # verification rejects); the old key stays valid for the rotation's grace.
        self._signer = pinned(signer)
        self._clock = clock
        self._bodies: list[dict[str, Any]] = []
        self._fast: list[bool] = []
        self._parts: dict[str, tuple[dict[str, Any], str, str, str, str]] = {}
        self._log = log
        self._listeners = listeners
        # None when no action masks anything: then nothing below looks for masked values.
        self._redact = redact
        self._redactions: dict[str, Redaction | None] = {}
        self._keyed = keyed
        self.store_prompt = store_prompt

    def emit(
        self,
        type_: str,
        *,
        plan: PlanRecord | None = None,
        step_id: str | None = None,
        actions: list[dict[str, Any]] | None = None,
        data: Mapping[str, Any] | None = None,
        user_id: str | None = None,
        actor: Mapping[str, Any] | None = None,
        trusted: bool = False,
    ) -> None:
        """Queue one event with the DESIGN section 4 fields.

        ``trusted`` says ``data`` holds only values Proctor built itself (strings, integers,
        booleans, fixed keys), so the canonical-shape check can be skipped for it.

        The ``data`` of an event about a plan with masked params passes through the plan's
        redaction first (``proctor.app.redaction``): a result, error or reason never carries
        a masked value into the log.
        """
        if plan is not None and self._redact is not None and data:
            redaction = self._redaction(plan)
            if redaction is not None:
                data = redaction.apply(data, step_id)
        ids = current_ids()
        body: dict[str, Any] = {
            "event_id": os.urandom(16).hex(),
            "type": type_,
            "timestamp": self._clock.now().isoformat(),
            "plan_id": plan.plan_id if plan else None,
            "step_id": step_id,
            "trace_id": ids[0] if ids else None,
            "span_id": ids[1] if ids else None,
            "actions_attempted": actions or [],
            "data": dict(data) if data else {},
        }
        if plan is not None:
            actor_v, prompt_hash, summary, digest, prompt = self._plan_parts(plan)
            body["actor"] = dict(actor_v)
            body["user_id"] = user_id or plan.on_behalf_of
            body["prompt_hash"] = prompt_hash
            if self.store_prompt:
                body["prompt"] = prompt
            body["plan"] = {"digest": digest, "summary": summary}
            body["policy_version"] = plan.policy_version
        else:
            body["actor"] = dict(actor) if actor else None
            body["user_id"] = user_id
            body["prompt_hash"] = None
            body["plan"] = None
            body["policy_version"] = None
        self._bodies.append(body)
        # Everything but ``data`` (and a rejected plan's actor) is built here from strings,
        # ints and validated ids, so only those need the canonical-shape check.
        self._fast.append(
            (trusted or fast_path_ok(body["data"]))
            and (plan is not None or fast_path_ok(body["actor"]))
        )

    def _redaction(self, plan: PlanRecord) -> Redaction | None:
        """The plan's redaction (cached: a plan's params never change)."""
        try:
            return self._redactions[plan.plan_id]
        except KeyError:
            assert self._redact is not None  # only called when set
            found = self._redactions[plan.plan_id] = self._redact(plan)
            return found

    def _plan_parts(self, plan: PlanRecord) -> tuple[dict[str, Any], str, str, str, str]:
        """Actor, prompt hash, summary, logged digest and intent of a plan (cached).

        For a plan with masked params the digest and the prompt hash are keyed
        (``hmac-sha256:`` under the instance's payload key) and the intent is redacted: a
        plain SHA-256 of the manifest, whose other params are mostly in the log, or of an
        intent that quotes a masked value, would let anyone holding the log test guesses of
        a short masked value.
        """
        cached = self._parts.get(plan.plan_id)
        if cached is None:
            m = plan.manifest
            a = m.get("actor", {})
            actor = {
                "type": a.get("type"),
                "name": a.get("name"),
                "model_version": a.get("model_version"),
                "agent_id": a.get("agent_id"),
            }
            intent = m.get("intent", "")
            redaction = self._redaction(plan) if self._redact is not None else None
            if redaction is None or self._keyed is None:
                prompt_hash = "sha256:" + hashlib.sha256(intent.encode()).hexdigest()
                digest = plan.digest
            else:
                prompt_hash = self._keyed({"intent": intent})
                digest = self._keyed({"digest": plan.digest})
                intent = redaction.text(intent)
            cached = (actor, prompt_hash, _summary(plan), digest, intent)
            self._parts[plan.plan_id] = cached
        return cached

    def flush(self) -> list[EventRow]:
        """Seal the queued events against the head and append them; return the rows."""
        if not self._bodies:
            return []
        head = self._tx.audit_head()
        key_id = self._signer.key_id
        # The usual append pays two comparisons: this process wrote the head (same hash),
        # with this key. Otherwise the head's key is read from its bytes (under 1 µs).
        head_key = self._log.head_key(head) if self._log is not None else head.key_id
        if head_key != key_id and head.size:
            self._record_key_change(key_id, head_key)
        seq, prev = head.size, head.last_hash
        rows = []
        for body, fast in zip(self._bodies, self._fast, strict=True):
            row = seal(body, seq=seq, prev_hash=prev, signer=self._signer, fast=fast)
            rows.append(row)
            seq, prev = seq + 1, row.hash
        self._tx.append_events(rows)
        if self._log is not None:
            # Same transaction: the Merkle leaves and any checkpoint commit with the events.
            self._log.on_append(self._tx, rows, head, key_id=key_id)
        for listener in self._listeners:
            listener.on_events(self._tx, rows)
        self._bodies.clear()
        self._fast.clear()
        return rows

    def _record_key_change(self, key_id: str, previous: str | None) -> None:
        """Put a ``keys.rotated`` event first, unless the log or this journal records ``key_id``.

        Called with the log's lock held (``audit_head``), when this transaction signs with a
        key other than the last event's: the first event of a new key, after a rotation that
        did not record itself (its process was killed between writing the keyring and
        committing the event), or a process still on the previous key for the second it
        takes to reload the keyring (a key the log names already: nothing is added).
        """
        if any(
            b["type"] == E.KEYS_ROTATED and b["data"].get("key_id") == key_id for b in self._bodies
        ):
            return  # ``record_rotation``'s own event
        if rotation_recorded(self._tx, key_id):
            return
        first = self._bodies[0]["timestamp"]
        self.emit(
            E.KEYS_ROTATED,
            data={"key_id": key_id, "previous": previous, "on_first_use": True},
            actor=_SYSTEM,
        )
        body = self._bodies.pop()
        # Dated as the events it precedes (all stamped after the journal took its key).
        body["timestamp"] = first
        self._bodies.insert(0, body)
        self._fast.insert(0, self._fast.pop())


def rotation_recorded(tx: Transaction, key_id: str) -> bool:
    """Whether a ``keys.rotated`` event of the log names ``key_id`` (new key or previous).

    Reads the log's plan-less ``keys.rotated`` events: only when a writer's key is not the
    head's, which happens around a rotation. Named as ``previous``, the key signed events
    before a recorded rotation (a process that has not reloaded the keyring yet).
    """
    for row in tx.instance_events(E.KEYS_ROTATED):
        try:
            data = orjson.loads(row.body).get("data")
        except (orjson.JSONDecodeError, AttributeError):
            continue  # not an event Proctor wrote; verification reports it
        if isinstance(data, dict) and key_id in (data.get("key_id"), data.get("previous")):
            return True
    return False


def record_rotation(
    store: Store,
    journal: Callable[[Transaction], Journal],
    *,
    key_id: str,
    previous: str | None,
    by: str | None = None,
    scheduled: bool = False,
) -> bool:
    """Append ``keys.rotated`` for a new key unless the log records it already.

    The rotation's own record, written after the keyring (which has no log). Another process
    may have signed with the new key in between and recorded it (``Journal.flush``): then
    nothing is added. ``by`` is the operator who rotated (``user_id`` and the actor, as
    other operator actions record it); without it the actor is the system.

    Returns:
        True if the event was appended, False if the log already named the key.
    """
    with store.transaction() as tx:
        tx.audit_head()  # the log's lock first: the look-up and the append are one step
        if rotation_recorded(tx, key_id):
            return False
        data: dict[str, Any] = {"key_id": key_id, "previous": previous}
        if scheduled:
            data["scheduled"] = True
        if by is not None:
            data["by"] = by
        j = journal(tx)
        actor = {"type": "human", "name": by} if by is not None else _SYSTEM
        j.emit(E.KEYS_ROTATED, data=data, user_id=by, actor=actor)
        j.flush()
    return True


def _summary(plan: PlanRecord) -> str:
    steps = plan.steps
    names = ", ".join(s.action for s in steps[:5])
    more = f" (+{len(steps) - 5} more)" if len(steps) > 5 else ""
    return f"{len(steps)} step(s): {names}{more}"
