"""Tamper with a real instance's SQLite log and with its export; verification must say where.

One instance is built per module: ``init_home``, checkpoints every 7 events, the six demo
scenarios, a key rotation and a few more plans, a final checkpoint, an export. Each test then edits a *copy*
of the export (files) or of the database (with the ``sqlite3`` module) and checks the exact
first bad index and kind, in full and fast mode.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest

from proctor import Proctor
from proctor.audit.events import KeyInfo, seal
from proctor.audit.export import export_log, verify_export
from proctor.audit.keys import Keyring, LocalSigner
from proctor.audit.note import Checkpoint, sign_note
from proctor.audit.verify import verify_log
from proctor.bootstrap import SystemClock, init_home
from proctor.core.canonical import canonical
from proctor.demo.scenarios import run_all
from proctor.storage import open_store
from proctor.testing import FrozenClock, make_plan


@dataclass(frozen=True)
class Built:
    """The instance after the workload, closed, and its export."""

    home: Path
    db: Path
    export: Path
    origin: str
    keys: dict[str, KeyInfo]
    n: int
    sizes: list[int]
    signer: LocalSigner  # the instance's real key, to sign forged checkpoints


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("tamper")
    home = root / "home"
    init_home(home)
    cfg = home / "config.toml"
    cfg.write_text(re.sub(r"checkpoint_every = \d+", "checkpoint_every = 7", cfg.read_text()))
    p = Proctor.open(home)
    try:
        run_all(p)
        p.rotate_key()  # the export must carry the old key and the new one
        for i in range(3):
            p.submit(
                make_plan(
                    [
                        (
                            "travel.search",
                            {"destination": f"City {i}", "date": f"2027-01-0{i + 1}"},
                        )
                    ],
                    agent_id="travel-bot",
                    intent=f"look for flights, round {i}",
                )
            )
        assert p.gateway.audit_log is not None
        p.gateway.audit_log.checkpoint()
        store = p.gateway.store
        sizes = [c.size for c in store.checkpoints()]
        n = store.event_count()
        assert p.keyring is not None
        export = root / "export"
        export_log(
            store, keys=p.keyring.entries(), origin=p.origin, directory=export, segment_size=10
        )
        built = Built(
            home=home,
            db=home / "proctor.db",
            export=export,
            origin=p.origin,
            keys=p.key_infos,
            n=n,
            sizes=sizes,
            signer=Keyring(home / "keys").local_signer(),
        )
    finally:
        p.close()
    assert len(sizes) >= 5 and sizes[-1] == n and n >= 60
    assert len(built.keys) == 2
    return built


# ---------------------------------------------------------------------------- helpers


def _export_copy(built: Built, tmp_path: Path) -> Path:
    copy = tmp_path / "export"
    shutil.copytree(built.export, copy)
    return copy


def _segments(directory: Path) -> list[Path]:
    doc = json.loads((directory / "manifest.json").read_text())
    return [directory / s["file"] for s in doc["segments"]]


def _edit_lines(directory: Path, edit) -> None:
    """Apply ``edit`` to the list of all event lines and write them back over the segments.

    The segment files keep their names and sizes as far as possible: lines are dealt out
    again in segments of ten, the last one taking the rest.
    """
    files = _segments(directory)
    lines = [line for f in files for line in f.read_bytes().split(b"\n") if line]
    lines = edit(lines)
    for k, f in enumerate(files):
        chunk = lines[k * 10 : (k + 1) * 10] if k + 1 < len(files) else lines[k * 10 :]
        f.write_bytes(b"".join(line + b"\n" for line in chunk))


def _db_copy(built: Built, tmp_path: Path) -> Path:
    copy = tmp_path / "proctor.db"
    shutil.copyfile(built.db, copy)
    for suffix in ("-wal", "-shm"):
        if Path(str(built.db) + suffix).exists():
            shutil.copyfile(str(built.db) + suffix, str(copy) + suffix)
    return copy


def _sql(db: Path, *statements: tuple[str, tuple]) -> None:
    con = sqlite3.connect(db)
    try:
        with con:
            for sql, args in statements:
                con.execute(sql, args)
    finally:
        con.close()


def _row(db: Path, seq: int) -> tuple:
    con = sqlite3.connect(db)
    try:
        return con.execute(
            "SELECT seq, type, plan_id, step_id, ts, body, hash FROM events WHERE seq = ?", (seq,)
        ).fetchone()
    finally:
        con.close()


def _verdicts_db(built: Built, db: Path, keys=None) -> dict[str, tuple]:
    store = open_store(f"sqlite:///{db}")
    try:
        events = list(store.iter_events())
        notes = [c.note for c in store.checkpoints()]
    finally:
        store.close()
    keys = built.keys if keys is None else keys
    out = {}
    for mode, full in (("full", True), ("fast", False)):
        r = verify_log(events, notes, keys, origin=built.origin, full=full)
        out[mode] = (r.problem, r.first_bad_seq)
    return out


def _verdicts_export(directory: Path) -> dict[str, tuple]:
    out = {}
    for mode, full in (("full", True), ("fast", False)):
        r = verify_export(directory, full=full)
        out[mode] = (r.problem, r.first_bad_seq)
    return out


def _both(kind: str, index: int | None) -> dict[str, tuple]:
    return {"full": (kind, index), "fast": (kind, index)}


def _flip_event_id(line: bytes) -> bytes:
    """Change one hex digit of the event id: still canonical JSON, different bytes."""
    at = line.index(b'"event_id":"') + len(b'"event_id":"')
    digit = b"1" if line[at : at + 1] != b"1" else b"2"
    return line[:at] + digit + line[at + 1 :]


def _signed(built: Built, size: int, root: bytes, origin: str | None = None) -> str:
    origin = origin or built.origin
    text = Checkpoint(origin=origin, size=size, root=root).body()
    return sign_note(text, origin, built.signer.sign, built.signer.public_key)


class _Impostor:
    """A real signer claiming the instance's key id while holding another key."""

    def __init__(self, claimed: str) -> None:
        self.key_id = claimed
        self._key = LocalSigner(b"\x09" * 32)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def public_keys(self):
        return {self.key_id: self._key.public_key}


