"""An undo's comment is recorded: through the library and the HTTP API (in-process ASGI).

The console's forms pass it as well (``test_console.py`` drives them in Chromium).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from proctor import Proctor
from proctor.app.tokens import TokenService
from proctor.errors import InvalidRequestError
from proctor.http import HttpSettings, create_app
from proctor.testing import FrozenClock

T0 = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
TABLE = ("restaurant.book", {"restaurant": "Casa", "party": 2, "time": "20:00"})


def _plan(user: str = "alice") -> dict[str, Any]:
    return {
        "actor": {"type": "agent", "name": "bot", "model_version": "m-1", "agent_id": "bot"},
        "on_behalf_of": user,
        "intent": "dinner",
        "steps": [{"id": "s1", "action": TABLE[0], "params": TABLE[1]}],
    }


def reasons(p: Proctor, plan_id: str) -> list[str]:
    """The reasons of the plan's ``compensation.started`` events, in log order."""
    rows = p.gateway.store.read_events(plan_id=plan_id, limit=1000)
    return [json.loads(r.body)["data"]["reason"] for r in rows if r.type == "compensation.started"]


@pytest.fixture
def p():
    inst = Proctor.in_memory(clock=FrozenClock(T0))
    yield inst
    inst.close()


class TestLibrary:
    def test_without_a_comment_the_reason_is_who(self, p):
        """No comment: the record says who undid it, as before."""
        rec = p.submit(_plan())

        p.undo(rec.plan_id, "alice")

        assert reasons(p, rec.plan_id) == ["undone by alice"]

    def test_the_comment_is_recorded_with_the_undo(self, p):
        """The comment is in the compensation's reason, in the signed log."""
        rec = p.submit(_plan())

        done = p.undo(rec.plan_id, "alice", comment="wrong evening")

        assert done.status.value == "undone"
        assert reasons(p, rec.plan_id) == ["undone by alice: wrong evening"]
        assert p.verify().ok

    def test_a_comment_too_long_to_record_is_refused_and_nothing_is_undone(self, p):
        """Refused by field, rather than cut: the plan stays succeeded."""
        rec = p.submit(_plan())

        with pytest.raises(InvalidRequestError) as e:
            p.undo(rec.plan_id, "alice", comment="x" * 490)

        assert e.value.field == "comment"
        assert p.get(rec.plan_id).status.value == "succeeded"
        assert reasons(p, rec.plan_id) == []


@pytest.mark.anyio
class TestHttp:
    async def test_the_api_records_the_comment_and_refuses_others(self, p):
        """POST /v1/plans/{id}/undo: bob (not its user) gets 404, as for a plan that does not
        exist (he may not read it); an over-long comment 422
        naming ``comment``; alice's comment is recorded."""
        tokens = TokenService(p.gateway.store, p.gateway.clock)
        secrets = {
            name: tokens.create(name=name, roles=[role]).token
            for name, role in (("alice", "user"), ("bob", "user"), ("aud", "auditor"))
        }
        app = create_app(p, settings=HttpSettings(auth_failures_per_minute=1000))
        rec = p.submit(_plan())
        path = f"/v1/plans/{rec.plan_id}/undo"

        async def post(who: str, body: Any) -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://p") as client:
                return await client.post(
                    path, json=body, headers={"Authorization": f"Bearer {secrets[who]}"}
                )

        auditor = await post("aud", {"comment": "no"})
        other = await post("bob", {"comment": "mine now"})
        too_long = await post("alice", {"comment": "x" * 600})
        untouched = reasons(p, rec.plan_id)
        ok = await post("alice", {"comment": "booked twice"})

        assert (auditor.status_code, auditor.json()["field"]) == (403, "role")
        assert (other.status_code, other.json()["field"]) == (404, "plan_id")
        assert (too_long.status_code, too_long.json()["field"]) == (422, "comment")
        assert untouched == []
        assert ok.status_code == 200 and ok.json()["status"] == "undone"
        assert reasons(p, rec.plan_id) == ["undone by alice: booked twice"]
