"""Sealing audit events (chain + signature) and verifying a sequence of them.

An event is a JSON object (DESIGN section 4). Sealing adds ``seq`` (its index in the log),
``prev_hash`` (the hash of the previous event's canonical bytes, or ``GENESIS``), ``key_id``,
and ``signature``: Ed25519 over the RFC 8785 canonical form of the event *without* its
``signature`` member. The canonical form *with* the signature is the event's leaf: the bytes
stored, exported, hashed into the chain and into the Merkle tree.

Verification walks the events in storage order and reports the first bad index and why:

* ``deleted`` — the event at this position carries a later ``seq`` and the expected one is
  nowhere after it (a gap);
* ``reordered`` — the expected ``seq`` does appear, but later;
* ``inserted`` — the event carries a ``seq`` already seen (a copy or a forged extra);
* ``unknown_key`` — its ``key_id`` is not a known key (or it was signed outside that key's
  validity);
* ``modified`` — its bytes no longer hash to what the chain commits to (the next event's
  ``prev_hash``, or the stored hash for the last one), or are not canonical, or its
  ``timestamp`` is not an RFC 3339 time with an offset;
* ``bad_signature`` — its bytes are the ones the chain commits to, but the signature does not
  verify: it was written by someone without the key, or with the wrong one.

Each event is checked on its own against its key: that timestamps never go backwards across
events (``timestamp_regression``), and that a change of signing key is recorded by a
``keys.rotated`` event (``unrecorded_rotation``), are checked by
``proctor.audit.verify.verify_log``.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import nacl.exceptions
import nacl.signing
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec as ec_keys

from proctor.core.canonical import canonical, fast_path_ok
from proctor.core.ports import EventRow, Signer
from proctor.errors import InvalidRequestError

__all__ = ["GENESIS", "UNSIGNED", "VerifyReport", "pinned", "seal", "verify_events"]

GENESIS = "sha256:" + "0" * 64
"""``prev_hash`` of the first event."""

UNSIGNED = "unsigned"
"""``key_id`` of the events of a log written without signatures (an in-memory instance made
with ``audit_signatures=False``): their ``signature`` is the empty string. Only a keyring that
lists this id (that instance's own) accepts them; any other verifier reports ``unknown_key``.
"""


def pinned(signer: Signer) -> Signer:
    """Return a signer fixed on ``signer``'s current key, for one signature.

    A signer that follows rotations (``KeyringSigner``) may switch keys between reading
    ``key_id`` and ``sign()``: the event would name one key and carry another's signature,
    a permanent ``bad_signature``. Such a signer offers ``snapshot()``, the signer of its
    current key; others (a ``LocalSigner``, a KMS key) never switch and are used as they are.
    """
    snapshot = getattr(signer, "snapshot", None)
    return signer if snapshot is None else snapshot()


def seal(
    body: dict[str, Any], *, seq: int, prev_hash: str, signer: Signer, fast: bool | None = None
) -> EventRow:
    """Chain and sign one event; return the row to store.

    ``body`` is completed in place with ``seq``, ``prev_hash``, ``key_id`` and ``signature``.
    ``fast`` is the caller's knowledge of ``fast_path_ok(body)`` (None: check here).
    """
    body["seq"] = seq
    body["prev_hash"] = prev_hash
    signer = pinned(signer)  # the key named is the key that signs, across a rotation
    body["key_id"] = signer.key_id
    # One shape check serves both encodings: the signature adds only a base64 string.
    if fast is None:
        fast = fast_path_ok(body)
    unsigned = canonical(body, fast=fast)
    signature = base64.b64encode(signer.sign(unsigned)).decode()
    body["signature"] = signature
    leaf = (_with_signature(unsigned, signature) if fast else None) or canonical(body, fast=fast)
    return EventRow(
        seq=seq,
        type=body["type"],
        plan_id=body.get("plan_id"),
        step_id=body.get("step_id"),
        timestamp=body["timestamp"],
        body=leaf,
        hash="sha256:" + hashlib.sha256(leaf).hexdigest(),
    )


def _with_signature(unsigned: bytes, signature: str) -> bytes | None:
    """Insert ``"signature"`` into canonical bytes where RFC 8785 key order puts it.

    Top-level keys sort ``…, "seq", "signature", "span_id", …``; every event has ``span_id``.
    The last ``,"span_id":`` in the bytes is the top-level one: nested objects (``actor``,
    ``data``, ``plan``) sort before ``seq``, and an unescaped quote cannot occur inside a JSON
    string. Saves serialising the event a second time; ``tests/unit/audit/test_events.py``
    checks the result equals ``canonical(body)``.
    """
    at = unsigned.rfind(b',"span_id":')
    if at < 0:  # not an event shape this shortcut knows: the caller serialises properly
        return None
    return b'%s,"signature":"%s"%s' % (unsigned[:at], signature.encode(), unsigned[at:])


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyReport:
    """The result of verifying a log."""

    ok: bool
    events: int
    first_bad_seq: int | None = None
    problem: str | None = None
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON form printed by ``proctor audit verify --json``."""
        out: dict[str, Any] = {
            "ok": self.ok,
            "events": self.events,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
        }
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A public key and the period in which it may sign."""

    public_key: bytes
    not_before: datetime | None = None
    not_after: datetime | None = None


def _bad(i: int, n: int, problem: str, detail: str) -> VerifyReport:
    return VerifyReport(ok=False, events=n, first_bad_seq=i, problem=problem, detail=detail)


def verify_events(
    rows: Sequence[EventRow],
    keys: Mapping[str, KeyInfo],
    *,
    check_signatures: bool = True,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Verify chain, canonical form and signatures of ``rows`` (in storage order).

    Args:
        rows: The events as stored, in the order the store returns them.
        keys: Public keys by key id, with validity periods.
        check_signatures: Verify every Ed25519 signature (full mode); when false only the
            chain and canonical form are checked (fast mode).
        progress: Called with the number of events checked so far, every 1,000 events.

    Returns:
        ``ok`` with the count, or the first bad index and the kind of problem.
    """
    n = len(rows)
    seqs: list[int | None] = []
    bodies: list[dict[str, Any] | None] = []
    for row in rows:
        try:
            b = orjson.loads(row.body)
            seqs.append(b["seq"] if isinstance(b, dict) and type(b.get("seq")) is int else None)
            bodies.append(b if isinstance(b, dict) else None)
        except orjson.JSONDecodeError:
            seqs.append(None)
            bodies.append(None)
    seen: set[int] = set()
    verifiers: dict[str, Any] = {}
    prev_hash = GENESIS
    for i, (row, body) in enumerate(zip(rows, bodies, strict=True)):
        if progress is not None and i % 1000 == 0:
            progress(i)
        leaf_hash = "sha256:" + hashlib.sha256(row.body).hexdigest()
        # What the chain commits to for this position: the next event's prev_hash, or the
        # stored hash for the last event.
        committed = _committed_hash(rows, bodies, seqs, i)
        if body is None or seqs[i] is None:
            return _bad(i, n, "modified", "the event is not a JSON object with an integer seq")
        s = seqs[i]
        assert s is not None
        if s != i:
            if s in seen or s < i:
                return _bad(i, n, "inserted", f"seq {s} appears again at position {i}")
            if any(p > i for p in _positions(seqs, i)):
                return _bad(i, n, "reordered", f"expected seq {i}, found {s}; seq {i} comes later")
            return _bad(i, n, "deleted", f"expected seq {i}, found {s}: events are missing")
        seen.add(s)
        if _canonical_or_none(body) != row.body:
            return _bad(i, n, "modified", "the stored bytes are not the event's canonical form")
        if leaf_hash != committed:
            return _bad(i, n, "modified", "the event's hash differs from what the chain commits")
        if body.get("prev_hash") != prev_hash:
            return _bad(i, n, "modified", "prev_hash does not match the previous event")
        key_id = body.get("key_id")
        info = keys.get(key_id) if isinstance(key_id, str) else None
        if info is None:
            return _bad(i, n, "unknown_key", f"key {key_id!r} is not in the keyring")
        at = _aware(body.get("timestamp"))
        if at is None:
            # Whatever the key: an event that cannot be placed in time can be checked
            # neither against a validity period nor against the log's time order.
            return _bad(
                i,
                n,
                "modified",
                f"timestamp {body.get('timestamp')!r} is not an RFC 3339 time with an offset",
            )
        if not _within(info, at):
            return _bad(
                i, n, "unknown_key", f"key {key_id} was not valid at {body.get('timestamp')}"
            )
        if check_signatures and not _signature_ok(body, info, str(key_id), verifiers):
            return _bad(i, n, "bad_signature", f"the signature does not verify with key {key_id}")
        prev_hash = leaf_hash
    if progress is not None:
        progress(n)
    return VerifyReport(ok=True, events=n)


def _positions(seqs: list[int | None], target: int) -> Iterable[int]:
    return (p for p, s in enumerate(seqs) if s == target)


def _committed_hash(
    rows: Sequence[EventRow], bodies: list[dict[str, Any] | None], seqs: list[int | None], i: int
) -> str:
    # The next event commits to this one only if it really is the next one (seq i + 1);
    # after a deletion or reordering, fall back to the hash stored beside the event.
    # It is trusted as a witness only if it is itself unmodified (its bytes still hash to
    # the hash stored beside it); otherwise a change to *it* would be blamed on this event.
    if i + 1 < len(rows) and seqs[i + 1] == i + 1:
        nxt = bodies[i + 1]
        nxt_row = rows[i + 1]
        intact = "sha256:" + hashlib.sha256(nxt_row.body).hexdigest() == nxt_row.hash
        if intact and nxt is not None and isinstance(nxt.get("prev_hash"), str):
            return str(nxt["prev_hash"])
    return rows[i].hash


def _canonical_or_none(body: dict[str, Any]) -> bytes | None:
    """Return ``canonical(body)``, or None for a value JCS cannot write (a tampered event)."""
    try:
        return canonical(body)
    except InvalidRequestError:  # e.g. an integer beyond ±2^53: not an event Proctor wrote
        return None


def _aware(ts: Any) -> datetime | None:
    """Return ``ts`` as a timezone-aware time, or None if it is not one."""
    if not isinstance(ts, str):
        return None
    try:
        at = datetime.fromisoformat(ts)
    except ValueError:
        return None
    # Proctor writes UTC with an offset; a naive time cannot be placed in a validity period
    # (and comparing it with an aware one raises TypeError).
    return at if at.tzinfo is not None else None


def _within(info: KeyInfo, at: datetime | None) -> bool:
    """Whether a key may sign at ``at`` (an aware time, or None when it has none)."""
    if info.not_before is None and info.not_after is None:
        return True
    if at is None:
        return False
    if info.not_before is not None and at < info.not_before:
        return False
    return not (info.not_after is not None and at > info.not_after)


def _signature_ok(body: dict[str, Any], info: KeyInfo, key_id: str, cache: dict[str, Any]) -> bool:
    sig_b64 = body.get("signature")
    if not isinstance(sig_b64, str):
        return False
    if key_id == UNSIGNED:  # accepted only where the keyring lists it (see UNSIGNED)
        return sig_b64 == ""
    try:
        sig = base64.b64decode(sig_b64, validate=True)
    except ValueError:
        return False
    message = _canonical_or_none({k: v for k, v in body.items() if k != "signature"})
    if message is None:
        return False
    try:
        if key_id.startswith("ecdsa-p256:"):
            # Events signed in a KMS that offers only ECDSA (see docs/audit-signers.md):
            # the key is a DER SubjectPublicKeyInfo, the signature DER-encoded.
            ec = cache.get(key_id)
            if ec is None:
                ec = cache[key_id] = serialization.load_der_public_key(info.public_key)
            if not isinstance(ec, ec_keys.EllipticCurvePublicKey):
                return False
            ec.verify(sig, message, ec_keys.ECDSA(hashes.SHA256()))
            return True
        vk = cache.get(key_id)
        if vk is None:
            vk = cache[key_id] = nacl.signing.VerifyKey(info.public_key)
        vk.verify(message, sig)
    except (nacl.exceptions.BadSignatureError, InvalidSignature, ValueError, TypeError):
        # A key of the wrong length or type is a bad signature, not a crash.
        return False
    return True
