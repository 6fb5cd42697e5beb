"""Decisions: parsing the policy's answer, fail-closed."""

from __future__ import annotations

import pytest

from proctor.core.canonical import canonical
from proctor.core.decisions import MAX_ENTRIES, MAX_STRING, MAX_TOTAL, Decision, Outcome

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


class TestOutputBounds:
    """A policy's output goes into signed audit events: its size is bounded, its strings
    must have a UTF-8 form; anything else denies the plan as malformed (fail closed)."""

    @pytest.mark.parametrize(
        ("raw", "named"),
        [
            ({"steps": {"s1": _step(reasons=["r"] * (MAX_ENTRIES + 1))}}, "steps.s1.reasons"),
            (
                {"steps": {"s1": _step(reasons=["x" * (MAX_STRING + 1)])}},
                "steps.s1.reasons[0]",
            ),
            (
                {"steps": {"s1": _step("approve", approver_roles=["hr"] * (MAX_ENTRIES + 1))}},
                "steps.s1.approver_roles",
            ),
            (
                {"steps": {"s1": _step("approve", approver_roles=["x" * (MAX_STRING + 1)])}},
                "steps.s1.approver_roles[0]",
            ),
            (
                {"steps": {"s1": _step()}, "plan": {"deny": ["flow"] * (MAX_ENTRIES + 1)}},
                "decision.plan.deny",
            ),
            (
                {"steps": {"s1": _step()}, "plan": {"deny": ["x" * (MAX_STRING + 1)]}},
                "decision.plan.deny[0]",
            ),
            (
                {
                    "steps": {"s1": _step()},
                    "plan": {
                        "adjustments": [{"axis": "risk", "delta": 0, "reason": "r"}]
                        * (MAX_ENTRIES + 1)
                    },
                },
                "decision.plan.adjustments",
            ),
            (
                {
                    "steps": {"s1": _step()},
                    "plan": {
                        "adjustments": [
                            {"axis": "risk", "delta": 1, "reason": "x" * (MAX_STRING + 1)}
                        ]
                    },
                },
                "decision.plan.adjustments[0].reason",
            ),
        ],
    )
    def test_an_output_over_a_bound_denies_naming_it(self, raw, named):
        """Too many entries, or a string too long, denies with the field and the limit."""
        d = Decision.from_policy_output(raw, ["s1"], policy_version=V)
        assert d.outcome is Outcome.DENY
        assert d.step("s1").outcome is Outcome.DENY
        reason = d.plan_reasons[0]
        assert reason.startswith("policy output is malformed (") and named in reason
        assert "the limit is" in reason
        assert len(reason) < 1_000

    def test_the_bounds_themselves_are_accepted(self):
        """Exactly MAX_ENTRIES strings of MAX_STRING characters is a valid output."""
        raw = {
            "steps": {
                "s1": _step(
                    "approve",
                    reasons=["x" * MAX_STRING] * MAX_ENTRIES,
                    approver_roles=["r" * MAX_STRING] * MAX_ENTRIES,
                )
            },
            "plan": {"deny": []},
        }
        d = Decision.from_policy_output(raw, ["s1"], policy_version=V)
        assert d.outcome is Outcome.APPROVE
        assert len(d.step("s1").reasons) == MAX_ENTRIES

    def test_all_strings_together_are_bounded(self):
        """Many steps each within the bounds still cannot exceed MAX_TOTAL in all."""
        per_step = MAX_ENTRIES * MAX_STRING
        n = MAX_TOTAL // per_step + 1
        ids = [f"s{i}" for i in range(n)]
        raw = {"steps": {i: _step(reasons=["x" * MAX_STRING] * MAX_ENTRIES) for i in ids}}
        d = Decision.from_policy_output(raw, ids, policy_version=V)
        assert d.outcome is Outcome.DENY
        assert f"exceed {MAX_TOTAL} characters in all" in d.plan_reasons[0]
        ok = Decision.from_policy_output(
            {"steps": {i: raw["steps"][i] for i in ids[:-1]}}, ids[:-1], policy_version=V
        )
        assert ok.outcome is Outcome.EXECUTE

    @pytest.mark.parametrize(
        ("raw", "named"),
        [
            ({"steps": {"s1": _step(reasons=["ok", "bad \ud800"])}}, "steps.s1.reasons[1]"),
            (
                {"steps": {"s1": _step("approve", approver_roles=["\udfff"])}},
                "steps.s1.approver_roles[0]",
            ),
            ({"steps": {"s1": _step()}, "plan": {"deny": ["\ud800"]}}, "decision.plan.deny[0]"),
            (
                {
                    "steps": {"s1": _step()},
                    "plan": {"adjustments": [{"axis": "risk", "delta": 1, "reason": "\ud800"}]},
                },
                "decision.plan.adjustments[0].reason",
            ),
        ],
    )
    def test_a_lone_surrogate_denies_as_malformed(self, raw, named):
        """A string with no UTF-8 form (it could not be audited) denies the plan."""
        d = Decision.from_policy_output(raw, ["s1"], policy_version=V)
        assert d.outcome is Outcome.DENY
        assert named in d.plan_reasons[0] and "lone surrogate" in d.plan_reasons[0]
        canonical(d.as_dict())  # the deny itself can be written to the log

    def test_a_huge_bad_value_is_not_quoted_whole(self):
        """An unknown 3 MB outcome is quoted only in part in the deny reason."""
        raw = {"steps": {"s1": {"outcome": "x" * 3_000_000 + "\ud800"}}}
        d = Decision.from_policy_output(raw, ["s1"], policy_version=V)
        assert d.outcome is Outcome.DENY
        assert "malformed" in d.plan_reasons[0] and len(d.plan_reasons[0]) < 1_000
        canonical(d.as_dict())

    def test_non_ascii_text_within_bounds_is_kept(self):
        """Accents, CJK and astral characters (a valid pair) are ordinary text."""
        raw = {"steps": {"s1": _step(reasons=["déjà vu", "承認", "\U0001f600"])}}
        d = Decision.from_policy_output(raw, ["s1"], policy_version=V)
        assert d.outcome is Outcome.EXECUTE
        assert d.step("s1").reasons == ("déjà vu", "承認", "\U0001f600")
