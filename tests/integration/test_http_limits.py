"""Limits and bad input over HTTP: 400, 401, 403, 404, 405, 409, 413, 422, 429; never a 5xx."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from proctor import Proctor
from proctor.app.tokens import TokenService
from proctor.http import HttpSettings, create_app
from proctor.testing import FrozenClock, make_plan

pytestmark = pytest.mark.anyio

SEARCH = ("travel.search", {"destination": "Lisbon", "date": "2027-03-12"})
LIMIT = 256 * 1024


class World:
    def __init__(self, **settings: Any) -> None:
        clock = FrozenClock()
        self.proctor = Proctor.in_memory(clock=clock)
        tokens = TokenService(self.proctor.gateway.store, clock)
        self.bot = tokens.create(name="bot", roles=["agent"]).token
        self.root = tokens.create(name="root", roles=["admin"]).token
        self.ann = tokens.create(name="ann", roles=["approver"], groups=["finance"]).token
        self.app = create_app(self.proctor, settings=HttpSettings(**settings))

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.bot}"}


@pytest.fixture
async def world() -> AsyncIterator[tuple[World, httpx.AsyncClient]]:
    w = World()
    transport = httpx.ASGITransport(app=w.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as client:
        yield w, client


def _events(w: World) -> list[str]:
    return [e.type for e in w.proctor.events()]


class TestBodySize:
    async def test_a_large_declared_body_is_413_before_parsing(self, world):
        """A Content-Length over 256 KiB is refused with 413 and nothing is audited."""
        w, client = world
        body = b"{" + b" " * LIMIT + b"}"

        resp = await client.post("/v1/plans", content=body, headers=w.auth())

        assert resp.status_code == 413
        assert resp.json() == {
            "code": "payload_too_large",
            "message": f"the request body is larger than {LIMIT} bytes",
            "field": "body",
        }
        assert _events(w) == []

    async def test_a_large_chunked_body_is_413(self, world):
        """A body without Content-Length is counted as it arrives and refused past the limit."""
        w, client = world

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"intent": "'
            for _ in range(80):
                yield b"x" * 4096
            yield b'"}'

        resp = await client.post("/v1/plans", content=chunks(), headers=w.auth())

        assert resp.status_code == 413
        assert resp.json()["code"] == "payload_too_large"

    async def test_a_body_at_the_limit_is_parsed(self, world):
        """Just under the limit the body is read (and the gateway judges the manifest)."""
        w, client = world
        plan = make_plan([SEARCH], agent_id="bot")
        plan["reasoning"] = "x" * 7000
        body = httpx.Request("POST", "/", json=plan).content

        resp = await client.post("/v1/plans", content=body, headers=w.auth())

        assert len(body) < LIMIT
        assert resp.status_code == 201


class TestMalformed:
    @pytest.mark.parametrize(
        "body", [b"{bad", b"", b"[1,", b'{"a": NaN}', b"\xff\xfe", b'{"a": 1}}']
    )
    async def test_malformed_json_is_400_on_body(self, world, body):
        """Unparseable JSON is 400 invalid_request on field body; nothing is audited."""
        w, client = world

        resp = await client.post(
            "/v1/plans", content=body, headers=w.auth() | {"Content-Type": "application/json"}
        )

        assert resp.status_code == 400
        assert resp.json() == {
            "code": "invalid_request",
            "message": "the body is not valid JSON",
            "field": "body",
        }

    async def test_malformed_json_on_an_action_is_400(self, world):
        """The action routes parse their body too: bad JSON is 400 on field body."""
        w, client = world
        plan_id = w.proctor.submit(make_plan([SEARCH])).plan_id

        resp = await client.post(
            f"/v1/plans/{plan_id}/approve",
            content=b"{nope",
            headers=w.auth(w.ann) | {"Content-Type": "application/json"},
        )

        assert resp.status_code == 400
        assert resp.json()["field"] == "body"


class TestValidation:
    @pytest.mark.parametrize(
        ("mutate", "field"),
        [
            (lambda p: p.pop("intent"), "intent"),
            (lambda p: p.update(surprise=1), "surprise"),
            (lambda p: p["steps"].clear(), "steps"),
            (lambda p: p.update(steps=[p["steps"][0]] * 33), "steps"),
            (lambda p: p["steps"][0].update(action="rm.rf"), "steps[0].action"),
            (lambda p: p["steps"][0]["params"].update(date=5), "steps[0].params.date"),
            # Fullwidth digits: \d is [0-9] in JSON Schema (ECMA-262), not Python's Unicode \d.
            (
                lambda p: p["steps"][0]["params"].update(date="\uff12\uff10\uff12\uff17-03-12"),
                "steps[0].params.date",
            ),
            (lambda p: p.update(plan_id="has space"), "plan_id"),
            (lambda p: p["actor"].pop("model_version"), "actor.model_version"),
        ],
    )
    async def test_a_bad_manifest_is_422_naming_the_field_and_audited(self, world, mutate, field):
        """The gateway's field name reaches the client, and the rejection is audited."""
        w, client = world
        plan = make_plan([SEARCH], agent_id="bot")
        mutate(plan)

        resp = await client.post("/v1/plans", json=plan, headers=w.auth())

        assert resp.status_code == 422, resp.text
        assert resp.json()["code"] == "invalid_request"
        assert resp.json()["field"] == field
        assert _events(w) == ["plan.rejected"]
        assert w.proctor.plans() == []

    @pytest.mark.parametrize("amount", [b"640000.0", b"6.4e5", b"true", b'"640000"'])
    async def test_an_amount_that_is_not_an_integer_is_422_and_audited(self, world, amount):
        """640000.0 or 6.4e5 is refused naming the amount, not run as a payment of 0.

        Regression: a float passed the schema's integer type and skipped the approval gate.
        """
        w, client = world
        pay = ("travel.pay", {"amount": 0, "currency": "EUR", "traveller": "alice"})
        body = json.dumps(make_plan([pay], agent_id="bot")).encode()
        body = body.replace(b'"amount": 0', b'"amount": ' + amount)

        resp = await client.post(
            "/v1/plans", content=body, headers=w.auth() | {"Content-Type": "application/json"}
        )

        assert resp.status_code == 422, resp.text
        assert resp.json()["code"] == "invalid_request"
        assert resp.json()["field"] == "steps[0].params.amount"
        assert "minor units" in resp.json()["hint"]
        assert _events(w) == ["plan.rejected"]
        assert w.proctor.plans() == []

    async def test_a_negative_amount_is_422_and_audited(self, world):
        """A refund of -5 is refused naming the amount, though its schema has no ``minimum``.

        Regression: it executed at once, the guards and the policy reading it as 0 or less.
        """
        w, client = world
        ran = []

        @w.proctor.action(
            "shop.refund",
            category="payment",
            amount_param="amount",
            baselines={"risk": 2, "auditability": 2, "ux": 3, "recovery": 2, "cost": 1},
            params={"type": "object", "properties": {"amount": {"type": "integer"}}},
        )
        def refund(params, call):
            ran.append(params)
            return {"ok": True}

        pay = ("shop.refund", {"amount": -5})

        resp = await client.post(
            "/v1/plans", json=make_plan([pay], agent_id="bot"), headers=w.auth()
        )

        assert resp.status_code == 422, resp.text
        assert resp.json()["field"] == "steps[0].params.amount"
        assert "negative" in resp.json()["message"]
        assert _events(w) == ["plan.rejected"]
        assert w.proctor.plans() == []
        assert ran == []

    async def test_an_email_body_longer_than_2000_characters_is_accepted(self, world):
        """A 5,000-character body passes: email.send's schema allows 20,000.

        Regression: every params string over 2,000 characters was refused with a 422.
        """
        w, client = world
        body = ("Dear Alice,\n" + "Your itinerary details follow. " * 200)[:5000]
        mail = ("email.send", {"to": "alice@example.com", "subject": "Trip", "body": body})

        resp = await client.post(
            "/v1/plans", json=make_plan([mail], agent_id="bot"), headers=w.auth()
        )

        assert resp.status_code < 300, resp.text
        assert "plan.rejected" not in _events(w)
        (plan,) = w.proctor.plans()
        assert plan.steps[0].params["body"] == body

    async def test_a_body_over_the_schemas_max_length_is_422_naming_it(self, world):
        """Past the action's own ``maxLength`` (20,000), the schema refuses it naming the field."""
        w, client = world
        mail = ("email.send", {"to": "alice@example.com", "subject": "Trip", "body": "b" * 20_001})

        resp = await client.post(
            "/v1/plans", json=make_plan([mail], agent_id="bot"), headers=w.auth()
        )

        assert resp.status_code == 422, resp.text
        assert resp.json()["field"] == "steps[0].params.body"
        assert "maxLength" in resp.json()["message"]
        assert _events(w) == ["plan.rejected"]

    async def test_a_param_over_the_instance_cap_is_422_with_the_setting(self, world):
        """Past ``[limits] max_param_string`` (65,536) the error names the field and the setting."""
        w, client = world
        mail = ("email.send", {"to": "alice@example.com", "subject": "Trip", "body": "b" * 70_000})

        resp = await client.post(
            "/v1/plans", json=make_plan([mail], agent_id="bot"), headers=w.auth()
        )

        assert resp.status_code == 422, resp.text
        assert resp.json()["field"] == "steps[0].params.body"
        assert "65536" in resp.json()["message"]
        assert "[limits] max_param_string" in resp.json()["hint"]
        assert _events(w) == ["plan.rejected"]
        assert w.proctor.plans() == []

    @pytest.mark.parametrize("body", [b"[]", b'"plan"', b"42", b"null", b"true"])
    async def test_a_body_that_is_not_an_object_is_422(self, world, body):
        """JSON that is not an object is 422 (field plan)."""
        w, client = world

        resp = await client.post("/v1/plans", content=body, headers=w.auth())

        assert resp.status_code == 422
        assert resp.json()["field"] == "plan"

    @pytest.mark.parametrize(
        ("query", "field"),
        [
            ("limit=0", "limit"),
            ("limit=201", "limit"),
            ("limit=ten", "limit"),
            ("status=bogus", "status"),
            ("cursor=%%%", "cursor"),
            ("cursor=bm9waXBl", "cursor"),
            ("agent=has%20space", "agent"),
        ],
    )
    async def test_bad_list_queries_are_422(self, world, query, field):
        """Page sizes are bounded and filters validated."""
        w, client = world

        resp = await client.get(f"/v1/plans?{query}", headers=w.auth(w.root))

        assert resp.status_code == 422, resp.text
        assert resp.json()["field"] == field

    @pytest.mark.parametrize(
        ("path", "field"),
        [
            ("/v1/plans/x?wait=61", "wait"),
            ("/v1/plans/x?wait=-1", "wait"),
            ("/v1/audit/events?limit=1001", "limit"),
            ("/v1/audit/events?after=-2", "after"),
            ("/v1/audit/proofs/inclusion", "index"),
            ("/v1/audit/proofs/inclusion?index=999", "index"),
            ("/v1/audit/proofs/consistency?from=0&to=1", "from"),
            ("/v1/audit/proofs/consistency?from=1&to=999", "from"),
            ("/v1/plans/..bad..", "plan_id"),
        ],
    )
    async def test_bad_parameters_are_422(self, world, path, field):
        """Out-of-range numbers and malformed ids are 422 naming the parameter."""
        w, client = world
        w.proctor.submit(make_plan([SEARCH]))

        resp = await client.get(path, headers=w.auth(w.root))

        assert resp.status_code == 422, resp.text
        assert resp.json()["field"] == field

    async def test_unknown_body_fields_on_actions_are_422(self, world):
        """A misspelt field (otp_code) is refused, not ignored."""
        w, client = world
        plan_id = w.proctor.submit(make_plan([SEARCH])).plan_id

        resp = await client.post(
            f"/v1/plans/{plan_id}/approve", json={"otp_code": "123456"}, headers=w.auth(w.ann)
        )

        assert resp.status_code == 422
        assert resp.json()["field"] == "otp_code"


