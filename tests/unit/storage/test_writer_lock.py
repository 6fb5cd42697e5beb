"""SQLite writers take turns on ``<db>-lock`` (flock) before SQLite's own write lock."""

from __future__ import annotations

import fcntl
import os
import threading
import time

import pytest

from proctor.storage.sqlite import SqliteStore


def test_a_second_store_waits_in_flock_and_goes_on_when_the_first_commits(tmp_path):
    """Two stores on one file (two processes' worth of descriptors): the second writer
    blocks on the lock file, not in SQLite's busy handler, and writes once the first
    has committed."""
    path = str(tmp_path / "p.db")
    first, second = SqliteStore(path), SqliteStore(path)
    order: list[str] = []
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with first.transaction() as tx:
            tx.put_meta("who", "first")
            holding.set()
            release.wait(10)
            order.append("first committed")

    def write() -> None:
        holding.wait(10)
        with second.transaction() as tx:
            order.append("second began")
            tx.put_meta("who", "second")

    try:
        t1, t2 = threading.Thread(target=hold), threading.Thread(target=write)
        t1.start()
        t2.start()
        holding.wait(10)
        t2.join(0.3)
        assert t2.is_alive()  # waiting for the first writer
        probe = os.open(path + "-lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # the lock file is what is held
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(probe)
        release.set()
        t1.join(10)
        t2.join(10)
        assert order == ["first committed", "second began"]
        assert first.get_meta("who") == "second"
    finally:
        release.set()
        first.close()
        second.close()


def test_the_lock_is_released_after_a_rollback(tmp_path):
    """A failed transaction leaves the lock free for the next writer."""
    path = str(tmp_path / "p.db")
    store = SqliteStore(path)
    try:

        def fail() -> None:
            with store.transaction() as tx:
                tx.put_meta("k", "v")
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            fail()
        probe = os.open(path + "-lock", os.O_RDWR)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: does not raise
            fcntl.flock(probe, fcntl.LOCK_UN)
        finally:
            os.close(probe)
        assert store.get_meta("k") is None
    finally:
        store.close()


def test_a_read_only_directory_falls_back_to_sqlite_locking(tmp_path, monkeypatch):
    """Without a lock file (it cannot be created) the store still writes."""
    from proctor.storage import sqlite as sqlite_module

    real_open = os.open

    def refuse_lock_file(path: str, *args: int) -> int:
        if str(path).endswith("-lock"):
            raise PermissionError(13, "read-only directory", path)
        return real_open(path, *args)

    monkeypatch.setattr(sqlite_module.os, "open", refuse_lock_file)
    store = SqliteStore(str(tmp_path / "p.db"))
    try:
        assert store._flock_fd is None
        with store.transaction() as tx:
            tx.put_meta("k", "v")
        assert store.get_meta("k") == "v"
    finally:
        store.close()


def test_the_wal_checkpointer_keeps_the_wal_short_between_writes(tmp_path):
    """With ``checkpoint_wal`` running beside a writer, the WAL is copied and started again
    from its beginning: it stays far below the writers' own autocheckpoint (10,000 pages)."""
    from proctor.storage.sqlite import checkpoint_wal

    path = str(tmp_path / "p.db")
    store = SqliteStore(path)
    done = threading.Event()
    copied: list[int] = []
    checkpointer = threading.Thread(
        target=lambda: copied.append(checkpoint_wal(path, stop=done.is_set, interval=0.005))
    )
    checkpointer.start()
    try:
        blob = "x" * 12_000  # about three pages a commit
        for i in range(4000):  # about 12,000 pages in all
            with store.transaction(durable=False) as tx:
                tx.put_meta(f"k{i % 50}", blob + str(i))
            if i % 10 == 0:
                time.sleep(0.001)  # a writer that is not busy every instant
    finally:
        done.set()
        checkpointer.join(10)
    wal_pages = os.path.getsize(path + "-wal") // 4096
    try:
        assert copied and copied[0] >= 1
        assert wal_pages < 5_000, wal_pages
        assert store.get_meta("k49") == blob + "3999"
    finally:
        store.close()


def test_the_wal_checkpointer_stops_while_a_writer_holds_the_lock(tmp_path):
    """``checkpoint_wal`` waits for the writers' lock at most a second at a time, so that a
    stuck writer does not keep it from stopping."""
    from proctor.storage.sqlite import checkpoint_wal

    path = str(tmp_path / "p.db")
    store = SqliteStore(path)
    with store.transaction(durable=False) as tx:
        tx.put_meta("k", "x" * 10_000)  # frames in the WAL: the checkpointer wants the lock
    probe = os.open(path + "-lock", os.O_RDWR)
    fcntl.flock(probe, fcntl.LOCK_EX)
    done = threading.Event()
    checkpointer = threading.Thread(
        target=checkpoint_wal, args=(path,), kwargs={"stop": done.is_set, "interval": 0.01}
    )
    try:
        checkpointer.start()
        time.sleep(0.2)
        assert checkpointer.is_alive()
        done.set()
        checkpointer.join(5)
        assert not checkpointer.is_alive()
    finally:
        done.set()
        fcntl.flock(probe, fcntl.LOCK_UN)
        os.close(probe)
        store.close()


def test_stores_opening_a_new_database_at_once_all_open(tmp_path):
    """Replicas or workers starting together on a fresh file: none fails with "locked".

    The switch to WAL takes an exclusive lock, and SQLite answers "database is locked" there
    without waiting; unserialised, 4 openers failed in about 1 round of 13 (so 25 rounds
    fail with a probability above 0.85).
    """
    for round_ in range(25):
        path = str(tmp_path / f"fresh-{round_}.db")
        opened: list[SqliteStore] = []
        errors: list[BaseException] = []

        def open_one(path: str, opened: list, errors: list) -> None:
            try:
                opened.append(SqliteStore(path))
            except BaseException as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)

        threads = [threading.Thread(target=open_one, args=(path, opened, errors)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for store in opened:
            store.close()
        assert not errors, f"round {round_}: {errors}"
        assert len(opened) == 4


def test_the_switch_to_wal_waits_for_the_writers_lock(tmp_path):
    """While another process holds ``<db>-lock``, a new store neither switches the file to
    WAL nor migrates it; it does both once the lock is released."""
    import sqlite3

    path = str(tmp_path / "p.db")
    holder = os.open(path + "-lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    opened: list[SqliteStore] = []
    t = threading.Thread(target=lambda: opened.append(SqliteStore(path)))
    try:
        t.start()
        t.join(0.3)
        assert t.is_alive()
        probe = sqlite3.connect(path)
        try:
            assert probe.execute("PRAGMA journal_mode").fetchone()[0] != "wal"
        finally:
            probe.close()
    finally:
        fcntl.flock(holder, fcntl.LOCK_UN)
        os.close(holder)
        t.join(10)
    assert opened and opened[0].schema_version() > 0
    opened[0].close()
