"""Structured logs: JSON lines, with the audit log's masking (docs/observability.md).

``JsonFormatter`` writes any log record as one JSON object per line. ``EventLogListener``
logs every audit event as it is appended, built from the sealed event itself: its params
were masked by the action's rules before sealing, so a log line can never carry more than
the audit log does (a masked value is ``"***"``; a personal-data result only its hash).

Fields a log call adds with ``extra=`` pass through one more net: a value under a key that
names a credential (``authorization``, ``token``, ``password``, ``secret``, ``cookie``,
``api_key``...), at any depth, is written as ``"***"`` like a masked audit param.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from proctor.core.masking import MASK
from proctor.core.ports import EventRow, Transaction

__all__ = ["EventLogListener", "JsonFormatter", "configure_json_logging", "redact"]

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
# Substrings of a key (lowercased, "-" as "_") whose value is a credential.
_SECRET_KEYS = (
    "authorization",
    "token",
    "password",
    "passwd",
    "secret",
    "cookie",
    "api_key",
    "apikey",
    "private_key",
)
_SECRET_EXACT = frozenset({"otp", "totp", "otp_code"})  # too short to match as substrings


def _secret(key: str) -> bool:
    k = key.lower().replace("-", "_")
    return k in _SECRET_EXACT or any(s in k for s in _SECRET_KEYS)


def redact(value: Any, *, depth: int = 0) -> Any:
    """Return ``value`` with every credential-named key's value replaced by ``"***"``."""
    if depth > 20:
        return MASK  # deeper than any record we write: refuse rather than recurse forever
    if isinstance(value, dict):
        return {
            k: MASK if isinstance(k, str) and _secret(k) else redact(v, depth=depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v, depth=depth + 1) for v in value]
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and any extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Serialise ``record`` (extras passed with ``extra=`` become top-level fields)."""
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = MASK if _secret(key) else redact(value)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure_json_logging(level: int = logging.INFO) -> None:
    """Send every log record of the process to stderr as JSON lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


class EventLogListener:
    """Logs each appended audit event on the ``proctor.audit`` logger (INFO)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("proctor.audit")

    def on_events(self, tx: Transaction, rows: Sequence[EventRow]) -> None:
        """Log ``rows`` (inside the appending transaction: a rolled-back one may show)."""
        if not self.log.isEnabledFor(logging.INFO):
            return
        for row in rows:
            body = orjson.loads(row.body)
            self.log.info(
                row.type,
                extra={
                    "event": row.type,
                    "seq": row.seq,
                    "plan_id": row.plan_id,
                    "step_id": row.step_id,
                    "user_id": body.get("user_id"),
                    "trace_id": body.get("trace_id"),
                    "span_id": body.get("span_id"),
                    "actions": body.get("actions_attempted"),
                    "data": body.get("data"),
                },
            )
