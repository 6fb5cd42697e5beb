"""The SQLite database and its side files are private to their owner (they hold secrets)."""

from __future__ import annotations

import logging
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from proctor.storage.sqlite import SqliteStore

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class TestNewDatabase:
    def test_database_wal_shm_and_lock_are_0600_under_umask_022(self, tmp_path, caplog):
        """A new database, its WAL, shared memory and lock files are 0600 under umask 022,
        where sqlite3.connect alone made them 0644 (readable TOTP secrets); no warning."""
        path = str(tmp_path / "proctor.db")

        with caplog.at_level(logging.WARNING, logger="proctor.storage"), umask(0o022):
            store = SqliteStore(path)
        try:
            with store.transaction() as tx:
                tx.put_meta("totp:fiona", "SECRET")
            modes = {s: mode(path + s) for s in ("", "-wal", "-shm", "-lock")}
        finally:
            store.close()

        assert modes == {"": 0o600, "-wal": 0o600, "-shm": 0o600, "-lock": 0o600}
        assert caplog.records == []


class TestExistingDatabase:
    def test_a_world_readable_database_is_warned_of_and_left_as_it_is(self, tmp_path, caplog):
        """An existing 0644 database opens with one warning naming it, its mode and the
        chmod that fixes it; its mode is not changed behind the operator's back."""
        path = str(tmp_path / "proctor.db")
        SqliteStore(path).close()
        os.chmod(path, 0o644)

        with caplog.at_level(logging.WARNING, logger="proctor.storage"):
            SqliteStore(path).close()
            SqliteStore(path).close()  # once per process, not per open

        (record,) = caplog.records
        assert f"{path} (mode 0644)" in record.getMessage()
        assert f"chmod 600 {path}*" in record.getMessage()
        assert "TOTP" in record.getMessage()
        assert mode(path) == 0o644
