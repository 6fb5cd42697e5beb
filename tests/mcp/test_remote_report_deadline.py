"""A call handed to a remote MCP proxy has a report-by: past it, the plan needs attention.

Regression: "running" tells ``proctor mcp --server`` to make the call itself and report its
outcome; the plan holds no lease meanwhile and its start-by is cleared. A proxy that died (or
lost the network) after that answer and before its report left the plan running for ever.
Now every hand-over (a call routed to execute, a retry's, ``/start``) sets the plan's
``report_by`` to the call's timeout plus ``[execution] report_grace_seconds`` (60 s) from
then; the timer puts a plan still unreported then in ``needs_attention`` (its step
``unknown``, ``step.unknown`` saying why), a report after it is refused with 409, and a
person resolves the step.

The server is a real uvicorn on 127.0.0.1 in a thread, over SQLite and PostgreSQL, with a
frozen clock the test moves; the "proxy" is an HTTP client, the in-process
``RemoteMcpProxy``, or ``proctor mcp`` in a subprocess killed mid-call, each with the test
upstream over stdio.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.shared.memory import create_client_server_memory_streams

from proctor import Proctor
from proctor.app.tokens import TokenService
from proctor.core.assessment import Scores
from proctor.core.catalog import ActionSpec, Catalog
from proctor.core.lifecycle import PlanStatus, StepStatus
from proctor.http import create_app
from proctor.mcp import UpstreamConfig
from proctor.mcp.remote import RemoteMcpProxy
from proctor.testing import FrozenClock, live_server

pytestmark = [pytest.mark.slow, pytest.mark.server]

FLAKY = Path(__file__).parent / "servers" / "flaky.py"
TIMEOUT = timedelta(seconds=60)  # the default step timeout
GRACE = timedelta(seconds=60)  # the default report_grace
OK = {"step_id": "s1", "result": {"content": [{"type": "text", "text": "ok"}]}}
LOW = Scores(risk=1, auditability=1, ux=1, recovery=1, cost=1)


class Outcome:
    """A policy engine that gives every step one outcome (a fake, not a mock)."""

    version = "sha256:one-outcome-1"

    def __init__(self, outcome: str) -> None:
        self.outcome = outcome

    def evaluate(self, input: Mapping[str, Any]) -> Any:
        steps = {s["id"]: {"outcome": self.outcome} for s in input["steps"]}
        return {"steps": steps, "plan": {"deny": [], "adjustments": []}}


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path) -> str:
    if request.param == "postgres":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'proctor.db'}"


@dataclass
class World:
    proctor: Proctor
    clock: FrozenClock
    url: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def call(self, tool: str = "write_file", server: str = "fs") -> httpx.Response:
        """What a proxy sends for one ``tools/call``."""
        body = {
            "agent_id": "desk",
            "client": "test 1",
            "on_behalf_of": "alice",
            "server": server,
            "tool": {"name": tool, "inputSchema": {"type": "object"}},
            "arguments": {"path": "/tmp/x"},
        }
        return httpx.post(f"{self.url}/v1/mcp/calls", json=body, headers=self.headers)

    def post(self, path: str, body: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, headers=self.headers)

    def events(self, plan_id: str) -> list[dict[str, Any]]:
        """The plan's audit events as signed (``type``, ``data``, ...)."""
        rows = self.proctor.gateway.store.read_events(plan_id=plan_id)
        return [json.loads(r.body) for r in rows]


@contextmanager
def served(db: str, outcome: str, catalog: Catalog | None = None) -> Iterator[World]:
    clock = FrozenClock()
    proctor = Proctor.in_memory(
        catalog=catalog or Catalog(), policy=Outcome(outcome), clock=clock, database_url=db
    )
    token = TokenService(proctor.gateway.store, clock).create(name="desk", roles=("agent",))
    try:
        with live_server(create_app(proctor)) as url:
            yield World(proctor, clock, url, token.token)
    finally:
        proctor.close()


