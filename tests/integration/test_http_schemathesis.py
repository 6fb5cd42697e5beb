"""Property-based API tests (schemathesis) against /openapi.json of a real running server.

Every operation is called with generated input (bounded: 25 examples per operation) by a
principal holding every role; no response may be a 5xx, and every response must be one the
OpenAPI document declares, with the declared content type and schema.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from proctor import Proctor
from proctor.app.tokens import TokenService
from proctor.http import HttpSettings, create_app
from proctor.testing import make_plan

pytestmark = [pytest.mark.server, pytest.mark.slow]

SEARCH = ("travel.search", {"destination": "Lisbon", "date": "2027-03-12"})


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, str]]:
    """A uvicorn server on 127.0.0.1 (free port) and an admin token holding every role."""
    proctor = Proctor.in_memory()
    token = TokenService(proctor.gateway.store, proctor.gateway.clock).create(
        name="admin",
        roles=["agent", "user", "approver", "auditor", "admin"],
        groups=["finance", "hr", "sre"],
    )
    proctor.submit(make_plan([SEARCH], agent_id="bot"))  # a log with events and a checkpoint
    app = create_app(
        proctor, settings=HttpSettings(max_wait_seconds=0.2, auth_failures_per_minute=10_000)
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", token.token
    finally:
        server.should_exit = True
        thread.join(10)
        proctor.close()


@pytest.fixture(scope="module")
def api_schema(server):
    url, _ = server
    return schemathesis.openapi.from_url(f"{url}/openapi.json")


def _operations() -> list[tuple[str, str, GenerationMode]]:
    # Read from an app built here; the test then loads the *served* document and fails if
    # an operation is missing from it. (schemathesis.pytest.from_fixture does not run on
    # pytest 9, so the operations are parametrized by hand.) An operation without any
    # input has no invalid input to generate: positive mode only.
    doc = create_app(Proctor.in_memory(policy=None)).openapi()
    out = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            modes = [GenerationMode.POSITIVE]
            if op.get("parameters") or op.get("requestBody"):
                modes.append(GenerationMode.NEGATIVE)
            out += [(method.upper(), path, mode) for mode in modes]
    return out


@pytest.mark.parametrize(("method", "path", "mode"), _operations())
def test_api(api_schema, server, method, path, mode):
    """Generated requests never get a 5xx, and responses match the OpenAPI document."""
    url, token = server
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=True,
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(
            base_url=url,
            headers={"Authorization": f"Bearer {token}"},
            checks=[
                not_a_server_error,
                status_code_conformance,
                content_type_conformance,
                response_schema_conformance,
            ],
            timeout=30,
        )

    run()
