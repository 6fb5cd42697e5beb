"""export_log and verify_export: the self-contained bundle, written and checked offline."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime, timedelta

import pytest

from proctor.app.auditlog import AuditLog, CheckpointPolicy
from proctor.app.journal import Journal
from proctor.audit.export import FORMAT, export_log, verify_export
from proctor.audit.keys import KeyEntry, LocalSigner
from proctor.audit.note import vkey
from proctor.errors import InvalidRequestError
from proctor.storage import open_store
from proctor.testing import FrozenClock

ORIGIN = "example.com/export-test"
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


class _Log:
    """A real store with a journal, an audit log and checkpoints every ``every`` events."""

    def __init__(self, events: int, *, every: int = 4, url: str = "memory://") -> None:
        self.store = open_store(url)
        self.signer = LocalSigner(b"\x05" * 32)
        self.clock = FrozenClock(START)
        self.log = AuditLog(
            self.store,
            self.signer,
            self.clock,
            origin=ORIGIN,
            policy=CheckpointPolicy(every=every, interval=timedelta(days=1)),
        )
        self.log.open()
        self.keys = [
            KeyEntry(key_id=self.signer.key_id, public_key=self.signer.public_key, created_at=START)
        ]
        self.append(events)
        self.log.checkpoint()

    def append(self, n: int) -> None:
        for i in range(n):
            self.clock.advance(1)
            with self.store.transaction() as tx:
                journal = Journal(tx, self.signer, self.clock, log=self.log)
                journal.emit("test.event", data={"i": i}, actor={"type": "service", "name": "t"})
                journal.flush()

    def export(self, directory, **kw):
        return export_log(self.store, keys=self.keys, origin=ORIGIN, directory=directory, **kw)


@pytest.fixture(scope="module")
def log() -> _Log:
    return _Log(23)


@pytest.fixture
def bundle(log, tmp_path):
    directory = tmp_path / "export"
    log.export(directory, segment_size=10)
    return directory


def _manifest(directory):
    return json.loads((directory / "manifest.json").read_text())


class TestExportLog:
    def test_layout(self, log, tmp_path):
        """The bundle holds the manifest, segments, checkpoint notes and keys as specified."""
        directory = tmp_path / "out"
        m = log.export(directory, segment_size=10, now=START)
        doc = _manifest(directory)
        assert doc == m.as_dict()
        assert doc["format"] == FORMAT and doc["origin"] == ORIGIN and doc["events"] == 23
        assert doc["exported_at"] == START.isoformat()
        assert [(s["file"], s["first"], s["last"], s["count"]) for s in doc["segments"]] == [
            ("events/000000000000-000000000009.jsonl", 0, 9, 10),
            ("events/000000000010-000000000019.jsonl", 10, 19, 10),
            ("events/000000000020-000000000022.jsonl", 20, 22, 3),
        ]
        for seg in doc["segments"]:
            data = (directory / seg["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == seg["sha256"]
        assert sorted(p.name for p in directory.iterdir()) == [
            "checkpoints",
            "events",
            "keys.json",
            "manifest.json",
        ]

    def test_lines_are_the_stored_bytes(self, log, bundle):
        """Each line is exactly an event's stored leaf bytes and a newline."""
        data = b"".join((bundle / s["file"]).read_bytes() for s in _manifest(bundle)["segments"])
        assert data == b"".join(r.body + b"\n" for r in log.store.iter_events())

    def test_checkpoints_exactly_as_signed(self, log, bundle):
        """Every stored checkpoint note is written verbatim under its 12-digit size."""
        names = _manifest(bundle)["checkpoints"]
        stored = log.store.checkpoints()
        assert names == [f"checkpoints/{c.size:012d}.note" for c in stored]
        assert [(bundle / n).read_text() for n in names] == [c.note for c in stored]
        assert len(names) >= 5

    def test_keys(self, log, bundle):
        """keys.json has the origin, every key entry and its vkey."""
        doc = json.loads((bundle / "keys.json").read_text())
        assert doc == {
            "origin": ORIGIN,
            "keys": [k.as_dict() for k in log.keys],
            "vkeys": [vkey(ORIGIN, log.signer.public_key)],
        }

    def test_no_exported_at_without_now(self, bundle):
        """Without ``now`` the manifest has no time (the library reads no clock)."""
        assert "exported_at" not in _manifest(bundle)

    def test_refuses_non_empty_directory(self, log, tmp_path):
        """An export never writes into a directory that holds anything."""
        directory = tmp_path / "busy"
        directory.mkdir()
        (directory / "keep.txt").write_text("mine")
        with pytest.raises(InvalidRequestError, match=str(directory)) as err:
            log.export(directory)
        assert err.value.field == "directory"
        assert sorted(p.name for p in directory.iterdir()) == ["keep.txt"]

    def test_refuses_a_file(self, log, tmp_path):
        """The target must be a directory."""
        target = tmp_path / "file"
        target.write_text("x")
        with pytest.raises(InvalidRequestError, match="not a directory"):
            log.export(target)

    def test_empty_existing_directory_and_progress(self, log, tmp_path):
        """An existing empty directory is fine; progress counts events per segment."""
        directory = tmp_path / "empty"
        directory.mkdir()
        seen: list[int] = []
        log.export(directory, segment_size=10, progress=seen.append)
        assert seen == [10, 20, 23]

    def test_empty_log(self, tmp_path):
        """An empty log exports to an empty, valid bundle."""
        empty = _Log(0)
        m = empty.export(tmp_path / "e")
        assert (m.events, m.segments, m.checkpoints) == (0, (), ())
        assert verify_export(tmp_path / "e").ok

    def test_bad_segment_size(self, log, tmp_path):
        """Segments hold at least one event."""
        with pytest.raises(InvalidRequestError):
            log.export(tmp_path / "x", segment_size=0)


