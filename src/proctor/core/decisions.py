"""Decisions: what the policy says about each step and about the plan.

A decision is a value, never an exception: the gateway persists and audits it. The policy's
raw output is untrusted until ``Decision.from_policy_output`` has checked every field; any
shape it does not expect becomes a *deny* with a reason that says why (fail closed). A rule
that silently never matches must not turn into "allowed".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, assert_never

from proctor.core.assessment import Adjustment
from proctor.core.canonical import printable
from proctor.errors import InvalidRequestError

__all__ = ["MAX_ENTRIES", "MAX_STRING", "MAX_TOTAL", "Decision", "Outcome", "StepDecision"]

_MAX_APPROVALS = 10
_MAX_WINDOW = 90 * 24 * 3600  # 90 days: a longer undo window is a configuration mistake
# Bounds on what a policy may write into the decision (and so into every signed audit event
# that carries it), in line with a manifest's own limits (``core.plans.Limits``): at most 32
# entries per list (reasons, approver roles, plan denials, adjustments), each string at most
# 2,000 characters, and all of a decision's strings together at most 256 Ki characters.
MAX_ENTRIES = 32
MAX_STRING = 2_000
MAX_TOTAL = 256 * 1024
_MAX_MESSAGE = 500  # of the malformed output's error quoted in the deny reason


class Outcome(StrEnum):
    """What to do with a step or a plan, from least to most restrictive."""

    EXECUTE = "execute"
    CONFIRM = "confirm"
    APPROVE = "approve"
    DENY = "deny"

    @property
    def severity(self) -> int:
        """Order used to combine outcomes: the most severe wins."""
        match self:
            case Outcome.EXECUTE:
                return 0
            case Outcome.CONFIRM:
                return 1
            case Outcome.APPROVE:
                return 2
            case Outcome.DENY:
                return 3
            case _:
                assert_never(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class StepDecision:
    """The policy's verdict on one step."""

    step_id: str
    outcome: Outcome
    reasons: tuple[str, ...]
    approvals: int = 0
    approver_roles: tuple[str, ...] = ()
    dry_run: bool = False
    step_up: bool = False
    undo_window: int = 0  # seconds
    rollback_ttl: int = 0  # seconds

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON form stored with the plan."""
        return {
            "step_id": self.step_id,
            "outcome": self.outcome.value,
            "reasons": list(self.reasons),
            "approvals": self.approvals,
            "approver_roles": list(self.approver_roles),
            "dry_run": self.dry_run,
            "step_up": self.step_up,
            "undo_window": self.undo_window,
            "rollback_ttl": self.rollback_ttl,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepDecision:
        """Rebuild from ``as_dict`` output (trusted: it came from our own store)."""
        return cls(
            step_id=data["step_id"],
            outcome=Outcome(data["outcome"]),
            reasons=tuple(data["reasons"]),
            approvals=data["approvals"],
            approver_roles=tuple(data["approver_roles"]),
            dry_run=data["dry_run"],
            step_up=data["step_up"],
            undo_window=data["undo_window"],
            rollback_ttl=data["rollback_ttl"],
        )

    @classmethod
    def denied(cls, step_id: str, reason: str) -> StepDecision:
        """Return a deny for one step."""
        return cls(step_id=step_id, outcome=Outcome.DENY, reasons=(reason,))


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The policy's verdict on a plan: per-step decisions combined.

    Attributes:
        outcome: The most severe step outcome, or deny when a plan-level rule denies.
        steps: One decision per step, in plan order.
        plan_reasons: Reasons of plan-level (flow) rules.
        adjustments: Score adjustments the policy made.
        approvals: Distinct approvers needed (``approve`` only).
        approver_roles: Roles the approvers must together cover.
        dry_run: Whether simulations must run before routing.
        step_up: Whether approvers must present a second factor.
        review_sample_rate: Fraction of auto-executed plans sampled for post-hoc review.
        policy_version: Digest of the policy bundle that decided.
    """

    outcome: Outcome
    steps: tuple[StepDecision, ...]
    policy_version: str
    plan_reasons: tuple[str, ...] = ()
    adjustments: tuple[Adjustment, ...] = ()
    approvals: int = 0
    approver_roles: tuple[str, ...] = ()
    dry_run: bool = False
    step_up: bool = False
    review_sample_rate: float = 0.0
    _by_id: Mapping[str, StepDecision] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {s.step_id: s for s in self.steps})

    @property
    def reasons(self) -> tuple[str, ...]:
        """Plan-level reasons first, then each step's, prefixed by its id."""
        out = list(self.plan_reasons)
        for s in self.steps:
            out.extend(f"{s.step_id}: {r}" for r in s.reasons)
        return tuple(out)

    def step(self, step_id: str) -> StepDecision:
        """Return the decision for one step."""
        return self._by_id[step_id]

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON form stored with the plan and written to the audit log."""
        return {
            "outcome": self.outcome.value,
            "policy_version": self.policy_version,
            "plan_reasons": list(self.plan_reasons),
            "adjustments": [
                {"axis": a.axis, "delta": a.delta, "reason": a.reason} for a in self.adjustments
            ],
            "approvals": self.approvals,
            "approver_roles": list(self.approver_roles),
            "dry_run": self.dry_run,
            "step_up": self.step_up,
            # Stored as a string: canonical JSON keeps floats out of the signed events.
            "review_sample_rate": str(self.review_sample_rate),
            "steps": [s.as_dict() for s in self.steps],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        """Rebuild from ``as_dict`` output (trusted: it came from our own store)."""
        return cls.combine(
            [StepDecision.from_dict(s) for s in data["steps"]],
            policy_version=data["policy_version"],
            plan_reasons=tuple(data["plan_reasons"]),
            adjustments=tuple(Adjustment(**a) for a in data["adjustments"]),
            review_sample_rate=float(data["review_sample_rate"]),
        )

    @classmethod
    def combine(
        cls,
        steps: Sequence[StepDecision],
        *,
        policy_version: str,
        plan_reasons: tuple[str, ...] = (),
        plan_deny: bool = False,
        adjustments: tuple[Adjustment, ...] = (),
        review_sample_rate: float = 0.0,
    ) -> Decision:
        """Combine step decisions into the plan's decision."""
        outcome = max((s.outcome for s in steps), key=lambda o: o.severity)
        if plan_deny:
            outcome = Outcome.DENY
        approving = [s for s in steps if s.outcome is Outcome.APPROVE]
        roles = sorted({r for s in approving for r in s.approver_roles})
        return cls(
            outcome=outcome,
            steps=tuple(steps),
            policy_version=policy_version,
            plan_reasons=plan_reasons,
            adjustments=adjustments,
            approvals=max((s.approvals for s in approving), default=0),
            approver_roles=tuple(roles),
            dry_run=any(s.dry_run for s in steps),
            step_up=any(s.step_up for s in steps),
            review_sample_rate=review_sample_rate,
        )

    def at_least(
        self, outcome: Outcome, reason: str, step_ids: Sequence[str] | None = None
    ) -> Decision:
        """Return this decision with the given steps (default all) raised to ``outcome``.

        Steps already at or above it keep their outcome and gain the reason; nothing is ever
        relaxed. An escalation to ``approve`` needs one approver, a supervisor by default.
        """
        wanted = set(step_ids) if step_ids is not None else None
        steps = []
        for s in self.steps:
            if wanted is not None and s.step_id not in wanted:
                steps.append(s)
                continue
            if s.outcome.severity >= outcome.severity:
                steps.append(dataclasses.replace(s, reasons=(*s.reasons, reason)))
                continue
            changes: dict[str, Any] = {"outcome": outcome, "reasons": (*s.reasons, reason)}
            if outcome is Outcome.APPROVE:
                changes["approvals"] = max(1, s.approvals)
                changes["approver_roles"] = s.approver_roles or ("supervisor",)
            steps.append(dataclasses.replace(s, **changes))
        return Decision.combine(
            steps,
            policy_version=self.policy_version,
            plan_reasons=self.plan_reasons,
            plan_deny=self.outcome is Outcome.DENY or (outcome is Outcome.DENY and wanted is None),
            adjustments=self.adjustments,
            review_sample_rate=self.review_sample_rate,
        )

    @classmethod
    def deny_all(cls, step_ids: Sequence[str], reason: str, *, policy_version: str) -> Decision:
        """Return a decision that denies every step for one reason (the fail-closed path)."""
        return cls.combine(
            [StepDecision.denied(sid, reason) for sid in step_ids],
            policy_version=policy_version,
            plan_reasons=(reason,),
            plan_deny=True,
        )

    @classmethod
    def from_policy_output(
        cls, raw: Any, step_ids: Sequence[str], *, policy_version: str
    ) -> Decision:
        """Check the policy's raw output (docs/policy.md) and build the decision.

        Anything malformed denies the whole plan: a decision we cannot read is not a yes.
        So does an output over the size bounds (``MAX_ENTRIES``, ``MAX_STRING``,
        ``MAX_TOTAL``) or a string without a UTF-8 form (a lone surrogate), which could not
        be written to the audit log.
        """
        try:
            return cls._parse(raw, step_ids, policy_version)
        except (InvalidRequestError, KeyError, TypeError, ValueError) as exc:
            msg = exc.message if isinstance(exc, InvalidRequestError) else repr(exc)
            if len(msg) > _MAX_MESSAGE:  # it may quote a huge value (an unknown outcome)
                msg = msg[:_MAX_MESSAGE] + "…"
            return cls.deny_all(
                step_ids,
                f"policy output is malformed ({printable(msg)}): fail closed",
                policy_version=policy_version,
            )

    @classmethod
    def _parse(cls, raw: Any, step_ids: Sequence[str], policy_version: str) -> Decision:
        out = _obj(raw, "decision")
        raw_steps = _obj(out.get("steps"), "decision.steps")
        plan = _obj(out.get("plan", {}), "decision.plan")
        budget = _Budget()
        steps = []
        for sid in step_ids:
            if sid not in raw_steps:
                # A step without a decision is denied, not skipped.
                steps.append(StepDecision.denied(sid, "the policy gave no decision: fail closed"))
                continue
            steps.append(_step(sid, _obj(raw_steps[sid], f"decision.steps.{sid}"), budget))
        deny = _str_list(plan.get("deny", []), "decision.plan.deny", budget)
        adjustments = tuple(
            _adjustment(i, a, budget)
            for i, a in enumerate(
                _list(plan.get("adjustments", []), "decision.plan.adjustments", MAX_ENTRIES)
            )
        )
        rate = plan.get("review_sample_rate", 0)
        if type(rate) not in (int, float) or not 0 <= rate <= 1:
            raise InvalidRequestError("review_sample_rate must be a number from 0 to 1")
        return cls.combine(
            steps,
            policy_version=policy_version,
            plan_reasons=deny,
            plan_deny=bool(deny),
            adjustments=adjustments,
            review_sample_rate=float(rate),
        )