def _forged_next(last_line: bytes, signer, timestamp: str | None = None) -> bytes:
    """An event that chains onto ``last_line`` correctly, signed by ``signer``."""
    last = orjson.loads(last_line)
    body = {
        "type": "step.succeeded",
        "timestamp": timestamp or last["timestamp"],
        "plan_id": last["plan_id"],
        "step_id": None,
        "data": {"forged": True},
    }
    prev = "sha256:" + hashlib.sha256(last_line).hexdigest()
    return seal(body, seq=last["seq"] + 1, prev_hash=prev, signer=signer).body


def _middle(built: Built) -> int:
    """An index inside the log, a few events after a checkpoint and before the next."""
    return built.sizes[2] + 2


# ---------------------------------------------------------------------------- tests


class TestIntact:
    def test_export_verifies_both_modes(self, built):
        """The untouched export verifies in full and fast mode."""
        for full in (True, False):
            report = verify_export(built.export, full=full)
            assert report.ok and report.events == built.n and report.detail is None

    def test_database_verifies_both_modes(self, built, tmp_path):
        """The untouched database verifies in full and fast mode."""
        assert _verdicts_db(built, _db_copy(built, tmp_path)) == _both(None, None)

    def test_copied_elsewhere_without_instance(self, built, tmp_path):
        """A copy of the export verifies in a fresh interpreter with no home, config or DB."""
        copy = tmp_path / "far" / "away"
        shutil.copytree(built.export, copy)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROCTOR_")}
        env["HOME"] = str(tmp_path)
        code = (
            "import json, sys, pathlib\n"
            "from proctor.audit.export import verify_export\n"
            "r = verify_export(pathlib.Path(sys.argv[1]), full=True)\n"
            "print(json.dumps(r.as_dict()))\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, str(copy)],
            capture_output=True,
            text=True,
            cwd=copy,
            env=env,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {
            "ok": True,
            "events": built.n,
            "first_bad_seq": None,
            "problem": None,
        }


class TestModified:
    def test_export(self, built, tmp_path):
        """An edited event in an export is modified at its index."""
        i = _middle(built)
        d = _export_copy(built, tmp_path)
        _edit_lines(d, lambda ls: [*ls[:i], _flip_event_id(ls[i]), *ls[i + 1 :]])
        assert _verdicts_export(d) == _both("modified", i)

    def test_export_last_event(self, built, tmp_path):
        """The last event has no successor; the final checkpoint still pins it."""
        d = _export_copy(built, tmp_path)
        _edit_lines(d, lambda ls: [*ls[:-1], _flip_event_id(ls[-1])])
        assert _verdicts_export(d) == _both("modified", built.n - 1)

    def test_database(self, built, tmp_path):
        """An event body edited in SQLite is modified at its index."""
        i = _middle(built)
        db = _db_copy(built, tmp_path)
        body = _row(db, i)[5]
        _sql(db, ("UPDATE events SET body = ? WHERE seq = ?", (_flip_event_id(body), i)))
        assert _verdicts_db(built, db) == _both("modified", i)

    def test_database_rehashed(self, built, tmp_path):
        """Editing the body and its stored hash too does not help: the next event commits."""
        i = _middle(built)
        db = _db_copy(built, tmp_path)
        body = _flip_event_id(_row(db, i)[5])
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        _sql(db, ("UPDATE events SET body = ?, hash = ? WHERE seq = ?", (body, digest, i)))
        assert _verdicts_db(built, db) == _both("modified", i)

    def test_database_last_event(self, built, tmp_path):
        """The last event in SQLite is pinned by its stored hash."""
        db = _db_copy(built, tmp_path)
        last = built.n - 1
        body = _row(db, last)[5]
        _sql(db, ("UPDATE events SET body = ? WHERE seq = ?", (_flip_event_id(body), last)))
        assert _verdicts_db(built, db) == _both("modified", last)

    @pytest.mark.parametrize(
        ("column", "value"), [("plan_id", "p-elsewhere"), ("type", "step.failed"), ("ts", "x")]
    )
    def test_database_columns(self, built, tmp_path, column, value):
        """A per-plan column rewritten under intact bytes hides nothing: modified at its seq."""
        i = _middle(built)
        db = _db_copy(built, tmp_path)
        _sql(db, (f"UPDATE events SET {column} = ? WHERE seq = ?", (value, i)))
        assert _verdicts_db(built, db) == _both("modified", i)


class TestDeleted:
    def test_export(self, built, tmp_path):
        """A line removed from an export is deleted at its index."""
        i = _middle(built)
        d = _export_copy(built, tmp_path)
        _edit_lines(d, lambda ls: ls[:i] + ls[i + 1 :])
        assert _verdicts_export(d) == _both("deleted", i)

    def test_database(self, built, tmp_path):
        """A row deleted in SQLite is deleted at its index."""
        i = _middle(built)
        db = _db_copy(built, tmp_path)
        _sql(db, ("DELETE FROM events WHERE seq = ?", (i,)))
        assert _verdicts_db(built, db) == _both("deleted", i)


class TestInserted:
    def test_export(self, built, tmp_path):
        """A duplicated line is inserted where the copy sits."""
        i = _middle(built)
        d = _export_copy(built, tmp_path)
        _edit_lines(d, lambda ls: [*ls[: i + 1], ls[i], *ls[i + 1 :]])
        assert _verdicts_export(d) == _both("inserted", i + 1)

    def test_database(self, built, tmp_path):
        """A copy of a row slipped in after it (later rows renumbered) is inserted."""
        i = _middle(built)
        db = _db_copy(built, tmp_path)
        row = _row(db, i)
        _sql(
            db,
            ("UPDATE events SET seq = seq + 1000000 WHERE seq > ?", (i,)),
            ("UPDATE events SET seq = seq - 999999 WHERE seq > 1000000", ()),
            (
                "INSERT INTO events (seq, type, plan_id, step_id, ts, body, hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (i + 1, *row[1:7]),
            ),
        )
        assert _verdicts_db(built, db) == _both("inserted", i + 1)


class TestReordered:
    def test_export(self, built, tmp_path):
        """Two swapped lines are reordered at the first of them."""
        i = _middle(built)
        d = _export_copy(built, tmp_path)
        _edit_lines(d, lambda ls: [*ls[:i], ls[i + 1], ls[i], *ls[i + 2 :]])
        assert _verdicts_export(d) == _both("reordered", i)

    def test_database(self, built, tmp_path):
        """Two rows whose contents are swapped in SQLite are reordered at the first."""
        i = _middle(built)
        db = _db_copy(built, tmp_path)
        a, b = _row(db, i), _row(db, i + 1)
        update = "UPDATE events SET type = ?, plan_id = ?, step_id = ?, ts = ?, body = ?, hash = ? WHERE seq = ?"
        _sql(db, (update, (*b[1:], i)), (update, (*a[1:], i + 1)))
        assert _verdicts_db(built, db) == _both("reordered", i)


class TestTruncated:
    def test_export_lines_removed(self, built, tmp_path):
        """The last segment cut short by two lines: truncated at the first missing."""
        d = _export_copy(built, tmp_path)
        _edit_lines(d, lambda ls: ls[:-2])
        assert _verdicts_export(d) == _both("truncated", built.n - 2)

    def test_export_cut_mid_line(self, built, tmp_path):
        """The last segment cut inside a line: that event is missing."""
        d = _export_copy(built, tmp_path)
        last = _segments(d)[-1]
        data = last.read_bytes()
        last.write_bytes(data[: len(data) - 100])
        assert _verdicts_export(d) == _both("truncated", built.n - 1)

    def test_database(self, built, tmp_path):
        """The last rows deleted in SQLite: truncated at the first missing."""
        db = _db_copy(built, tmp_path)
        _sql(db, ("DELETE FROM events WHERE seq >= ?", (built.n - 3,)))
        assert _verdicts_db(built, db) == _both("truncated", built.n - 3)


class TestBadSignature:
    def test_export_forged_append(self, built, tmp_path):
        """A forged event appended after the last checkpoint: bad_signature in full mode."""
        d = _export_copy(built, tmp_path)
        impostor = _Impostor(next(iter(built.keys)))
        _edit_lines(d, lambda ls: [*ls, _forged_next(ls[-1], impostor)])
        v = _verdicts_export(d)
        assert v["full"] == ("bad_signature", built.n)
        assert v["fast"] == (None, None)  # fast mode verifies no event signature

    def test_database_forged_append(self, built, tmp_path):
        """The same forgery written into SQLite is found at the same index."""
        db = _db_copy(built, tmp_path)
        last = _row(db, built.n - 1)
        body = _forged_next(last[5], _Impostor(next(iter(built.keys))))
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        forged = json.loads(body)  # its columns agree with it: only the signature is wrong
        _sql(
            db,
            (
                "INSERT INTO events (seq, type, plan_id, step_id, ts, body, hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    built.n,
                    forged["type"],
                    forged["plan_id"],
                    forged["step_id"],
                    forged["timestamp"],
                    body,
                    digest,
                ),
            ),
        )
        v = _verdicts_db(built, db)
        assert v["full"] == ("bad_signature", built.n)
        assert v["fast"] == (None, None)