class TestVerifyExport:
    def test_intact_both_modes(self, bundle):
        """An untouched bundle verifies in full and fast mode."""
        for full in (True, False):
            report = verify_export(bundle, full=full)
            assert report.ok and report.events == 23 and report.detail is None

    def test_sqlite_store(self, tmp_path):
        """A SQLite-backed log exports and verifies the same way."""
        log = _Log(12, url=f"sqlite:///{tmp_path / 'p.db'}")
        log.export(tmp_path / "x", segment_size=5)
        assert verify_export(tmp_path / "x").ok
        log.store.close()

    def test_missing_manifest(self, bundle):
        """Without manifest.json the bundle is not verifiable: ok is false, no index."""
        (bundle / "manifest.json").unlink()
        report = verify_export(bundle)
        assert (report.ok, report.problem, report.first_bad_seq) == (False, "modified", None)
        assert "manifest.json" in report.detail

    @pytest.mark.parametrize(
        "doc",
        [
            "not json",
            json.dumps({"format": "other/1"}),
            json.dumps({"format": FORMAT, "origin": ORIGIN, "segments": {}, "checkpoints": []}),
            json.dumps(
                {
                    "format": FORMAT,
                    "origin": ORIGIN,
                    "segments": [{"file": "../x", "first": 0, "count": 1, "sha256": ""}],
                    "checkpoints": [],
                }
            ),
        ],
    )
    def test_malformed_manifest(self, bundle, doc):
        """A malformed manifest is reported, never a crash."""
        (bundle / "manifest.json").write_text(doc)
        report = verify_export(bundle)
        assert (report.ok, report.problem) == (False, "modified")

    def test_missing_middle_segment(self, bundle):
        """A missing segment's events are deleted, from its first index."""
        (bundle / "events/000000000010-000000000019.jsonl").unlink()
        report = verify_export(bundle)
        assert (report.problem, report.first_bad_seq) == ("deleted", 10)
        assert "missing" in report.detail

    def test_missing_last_segment(self, bundle):
        """A missing last segment is truncation at its first index."""
        (bundle / "events/000000000020-000000000022.jsonl").unlink()
        for full in (True, False):
            report = verify_export(bundle, full=full)
            assert (report.problem, report.first_bad_seq) == ("truncated", 20)

    def test_missing_checkpoint_file(self, bundle):
        """A checkpoint note listed but absent is bad_checkpoint at its size - 1."""
        name = _manifest(bundle)["checkpoints"][1]
        (bundle / name).unlink()
        report = verify_export(bundle)
        assert (report.problem, report.first_bad_seq) == ("bad_checkpoint", int(name[12:24]) - 1)

    def test_missing_keys(self, bundle):
        """Without keys.json nothing can be trusted: unknown_key at the first event."""
        (bundle / "keys.json").unlink()
        report = verify_export(bundle)
        assert (report.problem, report.first_bad_seq) == ("unknown_key", 0)
        assert "keys.json is missing" in report.detail

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            (lambda d: "{not json", "keys.json:(file)"),
            (lambda d: json.dumps(d | {"keys": "x"}), "keys.json:keys"),
            (lambda d: json.dumps(d | {"origin": "other"}), "keys.json:origin"),
            (
                lambda d: json.dumps(d | {"keys": [d["keys"][0] | {"public_key": "AAAA"}]}),
                "keys.json:keys[0].public_key",
            ),
            (
                lambda d: json.dumps(d | {"keys": [d["keys"][0] | {"created_at": 5}]}),
                "keys.json:keys[0].created_at",
            ),
            (
                lambda d: json.dumps(d | {"keys": [d["keys"][0] | {"created_at": "yesterday"}]}),
                "keys.json:keys[0]",
            ),
            (lambda d: json.dumps(d | {"vkeys": ["nope"]}), "keys.json:vkeys[0]"),
        ],
    )
    def test_malformed_keys(self, bundle, change, field):
        """A malformed keys.json raises a ProctorError naming the field."""
        path = bundle / "keys.json"
        path.write_text(change(json.loads(path.read_text())))
        with pytest.raises(InvalidRequestError) as err:
            verify_export(bundle)
        assert err.value.field == field

    def test_hash_mismatch_is_not_the_verdict(self, bundle):
        """A changed segment is judged by its content; the detail names the hash mismatch."""
        seg = bundle / "events/000000000010-000000000019.jsonl"
        lines = seg.read_bytes().split(b"\n")
        lines[3], lines[4] = lines[4], lines[3]
        seg.write_bytes(b"\n".join(lines))
        report = verify_export(bundle)
        assert (report.problem, report.first_bad_seq) == ("reordered", 13)
        assert "SHA-256" in report.detail

    def test_manifest_hash_wrong_but_content_intact(self, bundle):
        """Intact events with a wrong hash in the manifest verify, with a remark."""
        doc = _manifest(bundle)
        doc["segments"][0]["sha256"] = "0" * 64
        (bundle / "manifest.json").write_text(json.dumps(doc))
        report = verify_export(bundle)
        assert report.ok and "SHA-256" in report.detail

    def test_cut_mid_line(self, bundle):
        """A last segment cut inside a line lost that event: truncated at its index."""
        seg = bundle / "events/000000000020-000000000022.jsonl"
        data = seg.read_bytes()
        seg.write_bytes(data[: len(data) - 40])
        report = verify_export(bundle)
        assert (report.problem, report.first_bad_seq) == ("truncated", 22)
        assert "cut short" in report.detail

    def test_lost_final_newline_only(self, bundle):
        """A complete last line without its newline still counts as the event."""
        seg = bundle / "events/000000000020-000000000022.jsonl"
        seg.write_bytes(seg.read_bytes()[:-1])
        report = verify_export(bundle)
        assert report.ok and "without a newline" in report.detail

    def test_copied_elsewhere(self, bundle, tmp_path):
        """The bundle needs nothing but itself: a copy verifies anywhere."""
        copy = tmp_path / "elsewhere" / "copy"
        shutil.copytree(bundle, copy)
        shutil.rmtree(bundle)
        assert verify_export(copy).ok


