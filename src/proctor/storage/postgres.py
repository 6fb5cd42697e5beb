"""The PostgreSQL store: several replicas share one database.

psycopg 3 with a ``psycopg_pool`` connection pool. The schema and its migrations are the
SQLite ones (``storage.migrations``), rendered for PostgreSQL. The guarantees of DESIGN
section 6 come from the database:

- **One linear log.** ``audit_head`` takes a transaction-scoped advisory lock before reading
  the last event: appenders in every replica queue on it, so seqs never fork or gap (and the
  primary key on ``seq`` would refuse a duplicate anyway). Advisory locks are per database,
  so the lock's second key is the schema's: instances in different schemas (tenants, tests)
  never wait for each other.
- **Locked reads.** ``Transaction.get_plan``, ``lease_of`` and ``get_state`` read with
  ``FOR UPDATE``: a lease claim, consuming an approval, a human action or a breaker update is
  read-check-write under a row lock. ``FOR UPDATE`` locks nothing when the row is missing, so
  a missing plan or guard state is locked by key (advisory) and read again.
- **Errors.** Driver errors become ``StorageError``; a deadlock or a serialization failure
  carries ``details["retryable"] = True`` (the server rolled it all back: the transaction can
  be run again), as does waiting too long for a pooled connection. The pool checks a
  connection before lending it: one broken by a server restart is replaced, not handed out.
- **Ordering.** Text columns use the ``"C"`` collation (see ``storage.migrations``): byte
  order, as in SQLite, whatever the database's locale.
- **Durability.** Commits use ``synchronous_commit = on`` (the server's default; a session
  that starts with ``off`` is set back to ``on``); an in-flight marker (``durable=False``)
  sets it ``off`` for its own transaction only.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

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

__all__ = ["PostgresStore"]

_GENESIS = "sha256:" + "0" * 64
# Advisory lock classes: the first key; the second is a hash of the schema (and of a name).
_LOG_LOCK = 0x70726F63  # "proc": orders appends to the audit log
_MIGRATE_LOCK = 0x70726F64  # replicas starting together migrate one at a time
_STATE_LOCK = 0x70726F65  # a guard state key that has no row yet
_PLAN_LOCK = 0x70726F66  # a plan id that has no row yet
_COUNTER_LOCK = 0x70726F67  # a counter checked then bumped (rate limits, budgets)
_LOCK_SQL = "SELECT pg_advisory_xact_lock(%s, hashtext(current_schema() || %s))"
_META = 'CREATE TABLE IF NOT EXISTS meta (key TEXT COLLATE "C" PRIMARY KEY, value TEXT NOT NULL)'
_PLAN_COLS = (
    "plan_id, digest, status, agent_id, on_behalf_of, created_at, updated_at, expires_at, "
    "outcome, policy_version, sandbox, review, error, doc, lease_owner, lease_until"
)
_DELIVERY_COLS = (
    "delivery_id, event, target, payload, created_at, next_at, attempts, status, last_error"
)
_TOKEN_COLS = "token_id, name, roles, groups_, token_hash, created_at, revoked_at"  # noqa: S105


def _leaf(body: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + body).digest()


def _retryable(exc: psycopg.Error) -> bool:
    # SQLSTATE class 40 (deadlock, serialization failure): the server rolled the whole
    # transaction back, so running it again is safe. A lost connection is not: a commit in
    # flight may have landed.
    return (exc.sqlstate or "").startswith("40")


def _wrap(what: str, exc: psycopg.Error | PoolTimeout) -> StorageError:
    if isinstance(exc, PoolTimeout):
        return StorageError(f"no database connection available: {exc}", retryable=True)
    return StorageError(f"{what}: {exc}", retryable=_retryable(exc))


def _event(r: Mapping[str, Any]) -> EventRow:
    return EventRow(
        seq=int(r["seq"]),
        type=r["type"],
        plan_id=r["plan_id"],
        step_id=r["step_id"],
        timestamp=str(r["ts"]),
        body=bytes(r["body"]),
        hash=str(r["hash"]),
    )


def _delivery(r: Mapping[str, Any]) -> Delivery:
    return Delivery(
        delivery_id=r["delivery_id"],
        event=r["event"],
        target=r["target"],
        payload=bytes(r["payload"]),
        created_at=datetime.fromisoformat(r["created_at"]),
        next_at=datetime.fromisoformat(r["next_at"]),
        attempts=r["attempts"],
        status=DeliveryStatus(r["status"]),
        last_error=r["last_error"],
    )


def _token(r: Mapping[str, Any]) -> TokenRecord:
    return TokenRecord(
        token_id=r["token_id"],
        name=r["name"],
        roles=tuple(x for x in r["roles"].split(",") if x),
        groups=tuple(x for x in r["groups_"].split(",") if x),
        token_hash=r["token_hash"],
        created_at=datetime.fromisoformat(r["created_at"]),
        revoked_at=datetime.fromisoformat(r["revoked_at"]) if r["revoked_at"] else None,
    )


def _checkpoint(r: Mapping[str, Any]) -> CheckpointRow:
    return CheckpointRow(
        size=int(r["size"]), root=bytes(r["root"]), note=r["note"], created_at=r["created_at"]
    )


class _Tx:
    """A write transaction on one pooled connection (see the ``Transaction`` port)."""

    __slots__ = ("_c", "_head")

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._c = conn
        self._head: AuditHead | None = None

    def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._c.execute(sql, args).fetchone()

    def get_plan(self, plan_id: str) -> PlanRecord | None:
        sql = f"SELECT {_PLAN_COLS} FROM plans WHERE plan_id = %s FOR UPDATE"  # noqa: S608
        row = self._one(sql, (plan_id,))
        if row is None:
            # As in get_state: no row, nothing locked, and two replicas submitting one plan id
            # would both insert it and both run it. Lock the id itself, then read again.
            with self._c.pipeline():
                self._c.execute(_LOCK_SQL, (_PLAN_LOCK, plan_id))
                cur = self._c.execute(sql, (plan_id,))
            row = cur.fetchone()
        return load_plan(row) if row else None

    def lease_of(self, plan_id: str) -> tuple[str | None, str] | None:
        row = self._one(
            "SELECT lease_owner, status FROM plans WHERE plan_id = %s FOR UPDATE", (plan_id,)
        )
        return (row["lease_owner"], row["status"]) if row else None

    def save_plan(self, p: PlanRecord) -> None:
        self._c.execute(
            f"INSERT INTO plans ({_PLAN_COLS}, timer_at, user_key) VALUES "  # noqa: S608
            "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (plan_id) DO UPDATE SET status = excluded.status, "
            "timer_at = excluded.timer_at, lease_owner = excluded.lease_owner, "
            "lease_until = excluded.lease_until, updated_at = excluded.updated_at, "
            "expires_at = excluded.expires_at, outcome = excluded.outcome, "
            "error = excluded.error, review = excluded.review, doc = excluded.doc",
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
            # Held until this transaction ends: appenders in every replica take turns. One
            # round trip for both (a pipeline): the head is read the moment the lock is ours.
            # The body comes along for its key id, read only if needed (a kilobyte more).
            with self._c.pipeline():
                self._c.execute(_LOCK_SQL, (_LOG_LOCK, ""))
                cur = self._c.execute(
                    "SELECT seq, hash, body FROM events ORDER BY seq DESC LIMIT 1"
                )
            row = cur.fetchone()
            self._head = (
                AuditHead(size=0, last_hash=_GENESIS)
                if row is None
                else AuditHead(
                    size=int(row["seq"]) + 1,
                    last_hash=row["hash"],
                    last_body=bytes(row["body"]),
                )
            )
        return self._head

    def append_events(self, rows: Sequence[EventRow]) -> None:
        if not rows:
            return
        expected = self.audit_head().size
        for offset, e in enumerate(rows):
            if e.seq != expected + offset:
                raise StorageError(f"event seq {e.seq} does not continue the log at {expected}")
        self._head = AuditHead(
            size=expected + len(rows),
            last_hash=rows[-1].hash,
            last_body=rows[-1].body,
        )
        with self._c.cursor() as cur:
            cur.executemany(
                "INSERT INTO events (seq, type, plan_id, step_id, ts, body, hash, leaf) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        e.seq,
                        e.type,
                        e.plan_id,
                        e.step_id,
                        e.timestamp,
                        e.body,
                        e.hash,
                        _leaf(e.body),
                    )
                    for e in rows
                ],
            )

    def instance_events(self, type_: str) -> list[EventRow]:
        rows = self._c.execute(
            "SELECT seq, type, plan_id, step_id, ts, body, hash FROM events "
            "WHERE plan_id IS NULL AND type = %s ORDER BY seq",
            (type_,),
        ).fetchall()
        return [_event(r) for r in rows]

    def put_meta(self, key: str, value: str) -> None:
        self._c.execute(
            "INSERT INTO meta (key, value) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def add_checkpoint(self, row: CheckpointRow) -> None:
        self._c.execute(
            "INSERT INTO checkpoints (size, root, note, created_at) VALUES (%s, %s, %s, %s)",
            (row.size, row.root, row.note, row.created_at),
        )

    def latest_checkpoint(self) -> CheckpointRow | None:
        row = self._one(
            "SELECT size, root, note, created_at FROM checkpoints ORDER BY size DESC LIMIT 1"
        )
        return _checkpoint(row) if row else None

    def node(self, level: int, index: int) -> bytes | None:
        if level != 0:
            return None
        row = self._one("SELECT leaf, body FROM events WHERE seq = %s", (index,))
        if row is None:
            return None
        return bytes(row["leaf"]) if row["leaf"] is not None else _leaf(bytes(row["body"]))

    def load_nodes(
        self, start: Mapping[int, int], *, limit: int | None = None
    ) -> dict[int, list[bytes]]:
        return _load_nodes(self._c, start, limit)

    def save_token(self, t: TokenRecord) -> None:
        self._c.execute(
            f"INSERT INTO tokens ({_TOKEN_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s) "  # noqa: S608
            "ON CONFLICT (token_id) DO UPDATE SET name = excluded.name, roles = excluded.roles, "
            "groups_ = excluded.groups_, token_hash = excluded.token_hash, "
            "revoked_at = excluded.revoked_at",
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
        with self._c.cursor() as cur:
            cur.executemany(_DELIVERY_UPSERT, [_delivery_row(d) for d in deliveries])

    def save_delivery(self, d: Delivery) -> None:
        self._c.execute(_DELIVERY_UPSERT, _delivery_row(d))

    def get_state(self, kind: str, key: str) -> Any:
        sql = "SELECT value FROM guard_state WHERE kind = %s AND key = %s FOR UPDATE"
        row = self._one(sql, (kind, key))
        if row is None:
            # No row, nothing locked: two replicas would both read None and both write (two
            # "breaker opened" events). Lock the key itself, then read again: a transaction
            # that held it may have committed the row meanwhile (READ COMMITTED: the next
            # statement sees it).
            with self._c.pipeline():
                self._c.execute(_LOCK_SQL, (_STATE_LOCK, f"{kind}/{key}"))
                cur = self._c.execute(sql, (kind, key))
            row = cur.fetchone()
        return orjson.loads(row["value"]) if row else None

    def get_states(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        if not keys:
            return {}
        where = " OR ".join(["(kind = %s AND key = %s)"] * len(keys))
        rows = self._c.execute(
            f"SELECT kind, key, value FROM guard_state WHERE {where}",  # noqa: S608 - placeholders
            [x for pair in keys for x in pair],
        ).fetchall()
        return {(r["kind"], r["key"]): orjson.loads(r["value"]) for r in rows}

    def put_state(self, kind: str, key: str, value: Any, *, at: datetime) -> None:
        if value is None:
            self._c.execute("DELETE FROM guard_state WHERE kind = %s AND key = %s", (kind, key))
            return
        self._c.execute(
            "INSERT INTO guard_state (kind, key, value, updated_at) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, "
            "updated_at = excluded.updated_at",
            (kind, key, orjson.dumps(value).decode(), at.isoformat()),
        )

    def bump(self, name: str, bucket: str, *, count: int = 1, amount: int = 0) -> tuple[int, int]:
        row = self._one(
            "INSERT INTO counters (name, bucket, count, amount) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (name, bucket) DO UPDATE SET count = counters.count + excluded.count, "
            "amount = counters.amount + excluded.amount RETURNING count, amount",
            (name, bucket, count, amount),
        )
        return int(row["count"]), int(row["amount"])

    def counter_sum(self, name: str, since: str) -> tuple[int, int]:
        return _counter_sum(self._c, name, since)

    def counter_sums(self, names: Sequence[str], since: str) -> dict[str, tuple[int, int]]:
        rows = self._c.execute(
            "SELECT name, SUM(count) AS c, SUM(amount) AS a FROM counters"
            " WHERE name = ANY(%s) AND bucket >= %s GROUP BY name",
            (list(names), since),
        ).fetchall()
        return sums_by_name(names, [(r["name"], r["c"], r["a"]) for r in rows])

    def lock_counters(self, names: Sequence[str]) -> None:
        # Sorted, one statement each in order (a single SELECT over a list would leave the
        # order to the planner). Two names may hash alike: then both share one lock, which
        # only serialises more; a cycle that could make is a deadlock the server detects
        # (retryable, like any other).
        todo = sorted(set(names))
        if not todo:
            return
        with self._c.pipeline():
            for name in todo:
                self._c.execute(_LOCK_SQL, (_COUNTER_LOCK, name))


_DELIVERY_UPSERT = (
    f"INSERT INTO outbox ({_DELIVERY_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "  # noqa: S608
    "ON CONFLICT (delivery_id) DO UPDATE SET next_at = excluded.next_at, "
    "attempts = excluded.attempts, status = excluded.status, last_error = excluded.last_error"
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


def _counter_sum(c: psycopg.Connection[Any], name: str, since: str) -> tuple[int, int]:
    row = c.execute(
        "SELECT COALESCE(SUM(count), 0) AS c, COALESCE(SUM(amount), 0) AS a FROM counters"
        " WHERE name = %s AND bucket >= %s",
        (name, since),
    ).fetchone()
    assert row is not None
    return int(row["c"]), int(row["a"])


def _load_nodes(
    c: psycopg.Connection[Any], start: Mapping[int, int], limit: int | None
) -> dict[int, list[bytes]]:
    rows = c.execute(  # LIMIT NULL is no limit
        "SELECT leaf, body FROM events WHERE seq >= %s ORDER BY seq LIMIT %s",
        (start.get(0, 0), limit),
    ).fetchall()
    leaves = [bytes(r["leaf"]) if r["leaf"] is not None else _leaf(bytes(r["body"])) for r in rows]
    return {0: leaves} if leaves else {}


def _durable_commits(conn: psycopg.Connection[Any]) -> None:
    # An acknowledged action must survive a crash of the server: a server (or a URL's
    # options) with synchronous_commit = off would lose the last acknowledged commits. Any
    # other level (local, remote_write, on, remote_apply) flushes at least locally: kept.
    row = conn.execute("SHOW synchronous_commit").fetchone()
    if row is not None and row["synchronous_commit"] == "off":
        conn.execute("SET synchronous_commit = on")


def _app_name(url: str) -> str:
    return str(conninfo_to_dict(url).get("application_name") or "proctor")


def _probe(url: str, timeout: float) -> None:
    """Connect once, directly, so that a URL that cannot work fails now with its cause.

    The pool alone retries in the background until its ``wait`` times out: a database that
    does not exist, a wrong role or password, or a server that is down cost 30 s, printed
    psycopg_pool's warning for every retry, and ended in "pool initialization incomplete".
    None of these heals by waiting, and a supervisor restarts a replica that started before
    its database; so the first failure is the answer (no pool exists yet to log anything).

    Raises:
        StorageError: the connection failed; the message is the server's (or libpq's).
    """
    params: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    try:
        params = conninfo_to_dict(url)  # a malformed URL raises here: reported below
        if "connect_timeout" not in params and "PGCONNECT_TIMEOUT" not in os.environ:
            extra["connect_timeout"] = max(2, min(10, int(timeout)))  # an unreachable host
        psycopg.connect(url, autocommit=True, application_name=_app_name(url), **extra).close()
    except psycopg.Error as exc:
        cause = " ".join(str(exc).split()).removeprefix("connection failed: ")
        dbname = params.get("dbname")
        if dbname and f'database "{dbname}" does not exist' in cause:
            hint = (
                f"Create it (`createdb {dbname}`, or CREATE DATABASE as its owner) or correct"
                " [database] url in config.toml / PROCTOR_DATABASE_URL; the first"
                " `proctor db upgrade` (or `proctor init`) then creates the schema."
            )
        else:
            hint = (
                "Check [database] url in config.toml and PROCTOR_DATABASE_URL, that the"
                " server runs and accepts connections from this host, and that the user may"
                " connect (a password goes in PGPASSWORD or ~/.pgpass)."
            )
        raise StorageError(
            f"cannot connect to PostgreSQL: {cause}", field="database.url", hint=hint
        ) from exc


class PostgresStore:
    """Plans, steps, approvals, guards and the audit log in PostgreSQL.

    Args:
        url: A ``postgresql://`` connection URL (libpq: ``options=-csearch_path%3Dname``
            selects a schema).
        min_size: Connections kept open.
        max_size: Most connections at once (one per concurrent transaction or read).
        timeout: Seconds to wait for a free connection before a ``StorageError``.
    """

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        timeout: float = 30.0,
        migrate: bool = True,
    ) -> None:
        self.url = url
        _probe(url, timeout)
        try:
            self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
                url,
                min_size=min_size,
                max_size=max_size,
                timeout=timeout,
                kwargs={
                    "row_factory": dict_row,
                    "autocommit": True,
                    # Named in pg_stat_activity; a URL's own application_name wins.
                    "application_name": _app_name(url),
                },
                open=True,
                # A connection broken by a server restart is replaced, not handed out.
                check=ConnectionPool.check_connection,
                configure=_durable_commits,
            )
            self._pool.wait(timeout=timeout)
            if migrate:
                self._migrate()
        except (psycopg.Error, PoolTimeout) as exc:
            raise StorageError(
                f"cannot open PostgreSQL database: {exc}",
                field="database.url",
                hint="Check the URL, that the server runs, and that the user may connect.",
            ) from exc

    def _migrate(self) -> None:
        with self._pool.connection() as c, c.transaction():
            c.execute(_LOCK_SQL, (_MIGRATE_LOCK, ""))
            c.execute(_META)
            row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            current = int(row["value"]) if row else 0
            for statement in pending(current, "postgresql"):
                c.execute(statement)
            # Every open, not only the migration's: a replica still on the old code (a rolling
            # upgrade) inserts plans without the key; the index finds them at once.
            rows = c.execute(USER_KEY_SELECT).fetchall()
            with c.cursor() as cur:
                cur.executemany(
                    "UPDATE plans SET user_key = %s WHERE plan_id = %s",
                    user_key_updates((r["plan_id"], r["on_behalf_of"]) for r in rows),
                )
            if current != SCHEMA_VERSION:
                c.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(SCHEMA_VERSION),),
                )

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[_Tx]:
        """Open a write transaction; commit on success, roll back on any exception.

        Raises:
            StorageError: wrapping any driver error.
        """
        try:
            with self._pool.connection() as c, c.transaction():
                if not durable:
                    c.execute("SET LOCAL synchronous_commit = off")
                yield _Tx(c)
        except (psycopg.Error, PoolTimeout) as exc:
            raise _wrap("transaction failed", exc) from exc

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            with self._pool.connection() as c:
                return c.execute(sql, args).fetchall()
        except (psycopg.Error, PoolTimeout) as exc:
            raise _wrap("query failed", exc) from exc

    def get_plan(self, plan_id: str) -> PlanRecord | None:
        """Return a plan or None."""
        rows = self._rows(f"SELECT {_PLAN_COLS} FROM plans WHERE plan_id = %s", (plan_id,))  # noqa: S608
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
            "%s",
            status=status,
            statuses=statuses,
            agent_id=agent_id,
            on_behalf_of=on_behalf_of,
            limit=limit,
            before=before,
        )
        if query is None:
            return []
        return [load_plan(r) for r in self._rows(*query)]

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
            self._rows,
            _PLAN_COLS,
            "%s",
            status,
            on_behalf_of=on_behalf_of,
            limit=limit,
            after=after,
        )
        return [load_plan(r) for r in found]

    def count_plans(self, statuses: Sequence[str]) -> dict[str, tuple[int, datetime]]:
        """Return, per status that has plans, their number and oldest ``created_at``."""
        # The index plans_by_status (status, created_at) answers this without reading plans.
        rows = self._rows(
            "SELECT status, COUNT(*) AS n, MIN(created_at) AS oldest FROM plans"
            " WHERE status = ANY(%s) GROUP BY status",
            (list(statuses),),
        )
        return {r["status"]: (int(r["n"]), datetime.fromisoformat(r["oldest"])) for r in rows}

    def due_plans(self, now: datetime, *, limit: int = 500) -> list[PlanRecord]:
        """Return plans whose next timer is at or before ``now``."""
        sql = (
            f"SELECT {_PLAN_COLS} FROM plans WHERE timer_at IS NOT NULL"  # noqa: S608
            " AND timer_at <= %s ORDER BY timer_at LIMIT %s"
        )
        return [load_plan(r) for r in self._rows(sql, (now.isoformat(), int(limit)))]

    def claimable_plans(self, now: datetime, *, limit: int = 100) -> list[PlanRecord]:
        """Return running or compensating plans with no live lease, oldest first."""
        sql = (
            f"SELECT {_PLAN_COLS} FROM plans WHERE status IN ('running', 'compensating')"  # noqa: S608
            " AND (lease_until IS NULL OR lease_until <= %s) ORDER BY updated_at LIMIT %s"
        )
        return [load_plan(r) for r in self._rows(sql, (now.isoformat(), int(limit)))]

    def read_events(
        self, *, after: int = -1, limit: int = 1000, plan_id: str | None = None
    ) -> list[EventRow]:
        """Return events with ``seq > after``, in order."""
        if plan_id is None:
            rows = self._rows(
                "SELECT * FROM events WHERE seq > %s ORDER BY seq LIMIT %s", (after, limit)
            )
        else:
            rows = self._rows(
                "SELECT * FROM events WHERE plan_id = %s AND seq > %s ORDER BY seq LIMIT %s",
                (plan_id, after, limit),
            )
        return [_event(r) for r in rows]

    def iter_events(self, *, batch: int = 5000) -> Iterator[EventRow]:
        """Yield every event in order."""
        after = -1
        while True:
            rows = self.read_events(after=after, limit=batch)
            if not rows:
                return
            yield from rows
            after = rows[-1].seq

    def event_count(self) -> int:
        """Return the number of events."""
        return int(self._rows("SELECT COUNT(*) AS n FROM events")[0]["n"])

    def get_meta(self, key: str) -> str | None:
        """Return a metadata value."""
        rows = self._rows("SELECT value FROM meta WHERE key = %s", (key,))
        return str(rows[0]["value"]) if rows else None

    def checkpoints(self) -> list[CheckpointRow]:
        """Return every checkpoint, smallest first."""
        rows = self._rows("SELECT size, root, note, created_at FROM checkpoints ORDER BY size")
        return [_checkpoint(r) for r in rows]

    def latest_checkpoint(self) -> CheckpointRow | None:
        """Return the largest checkpoint."""
        rows = self._rows(
            "SELECT size, root, note, created_at FROM checkpoints ORDER BY size DESC LIMIT 1"
        )
        return _checkpoint(rows[0]) if rows else None

    def load_nodes(
        self, start: Mapping[int, int], *, limit: int | None = None
    ) -> dict[int, list[bytes]]:
        """Return the stored Merkle leaves from ``start[0]`` on (``limit`` at most)."""
        try:
            with self._pool.connection() as c:
                return _load_nodes(c, start, limit)
        except (psycopg.Error, PoolTimeout) as exc:
            raise _wrap("query failed", exc) from exc

    def find_token(self, token_hash: str) -> TokenRecord | None:
        """Return the token with this hash."""
        rows = self._rows(
            f"SELECT {_TOKEN_COLS} FROM tokens WHERE token_hash = %s",  # noqa: S608
            (token_hash,),
        )
        return _token(rows[0]) if rows else None

    def list_tokens(self) -> list[TokenRecord]:
        """Return every token, oldest first."""
        sql = f"SELECT {_TOKEN_COLS} FROM tokens ORDER BY created_at, token_id"  # noqa: S608
        return [_token(r) for r in self._rows(sql)]

    def due_deliveries(self, now: datetime, *, limit: int = 100) -> list[Delivery]:
        """Return pending deliveries that are due, oldest first."""
        sql = (
            f"SELECT {_DELIVERY_COLS} FROM outbox WHERE status = 'pending'"  # noqa: S608
            " AND next_at <= %s ORDER BY next_at LIMIT %s"
        )
        return [_delivery(r) for r in self._rows(sql, (now.isoformat(), limit))]

    def deliveries(self, *, status: str, limit: int = 100) -> list[Delivery]:
        """Return deliveries in ``status``, newest first."""
        sql = (
            f"SELECT {_DELIVERY_COLS} FROM outbox WHERE status = %s"  # noqa: S608
            " ORDER BY created_at DESC LIMIT %s"
        )
        return [_delivery(r) for r in self._rows(sql, (status, limit))]

    def count_deliveries(self, statuses: Sequence[str]) -> dict[str, int]:
        """Return the number of deliveries per status of ``statuses`` (index outbox_due)."""
        rows = self._rows(
            "SELECT status, COUNT(*) AS n FROM outbox WHERE status = ANY(%s) GROUP BY status",
            (list(statuses),),
        )
        return {r["status"]: int(r["n"]) for r in rows}

    def list_state(self, kind: str) -> dict[str, Any]:
        """Return every guard state value of ``kind``, by key."""
        rows = self._rows("SELECT key, value FROM guard_state WHERE kind = %s", (kind,))
        return {r["key"]: orjson.loads(r["value"]) for r in rows}

    def read_state(self, kind: str, key: str) -> Any:
        """Return one state value (None if absent), outside any write transaction."""
        rows = self._rows("SELECT value FROM guard_state WHERE kind = %s AND key = %s", (kind, key))
        return orjson.loads(rows[0]["value"]) if rows else None

    def counter_sum(self, name: str, since: str) -> tuple[int, int]:
        """Return (count, amount) summed over the counter's buckets ``>= since``."""
        try:
            with self._pool.connection() as c:
                return _counter_sum(c, name, since)
        except (psycopg.Error, PoolTimeout) as exc:
            raise _wrap("query failed", exc) from exc

    def schema_version(self) -> int:
        """Return the schema version recorded in the database (0: none yet)."""
        try:
            return int(self.get_meta("schema_version") or 0)
        except StorageError:
            return 0  # no meta table: an empty database

    def close(self) -> None:
        """Close the pool."""
        self._pool.close()
