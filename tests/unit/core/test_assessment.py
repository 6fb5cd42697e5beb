"""Five-axis scores, totals and patterns."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proctor.core.assessment import (
    Adjustment,
    Pattern,
    Scores,
    Thresholds,
    assess,
    baseline,
    scores_from_checklist,
)
from proctor.errors import InvalidRequestError

_score = st.integers(min_value=1, max_value=5)
_scores = st.builds(
    Scores, risk=_score, auditability=_score, ux=_score, recovery=_score, cost=_score
)


class TestScores:
    def test_out_of_range(self):
        """A score outside 1-5 is rejected naming the axis."""
        with pytest.raises(InvalidRequestError) as ei:
            Scores(risk=6, auditability=1, ux=1, recovery=1, cost=1)
        assert ei.value.field == "risk"

    def test_unknown_axis(self):
        """An unknown axis key is rejected."""
        with pytest.raises(InvalidRequestError) as ei:
            Scores.from_mapping(
                {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1, "fun": 2}
            )
        assert ei.value.field == "fun"

    def test_travel_example(self):
        """The travel example scores 12 and is hybrid."""
        s = Scores(risk=2, auditability=3, ux=4, recovery=2, cost=1)
        assert s.total == 12
        assert Thresholds().pattern(s.total) is Pattern.HYBRID


class TestThresholds:
    @pytest.mark.parametrize(
        ("total", "pattern"),
        [
            (5, Pattern.AGENTIC),
            (10, Pattern.AGENTIC),
            (11, Pattern.HYBRID),
            (15, Pattern.HYBRID),
            (16, Pattern.ORCHESTRATOR),
            (25, Pattern.ORCHESTRATOR),
        ],
    )
    def test_default_boundaries(self, total, pattern):
        """Totals split at 10 and 15 by default."""
        assert Thresholds().pattern(total) is pattern

    def test_invalid_thresholds(self):
        """Thresholds must be ordered within 5-25."""
        with pytest.raises(InvalidRequestError):
            Thresholds(agentic_max=15, hybrid_max=10)

    @given(_scores, _scores)
    def test_pattern_is_monotonic(self, a, b):
        """A plan scoring at least as high on every axis never gets a laxer pattern."""
        hi = Scores(**{k: max(a.as_dict()[k], b.as_dict()[k]) for k in a.as_dict()})
        order = [Pattern.AGENTIC, Pattern.HYBRID, Pattern.ORCHESTRATOR]
        th = Thresholds()
        assert order.index(th.pattern(hi.total)) >= order.index(th.pattern(a.total))


class TestBaselineAndAssess:
    def test_empty_plan_is_refused(self):
        """An empty plan has no risk profile and is refused rather than scored harmless."""
        with pytest.raises(InvalidRequestError):
            baseline([])

    def test_baseline_is_max_per_axis(self):
        """The plan baseline is the per-axis maximum of its steps."""
        a = Scores(risk=1, auditability=5, ux=1, recovery=1, cost=1)
        b = Scores(risk=4, auditability=1, ux=2, recovery=1, cost=3)
        assert baseline([a, b]).as_dict() == {
            "risk": 4,
            "auditability": 5,
            "ux": 2,
            "recovery": 1,
            "cost": 3,
        }

    def test_adjustments_clamp_and_explain(self):
        """Adjustments move an axis, clamp to 1-5 and add a reason."""
        base = Scores(risk=5, auditability=1, ux=1, recovery=1, cost=1)
        out = assess(
            base,
            [
                Adjustment(axis="risk", delta=2, reason="big"),
                Adjustment(axis="cost", delta=-3, reason="free"),
            ],
        )
        assert out.scores.risk == 5 and out.scores.cost == 1
        assert any("big" in r for r in out.reasons)

    @given(_scores, st.integers(min_value=0, max_value=4))
    def test_positive_adjustment_never_lowers_total(self, base, delta):
        """Raising an axis never lowers the total (risk-score monotonicity)."""
        out = assess(base, [Adjustment(axis="risk", delta=delta, reason="r")])
        assert out.total >= base.total


class TestChecklist:
    def test_maps_answers(self):
        """Checklist answers map to scores 1-5."""
        s, reasons = scores_from_checklist(
            {
                "harm_if_wrong": "minor",
                "regulation": "contractual",
                "speed_need": "high",
                "recovery": "easy",
                "cost_per_action": "negligible",
            }
        )
        assert s.as_dict() == {"risk": 2, "auditability": 3, "ux": 4, "recovery": 2, "cost": 1}
        assert len(reasons) == 5

    def test_bad_answer(self):
        """An answer outside the vocabulary names the question."""
        with pytest.raises(InvalidRequestError) as ei:
            scores_from_checklist(
                {
                    "harm_if_wrong": "meh",
                    "regulation": "none",
                    "speed_need": "low",
                    "recovery": "easy",
                    "cost_per_action": "low",
                }
            )
        assert ei.value.field == "checklist.harm_if_wrong"
