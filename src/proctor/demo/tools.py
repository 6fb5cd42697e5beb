"""Demo tools: a small, deterministic world of bookings, payments, services and records.

Each tool deduplicates on the idempotency key it receives: a retry of the same step returns
the same confirmation instead of booking twice. State lives in ``WORLD`` (process memory),
which is enough for a demo and for tests that count effects.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any

from proctor.core.ports import ToolCall

__all__ = ["WORLD", "World"]


@dataclass
class World:
    """Everything the demo tools change, plus a count of real effects."""

    bookings: dict[str, dict[str, Any]] = field(default_factory=dict)
    payments: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, str] = field(default_factory=lambda: {"cust-42": "basic"})
    services: dict[str, dict[str, str]] = field(
        default_factory=lambda: {
            "staging": {"checkout": "degraded"},
            "production": {"checkout": "degraded"},
        }
    )
    purchase_orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    emails: list[dict[str, Any]] = field(default_factory=list)
    effects: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        """Return the world to its initial state."""
        fresh = World()
        with self.lock:
            for name in (
                "bookings",
                "payments",
                "subscriptions",
                "services",
                "purchase_orders",
                "emails",
                "effects",
            ):
                setattr(self, name, getattr(fresh, name))


WORLD = World()

CANDIDATES: list[dict[str, Any]] = [
    {
        "name": "Ada Byron",
        "email": "ada@example.org",
        "phone": "+44 20 7946 0001",
        "skills": ["python", "rego"],
        "years": 7,
    },
    {
        "name": "Grace Hopper",
        "email": "grace@example.org",
        "phone": "+1 202 555 0143",
        "skills": ["cobol", "compilers"],
        "years": 12,
    },
    {
        "name": "Alan Kay",
        "email": "alan@example.org",
        "phone": "+1 415 555 0199",
        "skills": ["smalltalk", "python"],
        "years": 9,
    },
]


def _ref(prefix: str, key: str) -> str:
    return f"{prefix}-{hashlib.sha256(key.encode()).hexdigest()[:8].upper()}"


# --------------------------------------------------------------------------- travel


def travel_search(params: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    """Find flights (read-only)."""
    base = 9_900 + 100 * (len(params["destination"]) % 7)
    return {
        "offers": [
            {"flight": f"PX{100 + i}", "price": base + 2_500 * i, "currency": "EUR"}
            for i in range(3)
        ]
    }


def travel_reserve(params: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    """Hold a seat; cancellable."""
    with WORLD.lock:
        if call.idempotency_key not in WORLD.bookings:
            WORLD.effects += 1
            WORLD.bookings[call.idempotency_key] = {"kind": "flight", **params, "status": "held"}
    return {"reservation": _ref("RES", call.idempotency_key)}


def travel_cancel(params: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    """Release a held seat."""
    with WORLD.lock:
        booking = WORLD.bookings.get(call.idempotency_key)
        if booking is not None:
            booking["status"] = "cancelled"
            WORLD.effects += 1
    return {"cancelled": True}


def travel_pay(params: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    """Charge the user's card for a trip."""
    with WORLD.lock:
        if call.idempotency_key not in WORLD.payments:
            WORLD.effects += 1
            WORLD.payments[call.idempotency_key] = {**params, "status": "captured"}
    return {"payment": _ref("PAY", call.idempotency_key), "amount": params["amount"]}


