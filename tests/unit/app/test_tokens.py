"""API token names and groups: what ``TokenService.create`` accepts."""

from __future__ import annotations

import orjson
import pytest

from proctor import Proctor
from proctor.app.tokens import TokenService
from proctor.core.lifecycle import PlanStatus
from proctor.errors import InvalidRequestError
from proctor.testing import make_plan


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "ops\n"}, "name"),  # "$" would admit a final newline
        ({"name": "ops", "groups": ["finance\n"]}, "groups"),
        ({"name": " ops"}, "name"),
    ],
)
def test_a_bad_name_or_group_is_refused_naming_the_field(kwargs, field):
    p = Proctor.in_memory()
    tokens = TokenService(p.gateway.store, p.gateway.clock)
    with pytest.raises(InvalidRequestError) as ei:
        tokens.create(roles=["user"], **kwargs)
    assert ei.value.field == field
    assert tokens.list() == []


def test_a_name_outside_ascii_is_refused_saying_so():
    """``josé`` is refused as a token name with a message that says ASCII and a hint to use
    the login or e-mail address (it once said "letters", as if é were allowed)."""
    p = Proctor.in_memory()
    tokens = TokenService(p.gateway.store, p.gateway.clock)

    with pytest.raises(InvalidRequestError) as ei:
        tokens.create(name="jos\u00e9", roles=["user"])

    assert ei.value.field == "name"
    assert "ASCII" in ei.value.message
    assert "e-mail address" in (ei.value.hint or "")
    assert tokens.list() == []


def test_a_good_name_is_kept():
    p = Proctor.in_memory()
    tokens = TokenService(p.gateway.store, p.gateway.clock)
    new = tokens.create(name="ops.bot@x", roles=["user"], groups=["finance"])
    assert tokens.authenticate(new.token).name == "ops.bot@x"


def test_a_user_named_like_an_e_mail_confirms_and_undoes_their_plan():
    """A token name with "@" is a valid on_behalf_of: that user confirms and undoes.

    Regression: token names admitted "@" but plans did not, so such a user could never be
    the user a plan acts for.
    """
    p = Proctor.in_memory()
    tokens = TokenService(p.gateway.store, p.gateway.clock)
    name = tokens.authenticate(tokens.create(name="alice@example.com", roles=["user"]).token).name
    change = ("billing.change_subscription", {"customer": "alice", "plan": "pro"})
    table = ("restaurant.book", {"restaurant": "Casa", "party": 2, "time": "20:00"})

    asked = p.submit(make_plan([change], on_behalf_of=name))
    confirmed = p.confirm(asked.plan_id, name)
    booked = p.submit(make_plan([table], on_behalf_of=name))
    rec = p.undo(booked.plan_id, name)

    assert asked.status is PlanStatus.AWAITING_CONFIRMATION
    assert confirmed.status is PlanStatus.SUCCEEDED

    assert rec.status is PlanStatus.UNDONE
    undo = [orjson.loads(e.body) for e in p.events(plan_id=rec.plan_id)]
    assert [e["user_id"] for e in undo if e["type"] == "undo.requested"] == [name]
    assert p.verify().ok


def _events(p: Proctor, type_: str) -> list[dict]:
    return [orjson.loads(e.body) for e in p.events() if e.type == type_]


def test_creating_and_revoking_a_token_is_audited_without_the_token():
    p = Proctor.in_memory()
    new = p.tokens.create(name="fiona", roles=["approver"], groups=["finance"], by="local:ops")
    p.tokens.revoke(new.record.token_id, by="local:sec")
    p.tokens.revoke(new.record.token_id, by="local:sec")  # already revoked: nothing new

    (created,) = _events(p, "token.created")
    assert created["data"] == {
        "token_id": new.record.token_id,
        "name": "fiona",
        "roles": ["approver"],
        "groups": ["finance"],
        "by": "local:ops",
    }
    assert created["actor"] == {"type": "human", "name": "local:ops"}
    (revoked,) = _events(p, "token.revoked")
    assert revoked["data"]["token_id"] == new.record.token_id
    assert revoked["data"]["by"] == "local:sec"
    text = b"".join(e.body for e in p.events()).decode()
    assert new.token not in text
    assert new.record.token_hash not in text
    assert p.verify().ok


def test_a_refused_token_records_nothing():
    p = Proctor.in_memory()
    with pytest.raises(InvalidRequestError):
        p.tokens.create(name="ops\n", roles=["user"], by="local:ops")
    assert _events(p, "token.created") == []


def test_enrolling_for_step_up_is_audited_without_the_secret():
    p = Proctor.in_memory()
    secret, _ = p.enrol_totp("fiona", by="local:ops")
    again, _ = p.enrol_totp("fiona", by="local:ops")
    first, second = _events(p, "stepup.enrolled")
    assert first["data"] == {"principal": "fiona", "replaced": False, "by": "local:ops"}
    assert second["data"]["replaced"] is True
    text = b"".join(e.body for e in p.events()).decode()
    assert secret not in text and again not in text
