"""Archive an audit export bundle to S3-compatible object storage under Object Lock.

``archive_export`` uploads the parts of an export (``proctor.audit.export``) that will never
change: the *sealed* event segments (full, and covered by a signed checkpoint), every
checkpoint note, then ``keys.json`` and a manifest of the archive. Each object is written
with Object Lock in COMPLIANCE mode until ``now + retention_days``, so nobody (the root
account included) can delete or overwrite that version before then, and with a SHA-256
checksum the store verifies on receipt.

Object keys mirror the bundle layout under the prefix (``<prefix>/events/...jsonl``,
``<prefix>/checkpoints/<size>.note``, ``<prefix>/keys.json``, ``<prefix>/manifest.json``).

The archived ``manifest.json`` is not the export's: it describes what the archive holds, so
that a downloaded archive verifies as an export (``verify_export``). It lists the sealed
segments only, ``events`` is the number of events they hold, and its checkpoints are those
no larger than that: a checkpoint over events not archived yet cannot be checked against
the archive, and listing it would make the download look truncated. Such a checkpoint is
uploaded all the same, under ``<prefix>/pending/checkpoints/`` (it locks the log's later
state; a re-signed one under the same name stops a later run), and a later run that seals its
events uploads it under ``checkpoints/`` and lists it in a new version of the manifest. The
archived manifest leaves out ``exported_at``, so a run that seals nothing new finds it
unchanged and skips it.

Re-running is safe: an object whose current version has the same SHA-256 and is already
under a COMPLIANCE lock is skipped (its retention is left as it was; it is not extended).
``keys.json`` and the manifest grow with the log, so a changed one is uploaded as a
new version (the bucket keeps the locked old ones), and so is a checkpoint that gained
signatures (a cosignature) over the same signed text. Otherwise segments and checkpoints
are immutable: if the archive holds *different* bytes under the name, archiving stops with
``AuditIntegrityError`` and uploads nothing more.

Before anything is uploaded the whole bundle is checked: the manifest's shape, that its
segments follow each other, each sealed segment's SHA-256 against the manifest, each
checkpoint's size against its file name and its origin against the manifest. Signatures are
not verified here; run ``proctor audit verify`` on the export first.

Every upload is appended to ``<export>/archive-log.jsonl`` as it happens, one JSON object a
line (``bucket``, ``key``, ``version_id``, ``sha256``, ``size``, ``retain_until``,
``archived_at``), so an interrupted run still leaves an exact record.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, Final
from urllib.parse import urlsplit

from proctor.audit.kms import aws_errors, make_client, wrap_aws_error
from proctor.audit.note import Checkpoint
from proctor.errors import (
    AuditIntegrityError,
    ConfigError,
    InvalidRequestError,
    ProctorError,
    StorageError,
)

__all__ = [
    "ARCHIVE_LOG",
    "EXPORT_FORMAT",
    "ArchiveReport",
    "ArchivedObject",
    "archive_export",
    "parse_s3_url",
]

EXPORT_FORMAT: Final = "proctor-audit-export/1"
ARCHIVE_LOG: Final = "archive-log.jsonl"
_LOCK_MODE: Final = "COMPLIANCE"
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP_ADDRESS = re.compile(r"\d+\.\d+\.\d+\.\d+")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHECKPOINT_NAME = re.compile(r"checkpoints/([0-9]{12})\.note")
_PENDING = "pending/"
"""Where a checkpoint over events not archived yet is uploaded (see the module's docstring)."""
_NOT_FOUND: Final = frozenset({"404", "NoSuchKey", "NotFound"})
_NO_LOCK: Final = frozenset({"ObjectLockConfigurationNotFoundError", "InvalidRequest"})
# S3 error codes that mean "fix the configuration" (bucket name, credentials, permissions).
_CONFIG_CODES: Final = frozenset(
    {
        "NoSuchBucket",
        "AccessDenied",
        "403",
        "Forbidden",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AllAccessDisabled",
        "PermanentRedirect",
        "AuthorizationHeaderMalformed",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchivedObject:
    """One object of the archive: uploaded by this run or found already there."""

    key: str
    """The object key in the bucket."""
    path: str
    """The file's path inside the export bundle (``events/...``). For ``manifest.json`` the
    object is the archive's own manifest, not the bundle's file."""
    size: int
    sha256: str
    """Hex SHA-256 of the content."""
    retain_until: datetime | None
    """End of the COMPLIANCE retention of the version in the bucket."""
    version_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {
            "key": self.key,
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "retain_until": self.retain_until.isoformat() if self.retain_until else None,
            "version_id": self.version_id,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchiveReport:
    """What ``archive_export`` did."""

    bucket: str
    prefix: str
    retain_until: datetime
    """Retention asked for the objects uploaded by this run."""
    uploaded: tuple[ArchivedObject, ...] = ()
    skipped: tuple[ArchivedObject, ...] = ()
    """Objects already archived with identical content (and locked)."""
    unsealed: tuple[str, ...] = field(default=())
    """Segments left out: not full yet, or not covered by a checkpoint."""
    events: int = 0
    """Events in the archived segments (the ``events`` of the archived manifest)."""

    @property
    def uploaded_bytes(self) -> int:
        """Bytes uploaded by this run."""
        return sum(o.size for o in self.uploaded)

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON form printed by the CLI."""
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "retain_until": self.retain_until.isoformat(),
            "uploaded": [o.as_dict() for o in self.uploaded],
            "skipped": [o.as_dict() for o in self.skipped],
            "unsealed": list(self.unsealed),
            "events": self.events,
            "uploaded_bytes": self.uploaded_bytes,
        }


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket/prefix`` into the bucket and the prefix (no slashes around it).

    Raises:
        ConfigError: The URL is not ``s3://`` with a valid bucket name and a clean prefix.
    """

    def bad(reason: str) -> ConfigError:
        return ConfigError(
            f"invalid archive URL {url!r}: {reason}",
            field="archive_url",
            hint="use s3://<bucket>/<prefix>, e.g. s3://audit-archive/proctor/prod",
        )

    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise bad("the scheme must be s3://")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise bad("no query string or fragment allowed")
    bucket = parts.netloc
    if not bucket:
        raise bad("no bucket name")
    if (
        not _BUCKET_NAME.fullmatch(bucket)
        or ".." in bucket
        or _IP_ADDRESS.fullmatch(bucket)
        or "@" in bucket
        or ":" in bucket
    ):
        raise bad(f"{bucket!r} is not a valid S3 bucket name")
    prefix = parts.path.strip("/")
    segments = prefix.split("/") if prefix else []
    if any(s in ("", ".", "..") for s in segments):
        raise bad("the prefix must not hold empty, '.' or '..' segments")
    return bucket, prefix


@dataclass(frozen=True, slots=True)
class _File:
    path: str  # relative, POSIX
    data: bytes
    sha256: str
    immutable: bool


def _bundle_error(directory: Path, reason: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{directory} is not a valid audit export: {reason}",
        field="directory",
        hint="archive a directory written by `proctor audit export`",
    )


def _read(directory: Path, rel: Any) -> bytes:
    if not isinstance(rel, str) or not rel:
        raise _bundle_error(directory, f"bad file name {rel!r} in manifest.json")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or any(p in ("..", ".", "") for p in rel.split("/")) or "\\" in rel:
        raise _bundle_error(directory, f"file name {rel!r} leaves the bundle")
    try:
        return (directory / pure).read_bytes()
    except OSError as exc:
        raise _bundle_error(directory, f"cannot read {rel}: {exc.strerror or exc}") from exc


def _int(directory: Path, value: Any, what: str, *, minimum: int = 0) -> int:
    if type(value) is not int or value < minimum:
        raise _bundle_error(directory, f"{what} is {value!r}, not an integer >= {minimum}")
    return value


def _checkpoint_size(directory: Path, rel: str, data: bytes, origin: Any) -> int:
    match = _CHECKPOINT_NAME.fullmatch(rel)
    if match is None:
        raise _bundle_error(directory, f"checkpoint {rel!r} is not checkpoints/<12 digits>.note")
    try:
        note = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AuditIntegrityError(f"checkpoint {rel} is not UTF-8", field=rel) from exc
    split = note.rfind("\n\n")
    if split < 0:
        raise AuditIntegrityError(f"checkpoint {rel} is not a signed note", field=rel)
    checkpoint = Checkpoint.parse(note[: split + 1])
    if checkpoint.size != int(match.group(1)):
        raise AuditIntegrityError(
            f"checkpoint {rel} holds tree size {checkpoint.size}, not the size in its name",
            field=rel,
        )
    if isinstance(origin, str) and checkpoint.origin != origin:
        raise AuditIntegrityError(
            f"checkpoint {rel} is for log {checkpoint.origin!r}, not {origin!r}", field=rel
        )
    return checkpoint.size


@dataclass(frozen=True, slots=True)
class _Collected:
    files: list[_File]  # in upload order
    unsealed: list[str]
    events: int  # events in the sealed segments


def _collect(directory: Path) -> _Collected:
    """Read and check the bundle; return the files to archive in order and the unsealed."""
    manifest_bytes = _read(directory, "manifest.json")
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError as exc:
        raise _bundle_error(directory, f"manifest.json is not JSON: {exc}") from exc
    if not isinstance(manifest, Mapping) or manifest.get("format") != EXPORT_FORMAT:
        raise _bundle_error(directory, f"manifest.json is not {EXPORT_FORMAT}")
    segment_size = _int(directory, manifest.get("segment_size"), "segment_size", minimum=1)
    segments, checkpoints = manifest.get("segments"), manifest.get("checkpoints")
    if not isinstance(segments, list) or not isinstance(checkpoints, list):
        raise _bundle_error(directory, "manifest.json lacks the segments or checkpoints list")
    origin = manifest.get("origin")

    notes: list[tuple[_File, int]] = []
    covered = 0
    for rel in checkpoints:
        data = _read(directory, rel)
        size = _checkpoint_size(directory, rel, data, origin)
        covered = max(covered, size)
        notes.append((_File(rel, data, hashlib.sha256(data).hexdigest(), immutable=True), size))

    sealed: list[_File] = []
    entries: list[Mapping[str, Any]] = []
    unsealed: list[str] = []
    at = 0  # index of the next event
    for i, seg in enumerate(segments):
        if not isinstance(seg, Mapping):
            raise _bundle_error(directory, f"segments[{i}] is not an object")
        rel = seg.get("file")
        if not isinstance(rel, str):
            raise _bundle_error(directory, f"segments[{i}].file is not a file name")
        first = _int(directory, seg.get("first"), f"segments[{i}].first")
        last = _int(directory, seg.get("last"), f"segments[{i}].last")
        count = _int(directory, seg.get("count"), f"segments[{i}].count")
        expected = seg.get("sha256")
        if count != last - first + 1:
            raise _bundle_error(directory, f"segments[{i}] counts {count} events, not first..last")
        if first != at:
            raise _bundle_error(directory, f"segments[{i}] starts at event {first}, not {at}")
        at = last + 1
        if not isinstance(expected, str) or not _HEX64.fullmatch(expected):
            raise _bundle_error(directory, f"segments[{i}].sha256 is not 64 lowercase hex")
        # The sealed segments are a prefix of the log: the archive never has a gap.
        if unsealed or count != segment_size or last + 1 > covered:
            unsealed.append(rel)
            continue
        data = _read(directory, rel)
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected:
            raise AuditIntegrityError(
                f"segment {rel} does not match its SHA-256 in manifest.json",
                field=rel,
                hint="the export was modified or is incomplete; export the log again",
            )
        sealed.append(_File(rel, data, digest, immutable=True))
        entries.append(seg)

    events = sum(e["count"] for e in entries)
    archived_manifest = _manifest_bytes(
        {
            "format": EXPORT_FORMAT,
            "origin": origin,
            "events": events,
            "segment_size": segment_size,
            "segments": [dict(e) for e in entries],
            # A checkpoint over more events than the archive holds cannot be checked
            # against it; listed, it would make the archive look truncated.
            "checkpoints": [f.path for f, size in notes if size <= events],
        }
    )
    keys = _read(directory, "keys.json")
    mutable = [
        _File("keys.json", keys, hashlib.sha256(keys).hexdigest(), immutable=False),
        _File(
            "manifest.json",
            archived_manifest,
            hashlib.sha256(archived_manifest).hexdigest(),
            immutable=False,
        ),
    ]
    # A checkpoint over events not archived yet goes under ``pending/``: uploaded now, it locks
    # the log's later state, and a download verifies (``verify_export`` reads every note under
    # ``checkpoints/``, and one beyond the archived events there would read as a truncation).
    # A later run that archives its events uploads it under ``checkpoints/`` and lists it.
    placed = [
        f if size <= events else dataclasses.replace(f, path=_PENDING + f.path) for f, size in notes
    ]
    return _Collected(sealed + placed + mutable, unsealed, events)


def _manifest_bytes(doc: Mapping[str, Any]) -> bytes:
    """The JSON form of a manifest, laid out as ``proctor.audit.export`` writes it."""
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _version(head: Mapping[str, Any]) -> dict[str, Any]:
    """The ``VersionId`` argument that reads exactly the version ``head`` describes."""
    version = head.get("VersionId")
    return {"VersionId": version} if isinstance(version, str) and version else {}


class _Bucket:
    """The few S3 calls archiving needs, with errors wrapped."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket
        self.errors = aws_errors()

    def call(self, what: str, method: str, **kwargs: Any) -> dict[str, Any]:
        try:
            return dict(getattr(self.client, method)(Bucket=self.bucket, **kwargs))
        except self.errors as exc:
            error = wrap_aws_error(exc, what, field="archive_url")
            if error.details.get("aws_code") in _CONFIG_CODES:
                error = ConfigError(error.message, field="archive_url", **error.details)
            raise error from exc

    def require_object_lock(self) -> None:
        what = f"read the Object Lock configuration of bucket {self.bucket!r}"
        try:
            config = self.call(what, "get_object_lock_configuration")
        except ProctorError as exc:
            if exc.details.get("aws_code") not in _NO_LOCK:
                raise
            config = {}
        enabled = config.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
        if enabled != "Enabled":
            raise ConfigError(
                f"bucket {self.bucket!r} does not have S3 Object Lock enabled; archived audit "
                "segments must be write-once",
                field="archive_url",
                hint="archive to a bucket created with Object Lock enabled "
                "(aws s3api create-bucket ... --object-lock-enabled-for-bucket)",
            )

    def current(self, key: str) -> dict[str, Any] | None:
        """Return the head of the current version of ``key``, or None if there is none."""
        try:
            return self.call(
                f"read s3://{self.bucket}/{key}", "head_object", Key=key, ChecksumMode="ENABLED"
            )
        except ProctorError as exc:
            if exc.details.get("aws_code") in _NOT_FOUND:
                return None
            raise

    def sha256_of(self, key: str, head: Mapping[str, Any]) -> str:
        """Return the hex SHA-256 of the current version, from its checksum or its bytes."""
        checksum = head.get("ChecksumSHA256")
        if isinstance(checksum, str) and "-" not in checksum:  # "-N": a multipart composite
            try:
                return base64.b64decode(checksum, validate=True).hex()
            except ValueError:
                pass
        body = self.call(f"read s3://{self.bucket}/{key}", "get_object", Key=key, **_version(head))
        try:
            return hashlib.sha256(body["Body"].read()).hexdigest()
        except self.errors as exc:
            raise wrap_aws_error(
                exc, f"read s3://{self.bucket}/{key}", field="archive_url"
            ) from exc


def _note_text(data: bytes) -> bytes | None:
    split = data.rfind(b"\n\n")
    return data[: split + 1] if split >= 0 else None


def _cosigned(s3: _Bucket, key: str, head: Mapping[str, Any], f: _File) -> bool:
    """Whether ``f`` is the archived checkpoint with other signatures (a cosignature, say).

    A checkpoint may gain signatures after it was archived; its signed text may not change.
    """
    if not f.path.removeprefix(_PENDING).startswith("checkpoints/"):
        return False
    what = f"read s3://{s3.bucket}/{key}"
    got = s3.call(what, "get_object", Key=key, **_version(head))
    try:
        archived = got["Body"].read()
    except s3.errors as exc:
        raise wrap_aws_error(exc, what, field="archive_url") from exc
    text = _note_text(f.data)
    return text is not None and _note_text(archived) == text


def _key(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix else rel


def _append_log(path: Path, entry: Mapping[str, Any]) -> None:
    line = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    try:
        with path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
    except OSError as exc:
        raise StorageError(f"cannot append to {path}: {exc}") from exc


def archive_export(
    directory: Path,
    *,
    bucket: str,
    prefix: str,
    retention_days: int,
    now: datetime,
    client: Any = None,
    endpoint_url: str | None = None,
    region_name: str | None = None,
) -> ArchiveReport:
    """Upload the sealed part of an audit export to an Object Lock bucket.

    Args:
        directory: The export bundle (``manifest.json``, ``events/``, ``checkpoints/``,
            ``keys.json``).
        bucket: The bucket; it must have Object Lock enabled.
        prefix: Key prefix for this log (``""`` for the bucket root); slashes around it
            are ignored.
        retention_days: COMPLIANCE retention of uploaded objects, in days (>= 1).
        now: The current time (timezone-aware), from the ``Clock``.
        client: A boto3 S3 client; when given, ``endpoint_url`` and ``region_name`` are
            ignored.
        endpoint_url: An S3-compatible endpoint (MinIO, Ceph, moto, ...).
        region_name: The region; default from the environment.

    Returns:
        What was uploaded, skipped and left out. Uploads are also appended to
        ``directory/archive-log.jsonl``.

    Raises:
        InvalidRequestError: Bad arguments, or ``directory`` is not a valid export.
        AuditIntegrityError: A file does not match the manifest, or the archive holds
            different bytes under the name of a segment or checkpoint.
        ConfigError: No such bucket, no Object Lock on it, no credentials, access denied.
        StorageError: The store failed or rejected an upload (a checksum mismatch, say).
        MissingDependencyError: boto3 is not installed.
    """
    if type(retention_days) is not int or retention_days < 1:
        raise InvalidRequestError(
            f"retention_days must be a whole number of days >= 1, not {retention_days!r}",
            field="retention_days",
        )
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidRequestError("now must be timezone-aware", field="now")
    if not bucket:
        raise InvalidRequestError("no bucket given", field="bucket")
    prefix = prefix.strip("/")
    directory = Path(directory)
    collected = _collect(directory)
    # Whole seconds, rounded up, in UTC: what S3 stores, so the report and log are exact.
    retain_until = (now + timedelta(days=retention_days)).astimezone(UTC)
    if retain_until.microsecond:
        retain_until = retain_until.replace(microsecond=0) + timedelta(seconds=1)

    s3 = _Bucket(
        client
        if client is not None
        else make_client("s3", endpoint_url=endpoint_url, region_name=region_name),
        bucket,
    )
    s3.require_object_lock()
    log = directory / ARCHIVE_LOG
    uploaded: list[ArchivedObject] = []
    skipped: list[ArchivedObject] = []
    for f in collected.files:
        key = _key(prefix, f.path)
        head = s3.current(key)
        if head is not None:
            same = s3.sha256_of(key, head) == f.sha256
            if same and head.get("ObjectLockMode") == _LOCK_MODE:
                until = head.get("ObjectLockRetainUntilDate")
                skipped.append(
                    ArchivedObject(
                        key=key,
                        path=f.path,
                        size=len(f.data),
                        sha256=f.sha256,
                        retain_until=until if isinstance(until, datetime) else None,
                        version_id=head.get("VersionId"),
                    )
                )
                continue
            if not same and f.immutable and not _cosigned(s3, key, head, f):
                raise AuditIntegrityError(
                    f"s3://{bucket}/{key} already holds different content than {f.path}",
                    field=f.path,
                    hint="another log may archive under this prefix, or the export differs "
                    "from the one archived before; check both before going on",
                )
        put = s3.call(
            f"upload {f.path} to s3://{bucket}/{key}",
            "put_object",
            Key=key,
            Body=f.data,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=base64.b64encode(bytes.fromhex(f.sha256)).decode("ascii"),
            ObjectLockMode=_LOCK_MODE,
            ObjectLockRetainUntilDate=retain_until,
        )
        obj = ArchivedObject(
            key=key,
            path=f.path,
            size=len(f.data),
            sha256=f.sha256,
            retain_until=retain_until,
            version_id=put.get("VersionId"),
        )
        _append_log(
            log,
            obj.as_dict() | {"bucket": bucket, "archived_at": now.isoformat()},
        )
        uploaded.append(obj)
    return ArchiveReport(
        bucket=bucket,
        prefix=prefix,
        retain_until=retain_until,
        uploaded=tuple(uploaded),
        skipped=tuple(skipped),
        unsealed=tuple(collected.unsealed),
        events=collected.events,
    )