def test_a_call_whose_proxy_never_reports_needs_attention_at_its_report_by(db):
    """Routed to execute, answered running, never reported: needs_attention at the timeout
    plus the grace, ``step.unknown`` says why, a late report gets 409, a person resolves it."""
    with served(db, "execute") as w:
        handed = w.call()  # the proxy is told "running", then dies: it reports nothing
        plan_id = handed.json()["plan_id"]
        queued = w.proctor.get(plan_id)
        w.clock.advance(TIMEOUT + GRACE - timedelta(seconds=1))
        early = w.proctor.tick()
        w.clock.advance(timedelta(seconds=1))
        fired = w.proctor.tick()
        after = w.proctor.get(plan_id)
        events = w.events(plan_id)
        late = w.post(f"/v1/mcp/plans/{plan_id}/outcome", OK)
        unchanged = w.events(plan_id)
        resolved = w.proctor.resolve(plan_id, "s1", succeeded=True, principal="olga")

    assert handed.status_code == 201, handed.text
    assert handed.json()["status"] == "running" and handed.json()["timeout"] == 60.0
    assert queued.report_by == queued.created_at + TIMEOUT + GRACE
    assert early == []
    assert [p.plan_id for p in fired] == [plan_id]
    assert after.status is PlanStatus.NEEDS_ATTENTION, (after.status, after.error)
    assert after.steps[0].status is StepStatus.UNKNOWN
    assert after.report_by is None and after.lease_owner is None
    when = queued.report_by.isoformat()
    assert f"did not report the outcome of the call by {when}" in after.error
    last = events[-1]
    assert last["type"] == "step.unknown"
    assert last["data"]["report_by"] == when
    assert "did not report the outcome of the call" in last["data"]["reason"]
    assert "step.started" not in [e["type"] for e in events]
    assert late.status_code == 409, late.text
    assert late.json()["field"] == "plan_id"
    assert "needs attention" in late.json()["message"]
    assert f"proctor resolve {plan_id} s1" in late.json()["hint"]
    assert len(unchanged) == len(events)  # the late report recorded nothing
    assert resolved.status is PlanStatus.SUCCEEDED


@pytest.mark.parametrize("how", ["retry", "start"])
def test_a_handed_over_confirmed_call_gets_a_report_by_too(db, how):
    """Confirmed elsewhere, then handed over by the retry or ``/start``: off its start-by,
    onto a report-by from the hand-over; unreported, it needs attention then."""
    with served(db, "confirm") as w:
        plan_id = w.call().json()["plan_id"]
        w.proctor.confirm(plan_id, "alice")
        w.clock.advance(timedelta(minutes=10))
        if how == "retry":
            handed = w.call()
        else:
            handed = w.post(f"/v1/mcp/plans/{plan_id}/start", {"step_id": "s1"})
        now = w.clock.now()
        queued = w.proctor.get(plan_id)
        w.clock.advance(TIMEOUT + GRACE)
        fired = w.proctor.tick()

    assert handed.status_code == 200, handed.text
    assert handed.json()["status"] == "running"
    assert queued.start_by is None and queued.report_by == now + TIMEOUT + GRACE
    assert [p.status for p in fired] == [PlanStatus.NEEDS_ATTENTION]


def test_a_slow_report_within_the_timeout_is_recorded(db):
    """The upstream takes its whole timeout (an action's own: 10 minutes): recorded, and the
    plan's timer is gone with its report-by."""
    spec = ActionSpec(
        name="mcp.fs.write_file",
        summary="Write {path}",
        params_schema={"type": "object"},
        category="general",
        baselines=LOW,
        runner="mcp",
        timeout=600,
    )
    with served(db, "execute", Catalog([spec])) as w:
        handed = w.call()
        plan_id = handed.json()["plan_id"]
        w.clock.advance(timedelta(minutes=10))
        fired = w.proctor.tick()
        done = w.post(f"/v1/mcp/plans/{plan_id}/outcome", OK)
        w.clock.advance(timedelta(hours=1))
        later = w.proctor.tick()
        plan = w.proctor.get(plan_id)

    assert handed.json()["timeout"] == 600.0
    assert fired == [] and later == []
    assert done.status_code == 200, done.text
    assert plan.status is PlanStatus.SUCCEEDED and plan.report_by is None


