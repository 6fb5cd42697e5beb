"""``SubmitRoute``: ``POST /v1/plans`` served as plain ASGI keeps the declared route's contract.

Under a ``root_path`` the request goes on to FastAPI's declared route, so the same requests
can be sent both ways and their answers compared.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import orjson
import pytest

from proctor import Proctor
from proctor.app.tokens import TokenService
from proctor.errors import ConfigError
from proctor.http import HttpSettings, create_app
from proctor.testing import FrozenClock

pytestmark = pytest.mark.anyio

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}


class World:
    def __init__(self, **settings: Any) -> None:
        clock = FrozenClock()
        self.proctor = Proctor.in_memory(clock=clock)
        self.threads: list[str] = []
        self.gate = threading.Event()

        @self.proctor.action(
            "test.noop",
            category="general",
            baselines=LOW,
            idempotent=True,
            params={"type": "object", "properties": {"n": {"type": "integer"}}},
        )
        def noop(params: Any, call: Any) -> None:
            self.threads.append(threading.current_thread().name)

        @self.proctor.action(
            "test.slow",
            category="general",
            baselines=LOW,
            idempotent=True,
            params={"type": "object", "properties": {"n": {"type": "integer"}}},
        )
        def slow(params: Any, call: Any) -> None:
            assert self.gate.wait(10)

        tokens = TokenService(self.proctor.gateway.store, clock)
        self.bot = tokens.create(name="bot", roles=["agent"]).token
        self.ann = tokens.create(name="ann", roles=["approver"], groups=["finance"]).token
        self.app = create_app(self.proctor, settings=HttpSettings(**settings))

    def manifest(self, n: int = 1, **extra: Any) -> dict[str, Any]:
        return {
            "actor": {"type": "agent", "name": "bot", "model_version": "m-1", "agent_id": "bot"},
            "on_behalf_of": "alice",
            "intent": f"noop {n}",
            "steps": [{"id": "s1", "action": "test.noop", "params": {"n": n}}],
            **extra,
        }


@pytest.fixture
async def world() -> AsyncIterator[tuple[World, httpx.AsyncClient, httpx.AsyncClient]]:
    w = World()
    direct = httpx.AsyncClient(transport=httpx.ASGITransport(app=w.app), base_url="http://p")
    # Under a root path SubmitRoute steps aside: FastAPI's declared route answers.
    declared = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=w.app, root_path="/r"), base_url="http://p/r"
    )
    async with direct, declared:
        yield w, direct, declared


def _comparable(resp: httpx.Response) -> tuple[int, Any, dict[str, str]]:
    body = resp.json()
    if resp.status_code < 300:
        body = {"status": body["status"], "steps": len(body["steps"])}
    headers = {
        k: v
        for k, v in resp.headers.items()
        if k in ("content-type", "www-authenticate", "retry-after")
    }
    return resp.status_code, body, headers


class TestSubmitRoute:
    async def test_a_submission_runs_on_the_submit_pool(self, world):
        """A plan submitted over HTTP executes on a ``proctor-submit`` lane's thread."""
        w, direct, _ = world

        resp = await direct.post(
            "/v1/plans", json=w.manifest(), headers={"Authorization": f"Bearer {w.bot}"}
        )

        assert resp.status_code == 201
        assert resp.json()["status"] == "succeeded"
        assert resp.headers["location"] == f"/v1/plans/{resp.json()['plan_id']}"
        assert [t.startswith("proctor-submit") for t in w.threads] == [True]

    @pytest.mark.parametrize("via", ["direct", "declared"])
    @pytest.mark.parametrize(
        ("text", "field"),
        [
            # orjson read 10**29 as a float, and the plan ran with n = 1e29
            ('{"n": 100000000000000000000000000000}', "steps[0].params.n"),
            ('{"n": 9007199254740993}', "steps[0].params.n"),  # exact, then unsafe
            ('{"n": 1, "note": "Lis\\ud800bon"}', "steps[0].params.note"),  # orjson: 400
        ],
    )
    async def test_exact_numbers_and_lone_surrogates_are_refused_naming_the_field(
        self, world, via, text, field
    ):
        """The body is read as sent: a huge integer or a lone surrogate reaches validation,
        which refuses it naming the field (422); nothing runs; the rejection is audited."""
        w, direct, declared = world
        client = direct if via == "direct" else declared
        manifest = orjson.dumps(w.manifest()).decode().replace('{"n":1}', text)
        assert text in manifest
        resp = await client.post(
            "/v1/plans",
            content=manifest,
            headers={"Authorization": f"Bearer {w.bot}", "Content-Type": "application/json"},
        )
        assert resp.status_code == 422, resp.text
        assert resp.json()["field"] == field
        assert w.threads == []
        assert [e.type for e in w.proctor.events()] == ["plan.rejected"]

    @pytest.mark.parametrize("via", ["direct", "declared"])
    async def test_an_on_behalf_of_outside_ascii_is_a_422_saying_ascii(self, world, via):
        """``josé`` as on_behalf_of: 422 on the field, the message says the name is ASCII
        and the hint names the login or e-mail address; nothing runs."""
        w, direct, declared = world
        client = direct if via == "direct" else declared

        resp = await client.post(
            "/v1/plans",
            json=w.manifest(on_behalf_of="jos\u00e9"),
            headers={"Authorization": f"Bearer {w.bot}"},
        )

        assert resp.status_code == 422, resp.text
        assert resp.json()["field"] == "on_behalf_of"
        assert "ASCII" in resp.json()["message"]
        assert "e-mail address" in resp.json()["hint"]
        assert w.threads == []

    @pytest.mark.parametrize("via", ["direct", "declared"])
    async def test_an_integer_too_long_to_read_is_a_422_naming_the_field(self, world, via):
        """5000 digits, past Python's 4300-digit conversion limit: not "not valid JSON" (400)
        but a 422 on the field, without quoting the number; nothing runs or is recorded."""
        w, direct, declared = world
        client = direct if via == "direct" else declared
        manifest = (
            orjson.dumps(w.manifest()).decode().replace('{"n":1}', '{"n": -%s}' % ("9" * 5000))
        )
        resp = await client.post(
            "/v1/plans",
            content=manifest,
            headers={"Authorization": f"Bearer {w.bot}", "Content-Type": "application/json"},
        )

        assert resp.status_code == 422, resp.text
        assert resp.json()["field"] == "steps[0].params.n"
        assert "5000 digits" in resp.json()["message"]
        assert "9999" not in resp.text
        assert w.threads == []
        assert w.proctor.events() == []

    async def test_nan_is_still_not_json(self, world):
        w, direct, _ = world
        manifest = orjson.dumps(w.manifest()).decode().replace('{"n":1}', '{"n": NaN}')
        resp = await direct.post(
            "/v1/plans",
            content=manifest,
            headers={"Authorization": f"Bearer {w.bot}", "Content-Type": "application/json"},
        )
        assert resp.status_code == 400 and resp.json()["field"] == "body"

    @pytest.mark.parametrize("root_path", ["", "/r"])
    async def test_a_bug_is_a_json_500_both_ways(self, world, monkeypatch, root_path):
        """An exception that is no ProctorError (a bug) answers the JSON error shape, code
        ``internal_error``, without its text; it is not a plain-text 500."""
        w, _, _ = world

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("secret detail of a bug")

        monkeypatch.setattr(w.proctor.gateway, "submit_created", broken)
        # ServerErrorMiddleware re-raises after answering (for the server's log): take the
        # answer the client got.
        transport = httpx.ASGITransport(app=w.app, root_path=root_path, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://p{root_path}") as c:
            resp = await c.post(
                "/v1/plans", json=w.manifest(), headers={"Authorization": f"Bearer {w.bot}"}
            )

        assert resp.status_code == 500
        assert resp.headers["content-type"] == "application/json"
        assert resp.json() == {
            "code": "internal_error",
            "message": "internal server error",
            "field": None,
        }

    @pytest.mark.parametrize(
        ("case", "headers", "body"),
        [
            ("no credentials", {"Authorization": ""}, None),
            ("another scheme", {"Authorization": "Basic Ym90Og=="}, None),
            ("a scheme alone", {"Authorization": "Bearer"}, None),
            ("an unknown token", {"Authorization": "Bearer prt_nope"}, None),
            ("not an agent", {"Authorization": "ANN"}, None),
            ("a bad idempotency key", {"Idempotency-Key": "a b"}, None),
            ("a long idempotency key", {"Idempotency-Key": "k" * 256}, None),
            ("a long traceparent", {"traceparent": "t" * 129}, None),
            ("a bad key, no credentials", {"Authorization": "", "Idempotency-Key": "a b"}, None),
            ("malformed JSON", {}, b"{"),
            ("an integer too long to read", {}, b'{"intent": ' + b"1" * 4301 + b"}"),
            ("an empty body", {}, b""),
            ("not an object", {}, b"[1]"),
            ("another agent", {}, "other-agent"),
            ("an unknown action", {}, "unknown-action"),
        ],
    )
    async def test_answers_as_the_declared_route(self, world, case, headers, body):
        """Each bad request gets the same status, error body and headers both ways."""
        w, direct, declared = world
        h = {"Authorization": f"Bearer {w.bot}", "Content-Type": "application/json", **headers}
        if h["Authorization"] == "ANN":
            h["Authorization"] = f"Bearer {w.ann}"
        if not h["Authorization"]:
            del h["Authorization"]
        m = w.manifest()
        if body == "other-agent":
            m["actor"]["agent_id"] = "mallory"
        elif body == "unknown-action":
            m["steps"][0]["action"] = "no.such"
        content = orjson.dumps(m) if body is None or isinstance(body, str) else body

        fast = await direct.post("/v1/plans", content=content, headers=h)
        slow = await declared.post("/v1/plans", content=content, headers=h)

        assert _comparable(fast) == _comparable(slow), case
        assert 400 <= fast.status_code < 500

    async def test_a_replay_answers_200_both_ways(self, world):
        """The same Idempotency-Key and manifest: 201, then the original plan with 200."""
        w, direct, declared = world
        h = {"Authorization": f"Bearer {w.bot}", "Idempotency-Key": "k-1"}

        first = await direct.post("/v1/plans", json=w.manifest(), headers=h)
        again = await direct.post("/v1/plans", json=w.manifest(), headers=h)
        declared_again = await declared.post("/v1/plans", json=w.manifest(), headers=h)
        other = await direct.post("/v1/plans", json=w.manifest(2), headers=h)

        assert (first.status_code, again.status_code, declared_again.status_code) == (201, 200, 200)
        assert first.json()["plan_id"] == again.json()["plan_id"]
        assert again.json()["plan_id"] == declared_again.json()["plan_id"]
        assert other.status_code == 409
        assert len(w.threads) == 1

    async def test_a_slow_tool_does_not_hold_up_other_plans(self, world):
        """While one plan waits in a slow tool, another plan is submitted and runs."""
        w, direct, _ = world
        h = {"Authorization": f"Bearer {w.bot}"}
        slow_plan = w.manifest()
        slow_plan["steps"][0]["action"] = "test.slow"

        async with anyio.create_task_group() as tg:
            results: dict[str, httpx.Response] = {}

            async def send_slow() -> None:
                results["slow"] = await direct.post("/v1/plans", json=slow_plan, headers=h)

            tg.start_soon(send_slow)
            with anyio.fail_after(5):
                quick = await direct.post("/v1/plans", json=w.manifest(), headers=h)
            stuck = "slow" not in results
            w.gate.set()

        assert quick.status_code == 201
        assert quick.json()["status"] == "succeeded"
        assert stuck
        assert results["slow"].json()["status"] == "succeeded"

    async def test_other_routes_pass_through(self, world):
        """Other methods and paths reach FastAPI: a list, a 405, a 404 and a redirect."""
        w, direct, _ = world
        h = {"Authorization": f"Bearer {w.bot}"}

        listed = await direct.get("/v1/plans", headers=h)
        put = await direct.put("/v1/plans", json=w.manifest(), headers=h)
        missing = await direct.post("/v1/plans/x/nothing", json={}, headers=h)
        slash = await direct.post("/v1/plans/", json=w.manifest(), headers=h)

        assert listed.status_code == 200
        assert put.status_code == 405
        assert put.json()["code"] == "method_not_allowed"
        assert missing.status_code == 404
        assert slash.status_code == 307
        assert w.threads == []


class TestSubmitSettings:
    def test_at_least_one(self):
        """A submit pool without threads is a configuration error."""
        with pytest.raises(ConfigError) as exc:
            HttpSettings(submit_threads=0)

        assert exc.value.field == "submit_threads"

    def test_the_stall_is_positive(self):
        """A submission cannot be stuck after zero seconds."""
        with pytest.raises(ConfigError) as exc:
            HttpSettings(submit_stall_seconds=0)

        assert exc.value.field == "submit_stall_seconds"

    def test_the_lanes_follow_the_settings(self):
        """``submit_threads`` caps the lanes; closing the context stops them."""
        w = World(submit_threads=2, submit_stall_seconds=0.5)
        ctx = w.app.state.context

        assert (ctx.submit_lanes.max_lanes, ctx.submit_lanes.stall) == (2, 0.5)
        ctx.close()
        with pytest.raises(RuntimeError):
            ctx.submit_lanes.submit(print)
