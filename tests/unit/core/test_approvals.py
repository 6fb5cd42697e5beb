"""Separation of duties, quorum and expiry."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from proctor.core.approvals import (
    approvals_complete,
    check_can_approve,
    check_can_confirm,
    check_can_reject,
    check_not_expired,
    confirmed,
    person_key,
    quorum_met,
    step_quorums,
)
from proctor.core.lifecycle import ApprovalRecord, PlanRecord, PlanStatus
from proctor.errors import ApprovalExpiredError, InvalidTransitionError, PermissionDeniedError

T0 = datetime(2026, 1, 1, tzinfo=UTC)

# Other spellings of the plan's agent "bot" and user "alice": case, fullwidth letters
# (U+FF41...), and a mix of both.
FULLWIDTH_ALICE = "".join(chr(0xFEE0 + ord(c)) for c in "alice")
SPELLINGS = ["Alice", "ALICE", "BOT", "Bot", FULLWIDTH_ALICE, "\uff21lice"]


def _plan(status=PlanStatus.AWAITING_APPROVAL, approvals=(), decision=None):
    return PlanRecord(
        plan_id="p1",
        digest="sha256:d",
        status=status,
        agent_id="bot",
        on_behalf_of="alice",
        manifest={},
        created_at=T0,
        updated_at=T0,
        assessment={},
        decision=decision or {},
        policy_version="v1",
        outcome="approve",
        steps=(),
        approvals=tuple(approvals),
        expires_at=T0 + timedelta(hours=1),
    )


def _ok(principal, roles=("finance",), digest="sha256:d", version="v1", kind="approve"):
    return ApprovalRecord(
        principal=principal,
        kind=kind,
        roles=tuple(roles),
        digest=digest,
        policy_version=version,
        comment="",
        created_at=T0,
    )


class TestCheckCanApprove:
    @pytest.mark.parametrize("who", ["bot", "alice"])
    def test_requester_and_beneficiary_cannot_approve(self, who):
        """Neither the agent nor the on-behalf-of user may approve."""
        with pytest.raises(PermissionDeniedError):
            check_can_approve(_plan(), who, ["finance"], ["finance"])

    @pytest.mark.parametrize("who", SPELLINGS)
    def test_other_spellings_of_requester_and_beneficiary_cannot_approve(self, who):
        """Separation of duties ignores case and compatibility forms: ``Alice`` is ``alice``."""
        with pytest.raises(PermissionDeniedError) as ei:
            check_can_approve(_plan(), who, ["finance"], ["finance"])

        assert ei.value.field == "principal"
        assert "requested this plan or benefits from it" in ei.value.message

    def test_needs_role(self):
        """An approver without a required role is refused."""
        with pytest.raises(PermissionDeniedError) as ei:
            check_can_approve(_plan(), "fiona", ["hr"], ["finance"])
        assert ei.value.field == "role"

    def test_no_double_vote(self):
        """The same approver cannot approve twice."""
        with pytest.raises(PermissionDeniedError):
            check_can_approve(_plan(approvals=[_ok("fiona")]), "fiona", ["finance"], ["finance"])

    @pytest.mark.parametrize(
        "again", ["Fiona", "FIONA", "".join(chr(0xFEE0 + ord(c)) for c in "fiona")]
    )
    def test_no_double_vote_under_another_spelling(self, again):
        """``Fiona`` cannot add a second vote to ``fiona``'s."""
        with pytest.raises(PermissionDeniedError) as ei:
            check_can_approve(_plan(approvals=[_ok("fiona")]), again, ["finance"], ["finance"])

        assert "already approved" in ei.value.message

    def test_not_waiting(self):
        """Approving a finished plan is an invalid transition."""
        with pytest.raises(InvalidTransitionError):
            check_can_approve(_plan(PlanStatus.SUCCEEDED), "fiona", ["finance"], ["finance"])


