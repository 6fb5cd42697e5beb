"""Tools for the crash tests: they record every call in files outside Proctor's database.

``calls.log`` gets one line per call (``kind key``), written with one ``os.write`` on an
``O_APPEND`` descriptor: it survives the SIGKILL of the process that wrote it. Idempotent
tools apply their effect once per idempotency key (an ``O_EXCL`` file per key), as a real
idempotent API does; non-idempotent ones apply it every time they are called.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

_DIR = Path(os.environ.get("CRASH_DIR", "."))


def _log(kind: str, key: str) -> None:
    fd = os.open(_DIR / "calls.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{kind} {key} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def _effect_once(kind: str, key: str) -> bool:
    """Apply an idempotent effect: True the first time for this key, False after."""
    try:
        fd = os.open(_DIR / "effects" / f"{kind}-{key}", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def _nap() -> None:
    time.sleep(random.uniform(0.005, 0.06))


def idem(params: dict[str, Any], call: Any) -> dict[str, Any]:
    """An idempotent write."""
    _log("idem", call.idempotency_key)
    _nap()
    applied = _effect_once("idem", call.idempotency_key)
    _nap()
    return {"applied": applied}


def once(params: dict[str, Any], call: Any) -> dict[str, Any]:
    """A non-idempotent write: every call has an effect."""
    _log("once", call.idempotency_key)
    _nap()
    return {"charged": True}


def fail(params: dict[str, Any], call: Any) -> dict[str, Any]:
    """Always fails: the plan is compensated."""
    _log("fail", call.idempotency_key)
    _nap()
    raise ValueError("this step always fails")


def undo(params: dict[str, Any], call: Any) -> None:
    """Compensation of idem/once/book (idempotent per key)."""
    _log("undo", call.idempotency_key)
    _nap()
    _effect_once("undo", call.idempotency_key)


def spend(params: dict[str, Any], call: Any) -> dict[str, Any]:
    """Spend an amount once per idempotency key (the effect file names the amount)."""
    _log("spend", call.idempotency_key)
    _nap()
    key = f"{call.idempotency_key}={params['amount']}"
    return {"applied": _effect_once("spend", key)}
