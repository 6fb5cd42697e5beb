"""Webhook notifications: audit events become outbox deliveries in the events' transaction.

``Notifier`` is an ``EventListener``. The journal calls it inside the transaction that
appends the events, so a delivery commits if and only if the event it announces commits (the
transactional outbox): a receiver is never told of a state change that rolled back, and a
committed change is never left unannounced. It makes no network call; ``proctor.app.dispatch``
sends the deliveries later, with retries.

Audit events map to webhook events as follows (docs/webhooks.md)::

    plan.routed (awaiting_approval | awaiting_confirmation)  → approval.needed
    policy.decided                                           → plan.decided
    plan.finished succeeded                                  → plan.executed
    plan.finished failed | compensated                       → plan.failed
    plan.finished undone                                     → plan.undone
    breaker.opened, anomaly                                  → the same name
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from proctor.config import WebhookSettings
from proctor.core.notifications import Delivery
from proctor.core.ports import Clock, EventRow, Transaction

__all__ = ["Notification", "Notifier", "notifications", "render_payload"]

_WAITING = frozenset({"awaiting_approval", "awaiting_confirmation"})
_FINISHED = {
    "succeeded": "plan.executed",
    "failed": "plan.failed",
    "compensated": "plan.failed",
    "undone": "plan.undone",
}
# Escalations, passed through under their webhook name (the guards write anomaly.detected).
_PASS_THROUGH = {
    "breaker.opened": "breaker.opened",
    "anomaly": "anomaly",
    "anomaly.detected": "anomaly",
}
# Audit event types that can produce a webhook event, by the webhook events they produce.
_SOURCES = {
    "approval.needed": "plan.routed",
    "plan.decided": "policy.decided",
    "plan.executed": "plan.finished",
    "plan.failed": "plan.finished",
    "plan.undone": "plan.finished",
    "breaker.opened": "breaker.opened",
    "anomaly": "anomaly",
}
_ALL_SOURCES = frozenset(_SOURCES.values()) | {"anomaly.detected"}
_MAX_SUMMARY = 500


def _sources(events: Any) -> frozenset[str]:
    """The audit event types that can produce the webhook ``events``."""
    out = {_SOURCES[e] for e in events}
    if "anomaly" in out:
        out.add("anomaly.detected")
    return frozenset(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """One webhook event derived from one audit event.

    Attributes:
        event: The webhook event (``approval.needed``, ``plan.decided``, ...).
        plan_id: The plan it is about, if any.
        status: The plan's status (or the escalation's own status), if known.
        summary: One line for humans.
        occurred_at: The audit event's timestamp (ISO 8601, UTC).
        seq: The audit event's index in the log.
        hash: The audit event's hash (``sha256:<hex>``), so a receiver can ask for proof.
    """

    event: str
    plan_id: str | None
    status: str | None
    summary: str
    occurred_at: str
    seq: int
    hash: str


def notifications(
    rows: Sequence[EventRow], *, wanted: frozenset[str] | None = None
) -> list[Notification]:
    """Return the webhook events announced by a batch of freshly sealed audit events.

    The batch is what one transaction appended: ``policy.decided`` and ``plan.routed`` of a
    plan arrive together, so each can borrow details from the other.

    Args:
        rows: The events, in log order.
        wanted: Only build these webhook events (None: all).
    """
    sources = _sources(wanted if wanted is not None else _SOURCES)
    # policy.decided and plan.routed lend each other details, so both are parsed.
    parse = _ALL_SOURCES if sources else frozenset()
    bodies = {r.seq: _body(r) for r in rows if r.type in parse}
    by_plan = {(r.plan_id, r.type): bodies[r.seq] for r in rows if r.seq in bodies}
    out = []
    for r in rows:
        if r.type not in sources:
            continue
        n = _notification(r, bodies[r.seq], by_plan)
        if n is not None and (wanted is None or n.event in wanted):
            out.append(n)
    return out


def _body(row: EventRow) -> dict[str, Any]:
    body = orjson.loads(row.body)
    return body if isinstance(body, dict) else {}


def _data(body: Mapping[str, Any]) -> Mapping[str, Any]:
    data = body.get("data")
    return data if isinstance(data, dict) else {}


def _who(body: Mapping[str, Any]) -> str:
    actor = body.get("actor") if isinstance(body.get("actor"), dict) else {}
    agent = actor.get("agent_id") if actor else None
    user = body.get("user_id")
    return f"agent {agent or '?'} on behalf of {user or '?'}"


def _plan_summary(body: Mapping[str, Any]) -> str:
    plan = body.get("plan")
    return str(plan.get("summary", "")) if isinstance(plan, dict) else ""


def _notification(
    row: EventRow,
    body: Mapping[str, Any],
    by_plan: Mapping[tuple[str | None, str], Mapping[str, Any]],
) -> Notification | None:
    data = _data(body)
    pid = row.plan_id
    what = _plan_summary(body)
    event: str | None = None
    status: str | None = None
    summary = ""
    if row.type == "plan.routed":
        status = str(data.get("status", ""))
        if status not in _WAITING:
            return None
        event = "approval.needed"
        if status == "awaiting_confirmation":
            summary = f"Plan {pid} waits for {body.get('user_id')} to confirm: {what}"
        else:
            # Routed on to the approvers after its user confirmed: the event carries the
            # quorum itself (policy.decided was appended by an earlier transaction).
            decided = data if "approver_roles" in data else None
            if decided is None:
                decided = _data(by_plan.get((pid, "policy.decided"), {})).get("decision", {})
            roles = ", ".join(decided.get("approver_roles", [])) or "any approver"
            count = decided.get("approvals", 1)
            summary = f"Plan {pid} needs {count} approval(s) from {roles}: {what}"
            if data.get("after") == "confirmation":
                summary += f" (confirmed by {body.get('user_id')})"
        summary += f" ({_who(body)})"
    elif row.type == "policy.decided":
        event = "plan.decided"
        routed = _data(by_plan.get((pid, "plan.routed"), {}))
        status = str(routed["status"]) if "status" in routed else None
        decision = data.get("decision") if isinstance(data.get("decision"), dict) else {}
        assessment = data.get("assessment") if isinstance(data.get("assessment"), dict) else {}
        outcome = decision.get("outcome", "?") if decision else "?"
        risk = ""
        if assessment:
            risk = f" (risk {assessment.get('total')}, {assessment.get('pattern')})"
        summary = f"Policy decided {outcome} for plan {pid}{risk}: {what} ({_who(body)})"
    elif row.type == "plan.finished":
        status = str(data.get("status", ""))
        event = _FINISHED.get(status)
        if event is None:
            return None
        reason = data.get("reason")
        summary = f"Plan {pid} {status}: {reason or what}"
    elif row.type in _PASS_THROUGH:
        event = _PASS_THROUGH[row.type]
        status = str(data["status"]) if "status" in data else None
        text = data.get("summary") or data.get("reason") or data.get("message") or row.type
        summary = str(text) if pid is None else f"{text} (plan {pid})"
    if event is None:
        return None
    if len(summary) > _MAX_SUMMARY:
        summary = summary[: _MAX_SUMMARY - 1] + "…"
    return Notification(
        event=event,
        plan_id=pid,
        status=status,
        summary=summary,
        occurred_at=row.timestamp,
        seq=row.seq,
        hash=row.hash,
    )


def render_payload(
    n: Notification, *, delivery_id: str, console_url: str, format: str = "json"
) -> bytes:
    """Return the body to POST for one notification.

    Args:
        n: The notification.
        delivery_id: The delivery's id (also the ``Proctor-Delivery`` header).
        console_url: Base URL of the web console; the plan link is ``<base>/plans/<id>``.
        format: ``json`` (Proctor's own shape) or ``slack`` (incoming-webhook JSON).
    """
    link = f"{console_url.rstrip('/')}/plans/{n.plan_id}" if n.plan_id else None
    if format == "slack":
        return orjson.dumps(_slack(n, link))
    return orjson.dumps(
        {
            "id": delivery_id,
            "event": n.event,
            "occurred_at": n.occurred_at,
            "plan_id": n.plan_id,
            "status": n.status,
            "summary": n.summary,
            "links": {"plan": link},
            "audit": {"seq": n.seq, "hash": n.hash},
        }
    )


def _mrkdwn(text: str) -> str:
    # Slack's mrkdwn treats these three as control characters (links, mentions).
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack(n: Notification, link: str | None) -> dict[str, Any]:
    head = f"*{n.event}*" + (f" · `{n.plan_id}`" if n.plan_id else "")
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{head}\n{_mrkdwn(n.summary)}"}}
    ]
    if link is not None:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open in Proctor"},
                        "url": link,
                    }
                ],
            }
        )
    return {"text": f"[{n.event}] {n.summary}", "blocks": blocks}


class Notifier:
    """The webhook outbox listener: enqueues one delivery per subscribed target.

    Args:
        targets: The configured webhooks and ticket targets.
        clock: Stamps ``created_at`` / ``next_at`` (a new delivery is due at once).
        console_url: Base URL of the web console, for plan links.
        on_enqueue: Called after deliveries were queued (still inside the transaction), for
            example ``Dispatcher.wake``; it must not block.
    """

    def __init__(
        self,
        targets: Sequence[WebhookSettings],
        *,
        clock: Clock,
        console_url: str = "http://127.0.0.1:8700",
        on_enqueue: Callable[[], None] | None = None,
    ) -> None:
        self.targets = tuple(targets)
        self.clock = clock
        self.console_url = console_url
        self.on_enqueue = on_enqueue
        self._wanted = frozenset(e for t in self.targets for e in t.events)
        self._sources = _sources(self._wanted)

    def on_events(self, tx: Transaction, rows: Sequence[EventRow]) -> None:
        """Queue deliveries for the webhook events that ``rows`` announce."""
        # The hot path: most events (step.*, plan.submitted) interest no webhook.
        if not any(r.type in self._sources for r in rows):
            return
        now = self.clock.now()
        out = []
        for n in notifications(rows, wanted=self._wanted):
            for t in self.targets:
                if n.event not in t.events:
                    continue
                delivery_id = uuid.uuid4().hex
                out.append(
                    Delivery(
                        delivery_id=delivery_id,
                        event=n.event,
                        target=t.target,
                        payload=render_payload(
                            n,
                            delivery_id=delivery_id,
                            console_url=self.console_url,
                            format=t.format,
                        ),
                        created_at=now,
                        next_at=now,
                    )
                )
        if out:
            tx.enqueue(out)
            if self.on_enqueue is not None:
                self.on_enqueue()
