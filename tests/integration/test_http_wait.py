"""Waiting over HTTP against a real uvicorn server: long-poll and the SSE event stream."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from proctor import Proctor
from proctor.app.tokens import TokenService
from proctor.http import HttpSettings, create_app
from proctor.testing import FrozenClock, live_server, make_plan

pytestmark = pytest.mark.server

BIG_PO = (
    "procurement.create_po",
    {"supplier": "acme", "item": "servers", "quantity": 10, "amount": 250_000},
)
SEARCH = ("travel.search", {"destination": "Lisbon", "date": "2027-03-12"})


class World:
    def __init__(self, **settings: Any) -> None:
        clock = FrozenClock()
        self.proctor = Proctor.in_memory(clock=clock)
        token = TokenService(self.proctor.gateway.store, clock).create(
            name="aud", roles=["auditor"]
        )
        self.headers = {"Authorization": f"Bearer {token.token}"}
        self.app = create_app(self.proctor, settings=HttpSettings(**settings))

    def waiting(self) -> str:
        return self.proctor.submit(make_plan([BIG_PO])).plan_id

    def approve_later(self, plan_id: str, delay: float) -> threading.Thread:
        def run() -> None:
            time.sleep(delay)
            self.proctor.approve(plan_id, "ann", roles=["finance"], comment="go")

        t = threading.Thread(target=run)
        t.start()
        return t


@pytest.fixture
def world() -> Iterator[tuple[World, str]]:
    w = World(stream_keepalive_seconds=0.2)
    with live_server(w.app) as url:
        yield w, url


def _sse(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """Parse SSE lines into events (comments come back as {"comment": ...})."""
    event: dict[str, str] = {}
    for line in lines:
        if line == "":
            if event:
                yield event
            event = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(": ")
            event[name] = value


class TestLongPoll:
    def test_returns_when_the_status_changes(self, world):
        """A waiting plan's long-poll returns as soon as an approval runs it."""
        w, url = world
        plan_id = w.waiting()
        approver = w.approve_later(plan_id, 0.3)

        t0 = time.monotonic()
        resp = httpx.get(f"{url}/v1/plans/{plan_id}?wait=20", headers=w.headers, timeout=30)
        elapsed = time.monotonic() - t0
        approver.join()

        assert resp.status_code == 200
        assert resp.json()["status"] != "awaiting_approval"
        assert 0.25 <= elapsed < 5

    def test_times_out_with_the_unchanged_plan(self, world):
        """Without a change the long-poll answers 200 after ``wait`` seconds."""
        w, url = world
        plan_id = w.waiting()

        t0 = time.monotonic()
        resp = httpx.get(f"{url}/v1/plans/{plan_id}?wait=0.5", headers=w.headers, timeout=30)
        elapsed = time.monotonic() - t0

        assert resp.status_code == 200
        assert resp.json()["status"] == "awaiting_approval"
        assert 0.45 <= elapsed < 3

    def test_a_terminal_plan_answers_at_once(self, world):
        """A finished plan does not make the client wait."""
        w, url = world
        plan_id = w.proctor.submit(make_plan([SEARCH])).plan_id

        t0 = time.monotonic()
        resp = httpx.get(f"{url}/v1/plans/{plan_id}?wait=30", headers=w.headers, timeout=30)

        assert resp.json()["status"] == "succeeded"
        assert time.monotonic() - t0 < 2


class TestEventStream:
    def test_streams_until_the_plan_is_terminal(self, world):
        """Every audit event of the plan arrives in order, live, then the stream closes."""
        w, url = world
        plan_id = w.waiting()
        approver = w.approve_later(plan_id, 0.5)

        with httpx.stream(
            "GET", f"{url}/v1/plans/{plan_id}/events", headers=w.headers, timeout=30
        ) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            events = [e for e in _sse(resp.iter_lines()) if "comment" not in e]
        approver.join()

        types = [e["event"] for e in events]
        assert types[:3] == ["plan.submitted", "policy.decided", "plan.routed"]
        assert "approval.granted" in types
        assert types[-1] == "plan.finished"
        stored = w.proctor.events(plan_id=plan_id)
        assert [int(e["id"]) for e in events] == [r.seq for r in stored]
        for e, row in zip(events, stored, strict=True):
            assert e["data"].encode() == row.body  # exactly the signed bytes
            body = json.loads(e["data"])
            assert body["plan_id"] == plan_id and body["signature"]

    def test_resumes_after_last_event_id(self, world):
        """With Last-Event-ID the stream starts after that seq (a finished plan then closes)."""
        w, url = world
        plan_id = w.proctor.submit(make_plan([SEARCH])).plan_id
        stored = w.proctor.events(plan_id=plan_id)

        with httpx.stream(
            "GET",
            f"{url}/v1/plans/{plan_id}/events",
            headers=w.headers | {"Last-Event-ID": str(stored[1].seq)},
            timeout=30,
        ) as resp:
            events = [e for e in _sse(resp.iter_lines()) if "comment" not in e]

        assert [int(e["id"]) for e in events] == [r.seq for r in stored[2:]]

    def test_is_bounded_in_time_with_keepalives(self):
        """A plan that never finishes: keep-alive comments, then the stream ends at its bound."""
        w = World(stream_max_seconds=0.8, stream_keepalive_seconds=0.2)
        plan_id = w.waiting()

        with live_server(w.app) as url:
            t0 = time.monotonic()
            with httpx.stream(
                "GET", f"{url}/v1/plans/{plan_id}/events", headers=w.headers, timeout=30
            ) as resp:
                items = list(_sse(resp.iter_lines()))
            elapsed = time.monotonic() - t0

        assert 0.7 <= elapsed < 5
        assert [e["event"] for e in items if "event" in e] == [
            "plan.submitted",
            "policy.decided",
            "plan.routed",
        ]
        assert {"comment": "keep-alive"} in items

    def test_needs_the_right_to_read_the_plan(self, world):
        """The stream is authorized like GET plan: another agent gets 403, no token 401."""
        w, url = world
        plan_id = w.waiting()
        other = TokenService(w.proctor.gateway.store, w.proctor.gateway.clock).create(
            name="bot2", roles=["agent"]
        )

        forbidden = httpx.get(
            f"{url}/v1/plans/{plan_id}/events",
            headers={"Authorization": f"Bearer {other.token}"},
        )
        anonymous = httpx.get(f"{url}/v1/plans/{plan_id}/events")

        assert forbidden.status_code == 404  # as for a plan that does not exist
        assert anonymous.status_code == 401
