"""API tokens (``proctor.app.tokens``): shown once, stored as a hash, revocable."""

from __future__ import annotations

import hashlib

import pytest

from proctor.app.tokens import TokenService, hash_token
from proctor.errors import InvalidRequestError, NotFoundError
from proctor.testing import FrozenClock, InMemoryStore


@pytest.fixture
def service() -> TokenService:
    return TokenService(InMemoryStore(), FrozenClock())


class TestCreate:
    def test_no_tokens_at_first(self, service):
        """A new store lists no token."""
        assert service.list() == []

    def test_only_the_hash_is_stored(self, service):
        """The plaintext is returned once; the store holds sha256 of it and nothing else."""
        new = service.create(name="bot", roles=["agent"])

        (stored,) = service.list()
        assert new.token.startswith("prt_") and "." not in new.token
        assert stored.token_hash == "sha256:" + hashlib.sha256(new.token.encode()).hexdigest()
        assert new.token not in repr(stored)
        assert new.as_dict() == {
            "token": new.token,
            "id": stored.token_id,
            "name": "bot",
            "roles": ["agent"],
            "groups": [],
        }

    def test_tokens_are_unique(self, service):
        """Two tokens for the same name differ."""
        a = service.create(name="bot", roles=["agent"])
        b = service.create(name="bot", roles=["agent"])

        assert a.token != b.token and a.record.token_id != b.record.token_id

    def test_duplicate_roles_and_groups_collapse(self, service):
        """Repeated roles or groups are kept once, in order."""
        new = service.create(name="ann", roles=["approver", "approver"], groups=["hr", "hr"])

        assert new.record.roles == ("approver",)
        assert new.record.groups == ("hr",)

    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"name": "", "roles": ["agent"]}, "name"),
            ({"name": "has space", "roles": ["agent"]}, "name"),
            ({"name": "x" * 129, "roles": ["agent"]}, "name"),
            ({"name": "bot", "roles": []}, "role"),
            ({"name": "bot", "roles": ["root"]}, "role"),
            ({"name": "bot", "roles": ["agent"], "groups": ["a,b"]}, "groups"),
        ],
    )
    def test_bad_input_names_the_field(self, service, kwargs, field):
        """Bad names, groups or roles are refused before anything is stored."""
        with pytest.raises(InvalidRequestError) as exc:
            service.create(**kwargs)

        assert exc.value.field == field
        assert service.list() == []


class TestAuthenticate:
    def test_a_valid_token_is_its_principal(self, service):
        """The token authenticates as its name, roles and groups."""
        new = service.create(name="ann", roles=["approver"], groups=["finance"])

        p = service.authenticate(new.token)

        assert p is not None
        assert (p.name, p.roles, p.groups) == ("ann", ("approver",), ("finance",))

    @pytest.mark.parametrize("token", ["", "prt_", "prt_unknown", "nope", "prt_" + "x" * 600])
    def test_unknown_or_malformed_tokens_are_none(self, service, token):
        """Anything that is not a stored token authenticates as nobody."""
        service.create(name="bot", roles=["agent"])

        assert service.authenticate(token) is None

    def test_a_revoked_token_is_none(self, service):
        """Revocation takes effect at once; revoking twice changes nothing."""
        new = service.create(name="bot", roles=["agent"])

        first = service.revoke(new.record.token_id)
        second = service.revoke(new.record.token_id)

        assert service.authenticate(new.token) is None
        assert first.revoked_at is not None and second.revoked_at == first.revoked_at

    def test_revoking_an_unknown_id_is_not_found(self, service):
        """An unknown id raises NotFoundError on field id."""
        with pytest.raises(NotFoundError) as exc:
            service.revoke("tok_none")

        assert exc.value.field == "id"


def test_hash_token_is_tagged_sha256():
    """hash_token is ``sha256:<hex>``."""
    assert hash_token("a") == "sha256:" + hashlib.sha256(b"a").hexdigest()
