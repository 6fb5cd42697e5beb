"""Amounts through the gateway, with the starter catalog and the default policy.

Regression: a float amount (``640000.0``, ``6.4e5``) passed JSON Schema's ``integer`` type, then
counted as an amount of 0, so a payment over ``auto_payment_max`` executed at once.
"""

from __future__ import annotations

import json

import pytest

from proctor import Proctor
from proctor.core.lifecycle import PlanStatus
from proctor.errors import InvalidRequestError
from proctor.testing import FrozenClock, make_plan


def _pay(amount: object) -> tuple[str, dict[str, object]]:
    return ("travel.pay", {"amount": amount, "currency": "EUR", "traveller": "alice"})


def _po(amount: object) -> tuple[str, dict[str, object]]:
    return (
        "procurement.create_po",
        {"supplier": "acme", "item": "desk", "quantity": 1, "amount": amount},
    )


@pytest.fixture
def p() -> Proctor:
    return Proctor.in_memory(clock=FrozenClock())


class TestAmounts:
    def test_an_integer_amount_over_the_limit_waits_for_approval(self, p):
        """The baseline: 640000 exceeds auto_payment_max and waits for approval."""
        rec = p.submit(make_plan([_pay(640_000)]))

        assert rec.status is PlanStatus.AWAITING_APPROVAL
        assert "exceeds auto_payment_max" in rec.decision["steps"][0]["reasons"][0]

    @pytest.mark.parametrize(
        "step",
        [_pay(640_000.0), _pay(6.4e5 + 1), _pay(1.0), _po(5e7), _po(True), _po("100")],
        ids=["640000.0", "640001.0", "1.0", "po-5e7", "po-true", "po-string"],
    )
    def test_a_non_integer_amount_is_refused_audited_and_nothing_runs(self, p, step):
        """A float (even an integral one), bool or string amount is refused naming the field."""
        with pytest.raises(InvalidRequestError) as ei:
            p.submit(
                make_plan(
                    [("travel.search", {"destination": "Lisbon", "date": "2027-03-12"}), step]
                )
            )

        assert ei.value.field == "steps[1].params.amount"
        assert "minor units" in (ei.value.hint or "")
        assert p.plans() == []
        events = p.events()
        assert [e.type for e in events] == ["plan.rejected"]
        data = json.loads(events[0].body)["data"]
        assert (data["code"], data["field"]) == ("invalid_request", "steps[1].params.amount")
