"""Plan and step ids over HTTP, against a real uvicorn server on 127.0.0.1.

What an agent can learn or take from another through ids: a tool idempotency key shared by
two plans, whether a plan it may not read exists, a plan id another agent's call will need,
and who the record says submitted a plan.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from proctor import Proctor
from proctor.app.tokens import TokenService
from proctor.http import HttpSettings, create_app
from proctor.http.routes_plans import idempotent_plan_id
from proctor.mcp.governance import call_key
from proctor.testing import FrozenClock, live_server, make_plan

pytestmark = pytest.mark.server

SEARCH = ("travel.search", {"destination": "Lisbon", "date": "2027-03-12"})
BIG_PO = (
    "procurement.create_po",
    {"supplier": "acme", "item": "servers", "quantity": 10, "amount": 250_000},
)

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


def _mcp_call(arguments: dict[str, Any], agent: str = "bot2") -> dict[str, Any]:
    tool = {"name": "read_file", "inputSchema": {"type": "object"}}
    return {
        "agent_id": agent,
        "client": "claude-ai/0.1",
        "on_behalf_of": "alice",
        "server": "fs",
        "tool": tool,
        "arguments": arguments,
    }


def _mcp_plan_id(arguments: dict[str, Any], agent: str = "bot2") -> str:
    """The id of an MCP call's first plan, as anyone can compute it."""
    key = call_key(agent, "claude-ai/0.1", "mcp.fs.read_file", arguments)
    return f"mcp-{key}-0"


PROBES = [
    ("bot", "GET", "/v1/plans/{}", None),
    ("bot", "GET", "/v1/plans/{}?wait=0.2", None),
    ("bot", "GET", "/v1/plans/{}/events", None),
    ("bot", "POST", "/v1/mcp/plans/{}/start", {"step_id": "s1"}),
    ("bot", "POST", "/v1/mcp/plans/{}/outcome", {"step_id": "s1", "result": {}}),
    ("bob", "POST", "/v1/plans/{}/complaints", {"reason": "probe"}),
    ("bob", "POST", "/v1/plans/{}/confirm", {"comment": "probe"}),
    ("bob", "POST", "/v1/plans/{}/reject", {"comment": "probe"}),
    ("bob", "POST", "/v1/plans/{}/undo", {"comment": "probe"}),
    ("sam", "POST", "/v1/plans/{}/approve", {"comment": "probe"}),
    ("sam", "POST", "/v1/plans/{}/reject", {"comment": "probe"}),
]
"""Who asks, and how, about a plan it may not read."""


class TestExistenceOracle:
    """A plan the caller may not read answers exactly as a plan that does not exist."""

    @pytest.mark.parametrize(("who", "method", "path", "body"), PROBES)
    def test_another_agents_mcp_call_cannot_be_probed(self, world, who, method, path, body):
        """The reviewer's probe: bot2's call of ``read_file`` on a diagnosis, and one it never
        made, asked about by another agent or user: the same 404, byte for byte."""
        made = {"path": f"/home/alice/{who}{method}{path}.pdf"}
        call = world.call("bot2", "POST", "/v1/mcp/calls", json=_mcp_call(made))
        assert call.status_code == 201, call.text
        real = call.json()["plan_id"]
        assert real == _mcp_plan_id(made)
        ghost = _mcp_plan_id({"path": f"/home/alice/other-{who}{method}{path}.pdf"})
        assert len(ghost) == len(real)

        seen = world.call(who, method, path.format(real), json=body)
        missing = world.call(who, method, path.format(ghost), json=body)

        assert seen.status_code == missing.status_code == 404, (seen.text, missing.text)
        assert seen.content == missing.content.replace(ghost.encode(), real.encode())
        assert seen.json()["code"] == "not_found" and seen.json()["field"] == "plan_id"
        # Its own agent and an auditor still see it.
        assert world.call("bot2", "GET", f"/v1/plans/{real}").status_code == 200
        assert world.call("aud", "GET", f"/v1/plans/{real}").status_code == 200


class TestSquatting:
    """No agent takes the id another agent's call or retry will need."""

    def test_another_agents_mcp_call_id_cannot_be_taken(self, world):
        """The reviewer's squat: bot submits its own waiting plan under bot2's next MCP call
        id; refused (422 ``plan_id``), and bot2's call then goes through."""
        arguments = {"path": "/srv/report.txt"}
        pid = _mcp_plan_id(arguments)
        squat = make_plan([BIG_PO], plan_id=pid, agent_id="bot")

        refused = world.call("bot", "POST", "/v1/plans", json=squat)
        call = world.call("bot2", "POST", "/v1/mcp/calls", json=_mcp_call(arguments))

        assert refused.status_code == 422, refused.text
        assert refused.json()["field"] == "plan_id" and refused.json()["hint"]
        assert call.status_code == 201, call.text
        assert call.json()["plan_id"] == pid
        assert world.proctor.get(pid).agent_id == "bot2"

    def test_another_agents_idempotency_key_id_cannot_be_taken(self, world):
        """``idem-`` ids too: bot2's retry with its key still finds its own plan."""
        pid = idempotent_plan_id("bot2", "order-42")
        squat = make_plan([BIG_PO], plan_id=pid, agent_id="bot")
        mine = make_plan([SEARCH], agent_id="bot2")
        headers = {"Idempotency-Key": "order-42"}

        refused = world.call("bot", "POST", "/v1/plans", json=squat)
        first = world.call("bot2", "POST", "/v1/plans", json=mine, headers=headers)
        retry = world.call("bot2", "POST", "/v1/plans", json=mine, headers=headers)
        own_id = world.call("bot2", "POST", "/v1/plans", json={**mine, "plan_id": pid})

        assert refused.status_code == 422 and refused.json()["field"] == "plan_id"
        assert (first.status_code, first.json()["plan_id"]) == (201, pid)
        assert (retry.status_code, retry.json()["plan_id"]) == (200, pid)
        # Only the server derives it: the owner sending it as its own id is refused too.
        assert own_id.status_code == 422 and own_id.json()["field"] == "plan_id"


