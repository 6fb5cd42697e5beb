"""Schema migrations: one ordered list, for SQLite and PostgreSQL, recorded in ``meta``.

Each migration is written once, in the SQL both databases share; ``migrations_for`` renders it
for a dialect (for PostgreSQL: ``BLOB`` is ``BYTEA``, integer keys are ``BIGINT``, ``TEXT``
is ``TEXT COLLATE "C"``, and ``WITHOUT ROWID`` is SQLite's alone). A migration is never
edited once released, only followed by a new one.

Times are ISO-8601 ``TEXT`` (UTC, ``datetime.isoformat``) in both databases, compared as
strings (timers, leases, counter buckets, paging cursors). The ``"C"`` collation makes
PostgreSQL compare them, and order plan ids, byte by byte as SQLite does, whatever the
database's locale (``en_US`` ignores punctuation at first and orders ``p-2`` before ``p1``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from proctor.core.approvals import user_key
from proctor.errors import StorageError

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "USER_KEY_SELECT",
    "migrations_for",
    "pending",
    "user_key_updates",
]

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE IF NOT EXISTS meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS plans (
            plan_id TEXT PRIMARY KEY,
            digest TEXT NOT NULL,
            status TEXT NOT NULL,
            agent_id TEXT NOT NULL,
            on_behalf_of TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            expires_at TEXT,
            outcome TEXT NOT NULL,
            policy_version TEXT NOT NULL,
            sandbox INTEGER NOT NULL DEFAULT 0,
            review INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            doc BLOB NOT NULL
        );
        CREATE INDEX IF NOT EXISTS plans_by_status ON plans (status, created_at);
        CREATE INDEX IF NOT EXISTS plans_by_agent ON plans (agent_id, created_at);
        CREATE INDEX IF NOT EXISTS plans_by_created ON plans (created_at, plan_id);
        CREATE TABLE IF NOT EXISTS events (
            seq INTEGER PRIMARY KEY,
            type TEXT NOT NULL,
            plan_id TEXT,
            step_id TEXT,
            ts TEXT NOT NULL,
            body BLOB NOT NULL,
            hash TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS events_by_plan ON events (plan_id, seq);
        """,
    ),
    (
        2,
        """
        -- Leaf hashes of the audit log's Merkle tree (level 0): interior nodes are rebuilt.
        CREATE TABLE IF NOT EXISTS merkle_nodes (
            level INTEGER NOT NULL,
            idx INTEGER NOT NULL,
            hash BLOB NOT NULL,
            PRIMARY KEY (level, idx)
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS checkpoints (
            size INTEGER PRIMARY KEY,
            root BLOB NOT NULL,
            note TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        """,
    ),
    (
        3,
        """
        CREATE TABLE IF NOT EXISTS tokens (
            token_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            roles TEXT NOT NULL,
            groups_ TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            revoked_at TEXT
        );
        CREATE TABLE IF NOT EXISTS outbox (
            delivery_id TEXT PRIMARY KEY,
            event TEXT NOT NULL,
            target TEXT NOT NULL,
            payload BLOB NOT NULL,
            created_at TEXT NOT NULL,
            next_at TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL,
            last_error TEXT
        );
        CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_at);
        """,
    ),
    (
        4,
        """
        ALTER TABLE plans ADD COLUMN timer_at TEXT;
        CREATE INDEX IF NOT EXISTS plans_by_timer ON plans (timer_at) WHERE timer_at IS NOT NULL;
        """,
    ),
    (
        5,
        """
        -- Merkle leaf hashes move into the events rows (one B-tree fewer per commit), rows
        -- written before keep NULL and their leaf is computed from the body when read.
        ALTER TABLE events ADD COLUMN leaf BLOB;
        DROP TABLE IF EXISTS merkle_nodes;
        DROP INDEX IF EXISTS plans_by_agent;
        """,
    ),
    (
        6,
        """
        -- Durable execution: the lease of the worker running a plan (its timer_at is the
        -- lease expiry, so an expired lease is due work like any other timer).
        ALTER TABLE plans ADD COLUMN lease_owner TEXT;
        ALTER TABLE plans ADD COLUMN lease_until TEXT;
        -- Guards: kill switches, breakers, whitelists, autonomy levels (one JSON value per
        -- kind and key) and windowed counters for rate limits and budgets.
        CREATE TABLE IF NOT EXISTS guard_state (
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (kind, key)
        );
        CREATE TABLE IF NOT EXISTS counters (
            name TEXT NOT NULL,
            bucket TEXT NOT NULL,
            count INTEGER NOT NULL DEFAULT 0,
            amount BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (name, bucket)
        );
        """,
    ),
    (
        7,
        """
        -- Counters as one B-tree keyed by (name, bucket): every plan bumps them, and a table
        -- plus its primary-key index were two more pages to write per commit.
        CREATE TABLE counters_v7 (
            name TEXT NOT NULL,
            bucket TEXT NOT NULL,
            count INTEGER NOT NULL DEFAULT 0,
            amount BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (name, bucket)
        ) WITHOUT ROWID;
        INSERT INTO counters_v7 (name, bucket, count, amount)
            SELECT name, bucket, count, amount FROM counters;
        DROP TABLE counters;
        ALTER TABLE counters_v7 RENAME TO counters;
        """,
    ),
    (
        8,
        """
        -- A user's plans (the console's timeline and confirmations), newest first, without
        -- reading anyone else's: its columns never change, so updates leave it alone.
        CREATE INDEX IF NOT EXISTS plans_by_user ON plans (on_behalf_of, created_at, plan_id);
        -- Waiting plans by deadline (the inbox, soonest first). Partial: a plan executed
        -- without waiting never has a deadline and never enters it.
        CREATE INDEX IF NOT EXISTS plans_by_deadline ON plans (status, expires_at, plan_id)
            WHERE expires_at IS NOT NULL;
        """,
    ),
    (
        9,
        """
        -- A user's plans are found by who she is, not by how the agent spelt her name:
        -- user_key is proctor.core.approvals.user_key(on_behalf_of) (an ASCII name
        -- case-folded), the comparison "is this the plan's user" makes. SQL has no NFKC case
        -- fold, so the store computes it: on every save, and for the rows written before
        -- this migration in the same transaction (``user_key_updates``).
        ALTER TABLE plans ADD COLUMN user_key TEXT;
        DROP INDEX IF EXISTS plans_by_user;
        CREATE INDEX IF NOT EXISTS plans_by_user_key ON plans (user_key, created_at, plan_id);
        """,
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1][0]
"""The schema version this code expects."""