def _step(sid: str, d: Mapping[str, Any], budget: _Budget) -> StepDecision:
    outcome = Outcome(d["outcome"])  # ValueError on an unknown outcome -> deny
    approvals = d.get("approvals", 1 if outcome is Outcome.APPROVE else 0)
    if type(approvals) is not int or not 0 <= approvals <= _MAX_APPROVALS:
        raise InvalidRequestError(f"steps.{sid}.approvals must be an integer 0-{_MAX_APPROVALS}")
    if outcome is Outcome.APPROVE and approvals < 1:
        # "approve by nobody" would execute without a human: treat as one approval.
        approvals = 1
    windows = []
    for key in ("undo_window", "rollback_ttl"):
        v = d.get(key, 0)
        if type(v) is not int or not 0 <= v <= _MAX_WINDOW:
            raise InvalidRequestError(f"steps.{sid}.{key} must be whole seconds 0-{_MAX_WINDOW}")
        windows.append(v)
    for key in ("dry_run", "step_up"):
        if type(d.get(key, False)) is not bool:
            raise InvalidRequestError(f"steps.{sid}.{key} must be a boolean")
    reasons = _str_list(d.get("reasons", []), f"steps.{sid}.reasons", budget)
    return StepDecision(
        step_id=sid,
        outcome=outcome,
        reasons=reasons or (f"policy outcome {outcome.value}",),
        approvals=approvals,
        approver_roles=_str_list(
            d.get("approver_roles", []), f"steps.{sid}.approver_roles", budget
        ),
        dry_run=d.get("dry_run", False),
        step_up=d.get("step_up", False),
        undo_window=windows[0],
        rollback_ttl=windows[1],
    )