class TestUnknownKey:
    def test_export_key_removed(self, built, tmp_path):
        """keys.json without the instance key: unknown_key at the first event."""
        d = _export_copy(built, tmp_path)
        path = d / "keys.json"
        doc = json.loads(path.read_text())
        path.write_text(json.dumps(doc | {"keys": [], "vkeys": []}))
        assert _verdicts_export(d) == _both("unknown_key", 0)

    def test_export_foreign_key_appended(self, built, tmp_path):
        """An appended event signed by a key outside keys.json: unknown_key at its index."""
        d = _export_copy(built, tmp_path)
        _edit_lines(d, lambda ls: [*ls, _forged_next(ls[-1], LocalSigner(b"\x0a" * 32))])
        assert _verdicts_export(d) == _both("unknown_key", built.n)

    def test_database_without_keys(self, built, tmp_path):
        """Verifying the database with an empty keyring: unknown_key at 0."""
        assert _verdicts_db(built, _db_copy(built, tmp_path), keys={}) == _both("unknown_key", 0)


class TestBadCheckpoint:
    def test_export_signature_tampered(self, built, tmp_path):
        """A checkpoint note whose signature was altered: bad_checkpoint at its size - 1."""
        d = _export_copy(built, tmp_path)
        size = built.sizes[1]
        path = d / f"checkpoints/{size:012d}.note"
        text, _, line = path.read_text().rstrip("\n").rpartition("\n")
        name, blob = line.rsplit(" ", 1)
        raw = bytearray(base64.b64decode(blob))
        raw[10] ^= 0x40
        path.write_text(f"{text}\n{name} {base64.b64encode(bytes(raw)).decode()}\n")
        assert _verdicts_export(d) == _both("bad_checkpoint", size - 1)

    def test_export_wrong_root_at_the_end(self, built, tmp_path):
        """The final checkpoint signed over a root the (valid) events do not have."""
        d = _export_copy(built, tmp_path)
        path = d / f"checkpoints/{built.n:012d}.note"
        path.write_text(_signed(built, built.n, b"\x11" * 32))
        assert _verdicts_export(d) == _both("bad_checkpoint", built.n - 1)

    def test_export_foreign_origin(self, built, tmp_path):
        """A checkpoint of another log in the bundle: bad_checkpoint."""
        d = _export_copy(built, tmp_path)
        size = built.sizes[2]
        path = d / f"checkpoints/{size:012d}.note"
        path.write_text(_signed(built, size, b"\x11" * 32, origin="other.example/log"))
        assert _verdicts_export(d) == _both("bad_checkpoint", size - 1)

    def test_database_note_edited(self, built, tmp_path):
        """A checkpoint note in SQLite whose size line was changed: bad_checkpoint."""
        db = _db_copy(built, tmp_path)
        size = built.sizes[1]
        con = sqlite3.connect(db)
        note = con.execute("SELECT note FROM checkpoints WHERE size = ?", (size,)).fetchone()[0]
        con.close()
        edited = note.replace(f"\n{size}\n", f"\n{size - 1}\n", 1)
        _sql(db, ("UPDATE checkpoints SET note = ? WHERE size = ?", (edited, size)))
        assert _verdicts_db(built, db) == _both("bad_checkpoint", size - 2)


