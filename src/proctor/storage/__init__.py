"""Store adapters: in-memory and SQLite (PostgreSQL comes with the replicas issue).

``open_store(url)`` picks the backend by URL scheme and imports only that module.
"""

from __future__ import annotations

from proctor.core.ports import Store
from proctor.errors import ConfigError

__all__ = ["open_store"]


def open_store(url: str, *, synchronous: str = "FULL") -> Store:
    """Open the store at ``url``: ``memory://`` or ``sqlite:///path/to.db``.

    Args:
        url: The store URL.
        synchronous: SQLite durability: ``FULL`` (commits survive power loss) or ``NORMAL``
            (survive a process crash; the last commits may be lost on power loss).

    Raises:
        ConfigError: for an unknown scheme.
    """
    if url == "memory://" or url.startswith("memory:"):
        from proctor.storage.memory import MemoryStore

        return MemoryStore()
    if url.startswith("sqlite:///"):
        from proctor.storage.sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"), synchronous=synchronous)
    raise ConfigError(
        f"unsupported database URL {url!r}",
        field="database.url",
        hint="Use sqlite:///path/to/proctor.db or memory://.",
    )
