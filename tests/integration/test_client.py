"""The HTTP clients: against the real app under uvicorn on 127.0.0.1, and on their own.

The end-to-end classes run ``proctor.http.app.create_app`` under a real uvicorn server in a
thread (free port, real sockets) and drive it with ``ProctorClient`` and
``AsyncProctorClient``. The rest (SSE parsing, error mapping, an unreachable server) needs
no server.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from proctor import Proctor
from proctor.client import (
    ApiError,
    AsyncProctorClient,
    ProctorClient,
    ServerSentEvent,
    error_from_response,
    parse_sse,
)
from proctor.core.catalog import Catalog
from proctor.errors import (
    ApprovalExpiredError,
    ConflictError,
    InvalidRequestError,
    InvalidTransitionError,
    NotFoundError,
    PermissionDeniedError,
    PlanIdReusedError,
    ProctorError,
    StorageError,
)
from proctor.testing import RecordingTool, free_port, make_plan

try:
    import uvicorn

    from proctor.http.app import create_app

    SERVER_MISSING = ""
except (ImportError, ProctorError) as exc:  # the server extra, or the app, is not there
    SERVER_MISSING = f"proctor.http.app.create_app is not available: {exc}"

needs_server = pytest.mark.skipif(bool(SERVER_MISSING), reason=SERVER_MISSING or "-")

LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}


# ---------------------------------------------------------------------- without a server


class TestSse:
    def test_empty_stream(self):
        """No lines, no events."""
        assert list(parse_sse([])) == []

    def test_events_ids_comments_and_multiline_data(self):
        """Fields are parsed per the event-stream rules; comments are skipped."""
        lines = [
            ": keep-alive",
            "",
            "id: 3",
            "event: plan.submitted",
            'data: {"a":',
            "data: 1}",
            "",
            "data:plain",
            "retry: 1500",
            "",
        ]

        events = list(parse_sse(lines))

        assert events == [
            ServerSentEvent(event="plan.submitted", data='{"a":\n1}', id="3"),
            ServerSentEvent(event="message", data="plain", id="3", retry=1500),
        ]
        assert events[0].json() == {"a": 1}

    def test_last_event_without_blank_line(self):
        """A stream cut after the data line still yields the event."""
        assert [e.data for e in parse_sse(["event: x", "data: 1"])] == ["1"]


class TestErrorMapping:
    @pytest.mark.parametrize(
        ("status", "code", "cls"),
        [
            (404, "not_found", NotFoundError),
            (403, "permission_denied", PermissionDeniedError),
            (409, "conflict", ConflictError),
            (409, "invalid_transition", InvalidTransitionError),
            (409, "plan_id_reused", PlanIdReusedError),
            (410, "approval_expired", ApprovalExpiredError),
            (422, "invalid_request", InvalidRequestError),
            (503, "storage_error", StorageError),
        ],
    )
    def test_code_picks_the_class(self, status, code, cls):
        """The error body's code selects the ProctorError subclass the server raised."""
        body = b'{"code": "%s", "message": "m", "field": "steps[0]", "hint": "h"}' % code.encode()

        exc = error_from_response(status, body)

        assert type(exc) is cls
        assert (exc.message, exc.field, exc.hint) == ("m", "steps[0]", "h")
        assert exc.details == {"status": status, "code": code}

    def test_unknown_code_is_an_api_error(self):
        """A code with no class in proctor.errors keeps its code in details."""
        exc = error_from_response(401, b'{"code": "unauthenticated", "message": "no token"}')

        assert isinstance(exc, ProctorError)
        assert exc.details["code"] == "unauthenticated" and exc.details["status"] == 401

    def test_non_json_error_mapped_by_status(self):
        """A proxy's HTML error page still becomes a ProctorError, by status."""
        exc = error_from_response(502, b"<html>Bad Gateway</html>")

        assert isinstance(exc, StorageError)
        assert "502" in exc.message and exc.hint is not None