class TestInconsistentCheckpoints:
    def test_export_same_size_other_root(self, built, tmp_path):
        """A second signed checkpoint at one size with another root."""
        d = _export_copy(built, tmp_path)
        size = built.sizes[2]
        (d / "checkpoints/extra.note").write_text(_signed(built, size, b"\x22" * 32))
        manifest = d / "manifest.json"
        doc = json.loads(manifest.read_text())
        doc["checkpoints"].append("checkpoints/extra.note")
        manifest.write_text(json.dumps(doc))
        assert _verdicts_export(d) == _both("inconsistent_checkpoints", size - 1)

    def test_export_split_view(self, built, tmp_path):
        """An earlier signed checkpoint that the later ones (and the events) do not extend."""
        d = _export_copy(built, tmp_path)
        size = built.sizes[1]
        (d / f"checkpoints/{size:012d}.note").write_text(_signed(built, size, b"\x33" * 32))
        assert _verdicts_export(d) == _both("inconsistent_checkpoints", size - 1)

    def test_database_split_view(self, built, tmp_path):
        """The same split view stored in SQLite."""
        db = _db_copy(built, tmp_path)
        size = built.sizes[1]
        note = _signed(built, size, b"\x33" * 32)
        _sql(db, ("UPDATE checkpoints SET note = ? WHERE size = ?", (note, size)))
        assert _verdicts_db(built, db) == _both("inconsistent_checkpoints", size - 1)