class TestCheckCanReject:
    def test_a_plan_that_no_longer_waits_cannot_be_rejected(self):
        """A plan that ran (or ended) is not rejected by anyone, its user included."""
        with pytest.raises(InvalidTransitionError):
            check_can_reject(_plan(PlanStatus.RUNNING), "alice", (), ["finance"])

    @pytest.mark.parametrize(
        "status", [PlanStatus.AWAITING_CONFIRMATION, PlanStatus.AWAITING_APPROVAL]
    )
    def test_the_user_declines_in_either_wait(self, status):
        """The on-behalf-of user may decline what acts for her, also while approvers decide."""
        check_can_reject(_plan(status), "alice", (), ["finance"])

    def test_an_approver_who_approved_may_change_her_mind(self):
        """Before the quorum, an approver's earlier approval does not stop her rejecting."""
        plan = _plan(approvals=[_ok("ann")])

        check_can_reject(plan, "ann", ("finance",), ["finance"])

    def test_an_approver_of_the_roles_rejects(self):
        """Any approver holding one of the required roles may reject."""
        check_can_reject(_plan(), "fred", ("finance",), ["finance"])

    @pytest.mark.parametrize("who", ["bot", "BOT"])
    def test_the_requesting_agent_cannot_reject_as_approver(self, who):
        """Separation of duties: the agent (any spelling) is no approver of its own plan."""
        with pytest.raises(PermissionDeniedError) as ei:
            check_can_reject(_plan(), who, ("finance",), ["finance"])

        assert ei.value.field == "principal"

    def test_an_approver_without_the_role_cannot_reject(self):
        """An approver holding none of the required roles is refused on field role."""
        with pytest.raises(PermissionDeniedError) as ei:
            check_can_reject(_plan(), "sam", ("sre",), ["finance"])

        assert ei.value.field == "role"

    def test_only_the_user_declines_a_confirmation(self):
        """While the plan waits for its user, an approver or outsider may not decline it."""
        plan = _plan(PlanStatus.AWAITING_CONFIRMATION)
        for who, roles in [("ann", ("finance",)), ("mallory", ()), ("bot", ())]:
            with pytest.raises(PermissionDeniedError):
                check_can_reject(plan, who, roles, ["finance"])


class TestQuorum:
    def test_empty_is_not_met(self):
        """No approvals never meet a quorum."""
        assert not quorum_met(_plan(), [], count=1, required_roles=["finance"])

    def test_two_distinct_needed(self):
        """Two approvals from one person do not make two approvers."""
        p = _plan()
        assert not quorum_met(p, [_ok("fiona"), _ok("fiona")], count=2, required_roles=["finance"])
        assert quorum_met(p, [_ok("fiona"), _ok("frank")], count=2, required_roles=["finance"])

    def test_two_spellings_are_one_approver(self):
        """``fiona`` and ``Fiona`` are one approver; a requester's spelling never counts."""
        p = _plan()
        one = [_ok("fiona"), _ok("Fiona")]
        parties = [_ok("Alice"), _ok("BOT")]

        assert not quorum_met(p, one, count=2, required_roles=["finance"])
        assert not quorum_met(p, parties, count=1, required_roles=["finance"])
        assert quorum_met(p, [*parties, *one], count=1, required_roles=["finance"])

    def test_bound_to_digest_and_policy(self):
        """Approvals for another digest or policy version do not count."""
        p = _plan()
        assert not quorum_met(
            p, [_ok("fiona", digest="sha256:other")], count=1, required_roles=["finance"]
        )
        assert not quorum_met(p, [_ok("fiona", version="v0")], count=1, required_roles=["finance"])

    def test_roles_must_be_covered(self):
        """Every required role is covered by some approver."""
        p = _plan()
        assert not quorum_met(
            p, [_ok("fiona"), _ok("frank")], count=2, required_roles=["finance", "sre"]
        )
        assert quorum_met(
            p, [_ok("fiona"), _ok("sam", roles=["sre"])], count=2, required_roles=["finance", "sre"]
        )

    def test_rejections_do_not_count(self):
        """A reject is not an approval."""
        assert not quorum_met(
            _plan(), [_ok("fiona", kind="reject")], count=1, required_roles=["finance"]
        )


def _step(sid, outcome, approvals=0, roles=()):
    return {"step_id": sid, "outcome": outcome, "approvals": approvals, "approver_roles": roles}