class TestNotFoundAndMethods:
    async def test_an_unknown_plan_is_404(self, world):
        """Reading or acting on a plan that does not exist is 404 not_found."""
        w, client = world

        get = await client.get("/v1/plans/nope", headers=w.auth())
        approve = await client.post("/v1/plans/nope/approve", headers=w.auth(w.ann))

        assert get.status_code == approve.status_code == 404
        assert get.json()["code"] == "not_found"
        assert get.json()["field"] == "plan_id"

    async def test_an_unknown_route_is_404_json(self, world):
        """An unknown path answers the JSON error shape."""
        _, client = world

        resp = await client.get("/v2/nothing")

        assert resp.status_code == 404
        assert resp.json()["code"] == "not_found"

    async def test_a_wrong_method_is_405(self, world):
        """DELETE on a plan is 405 with an Allow header."""
        w, client = world

        resp = await client.delete("/v1/plans/x", headers=w.auth())

        assert resp.status_code == 405
        assert resp.json()["code"] == "method_not_allowed"
        assert "GET" in resp.headers["allow"]

    async def test_no_checkpoint_yet_is_404(self, world):
        """An empty log has no checkpoint: 404."""
        w, client = world

        resp = await client.get("/v1/audit/checkpoint", headers=w.auth(w.root))

        assert resp.status_code == 404