class TestUnreachable:
    def test_sync_connection_refused(self):
        """Nobody listening: StorageError with a hint, not an httpx exception."""
        with (
            ProctorClient(f"http://127.0.0.1:{free_port()}", "t", timeout=2) as c,
            pytest.raises(StorageError) as ei,
        ):
            c.healthz()
        assert "proctor serve" in (ei.value.hint or "")
        assert ei.value.__cause__ is not None

    def test_async_connection_refused(self):
        """The async client maps a refused connection the same way."""

        async def go() -> None:
            async with AsyncProctorClient(f"http://127.0.0.1:{free_port()}", "t") as c:
                await c.healthz()

        with pytest.raises(StorageError):
            asyncio.run(go())

    @pytest.mark.parametrize("plan", [[1, 2], "a plan", None], ids=repr)
    def test_a_plan_that_is_not_an_object_is_refused_before_sending(self, plan):
        """submit([...]) raises InvalidRequestError (as the server would), not a TypeError.

        Nobody listens: a request would have raised StorageError instead.
        """
        with ProctorClient(f"http://127.0.0.1:{free_port()}", "t", timeout=2) as c:
            with pytest.raises(InvalidRequestError) as ei:
                c.submit(plan)

            async def go() -> None:
                async with AsyncProctorClient(c.base_url, "t") as ac:
                    await ac.submit(plan)

            with pytest.raises(InvalidRequestError):
                asyncio.run(go())
        assert (ei.value.message, ei.value.field) == ("plan must be an object", "plan")

    @pytest.mark.parametrize(
        ("value", "field"),
        [
            (decimal.Decimal("5000"), "steps[0].params.amount"),
            (2**64, "steps[0].params.amount"),
            (float("nan"), "steps[0].params.amount"),
            (datetime.date(2027, 3, 12), "steps[0].params.amount"),
            (
                {"when": datetime.datetime(2027, 3, 12, tzinfo=datetime.UTC)},
                "steps[0].params.amount.when",
            ),
        ],
        ids=["decimal", "2**64", "nan", "date", "nested-datetime"],
    )
    def test_a_param_json_cannot_carry_is_refused_before_sending(self, value, field):
        """A Decimal, a 2**64, a NaN or a date in params raises InvalidRequestError naming
        the field, as ``Proctor.submit`` does, from both clients, before anything is sent
        (nobody listens: a request would have raised StorageError).

        Regression: a bare TypeError for the first two; a date went as a string and the
        plan ran; a NaN went as null.
        """
        manifest = make_plan([("shop.order", {"amount": value})], agent_id="shop-bot")
        with pytest.raises(InvalidRequestError) as lib:
            Proctor.in_memory().submit(manifest)
        with ProctorClient(f"http://127.0.0.1:{free_port()}", "t", timeout=2) as c:
            with pytest.raises(InvalidRequestError) as ei:
                c.submit(manifest)

            async def go() -> None:
                async with AsyncProctorClient(c.base_url, "t") as ac:
                    await ac.submit(manifest)

            with pytest.raises(InvalidRequestError) as aei:
                asyncio.run(go())

        assert ei.value.field == aei.value.field == lib.value.field == field

    def test_sync_stream_connection_refused(self):
        """Opening an event stream to nobody raises StorageError too."""
        with (
            ProctorClient(f"http://127.0.0.1:{free_port()}", "t", timeout=2) as c,
            pytest.raises(StorageError),
        ):
            list(c.events("p-1"))


# ---------------------------------------------------------------------- the real server


class ScriptedPolicy:
    """Each step gets the outcome of its action; shop.pay needs one finance approval."""

    version = "sha256:scripted-client"

    def evaluate(self, input: Mapping[str, Any]) -> Any:
        steps = {}
        for s in input["steps"]:
            if s["action"] == "shop.pay":
                d = {"outcome": "approve", "approvals": 1, "approver_roles": ["finance"]}
            else:
                d = {"outcome": "execute", "undo_window": 600}
            steps[s["id"]] = {"reasons": [s["action"]], **d}
        return {"steps": steps, "plan": {"deny": [], "adjustments": []}}


@dataclass
class Server:
    url: str
    proctor: Proctor
    tokens: dict[str, str]

    def client(self, who: str, **kw: Any) -> ProctorClient:
        return ProctorClient(self.url, self.tokens[who], **kw)

    def aclient(self, who: str, **kw: Any) -> AsyncProctorClient:
        return AsyncProctorClient(self.url, self.tokens[who], **kw)


