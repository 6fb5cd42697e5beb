"""SQLite group commit: a durable write returns only after an fsync of the WAL covers it."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime

import pytest

from proctor.storage import sqlite as sqlite_module
from proctor.storage.sqlite import SqliteStore

NOW = datetime(2026, 1, 5, tzinfo=UTC)


@pytest.fixture
def fsyncs(monkeypatch):
    """Record, for every fsync of the store's WAL, how many commits it covered."""
    calls: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(sqlite_module.os, "fsync", fsync)
    return calls


def _write(store: SqliteStore, n: int, *, durable: bool = True) -> None:
    with store.transaction(durable=durable) as tx:
        tx.put_meta(f"k{n}", str(n))


def test_durable_writes_fsync_the_wal_and_reads_do_not(tmp_path, fsyncs):
    """Each durable write waits for an fsync; a read or a non-durable write waits for none."""
    store = SqliteStore(str(tmp_path / "p.db"))
    try:
        assert store._group and store._wal_fd is not None
        fsyncs.clear()
        _write(store, 1)
        assert fsyncs == [store._wal_fd]
        assert store._synced >= store._committed

        _write(store, 2, durable=False)
        with store.transaction() as tx:  # reads only
            tx.get_plan("nothing")
        assert len(fsyncs) == 1  # neither waited
        assert store._synced < store._committed  # the non-durable commit is not synced yet

        _write(store, 3)  # one fsync makes it and the earlier one durable
        assert len(fsyncs) == 2
        assert store._synced == store._committed
    finally:
        store.close()


def test_concurrent_durable_writes_share_fsyncs_and_none_returns_early(tmp_path, fsyncs):
    """Many threads: every transaction returns with its commit covered by an fsync."""
    store = SqliteStore(str(tmp_path / "p.db"))
    early: list[int] = []

    def work(k: int) -> None:
        for i in range(40):
            with store.transaction() as tx:
                tx.put_meta(f"t{k}-{i}", "x")
            mine = store._committed  # at least this thread's own commit number
            if store._synced < mine - 8:  # 8 threads: at most 7 later commits since ours
                early.append(mine)

    try:
        fsyncs.clear()
        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert early == []
        assert 0 < len(fsyncs) <= 8 * 40
        assert store._synced == store._committed
        assert store.get_meta("t7-39") == "x"
    finally:
        store.close()


def test_a_failing_fsync_is_a_storage_error(tmp_path, monkeypatch):
    """If the disk cannot flush, the durable commit raises instead of acknowledging."""
    store = SqliteStore(str(tmp_path / "p.db"))

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    try:
        monkeypatch.setattr(sqlite_module.os, "fsync", broken)
        with pytest.raises(sqlite_module.StorageError, match="durable"):
            _write(store, 1)
        monkeypatch.undo()
        _write(store, 2)  # the next durable commit flushes both
        assert store._synced == store._committed
    finally:
        store.close()


def test_normal_and_memory_databases_do_not_group(tmp_path):
    """synchronous=NORMAL asks for no fsync; ``:memory:`` has no WAL file."""
    normal = SqliteStore(str(tmp_path / "n.db"), synchronous="NORMAL")
    memory = SqliteStore(":memory:")
    try:
        assert not normal._group and normal._wal_fd is None
        assert not memory._group
        _write(normal, 1)
        _write(memory, 1)
        assert normal.get_meta("k1") == "1"
    finally:
        normal.close()
        memory.close()