def _decision(*steps):
    """A stored decision's shape, with the plan-level summary the gateway computes."""
    approving = [s for s in steps if s["outcome"] == "approve"]
    return {
        "steps": list(steps),
        "approvals": max((s["approvals"] for s in approving), default=0),
        "approver_roles": sorted({r for s in approving for r in s["approver_roles"]}),
    }


TWO_FINANCE_ONE_HR = _decision(
    _step("s1", "approve", 2, ["finance"]), _step("s2", "approve", 1, ["hr"])
)


class TestStepQuorums:
    def test_no_approving_step_falls_back_to_the_plan_quorum(self):
        """A decision without approve steps still needs one approver, never none."""
        (q,) = step_quorums(_plan(decision={"steps": [], "approvals": 0, "approver_roles": []}))

        assert (q.step_id, q.required, q.met) == ("", 1, False)

    def test_each_step_counts_its_own_role(self):
        """One finance and one hr approver leave the two-finance step one short."""
        p = _plan(decision=TWO_FINANCE_ONE_HR)

        q1, q2 = step_quorums(p, [_ok("fiona"), _ok("harry", roles=["hr"])])

        assert (q1.step_id, q1.approved_by, q1.met) == ("s1", ("fiona",), False)
        assert (q2.step_id, q2.approved_by, q2.met) == ("s2", ("harry",), True)
        assert not approvals_complete(p, [_ok("fiona"), _ok("harry", roles=["hr"])])

    def test_every_step_met_completes(self):
        """Two finance approvers and one hr approver meet both steps' quorums."""
        p = _plan(decision=TWO_FINANCE_ONE_HR)
        votes = [_ok("fiona"), _ok("harry", roles=["hr"]), _ok("frank")]

        assert [q.met for q in step_quorums(p, votes)] == [True, True]
        assert approvals_complete(p, votes)

    def test_one_person_counts_for_each_step_but_once(self):
        """An approver with both roles counts towards both steps, once per step."""
        p = _plan(decision=TWO_FINANCE_ONE_HR)
        both = _ok("bea", roles=["finance", "hr"])

        assert [q.met for q in step_quorums(p, [both, both])] == [False, True]
        assert approvals_complete(p, [both, _ok("fiona")])

    def test_a_step_covers_all_its_roles(self):
        """A step naming two roles needs approvers that together hold both (as before)."""
        p = _plan(decision=_decision(_step("s1", "approve", 1, ["finance", "sre"])))

        assert not approvals_complete(p, [_ok("fiona")])
        assert approvals_complete(p, [_ok("fiona"), _ok("sam", roles=["sre"])])

    def test_parties_and_other_digests_never_count(self):
        """Separation of duties and the binding apply to every step's count."""
        p = _plan(decision=_decision(_step("s1", "approve", 1, ["finance"])))
        bad = [_ok("Alice"), _ok("bot"), _ok("fiona", digest="sha256:x"), _ok("f", version="v0")]

        assert step_quorums(p, bad)[0].approved_by == ()
        assert not approvals_complete(p, bad)


class TestConfirmationRequired:
    DECISION = _decision(_step("s1", "confirm"), _step("s2", "approve", 1, ["finance"]))

    def test_approvals_never_stand_in_for_the_confirmation(self):
        """A met quorum is not enough while a confirm step's user has not confirmed."""
        p = _plan(decision=self.DECISION)

        assert not approvals_complete(p, [_ok("fiona")])
        assert approvals_complete(p, [_ok("alice", roles=(), kind="confirm"), _ok("fiona")])

    def test_only_her_bound_confirmation_counts(self):
        """Someone else's confirm, or one bound to another digest or policy, is not hers."""
        p = _plan(decision=self.DECISION)
        others = [
            _ok("mallory", roles=(), kind="confirm"),
            _ok("alice", roles=(), kind="confirm", digest="sha256:x"),
            _ok("alice", roles=(), kind="confirm", version="v0"),
        ]

        assert not confirmed(p, others)
        assert not approvals_complete(p, [*others, _ok("fiona")])


