"""Plan and step state machines."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from proctor.core.lifecycle import (
    PLAN_TRANSITIONS,
    TERMINAL,
    PlanRecord,
    PlanStatus,
    StepRecord,
    StepStatus,
)
from proctor.errors import InvalidTransitionError

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _plan(status):
    return PlanRecord(
        plan_id="p",
        digest="d",
        status=status,
        agent_id="a",
        on_behalf_of="u",
        manifest={},
        created_at=T0,
        updated_at=T0,
        assessment={},
        decision={},
        policy_version="v",
        outcome="execute",
        steps=(StepRecord(step_id="s1", index=0, action="x", params={}),),
    )


class TestPlanTransitions:
    def test_every_status_has_a_row(self):
        """The transition table covers every status."""
        assert set(PLAN_TRANSITIONS) == set(PlanStatus)

    @pytest.mark.parametrize("status", sorted(TERMINAL - {PlanStatus.SUCCEEDED}))
    def test_terminal_never_moves(self, status):
        """A terminal plan cannot run again."""
        with pytest.raises(InvalidTransitionError):
            _plan(status).moved_to(PlanStatus.RUNNING, at=T0)

    def test_succeeded_is_undone_through_compensating(self):
        """Succeeded moves only to compensating (undo, rollback TTL), which ends undone."""
        p = _plan(PlanStatus.SUCCEEDED).moved_to(PlanStatus.COMPENSATING, at=T0)
        assert p.moved_to(PlanStatus.UNDONE, at=T0).status is PlanStatus.UNDONE
        for target in (PlanStatus.RUNNING, PlanStatus.UNDONE, PlanStatus.FAILED):
            with pytest.raises(InvalidTransitionError):
                _plan(PlanStatus.SUCCEEDED).moved_to(target, at=T0)

    def test_needs_attention_resolves_either_way(self):
        """An unknown step is resolved by a human: the plan runs on or compensates."""
        p = _plan(PlanStatus.RUNNING).moved_to(PlanStatus.NEEDS_ATTENTION, at=T0)
        assert p.moved_to(PlanStatus.RUNNING, at=T0).status is PlanStatus.RUNNING
        assert p.moved_to(PlanStatus.COMPENSATING, at=T0).status is PlanStatus.COMPENSATING
        with pytest.raises(InvalidTransitionError):
            p.moved_to(PlanStatus.UNDONE, at=T0)

    def test_waiting_to_running(self):
        """A waiting plan may start running (after a confirmation or quorum)."""
        p = _plan(PlanStatus.AWAITING_APPROVAL).moved_to(PlanStatus.RUNNING, at=T0)
        assert p.status is PlanStatus.RUNNING

    def test_idempotency_key_is_stable(self):
        """The idempotency key is plan_id:step_id."""
        assert _plan(PlanStatus.RUNNING).idempotency_key("s1") == "p:s1"


class TestStepTransitions:
    def test_pending_cannot_succeed_without_running(self):
        """A step must run before it succeeds."""
        with pytest.raises(InvalidTransitionError):
            StepRecord(step_id="s", index=0, action="x", params={}).moved_to(StepStatus.SUCCEEDED)

    def test_failed_is_final(self):
        """A failed step never moves again."""
        s = StepRecord(step_id="s", index=0, action="x", params={}, status=StepStatus.FAILED)
        with pytest.raises(InvalidTransitionError):
            s.moved_to(StepStatus.RUNNING)


class TestCopies:
    """The records' copies (``moved_to``, ``with_step``, ``leased``) take a faster path than
    ``dataclasses.replace``; they must give exactly what it gives."""

    def test_records_stay_shaped_for_the_fast_copy(self):
        # The fast copy skips __init__: a __post_init__ or InitVar added later would be
        # silently bypassed, so this test fails first.
        import dataclasses

        for cls in (PlanRecord, StepRecord):
            assert not hasattr(cls, "__post_init__"), cls
            assert all(f.init for f in dataclasses.fields(cls)), cls
            assert hasattr(cls, "__slots__"), cls

    def test_moved_to_equals_replace_and_leaves_the_original(self):
        import dataclasses

        before = _plan(PlanStatus.RUNNING)
        after = before.moved_to(PlanStatus.SUCCEEDED, at=T0.replace(year=2027), error="x")
        assert after == dataclasses.replace(
            before, status=PlanStatus.SUCCEEDED, updated_at=T0.replace(year=2027), error="x"
        )
        assert before.status is PlanStatus.RUNNING and before.error is None
        step = before.steps[0].moved_to(StepStatus.RUNNING, attempts=1)
        assert step == dataclasses.replace(before.steps[0], status=StepStatus.RUNNING, attempts=1)
        assert before.with_step(step).steps == (step,)
        leased = before.leased("w1", T0)
        assert (leased.lease_owner, leased.lease_until, leased.plan_id) == ("w1", T0, "p")

    def test_an_unknown_field_is_refused(self):
        with pytest.raises(TypeError, match="no field 'colour'"):
            _plan(PlanStatus.RUNNING).moved_to(PlanStatus.SUCCEEDED, at=T0, colour="red")
