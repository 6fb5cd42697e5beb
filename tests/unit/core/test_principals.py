"""Who may read a plan."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from proctor.core.lifecycle import ApprovalRecord, PlanRecord, PlanStatus
from proctor.core.principals import (
    ACTION_ROLES,
    Principal,
    check_plan_action,
    check_readable,
    check_role,
    may_act,
    may_approve,
    may_confirm,
    may_read_plan,
    may_reject,
    may_undo,
    plan_for_action,
    plan_not_found,
    undo_as_admin,
)
from proctor.errors import InvalidRequestError, NotFoundError, PermissionDeniedError

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


class TestPlanActionChecks:
    """``check_role`` / ``check_plan_action`` / ``may_act``: the one helper of the API and
    the console."""

    PEOPLE = (
        Principal(name="alice", roles=("user",)),
        Principal(name="bob", roles=("user",)),
        Principal(name="fiona", roles=("approver",), groups=("finance",)),
        Principal(name="harry", roles=("approver",), groups=("hr",)),
        Principal(name="audrey", roles=("auditor",)),
        Principal(name="root", roles=("admin",)),
        Principal(name="alice", roles=("agent",)),
    )

    def test_nobody_may_do_an_unknown_action(self):
        """An action outside the table is refused, even to an admin (fail closed)."""
        root = Principal(name="root", roles=("admin",))

        with pytest.raises(PermissionDeniedError) as e:
            check_role(root, "delete")  # type: ignore[arg-type]

        assert e.value.field == "action"
        assert not may_act(root, "delete", _plan())  # type: ignore[arg-type]

    @pytest.mark.parametrize("action", ["confirm", "approve", "reject", "undo"])
    def test_the_checks_agree_with_the_table(self, action):
        """check_plan_action refuses exactly whom may_act refuses; the role first."""
        plan = _plan()
        table = {"confirm": may_confirm, "approve": may_approve, "reject": may_reject}
        table["undo"] = may_undo
        for p in self.PEOPLE:
            has_role = any(p.has(r) for r in ACTION_ROLES[action])
            allowed = has_role and table[action](p, plan)
            try:
                check_plan_action(p, action, plan)
            except PermissionDeniedError as exc:
                refused: str | None = exc.field
            else:
                refused = None

            assert may_act(p, action, plan) is allowed, (p, action)
            assert refused == (None if allowed else "role" if not has_role else "principal")

    def test_the_messages_name_the_rule(self):
        """The role message lists the roles; the plan message names who and which plan."""
        with pytest.raises(PermissionDeniedError, match="this needs the approver or user role"):
            check_role(Principal(name="audrey", roles=("auditor",)), "reject")
        with pytest.raises(PermissionDeniedError, match="'bob' may not undo plan p"):
            check_plan_action(Principal(name="bob", roles=("user",)), "undo", _plan())

    def test_undo_as_admin(self):
        """An admin undoes as an admin unless the plan acts for it (then as its user)."""
        plan = _plan()

        assert undo_as_admin(Principal(name="root", roles=("admin",)), plan)
        assert not undo_as_admin(Principal(name="alice", roles=("user", "admin")), plan)
        assert not undo_as_admin(Principal(name="alice", roles=("user",)), plan)

    def test_a_token_that_is_agent_and_user_may_not_confirm_its_own_plan(self):
        """Its own plan (agent == user): no confirm, with the reason; decline and undo stay.

        Regression: one token with the agent and user roles confirmed the plans it made on
        its own behalf (and the console offered it the button).
        """
        desk = Principal(name="desk", roles=("agent", "user"))
        mine = replace(
            _plan(PlanStatus.AWAITING_CONFIRMATION), agent_id="desk", on_behalf_of="desk"
        )

        assert not may_act(desk, "confirm", mine)
        with pytest.raises(PermissionDeniedError, match="cannot confirm it") as e:
            check_plan_action(desk, "confirm", mine)
        assert e.value.field == "principal"
        assert "person must confirm" in (e.value.hint or "")
        # A decline only stops the plan: withdrawing its own request is no consent to bypass.
        assert may_act(desk, "reject", mine)
        check_plan_action(desk, "reject", mine)
        done = replace(mine, status=PlanStatus.SUCCEEDED)
        assert may_act(desk, "undo", done)  # undoing its own action is not consent

    def test_a_separate_user_token_confirms(self):
        """The user named on the plan, not its agent, still confirms and declines."""
        plan = replace(_plan(PlanStatus.AWAITING_CONFIRMATION), agent_id="desk-agent")
        alice = Principal(name="alice", roles=("user",))

        check_plan_action(alice, "confirm", plan)
        check_plan_action(alice, "reject", plan)


class TestUserSpelling:
    @pytest.mark.parametrize("name", ["Alice", "ALICE"])
    def test_the_user_is_the_user_under_any_spelling(self, name):
        """A user token spelt in another case reads, confirms, declines and undoes the
        plans made on her behalf, as separation of duties treats her as her."""
        user = Principal(name=name, roles=("user",))
        waiting = _plan(PlanStatus.AWAITING_CONFIRMATION)

        assert may_read_plan(user, waiting)
        assert may_confirm(user, waiting)
        assert may_reject(user, waiting)
        assert may_undo(user, _plan(PlanStatus.SUCCEEDED))
        assert not undo_as_admin(Principal(name=name, roles=("user", "admin")), waiting)
        check_plan_action(user, "confirm", waiting)

    def test_an_approver_reads_the_plan_it_decided_under_another_spelling(self):
        """An approver whose vote was recorded as ``fiona`` reads the plan as ``Fiona``."""
        voted = ApprovalRecord(
            principal="fiona",
            kind="approve",
            roles=("finance",),
            digest="d",
            policy_version="v",
            comment="",
            created_at=T0,
        )
        plan = _plan(PlanStatus.SUCCEEDED, approvals=(voted,))

        assert may_read_plan(Principal(name="Fiona", roles=("approver",)), plan)
        assert not may_read_plan(Principal(name="fionb", roles=("approver",)), plan)


@pytest.mark.parametrize("name", ["\uff41lice", "\uff21LICE", "a\uff4cice"])
def test_a_look_alike_name_is_not_the_user(name):
    """A name that folds to the user's only by compatibility (fullwidth letters) is
    someone else: a JWT's name claim is any string, and the grant must not fold it.

    Regression: ``is_user`` compared ``person_key``, so a JWT named ``alice`` in fullwidth
    letters read, confirmed, declined and undid alice's plans.
    """
    someone = Principal(name=name, roles=("user", "approver"))
    waiting = _plan(PlanStatus.AWAITING_CONFIRMATION)
    voted = ApprovalRecord(
        principal="alice",
        kind="approve",
        roles=("finance",),
        digest="d",
        policy_version="v",
        comment="",
        created_at=T0,
    )

    assert not may_read_plan(someone, waiting)
    assert not may_confirm(someone, waiting)
    assert not may_reject(someone, waiting)
    assert not may_undo(someone, _plan(PlanStatus.SUCCEEDED))
    assert not may_read_plan(someone, _plan(PlanStatus.SUCCEEDED, approvals=(voted,)))


class TestHiddenPlans:
    """A plan the caller may not read is refused as a missing one (``check_readable``)."""

    def test_an_unreadable_plan_is_refused_exactly_as_a_missing_one(self):
        """Same class, code, message, field and hint: nothing tells the two apart."""
        bob = Principal(name="bob", roles=("user",))
        with pytest.raises(NotFoundError) as hidden:
            check_readable(bob, _plan(), "p")
        with pytest.raises(NotFoundError) as missing:
            check_readable(bob, None, "p")

        assert hidden.value.diagnostics() == missing.value.diagnostics()
        assert hidden.value.field == "plan_id"
        assert str(hidden.value) == str(plan_not_found("p"))

    def test_the_role_comes_first_then_the_plan_then_the_action(self):
        """No role: 403 whether the plan exists or not; the role but not the plan: 404; a
        readable plan the caller may not act on: 403."""
        agent = Principal(name="bot", roles=("agent",))
        sam = Principal(name="sam", roles=("approver",), groups=("sre",))
        decided = replace(
            _plan(PlanStatus.REJECTED),
            approvals=(
                ApprovalRecord(
                    principal="sam",
                    kind="reject",
                    roles=("sre",),
                    digest="d",
                    policy_version="v",
                    comment="",
                    created_at=T0,
                ),
            ),
        )

        for plan in (_plan(), None):
            with pytest.raises(PermissionDeniedError) as role:
                plan_for_action(agent, "approve", plan, "p")
            assert role.value.field == "role"
            with pytest.raises(NotFoundError):
                plan_for_action(sam, "approve", plan, "p")
        with pytest.raises(PermissionDeniedError) as action:
            plan_for_action(sam, "approve", decided, "p")  # he reads what he decided
        assert action.value.field == "principal"
        ann = Principal(name="ann", roles=("approver",), groups=("finance",))
        assert plan_for_action(ann, "approve", _plan(), "p").plan_id == "p"
