"""Outbound notifications: the deliveries of the durable webhook outbox."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

__all__ = ["Delivery", "DeliveryStatus"]


class DeliveryStatus(StrEnum):
    """Where a delivery is."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"  # gave up after the last retry; visible to admins


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One webhook POST to make (or made)."""

    delivery_id: str
    event: str  # approval.needed, plan.decided, plan.executed, ...
    target: str  # the webhook's configured name or URL
    payload: bytes  # the exact body to POST
    created_at: datetime
    next_at: datetime
    attempts: int = 0
    status: DeliveryStatus = DeliveryStatus.PENDING
    last_error: str | None = None
