"""Tool idempotency keys are unique per (plan, step): no plan can take another's key.

The reviewer's case: a payment provider that deduplicates on ``call.idempotency_key`` (as
docs/catalog.md tells tool authors to). Plan ``order`` step ``42:s1`` and plan ``order:42``
step ``s1`` both had the key ``order:42:s1``, so the second payment (40000) was answered
with the first one's (1) and recorded ``succeeded``.
"""

from __future__ import annotations

from typing import Any

import pytest

from proctor import Proctor
from proctor.core.lifecycle import PlanStatus
from proctor.core.ports import ToolCall
from proctor.errors import InvalidRequestError

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}


def _shop() -> tuple[Proctor, dict[str, int]]:
    p = Proctor.in_memory()
    charged: dict[str, int] = {}

    @p.action(
        "shop.pay",
        category="payment",
        summary="Pay {amount}",
        baselines=LOW,
        params={
            "type": "object",
            "required": ["amount"],
            "properties": {"amount": {"type": "integer"}},
        },
    )
    def pay(params: dict[str, Any], call: ToolCall) -> dict[str, Any]:
        charged.setdefault(call.idempotency_key, params["amount"])  # dedupe on the key
        return {"charged": charged[call.idempotency_key], "key": call.idempotency_key}

    return p, charged


def _payment(plan_id: str, step_id: str, amount: int, agent: str) -> dict[str, Any]:
    return {
        "plan_id": plan_id,
        "actor": {"type": "agent", "name": agent, "model_version": "m", "agent_id": agent},
        "on_behalf_of": "alice",
        "intent": "pay",
        "steps": [{"id": step_id, "action": "shop.pay", "params": {"amount": amount}}],
    }


def test_a_plan_cannot_take_the_key_of_another_plans_step():
    """The colliding step id is refused (and audited); the victim's payment is made."""
    p, charged = _shop()

    with pytest.raises(InvalidRequestError) as ei:
        p.submit(_payment("order", "42:s1", 1, "mallory-bot"))
    victim = p.submit(_payment("order:42", "s1", 40000, "shop-bot"))

    assert ei.value.field == "steps[0].id"
    assert victim.status is PlanStatus.SUCCEEDED
    assert victim.steps[0].result == {"charged": 40000, "key": "order:42:s1"}
    assert charged == {"order:42:s1": 40000}
    rejected = [e for e in p.events() if e.type == "plan.rejected"]
    assert len(rejected) == 1 and b'"steps[0].id"' in rejected[0].body