_POSTGRES = (
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\bTEXT\b"), 'TEXT COLLATE "C"'),
    (re.compile(r"\bseq INTEGER PRIMARY KEY\b"), "seq BIGINT PRIMARY KEY"),
    (re.compile(r"\bsize INTEGER PRIMARY KEY\b"), "size BIGINT PRIMARY KEY"),
    (re.compile(r"\)\s*WITHOUT ROWID"), ")"),
)


def _statements(sql: str) -> list[str]:
    # Comments go first: a ';' in one must not split a statement.
    code = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [s.strip() for s in code.split(";") if s.strip()]


def migrations_for(dialect: str) -> list[tuple[int, list[str]]]:
    """Return ``(version, statements)`` for ``sqlite`` or ``postgresql``."""
    if dialect not in ("sqlite", "postgresql"):
        raise ValueError(f"unknown SQL dialect {dialect!r}")
    out = []
    for version, sql in MIGRATIONS:
        statements = _statements(sql)
        if dialect == "postgresql":
            for pattern, replacement in _POSTGRES:
                statements = [pattern.sub(replacement, st) for st in statements]
        out.append((version, statements))
    return out


def pending(current: int, dialect: str) -> list[str]:
    """Return the statements that bring a schema at version ``current`` up to date.

    Both stores migrate with it, each under its own lock and transaction.

    Raises:
        StorageError: the schema is newer than this Proctor's.
    """
    if current > SCHEMA_VERSION:
        raise StorageError(
            f"database schema {current} is newer than this Proctor ({SCHEMA_VERSION})",
            hint="Install the Proctor version that wrote it (or restore the backup taken before"
            " the upgrade): a database is never downgraded (docs/operations.md, Upgrades).",
        )
    return [
        statement
        for version, statements in migrations_for(dialect)
        if version > current
        for statement in statements
    ]


USER_KEY_SELECT = "SELECT plan_id, on_behalf_of FROM plans WHERE user_key IS NULL"
"""The rows ``user_key_updates`` fills in (on every open of a store at schema 9 or later)."""


def user_key_updates(rows: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Return ``(user_key, plan_id)`` for ``(plan_id, on_behalf_of)`` rows (``USER_KEY_SELECT``).

    A store runs ``UPDATE plans SET user_key = ? WHERE plan_id = ?`` with them in its
    migration's transaction on every open (not only when migrating to schema 9: a replica
    still on the old code inserts plans without the key), so no plan stays without it (one
    without would be missing from its user's lists).
    """
    return [(user_key(on_behalf_of), plan_id) for plan_id, on_behalf_of in rows]