class TestUnsignedManifestEdits:
    """The manifest is not signed: what it leaves out, or misnames, still counts."""

    @staticmethod
    def _cut_last_segment(bundle, keep):
        """Keep ``keep`` lines of the last segment and make the manifest agree."""
        doc = _manifest(bundle)
        seg = doc["segments"][-1]
        path = bundle / seg["file"]
        data = b"".join(line + b"\n" for line in path.read_bytes().splitlines()[:keep])
        path.write_bytes(data)
        seg.update(
            count=keep, last=seg["first"] + keep - 1, sha256=hashlib.sha256(data).hexdigest()
        )
        doc["events"] = seg["first"] + keep
        doc["checkpoints"] = [c for c in doc["checkpoints"] if int(c[12:24]) <= doc["events"]]
        (bundle / "manifest.json").write_text(json.dumps(doc))
        return doc["events"]

    def test_an_unlisted_checkpoint_note_still_binds(self, bundle):
        """Tail and covering notes dropped from the manifest (files left): truncated."""
        n = self._cut_last_segment(bundle, 1)

        for full in (True, False):
            report = verify_export(bundle, full=full)
            assert (report.problem, report.first_bad_seq) == ("truncated", n)
            assert "not listed in the manifest" in report.detail

    def test_a_segment_shorter_than_its_name(self, bundle):
        """A segment named for events 20-22 that holds 20-20 is truncated at 21."""
        n = self._cut_last_segment(bundle, 1)
        for note in (bundle / "checkpoints").glob("*.note"):
            if int(note.stem) > n:
                note.unlink()

        report = verify_export(bundle)

        assert (report.problem, report.first_bad_seq) == ("truncated", n)
        assert "is named for events 20-22 but holds 20-20" in report.detail

    def test_an_unlisted_segment_is_read(self, bundle):
        """A segment left out of the manifest is read: the log is not silently shorter."""
        doc = _manifest(bundle)
        doc["segments"] = doc["segments"][:-1]
        (bundle / "manifest.json").write_text(json.dumps(doc))

        report = verify_export(bundle)

        assert report.events == 23
        assert "events/000000000020-000000000022.jsonl is not listed" in report.detail
