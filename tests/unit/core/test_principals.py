"""Who may read a plan."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from proctor.core.lifecycle import ApprovalRecord, PlanRecord, PlanStatus
from proctor.core.principals import Principal, may_read_plan
from proctor.errors import InvalidRequestError

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _plan(status=PlanStatus.AWAITING_APPROVAL, approvals=()):
    return PlanRecord(
        plan_id="p",
        digest="d",
        status=status,
        agent_id="bot",
        on_behalf_of="alice",
        manifest={},
        created_at=T0,
        updated_at=T0,
        assessment={},
        decision={"approver_roles": ["finance"]},
        policy_version="v",
        outcome="approve",
        steps=(),
        approvals=approvals,
    )


class TestMayRead:
    def test_unknown_role(self):
        """An unknown role is refused."""
        with pytest.raises(InvalidRequestError):
            Principal(name="x", roles=("root",))

    @pytest.mark.parametrize(
        ("principal", "allowed"),
        [
            (Principal(name="bot", roles=("agent",)), True),
            (Principal(name="other-bot", roles=("agent",)), False),
            (Principal(name="alice", roles=("user",)), True),
            (Principal(name="bob", roles=("user",)), False),
            (Principal(name="fiona", roles=("approver",), groups=("finance",)), True),
            (Principal(name="harry", roles=("approver",), groups=("hr",)), False),
            (Principal(name="audrey", roles=("auditor",)), True),
            (Principal(name="root", roles=("admin",)), True),
        ],
    )
    def test_matrix(self, principal, allowed):
        """Each role reads only what it should."""
        assert may_read_plan(principal, _plan()) is allowed

    def test_approver_keeps_access_to_what_it_decided(self):
        """An approver still reads a plan it decided once it is no longer waiting."""
        a = ApprovalRecord(
            principal="harry",
            kind="approve",
            roles=("hr",),
            digest="d",
            policy_version="v",
            comment="",
            created_at=T0,
        )
        p = _plan(PlanStatus.SUCCEEDED, approvals=(a,))
        assert may_read_plan(Principal(name="harry", roles=("approver",), groups=("hr",)), p)
