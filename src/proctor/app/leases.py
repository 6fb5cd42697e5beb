"""Lease owners: who holds a running plan, and whether that process is still alive."""

from __future__ import annotations

import os
import socket

__all__ = ["owner_alive", "process_owner_id"]


def _start_time(pid: int) -> str | None:
    """Return the process's start time in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def process_owner_id() -> str:
    """Return this process's lease owner id: ``host:pid:start-time:nonce``."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or '0'}:{os.urandom(3).hex()}"


def owner_alive(owner: str) -> bool:
    """Whether a lease owner may still be alive.

    An owner on this host is dead when its pid is gone or now belongs to another process (a
    different start time). An owner on another host is presumed alive: only its lease expiry
    frees its plans.
    """
    host, _, rest = owner.partition(":")
    pid_s, _, rest = rest.partition(":")
    start, _, _ = rest.partition(":")
    if host != socket.gethostname() or not pid_s.isdigit():
        return True
    current = _start_time(int(pid_s))
    return current is not None and (start == "0" or current == start)
