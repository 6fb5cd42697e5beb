"""The five axes of the decision framework, their totals, and the three patterns.

Each axis scores 1 (low) to 5 (high); the total is 5-25. By default a total of at most 10
means an agent may act on its own (*agentic*), 11-15 means a human stays in the loop for what
matters (*hybrid*), and 16 or more means an orchestrator with human approval leads
(*orchestrator-first*). The thresholds are configuration (``Thresholds``).

A plan's baseline scores are the per-axis maximum over its steps' catalog baselines: a plan is
as risky as its riskiest step, as costly as its costliest. Policy adjustments are applied on
top of the baseline and clamped to 1-5; a higher score is never lowered by clamping.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from proctor.errors import InvalidRequestError

__all__ = [
    "AXES",
    "CHECKLIST",
    "CONTROLS",
    "Adjustment",
    "Assessment",
    "Pattern",
    "Scores",
    "Thresholds",
    "assess",
    "baseline",
    "scores_from_checklist",
]

AXES: tuple[str, ...] = ("risk", "auditability", "ux", "recovery", "cost")
"""The five axes, in the order they are printed."""

_AXIS_TITLES = {
    "risk": "Risk & Safety",
    "auditability": "Auditability & Compliance",
    "ux": "UX (speed/autonomy)",
    "recovery": "Observability & Recovery",
    "cost": "Cost & Rate",
}


class Pattern(StrEnum):
    """The three implementation patterns a total maps to."""

    AGENTIC = "agentic"
    HYBRID = "hybrid"
    ORCHESTRATOR = "orchestrator-first"


@dataclass(frozen=True, slots=True, kw_only=True)
class Scores:
    """One score per axis, each an integer 1-5."""

    risk: int
    auditability: int
    ux: int
    recovery: int
    cost: int

    def __post_init__(self) -> None:
        for axis in AXES:
            value = getattr(self, axis)
            if type(value) is not int or not 1 <= value <= 5:
                raise InvalidRequestError(
                    f"score for {axis!r} must be an integer from 1 to 5, got {value!r}",
                    field=axis,
                )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, field_prefix: str = "") -> Scores:
        """Build scores from a mapping with exactly the five axis keys.

        Raises:
            InvalidRequestError: naming the missing, unknown or out-of-range axis.
        """
        unknown = sorted(set(data) - set(AXES))
        if unknown:
            raise InvalidRequestError(
                f"unknown axis {unknown[0]!r}; the axes are {', '.join(AXES)}",
                field=f"{field_prefix}{unknown[0]}",
            )
        missing = [a for a in AXES if a not in data]
        if missing:
            raise InvalidRequestError(
                f"missing score for axis {missing[0]!r}", field=f"{field_prefix}{missing[0]}"
            )
        try:
            return cls(**{a: data[a] for a in AXES})
        except InvalidRequestError as exc:
            exc.field = f"{field_prefix}{exc.field}"
            raise

    def as_dict(self) -> dict[str, int]:
        """Return ``{axis: score}`` in axis order."""
        return {a: getattr(self, a) for a in AXES}

    @property
    def total(self) -> int:
        """The sum of the five scores, 5-25."""
        return self.risk + self.auditability + self.ux + self.recovery + self.cost


@dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    """Where the totals split into patterns.

    Attributes:
        agentic_max: Highest total still agentic. Default 10.
        hybrid_max: Highest total still hybrid; above it is orchestrator-first. Default 15.
    """

    agentic_max: int = 10
    hybrid_max: int = 15

    def __post_init__(self) -> None:
        if not 5 <= self.agentic_max < self.hybrid_max <= 25:
            raise InvalidRequestError(
                "thresholds must satisfy 5 <= agentic_max < hybrid_max <= 25",
                field="thresholds",
            )

    def pattern(self, total: int) -> Pattern:
        """Return the pattern for a total."""
        if total <= self.agentic_max:
            return Pattern.AGENTIC
        if total <= self.hybrid_max:
            return Pattern.HYBRID
        return Pattern.ORCHESTRATOR


@dataclass(frozen=True, slots=True, kw_only=True)
class Adjustment:
    """A policy's change to one axis, with the reason it gives."""

    axis: str
    delta: int
    reason: str

    def __post_init__(self) -> None:
        if self.axis not in AXES:
            raise InvalidRequestError(f"unknown axis {self.axis!r}", field="adjustments.axis")
        if type(self.delta) is not int or not -4 <= self.delta <= 4:
            raise InvalidRequestError(
                "adjustment delta must be an integer from -4 to 4", field="adjustments.delta"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Assessment:
    """Final scores, their total and pattern, and why."""

    scores: Scores
    pattern: Pattern
    reasons: tuple[str, ...] = field(default=())

    @property
    def total(self) -> int:
        """The total of the final scores."""
        return self.scores.total

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON shape used by the CLI and API."""
        return {
            "scores": self.scores.as_dict(),
            "total": self.total,
            "pattern": self.pattern.value,
            "reasons": list(self.reasons),
        }


def baseline(step_scores: Iterable[Scores]) -> Scores:
    """Return the per-axis maximum over the steps' baselines.

    Raises:
        InvalidRequestError: when there are no steps; an empty plan has no risk profile and
            must not be scored as harmless.
    """
    items = list(step_scores)
    if not items:
        raise InvalidRequestError("a plan needs at least one step", field="steps")
    return Scores(**{a: max(getattr(s, a) for s in items) for a in AXES})


def assess(
    base: Scores,
    adjustments: Iterable[Adjustment] = (),
    *,
    thresholds: Thresholds | None = None,
) -> Assessment:
    """Apply policy adjustments to baseline scores and pick the pattern.

    Args:
        base: The baseline scores.
        adjustments: Policy adjustments; each moves one axis, clamped to 1-5.
        thresholds: Pattern thresholds; defaults to 10 / 15.

    Returns:
        The assessment, with one reason per adjustment and one for the pattern.
    """
    th = thresholds or Thresholds()
    values = base.as_dict()
    reasons: list[str] = []
    for adj in adjustments:
        values[adj.axis] = min(5, max(1, values[adj.axis] + adj.delta))
        sign = "+" if adj.delta >= 0 else ""
        reasons.append(f"{_AXIS_TITLES[adj.axis]} {sign}{adj.delta}: {adj.reason}")
    scores = Scores(**values)
    pattern = th.pattern(scores.total)
    reasons.append(f"total {scores.total} -> {pattern.value}")
    return Assessment(scores=scores, pattern=pattern, reasons=tuple(reasons))


# --------------------------------------------------------------------------- checklist

CHECKLIST: dict[str, tuple[str, tuple[str, ...]]] = {
    "harm_if_wrong": ("risk", ("none", "minor", "moderate", "severe", "catastrophic")),
    "regulation": (
        "auditability",
        ("none", "internal", "contractual", "regulated", "strictly_regulated"),
    ),
    "speed_need": ("ux", ("low", "some", "moderate", "high", "realtime")),
    "recovery": ("recovery", ("instant_undo", "easy", "manual", "hard", "impossible")),
    "cost_per_action": ("cost", ("negligible", "low", "moderate", "high", "very_high")),
}
"""A short risk checklist: question -> (axis, answers scoring 1..5)."""

CONTROLS: dict[Pattern, tuple[str, ...]] = {
    Pattern.AGENTIC: (
        "let the agent act within a whitelist of actions and rate limits",
        "keep an undo window on reversible actions",
        "log every action with its plan and policy version; sample some for post-hoc review",
    ),
    Pattern.HYBRID: (
        "execute low-impact steps at once; ask the user to confirm the rest with one click",
        "step-up approval above a value threshold",
        "dry-run before acting where a simulator exists; keep undo windows and budgets",
        "promote autonomy per user and action only on measured acceptance",
    ),
    Pattern.ORCHESTRATOR: (
        "route every side effect through an orchestrator with human approval (N approvers)",
        "separation of duties: the requester and beneficiary never approve",
        "dry-run or staging first; promote only on a deterministic success check",
        "full audit trail with signed, verifiable events; kill switch per action",
    ),
}
"""The controls that go with each pattern."""


def scores_from_checklist(answers: Mapping[str, Any]) -> tuple[Scores, tuple[str, ...]]:
    """Map checklist answers to scores, with one reason per axis.

    Raises:
        InvalidRequestError: naming the unknown question or answer.
    """
    unknown = sorted(set(answers) - set(CHECKLIST))
    if unknown:
        raise InvalidRequestError(
            f"unknown checklist question {unknown[0]!r}; the questions are " + ", ".join(CHECKLIST),
            field=f"checklist.{unknown[0]}",
        )
    values: dict[str, int] = {}
    reasons = []
    for question, (axis, levels) in CHECKLIST.items():
        if question not in answers:
            raise InvalidRequestError(
                f"missing checklist answer {question!r} (one of {', '.join(levels)})",
                field=f"checklist.{question}",
            )
        answer = answers[question]
        if answer not in levels:
            raise InvalidRequestError(
                f"checklist.{question} must be one of {', '.join(levels)}, got {answer!r}",
                field=f"checklist.{question}",
            )
        values[axis] = levels.index(answer) + 1
        reasons.append(f"{_AXIS_TITLES[axis]} {values[axis]}: {question} = {answer}")
    return Scores(**values), tuple(reasons)
