"""Export the audit log as a self-contained bundle, and verify a bundle offline.

Layout of an export directory::

    manifest.json                written last: format, origin, events, segments, checkpoints
    events/<first>-<last>.jsonl  one event a line: exactly the stored leaf bytes and a newline
    checkpoints/<size>.note      every signed checkpoint note, exactly as signed
    keys.json                    the origin, the public keys (with validity) and their vkeys

Indices and sizes in file names have 12 digits. The manifest records each segment's SHA-256;
it is a convenience, not a trust anchor (it is not signed). ``verify_export`` trusts only the
public keys of ``keys.json`` and checks everything else with ``verify_log``: the events, the
Merkle tree they form and the signed checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from proctor.audit.events import KeyInfo, VerifyReport
from proctor.audit.keys import KeyEntry
from proctor.audit.note import parse_vkey, vkey
from proctor.audit.verify import MAX_CLOCK_SKEW, Problem, verify_problems
from proctor.core.ports import Store
from proctor.errors import InvalidRequestError, StorageError

__all__ = ["FORMAT", "ExportManifest", "Segment", "export_log", "verify_export"]

FORMAT = "proctor-audit-export/1"
"""The ``format`` value of manifest.json."""

_NOTE_NAME = re.compile(r"checkpoints/([0-9]{12})\.note")
_SEGMENT_NAME = re.compile(r"events/([0-9]{12})-([0-9]{12})\.jsonl")


@dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    """One events file of an export."""

    file: str
    """Path relative to the export directory, with forward slashes."""
    first: int
    """Index of the first event in the file."""
    last: int
    """Index of the last event in the file."""
    count: int
    """Number of events (lines) in the file."""
    sha256: str
    """Hex SHA-256 of the file's bytes."""

    def as_dict(self) -> dict[str, Any]:
        """Return the manifest entry."""
        return {
            "file": self.file,
            "first": self.first,
            "last": self.last,
            "count": self.count,
            "sha256": self.sha256,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportManifest:
    """What an export holds (the content of manifest.json)."""

    origin: str
    events: int
    segment_size: int
    segments: tuple[Segment, ...]
    checkpoints: tuple[str, ...]
    exported_at: datetime | None = None
    format: str = FORMAT

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON form written to manifest.json."""
        out: dict[str, Any] = {
            "format": self.format,
            "origin": self.origin,
            "events": self.events,
            "segment_size": self.segment_size,
            "segments": [s.as_dict() for s in self.segments],
            "checkpoints": list(self.checkpoints),
        }
        if self.exported_at is not None:
            out["exported_at"] = self.exported_at.isoformat()
        return out


# ---------------------------------------------------------------------------- export


def _write(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file through a temporary name, flushed to disk."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prepare(directory: Path) -> None:
    if directory.exists():
        if not directory.is_dir():
            raise InvalidRequestError(
                f"export target {directory} exists and is not a directory", field="directory"
            )
        if any(directory.iterdir()):
            raise InvalidRequestError(
                f"export directory {directory} is not empty",
                field="directory",
                hint="export into a new or empty directory; an export is never merged",
            )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "events").mkdir()
    (directory / "checkpoints").mkdir()


def export_log(
    store: Store,
    *,
    keys: Sequence[KeyEntry],
    origin: str,
    directory: Path,
    segment_size: int = 10_000,
    progress: Callable[[int], None] | None = None,
    now: datetime | None = None,
) -> ExportManifest:
    """Write the store's audit log as a self-contained bundle in ``directory``.

    Checkpoints are read before the events, so every exported checkpoint covers exported
    events even while writers append. Files are written and flushed first and manifest.json
    last (through a temporary name): after a crash the manifest is absent or complete.

    Args:
        store: The store to export.
        keys: Every public key that signed events or checkpoints (``Keyring.entries()``).
        origin: The log's origin (checkpoint first line and key name).
        directory: A new or empty directory.
        segment_size: Events per segment file.
        progress: Called with the number of events written so far, once per segment.
        now: Recorded as ``exported_at`` when given (library code reads no clock).

    Returns:
        The manifest written.

    Raises:
        InvalidRequestError: ``directory`` is not empty or not a directory, or
            ``segment_size`` is not positive.
        StorageError: A file cannot be written.
    """
    if segment_size < 1:
        raise InvalidRequestError("segment_size must be at least 1", field="segment_size")
    try:
        _prepare(directory)
        checkpoints = store.checkpoints()
        notes: list[str] = []
        for cp in checkpoints:
            name = f"checkpoints/{cp.size:012d}.note"
            _write(directory / name, cp.note.encode("utf-8"))
            notes.append(name)
        segments: list[Segment] = []
        total = 0
        for lines in _batches((row.body for row in store.iter_events()), segment_size):
            first, last = total, total + len(lines) - 1
            name = f"events/{first:012d}-{last:012d}.jsonl"
            data = b"".join(line + b"\n" for line in lines)
            _write(directory / name, data)
            segments.append(
                Segment(
                    file=name,
                    first=first,
                    last=last,
                    count=len(lines),
                    sha256=hashlib.sha256(data).hexdigest(),
                )
            )
            total += len(lines)
            if progress is not None:
                progress(total)
        keys_doc = {
            "origin": origin,
            "keys": [k.as_dict() for k in keys],
            # Signed notes are Ed25519 only: an ECDSA (KMS) key signs events, not checkpoints.
            "vkeys": [vkey(origin, k.public_key) for k in keys if len(k.public_key) == 32],
        }
        _write(directory / "keys.json", _json(keys_doc))
        _sync_dir(directory / "events")
        _sync_dir(directory / "checkpoints")
        manifest = ExportManifest(
            origin=origin,
            events=total,
            segment_size=segment_size,
            segments=tuple(segments),
            checkpoints=tuple(notes),
            exported_at=now,
        )
        _write(directory / "manifest.json", _json(manifest.as_dict()))
        _sync_dir(directory)
    except OSError as exc:
        raise StorageError(
            f"cannot write the export to {directory}: {exc}", field="directory"
        ) from exc
    return manifest


def _batches(items: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _json(doc: Mapping[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


# ---------------------------------------------------------------------------- verify


@dataclass(slots=True)
class _Bundle:
    """What was read from an export directory, and what is wrong with its files."""

    origin: str
    bodies: list[bytes] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    remarks: list[str] = field(default_factory=list)


class _BadManifest(Exception):
    pass


def _inside(directory: Path, rel: Any, what: str) -> Path:
    """Return ``directory / rel`` for a relative path that stays inside ``directory``."""
    if not isinstance(rel, str) or not rel:
        raise _BadManifest(f"{what} is not a file name")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or "\\" in rel:
        raise _BadManifest(f"{what} {rel!r} is not a path inside the export")
    return directory.joinpath(*pure.parts)


def _manifest(directory: Path) -> dict[str, Any]:
    path = directory / "manifest.json"
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise _BadManifest(f"{path} is missing: not an export, or an unfinished one") from exc
    except (OSError, ValueError) as exc:
        raise _BadManifest(f"{path} is unreadable or not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _BadManifest(f"{path} is not a {FORMAT} manifest")
    if not isinstance(doc.get("origin"), str) or not doc["origin"]:
        raise _BadManifest("manifest.json has no origin")
    if not isinstance(doc.get("segments"), list) or not isinstance(doc.get("checkpoints"), list):
        raise _BadManifest("manifest.json lacks the segments or checkpoints list")
    for i, seg in enumerate(doc["segments"]):
        if not isinstance(seg, dict):
            raise _BadManifest(f"manifest.json segments[{i}] is not an object")
        for name in ("first", "count"):
            if type(seg.get(name)) is not int or seg[name] < 0:
                raise _BadManifest(f"manifest.json segments[{i}].{name} is not an index")
        if not isinstance(seg.get("sha256"), str):
            raise _BadManifest(f"manifest.json segments[{i}].sha256 is not a string")
    return doc


def _keys(directory: Path, origin: str) -> tuple[dict[str, KeyInfo], str | None]:
    """Read keys.json; return the key infos and a remark (when the file is missing).

    Raises:
        InvalidRequestError: keys.json is not the expected JSON; ``field`` names the part.
    """
    path = directory / "keys.json"

    def bad(where: str, why: str) -> InvalidRequestError:
        return InvalidRequestError(f"{path}: {where} {why}", field=f"keys.json:{where}")

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}, "keys.json is missing: no key can be trusted"
    except OSError as exc:
        raise bad("(file)", f"cannot be read: {exc}") from exc
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise bad("(file)", f"is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise bad("(file)", "is not a JSON object")
    if doc.get("origin") != origin:
        raise bad("origin", f"is {doc.get('origin')!r}, the manifest says {origin!r}")
    entries = doc.get("keys")
    if not isinstance(entries, list):
        raise bad("keys", "is not a list")
    infos: dict[str, KeyInfo] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise bad(f"keys[{i}]", "is not an object")
        for name in ("key_id", "public_key", "created_at"):
            if not isinstance(entry.get(name), str):
                raise bad(f"keys[{i}].{name}", "is missing or not a string")
        try:
            key = KeyEntry.from_dict(entry)
        except (ValueError, TypeError) as exc:
            raise bad(f"keys[{i}]", f"is malformed: {exc}") from exc
        if len(key.public_key) != 32 and not key.key_id.startswith("ecdsa-p256:"):
            raise bad(f"keys[{i}].public_key", "is not a base64 32-byte Ed25519 key")
        if key.created_at.tzinfo is None:
            raise bad(f"keys[{i}].created_at", "has no time zone")
        if key.not_after is not None and key.not_after.tzinfo is None:
            raise bad(f"keys[{i}].not_after", "has no time zone")
        infos[key.key_id] = key.info()
    vkeys = doc.get("vkeys", [])
    if not isinstance(vkeys, list):
        raise bad("vkeys", "is not a list")
    for i, text in enumerate(vkeys):
        try:
            parse_vkey(text if isinstance(text, str) else "")
        except InvalidRequestError as exc:
            raise bad(f"vkeys[{i}]", exc.message) from exc
    return infos, None


def _read_segments(directory: Path, segments: list[dict[str, Any]], bundle: _Bundle) -> None:
    """Read the manifest's segments, then any segment file it does not list.

    The manifest is not signed: a segment left out of it (with the checkpoints covering
    it) would cut the log's tail unseen. So every ``events/*.jsonl`` file is read, and each
    file's name (its first and last event) is checked against what it holds.
    """
    listed = {seg.get("file") for seg in segments}
    unlisted = sorted(
        (int(m.group(1)), p.name)
        for p in (directory / "events").glob("*.jsonl")
        if (m := _SEGMENT_NAME.fullmatch(f"events/{p.name}")) and f"events/{p.name}" not in listed
    )
    for i, seg in enumerate(segments):
        last = i + 1 == len(segments) and not unlisted
        _read_segment(directory, seg, bundle, last=last, what=f"segments[{i}].file")
    for first, name in unlisted:
        bundle.remarks.append(f"events/{name} is not listed in the manifest")
        data = (directory / "events" / name).read_bytes()
        seg = {
            "file": f"events/{name}",
            "first": first,
            "count": data.count(b"\n"),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        _read_segment(directory, seg, bundle, last=name == unlisted[-1][1], what=name)


def _read_segment(
    directory: Path, seg: dict[str, Any], bundle: _Bundle, *, last: bool, what: str
) -> None:
    path = _inside(directory, seg.get("file"), what)
    at = len(bundle.bodies)
    try:
        data = path.read_bytes()
    except OSError:
        bundle.remarks.append(f"{seg['file']} is missing")
        kind = "truncated" if last else "deleted"
        bundle.problems.append(Problem(at, 2, kind, f"segment {seg['file']} is missing"))
        return
    if hashlib.sha256(data).hexdigest() != seg["sha256"]:
        bundle.remarks.append(f"{seg['file']} does not have the SHA-256 in the manifest")
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends in a newline, as it must
    if tail:
        bundle.remarks.append(f"{seg['file']} ends without a newline")
        if _complete(tail):
            lines.append(tail)
        else:
            bundle.remarks.append(f"its last line (event {at + len(lines)}) is cut short")
    if len(lines) != seg["count"]:
        bundle.remarks.append(
            f"{seg['file']} holds {len(lines)} events, the manifest says {seg['count']}"
        )
    if seg["first"] != at:
        bundle.remarks.append(f"{seg['file']} starts at event {at}, not {seg['first']}")
    named = _SEGMENT_NAME.fullmatch(seg["file"])
    end = at + len(lines)  # one past the last event the file holds
    if named and (int(named.group(1)), int(named.group(2)) + 1) != (at, end):
        bundle.remarks.append(
            f"{seg['file']} is named for events {named.group(1).lstrip('0') or 0}-"
            f"{named.group(2).lstrip('0') or 0} but holds {at}-{end - 1}"
        )
        if int(named.group(2)) + 1 > end:
            # Its name says it held more: events were cut from its end.
            kind = "truncated" if last else "deleted"
            bundle.problems.append(
                Problem(end, 2, kind, f"{seg['file']} lacks events its name says it held")
            )
    bundle.bodies.extend(lines)


def _complete(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _read_notes(directory: Path, names: list[Any], bundle: _Bundle) -> None:
    """Read the manifest's checkpoint notes, then every other ``checkpoints/*.note``.

    A note left out of the (unsigned) manifest still binds the log: dropping it with the
    events it covers must not make a cut log verify.
    """
    listed = set(names)
    for path in sorted((directory / "checkpoints").glob("*.note")):
        name = f"checkpoints/{path.name}"
        if name in listed:
            continue
        with contextlib.suppress(OSError, UnicodeDecodeError):  # unreadable: proves nothing
            bundle.notes.append(path.read_bytes().decode("utf-8"))
        bundle.remarks.append(f"{name} is not listed in the manifest")
    for i, name in enumerate(names):
        path = _inside(directory, name, f"checkpoints[{i}]")
        try:
            bundle.notes.append(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            m = _NOTE_NAME.fullmatch(name)
            at = max(int(m.group(1)) - 1, 0) if m else None
            why = "is missing" if isinstance(exc, FileNotFoundError) else "is unreadable"
            bundle.problems.append(Problem(at, 1, "bad_checkpoint", f"{name} {why}"))


def verify_export(
    directory: Path,
    *,
    full: bool = True,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    pinned: Sequence[str] = (),
    max_clock_skew: timedelta = MAX_CLOCK_SKEW,
) -> VerifyReport:
    """Verify an export directory with nothing but its own files (see ``verify_log``).

    The public keys of keys.json are the trust anchor; the manifest only says which files
    to read, in which order. A segment whose SHA-256 differs from the manifest is verified
    all the same: the report gives the precise problem in its content, and ``detail``
    mentions the mismatch (also on an ``ok`` report, whose content verified).

    A missing or malformed manifest gives ``ok=False``, problem ``modified`` and no index; a
    missing segment, the events it held as ``deleted`` (``truncated`` for the last one); a
    missing checkpoint note, ``bad_checkpoint`` at its size - 1; a missing keys.json, the
    events and checkpoints as signed by unknown keys.

    Args:
        directory: The export directory.
        full: Full or fast verification (see ``proctor.audit.verify``).
        progress: Called with the number of events checked so far.
        workers: Processes for signature checks (see ``verify_log``).
        pinned: Checkpoint notes kept from earlier, which the export must still hold (see
            ``verify_log``).
        max_clock_skew: How far back an event's timestamp may go in full mode (see
            ``verify_log``).

    Returns:
        The report.

    Raises:
        InvalidRequestError: keys.json is malformed, or ``max_clock_skew`` is negative;
            ``field`` names the part at fault.
    """
    try:
        doc = _manifest(directory)
        bundle = _Bundle(origin=doc["origin"])
        keys, remark = _keys(directory, bundle.origin)
        if remark:
            bundle.remarks.append(remark)
        _read_segments(directory, doc["segments"], bundle)
        _read_notes(directory, doc["checkpoints"], bundle)
    except _BadManifest as exc:
        return VerifyReport(ok=False, events=0, problem="modified", detail=str(exc))
    if type(doc.get("events")) is int and doc["events"] != len(bundle.bodies):
        bundle.remarks.append(
            f"{len(bundle.bodies)} events are present, the manifest says {doc['events']}"
        )
        if len(bundle.bodies) < doc["events"]:
            n = len(bundle.bodies)
            bundle.problems.append(
                Problem(n, 2, "truncated", f"the manifest lists {doc['events']} events")
            )
    report = verify_problems(
        bundle.bodies,
        bundle.notes,
        keys,
        origin=bundle.origin,
        full=full,
        progress=progress,
        workers=workers,
        extra=bundle.problems,
        pinned=pinned,
        max_clock_skew=max_clock_skew,
    )
    if not bundle.remarks:
        return report
    notes = "; ".join(bundle.remarks)
    detail = f"{report.detail}; {notes}" if report.detail else notes
    return VerifyReport(
        ok=report.ok,
        events=report.events,
        first_bad_seq=report.first_bad_seq,
        problem=report.problem,
        detail=detail,
    )