def test_canonical_edit_helper_keeps_json_canonical(built):
    """The tampering helper changes bytes but keeps canonical JSON (a realistic edit)."""
    line = (_segments(built.export)[0]).read_bytes().split(b"\n")[0]
    edited = _flip_event_id(line)
    assert edited != line and canonical(orjson.loads(edited)) == edited


# ---------------------------------------------------------------------------- time order


@dataclass(frozen=True)
class Dated:
    """An instance whose key was rotated an hour into its log, with the keys to forge with."""

    home: Path
    export: Path
    n: int
    rotated_at: datetime
    retired: LocalSigner  # stolen before the rotation deleted its private key file
    current: LocalSigner


def _search(i: int):
    return make_plan(
        [("travel.search", {"destination": f"City {i}", "date": "2027-02-01"})],
        agent_id="travel-bot",
        intent=f"look for flights, round {i}",
    )


@pytest.fixture(scope="module")
def dated(tmp_path_factory: pytest.TempPathFactory) -> Dated:
    root = tmp_path_factory.mktemp("dated")
    home = root / "home"
    init_home(home)
    clock = FrozenClock(SystemClock().now())  # not before the first key's created_at
    p = Proctor.open(home, clock=clock)
    try:
        p.submit(_search(0))
        clock.advance(timedelta(hours=1))
        retired = Keyring(home / "keys").local_signer()
        p.rotate_key()  # the retired key stays valid for the 5-minute grace
        rotated_at = clock.now()
    finally:
        p.close()
    clock.advance(timedelta(hours=1))
    # Reopened: a running signer picks the new key up within a second of real time.
    p = Proctor.open(home, clock=clock)
    try:
        p.submit(_search(1))
        assert p.gateway.audit_log is not None
        p.gateway.audit_log.checkpoint()
        assert p.keyring is not None
        export = root / "export"
        export_log(
            p.gateway.store,
            keys=p.keyring.entries(),
            origin=p.origin,
            directory=export,
            segment_size=10,
        )
        n = p.gateway.store.event_count()
    finally:
        p.close()
    return Dated(
        home=home,
        export=export,
        n=n,
        rotated_at=rotated_at,
        retired=retired,
        current=Keyring(home / "keys").local_signer(),
    )


