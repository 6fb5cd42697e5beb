"""Fixtures for the framework integrations: a real Proctor with a real Rego policy, and a
real HTTP server (uvicorn on 127.0.0.1, in a thread) in front of it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn

from proctor import Proctor
from proctor.app.tokens import TokenService
from proctor.client import ProctorClient
from proctor.http import create_app
from proctor.policy import RegoPolicyEngine

POLICY = Path(__file__).parent / "assets" / "refunds"

REFUND_SCHEMA = {
    "type": "object",
    "properties": {"amount": {"type": "integer"}, "customer": {"type": "string"}},
    "required": ["amount", "customer"],
    "additionalProperties": False,
}


@pytest.fixture
def proctor() -> Iterator[Proctor]:
    """An in-memory Proctor deciding with ``assets/refunds/policy.rego``."""
    p = Proctor.in_memory(policy=RegoPolicyEngine.from_directory(POLICY))
    yield p
    p.close()


@contextmanager
def serving(proctor: Proctor, *, agent: str = "bot") -> Iterator[ProctorClient]:
    """Serve ``proctor`` over HTTP on 127.0.0.1; yield a client holding an agent token."""
    tokens = TokenService(proctor.gateway.store, proctor.gateway.clock)
    token = tokens.create(name=agent, roles=["agent"]).token
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(proctor), log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        with ProctorClient(f"http://127.0.0.1:{port}", token) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def event_types(proctor: Proctor, plan_id: str) -> list[str]:
    """The audit event types of one plan, in order."""
    return [e.type for e in proctor.events(plan_id=plan_id)]


def assert_audited(proctor: Proctor, plan_id: str, *expected: str) -> None:
    """The plan's audit events include ``expected`` in this order (others may interleave)."""
    types = event_types(proctor, plan_id)
    it = iter(types)
    missing = [t for t in expected if t not in it]
    assert not missing, f"{plan_id}: {missing} not found in order in {types}"
