"""Plan and step ids over HTTP, against a real uvicorn server on 127.0.0.1.

What an agent can learn or take from another through ids: a tool idempotency key shared by
two plans, whether a plan it may not read exists, a plan id another agent's call will need,
and who the record says submitted a plan.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from proctor import Proctor
from proctor.app.tokens import TokenService
from proctor.http import HttpSettings, create_app
from proctor.testing import FrozenClock, make_plan

pytestmark = pytest.mark.server

SEARCH = ("travel.search", {"destination": "Lisbon", "date": "2027-03-12"})

ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "bot": (("agent",), ()),
    "bot2": (("agent",), ()),
    "alice": (("user",), ()),
    "bob": (("user",), ()),
    "ann": (("approver",), ("finance",)),
    "sam": (("approver",), ("sre",)),
    "aud": (("auditor",), ()),
    "root": (("admin",), ()),
}


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn stopped"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


class World:
    """One instance, a token per caller, and an HTTP client per caller."""

    def __init__(self, url: str, proctor: Proctor, tokens: dict[str, str]) -> None:
        self.url = url
        self.proctor = proctor
        self.tokens = tokens

    def call(self, who: str, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}", **kw.pop("headers", {})}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kw)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    clock = FrozenClock()
    proctor = Proctor.in_memory(clock=clock)
    service = TokenService(proctor.gateway.store, clock)
    tokens = {
        name: service.create(name=name, roles=roles, groups=groups).token
        for name, (roles, groups) in ROLES.items()
    }
    app = create_app(proctor, settings=HttpSettings(auth_failures_per_minute=1000))
    with live_server(app) as url:
        yield World(url, proctor, tokens)


class TestIdempotencyKeys:
    def test_a_step_id_that_would_share_another_plans_key_is_refused(self, world):
        """``order-h`` + ``42:s1`` would have the key of ``order-h:42`` + ``s1``: 422."""
        bad = make_plan([SEARCH], plan_id="order-h", agent_id="bot")
        bad["steps"][0]["id"] = "42:s1"
        good = make_plan([SEARCH], plan_id="order-h:42", agent_id="bot2")

        refused = world.call("bot", "POST", "/v1/plans", json=bad)
        made = world.call("bot2", "POST", "/v1/plans", json=good)

        assert refused.status_code == 422, refused.text
        assert refused.json()["field"] == "steps[0].id"
        assert refused.json()["hint"]
        assert made.status_code == 201, made.text
