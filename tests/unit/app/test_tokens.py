"""API token names and groups: what ``TokenService.create`` accepts."""

from __future__ import annotations

import pytest

from proctor import Proctor
from proctor.app.tokens import TokenService
from proctor.errors import InvalidRequestError


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


def test_a_good_name_is_kept():
    p = Proctor.in_memory()
    tokens = TokenService(p.gateway.store, p.gateway.clock)
    new = tokens.create(name="ops.bot@x", roles=["user"], groups=["finance"])
    assert tokens.authenticate(new.token).name == "ops.bot@x"