def _adjustment(i: int, a: Any, budget: _Budget) -> Adjustment:
    reason = str(_obj(a, "adjustment").get("reason", ""))
    if len(reason) > MAX_STRING or not reason.isascii():
        _check_text(reason, "decision.plan.adjustments", i, ".reason")
    budget.take(len(reason), "decision.plan.adjustments")
    return Adjustment(axis=a["axis"], delta=a["delta"], reason=reason)


def _obj(v: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise InvalidRequestError(f"{where} must be an object")
    return v


def _list(v: Any, where: str, max_len: int | None = None) -> list[Any]:
    if not isinstance(v, list):
        raise InvalidRequestError(f"{where} must be an array")
    if max_len is not None and len(v) > max_len:
        raise InvalidRequestError(
            f"{where} has {len(v)} entries; the limit is {max_len}", field=where
        )
    return v


def _str_list(v: Any, where: str, budget: _Budget) -> tuple[str, ...]:
    items = _list(v, where, MAX_ENTRIES)
    for i, x in enumerate(items):
        if not isinstance(x, str):
            raise InvalidRequestError(f"{where} must be an array of strings")
        if len(x) > MAX_STRING or not x.isascii():  # the common case costs two calls
            _check_text(x, where, i)
    if items:
        budget.take(sum(map(len, items)), where)
    return tuple(items)


def _check_text(s: str, where: str, index: int, suffix: str = "") -> None:
    """Raise unless ``s`` fits ``MAX_STRING`` and has a UTF-8 form (the slow path)."""
    at = f"{where}[{index}]{suffix}"
    if len(s) > MAX_STRING:
        raise InvalidRequestError(
            f"{at} is {len(s)} characters; the limit is {MAX_STRING}", field=at
        )
    try:
        s.encode()
    except UnicodeEncodeError:
        # A lone surrogate (json.loads lets "\ud800" through): no UTF-8 form, so no
        # canonical JSON for the audit log.
        raise InvalidRequestError(
            f"{at} holds a lone surrogate (no UTF-8 form)", field=at
        ) from None


class _Budget:
    """The characters a decision's strings may still take (``MAX_TOTAL``)."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_TOTAL

    def take(self, n: int, where: str) -> None:
        """Count ``n`` more characters (of ``where``); raise past ``MAX_TOTAL``."""
        self.left -= n
        if self.left < 0:
            raise InvalidRequestError(
                f"the decision's strings exceed {MAX_TOTAL} characters in all (at {where})",
                field=where,
            )
