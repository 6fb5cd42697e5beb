"""One verifier for the audit log, live or exported: event chain, Merkle tree, checkpoints.

``verify_log`` checks a sequence of events (``EventRow`` from a store, or the raw leaf bytes of
an export) against signed checkpoints and public keys, and reports the *first* problem in log
order with its index (``VerifyReport.first_bad_seq``) and kind.

Full mode (``full=True``) checks, for every event: it is a JSON object in RFC 8785 canonical
form with ``seq`` equal to its position; ``prev_hash`` is the SHA-256 of the previous event
(``GENESIS`` for the first) and its own hash is what the next event (or, for the last event of
a store, the stored hash) commits to; its ``timestamp`` is an RFC 3339 time with an offset;
its ``key_id`` is a known key valid at that time; its signature verifies (Ed25519; ECDSA
P-256 for ``ecdsa-p256:`` key ids). The verdict on the events is that of
``proctor.audit.events.verify_events``, which this module falls back to for the exact kind
when anything is off, refined as said at the end. On two or more cores and from 20,000 events
on, events are checked in forked worker processes (``workers``) while this process checks the
chain and builds the tree; a process running other threads (a server) checks them itself.

Full mode also checks that time never goes back further than ``max_clock_skew`` (default
``MAX_CLOCK_SKEW``, 5 minutes): the first event whose timestamp is earlier than the latest
timestamp of the events before it by more than that is ``timestamp_regression`` at its index.
Without it, a retired key (stolen before its private key file was deleted) and write access
to the store could append events dated inside the key's validity period, which verify.

Fast mode (``full=False``) parses no JSON and verifies no per-event signature. For every
event it finds, with ``bytes.rfind`` on the stored bytes, the last ``"seq":``, the last
``"prev_hash":"sha256:`` before it and the last ``"key_id":"`` before that, and checks:

* ``seq`` is the event's position, written in decimal and followed by a comma;
* ``prev_hash`` is the SHA-256 of the previous event's bytes (``GENESIS`` for the first);
  for store rows, also that each event's bytes hash to the hash stored beside them;
* ``key_id`` names a key of ``keys`` (validity periods are not checked).

It does not check the canonical form, JSON well-formedness, key validity periods, the time
order or signatures. On any anomaly it falls back to ``verify_events(check_signatures=False)``
for the exact kind and index. Events covered by a signed checkpoint are nonetheless
authenticated in fast mode: the Merkle tree is rebuilt from their exact bytes and must have
the checkpoint's root, and the checkpoint's signature is verified. Events after the last
checkpoint are only chained, not authenticated. When a signed checkpoint disagrees with
events that chain correctly, fast mode re-runs in full mode to locate the first bad event.

Both modes then rebuild the RFC 9162 tree from the leaf hashes and check every checkpoint
note (C2SP signed note, key name = ``origin``, any key of ``keys``):

* ``bad_checkpoint`` — the note is malformed, is a checkpoint of another origin, carries an
  invalid signature by a known key, or is validly signed but its root is not the root of the
  events present while no later checkpoint agrees with them (the log signed a root its
  events do not have). ``first_bad_seq`` is ``size - 1`` (0 for size 0): the last event the
  checkpoint covers, by the size the note states (``None`` when no size can be read).
* ``unknown_key`` — no signature on the note is by a known key (at ``size - 1``).
* ``truncated`` — a validly signed checkpoint covers more events than are present;
  ``first_bad_seq`` is the number of events present (the first missing index).
* ``inconsistent_checkpoints`` — two validly signed checkpoints cannot both be true: the
  same size with different roots, or an earlier one that is not a prefix of a later one the
  events agree with (checked with the tree's consistency proof and ``verify_consistency``).
  ``first_bad_seq`` is ``size - 1`` of the earlier checkpoint.

For store rows (``EventRow``), both modes also check the columns the store keeps beside the
bytes for its per-plan views (``type``, ``plan_id``, ``step_id``, ``timestamp``): nothing
signs them, so one that differs from the event's member is ``modified`` at that index (after
any problem with the bytes at the same index). An export has no columns.

Both modes check that every change of signing key is recorded: the log's first key needs no
record, and any other key must be named by a ``keys.rotated`` event of the log
(``data.key_id``, or ``data.previous``); otherwise its first event is
``unrecorded_rotation``. The scan notes where the key id it reads for each event changes (one
comparison per event); when it changes, the ``type`` of every event is looked at, parsing the
``keys.rotated`` ones (``_rotation_problem``). Every log verified starts at its
first event (exports and archives hold a prefix), so nothing before the events is assumed.

Event problems are those of ``verify_events`` (``modified``, ``deleted``, ``inserted``,
``reordered``, ``unknown_key``, ``bad_signature``), ``timestamp_regression`` and
``unrecorded_rotation``, with one refinement: an event whose signature fails and whose
position is covered by a signed checkpoint that disagrees with the events (the smallest
checkpoint covering it) is reported
``modified`` — the log committed to other bytes. ``bad_signature`` remains for events no such
checkpoint covers, such as a forged event appended after the last checkpoint. When an event
problem and a checkpoint problem have the same index, the event problem is reported (and of
two at one index, the event's own before ``timestamp_regression``, before
``unrecorded_rotation``).
"""

