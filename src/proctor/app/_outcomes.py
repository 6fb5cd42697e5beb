"""What one attempt of a step produced, and how it is made fit for the audit log.

Shared by the executor, its recovery mixin and the saga (implementation only).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from proctor.core.lifecycle import PlanRecord

MAX_ERROR = 500

# Why sandbox mode refuses to run something, or leaves a plan as it is
# (``Executor.refuse_in_sandbox``; a remote MCP proxy's queued call is told the same).
SANDBOX_ON = "sandbox mode is on ([execution] sandbox): no handler runs"


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    result: Any = None
    error: str | None = None
    retryable: bool = False
    canary: Any = None


class LostLease(Exception):
    """The plan moved on without us (takeover, timeout): our result is not recorded."""

    def __init__(self, record: PlanRecord) -> None:
        super().__init__(record.plan_id)
        self.record = record


_MAX_RESULT = 64 * 1024


def bounded(result: Any) -> Any:
    """Keep a result that fits in the log; a bigger one is replaced by its size and hash.

    The effect happened either way: the step succeeds, and the hash proves what it returned.
    """
    if result is None or isinstance(result, (bool, int)):
        return result
    body = orjson.dumps(result)
    if len(body) <= _MAX_RESULT:
        return result
    return {
        "truncated": True,
        "bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }


def err(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text[:MAX_ERROR]


def jsonable(value: Any) -> Any:
    """Return a JSON-safe, canonicalisable form of a tool's result (floats become strings)."""
    if value is None or isinstance(value, (str, bool, int)):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53 - 1:
            return str(value)
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)
