"""Structured logs: JSON lines, the audit log's masking, credentials never written."""

from __future__ import annotations

import json
import logging

from proctor import Proctor
from proctor.app.gateway import GatewayOptions
from proctor.app.logs import EventLogListener, JsonFormatter, redact
from proctor.core.catalog import Catalog
from proctor.testing import FrozenClock, RecordingTool, make_plan

from .conftest import LOW, PARENT, PARENT_TRACE

SECRET = "4111-1111-1111-1111"


class Lines(logging.Handler):
    """Keeps each record as the JSON line ``JsonFormatter`` writes."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _logger(name: str) -> tuple[logging.Logger, Lines]:
    log = logging.getLogger(name)
    log.propagate = False
    log.setLevel(logging.INFO)
    handler = Lines()
    log.handlers[:] = [handler]
    return log, handler


class TestJsonFormatter:
    def test_a_record_is_one_json_object_with_its_fields(self):
        """ts, level, logger, message and the extras, on one line."""
        log, out = _logger("proctor.test.plain")

        log.warning("queue %s is slow", "outbox", extra={"depth": 12, "plan_id": "p1"})

        (line,) = out.lines
        assert "\n" not in line
        doc = json.loads(line)
        assert doc["level"] == "warning" and doc["logger"] == "proctor.test.plain"
        assert doc["message"] == "queue outbox is slow"
        assert (doc["depth"], doc["plan_id"]) == (12, "p1")
        assert doc["ts"].endswith("+00:00")

    def test_credentials_in_extras_are_masked_at_any_depth(self):
        """A token, a password or an Authorization header never reaches a log line."""
        log, out = _logger("proctor.test.secrets")

        log.info(
            "request",
            extra={
                "headers": {"Authorization": "Bearer s3cr3t-token", "Accept": "*/*"},
                "api_key": "k-123",
                "body": [{"user": "ada", "password": "hunter2", "otp": "123456"}],
                "note": "tokenless text stays",
            },
        )

        doc = json.loads(out.lines[0])
        assert doc["headers"] == {"Authorization": "***", "Accept": "*/*"}
        assert doc["api_key"] == "***"
        assert doc["body"] == [{"user": "ada", "password": "***", "otp": "***"}]
        assert doc["note"] == "tokenless text stays"
        assert not any(s in out.lines[0] for s in ("s3cr3t", "k-123", "hunter2", "123456"))

    def test_redact_leaves_plain_values_and_bounds_depth(self):
        """Scalars pass; a pathological nesting is cut, not recursed forever."""
        deep: dict = {}
        node = deep
        for _ in range(50):
            node["x"] = {}
            node = node["x"]

        assert redact(3) == 3 and redact("token") == "token"
        assert "***" in json.dumps(redact(deep))

    def test_an_exception_is_a_field(self):
        """exc_info becomes an ``exception`` field, still one line."""
        log, out = _logger("proctor.test.exc")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("failed")

        doc = json.loads(out.lines[0])
        assert "RuntimeError: boom" in doc["exception"]


class Everything:
    version = "sha256:everything"

    def evaluate(self, input):
        return {"steps": {s["id"]: {"outcome": "execute"} for s in input["steps"]}, "plan": {}}


class TestAuditEventLines:
    def test_each_event_is_logged_masked_as_in_the_audit_log(self):
        """The event lines carry the masked params, the trace id, and never the secret."""
        log, out = _logger("proctor.test.audit")
        p = Proctor.in_memory(
            catalog=Catalog(), policy=Everything(), clock=FrozenClock(), options=GatewayOptions()
        )
        p.action("card.charge", category="general", baselines=LOW, mask=["/card"])(RecordingTool())
        p.gateway.listeners.append(EventLogListener(log))

        rec = p.submit(
            make_plan([("card.charge", {"card": SECRET, "amount": 5})]), traceparent=PARENT
        )

        docs = [json.loads(line) for line in out.lines]
        assert [d["event"] for d in docs] == [
            e.type for e in p.gateway.store.read_events(plan_id=rec.plan_id)
        ]
        submitted = next(d for d in docs if d["event"] == "plan.submitted")
        assert submitted["data"]["steps"][0]["params"] == {"card": "***", "amount": 5}
        assert submitted["actions"][0]["payload_hash"].startswith("hmac-sha256:")  # keyed: masked
        assert {d["trace_id"] for d in docs} == {PARENT_TRACE}
        assert all(d["plan_id"] == rec.plan_id for d in docs)
        assert not any(SECRET in line for line in out.lines)

    def test_nothing_is_parsed_when_the_level_is_off(self):
        """With INFO off the listener returns at once (the hot path pays nothing)."""
        log, out = _logger("proctor.test.quiet")
        log.setLevel(logging.WARNING)
        p = Proctor.in_memory(
            catalog=Catalog(), policy=Everything(), clock=FrozenClock(), options=GatewayOptions()
        )
        p.action("shop.buy", category="general", baselines=LOW)(RecordingTool())
        p.gateway.listeners.append(EventLogListener(log))

        p.submit(make_plan([("shop.buy", {})]))

        assert out.lines == []
