"""The six scenarios of DESIGN section 2, played against a throwaway instance.

Each scenario submits a realistic plan, reports the assessment and the decision, then plays
the human side the scenario calls for (confirm, approve with step-up, undo) and reports the
final state. The CLI renders the results; tests assert them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proctor._library import Proctor
from proctor.core.lifecycle import PlanRecord
from proctor.demo.tools import WORLD
from proctor.testing import make_plan

__all__ = ["SCENARIOS", "ScenarioResult", "run_all"]


@dataclass
class ScenarioResult:
    """What happened in one scenario."""

    name: str
    title: str
    expected: str
    plan_id: str
    scores: dict[str, int]
    total: int
    pattern: str
    outcome: str
    reasons: list[str]
    decided_status: str
    status: str
    ran: list[str] = field(default_factory=list)
    waits_for: str = ""
    human: list[str] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # the extras, in words, for people

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON form printed by ``proctor demo --json``."""
        return {
            "name": self.name,
            "title": self.title,
            "plan_id": self.plan_id,
            "scores": self.scores,
            "total": self.total,
            "pattern": self.pattern,
            "outcome": self.outcome,
            "decided_status": self.decided_status,
            "status": self.status,
            "reasons": self.reasons,
            "ran": self.ran,
            "waits_for": self.waits_for,
            "human": self.human,
            "extra": self.extra,
        }


def _brief(effects: Any) -> str:
    """A simulation's effects on one line (``state: degraded → healthy, downtime 5 s``)."""
    if not isinstance(effects, dict):
        return str(effects)
    parts = []
    for key, value in effects.items():
        if key == "diff" and isinstance(value, dict):
            parts += [f"{k}: {a} → {b}" for k, (a, b) in value.items()]
        else:
            parts.append(f"{key.replace('_', ' ')} {value}")
    return ", ".join(parts)


def _result(name: str, title: str, expected: str, rec: PlanRecord) -> ScenarioResult:
    d = rec.decision
    waits = ""
    if rec.status.value == "awaiting_confirmation":
        waits = f"confirmation by {rec.on_behalf_of}"
    elif rec.status.value == "awaiting_approval":
        roles = ", ".join(d["approver_roles"]) or "any approver"
        waits = f"{d['approvals']} approval(s) from {roles}"
        if d["step_up"]:
            waits += " with step-up (TOTP)"
    reasons = list(d["plan_reasons"]) + [
        f"{s['step_id']}: {r}" for s in d["steps"] for r in s["reasons"]
    ]
    return ScenarioResult(
        name=name,
        title=title,
        expected=expected,
        plan_id=rec.plan_id,
        scores=dict(rec.assessment["scores"]),
        total=rec.assessment["total"],
        pattern=rec.assessment["pattern"],
        outcome=rec.outcome,
        reasons=reasons,
        decided_status=rec.status.value,
        status=rec.status.value,
        waits_for=waits,
    )


def _finish(res: ScenarioResult, rec: PlanRecord) -> ScenarioResult:
    res.status = rec.status.value
    res.ran = [f"{s.step_id} {s.action}: {s.status.value}" for s in rec.steps]
    return res


AGENT = {"model_version": "demo-model-2026-10"}


def _plan(
    agent: str, user: str, intent: str, steps: list[tuple[str, dict[str, Any]]], reasoning: str = ""
) -> dict[str, Any]:
    p = make_plan(
        steps,
        agent_id=agent,
        on_behalf_of=user,
        intent=intent,
        model_version=AGENT["model_version"],
    )
    p["reasoning"] = reasoning
    return p


def travel(p: Proctor) -> ScenarioResult:
    """Low-cost booking executes; a high-cost payment needs finance approval with step-up."""
    rec = p.submit(
        _plan(
            "travel-bot",
            "alice",
            "Book me a flight to Lisbon on 12 March",
            [
                ("travel.search", {"destination": "Lisbon", "date": "2027-03-12"}),
                ("travel.reserve", {"flight": "PX101", "traveller": "alice"}),
                (
                    "travel.pay",
                    {
                        "amount": 12_400,
                        "currency": "EUR",
                        "traveller": "alice",
                        "card_last4": "4242",
                    },
                ),
            ],
            reasoning="cheapest direct flight; under the auto-pay limit",
        )
    )
    res = _finish(_result("travel", "Travel booking", "hybrid: low-cost executes", rec), rec)
    big = p.submit(
        _plan(
            "travel-bot",
            "alice",
            "Book the business-class trip to Tokyo",
            [
                ("travel.reserve", {"flight": "PX900", "traveller": "alice"}),
                ("travel.pay", {"amount": 640_000, "currency": "EUR", "traveller": "alice"}),
            ],
        )
    )
    sub = _finish(_result("travel-high-cost", "", "", big), big)
    secret, _ = p.enrol_totp("fiona")
    code = p.gateway.step_up.now_code("fiona")  # type: ignore[union-attr]
    res.human.append(f"fiona (finance) enrols TOTP and approves {big.plan_id} with a code")
    after = p.approve(
        big.plan_id, "fiona", roles=["finance"], otp=code, comment="client trip, budget approved"
    )
    sub = _finish(sub, after)
    res.extra.append(sub.as_dict() | {"decided_status": big.status.value})
    res.notes.append(
        f"second plan, business class to Tokyo (640000): total {sub.total} → {sub.pattern},"
        f" decision {sub.outcome} → {big.status.value}; after fiona's approval: {sub.status}"
    )
    del secret
    return res


