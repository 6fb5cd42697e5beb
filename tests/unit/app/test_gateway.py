"""The gateway end to end, in memory, with a scripted policy and recording tools."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import orjson
import pytest

from proctor import Proctor
from proctor.app.gateway import GatewayOptions, _sampled
from proctor.bootstrap import init_home
from proctor.core.catalog import Catalog
from proctor.core.lifecycle import PlanStatus, StepStatus
from proctor.core.plans import Plan
from proctor.errors import (
    ApprovalExpiredError,
    ConflictError,
    InvalidRequestError,
    InvalidTransitionError,
    PermissionDeniedError,
    PlanIdReusedError,
    PolicyEngineError,
)
from proctor.policy.engine import RegoPolicyEngine
from proctor.testing import FrozenClock, RecordingTool, make_plan

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}


class ScriptedPolicy:
    """A policy engine answering from a function of the input (a fake, not a mock)."""

    def __init__(self, answer, version="sha256:scripted-1"):
        self.answer = answer
        self.version = version
        self.inputs: list[Mapping[str, Any]] = []

    def evaluate(self, input):
        self.inputs.append(input)
        return self.answer(input)


def outcome_for(outcomes: dict[str, Any], **extra):
    """Answer: each step gets the outcome of its action (default execute)."""

    def answer(inp):
        steps = {}
        for s in inp["steps"]:
            o = outcomes.get(s["action"], "execute")
            d = {"outcome": o, "reasons": [f"{s['action']} -> {o}"]}
            d.update(extra.get(s["action"], {}))
            steps[s["id"]] = d
        return {"steps": steps, "plan": {"deny": [], "adjustments": []}}

    return answer


@pytest.fixture
def clock():
    return FrozenClock()


def make(policy, clock, **opts):
    p = Proctor.in_memory(
        catalog=Catalog(), policy=policy, clock=clock, options=GatewayOptions(**opts)
    )
    tools = {}
    for name, reversible in [
        ("shop.order", True),
        ("shop.pay", True),
        ("shop.read", False),
        ("shop.fail", False),
    ]:
        tool = RecordingTool(fail_with=RuntimeError("boom") if name == "shop.fail" else None)
        undo = RecordingTool()
        tools[name] = (tool, undo)
        p.action(
            name,
            category="general",
            baselines=LOW,
            reversible=reversible,
            compensate=undo if reversible else None,
            params={
                "type": "object",
                "properties": {"n": {"type": "integer"}},
                "additionalProperties": False,
            },
        )(tool)
    return p, tools


def add_lookup(p, *, compensate=None):
    """Register ``shop.lookup``, a read-only look-up (category ``read``); return its tool."""
    tool = RecordingTool()
    p.action(
        "shop.lookup",
        category="read",
        baselines=LOW,
        reversible=compensate is not None,
        compensate=compensate,
    )(tool)
    return tool


def started_data(p, plan_id):
    """The data of the plan's ``compensation.started`` events."""
    return [
        orjson.loads(e.body)["data"]
        for e in p.events(plan_id=plan_id)
        if e.type == "compensation.started"
    ]