def test_a_report_after_the_report_by_is_refused_before_the_timer_fires(db):
    """No tick yet: the report's own claim sees the report-by passed, puts the plan in
    needs_attention as the timer would, and answers 409; the outcome is not recorded."""
    with served(db, "execute") as w:
        plan_id = w.call().json()["plan_id"]
        w.clock.advance(TIMEOUT + GRACE)
        late = w.post(f"/v1/mcp/plans/{plan_id}/outcome", OK)
        plan = w.proctor.get(plan_id)
        types_ = [e["type"] for e in w.events(plan_id)]
        fired = w.proctor.tick()

    assert late.status_code == 409, late.text
    assert "did not report the outcome of the call" in late.json()["message"]
    assert plan.status is PlanStatus.NEEDS_ATTENTION
    assert types_[-1] == "step.unknown"
    assert "step.started" not in types_ and "step.succeeded" not in types_
    assert fired == []  # nothing left for the timer


def test_a_retry_of_a_handed_over_call_pushes_its_report_by_out(db):
    """A retry answered running again tells a proxy to make the call again: its report-by
    covers that call too (never brought nearer)."""
    with served(db, "execute") as w:
        plan_id = w.call().json()["plan_id"]
        first = w.proctor.get(plan_id).report_by
        w.clock.advance(timedelta(seconds=90))
        again = w.call()
        second = w.proctor.get(plan_id).report_by
        w.clock.advance(timedelta(seconds=60))  # past the first report-by, not the second
        fired = w.proctor.tick()
        done = w.post(f"/v1/mcp/plans/{plan_id}/outcome", OK)

    assert again.status_code == 200 and again.json()["plan_id"] == plan_id
    assert second == first + timedelta(seconds=90)
    assert fired == []
    assert done.status_code == 200 and done.json()["status"] == "succeeded", done.text


# --------------------------------------------------------------------- with a real proxy


class CutOff(RemoteMcpProxy):
    """A proxy whose connection to the server is gone for longer than the report-by while
    it makes its first call: the server's clock moves past it and its timer fires meanwhile.
    Its later calls are made and reported at once."""

    world: World
    fired: list[Any]

    async def _forward(self, server, tool, arguments, call, group=None):
        if not self.fired:
            self.world.clock.advance(TIMEOUT + GRACE + timedelta(seconds=1))
            self.fired.extend(self.world.proctor.tick())
        return await super()._forward(server, tool, arguments, call, group)


def text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def proxied(stack: AsyncExitStack, w: World) -> tuple[CutOff, ClientSession]:
    upstream = UpstreamConfig(name="flaky", command=sys.executable, args=(str(FLAKY),))
    proxy = CutOff(w.url, w.token, [upstream], agent_id="desk", on_behalf_of="alice")
    proxy.world, proxy.fired = w, []
    await proxy.connect(stack)
    server = proxy.server()
    client_streams, server_streams = await stack.enter_async_context(
        create_client_server_memory_streams()
    )
    tg = await stack.enter_async_context(anyio.create_task_group())
    stack.callback(tg.cancel_scope.cancel)
    tg.start_soon(
        lambda: server.run(
            server_streams[0], server_streams[1], server.create_initialization_options()
        )
    )
    session = await stack.enter_async_context(ClientSession(client_streams[0], client_streams[1]))
    await session.initialize()
    return proxy, session


def test_a_proxy_whose_report_comes_too_late_says_how_to_resolve_and_answers(db, caplog):
    """The report is refused (the plan needs attention); the proxy logs what the upstream
    answered and the resolve command, and its client still gets the upstream's result."""

    async def go(w: World) -> tuple[CutOff, types.CallToolResult, types.CallToolResult]:
        async with AsyncExitStack() as stack:
            proxy, session = await proxied(stack, w)
            result = await session.call_tool("ok", {})
            again = await session.call_tool("ok", {})
            return proxy, result, again

    with served(db, "execute") as w, caplog.at_level(logging.ERROR, logger="proctor.mcp"):
        proxy, result, again = anyio.run(go, w)
        plans = sorted(w.proctor.gateway.store.list_plans(), key=lambda p: p.plan_id)

    assert not result.is_error and text(result).startswith("fine"), text(result)
    first = plans[0]
    assert [p.plan_id for p in proxy.fired] == [first.plan_id]
    assert first.status is PlanStatus.NEEDS_ATTENTION
    said = caplog.text
    assert f"the outcome of {first.plan_id} was not recorded" in said
    assert "the upstream answered without an error" in said
    assert f"proctor resolve {first.plan_id} s1 --succeeded --server {w.url}" in said
    # The same call again is a new plan (the first waits for a person), run and recorded.
    assert len(plans) == 2 and plans[1].plan_id.endswith("-1")
    assert plans[1].status is PlanStatus.SUCCEEDED
    assert not again.is_error and text(again).startswith("fine"), text(again)