def travel_refund(params: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    """Refund a trip payment (the compensation of travel.pay)."""
    with WORLD.lock:
        payment = WORLD.payments.get(call.idempotency_key)
        if payment is not None:
            payment["status"] = "refunded"
            WORLD.effects += 1
    return {"refunded": True}


def travel_pay_simulate(params: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    """Predict the charge."""
    return {"charge": params["amount"], "currency": params["currency"], "risk": "low"}


# --------------------------------------------------------------------------- subscription


def subscription_change(params: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    """Move a customer to another plan."""
    with WORLD.lock:
        before = WORLD.subscriptions.get(params["customer"], "none")
        if before != params["plan"]:
            WORLD.effects += 1
        WORLD.subscriptions[params["customer"]] = params["plan"]
    return {"customer": params["customer"], "before": before, "after": params["plan"]}


def subscription_simulate(params: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    """Show the plan change as a diff."""
    before = WORLD.subscriptions.get(params["customer"], "none")
    return {"diff": {"plan": [before, params["plan"]]}, "risk": "low"}


# --------------------------------------------------------------------------- restaurant


def restaurant_book(params: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    """Book a table."""
    with WORLD.lock:
        if call.idempotency_key not in WORLD.bookings:
            WORLD.effects += 1
            WORLD.bookings[call.idempotency_key] = {"kind": "table", **params, "status": "booked"}
    return {"booking": _ref("TBL", call.idempotency_key)}


def restaurant_cancel(params: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    """Cancel a table booking (compensation)."""
    with WORLD.lock:
        booking = WORLD.bookings.get(call.idempotency_key)
        if booking is not None and booking["status"] != "cancelled":
            booking["status"] = "cancelled"
            WORLD.effects += 1
    return {"cancelled": True}


# --------------------------------------------------------------------------- devops


def devops_restart(params: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    """Restart a service in an environment; it comes back healthy."""
    with WORLD.lock:
        WORLD.services.setdefault(params["environment"], {})[params["service"]] = "healthy"
        WORLD.effects += 1
    return {"service": params["service"], "environment": params["environment"], "state": "healthy"}


def devops_restart_simulate(params: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    """Predict the restart: a short outage of the service."""
    state = WORLD.services.get(params["environment"], {}).get(params["service"], "unknown")
    return {
        "diff": {"state": [state, "healthy"]},
        "downtime_seconds": 5,
        "risk": "low" if state in ("degraded", "healthy") else "high",
    }


def devops_check(params: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    """Deterministic success check: fail unless the service is healthy."""
    state = WORLD.services.get(params["environment"], {}).get(params["service"], "unknown")
    if state != "healthy":
        raise RuntimeError(f"{params['service']} in {params['environment']} is {state}")
    return {"check": "passed", "state": state}


def devops_rollback(params: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    """Undo a restart: nothing to revert beyond recording it."""
    return {"rolled_back": params["service"]}


# --------------------------------------------------------------------------- procurement


def procurement_create_po(params: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    """Raise a purchase order."""
    with WORLD.lock:
        if call.idempotency_key not in WORLD.purchase_orders:
            WORLD.effects += 1
            WORLD.purchase_orders[call.idempotency_key] = {**params, "status": "open"}
    return {"po": _ref("PO", call.idempotency_key)}


def procurement_cancel_po(params: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    """Cancel a purchase order (compensation)."""
    with WORLD.lock:
        po = WORLD.purchase_orders.get(call.idempotency_key)
        if po is not None:
            po["status"] = "cancelled"
            WORLD.effects += 1
    return {"cancelled": True}


# --------------------------------------------------------------------------- hr and email


def hr_search_candidates(params: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    """Search candidate records (personal data)."""
    skill = params["skill"]
    hits = [c for c in CANDIDATES if skill in c["skills"]]
    return {"candidates": hits[: params.get("limit", 10)]}


def email_send(params: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    """Send an email."""
    with WORLD.lock:
        WORLD.emails.append({**params, "key": call.idempotency_key})
        WORLD.effects += 1
    return {"message_id": _ref("MSG", call.idempotency_key)}


def payments_refund(params: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    """Refund a customer (financial)."""
    with WORLD.lock:
        if call.idempotency_key not in WORLD.payments:
            WORLD.effects += 1
            WORLD.payments[call.idempotency_key] = {**params, "status": "refunded"}
    return {"refund": _ref("RF", call.idempotency_key)}


def noop(params: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    """Do nothing (for benchmarks)."""
    return {}