class TestAuthentication:
    @pytest.mark.parametrize(
        "header",
        [None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer prt_unknown", "Bearer a.b.c", "bearer "],
    )
    async def test_missing_or_bad_credentials_are_401(self, world, header):
        """No token, another scheme or an unknown token: 401 unauthenticated."""
        _, client = world
        headers = {"Authorization": header} if header is not None else {}

        resp = await client.get("/v1/plans", headers=headers)

        assert resp.status_code == 401
        assert resp.json()["code"] == "unauthenticated"
        assert resp.headers["www-authenticate"].startswith("Bearer")

    async def test_twenty_failures_a_minute_then_429(self, world):
        """From one address, the 21st attempt after 20 failures is 429 even with a good token."""
        w, client = world
        bad = {"Authorization": "Bearer prt_guess"}

        failures = [await client.get("/v1/plans", headers=bad) for _ in range(20)]
        limited = await client.get("/v1/plans", headers=w.auth())

        assert {r.status_code for r in failures} == {401}
        assert limited.status_code == 429
        assert limited.json()["code"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 60

    async def test_the_limit_is_per_address(self, world):
        """Another client address is not limited by the first one's failures."""
        w, _ = world
        bad = {"Authorization": "Bearer prt_guess"}
        one = httpx.ASGITransport(app=w.app, client=("10.0.0.1", 1000))
        two = httpx.ASGITransport(app=w.app, client=("10.0.0.2", 1000))

        async with (
            httpx.AsyncClient(transport=one, base_url="http://p") as c1,
            httpx.AsyncClient(transport=two, base_url="http://p") as c2,
        ):
            for _ in range(20):
                await c1.get("/v1/plans", headers=bad)
            blocked = await c1.get("/v1/plans", headers=w.auth())
            other = await c2.get("/v1/plans", headers=w.auth())

        assert blocked.status_code == 429
        assert other.status_code == 200

    async def test_health_needs_no_token(self, world):
        """healthz, readyz and the OpenAPI document are public."""
        _, client = world

        codes = [
            (await client.get(p)).status_code for p in ("/healthz", "/readyz", "/openapi.json")
        ]

        assert codes == [200, 200, 200]


class TestReadiness:
    async def test_no_policy_is_503(self):
        """Without a policy the service is not ready: 503 config_error."""
        proctor = Proctor.in_memory(policy=None, clock=FrozenClock())
        transport = httpx.ASGITransport(app=create_app(proctor))

        async with httpx.AsyncClient(transport=transport, base_url="http://p") as client:
            resp = await client.get("/readyz")

        assert resp.status_code == 503
        assert resp.json()["code"] == "config_error"


GARBAGE: list[Any] = [
    {"actor": None},
    {"actor": {"agent_id": "bot"}, "steps": None},
    {"actor": {"agent_id": "bot", "name": 1}, "steps": [None]},
    {"actor": {"agent_id": "bot", "name": "b", "model_version": "m"}, "steps": [{"action": 5}]},
    {"actor": {"agent_id": ["bot"]}},
    {"actor": {"agent_id": "bot"}, "plan_id": {"x": 1}},
    {"actor": {"agent_id": "bot"}, "signature": "nope"},
    {"steps": [{"params": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}}]},
    {"plan_id": None, "intent": 1e308, "on_behalf_of": -1},
    {"\u0000": "\ud7ff", "actor": {"agent_id": "bot"}, "intent": "\u0000"},
    make_plan([("travel.search", {"destination": 12345678901234567890123, "date": 1.5})]),
]


@pytest.mark.parametrize("body", GARBAGE)
async def test_garbage_never_gets_a_5xx(world, body):
    """Odd but well-formed JSON gets a 4xx with the error shape, never a 5xx."""
    w, client = world

    resp = await client.post("/v1/plans", json=body, headers=w.auth())

    assert 400 <= resp.status_code < 500, resp.text
    assert {"code", "message", "field"} <= set(resp.json())
