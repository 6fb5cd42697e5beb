"""The SQLite store's files: their permissions, the writers' lock and the WAL checkpointer.

The database holds TOTP secrets, token hashes, plans and the audit log, so it is created
0600 whatever the umask (``create_private``); SQLite gives its ``-wal``, ``-shm`` and
``-journal`` files the database file's permissions, so they follow. ``exposed_files`` names
the ones that other users can read (a database created before, or by hand).

``<db>-lock`` is the ``flock`` every writer takes before ``BEGIN IMMEDIATE`` (the store's
docstring says why); ``checkpoint_wal`` is the WAL checkpointer that ``proctor serve
--workers N`` runs in a process of its own. Split from ``proctor.storage.sqlite``, which
re-exports ``checkpoint_wal``.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from collections.abc import Callable

if sys.platform != "win32":
    import fcntl

__all__ = ["checkpoint_wal", "create_private", "exposed_files", "exposed_warning"]

_SIDE_FILES = ("", "-wal", "-shm", "-journal")


def create_private(path: str) -> bool:
    """Create the database file ``path`` empty and 0600 if it is missing; True if created.

    ``sqlite3.connect`` would create it 0666 minus the umask (0644 under the usual 022): any
    local user could read the TOTP secrets in it. SQLite takes an empty file for a new
    database, and creates the ``-wal`` and ``-shm`` files with this file's mode.
    """
    if sys.platform == "win32" or path == ":memory:":  # no POSIX modes to set
        return False
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    except FileExistsError:  # there already, or another process just created it
        return False
    os.close(fd)
    return True


def exposed_files(path: str) -> list[str]:
    """Describe the database's files that users other than the owner may read or write.

    One line each, with the mode and the command that makes them private. Empty on Windows
    and for ``:memory:``.
    """
    if sys.platform == "win32" or path == ":memory:":
        return []
    found = []
    for suffix in _SIDE_FILES:
        try:
            mode = os.stat(path + suffix).st_mode & 0o777
        except OSError:  # not there (no -journal in WAL mode; no -wal once closed)
            continue
        if mode & 0o077:
            found.append(f"{path}{suffix} (mode {mode:04o})")
    return found


def exposed_warning(path: str, exposed: list[str]) -> str:
    """The warning for ``exposed_files``: what is at risk and how to fix it."""
    return (
        f"the database is readable by other local users: {', '.join(exposed)}. It holds the"
        " approvers' TOTP secrets, token hashes, plans and the audit log. Make it private:"
        f" chmod 600 {path}*; chmod 700 {os.path.dirname(os.path.abspath(path))}"
        ' (docs/operations.md, "What an instance is made of").'
    )


def _open_lock_file(path: str) -> int | None:
    """Open ``<db>-lock`` for the writers' ``flock``; None where there is none to take."""
    if sys.platform == "win32" or path == ":memory:":  # SQLite's busy handler alone
        return None
    try:
        return os.open(path + "-lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError:
        return None  # a read-only directory: SQLite's own busy handler still serialises


def _poll_flock(fd: int, timeout: float) -> bool:
    """Take the writers' ``flock`` on ``fd`` within ``timeout`` s by polling; False if not.

    For the WAL checkpointer, which wants the lock now and then and must stay able to stop
    while a writer is stuck. The writers themselves block in ``flock`` (``_writer``).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)


def checkpoint_wal(
    path: str,
    *,
    stop: Callable[[], bool],
    synchronous: str = "FULL",
    interval: float = 0.25,
) -> int:
    """Copy the WAL into the database every ``interval`` seconds until ``stop()``.

    Used by ``proctor serve --workers N`` in a process of its own (docs/http.md, "Workers").
    A writer whose commit makes the WAL pass ``wal_autocheckpoint`` pages copies it into the
    database inside that ``COMMIT``, holding the write lock: 15 to 25 ms in which no plan of
    any worker commits, and 16 waiting clients' answers are late by as much. Here instead:

    1. a ``PASSIVE`` checkpoint, without any lock: writers go on appending while it copies
       the bulk of the WAL into the database and syncs it (as ``synchronous`` says: FULL and
       NORMAL both sync after a checkpoint);
    2. a second one holding the writers' ``flock``: it copies only the frames appended
       meanwhile, and as no writer is inside a transaction it completes, so the next writer
       starts the WAL again from its beginning (SQLite restarts the log only for a writer
       that begins after a complete checkpoint; a writer already inside a transaction when
       the first one completed appends after it). Writers wait for that short step in
       ``flock``.

    The WAL so stays at a few seconds' worth of frames, and the writers' own autocheckpoint is
    never reached. Returns the number of checkpoints that completed.
    """
    c = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    lock_fd = _open_lock_file(path)
    completed = 0

    def checkpoint() -> tuple[int, int, int]:
        try:
            row = c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
        except sqlite3.Error:
            return 1, 0, 0  # busy with a writer's own checkpoint: next time
        return int(row[0]), int(row[1]), int(row[2])

    try:
        c.execute(f"PRAGMA synchronous={synchronous}")
        c.execute("PRAGMA busy_timeout=1000")
        while not stop():
            busy, frames, copied = checkpoint()
            if not busy and frames > 0 and lock_fd is not None and sys.platform != "win32":
                if not _poll_flock(lock_fd, 1.0):  # a stuck writer: stay able to stop
                    time.sleep(interval)
                    continue
                try:
                    busy, frames, copied = checkpoint()
                finally:
                    fcntl.flock(lock_fd, fcntl.LOCK_UN)
            if not busy and frames > 0 and copied == frames:
                completed += 1
            time.sleep(interval)
    finally:
        c.close()
        if lock_fd is not None:
            os.close(lock_fd)
    return completed
