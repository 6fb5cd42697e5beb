"""Decisions: parsing the policy's answer, fail-closed."""

from __future__ import annotations

import pytest

from proctor.core.decisions import Decision, Outcome

V = "sha256:test"


def _step(outcome="execute", **kw):
    return {"outcome": outcome, "reasons": ["because"], **kw}


class TestFromPolicyOutput:
    def test_undefined_is_deny(self):
        """No output at all denies every step."""
        d = Decision.from_policy_output(None, ["s1"], policy_version=V)
        assert d.outcome is Outcome.DENY
        assert "fail closed" in d.reasons[0]

    def test_missing_step_is_deny(self):
        """A step the policy forgot is denied, not executed."""
        raw = {"steps": {"s1": _step()}, "plan": {}}
        d = Decision.from_policy_output(raw, ["s1", "s2"], policy_version=V)
        assert d.step("s2").outcome is Outcome.DENY
        assert d.outcome is Outcome.DENY

    @pytest.mark.parametrize(
        "bad",
        [
            {"outcome": "allow"},
            {"outcome": "execute", "approvals": -1},
            {"outcome": "execute", "undo_window": "soon"},
            {"outcome": "execute", "dry_run": "yes"},
            {"outcome": "execute", "reasons": "not a list"},
        ],
    )
    def test_malformed_step_denies_plan(self, bad):
        """Any malformed field denies the whole plan."""
        d = Decision.from_policy_output({"steps": {"s1": bad}}, ["s1"], policy_version=V)
        assert d.outcome is Outcome.DENY
        assert "malformed" in d.plan_reasons[0]

    def test_most_severe_wins(self):
        """The plan outcome is the most severe step outcome."""
        raw = {
            "steps": {
                "a": _step("execute"),
                "b": _step("confirm"),
                "c": _step("approve", approvals=2, approver_roles=["finance"]),
            }
        }
        d = Decision.from_policy_output(raw, ["a", "b", "c"], policy_version=V)
        assert d.outcome is Outcome.APPROVE
        assert d.approvals == 2 and d.approver_roles == ("finance",)

    def test_plan_deny_overrides(self):
        """A plan-level deny denies even when every step would execute."""
        raw = {"steps": {"a": _step()}, "plan": {"deny": ["flow rule"]}}
        d = Decision.from_policy_output(raw, ["a"], policy_version=V)
        assert d.outcome is Outcome.DENY and d.plan_reasons == ("flow rule",)

    def test_approve_with_zero_approvals_needs_one(self):
        """An approve outcome asking for zero approvers still needs one human."""
        raw = {"steps": {"a": _step("approve", approvals=0)}}
        d = Decision.from_policy_output(raw, ["a"], policy_version=V)
        assert d.approvals == 1

    def test_round_trip(self):
        """as_dict / from_dict round-trips."""
        raw = {
            "steps": {"a": _step("approve", approver_roles=["hr"], step_up=True)},
            "plan": {
                "adjustments": [{"axis": "risk", "delta": 1, "reason": "r"}],
                "review_sample_rate": 0.25,
            },
        }
        d = Decision.from_policy_output(raw, ["a"], policy_version=V)
        assert Decision.from_dict(d.as_dict()) == d