class TestPersonKey:
    def test_the_same_name_is_itself(self):
        """A plain lower-case ASCII name is its own key."""
        assert person_key("fiona") == "fiona"

    @pytest.mark.parametrize(
        ("name", "key"),
        [
            ("Alice", "alice"),
            ("".join(chr(0xFEE0 + ord(c)) for c in "Alice"), "alice"),  # fullwidth
            ("\u212aevin", "kevin"),  # KELVIN SIGN
            ("o\ufb03ce", "office"),  # LATIN SMALL LIGATURE FFI
            ("Stra\u00dfe", "strasse"),  # sharp s case-folds to "ss"
        ],
    )
    def test_case_and_compatibility_forms_fold(self, name, key):
        """NFKC and case folding map other spellings of one name to one key."""
        assert person_key(name) == key

    def test_other_scripts_stay_distinct(self):
        """A Cyrillic look-alike is another name (no confusables table)."""
        assert person_key("\u0430lice") != person_key("alice")


class TestConfirmAndExpiry:
    def test_only_beneficiary_confirms(self):
        """Only the on-behalf-of user confirms."""
        p = _plan(PlanStatus.AWAITING_CONFIRMATION)
        check_can_confirm(p, "alice")
        with pytest.raises(PermissionDeniedError):
            check_can_confirm(p, "mallory")

    @pytest.mark.parametrize("agent", ["alice", "Alice", FULLWIDTH_ALICE])
    def test_the_requester_never_confirms_its_own_plan(self, agent):
        """A plan whose agent is (a spelling of) its user cannot be confirmed by that name.

        Regression: a token holding the agent and user roles submitted a plan on its own
        behalf and confirmed it, so "ask the user" asked nobody.
        """
        p = dataclasses.replace(_plan(PlanStatus.AWAITING_CONFIRMATION), agent_id=agent)

        with pytest.raises(PermissionDeniedError) as err:
            check_can_confirm(p, "alice")

        assert err.value.field == "principal"
        assert "a person must confirm" in (err.value.hint or "").lower()

    @pytest.mark.parametrize("user", ["Alice", "ALICE"])
    def test_the_user_confirms_and_declines_under_any_spelling(self, user):
        """ "Is this the plan's user" ignores case, as separation of duties does: a plan
        made for ``alice`` is confirmed, declined and counted as confirmed by ``Alice``."""
        waiting = _plan(PlanStatus.AWAITING_CONFIRMATION)
        decision = _decision(_step("s1", "confirm"))

        check_can_confirm(waiting, user)
        check_can_reject(waiting, user, (), ())
        check_can_reject(_plan(), user, (), ("finance",))
        assert confirmed(_plan(decision=decision), [_ok(user, roles=(), kind="confirm")])

    def test_a_look_alike_of_the_user_is_not_her(self):
        """``alice`` in fullwidth letters (a JWT name claim may be any string) folds to
        ``alice`` by compatibility only: a grant does not fold it (``user_key``)."""
        waiting = _plan(PlanStatus.AWAITING_CONFIRMATION)
        decision = _decision(_step("s1", "confirm"))

        with pytest.raises(PermissionDeniedError):
            check_can_confirm(waiting, FULLWIDTH_ALICE)
        with pytest.raises(PermissionDeniedError):
            check_can_reject(waiting, FULLWIDTH_ALICE, (), ())
        assert not confirmed(
            _plan(decision=decision), [_ok(FULLWIDTH_ALICE, roles=(), kind="confirm")]
        )

    def test_the_agent_is_refused_as_itself(self):
        """The agent confirming a plan for another user is refused as its requester."""
        p = _plan(PlanStatus.AWAITING_CONFIRMATION)

        with pytest.raises(PermissionDeniedError, match="requested plan p1"):
            check_can_confirm(p, "BOT")

    def test_a_stored_self_confirmation_does_not_count(self):
        """A confirm recorded by the requester (before the rule) never lets the plan run."""
        decision = _decision(_step("s1", "confirm"))
        p = dataclasses.replace(_plan(decision=decision), agent_id="alice")

        assert not confirmed(p, [_ok("alice", roles=(), kind="confirm")])
        assert not approvals_complete(p, [_ok("alice", roles=(), kind="confirm")])

    def test_expired(self):
        """At or after the deadline the plan is expired."""
        p = _plan()
        check_not_expired(p, T0)
        with pytest.raises(ApprovalExpiredError):
            check_not_expired(p, T0 + timedelta(hours=1))