def _append_row(db: Path, seq: int, body: bytes) -> None:
    """Append ``body`` to the events table, its columns and hash agreeing with it."""
    event = json.loads(body)
    _sql(
        db,
        (
            "INSERT INTO events (seq, type, plan_id, step_id, ts, body, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
                event["type"],
                event["plan_id"],
                event["step_id"],
                event["timestamp"],
                body,
                "sha256:" + hashlib.sha256(body).hexdigest(),
            ),
        ),
    )


class TestTimestampRegression:
    """A retired key appending events dated inside its validity is caught by the time order."""

    def test_the_dated_log_verifies(self, dated):
        """The log and its export, in time order across the rotation, verify."""
        assert _verdicts_export(dated.export) == _both(None, None)

    def test_export_backdated_append_with_a_retired_key(self, dated, tmp_path):
        """An event signed by the retired key, dated inside its grace, appended to the export.

        Key and signature verify; the event is an hour older than the log's latest.
        """
        d = _export_copy(dated, tmp_path)
        when = (dated.rotated_at + timedelta(minutes=4)).isoformat()
        _edit_lines(d, lambda ls: [*ls, _forged_next(ls[-1], dated.retired, when)])

        report = verify_export(d, full=True)

        assert (report.problem, report.first_bad_seq) == ("timestamp_regression", dated.n)
        assert when in report.detail
        assert verify_export(d, full=False).ok  # fast mode checks no key validity or time

    def test_database_backdated_append_with_a_retired_key(self, dated, tmp_path):
        """The same forgery written into the live log's database is found at the same seq."""
        home = tmp_path / "home"
        shutil.copytree(dated.home, home)
        db = home / "proctor.db"
        when = (dated.rotated_at + timedelta(minutes=4)).isoformat()
        _append_row(db, dated.n, _forged_next(_row(db, dated.n - 1)[5], dated.retired, when))

        p = Proctor.open(home)
        try:
            report = p.verify()
            allowed = p.verify(max_clock_skew=timedelta(hours=2))
        finally:
            p.close()

        assert (report.problem, report.first_bad_seq) == ("timestamp_regression", dated.n)
        assert allowed.ok  # two hours of allowed skew cover the forgery: the default matters

    @pytest.mark.cli
    def test_cli_reports_the_regression(self, dated, tmp_path, cli):
        """`proctor audit verify` exits 1 with the reason; --max-clock-skew widens the allowance."""
        home = tmp_path / "home"
        shutil.copytree(dated.home, home)
        db = home / "proctor.db"
        when = (dated.rotated_at + timedelta(minutes=4)).isoformat()
        _append_row(db, dated.n, _forged_next(_row(db, dated.n - 1)[5], dated.retired, when))

        as_json = cli("audit", "verify", "--json", home=home)
        text = cli("audit", "verify", home=home)
        wide = cli("audit", "verify", "--max-clock-skew", "7200", "--json", home=home)

        assert as_json.code == 1, str(as_json)
        doc = as_json.json()
        assert (doc["ok"], doc["problem"], doc["first_bad_seq"]) == (
            False,
            "timestamp_regression",
            dated.n,
        )
        assert "clock skew of 300 s" in doc["detail"]
        assert text.code == 1 and "timestamp_regression" in text.out, str(text)
        assert wide.code == 0 and wide.json()["ok"], str(wide)

    @pytest.mark.cli
    def test_a_regression_within_the_skew_passes(self, dated, tmp_path, cli):
        """Thirty seconds back passes by default; with --max-clock-skew 10 it fails."""
        d = _export_copy(dated, tmp_path)
        last = datetime.fromisoformat(
            orjson.loads(_segments(d)[-1].read_bytes().splitlines()[-1])["timestamp"]
        )
        when = (last - timedelta(seconds=30)).isoformat()
        _edit_lines(d, lambda ls: [*ls, _forged_next(ls[-1], dated.current, when)])

        default = cli("audit", "verify", "--export", d, "--json")
        strict = cli("audit", "verify", "--export", d, "--max-clock-skew", "10", "--json")
        negative = cli("audit", "verify", "--export", d, "--max-clock-skew", "-1")
        # Not numbers of seconds: a usage error, not a traceback (nan passed the range check).
        odd = [cli("audit", "verify", "--export", d, "--max-clock-skew", v) for v in ("nan", "inf")]

        assert default.code == 0 and default.json()["events"] == dated.n + 1, str(default)
        assert strict.code == 1, str(strict)
        assert (strict.json()["problem"], strict.json()["first_bad_seq"]) == (
            "timestamp_regression",
            dated.n,
        )
        assert negative.code == 2, str(negative)
        assert [r.code for r in odd] == [2, 2], [str(r) for r in odd]
        assert all("Traceback" not in r.err for r in odd)