def test_a_call_that_failed_and_came_too_late_tells_the_client_it_needs_attention(db, caplog):
    """The upstream hung past its timeout (1 s, the action's) and the report came after the
    report-by: the client is told the plan needs attention and how it is resolved."""
    hang = ActionSpec(
        name="mcp.flaky.hang",
        summary="Hang",
        params_schema={"type": "object"},
        category="general",
        baselines=LOW,
        runner="mcp",
        timeout=1,
    )

    async def go(w: World) -> types.CallToolResult:
        async with AsyncExitStack() as stack:
            _proxy, session = await proxied(stack, w)
            return await session.call_tool("hang", {})

    with (
        served(db, "execute", Catalog([hang])) as w,
        caplog.at_level(logging.ERROR, logger="proctor.mcp"),
    ):
        result = anyio.run(go, w)
        (plan,) = w.proctor.gateway.store.list_plans()

    assert result.is_error
    said = text(result)
    assert said.startswith(f"needs attention ({plan.plan_id}): "), said
    assert "did not report the outcome of the call" in said
    assert f"proctor resolve {plan.plan_id} s1 --succeeded --server {w.url}" in said
    assert plan.status is PlanStatus.NEEDS_ATTENTION
    assert "the call ended in an error (TimeoutError" in caplog.text


def test_a_proxy_killed_mid_call_leaves_the_plan_needing_attention(db, tmp_path, proctor_exe):
    """``proctor mcp --server`` is killed (SIGKILL) while the upstream call hangs: it never
    reports; at the report-by the server's timer puts the plan in needs_attention."""
    config = tmp_path / "mcp.json"
    upstream = {"command": sys.executable, "args": [str(FLAKY)]}
    config.write_text(json.dumps({"mcpServers": {"flaky": upstream}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCTOR_")}
    with served(db, "execute") as w:
        argv = [proctor_exe, "mcp", "--config", str(config)]
        argv += ["--agent", "desk", "--user", "alice", "--server", w.url, "--token", w.token]
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
        )
        try:
            rpc(proc, 1, "initialize", INIT)
            send(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})
            send(proc, request(2, "tools/call", {"name": "hang", "arguments": {}}))
            plan = handed_over(w)
        finally:
            proc.kill()
            proc.wait(20)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        w.clock.advance(TIMEOUT + GRACE)
        fired = w.proctor.tick()
        after = w.proctor.get(plan.plan_id)
        last = w.events(plan.plan_id)[-1]

    assert [p.plan_id for p in fired] == [plan.plan_id]
    assert after.status is PlanStatus.NEEDS_ATTENTION, (after.status, after.error)
    assert last["type"] == "step.unknown"
    assert last["data"]["report_by"] == plan.report_by.isoformat()


INIT = {
    "protocolVersion": "2025-11-25",
    "capabilities": {},
    "clientInfo": {"name": "test", "version": "1"},
}


def request(rid: int, method: str, params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}


def send(proc: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(message).encode() + b"\n")
    proc.stdin.flush()


def rpc(proc: subprocess.Popen[bytes], rid: int, method: str, params: Any) -> Any:
    """Send a request over the proxy's stdio and read lines until its answer (60 s)."""
    send(proc, request(rid, method, params))
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if not ready:
            assert proc.poll() is None, "the proxy exited"
            continue
        message = json.loads(proc.stdout.readline())
        if message.get("id") == rid:
            return message
    raise AssertionError(f"no answer to {method}")


def handed_over(w: World) -> Any:
    """The call's plan once the server has handed it to the proxy (60 s at most)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        plans = w.proctor.gateway.store.list_plans()
        if plans and plans[0].report_by is not None:
            return plans[0]
        time.sleep(0.05)
    raise AssertionError("the call was not handed over")
