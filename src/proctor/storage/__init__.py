"""Store adapters: in-memory, SQLite (one process) and PostgreSQL (several replicas).

``open_store(url)`` picks the backend by URL scheme and imports only that module.
"""

from __future__ import annotations

from proctor.core.ports import Store
from proctor.errors import ConfigError, MissingDependencyError

__all__ = ["SCHEMA_VERSION", "open_store"]

from proctor.storage.migrations import SCHEMA_VERSION


def open_store(
    url: str, *, synchronous: str = "FULL", migrate: bool = True, pool_size: int = 8
) -> Store:
    """Open the store at ``url``: ``memory://``, ``sqlite:///path/to.db`` or ``postgresql://…``.

    Args:
        url: The store URL.
        synchronous: SQLite durability: ``FULL`` (commits survive power loss) or ``NORMAL``
            (survive a process crash; the last commits may be lost on power loss).
        migrate: Bring the schema up to date on open (default). False opens as it is
            (``proctor db status``).
        pool_size: PostgreSQL: the most connections held at once (``[database] pool_size``).

    Raises:
        ConfigError: for an unknown scheme.
    """
    if url == "memory://" or url.startswith("memory:"):
        from proctor.storage.memory import MemoryStore

        return MemoryStore()
    if url.startswith("sqlite:///"):
        from proctor.storage.sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"), synchronous=synchronous, migrate=migrate)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from proctor.storage.postgres import PostgresStore
        except ImportError as exc:
            raise MissingDependencyError(
                "PostgreSQL support is not installed",
                field="database.url",
                hint="pip install 'proctor[postgres]'",
            ) from exc
        return PostgresStore(url, migrate=migrate, max_size=pool_size)
    raise ConfigError(
        f"unsupported database URL {url!r}",
        field="database.url",
        hint="Use sqlite:///path/to/proctor.db, postgresql://user@host/db or memory://.",
    )
