"""The OpenAPI document says what the server really sends, and every error code has a status."""

from __future__ import annotations

import json

import pytest

import proctor.errors
from proctor import Proctor
from proctor.cli.render import plan_json
from proctor.errors import ProctorError
from proctor.http import create_app
from proctor.http.errors import STATUS, _field
from proctor.http.schemas import PlanOut
from proctor.testing import FrozenClock, make_plan

PLANS = {
    "succeeded": [("travel.search", {"destination": "Lisbon", "date": "2027-03-12"})],
    "undo window": [("restaurant.book", {"restaurant": "T", "party": 2, "time": "20:00"})],
    "awaiting approval, step-up, dry run": [
        ("travel.pay", {"amount": 640_000, "currency": "EUR", "traveller": "alice"})
    ],
    "awaiting confirmation": [("billing.change_subscription", {"customer": "c", "plan": "pro"})],
    "denied": [
        ("hr.search_candidates", {"skill": "python", "limit": 5}),
        ("email.send", {"to": "a@b.c", "subject": "s", "body": "b", "external": True}),
    ],
}


class TestPlanOut:
    @pytest.mark.parametrize("steps", PLANS.values(), ids=PLANS.keys())
    def test_plan_json_matches_the_published_schema(self, steps):
        """plan_json of every kind of plan validates against PlanOut (extra fields forbidden)."""
        p = Proctor.in_memory(clock=FrozenClock())
        rec = p.submit(make_plan(steps))

        PlanOut.model_validate(json.loads(json.dumps(plan_json(rec))))

    def test_after_human_actions(self):
        """Approvals, rejections and undos keep the shape."""
        p = Proctor.in_memory(clock=FrozenClock())
        rejected = p.submit(make_plan(PLANS["awaiting confirmation"]))
        rejected = p.reject(rejected.plan_id, "alice", comment="no")
        undone = p.submit(make_plan(PLANS["undo window"]))
        undone = p.undo(undone.plan_id, "alice")

        for rec in (rejected, undone):
            PlanOut.model_validate(json.loads(json.dumps(plan_json(rec))))

    def test_a_plan_confirmed_then_approved_shows_each_wait(self):
        """Her confirmation first, then the approving step's own quorum, in the schema."""
        p = Proctor.in_memory(clock=FrozenClock())
        rec = p.submit(make_plan([*PLANS["awaiting confirmation"], *PLANS[_APPROVAL]]))
        waiting = json.loads(json.dumps(plan_json(rec)))
        confirmed = json.loads(json.dumps(plan_json(p.confirm(rec.plan_id, "alice"))))

        for doc in (waiting, confirmed):
            PlanOut.model_validate(doc)
        assert (waiting["status"], waiting["confirmation_required"]) == (
            "awaiting_confirmation",
            True,
        )
        assert confirmed["status"] == "awaiting_approval"
        assert confirmed["step_quorums"] == [
            {
                "step_id": "s2",
                "approvals_required": 1,
                "approver_roles": ["finance"],
                "approved_by": [],
                "met": False,
            }
        ]


_APPROVAL = "awaiting approval, step-up, dry run"


class TestErrorTable:
    def test_every_proctor_error_code_has_a_status(self):
        """Each code of the error tree maps to a status; bad input codes are 4xx."""
        codes = {
            cls.code
            for cls in vars(proctor.errors).values()
            if isinstance(cls, type) and issubclass(cls, ProctorError) and cls is not ProctorError
        }

        assert codes <= set(STATUS)
        for code in ("invalid_request", "bad_signature", "not_found", "plan_id_reused"):
            assert 400 <= STATUS[code] < 500

    @pytest.mark.parametrize(
        ("loc", "field"),
        [
            (("body", "comment"), "comment"),
            (("body", "steps", 0, "id"), "steps[0].id"),
            (("query", "limit"), "limit"),
            (("header", "Idempotency-Key"), "Idempotency-Key"),
            (("body",), "body"),
            ((), "body"),
        ],
    )
    def test_validation_locations_become_fields(self, loc, field):
        """pydantic locations read like the gateway's field paths."""
        assert _field(loc) == field


class TestOpenApi:
    def test_is_openapi_3_1_with_every_route_of_the_contract(self):
        """docs/http.md's routes are all in /openapi.json, each documenting its errors."""
        doc = create_app(Proctor.in_memory(clock=FrozenClock())).openapi()

        assert doc["openapi"].startswith("3.1")
        routes = {(m.upper(), path) for path, item in doc["paths"].items() for m in item}
        assert routes == {
            ("POST", "/v1/plans"),
            ("GET", "/v1/plans"),
            ("GET", "/v1/plans/{plan_id}"),
            ("GET", "/v1/plans/{plan_id}/events"),
            ("POST", "/v1/plans/{plan_id}/confirm"),
            ("POST", "/v1/plans/{plan_id}/approve"),
            ("POST", "/v1/plans/{plan_id}/reject"),
            ("POST", "/v1/plans/{plan_id}/undo"),
            ("POST", "/v1/plans/{plan_id}/steps/{step_id}/resolve"),
            ("GET", "/v1/me"),
            ("GET", "/v1/guards"),
            ("GET", "/metrics"),
            ("GET", "/v1/kpis"),
            ("POST", "/v1/guards/kill"),
            ("POST", "/v1/guards/unkill"),
            ("POST", "/v1/guards/breakers/open"),
            ("POST", "/v1/guards/breakers/reset"),
            ("PUT", "/v1/guards/whitelists/{agent}"),
            ("GET", "/v1/autonomy"),
            ("PUT", "/v1/autonomy"),
            ("POST", "/v1/autonomy/promotions"),
            ("GET", "/v1/reviews"),
            ("POST", "/v1/plans/{plan_id}/review"),
            ("POST", "/v1/plans/{plan_id}/complaints"),
            ("GET", "/v1/audit/events"),
            ("GET", "/v1/audit/checkpoint"),
            ("GET", "/v1/audit/proofs/inclusion"),
            ("GET", "/v1/audit/proofs/consistency"),
            ("GET", "/v1/audit/keys"),
            ("GET", "/v1/webhooks/dead-letters"),
            ("POST", "/v1/mcp/tools"),
            ("POST", "/v1/mcp/calls"),
            ("POST", "/v1/mcp/plans/{plan_id}/start"),
            ("POST", "/v1/mcp/plans/{plan_id}/outcome"),
            ("GET", "/healthz"),
            ("GET", "/readyz"),
        }
        for path, item in doc["paths"].items():
            for op in item.values():
                if path.startswith("/v1/"):
                    assert {"401", "403", "422", "429"} <= set(op["responses"]), path
                    assert op["security"] == [{"HTTPBearer": []}]
        assert "HTTPValidationError" not in doc["components"]["schemas"]
        assert "PlanManifest" in doc["components"]["schemas"]