from __future__ import annotations

import base64
import hashlib
import math
import multiprocessing
import os
import re
import threading
from array import array
from binascii import hexlify
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeAlias

import nacl.exceptions
import nacl.signing
import orjson

from proctor.audit.events import (
    GENESIS,
    UNSIGNED,
    KeyInfo,
    VerifyReport,
    _aware,
    _canonical_or_none,
    _signature_ok,
    _within,
    verify_events,
)
from proctor.audit.merkle import MerkleTree, verify_consistency
from proctor.audit.note import ED25519_KEY_SIZE, Checkpoint, ed25519_key_id, open_note
from proctor.core.canonical import canonical
from proctor.core.ports import EventRow
from proctor.errors import AuditIntegrityError, InvalidRequestError

__all__ = ["MAX_CLOCK_SKEW", "PARALLEL_THRESHOLD", "verify_log"]

PARALLEL_THRESHOLD = 20_000
"""Full verification of fewer events stays in this process (a pool costs ~0.1-0.3 s)."""

MAX_CLOCK_SKEW = timedelta(minutes=5)
"""How far an event's timestamp may lie before the latest one logged before it (full mode).

Legitimately, a little: each process stamps an event when it builds it, from its own clock,
and gets its ``seq`` later, when its transaction takes the log's lock (``Journal.flush``). So
an event can follow one stamped after it by the time its transaction waited for that lock,
plus, with several PostgreSQL replicas, the difference between their clocks. A regression
beyond the allowance is reported, never repaired (the log is append-only): every later
verification would fail too. Five minutes is far above lock waits and NTP-synchronised
clocks, and equal to ``proctor.audit.keys.ROTATION_GRACE``: a retired key, valid until five
minutes after its rotation, can add nothing to the end of a log whose latest event is more
than ten minutes after that rotation.
"""

_CHUNK = 8192  # events per progress report of the fast scan, and most per worker task.
_STEP = 1000  # events per progress report of a full check in this process.
_SEQ = b'"seq":'
_PREV = b'"prev_hash":"sha256:'
_KEY = b'"key_id":"'
_SIG_PREFIX = "\N{EM DASH} "
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_NAN = math.nan  # the time of an event that has none: compares false with every time
_sha256 = hashlib.sha256

# What ``check_chunk`` returns: (first anomaly, first bad signature, POSIX times).
_Checked: TypeAlias = "tuple[int | None, int | None, array[float]]"
# Where the signing key changes: (index, key id and its closing quote), the first event's too.
_Changes: TypeAlias = "list[tuple[int, bytes]]"


