"""The SQLite store (WAL): the embedded default.

One connection, guarded by a lock, serves the process. Write transactions start with
``BEGIN IMMEDIATE`` so the write lock is taken up front: two processes on one file (a CLI
next to a server, or the workers of ``proctor serve --workers N``) serialise instead of
failing half-way with ``SQLITE_BUSY``.

Before ``BEGIN IMMEDIATE`` a writer also takes an exclusive ``flock`` on ``<db>-lock``. SQLite
alone makes a process that finds the write lock taken *sleep* in its busy handler (1, 2, 5,
10 … 100 ms steps, polling), so two busy processes on one file gave a p99 of 0.6 to 0.8 s; a
process blocked in ``flock`` is woken by the kernel the moment the lock is released, and the
writers take turns in microseconds. SQLite's own locking still guards the file (a program
that does not take the flock only falls back to the busy handler).

Durability is ``synchronous=FULL`` by default: with WAL, NORMAL may lose the last commits on
power loss, and an acknowledged governed action must not disappear from the audit log.

FULL is kept by **group commit** rather than by SQLite's own fsync per commit: the
connection commits with ``synchronous=NORMAL`` (the WAL frames are written, not synced)
under the store lock, and a durable transaction then waits, *after* releasing the lock, until
one ``fsync`` of the WAL file covers its commit. One waiter does the fsync for every commit
written before it started, so concurrent plans share it, and the next plan's work proceeds
while the disk flushes. A transaction that wrote nothing waits for nothing. The guarantee is
the same as FULL's: when ``transaction()`` returns, the commit is on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

if sys.platform != "win32":
    import fcntl

from proctor.core.approvals import user_key
from proctor.core.lifecycle import PlanRecord
from proctor.core.notifications import Delivery, DeliveryStatus
from proctor.core.ports import AuditHead, CheckpointRow, EventRow
from proctor.core.principals import TokenRecord
from proctor.errors import StorageError
from proctor.storage._codec import dump_plan, load_plan, sums_by_name
from proctor.storage._plan_queries import list_plans_sql, waiting_plan_rows
from proctor.storage.migrations import (
    SCHEMA_VERSION,
    USER_KEY_SELECT,
    pending,
    user_key_updates,
)
from proctor.storage.sqlite_wal import (
    _open_lock_file,
    checkpoint_wal,
    create_private,
    exposed_files,
    exposed_warning,
)

__all__ = ["SqliteStore", "checkpoint_wal"]

log = logging.getLogger("proctor.storage")
_warned: set[str] = set()  # databases whose exposed files this process has warned of

_GENESIS = "sha256:" + "0" * 64
_PLAN_COLS = (
    "plan_id, digest, status, agent_id, on_behalf_of, created_at, updated_at, expires_at, "
    "outcome, policy_version, sandbox, review, error, doc, lease_owner, lease_until"
)


def _bytes(value: Any) -> bytes:
    # A BLOB edited with SQL string functions comes back as TEXT: the verifier must still
    # read it (and report it), not crash on it.
    return value.encode() if isinstance(value, str) else bytes(value)


def _event(r: sqlite3.Row) -> EventRow:
    return EventRow(
        seq=r["seq"],
        type=r["type"],
        plan_id=r["plan_id"],
        step_id=r["step_id"],
        timestamp=str(r["ts"]),
        body=_bytes(r["body"]),
        hash=str(r["hash"]),
    )


class _Tx:
    """A write transaction on the store's connection (see ``Transaction`` port)."""

    __slots__ = ("_c", "_head")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._c = conn
        self._head: AuditHead | None = None

    def get_plan(self, plan_id: str) -> PlanRecord | None:
        row = self._c.execute(
            f"SELECT {_PLAN_COLS} FROM plans WHERE plan_id = ?",  # noqa: S608 - constant columns
            (plan_id,),
        ).fetchone()
        return load_plan(row) if row else None

    def lease_of(self, plan_id: str) -> tuple[str | None, str] | None:
        row = self._c.execute(
            "SELECT lease_owner, status FROM plans WHERE plan_id = ?", (plan_id,)
        ).fetchone()
        return (row[0], row[1]) if row else None

    def save_plan(self, p: PlanRecord) -> None:
        self._c.execute(
            # An upsert updates the row in place: only the indexes whose columns changed are
            # written (REPLACE would delete and reinsert into every index: more WAL pages to
            # fsync on the commit that acknowledges an action).
            f"INSERT INTO plans ({_PLAN_COLS}"  # noqa: S608 - constant columns
            ", timer_at, user_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (plan_id) DO UPDATE SET status = excluded.status, "
            "timer_at = excluded.timer_at, lease_owner = excluded.lease_owner, "
            "lease_until = excluded.lease_until, "
            "updated_at = excluded.updated_at, expires_at = excluded.expires_at, "
            "outcome = excluded.outcome, error = excluded.error, review = excluded.review, "
            "doc = excluded.doc",
            (
                p.plan_id,
                p.digest,
                p.status.value,
                p.agent_id,
                p.on_behalf_of,
                p.created_at.isoformat(),
                p.updated_at.isoformat(),
                p.expires_at.isoformat() if p.expires_at else None,
                p.outcome,
                p.policy_version,
                int(p.sandbox),
                int(p.review),
                p.error,
                dump_plan(p),
                p.lease_owner,
                p.lease_until.isoformat() if p.lease_until else None,
                p.timer_at.isoformat() if p.timer_at else None,
                user_key(p.on_behalf_of),  # never changes: the upsert leaves it alone
            ),
        )

    def audit_head(self) -> AuditHead:
        if self._head is None:
            # The body comes along (the same row) for its key id, read only if needed.
            row = self._c.execute(
                "SELECT seq, hash, body FROM events ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            self._head = (
                AuditHead(size=0, last_hash=_GENESIS)
                if row is None
                else AuditHead(size=row[0] + 1, last_hash=row[1], last_body=_bytes(row[2]))
            )
        return self._head

    def append_events(self, rows: Sequence[EventRow]) -> None:
        if not rows:
            return
        expected = self.audit_head().size
        for offset, e in enumerate(rows):
            # The log is one linear sequence: a gap or a fork must never be written.
            if e.seq != expected + offset:
                raise StorageError(f"event seq {e.seq} does not continue the log at {expected}")
        self._head = AuditHead(
            size=expected + len(rows),
            last_hash=rows[-1].hash,
            last_body=rows[-1].body,
        )
        self._c.executemany(
            "INSERT INTO events (seq, type, plan_id, step_id, ts, body, hash, leaf) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (e.seq, e.type, e.plan_id, e.step_id, e.timestamp, e.body, e.hash, _leaf(e.body))
                for e in rows
            ],
        )

    def instance_events(self, type_: str) -> list[EventRow]:
        rows = self._c.execute(
            "SELECT * FROM events WHERE plan_id IS NULL AND type = ? ORDER BY seq", (type_,)
        ).fetchall()
        return [_event(r) for r in rows]

    def put_meta(self, key: str, value: str) -> None:
        self._c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def add_checkpoint(self, row: CheckpointRow) -> None:
        self._c.execute(
            "INSERT INTO checkpoints (size, root, note, created_at) VALUES (?, ?, ?, ?)",
            (row.size, row.root, row.note, row.created_at),
        )

    def latest_checkpoint(self) -> CheckpointRow | None:
        return _latest_checkpoint(self._c)

    def node(self, level: int, index: int) -> bytes | None:
        if level != 0:
            return None
        row = self._c.execute("SELECT leaf, body FROM events WHERE seq = ?", (index,)).fetchone()
        return _leaf_of(row) if row else None

    def load_nodes(
        self, start: Mapping[int, int], *, limit: int | None = None
    ) -> dict[int, list[bytes]]:
        return _load_nodes(self._c, start, limit)

    def save_token(self, t: TokenRecord) -> None:
        self._c.execute(
            "INSERT OR REPLACE INTO tokens (token_id, name, roles, groups_, token_hash,"
            " created_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                t.token_id,
                t.name,
                ",".join(t.roles),
                ",".join(t.groups),
                t.token_hash,
                t.created_at.isoformat(),
                t.revoked_at.isoformat() if t.revoked_at else None,
            ),
        )

    def enqueue(self, deliveries: Sequence[Delivery]) -> None:
        self._c.executemany(_DELIVERY_UPSERT, [_delivery_row(d) for d in deliveries])

    def save_delivery(self, d: Delivery) -> None:
        self._c.execute(_DELIVERY_UPSERT, _delivery_row(d))

    def get_state(self, kind: str, key: str) -> Any:
        row = self._c.execute(
            "SELECT value FROM guard_state WHERE kind = ? AND key = ?", (kind, key)
        ).fetchone()
        return orjson.loads(row[0]) if row else None

    def get_states(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        if not keys:
            return {}
        where = " OR ".join(["(kind = ? AND key = ?)"] * len(keys))
        rows = self._c.execute(
            f"SELECT kind, key, value FROM guard_state WHERE {where}",  # noqa: S608 - placeholders
            [x for pair in keys for x in pair],
        ).fetchall()
        return {(r[0], r[1]): orjson.loads(r[2]) for r in rows}

    def put_state(self, kind: str, key: str, value: Any, *, at: datetime) -> None:
        if value is None:
            self._c.execute("DELETE FROM guard_state WHERE kind = ? AND key = ?", (kind, key))
            return
        self._c.execute(
            "INSERT OR REPLACE INTO guard_state (kind, key, value, updated_at) VALUES (?, ?, ?, ?)",
            (kind, key, orjson.dumps(value).decode(), at.isoformat()),
        )

    def bump(self, name: str, bucket: str, *, count: int = 1, amount: int = 0) -> tuple[int, int]:
        row = self._c.execute(
            "INSERT INTO counters (name, bucket, count, amount) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name, bucket) DO UPDATE SET count = count + excluded.count, "
            "amount = amount + excluded.amount RETURNING count, amount",
            (name, bucket, count, amount),
        ).fetchone()
        return int(row[0]), int(row[1])

    def counter_sum(self, name: str, since: str) -> tuple[int, int]:
        return _counter_sum(self._c, name, since)

    def counter_sums(self, names: Sequence[str], since: str) -> dict[str, tuple[int, int]]:
        marks = ", ".join("?" * len(names))
        rows = self._c.execute(
            f"SELECT name, SUM(count), SUM(amount) FROM counters"  # noqa: S608 - placeholders
            f" WHERE name IN ({marks}) AND bucket >= ? GROUP BY name",
            (*names, since),
        ).fetchall()
        return sums_by_name(names, rows)

    def lock_counters(self, names: Sequence[str]) -> None:
        pass  # BEGIN IMMEDIATE: write transactions already run one at a time


def _counter_sum(c: sqlite3.Connection, name: str, since: str) -> tuple[int, int]:
    row = c.execute(
        "SELECT COALESCE(SUM(count), 0), COALESCE(SUM(amount), 0) FROM counters"
        " WHERE name = ? AND bucket >= ?",
        (name, since),
    ).fetchone()
    return int(row[0]), int(row[1])


_DELIVERY_COLS = (
    "delivery_id, event, target, payload, created_at, next_at, attempts, status, last_error"
)
_DELIVERY_UPSERT = (
    f"INSERT OR REPLACE INTO outbox ({_DELIVERY_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
)


def _delivery_row(d: Delivery) -> tuple[Any, ...]:
    return (
        d.delivery_id,
        d.event,
        d.target,
        d.payload,
        d.created_at.isoformat(),
        d.next_at.isoformat(),
        d.attempts,
        d.status.value,
        d.last_error,
    )


def _delivery(r: sqlite3.Row) -> Delivery:
    return Delivery(
        delivery_id=r[0],
        event=r[1],
        target=r[2],
        payload=_bytes(r[3]),
        created_at=datetime.fromisoformat(r[4]),
        next_at=datetime.fromisoformat(r[5]),
        attempts=r[6],
        status=DeliveryStatus(r[7]),
        last_error=r[8],
    )


def _token(r: sqlite3.Row) -> TokenRecord:
    return TokenRecord(
        token_id=r[0],
        name=r[1],
        roles=tuple(x for x in r[2].split(",") if x),
        groups=tuple(x for x in r[3].split(",") if x),
        token_hash=r[4],
        created_at=datetime.fromisoformat(r[5]),
        revoked_at=datetime.fromisoformat(r[6]) if r[6] else None,
    )


_TOKEN_COLS = "token_id, name, roles, groups_, token_hash, created_at, revoked_at"  # noqa: S105 - column names


def _latest_checkpoint(c: sqlite3.Connection) -> CheckpointRow | None:
    row = c.execute(
        "SELECT size, root, note, created_at FROM checkpoints ORDER BY size DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    return CheckpointRow(size=row[0], root=_bytes(row[1]), note=row[2], created_at=row[3])


def _leaf(body: bytes) -> bytes:
    """RFC 9162 leaf hash of an event's bytes (as ``proctor.audit.merkle.leaf_hash``)."""
    return hashlib.sha256(b"\x00" + body).digest()


def _leaf_of(row: Any) -> bytes:
    return _bytes(row[0]) if row[0] is not None else _leaf(_bytes(row[1]))


def _load_nodes(
    c: sqlite3.Connection, start: Mapping[int, int], limit: int | None
) -> dict[int, list[bytes]]:
    # Only leaves are stored (level 0): the interior nodes are rebuilt in memory.
    rows = c.execute(
        "SELECT leaf, body FROM events WHERE seq >= ? ORDER BY seq LIMIT ?",
        (start.get(0, 0), -1 if limit is None else limit),
    ).fetchall()
    return {0: [_leaf_of(r) for r in rows]} if rows else {}


class SqliteStore:
    """Plans, steps, approvals and the audit log in one SQLite file.

    Args:
        path: The database file (created if missing), or ``:memory:``.
        synchronous: ``FULL`` (default) or ``NORMAL``.
        busy_timeout_ms: How long to wait for another process's write lock. Five seconds is
            SQLite's usual choice; we take 30 because a CLI command may wait behind a busy
            server and should not fail for it.
    """

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 30_000,
        migrate: bool = True,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL", "EXTRA", "OFF"):
            raise StorageError(f"unknown synchronous mode {synchronous!r}", field="synchronous")
        self.path = path
        self._synchronous = synchronous
        self._lock = threading.RLock()
        # Group commit (module docstring): commits counted under ``_lock``, synced ones
        # under ``_synced_cond``; ``_wal_fd`` is the WAL file, kept open for its fsyncs.
        self._group = synchronous == "FULL" and path != ":memory:"
        self._wal_fd: int | None = None
        self._committed = 0
        self._synced = 0
        self._syncing = False
        self._synced_cond = threading.Condition()
        self._flock_fd: int | None = None
        try:
            if path != ":memory:" and not Path(path).parent.is_dir():
                raise StorageError(
                    f"directory of database {path} does not exist",
                    field="database.url",
                    hint="Run `proctor init` first.",
                )
            try:
                created = create_private(path)  # 0600: it holds secrets (sqlite_wal docstring)
            except OSError as exc:  # a directory this user may not write, a read-only disk
                raise StorageError(
                    f"cannot create SQLite database {path}: {exc.strerror or exc}",
                    field="database.url",
                    hint="Check that the directory exists and this user may write to it.",
                ) from exc
            self._c = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._c.row_factory = sqlite3.Row
            self._c.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            self._flock_fd = _open_lock_file(path)
            # Stores opening one new database at once (replicas, `serve --workers`) take
            # turns: the switch to WAL needs an exclusive lock, and SQLite answers "database
            # is locked" there without calling the busy handler (4 threads opening a fresh
            # file failed about 1 time in 13 before).
            with self._writer():
                self._c.execute("PRAGMA journal_mode=WAL")
                if migrate:
                    self._migrate()
            self._c.execute(f"PRAGMA synchronous={synchronous}")
            # NOTE(perf): checkpoint the WAL every 10,000 pages instead of SQLite's 1,000.
            # Measured (bench/pipeline.py, 5,000 plans): at 1,000 the commit that crosses the
            # threshold copies and fsyncs inside a client's call often enough to push p99 to
            # 5.5 ms; at 10,000 p99 is 2.3 ms and a rarer checkpoint costs ~20 ms once. A
            # background checkpointing connection bounded that spike but its fsyncs slowed
            # every commit (p50 +0.3 ms) on these 2-core virtual disks.
            self._c.execute("PRAGMA wal_autocheckpoint=10000")
            if self._group:
                self._start_group_commit()
            if not created:
                self._warn_if_exposed()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open SQLite database {path}: {exc}") from exc

    def _warn_if_exposed(self) -> None:
        """Warn (once per process) of a database that other local users can read.

        NOTE(security): a warning, not a chmod. Opening must not change modes the operator
        chose (a group-readable file for a backup user, a file owned by another user), and
        read-only commands (``db status``, ``audit verify``) must not write; the warning says
        which files and the command that makes them private. New databases are 0600.
        """
        exposed = exposed_files(self.path)
        if exposed and self.path not in _warned:
            _warned.add(self.path)
            log.warning(exposed_warning(self.path, exposed))

    def _start_group_commit(self) -> None:
        """Commit at NORMAL from now on, durable by our own fsync of the WAL file."""
        try:
            # The WAL exists once the database has been opened in WAL mode (it persists
            # while this connection is open). No lock is ever taken on it (WAL locks live
            # in the -shm file), so an extra descriptor on it cannot disturb SQLite's.
            self._wal_fd = os.open(self.path + "-wal", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            self._group = False  # fall back to SQLite's own fsync per commit (FULL)
            return
        self._c.execute("PRAGMA synchronous=NORMAL")

    @contextmanager
    def _writer(self) -> Iterator[None]:
        """Hold the in-process lock and the cross-process ``flock`` (module docstring)."""
        with self._lock:
            fd = self._flock_fd
            if fd is None or sys.platform == "win32":
                yield
                return
            # NOTE(perf): a blocking flock, without a time limit: a writer stopped inside its
            # transaction (SIGSTOP, a debugger) holds the others until it resumes or exits.
            # Both bounded waits measured cost throughput with two busy workers (interleaved
            # bench/http.py pairs): polling about 3 % (and p99 +4 ms), a helper thread that
            # blocks in flock for the writer 10-30 % (two GIL hand-overs while holding it).
            fcntl.flock(fd, fcntl.LOCK_EX)  # releases the GIL while it waits
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _migrate(self) -> None:
        """Bring the schema up to date (the caller holds ``_writer``)."""
        self._c.execute("BEGIN IMMEDIATE")
        try:
            self._c.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            row = self._c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            current = int(row[0]) if row else 0
            for statement in pending(current, "sqlite"):
                self._c.execute(statement)
            # Every open, not only the migration's: a replica still on the old code (a rolling
            # upgrade) inserts plans without the key; the index finds them at once.
            rows = self._c.execute(USER_KEY_SELECT).fetchall()
            self._c.executemany(
                "UPDATE plans SET user_key = ? WHERE plan_id = ?",
                user_key_updates((r[0], r[1]) for r in rows),
            )
            if current != SCHEMA_VERSION:  # an up-to-date database is not written to
                self._c.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            self._c.execute("COMMIT")
        except BaseException:
            self._c.execute("ROLLBACK")
            raise

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[_Tx]:
        """Open a write transaction (``BEGIN IMMEDIATE``); commit on success.

        Args:
            durable: False for a commit that only has to survive a *process* crash, not a
                power loss: the in-flight marker written before an idempotent action's handler
                runs (one that is not idempotent is started durably). It commits
                with ``synchronous=NORMAL`` (no fsync); the next durable commit fsyncs the
                WAL, and with it every earlier commit. Nothing is acknowledged to a client
                on a non-durable commit.

        Raises:
            StorageError: wrapping any driver error; the transaction is rolled back.
        """
        with self._writer():
            relax = not durable and not self._group and self._synchronous in ("FULL", "EXTRA")
            changes = self._c.total_changes
            try:
                if relax:
                    self._c.execute("PRAGMA synchronous=NORMAL")
                self._c.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StorageError(f"cannot start a transaction: {exc}") from exc
            try:
                yield _Tx(self._c)
                self._c.execute("COMMIT")
                self._committed += 1
                ticket = self._committed
                wrote = self._c.total_changes != changes
            except sqlite3.Error as exc:
                self._rollback()
                raise StorageError(f"transaction failed: {exc}") from exc
            except BaseException:
                self._rollback()
                raise
            finally:
                if relax:
                    self._c.execute(f"PRAGMA synchronous={self._synchronous}")
        if durable and wrote and self._group:
            self._wait_durable(ticket)

    def _wait_durable(self, ticket: int) -> None:
        """Return once commit number ``ticket`` is on disk (one fsync serves many)."""
        cond = self._synced_cond
        with cond:
            while self._synced < ticket:
                if self._syncing:  # another thread is flushing: it may cover us
                    cond.wait()
                    continue
                self._syncing = True
                covered = self._committed  # every commit written before this fsync starts
                error: OSError | None = None
                cond.release()
                try:
                    if self._wal_fd is None:
                        raise OSError("the store is closed")
                    os.fsync(self._wal_fd)
                except OSError as exc:
                    error = exc
                finally:
                    cond.acquire()
                    self._syncing = False
                    cond.notify_all()
                if error is not None:
                    raise StorageError(f"cannot make the commit durable (fsync): {error}")
                self._synced = max(self._synced, covered)

    def _rollback(self) -> None:
        # SQLite may already have rolled back after an error; a second ROLLBACK then fails.
        with contextlib.suppress(sqlite3.Error):
            self._c.execute("ROLLBACK")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._c.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"query failed: {exc}") from exc

    def get_plan(self, plan_id: str) -> PlanRecord | None:
        """Return a plan or None."""
        sql = f"SELECT {_PLAN_COLS} FROM plans WHERE plan_id = ?"  # noqa: S608 - constant columns
        rows = self._query(sql, (plan_id,))
        return load_plan(rows[0]) if rows else None

    def list_plans(
        self,
        *,
        status: str | None = None,
        statuses: Sequence[str] | None = None,
        agent_id: str | None = None,
        on_behalf_of: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[PlanRecord]:
        """Return plans newest first, filtered; ``before`` is ``created_at|plan_id``."""
        query = list_plans_sql(
            _PLAN_COLS,
            "?",
            status=status,
            statuses=statuses,
            agent_id=agent_id,
            on_behalf_of=on_behalf_of,
            limit=limit,
            before=before,
        )
        if query is None:
            return []
        return [load_plan(r) for r in self._query(*query)]

    def waiting_plans(
        self,
        status: str,
        *,
        on_behalf_of: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[PlanRecord]:
        """Return the plans in ``status``, soonest deadline first; ``after`` is a cursor."""
        found = waiting_plan_rows(
            self._query,
            _PLAN_COLS,
            "?",
            status,
            on_behalf_of=on_behalf_of,
            limit=limit,
            after=after,
        )
        return [load_plan(r) for r in found]

    def count_plans(self, statuses: Sequence[str]) -> dict[str, tuple[int, datetime]]:
        """Return, per status that has plans, their number and oldest ``created_at``."""
        if not statuses:
            return {}
        # The index plans_by_status (status, created_at) answers this without reading plans.
        marks = ", ".join("?" * len(statuses))
        sql = (
            "SELECT status, COUNT(*), MIN(created_at) FROM plans"  # noqa: S608 - placeholders only
            f" WHERE status IN ({marks}) GROUP BY status"
        )
        rows = self._query(sql, tuple(statuses))
        return {r[0]: (int(r[1]), datetime.fromisoformat(r[2])) for r in rows}

    def due_plans(self, now: datetime, *, limit: int = 500) -> list[PlanRecord]:
        """Return plans whose next timer (expiry, rollback TTL) is at or before ``now``."""
        sql = (
            f"SELECT {_PLAN_COLS} FROM plans WHERE timer_at IS NOT NULL"  # noqa: S608
            " AND timer_at <= ? ORDER BY timer_at LIMIT ?"
        )
        return [load_plan(r) for r in self._query(sql, (now.isoformat(), int(limit)))]

    def claimable_plans(self, now: datetime, *, limit: int = 100) -> list[PlanRecord]:
        """Return running or compensating plans with no live lease, oldest first."""
        sql = (
            f"SELECT {_PLAN_COLS} FROM plans WHERE status IN ('running', 'compensating')"  # noqa: S608
            " AND (lease_until IS NULL OR lease_until <= ?) ORDER BY updated_at LIMIT ?"
        )
        return [load_plan(r) for r in self._query(sql, (now.isoformat(), int(limit)))]

    def read_events(
        self, *, after: int = -1, limit: int = 1000, plan_id: str | None = None
    ) -> list[EventRow]:
        """Return events with ``seq > after``, in order."""
        if plan_id is None:
            rows = self._query(
                "SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            )
        else:
            rows = self._query(
                "SELECT * FROM events WHERE plan_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (plan_id, after, limit),
            )
        return [_event(r) for r in rows]

    def iter_events(self, *, batch: int = 5000) -> Iterator[EventRow]:
        """Yield every event in storage order (by ``seq`` column)."""
        after = -1
        while True:
            rows = self.read_events(after=after, limit=batch)
            if not rows:
                return
            yield from rows
            after = rows[-1].seq

    def event_count(self) -> int:
        """Return the number of events."""
        return int(self._query("SELECT COUNT(*) FROM events")[0][0])

    def get_meta(self, key: str) -> str | None:
        """Return a metadata value."""
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def checkpoints(self) -> list[CheckpointRow]:
        """Return every checkpoint, smallest first."""
        rows = self._query("SELECT size, root, note, created_at FROM checkpoints ORDER BY size")
        return [
            CheckpointRow(size=r[0], root=_bytes(r[1]), note=r[2], created_at=r[3]) for r in rows
        ]

    def latest_checkpoint(self) -> CheckpointRow | None:
        """Return the largest checkpoint."""
        with self._lock:
            return _latest_checkpoint(self._c)

    def load_nodes(
        self, start: Mapping[int, int], *, limit: int | None = None
    ) -> dict[int, list[bytes]]:
        """Return stored Merkle nodes per level from ``start[level]`` on (``limit`` at most)."""
        with self._lock:
            return _load_nodes(self._c, start, limit)

    def find_token(self, token_hash: str) -> TokenRecord | None:
        """Return the token with this hash."""
        rows = self._query(
            f"SELECT {_TOKEN_COLS} FROM tokens WHERE token_hash = ?",  # noqa: S608 - constant
            (token_hash,),
        )
        return _token(rows[0]) if rows else None

    def list_tokens(self) -> list[TokenRecord]:
        """Return every token, oldest first."""
        sql = f"SELECT {_TOKEN_COLS} FROM tokens ORDER BY created_at, token_id"  # noqa: S608
        return [_token(r) for r in self._query(sql)]

    def due_deliveries(self, now: datetime, *, limit: int = 100) -> list[Delivery]:
        """Return pending deliveries that are due, oldest first."""
        sql = (
            f"SELECT {_DELIVERY_COLS} FROM outbox WHERE status = 'pending'"  # noqa: S608
            " AND next_at <= ? ORDER BY next_at LIMIT ?"
        )
        return [_delivery(r) for r in self._query(sql, (now.isoformat(), limit))]

    def deliveries(self, *, status: str, limit: int = 100) -> list[Delivery]:
        """Return deliveries in ``status``, newest first."""
        sql = (
            f"SELECT {_DELIVERY_COLS} FROM outbox WHERE status = ?"  # noqa: S608
            " ORDER BY created_at DESC LIMIT ?"
        )
        return [_delivery(r) for r in self._query(sql, (status, limit))]

    def count_deliveries(self, statuses: Sequence[str]) -> dict[str, int]:
        """Return the number of deliveries per status of ``statuses`` (index outbox_due)."""
        if not statuses:
            return {}
        marks = ", ".join("?" * len(statuses))
        sql = (
            "SELECT status, COUNT(*) FROM outbox"  # noqa: S608 - placeholders only
            f" WHERE status IN ({marks}) GROUP BY status"
        )
        return {r[0]: int(r[1]) for r in self._query(sql, tuple(statuses))}

    def list_state(self, kind: str) -> dict[str, Any]:
        """Return every guard state value of ``kind``, by key."""
        rows = self._query("SELECT key, value FROM guard_state WHERE kind = ?", (kind,))
        return {r[0]: orjson.loads(r[1]) for r in rows}

    def read_state(self, kind: str, key: str) -> Any:
        """Return one state value (None if absent), outside any write transaction."""
        rows = self._query("SELECT value FROM guard_state WHERE kind = ? AND key = ?", (kind, key))
        return orjson.loads(rows[0][0]) if rows else None

    def counter_sum(self, name: str, since: str) -> tuple[int, int]:
        """Return (count, amount) summed over the counter's buckets ``>= since``."""
        with self._lock:
            try:
                return _counter_sum(self._c, name, since)
            except sqlite3.Error as exc:
                raise StorageError(f"query failed: {exc}") from exc

    def schema_version(self) -> int:
        """Return the schema version recorded in the database (0: none yet)."""
        try:
            return int(self.get_meta("schema_version") or 0)
        except StorageError:
            return 0  # no meta table: an empty database

    def close(self) -> None:
        """Close the connection (and the WAL descriptor of group commit)."""
        with self._lock:
            self._c.close()
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None
            if self._flock_fd is not None:
                os.close(self._flock_fd)
                self._flock_fd = None