@pytest.fixture
def server() -> Iterator[Server]:
    from proctor.app.tokens import TokenService

    p = Proctor.in_memory(catalog=Catalog(), policy=ScriptedPolicy())
    for name in ("shop.order", "shop.pay"):
        p.action(
            name,
            category="general",
            baselines=LOW,
            reversible=True,
            compensate=RecordingTool(),
        )(RecordingTool())
    tokens = TokenService(p.gateway.store, p.gateway.clock)
    issued = {
        "agent": tokens.create(name="shop-bot", roles=["agent"]).token,
        "alice": tokens.create(name="alice", roles=["user"]).token,
        "bob": tokens.create(name="bob", roles=["approver"], groups=["finance"]).token,
        "carol": tokens.create(name="carol", roles=["approver"], groups=["hr"]).token,
        "auditor": tokens.create(name="audrey", roles=["auditor"]).token,
        "admin": tokens.create(name="root", roles=["admin"]).token,
    }
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(p), log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.started, "uvicorn did not start"
    try:
        yield Server(url=f"http://127.0.0.1:{port}", proctor=p, tokens=issued)
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()
        p.close()


def plan(*actions: str, **kw: Any) -> dict[str, Any]:
    return make_plan([(a, {}) for a in actions], agent_id="shop-bot", **kw)


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def _in_span() -> Any:
    """The calling code's span (an instrumented agent): its ids must reach the server."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    ctx = SpanContext(
        trace_id=int(TRACE, 16),
        span_id=int(SPAN, 16),
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.use_span(NonRecordingSpan(ctx))


def _trace_ids(p: Proctor, plan_id: str, kind: str) -> set[str | None]:
    import orjson

    bodies = [orjson.loads(e.body) for e in p.gateway.store.read_events(plan_id=plan_id)]
    return {b["trace_id"] for b in bodies if b["type"] == kind}


@needs_server
class TestSyncClient:
    def test_health(self, server):
        """healthz and readyz answer without a token."""
        with ProctorClient(server.url, None) as c:
            assert c.healthz() == {"status": "ok"}
            assert c.readyz() == {"status": "ready"}

    def test_submit_executes(self, server):
        """An execute plan comes back succeeded, as plan JSON."""
        with server.client("agent") as c:
            doc = c.submit(plan("shop.order"))

        assert doc["status"] == "succeeded" and doc["outcome"] == "execute"
        assert doc["agent_id"] == "shop-bot"

    def test_a_date_param_is_refused_and_nothing_is_submitted(self, server):
        """Against a real server: a ``date`` param is an InvalidRequestError naming the
        field; the server never sees the plan (it once arrived as a string and ran)."""
        manifest = make_plan(
            [("shop.order", {"on": datetime.date(2027, 3, 12)})],
            agent_id="shop-bot",
            plan_id="p-dated",
        )
        with server.client("agent") as c, pytest.raises(InvalidRequestError) as ei:
            c.submit(manifest)

        assert ei.value.field == "steps[0].params.on"
        assert server.proctor.gateway.store.get_plan("p-dated") is None
        assert server.proctor.events() == []

    def test_idempotency_key_replays(self, server):
        """The same Idempotency-Key and manifest return the original plan."""
        with server.client("agent") as c:
            first = c.submit(plan("shop.order"), idempotency_key="order-42")
            again = c.submit(plan("shop.order"), idempotency_key="order-42")

        assert again["plan_id"] == first["plan_id"]
        assert len(server.proctor.plans()) == 1

    def test_wait_then_approve(self, server):
        """get(wait=) returns as soon as an approval elsewhere changes the status."""
        with server.client("agent") as agent, server.client("bob") as bob:
            doc = agent.submit(plan("shop.pay"))
            assert doc["status"] == "awaiting_approval"
            timer = threading.Timer(
                0.3, bob.approve, args=(doc["plan_id"],), kwargs={"comment": "ok"}
            )
            started = time.monotonic()
            timer.start()
            try:
                waited = agent.get(doc["plan_id"], wait=20)
            finally:
                timer.join()
            elapsed = time.monotonic() - started

        assert waited["status"] == "succeeded"
        assert waited["approvals"][0]["principal"] == "bob"
        assert waited["approvals"][0]["comment"] == "ok"
        assert elapsed < 10

    def test_the_callers_trace_reaches_the_plan_and_the_approval(self, server):
        """In a span, the client sends its traceparent: the server's events carry its trace."""
        with server.client("agent") as agent, server.client("bob") as bob:
            with _in_span():
                doc = agent.submit(plan("shop.pay"))
            outside = agent.submit(plan("shop.order"))
            with _in_span():
                bob.approve(doc["plan_id"])

        assert _trace_ids(server.proctor, doc["plan_id"], "plan.submitted") == {TRACE}
        assert _trace_ids(server.proctor, doc["plan_id"], "approval.granted") == {TRACE}
        assert TRACE not in _trace_ids(server.proctor, outside["plan_id"], "plan.submitted")

    def test_wait_times_out_unchanged(self, server):
        """With nothing happening, get(wait=) returns the unchanged plan after the wait."""
        with server.client("agent") as c:
            doc = c.submit(plan("shop.pay"))
            same = c.get(doc["plan_id"], wait=0.5)

        assert same["status"] == "awaiting_approval"

    def test_reject_and_list(self, server):
        """An approver rejects; the plan list shows it with the right status."""
        with server.client("agent") as agent, server.client("bob") as bob:
            doc = agent.submit(plan("shop.pay"))
            rejected = bob.reject(doc["plan_id"], comment="too much")
            page = agent.list(status="rejected")

        assert rejected["status"] == "rejected"
        assert [x["plan_id"] for x in page["plans"]] == [doc["plan_id"]]
        assert page["next_cursor"] is None

    def test_iter_plans_pages(self, server):
        """iter_plans follows next_cursor across pages."""
        with server.client("agent") as c:
            ids = {c.submit(plan("shop.order"))["plan_id"] for _ in range(5)}
            seen = [x["plan_id"] for x in c.iter_plans(page_size=2)]

        assert set(seen) == ids and len(seen) == 5

    def test_undo_by_user(self, server):
        """The on-behalf-of user undoes a succeeded plan."""
        with server.client("agent") as agent, server.client("alice") as alice:
            doc = agent.submit(plan("shop.order", on_behalf_of="alice"))
            undone = alice.undo(doc["plan_id"], comment="changed my mind")

        assert undone["status"] == "undone"

    def test_errors_map_to_classes(self, server):
        """Error responses raise the ProctorError subclass of their code."""
        with server.client("agent") as agent, server.client("bob") as bob:
            with pytest.raises(NotFoundError):
                agent.get("p-nope")
            doc = agent.submit(plan("shop.pay"))
            with pytest.raises(PermissionDeniedError):
                agent.approve(doc["plan_id"])
            with server.client("carol") as carol, pytest.raises(NotFoundError):
                carol.approve(doc["plan_id"])  # not hr's: she may not read it
            bob.approve(doc["plan_id"])
            with pytest.raises(ConflictError) as ei:
                bob.approve(doc["plan_id"])
            assert ei.value.details["status"] == 409
            with pytest.raises(InvalidRequestError) as bad:
                agent.submit(make_plan([("rm.rf", {})], agent_id="shop-bot"))
            assert bad.value.field == "steps[0].action"
            agent.submit(plan("shop.order", plan_id="p-reused"))
            with pytest.raises(PlanIdReusedError):
                agent.submit(plan("shop.pay", plan_id="p-reused"))

    def test_bad_token(self, server):
        """A wrong token is a 401 error carrying the unauthenticated code."""
        with ProctorClient(server.url, "prt_wrong") as c, pytest.raises(ProctorError) as ei:
            c.list()

        assert ei.value.details == {"status": 401, "code": "unauthenticated"}

    def test_event_stream(self, server):
        """The SSE stream yields the plan's audit events and ends when the plan is terminal."""
        with server.client("agent") as c:
            doc = c.submit(plan("shop.order"))
            events = list(c.events(doc["plan_id"]))
            resumed = list(c.events(doc["plan_id"], after=int(events[1].id)))

        types = [e.event for e in events]
        assert types[0] == "plan.submitted" and types[-1] == "plan.finished"
        assert all(e.json()["plan_id"] == doc["plan_id"] for e in events)
        assert [e.id for e in resumed] == [e.id for e in events[2:]]

    def test_audit_routes(self, server):
        """Events, checkpoint, proofs and keys are readable by an auditor."""
        with server.client("agent") as agent:
            agent.submit(plan("shop.order"))
        server.proctor.checkpoint()
        with server.client("auditor") as c:
            page = c.audit_events(limit=3)
            note = c.checkpoint()
            size = server.proctor.latest_checkpoint().size
            inclusion = c.inclusion_proof(0, size)
            consistency = c.consistency_proof(1, size)
            keys = c.keys()

        assert len(page["events"]) == 3 and page["next_after"] == 2
        assert note.startswith(server.proctor.origin + "\n")
        assert inclusion["index"] == 0 and inclusion["tree_size"] == size
        assert consistency["from"] == 1 and consistency["to"] == size
        assert keys["origin"] == server.proctor.origin and keys["vkeys"]

    def test_dead_letters_admin_only(self, server):
        """Admins read the dead letters; an agent may not."""
        with server.client("admin") as admin, server.client("agent") as agent:
            assert admin.dead_letters() == {"deliveries": []}
            with pytest.raises(PermissionDeniedError):
                agent.dead_letters()