# ---------------------------------------------------------------------------- problems


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding, ordered by log position (``index``; ``None`` sorts last) then ``rank``.

    ``rank`` breaks ties at one index: 0 for event problems, 1 for checkpoint problems, 2
    for bundle-level findings of ``verify_export`` (a missing file).
    """

    index: int | None
    rank: int
    kind: str
    detail: str

    def key(self) -> tuple[float, int]:
        """Return the sort key: log position first, then rank."""
        return (float("inf") if self.index is None else self.index, self.rank)


def _first(problems: Iterable[Problem | None]) -> Problem | None:
    found = [p for p in problems if p is not None]
    return min(found, key=Problem.key) if found else None


# ---------------------------------------------------------------------------- tree


class _Levels:
    """A read-mostly ``NodeStore`` over perfect-subtree levels built in bulk."""

    __slots__ = ("_levels",)

    def __init__(self, levels: list[list[bytes]]) -> None:
        self._levels = levels

    def get(self, level: int, index: int) -> bytes:
        return self._levels[level][index]

    def append(self, level: int, node: bytes) -> None:
        if level == len(self._levels):
            self._levels.append([])
        self._levels[level].append(node)

    def count(self, level: int) -> int:
        return len(self._levels[level]) if level < len(self._levels) else 0


def build_tree(leaves: list[bytes]) -> MerkleTree:
    """Return the RFC 9162 tree over ``leaves`` (leaf hashes), built level by level.

    Level ``k + 1`` holds the node hash of each pair of level ``k``; an odd last node waits
    for a later leaf, exactly as ``MerkleTree.append`` leaves it. One list comprehension per
    level instead of one Python call per leaf: about twice as fast.
    """
    levels = [leaves]
    cur = leaves
    sha = _sha256
    while len(cur) > 1:
        it = iter(cur)
        cur = [sha(b"\x01" + left + right).digest() for left, right in zip(it, it, strict=False)]
        levels.append(cur)
    return MerkleTree(_Levels(levels))


# ---------------------------------------------------------------------------- fast scan


def _scan(
    bodies: Sequence[bytes],
    hashes: Sequence[str] | None,
    keys: Mapping[str, KeyInfo],
    progress: Callable[[int], None] | None,
) -> tuple[list[bytes], int | None, _Changes]:
    """Chain-check ``bodies`` without parsing JSON.

    Returns (leaf hashes, first anomaly, key changes): the key changes are each index whose
    ``key_id`` differs from the previous event's, with the key id read (``_chain``), up to
    the first anomaly.
    """
    quoted = {k.encode() + b'"' for k in keys}
    sha = _sha256
    leaves: list[bytes] = []
    anomaly: int | None = None
    changes: _Changes = []
    prev = GENESIS[7:].encode() + b'"'
    n = len(bodies)
    for start in range(0, n, _CHUNK):
        chunk = bodies[start : start + _CHUNK]
        leaves += [sha(b"\x00" + b).digest() for b in chunk]
        if anomaly is None:
            links = [hexlify(sha(b).digest()) + b'"' for b in chunk]
            anomaly = _chain(chunk, links, start, prev, quoted, changes)
            if anomaly is None and hashes is not None:
                for j, h in enumerate(hashes[start : start + _CHUNK]):
                    if h[7:].encode() + b'"' != links[j] or not h.startswith("sha256:"):
                        anomaly = start + j
                        break
            prev = links[-1]
        if progress is not None:
            progress(min(start + _CHUNK, n))
    return leaves, anomaly, changes


def _chain(
    chunk: Sequence[bytes],
    links: Sequence[bytes],
    start: int,
    prev: bytes,
    quoted: set[bytes],
    changes: _Changes,
) -> int | None:
    """Return the first position in ``chunk`` whose seq, prev_hash or key_id is off.

    ``links[j]`` is the hex SHA-256 of ``chunk[j]`` and a closing quote: what the next
    event's ``prev_hash`` must hold after ``sha256:``. ``quoted`` holds each known key id
    followed by a quote. Each change of key id (and the first event's) is appended to
    ``changes``: one comparison of the key already read, per event.
    """
    seqs = [b"%d," % i for i in range(start, start + len(chunk))]
    widths = {len(k) for k in quoted}
    width = widths.pop() if len(widths) == 1 else 0
    last = changes[-1][1] if changes else None
    for j, b in enumerate(chunk):
        p = b.rfind(_SEQ)
        q = b.rfind(_PREV, 0, p)
        if p < 0 or q < 0 or not b.startswith(seqs[j], p + 6) or not b.startswith(prev, q + 20):
            return start + j
        k = b.rfind(_KEY, 0, q) + 10
        kid = b[k : k + width] if width else b[k : b.find(b'"', k) + 1]
        if k < 10 or kid not in quoted:
            return start + j
        if kid != last:
            changes.append((start + j, kid))
            last = kid
        prev = links[j]
    return None


# ---------------------------------------------------------------------------- key changes

_ROTATED = b'"type":"keys.rotated"'


def _rotation_problem(bodies: Sequence[bytes], changes: _Changes) -> Problem | None:
    """Return the first change of signing key that no ``keys.rotated`` event records.

    The log's first key needs no record. Any other key must be named by a ``keys.rotated``
    event of the log (``data.key_id``, or ``data.previous``: the key a recorded rotation
    replaced). Proctor writes one before the first event of a new key, in that event's
    transaction if the rotation did not (``proctor.app.journal``), so a change no event
    records means the log does not say its key changed: a rotation lost (its process killed
    before its event committed, in a log written before that), or events signed by a key
    the log never announced. A key that signed before may sign again (a process that has
    not reloaded the keyring yet).

    NOTE(audit): a record anywhere in the log counts, not only one at or before the change.
    Before the rotation took the log's lock, another process could append with the new key
    just before the rotating process committed its event: such a log says its key changed,
    one event late, and reporting it would make ``verify`` fail on an intact log for ever.

    Only the ``type`` member of each event is looked at when the log changes key (the last
    ``"type":`` of canonical bytes, as in ``_column_problem``); a ``keys.rotated`` one is
    parsed.
    """
    if len(changes) < 2:
        return None
    known: set[bytes] = set()
    for body in bodies:
        if body.startswith(_ROTATED, body.rfind(b'"type":')):
            known.update(_named_keys(body))
    before = b""
    for index, kid in changes:
        if index and kid not in known:
            new, old = kid[:-1].decode(errors="replace"), before[:-1].decode(errors="replace")
            return Problem(
                index,
                0,
                "unrecorded_rotation",
                f"this event is signed by key {new}, the one before it by {old}, and no"
                f" keys.rotated event of the log records {new}",
            )
        known.add(kid)
        before = kid
    return None


def _named_keys(body: bytes) -> list[bytes]:
    """The key ids a ``keys.rotated`` event names, each followed by a quote (as ``_chain``)."""
    try:
        data = orjson.loads(body).get("data")
    except (orjson.JSONDecodeError, AttributeError):
        return []  # the event checks report it
    if not isinstance(data, dict):
        return []
    return [v.encode() + b'"' for k in ("key_id", "previous") if isinstance(v := data.get(k), str)]


# ---------------------------------------------------------------------------- row columns

# The columns a store keeps beside each event's bytes, for its per-plan views (``proctor
# show``, ``read_events(plan_id=...)``), and the event member each copies. Nothing signs the
# columns: rewritten, they would hide an event from its plan while the bytes still verify.
_COLUMNS = ("type", "plan_id", "step_id", "timestamp")


def _column_problem(rows: Sequence[EventRow]) -> Problem | None:
    """Return the first row whose columns differ from its event's members, as ``modified``.

    Fast path without parsing JSON: in an event's canonical bytes the members sort
    ``…, "plan", "plan_id", …, "step_id", "timestamp", "trace_id", "type", "user_id"``, and
    every member after ``plan_id`` is a scalar, so the *last* occurrence of each name is the
    top-level one (a quote cannot occur unescaped inside a string), and a string or null
    written there cannot be the prefix of another. When the bytes do not read as expected
    (a crafted or non-canonical event, another encoding of a string), the event is parsed
    and its members compared exactly.
    """
    dumps = orjson.dumps
    # A log has few types and step ids, and runs of events per plan: their expected bytes
    # are cached. Timestamps are ASCII, which JSON writes as is.
    types: dict[str, bytes] = {}
    steps: dict[str | None, bytes] = {}
    plan_id: str | None = None
    plan_bytes = b'"plan_id":null'
    for i, row in enumerate(rows):
        b = row.body
        t = types.get(row.type)
        if t is None:
            t = types[row.type] = b'"type":' + dumps(row.type)
        step = steps.get(row.step_id)
        if step is None:
            step = steps[row.step_id] = b'"step_id":' + dumps(row.step_id) + b',"timestamp":"'
        if row.plan_id != plan_id:
            plan_id, plan_bytes = row.plan_id, b'"plan_id":' + dumps(row.plan_id)
        at = b.rfind(b'"step_id":')
        end = at + len(step)
        if (
            b.startswith(step, at)
            and b.startswith(row.timestamp.encode() + b'"', end)
            and b.startswith(t, b.rfind(b'"type":', end))
            and b.startswith(plan_bytes, b.rfind(b'"plan_id":', 0, at))
        ):
            continue
        try:
            record = orjson.loads(b)
        except orjson.JSONDecodeError:
            continue  # not an event at all: the event checks report it
        if not isinstance(record, dict):
            continue
        for name in _COLUMNS:
            column, member = getattr(row, name), record.get(name)
            if column != member:
                return Problem(
                    i,
                    0,
                    "modified",
                    f"the row's {name} column is {column!r} but the signed event says {member!r}",
                )
    return None


# ---------------------------------------------------------------------------- time order


def _time_problem(
    times: Sequence[float], bodies: Sequence[bytes], skew: timedelta
) -> Problem | None:
    """Return the first event stamped more than ``skew`` before the latest event before it.

    A retired key still verifies inside its validity period; this is what stops it from
    adding events at the end of a log that has moved on (see ``MAX_CLOCK_SKEW``). ``times``
    come from the full check's workers, which parse every timestamp for the key validity
    anyway: here it costs one float comparison per event in order (two while time moves
    forward). An event without a time (NaN) compares false both ways and is reported by the
    event checks.
    """
    allowed = skew.total_seconds()
    latest, latest_at = -math.inf, -1
    floor = -math.inf  # latest - allowed: anything below went back too far
    for i, t in enumerate(times):
        if t >= latest:
            latest, latest_at, floor = t, i, t - allowed
        elif t < floor:
            ts, before = _timestamp_of(bodies[i]), _timestamp_of(bodies[latest_at])
            return Problem(
                i,
                0,
                "timestamp_regression",
                f"timestamp {ts} is {_seconds(latest - t)} s before {before} (seq"
                f" {latest_at}), more than the allowed clock skew of {_seconds(allowed)} s",
            )
    return None


def _timestamp_of(body: bytes) -> str:
    record = orjson.loads(body)  # it parsed in a worker already: it is a JSON object
    return str(record.get("timestamp"))


def _seconds(x: float) -> str:
    return f"{x:.6f}".rstrip("0").rstrip(".")


# ---------------------------------------------------------------------------- full checks


def _signed_message(body: bytes, record: Mapping[str, Any]) -> bytes:
    """Return the canonical form of ``record`` without ``signature``, from ``body``.

    ``body`` must be ``canonical(record)``. JCS sorts members, so dropping one member from
    the canonical bytes is the canonical form of the rest. Cut only when the member occurs
    exactly once; otherwise (a crafted event) serialise the rest.
    """
    member = b'"signature":' + orjson.dumps(record["signature"])
    if body.count(member) == 1:
        at = body.find(member)
        if body[at - 1 : at] == b",":
            return body[: at - 1] + body[at + len(member) :]
        if body[at + len(member) : at + len(member) + 1] == b",":
            return body[:at] + body[at + len(member) + 1 :]
    return canonical({k: v for k, v in record.items() if k != "signature"})


def _extracted(body: bytes) -> tuple[bytes, bytes, bytes]:
    """Return what ``_chain`` reads from ``body``: seq digits, prev_hash hex, key id."""
    p = body.rfind(_SEQ)
    e = body.find(b",", p + 6)
    if e < 0:
        e = body.find(b"}", p + 6)
    q = body.rfind(_PREV, 0, p)
    k = body.rfind(_KEY, 0, q)
    ke = body.find(b'"', k + 10)
    return body[p + 6 : e], body[q + 13 : q + 84], body[k + 10 : ke]


def check_chunk(start: int, bodies: Sequence[bytes], keys: Mapping[str, KeyInfo]) -> _Checked:
    """Check each event on its own (a worker task); return (anomaly, bad signature, times).

    Per event: a JSON object with an integer ``seq``; ``_chain`` would read the same ``seq``,
    ``prev_hash`` and ``key_id`` as the parsed object holds; canonical form; a timestamp with
    an offset; known key valid at it; Ed25519 signature. An anomaly is any failure; the
    bad-signature index is the first event whose signature cannot be verified, whatever else
    is wrong with it. Chain links between events, and their time order, are checked by the
    caller: ``times`` holds each event's POSIX time (NaN where it has none), up to and
    including the first bad signature.
    """
    anomaly: int | None = None
    bad_sig: int | None = None
    cache: dict[str, Any] = {}
    times = array("d")
    for j, body in enumerate(bodies):
        ok, sig_ok, stamp = _check_one(body, keys, cache)
        times.append(stamp)
        if not ok and anomaly is None:
            anomaly = start + j
        if not sig_ok:
            bad_sig = start + j
            break  # any later failure does not matter: this one comes first.
    return anomaly, bad_sig, times


def _check_one(
    body: bytes, keys: Mapping[str, KeyInfo], cache: dict[str, Any]
) -> tuple[bool, bool, float]:
    """Return (everything fine, signature fine, POSIX time or NaN) for one event."""
    try:
        record = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False, False, _NAN
    if not isinstance(record, dict):
        return False, False, _NAN
    seq, prev, key_id = record.get("seq"), record.get("prev_hash"), record.get("key_id")
    if not isinstance(key_id, str) or (info := keys.get(key_id)) is None:
        return False, False, _NAN
    ok = type(seq) is int and isinstance(prev, str)
    if ok:
        s, ph, kid = _extracted(body)
        ok = s == str(seq).encode() and ph == str(prev).encode() and kid == key_id.encode()
    # Parsed once, for the key's validity here and for the log's time order in the caller.
    at = _aware(record.get("timestamp"))
    stamp = at.timestamp() if at is not None else _NAN
    ok = ok and at is not None and _canonical_or_none(record) == body and _within(info, at)
    sig_b64 = record.get("signature")
    if not isinstance(sig_b64, str):
        return False, False, stamp
    if key_id.startswith("ecdsa-p256:") or key_id == UNSIGNED:
        # ECDSA-signed events (a KMS without EdDSA), or an unsigned log's (its own keyring
        # lists UNSIGNED): exactly verify_events' check.
        return ok, _signature_ok(record, info, key_id, cache), stamp
    try:
        sig = base64.b64decode(sig_b64, validate=True)
        vk = cache.get(key_id)
        if vk is None:
            vk = cache[key_id] = nacl.signing.VerifyKey(info.public_key)
        vk.verify(_signed_message(body, record), sig)
    except (
        nacl.exceptions.BadSignatureError,
        ValueError,
        TypeError,
        orjson.JSONEncodeError,
        InvalidRequestError,  # ``canonical`` of a value JCS cannot write (a tampered event)
    ):
        return False, False, stamp
    return ok, True, stamp


def _can_fork() -> bool:
    """Whether worker processes can be forked safely here.

    Only ``fork`` is used: ``spawn`` and ``forkserver`` re-run the application's main module
    in every worker. Forking a process that runs other threads can leave a child stuck on a
    lock one of them held, so a threaded process (a server) checks events in-process.
    """
    return "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1


def _full(
    bodies: Sequence[bytes],
    hashes: Sequence[str] | None,
    keys: Mapping[str, KeyInfo],
    progress: Callable[[int], None] | None,
    workers: int,
) -> tuple[list[bytes], int | None, int | None, array[float], _Changes]:
    """Return (leaf hashes, first anomaly, first bad signature, times, key changes).

    ``times`` are the events' POSIX times in log order, up to the first bad signature.
    """
    n = len(bodies)
    results: list[_Checked] = []
    leaves: list[bytes] | None = None
    anomaly: int | None = None
    changes: _Changes = []
    if workers > 1 and n and _can_fork():
        try:
            leaves, anomaly, results, changes = _in_pool(bodies, hashes, keys, progress, workers)
        except (OSError, BrokenProcessPool):
            # No processes here (a sandbox, a broken worker): check in this process.
            leaves, results = None, []
    if leaves is None:
        leaves, anomaly, changes = _scan(bodies, hashes, keys, None)
        for s in range(0, n, _STEP):
            results.append(check_chunk(s, bodies[s : s + _STEP], keys))
            if progress is not None:
                progress(min(s + _STEP, n))
    anomalies = [a for a, _, _ in results if a is not None]
    bad_sigs = [b for _, b, _ in results if b is not None]
    if anomaly is not None:
        anomalies.append(anomaly)
    times = array("d")
    for _, bad, chunk_times in results:
        times += chunk_times
        if bad is not None:
            break  # a task stops at its first bad signature: later times would be misplaced
    return leaves, min(anomalies, default=None), min(bad_sigs, default=None), times, changes


def _in_pool(
    bodies: Sequence[bytes],
    hashes: Sequence[str] | None,
    keys: Mapping[str, KeyInfo],
    progress: Callable[[int], None] | None,
    workers: int,
) -> tuple[list[bytes], int | None, list[_Checked], _Changes]:
    n = len(bodies)
    # Several tasks per worker balance the load; each reports its own first failures, and
    # the smallest index over all tasks is the first in the log.
    step = max(1, min(_CHUNK, -(-n // (workers * 4))))
    results: list[_Checked] = []
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("fork")
    ) as pool:
        plain = dict(keys)
        futures: list[Future[_Checked]] = [
            pool.submit(check_chunk, s, list(bodies[s : s + step]), plain)
            for s in range(0, n, step)
        ]
        # Meanwhile, this process checks the chain and hashes the leaves.
        leaves, anomaly, changes = _scan(bodies, hashes, keys, None)
        for i, fut in enumerate(futures):
            results.append(fut.result())
            if progress is not None:
                progress(min((i + 1) * step, n))
    return leaves, anomaly, results, changes


def _rows(bodies: Sequence[bytes], hashes: Sequence[str] | None) -> list[EventRow]:
    return [
        EventRow(
            seq=i,
            type="",
            plan_id=None,
            step_id=None,
            timestamp="",
            body=b,
            hash=hashes[i] if hashes is not None else "sha256:" + _sha256(b).hexdigest(),
        )
        for i, b in enumerate(bodies)
    ]


def _event_problem(
    bodies: Sequence[bytes],
    hashes: Sequence[str] | None,
    rows: Sequence[EventRow] | None,
    keys: Mapping[str, KeyInfo],
    bad_sig: int | None,
) -> Problem | None:
    """Classify exactly as ``verify_events``: structure first, then the first bad signature."""
    rows = rows if rows is not None else _rows(bodies, hashes)
    report = verify_events(rows, keys, check_signatures=False)
    first = report.first_bad_seq
    if not report.ok and first is not None and (bad_sig is None or first <= bad_sig):
        return Problem(report.first_bad_seq, 0, str(report.problem), str(report.detail))
    if bad_sig is not None:
        key_id = orjson.loads(rows[bad_sig].body).get("key_id")
        return Problem(
            bad_sig, 0, "bad_signature", f"the signature does not verify with key {key_id}"
        )
    return None


# ---------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True, slots=True)
class _Trusted:
    size: int
    root: bytes


def _lenient(note: str) -> tuple[str | None, int | None, list[tuple[str, bytes]] | None]:
    """Read a note without verifying it: (origin line, size, signers); None where unreadable."""
    split = note.rfind("\n\n")
    text = note[: split + 1] if split >= 0 else note
    lines = text.split("\n")
    origin = lines[0] if lines and lines[0] else None
    size = int(lines[1]) if len(lines) > 1 and _DECIMAL.fullmatch(lines[1]) else None
    if split < 0:
        return origin, size, None
    signers: list[tuple[str, bytes]] = []
    for line in note[split + 2 :].split("\n"):
        if not line.startswith(_SIG_PREFIX):
            continue
        name, _, b64 = line[len(_SIG_PREFIX) :].partition(" ")
        try:
            blob = base64.b64decode(b64, validate=True)
        except ValueError:
            continue
        signers.append((name, blob[:4]))
    return origin, size, signers


def _at(size: int | None) -> int | None:
    return None if size is None else max(size - 1, 0)


def _open_checkpoint(
    note: str, verifiers: Mapping[tuple[str, bytes], bytes], origin: str
) -> Checkpoint | Problem:
    """Verify one note; return its checkpoint or the problem with it."""
    try:
        text, _ = open_note(note, verifiers)
        cp = Checkpoint.parse(text)
    except AuditIntegrityError as exc:
        cp_origin, size, signers = _lenient(note)
        where = f"checkpoint at size {size}" if size is not None else "a checkpoint"
        if cp_origin is not None and cp_origin != origin:
            return Problem(
                _at(size), 1, "bad_checkpoint", f"{where} is of another log, {cp_origin!r}"
            )
        if signers and not any(s in verifiers for s in signers):
            return Problem(
                _at(size), 1, "unknown_key", f"{where} is not signed by any key of the keyring"
            )
        return Problem(_at(size), 1, "bad_checkpoint", f"{where}: {exc.message}")
    if cp.origin != origin:
        return Problem(
            _at(cp.size), 1, "bad_checkpoint", f"checkpoint is of another log, {cp.origin!r}"
        )
    return cp


@dataclass(slots=True)
class _CheckpointFindings:
    problems: list[Problem]
    mismatched: list[int]  # sizes of signed checkpoints whose root is not the tree's
    trusted: list[_Trusted]


def _verifiers(keys: Mapping[str, KeyInfo], origin: str) -> dict[tuple[str, bytes], bytes]:
    try:
        ed25519_key_id(origin, bytes(32))
    except InvalidRequestError as exc:
        raise InvalidRequestError(
            f"origin {origin!r} is not a valid checkpoint key name", field="origin"
        ) from exc
    # Checkpoint notes are Ed25519 (note type 0x01): keys of other types cannot sign them.
    return {
        (origin, ed25519_key_id(origin, info.public_key)): info.public_key
        for info in keys.values()
        if len(info.public_key) == ED25519_KEY_SIZE
    }


def _check_checkpoints(
    notes: Sequence[str], keys: Mapping[str, KeyInfo], origin: str, tree: MerkleTree
) -> _CheckpointFindings:
    n = tree.size
    verifiers = _verifiers(keys, origin)
    out = _CheckpointFindings([], [], [])
    by_size: dict[int, _Trusted] = {}
    for note in notes:
        got = _open_checkpoint(note, verifiers, origin)
        if isinstance(got, Problem):
            out.problems.append(got)
            continue
        t = _Trusted(got.size, got.root)
        seen = by_size.get(t.size)
        if seen is None:
            by_size[t.size] = t
        elif seen.root != t.root:
            out.problems.append(
                Problem(
                    _at(t.size),
                    1,
                    "inconsistent_checkpoints",
                    f"two signed checkpoints at size {t.size} have different roots",
                )
            )
    out.trusted = sorted(by_size.values(), key=lambda t: t.size)
    matches: dict[int, bool] = {}
    for t in out.trusted:
        if t.size > n:
            out.problems.append(
                Problem(
                    n,
                    1,
                    "truncated",
                    f"a signed checkpoint covers {t.size} events; only {n} are present",
                )
            )
        else:
            matches[t.size] = tree.root(t.size) == t.root
    for t in out.trusted:
        if matches.get(t.size, True):
            continue
        out.mismatched.append(t.size)
        out.problems.append(_mismatch(t, out.trusted, matches, tree))
    return out


def _mismatch(
    t: _Trusted, trusted: Sequence[_Trusted], matches: Mapping[int, bool], tree: MerkleTree
) -> Problem:
    """Explain a signed checkpoint whose root is not the root of the events present."""
    for later in trusted:
        if later.size <= t.size or not matches.get(later.size, False) or t.size == 0:
            continue
        try:
            proof = tree.consistency_proof(t.size, later.size)
            verify_consistency(t.size, later.size, t.root, later.root, proof)
        except AuditIntegrityError as exc:
            return Problem(
                _at(t.size),
                1,
                "inconsistent_checkpoints",
                f"the signed checkpoint at size {t.size} is not a prefix of the one at size"
                f" {later.size}, which the events match ({exc.message})",
            )
    return Problem(
        _at(t.size),
        1,
        "bad_checkpoint",
        f"the signed root at size {t.size} is not the root of the events",
    )


def _check_pinned(
    notes: Sequence[str], keys: Mapping[str, KeyInfo], origin: str, tree: MerkleTree
) -> tuple[list[Problem], list[int]]:
    """Check checkpoints a verifier kept from earlier (``pinned``) against the tree.

    The store's own checkpoints can be deleted with the events they cover; a note kept
    outside cannot. Return (problems, sizes of pinned notes whose root is not the tree's).
    """
    problems: list[Problem] = []
    mismatched: list[int] = []
    verifiers = _verifiers(keys, origin)
    n = tree.size
    for note in notes:
        got = _open_checkpoint(note, verifiers, origin)
        if isinstance(got, Problem):
            problems.append(
                Problem(got.index, got.rank, got.kind, f"the pinned checkpoint: {got.detail}")
            )
        elif got.size > n:
            problems.append(
                Problem(
                    n,
                    1,
                    "truncated",
                    f"the pinned checkpoint covers {got.size} events; only {n} are present",
                )
            )
        elif tree.root(got.size) != got.root:
            mismatched.append(got.size)
            problems.append(
                Problem(
                    _at(got.size),
                    1,
                    "inconsistent_checkpoints",
                    f"the pinned checkpoint at size {got.size} has a root the log does not"
                    " have at that size: the log was rewritten since it was signed",
                )
            )
    return problems, mismatched


# ---------------------------------------------------------------------------- driver


def _normalise(
    events: Sequence[EventRow] | Iterable[bytes],
) -> tuple[Sequence[bytes], Sequence[str] | None, Sequence[EventRow] | None]:
    items: list[Any] = events if isinstance(events, list) else list(events)
    if not items:
        return [], None, None
    if isinstance(items[0], EventRow):
        if not all(isinstance(r, EventRow) for r in items):
            raise InvalidRequestError("events mix EventRow and bytes", field="events")
        return [r.body for r in items], [r.hash for r in items], items
    if not all(type(b) is bytes for b in items):
        raise InvalidRequestError("events must all be EventRow or all bytes", field="events")
    return items, None, None


def verify_log(
    events: Sequence[EventRow] | Iterable[bytes],
    checkpoints: Sequence[str],
    keys: Mapping[str, KeyInfo],
    *,
    origin: str,
    full: bool = True,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    pinned: Sequence[str] = (),
    max_clock_skew: timedelta = MAX_CLOCK_SKEW,
) -> VerifyReport:
    """Verify an audit log: events, Merkle tree and signed checkpoints (see module doc).

    Args:
        events: The events in storage order: ``EventRow`` from a store (their stored hashes
            are checked too) or the leaf bytes of an export.
        checkpoints: Signed checkpoint notes, in any order.
        keys: Public keys by key id; checkpoints may be signed by any of them.
        origin: The log's origin: the first line of its checkpoints and their key name.
        full: Verify every event's canonical form and signature; when false, the fast mode
            described in the module documentation.
        progress: Called with the number of events checked so far, every few thousand.
        workers: Processes that check events in full mode (1: this process only). By
            default ``min(2, cores)`` from ``PARALLEL_THRESHOLD`` events on, else 1. Workers
            are forked, and only from a process without other threads.
        pinned: Checkpoint notes the verifier kept from earlier (``proctor audit verify
            --checkpoint``). The log must still hold them: a log shorter than one is
            ``truncated`` (at the first missing index), one whose root differs at its size
            is ``inconsistent_checkpoints``; a note that does not verify is
            ``bad_checkpoint`` or ``unknown_key``. Unlike the store's checkpoints, these
            cannot be deleted along with the events they cover.
        max_clock_skew: In full mode, how far an event's timestamp may lie before the latest
            timestamp of the events before it; the first event further back is
            ``timestamp_regression``. Default ``MAX_CLOCK_SKEW`` (5 minutes).

    Returns:
        ``ok`` with the number of events, or the first problem in log order.

    Raises:
        InvalidRequestError: ``events`` mixes rows and bytes, ``origin`` is not a valid
            key name, or ``max_clock_skew`` is negative. (A key of the wrong length is not an
            error: what it should verify is reported as ``bad_signature`` or, for
            checkpoints, ``unknown_key``.)
    """
    return verify_problems(
        events,
        checkpoints,
        keys,
        origin=origin,
        full=full,
        progress=progress,
        workers=workers,
        pinned=pinned,
        max_clock_skew=max_clock_skew,
    )


def verify_problems(
    events: Sequence[EventRow] | Iterable[bytes],
    checkpoints: Sequence[str],
    keys: Mapping[str, KeyInfo],
    *,
    origin: str,
    full: bool = True,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    extra: Sequence[Problem] = (),
    pinned: Sequence[str] = (),
    max_clock_skew: timedelta = MAX_CLOCK_SKEW,
) -> VerifyReport:
    """``verify_log`` with ``extra`` findings (from a bundle's files) ranked in (internal)."""
    if max_clock_skew < timedelta(0):
        raise InvalidRequestError(
            f"max_clock_skew must not be negative, got {max_clock_skew}", field="max_clock_skew"
        )
    bodies, hashes, rows = _normalise(events)
    n = len(bodies)
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if n >= PARALLEL_THRESHOLD else 1
    time_problem: Problem | None = None
    if full:
        leaves, anomaly, bad_sig, times, changes = _full(bodies, hashes, keys, progress, workers)
        time_problem = _time_problem(times, bodies, max_clock_skew)
    else:
        leaves, anomaly, changes = _scan(bodies, hashes, keys, progress)
        bad_sig = None
    event = (
        _event_problem(bodies, hashes, rows, keys, bad_sig)
        if anomaly is not None or bad_sig is not None
        else None
    )
    # After the event checks: at one index, what is wrong with the bytes comes first.
    event = _first(
        [
            event,
            _column_problem(rows) if rows is not None else None,
            time_problem,
            _rotation_problem(bodies, changes),
        ]
    )
    tree = build_tree(leaves)
    found = _check_checkpoints(checkpoints, keys, origin, tree)
    pinned_problems, pinned_mismatched = _check_pinned(pinned, keys, origin, tree)
    unexplained = [
        s
        for s in [*found.mismatched, *pinned_mismatched]
        if event is None or event.index is None or s <= event.index
    ]
    if not full and unexplained:
        # A signed checkpoint disagrees with events that chain correctly: verify their
        # signatures to find which one was changed.
        return verify_problems(
            rows if rows is not None else bodies,
            checkpoints,
            keys,
            origin=origin,
            full=True,
            progress=progress,
            workers=workers,
            extra=extra,
            pinned=pinned,
            max_clock_skew=max_clock_skew,
        )
    if event is not None and event.kind == "bad_signature" and event.index is not None:
        covering = [t.size for t in found.trusted if event.index < t.size <= n]
        if covering and min(covering) in found.mismatched:
            event = Problem(
                event.index,
                0,
                "modified",
                "the signature does not verify and the signed checkpoint at size"
                f" {min(covering)} commits to other bytes",
            )
    worst = _first([event, *found.problems, *pinned_problems, *extra])
    if worst is None:
        return VerifyReport(ok=True, events=n)
    return VerifyReport(
        ok=False, events=n, first_bad_seq=worst.index, problem=worst.kind, detail=worst.detail
    )