def _events(world: World, type_: str) -> list[dict[str, Any]]:
    return [orjson.loads(e.body) for e in world.proctor.events(limit=100_000) if e.type == type_]


class TestWhoSubmitted:
    """The record names the authenticated principal, whatever the manifest's actor says."""

    def test_a_forged_actor_name_is_recorded_with_the_real_submitter(self, world):
        """The reviewer's case: bot sends bot2's plan id with actor ``{"name": "bot2"}`` and
        no ``agent_id``. The manifest is bot's (``agent_id`` filled in), the id is taken, and
        the signed ``plan.rejected`` says bot sent it."""
        mine = make_plan([SEARCH], plan_id="bot2-plan-1", agent_id="bot2")
        assert world.call("bot2", "POST", "/v1/plans", json=mine).status_code == 201
        forged = {
            "plan_id": "bot2-plan-1",
            "actor": {"type": "agent", "name": "bot2", "model_version": "m"},
            "on_behalf_of": "alice",
            "intent": "x",
            "steps": [{"id": "s1", "action": "travel.search", "params": {}}],
        }

        refused = world.call("bot", "POST", "/v1/plans", json=forged)

        assert refused.status_code == 409 and refused.json()["code"] == "plan_id_reused"
        event = _events(world, "plan.rejected")[-1]
        assert event["data"]["plan_id"] == "bot2-plan-1"
        assert event["data"]["principal"] == "bot"
        assert event["actor"]["agent_id"] == "bot"

    def test_an_accepted_plan_names_its_agent_whatever_its_actor_says(self, world):
        """``actor`` ``{"type": "human", "name": "alice"}`` from bot's token: the plan is bot's
        (``agent_id`` filled in) and ``plan.submitted`` records ``principal: bot``."""
        plan = make_plan([SEARCH], plan_id="bot-says-human-1")
        plan["actor"] = {"type": "human", "name": "alice", "model_version": "m"}

        made = world.call("bot", "POST", "/v1/plans", json=plan)

        assert made.status_code == 201, made.text
        assert made.json()["agent_id"] == "bot"
        submitted = [
            e for e in _events(world, "plan.submitted") if e["plan_id"] == "bot-says-human-1"
        ]
        assert submitted[0]["data"]["principal"] == "bot"
        assert submitted[0]["actor"]["agent_id"] == "bot"

    def test_a_malformed_manifest_is_recorded_with_its_sender(self, world):
        """A manifest refused by validation (422) records who sent it too."""
        plan = make_plan([SEARCH], plan_id="bot-bad-1", agent_id="bot")
        plan["steps"][0]["action"] = "no.such_action"

        refused = world.call("bot", "POST", "/v1/plans", json=plan)
        body = world.call("bot", "POST", "/v1/plans", content=b"[1, 2]")

        assert refused.status_code == 422 and body.status_code == 422
        last = _events(world, "plan.rejected")[-2:]
        assert [e["data"]["principal"] for e in last] == ["bot", "bot"]
        assert last[0]["data"]["plan_id"] == "bot-bad-1"

    def test_another_agent_id_is_still_refused(self, world):
        """Filling in is only for a manifest without ``agent_id``: another one is 403."""
        plan = make_plan([SEARCH], agent_id="bot2")

        refused = world.call("bot", "POST", "/v1/plans", json=plan)

        assert refused.status_code == 403 and refused.json()["field"] == "actor.agent_id"

    def test_an_mcp_call_records_its_principal(self, world):
        """``/v1/mcp/calls`` builds the manifest; its ``plan.submitted`` names the caller."""
        call = world.call("bot2", "POST", "/v1/mcp/calls", json=_mcp_call({"path": "/p/who"}))

        pid = call.json()["plan_id"]
        submitted = [e for e in _events(world, "plan.submitted") if e["plan_id"] == pid]
        assert submitted[0]["data"]["principal"] == "bot2"

    def test_a_library_submission_records_no_principal(self, world):
        """In process there is no authenticated caller: the event is as it always was."""
        rec = world.proctor.submit(make_plan([SEARCH], plan_id="lib-1", agent_id="bot"))

        submitted = [e for e in _events(world, "plan.submitted") if e["plan_id"] == rec.plan_id]
        assert set(submitted[0]["data"]) == {"steps"}