@needs_server
class TestAsyncClient:
    def test_submit_wait_approve(self, server):
        """The async client submits, long-polls and approves like the sync one."""

        async def go() -> tuple[dict[str, Any], dict[str, Any]]:
            async with server.aclient("agent") as agent, server.aclient("bob") as bob:
                doc = await agent.submit(plan("shop.pay"))

                async def approve_later() -> None:
                    await asyncio.sleep(0.3)
                    await bob.approve(doc["plan_id"], comment="fine")

                waited, _ = await asyncio.gather(
                    agent.get(doc["plan_id"], wait=20), approve_later()
                )
                # A long poll returns at the first change: the plan may be caught while its
                # step runs (status running); poll again until it settles.
                for _ in range(10):
                    if waited["status"] != "running":
                        break
                    waited = await agent.get(doc["plan_id"], wait=20)
                return doc, waited

        doc, waited = asyncio.run(go())

        assert doc["status"] == "awaiting_approval"
        assert waited["status"] == "succeeded"

    def test_the_callers_trace_reaches_the_plan(self, server):
        """The async client sends its traceparent too."""

        async def go() -> dict[str, Any]:
            async with server.aclient("agent") as agent:
                with _in_span():
                    return await agent.submit(plan("shop.order"))

        doc = asyncio.run(go())

        assert _trace_ids(server.proctor, doc["plan_id"], "plan.submitted") == {TRACE}

    def test_errors_and_stream(self, server):
        """Async errors map to the same classes; the async stream yields the events."""

        async def go() -> list[ServerSentEvent]:
            async with server.aclient("agent") as agent:
                with pytest.raises(NotFoundError):
                    await agent.get("p-nope")
                doc = await agent.submit(plan("shop.pay"))
                with pytest.raises(PermissionDeniedError):
                    await agent.approve(doc["plan_id"])
                done = await agent.submit(plan("shop.order"))
                return [e async for e in agent.events(done["plan_id"])]

        events = asyncio.run(go())

        assert events[0].event == "plan.submitted" and events[-1].event == "plan.finished"

    def test_health_and_audit(self, server):
        """The async twin covers health and the audit routes."""

        async def go() -> tuple[Any, ...]:
            async with AsyncProctorClient(server.url, None) as anon:
                health = await anon.healthz()
            async with server.aclient("agent") as agent:
                await agent.submit(plan("shop.order"))
            async with server.aclient("auditor") as c:
                return health, await c.audit_events(), await c.keys()

        health, page, keys = asyncio.run(go())

        assert health == {"status": "ok"}
        assert page["events"] and keys["vkeys"]


def test_api_error_is_a_proctor_error():
    """ApiError belongs to the ProctorError tree, so one except clause catches everything."""
    assert issubclass(ApiError, ProctorError)
