"""The role table of the HTTP API (``proctor.core.principals``): pure functions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from proctor.core.lifecycle import ApprovalRecord, PlanRecord, PlanStatus
from proctor.core.principals import (
    Principal,
    may_admin,
    may_approve,
    may_confirm,
    may_read_audit,
    may_reject,
    may_submit,
    may_undo,
    reads_every_plan,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _plan(status=PlanStatus.AWAITING_APPROVAL, roles=("finance",), approvals=()):
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
        decision={"approver_roles": list(roles)},
        policy_version="v",
        outcome="approve",
        steps=(),
        approvals=approvals,
    )


def P(name, *roles, groups=()):
    return Principal(name=name, roles=roles, groups=groups)


class TestNobody:
    def test_a_principal_without_roles_may_do_nothing(self):
        """No role, no right."""
        p = P("x")
        plan = _plan()

        assert not any(
            [
                may_submit(p, "x"),
                may_confirm(p, plan),
                may_approve(p, plan),
                may_reject(p, plan),
                may_undo(p, plan),
                may_read_audit(p),
                may_admin(p),
                reads_every_plan(p),
            ]
        )


class TestSubmit:
    @pytest.mark.parametrize(
        ("principal", "agent_id", "allowed"),
        [
            (P("bot", "agent"), "bot", True),
            (P("bot", "agent"), "bot2", False),
            (P("bot", "admin"), "bot", False),
            (P("bot", "agent"), None, False),
        ],
    )
    def test_an_agent_submits_only_as_itself(self, principal, agent_id, allowed):
        """The agent role and the name must both match the manifest's agent."""
        assert may_submit(principal, agent_id) is allowed


class TestHumanActions:
    @pytest.mark.parametrize(
        ("principal", "confirm", "approve", "reject", "undo"),
        [
            (P("alice", "user"), True, False, True, True),
            (P("bob", "user"), False, False, False, False),
            (P("ann", "approver", groups=("finance",)), False, True, True, False),
            (P("sam", "approver", groups=("sre",)), False, False, False, False),
            (P("root", "admin"), False, False, False, True),
            (P("aud", "auditor"), False, False, False, False),
            (P("alice", "agent"), False, False, False, False),
        ],
    )
    def test_the_table(self, principal, confirm, approve, reject, undo):
        """Who may confirm, approve, reject or undo a plan of bot for alice (finance)."""
        plan = _plan()

        assert may_confirm(principal, plan) is confirm
        assert may_approve(principal, plan) is approve
        assert may_reject(principal, plan) is reject
        assert may_undo(principal, plan) is undo

    def test_any_approver_when_the_policy_named_no_group(self):
        """A plan without approver roles is any approver's business."""
        assert may_approve(P("sam", "approver", groups=("sre",)), _plan(roles=()))


class TestReadingRights:
    @pytest.mark.parametrize(
        ("principal", "audit", "admin", "every"),
        [
            (P("aud", "auditor"), True, False, True),
            (P("root", "admin"), True, True, True),
            (P("ann", "approver", groups=("finance",)), False, False, False),
        ],
    )
    def test_audit_and_admin(self, principal, audit, admin, every):
        """Auditors and admins read everything; only admins administer."""
        assert may_read_audit(principal) is audit
        assert may_admin(principal) is admin
        assert reads_every_plan(principal) is every

    def test_decided_plans_stay_readable_to_their_approver(self):
        """An approval by the approver is enough (see may_read_plan)."""
        from proctor.core.principals import may_read_plan

        approval = ApprovalRecord(
            principal="ann",
            kind="approve",
            roles=("finance",),
            digest="d",
            policy_version="v",
            comment="",
            created_at=T0,
        )
        plan = _plan(status=PlanStatus.SUCCEEDED, approvals=(approval,))

        assert may_read_plan(P("ann", "approver", groups=("finance",)), plan)
        assert not may_read_plan(P("fred", "approver", groups=("finance",)), plan)