def subscription(p: Proctor) -> ScenarioResult:
    """A payment-plan change waits for the customer's one-click confirmation."""
    rec = p.submit(
        _plan(
            "support-bot",
            "cust-42",
            "Upgrade my subscription to Pro",
            [("billing.change_subscription", {"customer": "cust-42", "plan": "pro"})],
            reasoning="customer asked in chat #8812",
        )
    )
    res = _result(
        "subscription",
        "Customer-support subscription update",
        "confirm by the customer; full audit",
        rec,
    )
    res.human.append("cust-42 confirms with one click")
    return _finish(res, p.confirm(rec.plan_id, "cust-42", comment="yes, upgrade"))


def restaurant(p: Proctor) -> ScenarioResult:
    """A table booking executes at once with an undo window; the user undoes it."""
    rec = p.submit(
        _plan(
            "concierge-bot",
            "bob",
            "Table for 4 at Tasca do Chico on Friday 20:00",
            [
                (
                    "restaurant.book",
                    {"restaurant": "Tasca do Chico", "party": 4, "time": "2027-03-12T20:00"},
                )
            ],
        )
    )
    res = _finish(
        _result("restaurant", "Restaurant booking", "execute with an undo window", rec), rec
    )
    step = rec.steps[0]
    if step.undo_until is not None:
        res.human.append(
            f"bob changes his mind and undoes it (window until "
            f"{step.undo_until.strftime('%H:%M:%S')} UTC)"
        )
        undone = p.undo(rec.plan_id, "bob")
        res.extra.append({"after_undo": undone.status.value})
        res.notes.append(f"after the undo the plan is {undone.status.value}")
        res.status = undone.status.value
    return res


def devops(p: Proctor) -> ScenarioResult:
    """Staging first, a deterministic check, then production; SRE approves the whole plan."""
    rec = p.submit(
        _plan(
            "ops-bot",
            "oncall-team",
            "checkout is degraded: restart it",
            [
                ("devops.restart_service", {"service": "checkout", "environment": "staging"}),
                ("devops.check_health", {"service": "checkout", "environment": "staging"}),
                ("devops.restart_service", {"service": "checkout", "environment": "production"}),
                ("devops.check_health", {"service": "checkout", "environment": "production"}),
            ],
            reasoning="runbook RB-12: restart clears the stuck worker pool",
        )
    )
    res = _result(
        "devops",
        "DevOps remediation",
        "dry-run and staging first; production only after a passing check",
        rec,
    )
    dry_run = {s.step_id: s.simulation for s in rec.steps if s.simulation}
    res.extra.append({"dry_run": dry_run})
    for step_id, effects in dry_run.items():
        res.notes.append(f"dry run of {step_id} predicts {_brief(effects)}")
    res.human.append("sam (sre) reviews the dry-run and approves")
    return _finish(res, p.approve(rec.plan_id, "sam", roles=["sre"], comment="dry-run looks right"))


def procurement(p: Proctor) -> ScenarioResult:
    """A low-dollar purchase order executes within the limit; some are sampled for review."""
    rec = p.submit(
        _plan(
            "procure-bot",
            "carol",
            "Reorder printer toner",
            [
                (
                    "procurement.create_po",
                    {"supplier": "OfficeCo", "item": "toner", "quantity": 4, "amount": 23_600},
                )
            ],
        )
    )
    res = _finish(
        _result(
            "procurement",
            "Procurement, low-dollar purchase order",
            "execute within budget; random sample to review",
            rec,
        ),
        rec,
    )
    rate = rec.decision["review_sample_rate"]
    res.extra.append({"sampled_for_review": rec.review, "review_sample_rate": rate})
    res.notes.append(
        f"sampled for post-hoc review: {'yes' if rec.review else 'no'}"
        f" (one plan in {round(1 / float(rate))} is, by its digest)"
    )
    return res


def hr(p: Proctor) -> ScenarioResult:
    """A candidate search over PII waits for an HR approver; never runs on its own."""
    rec = p.submit(
        _plan(
            "recruit-bot",
            "hiring-manager",
            "Find Python candidates",
            [("hr.search_candidates", {"skill": "python", "limit": 5})],
        )
    )
    res = _result("hr", "HR candidate search (PII)", "approval by an HR role", rec)
    flow = p.submit(
        _plan(
            "recruit-bot",
            "hiring-manager",
            "Find candidates and email them",
            [
                ("hr.search_candidates", {"skill": "python"}),
                (
                    "email.send",
                    {
                        "to": "ada@example.org",
                        "subject": "Opportunity",
                        "body": "Hello Ada",
                        "external": True,
                    },
                ),
            ],
        )
    )
    res.extra.append(
        {"flow_rule": flow.status.value, "reasons": list(flow.decision["plan_reasons"])}
    )
    res.notes.append(
        f"a second plan that also emails the candidates outside: {flow.status.value}"
        + "".join(f" ({r})" for r in flow.decision["plan_reasons"][:1])
    )
    res.human.append("hannah (hr) approves the search")
    return _finish(res, p.approve(rec.plan_id, "hannah", roles=["hr"], comment="open req 311"))


SCENARIOS: list[Callable[[Proctor], ScenarioResult]] = [
    travel,
    subscription,
    restaurant,
    devops,
    procurement,
    hr,
]


def run_all(p: Proctor) -> list[ScenarioResult]:
    """Run every scenario on ``p`` (the demo world is reset first)."""
    WORLD.reset()
    return [scenario(p) for scenario in SCENARIOS]