class TestSubmit:
    def test_execute_runs_with_idempotency_key(self, clock):
        """An execute plan runs at once; the handler gets plan_id:step_id."""
        p, tools = make(ScriptedPolicy(outcome_for({})), clock)
        rec = p.submit(make_plan([("shop.order", {"n": 1})], plan_id="p-1"))
        assert rec.status is PlanStatus.SUCCEEDED
        assert tools["shop.order"][0].keys == ["p-1:s1"]

    def test_one_policy_query_per_plan(self, clock):
        """A three-step plan costs one policy evaluation."""
        pol = ScriptedPolicy(outcome_for({}))
        p, _ = make(pol, clock)
        p.submit(make_plan([("shop.order", {}), ("shop.pay", {}), ("shop.read", {})]))
        assert len(pol.inputs) == 1
        assert [s["id"] for s in pol.inputs[0]["steps"]] == ["s1", "s2", "s3"]

    def test_unknown_action_rejected_and_audited(self, clock):
        """An unknown action is rejected naming the field; nothing runs; the log says so."""
        p, tools = make(ScriptedPolicy(outcome_for({})), clock)
        with pytest.raises(InvalidRequestError) as ei:
            p.submit(make_plan([("shop.order", {}), ("rm.rf", {})]))
        assert ei.value.field == "steps[1].action"
        assert tools["shop.order"][0].calls == []
        assert p.plans() == []
        types = [e.type for e in p.events()]
        assert types == ["plan.rejected"]

    def test_bad_params_rejected(self, clock):
        """Params violating the schema are rejected naming the param."""
        p, _ = make(ScriptedPolicy(outcome_for({})), clock)
        with pytest.raises(InvalidRequestError) as ei:
            p.submit(make_plan([("shop.order", {"n": "three"})]))
        assert ei.value.field == "steps[0].params.n"

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"destination": "Lis\ud800bon"}, "steps[0].params.destination"),
            ({"amount": 2**53}, "steps[0].params.amount"),
            ({"nested": {"list": [1, -(2**63)]}}, "steps[0].params.nested.list[1]"),
        ],
    )
    def test_unrepresentable_params_rejected_naming_them_and_audited(self, clock, params, field):
        """A lone surrogate or an unsafe integer in free-form params: 4xx naming it, audited."""
        p, _ = make(ScriptedPolicy(outcome_for({})), clock)
        tool = RecordingTool()
        p.action("free.form", category="general", baselines=LOW)(tool)  # no params schema

        with pytest.raises(InvalidRequestError) as ei:
            p.submit(make_plan([("free.form", params)]))

        assert ei.value.field == field
        assert tool.calls == [] and p.plans() == []
        events = p.events()
        assert [e.type for e in events] == ["plan.rejected"]
        assert orjson.loads(events[0].body)["data"]["field"] == field

    def test_idempotent_resubmission(self, clock):
        """The same plan id and digest returns the first result without running again."""
        p, tools = make(ScriptedPolicy(outcome_for({})), clock)
        plan = make_plan([("shop.order", {"n": 1})], plan_id="p-same")
        first = p.submit(plan)
        again = p.submit(plan)
        assert again.plan_id == first.plan_id and again.status is first.status
        assert len(tools["shop.order"][0].calls) == 1

    def test_identical_submissions_racing_run_the_plan_once(self, clock):
        """Two threads submit one plan id at once, both past the first look-up: the one
        that commits second gets the first one's plan and does not run it again."""
        import threading

        both_deciding = threading.Barrier(2, timeout=10)
        execute = outcome_for({})

        def answer(inp):
            both_deciding.wait()  # each thread has found the plan id free
            return execute(inp)

        p, tools = make(ScriptedPolicy(answer), clock)
        plan = make_plan([("shop.order", {"n": 1})], plan_id="p-race")
        results, errors = [], []

        def submit():
            try:
                results.append(p.gateway.submit_created(plan))
            except BaseException as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)

        threads = [threading.Thread(target=submit) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert [r.plan_id for r, _ in results] == ["p-race", "p-race"]
        assert sorted(created for _, created in results) == [False, True]  # 201 once
        assert tools["shop.order"][0].keys == ["p-race:s1"]  # once
        assert [e.type for e in p.events()].count("plan.submitted") == 1
        assert p.get("p-race").status is PlanStatus.SUCCEEDED

    @pytest.mark.parametrize(
        ("where", "field"),
        [
            (("plan_id",), "plan_id"),
            (("actor", "name"), "actor.name"),
            (("actor", "agent_id"), "actor.agent_id"),
            (("on_behalf_of",), "on_behalf_of"),
            (("k\ud800",), "k\\ud800"),
        ],
    )
    def test_a_lone_surrogate_anywhere_is_refused_and_audited(self, clock, where, field):
        """A string with no UTF-8 form is refused naming the field, and the rejection is
        still recorded (the event escapes it)."""
        p, tools = make(ScriptedPolicy(outcome_for({})), clock)
        plan = make_plan([("shop.order", {"n": 1})])
        target = plan
        for key in where[:-1]:
            target = target[key]
        target[where[-1]] = "x\ud800"
        with pytest.raises(InvalidRequestError) as ei:
            p.submit(plan)
        assert ei.value.field == field
        assert [e.type for e in p.events()] == ["plan.rejected"]
        assert tools["shop.order"][0].calls == []

    def test_plan_id_reuse_with_other_digest(self, clock):
        """The same plan id with another manifest is refused and audited."""
        p, _ = make(ScriptedPolicy(outcome_for({})), clock)
        p.submit(make_plan([("shop.order", {"n": 1})], plan_id="p-x"))
        with pytest.raises(PlanIdReusedError):
            p.submit(make_plan([("shop.order", {"n": 2})], plan_id="p-x"))
        assert p.events()[-1].type == "plan.rejected"

    def test_no_policy_denies(self, clock):
        """With no policy loaded nothing executes."""
        p, tools = make(None, clock)
        rec = p.submit(make_plan([("shop.read", {})]))
        assert rec.status is PlanStatus.DENIED
        assert tools["shop.read"][0].calls == []

    def test_engine_error_denies(self, clock):
        """An engine error denies (fail closed) and is recorded as the reason."""

        def broken(_):
            raise PolicyEngineError("rule conflict")

        p, tools = make(ScriptedPolicy(broken), clock)
        rec = p.submit(make_plan([("shop.read", {})]))
        assert rec.status is PlanStatus.DENIED
        assert "policy engine error" in rec.decision["plan_reasons"][0]
        assert tools["shop.read"][0].calls == []

    def test_a_lone_surrogate_in_the_policy_output_denies_and_is_audited(self, clock):
        """A Rego reason "\\ud800" next to a 20-digit number (parsed by json, which lets the
        surrogate through) denies the plan as malformed: recorded and audited, no 422."""
        src = (
            "package proctor\nimport rego.v1\n"
            'decision := {"steps": {s.id: {"outcome": "execute", "reasons": ["\\ud800"]}'
            ' | some s in input.steps}, "n": 123456789012345678901234}\n'
        )
        p, tools = make(RegoPolicyEngine.from_sources({"p.rego": src}), clock)
        rec = p.submit(make_plan([("shop.read", {})], plan_id="p-sur"))
        assert rec.status is PlanStatus.DENIED
        assert rec.decision["plan_reasons"][0].startswith("policy output is malformed")
        assert "lone surrogate" in rec.decision["plan_reasons"][0]
        assert p.get("p-sur").status is PlanStatus.DENIED
        assert "policy.decided" in [e.type for e in p.events(plan_id="p-sur")]
        assert tools["shop.read"][0].calls == []
        assert p.verify().ok

    @pytest.mark.parametrize(
        "step",
        [
            {"outcome": "execute", "reasons": ["r"] * 200_000},
            {"outcome": "execute", "reasons": ["x" * 3_000_000]},
        ],
    )
    def test_an_oversized_policy_output_denies_and_stays_out_of_the_log(self, clock, step):
        """200,000 reasons or one 3 MB reason deny the plan naming the limit; the events stay
        small."""
        p, tools = make(ScriptedPolicy(lambda inp: {"steps": {"s1": step}}), clock)
        rec = p.submit(make_plan([("shop.read", {})]))
        assert rec.status is PlanStatus.DENIED
        assert "the limit is" in rec.decision["plan_reasons"][0]
        assert tools["shop.read"][0].calls == []
        assert max(len(e.body) for e in p.events(plan_id=rec.plan_id)) < 10_000
        assert p.verify().ok


class TestFailureAndCompensation:
    def test_failure_compensates_in_reverse(self, clock):
        """When a step fails, completed steps are compensated in reverse order."""
        p, tools = make(ScriptedPolicy(outcome_for({})), clock)
        rec = p.submit(
            make_plan([("shop.order", {}), ("shop.pay", {}), ("shop.fail", {}), ("shop.read", {})])
        )
        assert rec.status is PlanStatus.COMPENSATED
        assert [s.status for s in rec.steps] == [
            StepStatus.COMPENSATED,
            StepStatus.COMPENSATED,
            StepStatus.FAILED,
            StepStatus.SKIPPED,
        ]
        assert tools["shop.read"][0].calls == []
        order = [e.step_id for e in p.events() if e.type == "compensation.succeeded"]
        assert order == ["s2", "s1"]
        assert p.verify().ok

    def test_a_read_only_step_is_not_compensated_and_the_plan_ends_compensated(self, clock):
        """A look-up before the failure has nothing to undo: skipped, not a failed compensation.

        Regression: the saga tried to compensate it, recorded ``compensation_failed``
        ("cannot be compensated") and ended the plan ``failed`` although every real effect
        was undone.
        """
        p, tools = make(ScriptedPolicy(outcome_for({})), clock)
        lookup = add_lookup(p)
        rec = p.submit(make_plan([("shop.lookup", {}), ("shop.order", {}), ("shop.fail", {})]))

        assert rec.status is PlanStatus.COMPENSATED
        assert [s.status for s in rec.steps] == [
            StepStatus.SUCCEEDED,
            StepStatus.COMPENSATED,
            StepStatus.FAILED,
        ]
        assert len(lookup.calls) == 1
        assert len(tools["shop.order"][1].calls) == 1
        types = [(e.type, e.step_id) for e in p.events(plan_id=rec.plan_id)]
        assert ("compensation.failed", "s1") not in types
        assert started_data(p, rec.plan_id)[0]["nothing_to_undo"] == ["s1"]
        assert p.verify().ok

    def test_an_irreversible_step_that_is_not_a_look_up_still_fails_the_saga(self, clock):
        """Only a read-only look-up is skipped: another irreversible effect ends it failed."""
        p, _ = make(ScriptedPolicy(outcome_for({})), clock)
        rec = p.submit(make_plan([("shop.read", {}), ("shop.order", {}), ("shop.fail", {})]))

        assert rec.status is PlanStatus.FAILED
        assert rec.steps[0].status is StepStatus.COMPENSATION_FAILED
        assert "nothing_to_undo" not in started_data(p, rec.plan_id)[0]

    def test_first_step_failure_is_failed(self, clock):
        """If nothing completed, the plan is failed, with the error recorded."""
        p, _ = make(ScriptedPolicy(outcome_for({})), clock)
        rec = p.submit(make_plan([("shop.fail", {})]))
        assert rec.status is PlanStatus.FAILED
        assert "boom" in rec.steps[0].error


class TestConfirm:
    def test_only_user_confirms_then_runs(self, clock):
        """A confirm plan waits; only the on-behalf-of user's confirmation runs it."""
        p, tools = make(ScriptedPolicy(outcome_for({"shop.pay": "confirm"})), clock)
        rec = p.submit(make_plan([("shop.pay", {})], on_behalf_of="alice"))
        assert rec.status is PlanStatus.AWAITING_CONFIRMATION
        with pytest.raises(PermissionDeniedError):
            p.confirm(rec.plan_id, "mallory")
        assert tools["shop.pay"][0].calls == []
        assert p.confirm(rec.plan_id, "alice").status is PlanStatus.SUCCEEDED

    def test_a_finished_plan_past_its_old_deadline_is_not_expired(self, clock):
        """Confirming a plan that already ran, after its old deadline: invalid transition."""
        p, _ = make(ScriptedPolicy(outcome_for({"shop.pay": "confirm"})), clock)
        rec = p.submit(make_plan([("shop.pay", {})]))
        assert p.confirm(rec.plan_id, "alice").status is PlanStatus.SUCCEEDED
        clock.advance(3601)

        with pytest.raises(InvalidTransitionError):
            p.confirm(rec.plan_id, "alice")
        with pytest.raises(InvalidTransitionError):
            p.reject(rec.plan_id, "alice")
        assert p.get(rec.plan_id).status is PlanStatus.SUCCEEDED

    def test_expired_confirmation(self, clock):
        """After the deadline a confirmation fails and the plan is expired."""
        p, tools = make(ScriptedPolicy(outcome_for({"shop.pay": "confirm"})), clock)
        rec = p.submit(make_plan([("shop.pay", {})]))
        clock.advance(3601)
        with pytest.raises(ApprovalExpiredError):
            p.confirm(rec.plan_id, "alice")
        assert p.get(rec.plan_id).status is PlanStatus.EXPIRED
        assert tools["shop.pay"][0].calls == []


class TestApprove:
    def _p(self, clock, n=2):
        pol = ScriptedPolicy(
            outcome_for(
                {"shop.pay": "approve"},
                **{"shop.pay": {"approvals": n, "approver_roles": ["finance"]}},
            )
        )
        return (*make(pol, clock), pol)

    def test_quorum_then_runs_once(self, clock):
        """Two distinct finance approvers are needed; the plan runs exactly once."""
        p, tools, _ = self._p(clock)
        rec = p.submit(make_plan([("shop.pay", {})], agent_id="bot", on_behalf_of="alice"))
        assert rec.status is PlanStatus.AWAITING_APPROVAL
        rec = p.approve(rec.plan_id, "fiona", roles=["finance"])
        assert rec.status is PlanStatus.AWAITING_APPROVAL
        rec = p.approve(rec.plan_id, "frank", roles=["finance"])
        assert rec.status is PlanStatus.SUCCEEDED
        with pytest.raises(InvalidTransitionError):
            p.approve(rec.plan_id, "gina", roles=["finance"])
        assert len(tools["shop.pay"][0].calls) == 1

    def test_separation_of_duties(self, clock):
        """The requester and beneficiary cannot approve; a second vote does not count."""
        p, _, _ = self._p(clock)
        rec = p.submit(make_plan([("shop.pay", {})], agent_id="bot", on_behalf_of="alice"))
        for who in ("bot", "alice"):
            with pytest.raises(PermissionDeniedError):
                p.approve(rec.plan_id, who, roles=["finance"])
        p.approve(rec.plan_id, "fiona", roles=["finance"])
        with pytest.raises(PermissionDeniedError):
            p.approve(rec.plan_id, "fiona", roles=["finance"])
        with pytest.raises(PermissionDeniedError):
            p.approve(rec.plan_id, "harry", roles=["hr"])

    def test_policy_change_invalidates(self, clock):
        """An approval after the policy changed does not run the plan."""
        p, tools, pol = self._p(clock, n=1)
        rec = p.submit(make_plan([("shop.pay", {})]))
        pol.version = "sha256:scripted-2"
        with pytest.raises(ConflictError):
            p.approve(rec.plan_id, "fiona", roles=["finance"])
        assert p.get(rec.plan_id).status is PlanStatus.EXPIRED
        assert tools["shop.pay"][0].calls == []

    def test_reject(self, clock):
        """A rejection ends the plan; nothing runs."""
        p, tools, _ = self._p(clock)
        rec = p.submit(make_plan([("shop.pay", {})]))
        rec = p.reject(rec.plan_id, "fiona", roles=["finance"], comment="no")
        assert rec.status is PlanStatus.REJECTED
        assert tools["shop.pay"][0].calls == []

    def test_expiry_by_tick(self, clock):
        """The timer sweep expires plans nobody decided."""
        p, _, _ = self._p(clock)
        rec = p.submit(make_plan([("shop.pay", {})]))
        clock.advance(86_401)
        changed = p.tick()
        assert [c.plan_id for c in changed] == [rec.plan_id]
        assert p.get(rec.plan_id).status is PlanStatus.EXPIRED


class TestConfirmThenApprove:
    """A plan with a step its user confirms and a step approvers decide needs both."""

    def _p(self, clock, *, n=1, **extra):
        pol = ScriptedPolicy(
            outcome_for(
                {"shop.order": "confirm", "shop.pay": "approve"},
                **{"shop.pay": {"approvals": n, "approver_roles": ["finance"]}},
                **extra,
            )
        )
        return (*make(pol, clock), pol)

    def _submit(self, p):
        steps = [("shop.order", {}), ("shop.pay", {})]
        return p.submit(make_plan(steps, agent_id="bot", on_behalf_of="alice"))

    def test_the_user_confirms_first_then_the_approvers(self, clock):
        """An approval does not stand in for the user's confirmation: she first, then them."""
        p, tools, _ = self._p(clock)
        rec = self._submit(p)

        assert rec.status is PlanStatus.AWAITING_CONFIRMATION
        with pytest.raises(InvalidTransitionError):
            p.approve(rec.plan_id, "fiona", roles=["finance"])
        rec = p.confirm(rec.plan_id, "alice")
        assert rec.status is PlanStatus.AWAITING_APPROVAL
        assert tools["shop.order"][0].calls == tools["shop.pay"][0].calls == []
        with pytest.raises(InvalidTransitionError):
            p.confirm(rec.plan_id, "alice")
        rec = p.approve(rec.plan_id, "fiona", roles=["finance"])
        assert rec.status is PlanStatus.SUCCEEDED
        assert len(tools["shop.order"][0].calls) == len(tools["shop.pay"][0].calls) == 1
        assert [(a.principal, a.kind) for a in rec.approvals] == [
            ("alice", "confirm"),
            ("fiona", "approve"),
        ]

    def test_both_decisions_are_audited(self, clock):
        """The log holds her confirmation, the second routing, then the approval."""
        p, _, _ = self._p(clock)
        rec = self._submit(p)
        p.confirm(rec.plan_id, "alice")
        p.approve(rec.plan_id, "fiona", roles=["finance"])

        events = [e for e in p.events() if e.plan_id == rec.plan_id]
        types = [e.type for e in events]
        assert types.index("plan.routed") < types.index("confirmation.granted")
        assert types.index("confirmation.granted") < types.index("approval.granted")
        routed = [orjson.loads(e.body)["data"] for e in events if e.type == "plan.routed"]
        assert [r["status"] for r in routed] == ["awaiting_confirmation", "awaiting_approval"]
        assert routed[1]["after"] == "confirmation"
        assert routed[1]["step_quorums"][0]["step_id"] == "s2"
        assert p.verify().ok

    def test_her_decline_ends_the_plan(self, clock):
        """The user's rejection ends the plan before any approver sees it; nothing runs."""
        p, tools, _ = self._p(clock)
        rec = self._submit(p)

        rec = p.reject(rec.plan_id, "alice", comment="not my card")

        assert rec.status is PlanStatus.REJECTED
        assert tools["shop.order"][0].calls == tools["shop.pay"][0].calls == []

    def test_the_confirmation_wait_expires(self, clock):
        """Nobody confirming within confirm_ttl expires the plan (the tick's sweep)."""
        p, tools, _ = self._p(clock)
        rec = self._submit(p)
        clock.advance(3601)

        assert [c.plan_id for c in p.tick()] == [rec.plan_id]
        assert p.get(rec.plan_id).status is PlanStatus.EXPIRED
        assert tools["shop.order"][0].calls == []

    def test_the_approval_wait_gets_its_own_deadline(self, clock):
        """After the confirmation the approvers get a whole approval_ttl, and no more."""
        p, tools, _ = self._p(clock)
        rec = self._submit(p)
        clock.advance(3000)
        rec = p.confirm(rec.plan_id, "alice")

        assert rec.expires_at == clock.now() + p.gateway.options.approval_ttl
        clock.advance(86_399)
        assert p.tick() == []
        clock.advance(2)
        with pytest.raises(ApprovalExpiredError):
            p.approve(rec.plan_id, "fiona", roles=["finance"])
        assert p.get(rec.plan_id).status is PlanStatus.EXPIRED
        assert tools["shop.order"][0].calls == tools["shop.pay"][0].calls == []

    def test_a_policy_change_after_her_confirmation_expires_it(self, clock):
        """The policy is re-checked at the approval that would run it."""
        p, tools, pol = self._p(clock)
        rec = self._submit(p)
        p.confirm(rec.plan_id, "alice")
        pol.version = "sha256:scripted-2"

        with pytest.raises(ConflictError):
            p.approve(rec.plan_id, "fiona", roles=["finance"])
        assert p.get(rec.plan_id).status is PlanStatus.EXPIRED
        assert tools["shop.pay"][0].calls == []

    def test_the_guards_are_rechecked_before_it_runs(self, clock):
        """A kill switch engaged after her confirmation holds the plan at the approval."""
        p, tools, _ = self._p(clock)
        rec = self._submit(p)
        p.confirm(rec.plan_id, "alice")
        p.kill("global", by="ops")

        with pytest.raises(ConflictError):
            p.approve(rec.plan_id, "fiona", roles=["finance"])
        assert p.get(rec.plan_id).status is PlanStatus.AWAITING_APPROVAL
        assert tools["shop.order"][0].calls == tools["shop.pay"][0].calls == []

    def test_the_undo_window_applies(self, clock):
        """Once run, the user may undo the plan within its steps' undo windows."""
        windows = {"shop.order": {"undo_window": 60}}
        pol = ScriptedPolicy(
            outcome_for(
                {"shop.order": "confirm", "shop.pay": "approve"},
                **{"shop.pay": {"approver_roles": ["finance"], "undo_window": 60}},
                **windows,
            )
        )
        p, tools = make(pol, clock)
        rec = self._submit(p)
        p.confirm(rec.plan_id, "alice")
        p.approve(rec.plan_id, "fiona", roles=["finance"])

        assert p.undo(rec.plan_id, "alice").status is PlanStatus.UNDONE
        assert len(tools["shop.order"][1].calls) == len(tools["shop.pay"][1].calls) == 1

    def test_her_propose_autonomy_is_not_answered_by_an_approver(self, clock):
        """A step she set to ``propose`` waits for her even beside a step approvers decide."""
        p, tools, _ = self._p(clock)
        p.set_autonomy("alice", "shop.read", "propose", by="alice")
        steps = [("shop.read", {}), ("shop.pay", {})]
        rec = p.submit(make_plan(steps, agent_id="bot", on_behalf_of="alice"))

        assert rec.status is PlanStatus.AWAITING_CONFIRMATION
        with pytest.raises(InvalidTransitionError):
            p.approve(rec.plan_id, "fiona", roles=["finance"])
        assert tools["shop.read"][0].calls == []

    def test_a_confirm_only_plan_runs_on_her_confirmation(self, clock):
        """Without approving steps nothing changes: her confirmation runs it."""
        pol = ScriptedPolicy(outcome_for({"shop.order": "confirm", "shop.pay": "confirm"}))
        p, tools = make(pol, clock)
        rec = self._submit(p)

        assert p.confirm(rec.plan_id, "alice").status is PlanStatus.SUCCEEDED
        assert len(tools["shop.pay"][0].calls) == 1


class TestStepQuorums:
    """Each approving step needs its own quorum; one plan-level quorum is not enough."""

    def _p(self, clock):
        pol = ScriptedPolicy(
            outcome_for(
                {"shop.order": "approve", "shop.pay": "approve"},
                **{
                    "shop.order": {"approvals": 2, "approver_roles": ["finance"]},
                    "shop.pay": {"approvals": 1, "approver_roles": ["hr"]},
                },
            )
        )
        return make(pol, clock)

    def _submit(self, p):
        steps = [("shop.order", {}), ("shop.pay", {})]
        return p.submit(make_plan(steps, agent_id="bot", on_behalf_of="alice"))

    def test_two_finance_approvers_are_two(self, clock):
        """One finance and one hr approver do not meet a step's two-finance quorum."""
        p, tools = self._p(clock)
        rec = self._submit(p)

        p.approve(rec.plan_id, "fiona", roles=["finance"])
        rec = p.approve(rec.plan_id, "harry", roles=["hr"])
        assert rec.status is PlanStatus.AWAITING_APPROVAL
        assert tools["shop.order"][0].calls == []
        rec = p.approve(rec.plan_id, "frank", roles=["finance"])
        assert rec.status is PlanStatus.SUCCEEDED

    def test_one_person_counts_towards_each_step_whose_role_they_hold(self, clock):
        """An approver holding finance and hr counts for both steps (but once per step)."""
        p, _ = self._p(clock)
        rec = self._submit(p)

        rec = p.approve(rec.plan_id, "bea", roles=["finance", "hr"])
        assert rec.status is PlanStatus.AWAITING_APPROVAL
        rec = p.approve(rec.plan_id, "fiona", roles=["finance"])
        assert rec.status is PlanStatus.SUCCEEDED


class TestUndo:
    def _p(self, clock):
        pol = ScriptedPolicy(outcome_for({}, **{"shop.order": {"undo_window": 60}}))
        return make(pol, clock)

    def test_undo_within_window(self, clock):
        """The user undoes within the window; the compensation runs with the same key."""
        p, tools = self._p(clock)
        rec = p.submit(make_plan([("shop.order", {})], plan_id="p-u", on_behalf_of="alice"))
        with pytest.raises(PermissionDeniedError):
            p.undo(rec.plan_id, "mallory")
        rec = p.undo(rec.plan_id, "alice")
        assert rec.status is PlanStatus.UNDONE
        assert tools["shop.order"][1].keys == ["p-u:s1"]

    def test_undo_after_window(self, clock):
        """After the window, undo is refused and nothing is compensated."""
        p, tools = self._p(clock)
        rec = p.submit(make_plan([("shop.order", {})]))
        clock.advance(61)
        with pytest.raises(ConflictError):
            p.undo(rec.plan_id, "alice")
        assert tools["shop.order"][1].calls == []

    def test_no_undo_window_says_what_can_be_done(self, clock):
        """A step the policy gave no undo window: refused with a hint (a new plan reverses it;
        the policy's undo_window allows it for later plans); nothing is compensated."""
        p, tools = make(ScriptedPolicy(outcome_for({})), clock)
        rec = p.submit(make_plan([("shop.order", {})], on_behalf_of="alice"))

        with pytest.raises(ConflictError, match="step s1 has no undo window") as ei:
            p.undo(rec.plan_id, "alice")

        assert ei.value.field == "plan_id"
        assert "submit a new plan whose steps reverse it" in ei.value.hint
        assert "undo_window" in ei.value.hint
        assert "hint: " in ei.value.diagnostics()
        assert tools["shop.order"][1].calls == []
        assert p.get(rec.plan_id).status is PlanStatus.SUCCEEDED

    def test_a_read_only_step_does_not_block_the_undo(self, clock):
        """Search then book (the README's travel plan): the undo cancels the booking.

        Regression: the undo was refused ("step s1 (shop.lookup) is not reversible") although
        the booking was shown with an undo window.
        """
        p, tools = self._p(clock)
        lookup = add_lookup(p)
        rec = p.submit(make_plan([("shop.lookup", {}), ("shop.order", {})], on_behalf_of="alice"))

        rec = p.undo(rec.plan_id, "alice")

        assert rec.status is PlanStatus.UNDONE
        assert [s.status for s in rec.steps] == [StepStatus.SUCCEEDED, StepStatus.COMPENSATED]
        assert len(tools["shop.order"][1].keys) == 1
        assert len(lookup.calls) == 1
        assert started_data(p, rec.plan_id)[0]["nothing_to_undo"] == ["s1"]
        assert p.verify().ok

    def test_a_read_only_step_does_not_reopen_a_closed_window(self, clock):
        """The booking's window still decides: after it closes the undo is refused."""
        p, tools = self._p(clock)
        add_lookup(p)
        rec = p.submit(make_plan([("shop.lookup", {}), ("shop.order", {})]))
        clock.advance(61)

        with pytest.raises(ConflictError, match="undo window of step s2 closed"):
            p.undo(rec.plan_id, "alice")
        assert tools["shop.order"][1].calls == []

    def test_a_plan_of_look_ups_only_has_nothing_to_undo(self, clock):
        """Nothing to undo is a conflict, not an ``undone`` plan that undid nothing."""
        p, _ = self._p(clock)
        add_lookup(p)
        rec = p.submit(make_plan([("shop.lookup", {})]))

        with pytest.raises(ConflictError, match="nothing left to undo"):
            p.undo(rec.plan_id, "alice")
        assert p.get(rec.plan_id).status is PlanStatus.SUCCEEDED

    def test_a_look_up_with_its_own_compensation_is_compensated(self, clock):
        """A read action that declares a compensation gets it run, as declared."""
        pol = ScriptedPolicy(outcome_for({}, **{"shop.lookup": {"undo_window": 60}}))
        p, _ = make(pol, clock)
        undo = RecordingTool()
        add_lookup(p, compensate=undo)
        rec = p.submit(make_plan([("shop.lookup", {})]))

        rec = p.undo(rec.plan_id, "alice")

        assert rec.status is PlanStatus.UNDONE
        assert rec.steps[0].status is StepStatus.COMPENSATED
        assert len(undo.calls) == 1

    def test_rollback_ttl(self, clock):
        """A rollback TTL undoes automatically when it fires."""
        pol = ScriptedPolicy(outcome_for({}, **{"shop.order": {"rollback_ttl": 30}}))
        p, tools = make(pol, clock)
        rec = p.submit(make_plan([("shop.order", {})]))
        clock.advance(31)
        p.tick()
        assert p.get(rec.plan_id).status is PlanStatus.UNDONE
        assert len(tools["shop.order"][1].calls) == 1


class TestSandbox:
    def test_sandbox_runs_no_handler(self, clock):
        """In sandbox mode the decision is recorded and no handler runs."""
        p, tools = make(ScriptedPolicy(outcome_for({})), clock, sandbox=True)
        rec = p.submit(make_plan([("shop.order", {})]))
        assert rec.status is PlanStatus.SIMULATED and rec.outcome == "execute"
        assert tools["shop.order"][0].calls == []


class TestAudit:
    def test_every_transition_is_logged_and_verifies(self, clock):
        """An executed plan logs submit, decide, route, step start/success and finish."""
        p, _ = make(ScriptedPolicy(outcome_for({})), clock)
        rec = p.submit(make_plan([("shop.order", {"n": 3})]))
        types = [e.type for e in p.events(plan_id=rec.plan_id)]
        assert types == [
            "plan.submitted",
            "policy.decided",
            "plan.routed",
            "step.started",
            "step.succeeded",
            "plan.finished",
        ]
        assert p.verify().ok


class TestPrivacy:
    def test_masked_params_keep_unmasked_hash(self, clock):
        """Masked params never reach the log, but the payload hash (keyed) is of the real ones."""
        import orjson

        from proctor.app.journal import keyed_payload_hash

        p = Proctor.in_memory(clock=clock)
        plan = make_plan(
            [
                (
                    "travel.pay",
                    {"amount": 100, "currency": "EUR", "traveller": "al", "card_last4": "4242"},
                )
            ]
        )
        rec = p.submit(plan)
        raw = b"".join(e.body for e in p.events(plan_id=rec.plan_id))
        # As a JSON string: a bare 4242 may occur in a random event or key id (1 run in 300).
        assert b'"4242"' not in raw
        submitted = orjson.loads(p.events(plan_id=rec.plan_id)[0].body)
        assert submitted["data"]["steps"][0]["params"]["card_last4"] == "***"
        real = plan["steps"][0]["params"]
        key = p.gateway._payload_key
        assert submitted["actions_attempted"][0]["payload_hash"] == keyed_payload_hash(key, real)

    def test_prompt_stored_only_when_configured(self, clock):
        """The raw intent is kept only with store_prompt; its hash always."""
        import orjson

        for store_prompt in (False, True):
            p = Proctor.in_memory(clock=clock, options=GatewayOptions(store_prompt=store_prompt))
            p.submit(
                make_plan(
                    [("travel.search", {"destination": "Lisbon", "date": "2027-01-01"})],
                    intent="secret trip to Lisbon",
                )
            )
            body = orjson.loads(p.events()[0].body)
            assert body["prompt_hash"].startswith("sha256:")
            assert ("prompt" in body) is store_prompt

    def test_personal_data_results_stay_out_of_the_log(self, clock):
        """A PII search's results are hashed in the audit log, never written into it."""
        p = Proctor.in_memory(clock=clock)
        rec = p.submit(
            make_plan(
                [("hr.search_candidates", {"skill": "python"})], agent_id="bot", on_behalf_of="hm"
            )
        )
        rec = p.approve(rec.plan_id, "hannah", roles=["hr"])
        assert rec.steps[0].result["candidates"]
        raw = b"".join(e.body for e in p.events(plan_id=rec.plan_id))
        assert b"ada@example.org" not in raw
        assert b"result_hash" in raw


def _unkeyed_sampled(digest: str, rate: float) -> bool:
    """The old rule (the digest's first 32 bits), which an agent can compute itself."""
    return int(digest.removeprefix("sha256:")[:8], 16) / 2**32 < rate


def _auditor_sampled(key: bytes, digest: str, rate: float) -> bool:
    """The rule as docs/guards.md gives it, for an auditor holding keys/payload-hmac.key."""
    mac = hmac.new(key, b"proctor review sample\n" + digest.encode(), hashlib.sha256).digest()
    return rate > 0 and int.from_bytes(mac[:4], "big") / 2**32 < rate


class TestReviewSampling:
    def test_an_agent_cannot_grind_its_plans_out_of_the_sample(self, clock):
        """Plan ids tried locally until the digest's own bits say "not sampled" are sampled
        at the rate all the same: the sample is keyed with a secret the agent lacks."""
        half = ScriptedPolicy(
            lambda inp: {**outcome_for({})(inp), "plan": {"review_sample_rate": 0.5}}
        )
        p, _ = make(half, clock)
        sampled = 0
        for i in range(40):
            n = 0
            while True:
                m = make_plan([("shop.read", {})], plan_id=f"p-{i}-{n}", intent=f"buy {i}")
                if not _unkeyed_sampled(Plan.from_dict(m).digest, 0.5):
                    break
                n += 1
            rec = p.submit(m)
            assert rec.status is PlanStatus.SUCCEEDED
            assert rec.review is p.gateway.sampled_for_review(rec.digest, 0.5)
            sampled += rec.review
        # Binomial(40, 0.5) under a random key: outside 5..35 once in ~10**7 runs.
        assert 5 <= sampled <= 35

    def test_the_sample_is_the_documented_keyed_rule(self):
        """Same key, same answer (replicas agree); another key, another sample."""
        key, other = bytes(range(32)), bytes(32)
        digests = [f"sha256:{hashlib.sha256(str(i).encode()).hexdigest()}" for i in range(200)]
        ours = [_sampled(key, d, 0.3) for d in digests]
        assert ours == [_auditor_sampled(key, d, 0.3) for d in digests]
        assert ours == [_sampled(key, d, 0.3) for d in digests]
        assert ours != [_sampled(other, d, 0.3) for d in digests]
        assert ours != [_unkeyed_sampled(d, 0.3) for d in digests]
        assert 30 <= sum(ours) <= 90
        assert not any(_sampled(key, d, 0) for d in digests)
        assert all(_sampled(key, d, 1) for d in digests)

    def test_an_instance_samples_under_its_payload_key(self, tmp_path):
        """An auditor reading keys/payload-hmac.key recomputes what the instance decides."""
        home = tmp_path / "h"
        init_home(home)
        key = (home / "keys" / "payload-hmac.key").read_bytes()
        digests = [f"sha256:{hashlib.sha256(str(i).encode()).hexdigest()}" for i in range(64)]
        with Proctor.open(home) as p:
            got = [p.gateway.sampled_for_review(d, 0.5) for d in digests]
        assert got == [_auditor_sampled(key, d, 0.5) for d in digests]


class TestPolicyReload:
    def test_a_reload_during_evaluation_keeps_the_version_of_the_deciding_bundle(self, clock):
        """A reload that lands between reading the engine's version and evaluating does not
        record the new bundle's decision under the old version."""
        new = ScriptedPolicy(outcome_for({"shop.read": "deny"}), version="sha256:new")

        class Reloaded(ScriptedPolicy):
            @property
            def version(self):
                p.gateway.policy = new  # the hot reload swaps the engine right here
                return "sha256:old"

            @version.setter
            def version(self, _):
                pass

        p, _ = make(Reloaded(outcome_for({})), clock)
        rec = p.submit(make_plan([("shop.read", {})]))
        assert (rec.policy_version, rec.status) == ("sha256:old", PlanStatus.SUCCEEDED)
        assert new.inputs == []
        rec = p.submit(make_plan([("shop.read", {})]))
        assert (rec.policy_version, rec.status) == ("sha256:new", PlanStatus.DENIED)
