"""archive_export against moto's S3, run as a real HTTP server on 127.0.0.1.

The export bundles are built by hand in the ``proctor-audit-export/1`` layout, with real
sealed events and real signed checkpoint notes.

moto (5.2.x) stores the ``x-amz-checksum-sha256`` a client sends without checking it
against the body, so here we check that the checksum is *sent*; AWS S3 rejects a mismatch.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

boto3 = pytest.importorskip("boto3", reason="boto3 is not installed: pip install 'proctor[aws]'")
moto_server = pytest.importorskip(
    "moto.server", reason="moto's server mode is not installed: pip install 'moto[server]'"
)

from botocore.config import Config  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

from proctor.audit.archive import (  # noqa: E402
    ARCHIVE_LOG,
    EXPORT_FORMAT,
    archive_export,
    parse_s3_url,
)
from proctor.audit.events import GENESIS, seal  # noqa: E402
from proctor.audit.keys import LocalSigner  # noqa: E402
from proctor.audit.note import Checkpoint, add_signature, sign_note  # noqa: E402
from proctor.bootstrap import SystemClock  # noqa: E402
from proctor.errors import (  # noqa: E402
    AuditIntegrityError,
    ConfigError,
    InvalidRequestError,
)

REGION = "us-east-1"
pytestmark = pytest.mark.usefixtures("aws_env")
ORIGIN = "proctor.example/archive-test"
SIGNER = LocalSigner(b"\x07" * 32)
PREFIX = "logs/prod"

_counter = iter(range(1_000_000))


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def s3(endpoint: str) -> Any:
    """A boto3 S3 client for the moto server."""
    config = Config(retries={"max_attempts": 1})
    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION, config=config)


@pytest.fixture
def locked_bucket(s3: Any) -> str:
    """A fresh bucket with Object Lock enabled."""
    name = f"audit-archive-{next(_counter)}-{os.getpid()}"
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


@pytest.fixture
def now() -> datetime:
    """The real time: moto enforces retention against its own clock."""
    return SystemClock().now()


# ---------------------------------------------------------------------------- bundles


def _write_bundle(
    directory: Path,
    *,
    events: int,
    segment_size: int = 10,
    checkpoints: tuple[int, ...] = (),
    keys: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write an export bundle of ``events`` sealed events and signed checkpoints."""
    rows, prev = [], GENESIS
    for i in range(events):
        body = {
            "type": "test.event",
            "timestamp": f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}+00:00",
            "plan_id": f"p{i // 3}",
            "step_id": None,
            "data": {"i": i},
        }
        row = seal(body, seq=i, prev_hash=prev, signer=SIGNER)
        rows.append(row)
        prev = row.hash
    (directory / "events").mkdir(parents=True, exist_ok=True)
    (directory / "checkpoints").mkdir(exist_ok=True)
    segments = []
    for first in range(0, events, segment_size):
        chunk = rows[first : first + segment_size]
        last = first + len(chunk) - 1
        rel = f"events/{first:012d}-{last:012d}.jsonl"
        data = b"".join(r.body + b"\n" for r in chunk)
        (directory / rel).write_bytes(data)
        segments.append(
            {
                "file": rel,
                "first": first,
                "last": last,
                "count": len(chunk),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    notes = []
    for size in checkpoints:
        root = hashlib.sha256(b"".join(r.body for r in rows[:size])).digest()
        body = Checkpoint(origin=ORIGIN, size=size, root=root).body()
        rel = f"checkpoints/{size:012d}.note"
        (directory / rel).write_text(sign_note(body, ORIGIN, SIGNER.sign, SIGNER.public_key))
        notes.append(rel)
    keys_doc = keys or {
        "keys": [
            {"key_id": SIGNER.key_id, "public_key": base64.b64encode(SIGNER.public_key).decode()}
        ]
    }
    (directory / "keys.json").write_text(json.dumps(keys_doc, indent=2) + "\n")
    manifest = {
        "format": EXPORT_FORMAT,
        "origin": ORIGIN,
        "events": events,
        "segment_size": segment_size,
        "segments": segments,
        "checkpoints": notes,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _archive(directory: Path, bucket: str, s3: Any, now: datetime | None = None, **kw: Any) -> Any:
    args: dict[str, Any] = {"prefix": PREFIX, "retention_days": 30, "now": now, "client": s3}
    args.update(kw)
    return archive_export(directory, bucket=bucket, **args)


def _keys_in(s3: Any, bucket: str) -> set[str]:
    listing = s3.list_object_versions(Bucket=bucket)
    return {v["Key"] for v in listing.get("Versions", [])}


def _log_lines(directory: Path) -> list[dict[str, Any]]:
    path = directory / ARCHIVE_LOG
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


SEG0 = "events/000000000000-000000000009.jsonl"
SEG1 = "events/000000000010-000000000019.jsonl"
SEG2 = "events/000000000020-000000000024.jsonl"
SEG2_FULL = "events/000000000020-000000000029.jsonl"
CP10 = "checkpoints/000000000010.note"
CP20 = "checkpoints/000000000020.note"


# ---------------------------------------------------------------------------- archive


class TestArchive:
    def test_uploads_sealed_segments_and_checkpoints(self, tmp_path, s3, locked_bucket, now):
        """Full, checkpointed segments, notes, keys and manifest go up under a COMPLIANCE lock."""
        _write_bundle(tmp_path, events=25, checkpoints=(10, 20))
        report = _archive(tmp_path, locked_bucket, s3, now)

        expected = [SEG0, SEG1, CP10, CP20, "keys.json", "manifest.json"]
        assert [o.path for o in report.uploaded] == expected
        assert [o.key for o in report.uploaded] == [f"{PREFIX}/{p}" for p in expected]
        assert report.unsealed == (SEG2,)
        assert report.skipped == ()
        assert (
            timedelta(0) <= report.retain_until - (now + timedelta(days=30)) < timedelta(seconds=1)
        )
        assert report.retain_until.microsecond == 0
        assert _keys_in(s3, locked_bucket) == {f"{PREFIX}/{p}" for p in expected}

        for obj in report.uploaded:
            got = s3.get_object(Bucket=locked_bucket, Key=obj.key)["Body"].read()
            if obj.path != "manifest.json":  # the archive's own manifest (TestArchivedManifest)
                assert got == (tmp_path / obj.path).read_bytes()
            data = got
            assert obj.size == len(data) and obj.sha256 == hashlib.sha256(data).hexdigest()
            head = s3.head_object(Bucket=locked_bucket, Key=obj.key, ChecksumMode="ENABLED")
            assert head["ObjectLockMode"] == "COMPLIANCE"
            assert head["ObjectLockRetainUntilDate"] == report.retain_until
            assert head["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(obj.sha256)).decode()
            assert head["VersionId"] == obj.version_id

        log = _log_lines(tmp_path)
        assert [e["key"] for e in log] == [o.key for o in report.uploaded]
        assert all(e["bucket"] == locked_bucket for e in log)
        assert [e["sha256"] for e in log] == [o.sha256 for o in report.uploaded]
        assert {e["retain_until"] for e in log} == {report.retain_until.isoformat()}

    def test_full_segment_without_checkpoint_is_not_sealed(self, tmp_path, s3, locked_bucket, now):
        """A full segment that no checkpoint covers yet stays out of the archive."""
        _write_bundle(tmp_path, events=20, checkpoints=(10, 15))
        report = _archive(tmp_path, locked_bucket, s3, now)
        # Its events are not archived: the checkpoint at 15 waits under pending/.
        cp15 = "pending/checkpoints/000000000015.note"
        assert [o.path for o in report.uploaded] == [SEG0, CP10, cp15, "keys.json", "manifest.json"]
        assert report.unsealed == (SEG1,)

    def test_rerun_skips_and_grows(self, tmp_path, s3, locked_bucket, now):
        """A second run uploads nothing; after the log grows only the new parts go up."""
        _write_bundle(tmp_path, events=25, checkpoints=(10, 20))
        first = _archive(tmp_path, locked_bucket, s3, now)
        again = _archive(tmp_path, locked_bucket, s3, now + timedelta(hours=1))
        assert again.uploaded == ()
        assert [o.key for o in again.skipped] == [o.key for o in first.uploaded]
        # Skipped objects keep the retention of their first archiving; it is not extended.
        for before, skipped in zip(first.uploaded, again.skipped, strict=True):
            assert skipped.version_id == before.version_id
            assert skipped.retain_until is not None
            assert skipped.retain_until == first.retain_until
        assert len(_log_lines(tmp_path)) == len(first.uploaded)

        # The log grows to 30 events: the tail segment fills up and a checkpoint covers it.
        (tmp_path / SEG2).unlink()
        _write_bundle(tmp_path, events=30, checkpoints=(10, 20, 30))
        grown = _archive(tmp_path, locked_bucket, s3, now)
        assert [o.path for o in grown.uploaded] == [
            SEG2_FULL,
            "checkpoints/000000000030.note",
            "manifest.json",
        ]
        assert {o.path for o in grown.skipped} == {SEG0, SEG1, CP10, CP20, "keys.json"}
        # The manifest got a new version; the first one is still there, locked.
        versions = s3.list_object_versions(Bucket=locked_bucket, Prefix=f"{PREFIX}/manifest.json")
        assert len(versions["Versions"]) == 2
        assert len(_log_lines(tmp_path)) == len(first.uploaded) + 3

    def test_locked_object_cannot_be_overwritten_or_deleted(self, tmp_path, s3, locked_bucket, now):
        """A PUT makes a new version beside the locked one; deleting the locked one is denied."""
        _write_bundle(tmp_path, events=10, checkpoints=(10,))
        report = _archive(tmp_path, locked_bucket, s3, now)
        seg = next(o for o in report.uploaded if o.path == SEG0)
        original = (tmp_path / SEG0).read_bytes()

        put = s3.put_object(
            Bucket=locked_bucket, Key=seg.key, Body=b"forged\n", ChecksumAlgorithm="SHA256"
        )
        assert put["VersionId"] != seg.version_id
        kept = s3.get_object(Bucket=locked_bucket, Key=seg.key, VersionId=seg.version_id)
        assert kept["Body"].read() == original
        assert kept["ObjectLockMode"] == "COMPLIANCE"

        with pytest.raises(ClientError) as info:
            s3.delete_object(Bucket=locked_bucket, Key=seg.key, VersionId=seg.version_id)
        assert info.value.response["Error"]["Code"] == "AccessDenied"
        still = s3.get_object(Bucket=locked_bucket, Key=seg.key, VersionId=seg.version_id)
        assert still["Body"].read() == original

        # The forged current version is noticed on the next run: it is not silently skipped.
        with pytest.raises(AuditIntegrityError, match="different content"):
            _archive(tmp_path, locked_bucket, s3, now)

    def test_cosigned_checkpoint_gets_a_new_version(self, tmp_path, s3, locked_bucket, now):
        """A checkpoint that gained a cosignature is archived again; a changed one is not."""
        _write_bundle(tmp_path, events=10, checkpoints=(10,))
        first = _archive(tmp_path, locked_bucket, s3, now)
        witness = LocalSigner(b"\x09" * 32)
        path = tmp_path / CP10
        note = path.read_text()
        path.write_text(add_signature(note, "witness.example", witness.sign, witness.public_key))
        again = _archive(tmp_path, locked_bucket, s3, now)
        assert [o.path for o in again.uploaded] == [CP10]
        old = next(o for o in first.uploaded if o.path == CP10)
        kept = s3.get_object(Bucket=locked_bucket, Key=old.key, VersionId=old.version_id)
        assert kept["Body"].read().decode() == note

        # Other signed text under the same name is not a cosignature.
        body = Checkpoint(origin=ORIGIN, size=10, root=bytes(32)).body()
        path.write_text(sign_note(body, ORIGIN, SIGNER.sign, SIGNER.public_key))
        with pytest.raises(AuditIntegrityError, match="different content"):
            _archive(tmp_path, locked_bucket, s3, now)

    def test_identical_but_unlocked_object_is_locked(self, tmp_path, s3, locked_bucket, now):
        """Same bytes without a COMPLIANCE lock (and without a SHA-256 checksum) go up again."""
        _write_bundle(tmp_path, events=10, checkpoints=(10,))
        key = f"{PREFIX}/keys.json"
        s3.put_object(Bucket=locked_bucket, Key=key, Body=(tmp_path / "keys.json").read_bytes())
        report = _archive(tmp_path, locked_bucket, s3, now)
        assert "keys.json" in [o.path for o in report.uploaded]
        assert s3.head_object(Bucket=locked_bucket, Key=key)["ObjectLockMode"] == "COMPLIANCE"
        versions = s3.list_object_versions(Bucket=locked_bucket, Prefix=key)["Versions"]
        assert len(versions) == 2

    def test_sends_sha256_checksum_and_lock_headers(self, tmp_path, endpoint, locked_bucket, now):
        """Each PUT carries x-amz-checksum-sha256 of the bytes and the COMPLIANCE lock."""
        _write_bundle(tmp_path, events=10, checkpoints=(10,))
        client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
        seen: list[tuple[bytes, dict[str, str]]] = []

        def capture(request: Any, **_: Any) -> None:
            headers = {
                k.lower(): v.decode() if isinstance(v, bytes) else v
                for k, v in request.headers.items()
            }
            body = request.body
            seen.append((body if isinstance(body, bytes) else body.read(), headers))
            if not isinstance(request.body, bytes):
                request.body.seek(0)

        client.meta.events.register("before-send.s3.PutObject", capture)
        report = _archive(tmp_path, locked_bucket, client, now)
        assert len(seen) == len(report.uploaded) == 4
        for body, headers in seen:
            digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
            assert headers["x-amz-checksum-sha256"] == digest
            assert headers["x-amz-object-lock-mode"] == "COMPLIANCE"
            assert "x-amz-object-lock-retain-until-date" in headers

    def test_endpoint_url_and_empty_prefix(self, tmp_path, endpoint, s3, locked_bucket, now):
        """Without a client one is made from endpoint_url; an empty prefix is the bucket root."""
        _write_bundle(tmp_path, events=10, checkpoints=(10,))
        report = archive_export(
            tmp_path,
            bucket=locked_bucket,
            prefix="/",
            retention_days=1,
            now=now,
            endpoint_url=endpoint,
            region_name=REGION,
        )
        assert report.prefix == ""
        assert _keys_in(s3, locked_bucket) == {SEG0, CP10, "keys.json", "manifest.json"}
        assert report.as_dict()["uploaded_bytes"] == report.uploaded_bytes > 0


# ---------------------------------------------------------------------------- archived manifest


def _download(s3: Any, bucket: str, directory: Path, prefix: str = PREFIX) -> Path:
    """Download the current version of every object under ``prefix`` into ``directory``."""
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")
    for obj in listing["Contents"]:
        dest = directory / obj["Key"].removeprefix(f"{prefix}/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
    return directory


def _archived_manifest(s3: Any, bucket: str) -> dict[str, Any]:
    got = s3.get_object(Bucket=bucket, Key=f"{PREFIX}/manifest.json")["Body"].read()
    doc: dict[str, Any] = json.loads(got)
    return doc


class TestArchivedManifest:
    def test_lists_only_what_the_archive_holds(self, tmp_path, s3, locked_bucket, now):
        """The archived manifest lists the sealed segments and the checkpoints they cover."""
        _write_bundle(tmp_path, events=20, checkpoints=(10, 15))
        cp15 = "pending/checkpoints/000000000015.note"
        report = _archive(tmp_path, locked_bucket, s3, now)
        doc = _archived_manifest(s3, locked_bucket)

        assert report.events == 10 and report.as_dict()["events"] == 10
        assert doc["events"] == 10
        assert [seg["file"] for seg in doc["segments"]] == [SEG0]
        assert (
            doc["segments"][0]
            == json.loads((tmp_path / "manifest.json").read_text())["segments"][0]
        )
        # The checkpoint at 15 is locked in the bucket under pending/ (where a download's
        # verification does not read it), and not listed: events 10..14 are not archived.
        assert doc["checkpoints"] == [CP10]
        assert cp15 in {o.path for o in report.uploaded}
        assert "exported_at" not in doc
        manifest = next(o for o in report.uploaded if o.path == "manifest.json")
        raw = s3.get_object(Bucket=locked_bucket, Key=manifest.key)["Body"].read()
        assert manifest.sha256 == hashlib.sha256(raw).hexdigest()

    def test_nothing_sealed(self, tmp_path, s3, locked_bucket, now):
        """Before any segment is sealed, the archived manifest holds no event."""
        _write_bundle(tmp_path, events=5, checkpoints=(5,))
        report = _archive(tmp_path, locked_bucket, s3, now)
        doc = _archived_manifest(s3, locked_bucket)
        assert report.events == 0
        assert (doc["events"], doc["segments"], doc["checkpoints"]) == (0, [], [])

    def test_segments_must_follow_each_other(self, tmp_path, s3, locked_bucket, now):
        """A manifest whose segments leave a gap is refused before any upload."""
        _write_bundle(tmp_path, events=20, checkpoints=(20,))
        manifest = json.loads((tmp_path / "manifest.json").read_text())
        del manifest["segments"][0]
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(InvalidRequestError, match="starts at event 10, not 0"):
            _archive(tmp_path, locked_bucket, s3, now)
        assert _keys_in(s3, locked_bucket) == set()


class TestDownloadedArchiveVerifies:
    """A real instance's archive, downloaded, verifies as an export (review finding t05)."""

    def _instance(self, home: Path) -> Any:
        from proctor import Proctor
        from proctor.bootstrap import init_home

        init_home(home)
        return Proctor.open(home)

    def _submit(self, p: Any, n: int) -> None:
        from proctor.testing import make_plan

        for _ in range(n):
            p.submit(
                make_plan([("travel.search", {"destination": "Lisbon", "date": "2027-01-01"})])
            )

    def test_roundtrip_and_later_run(self, tmp_path, s3, locked_bucket, now):
        """Archive, download everything, verify: ok with the sealed events; then again, grown."""
        from proctor.audit.export import verify_export

        with self._instance(tmp_path / "home") as p:
            self._submit(p, 3)
            total = p.checkpoint().size
            p.export(tmp_path / "ex1", segment_size=5)
            first = _archive(tmp_path / "ex1", locked_bucket, s3, now)
            assert first.unsealed  # the tail segment is not full: the archive is a prefix
            assert first.events == total // 5 * 5

            dl = _download(s3, locked_bucket, tmp_path / "dl1")
            report = verify_export(dl)
            assert report.ok, report
            assert report.events == first.events
            assert report.detail is None or "truncated" not in report.detail

            self._submit(p, 3)
            grown = p.checkpoint().size
            p.export(tmp_path / "ex2", segment_size=5)
            second = _archive(tmp_path / "ex2", locked_bucket, s3, now)
            assert second.events == grown // 5 * 5 > first.events
            assert "manifest.json" in {o.path for o in second.uploaded}
            assert {o.path for o in first.uploaded if o.path.startswith("events/")} <= {
                o.path for o in second.skipped
            }
            # The checkpoint over the first run's unarchived tail waited under pending/; now
            # that its events are archived it is under checkpoints/ too, and listed.
            pending = [o.path for o in first.uploaded if o.path.startswith("pending/")]
            assert pending
            listed = _archived_manifest(s3, locked_bucket)["checkpoints"]
            for path in pending:
                if int(Path(path).stem) <= second.events:
                    assert path.removeprefix("pending/") in {o.path for o in second.uploaded}
                    assert path.removeprefix("pending/") in listed

            report = verify_export(_download(s3, locked_bucket, tmp_path / "dl2"))
            assert report.ok, report
            assert report.events == second.events
            versions = s3.list_object_versions(
                Bucket=locked_bucket, Prefix=f"{PREFIX}/manifest.json"
            )["Versions"]
            assert len(versions) == 2  # the first manifest stays, locked

            # A run that seals nothing new leaves the manifest as it is.
            p.export(tmp_path / "ex3", segment_size=5)
            third = _archive(tmp_path / "ex3", locked_bucket, s3, now)
            assert "manifest.json" in {o.path for o in third.skipped}


# ---------------------------------------------------------------------------- refusals


class TestRefusals:
    def test_bucket_without_object_lock(self, tmp_path, s3, now):
        """A bucket without Object Lock is refused before anything is uploaded."""
        _write_bundle(tmp_path, events=10, checkpoints=(10,))
        s3.create_bucket(Bucket="plain-bucket")
        with pytest.raises(ConfigError, match="Object Lock") as info:
            _archive(tmp_path, "plain-bucket", s3, now)
        assert info.value.hint and "object-lock" in info.value.hint
        assert _keys_in(s3, "plain-bucket") == set()
        assert not (tmp_path / ARCHIVE_LOG).exists()

    def test_missing_bucket(self, tmp_path, s3, now):
        """A bucket that does not exist is a ConfigError naming the S3 error."""
        _write_bundle(tmp_path, events=10, checkpoints=(10,))
        with pytest.raises(ConfigError, match="NoSuchBucket"):
            _archive(tmp_path, "no-such-bucket-here", s3, now)

    def test_tampered_segment(self, tmp_path, s3, locked_bucket, now):
        """A segment that no longer matches the manifest stops the archive before any upload."""
        _write_bundle(tmp_path, events=20, checkpoints=(20,))
        path = tmp_path / SEG1
        path.write_bytes(path.read_bytes().replace(b'"i":12', b'"i":99'))
        with pytest.raises(AuditIntegrityError, match=SEG1):
            _archive(tmp_path, locked_bucket, s3, now)
        assert _keys_in(s3, locked_bucket) == set()

    def test_different_segment_already_archived(self, tmp_path, s3, locked_bucket, now):
        """Other bytes under a segment's name (another log?) are an integrity error."""
        _write_bundle(tmp_path, events=10, checkpoints=(10,))
        s3.put_object(Bucket=locked_bucket, Key=f"{PREFIX}/{SEG0}", Body=b"other log\n")
        with pytest.raises(AuditIntegrityError, match="different content"):
            _archive(tmp_path, locked_bucket, s3, now)
        assert _keys_in(s3, locked_bucket) == {f"{PREFIX}/{SEG0}"}

    def test_checkpoint_name_and_size_disagree(self, tmp_path, s3, locked_bucket, now):
        """A checkpoint file whose name is not its tree size is refused."""
        _write_bundle(tmp_path, events=20, checkpoints=(10,))
        (tmp_path / CP10).rename(tmp_path / CP20)
        manifest = json.loads((tmp_path / "manifest.json").read_text())
        manifest["checkpoints"] = [CP20]
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(AuditIntegrityError, match="tree size 10"):
            _archive(tmp_path, locked_bucket, s3, now)

    def test_checkpoint_of_another_log(self, tmp_path, s3, locked_bucket, now):
        """A checkpoint whose origin is not the manifest's is refused."""
        _write_bundle(tmp_path, events=10, checkpoints=(10,))
        manifest = json.loads((tmp_path / "manifest.json").read_text())
        manifest["origin"] = "someone.else/log"
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(AuditIntegrityError, match=re.escape("someone.else/log")):
            _archive(tmp_path, locked_bucket, s3, now)

    @pytest.mark.parametrize("bad", ["../outside.jsonl", "/etc/passwd", "events/../../x"])
    def test_paths_stay_inside_the_bundle(self, tmp_path, s3, locked_bucket, now, bad):
        """A manifest cannot point the archiver at files outside the bundle."""
        _write_bundle(tmp_path, events=10, checkpoints=(10,))
        manifest = json.loads((tmp_path / "manifest.json").read_text())
        manifest["segments"][0]["file"] = bad
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(InvalidRequestError, match="leaves the bundle"):
            _archive(tmp_path, locked_bucket, s3, now)

    def test_not_an_export(self, tmp_path, s3, now):
        """A directory without a manifest is not an export."""
        with pytest.raises(InvalidRequestError, match="not a valid audit export"):
            _archive(tmp_path, "any-bucket", s3, now)

    @pytest.mark.parametrize(
        ("kw", "field"),
        [({"retention_days": 0}, "retention_days"), ({"now": datetime(2026, 1, 1)}, "now")],
    )
    def test_bad_arguments(self, tmp_path, s3, now, kw, field):
        """Retention must be at least a day and now timezone-aware."""
        _write_bundle(tmp_path, events=10, checkpoints=(10,))
        with pytest.raises(InvalidRequestError) as info:
            _archive(tmp_path, "any-bucket", s3, **({"now": now} | kw))
        assert info.value.field == field


# ---------------------------------------------------------------------------- URLs


class TestParseS3Url:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("s3://audit-archive/proctor/prod", ("audit-archive", "proctor/prod")),
            ("s3://audit-archive/proctor/prod/", ("audit-archive", "proctor/prod")),
            ("s3://audit.archive.example", ("audit.archive.example", "")),
            ("s3://abc/", ("abc", "")),
        ],
    )
    def test_valid(self, url, expected):
        assert parse_s3_url(url) == expected

    @pytest.mark.parametrize(
        "url",
        [
            "https://audit-archive/x",
            "audit-archive/x",
            "s3://",
            "s3:///prefix",
            "s3://Audit-Archive/x",
            "s3://ab/x",
            "s3://bad_bucket/x",
            "s3://192.168.1.1/x",
            "s3://a..b/x",
            "s3://bucket/a//b",
            "s3://bucket/a/../b",
            "s3://bucket/x?versionId=1",
            "s3://user@bucket/x",
            "s3://bucket:443/x",
        ],
    )
    def test_invalid(self, url):
        with pytest.raises(ConfigError, match="invalid archive URL") as info:
            parse_s3_url(url)
        assert info.value.hint and "s3://" in info.value.hint
