"""API tokens: create (the plaintext is shown once), list, revoke, authenticate.

Creating and revoking a token changes who may act, so each is audited (``token.created``,
``token.revoked``: the id, name, roles, groups and who did it; never the token or its hash)
in the transaction that saves it, when the service is given the gateway's journal.

Only ``sha256(token)`` is stored. A token is 32 random bytes (256 bits), so a fast hash is
enough: nobody brute-forces a 256-bit preimage, and the hash lets the store find the token
by an indexed lookup instead of comparing secrets one by one (no timing side channel on
the secret itself). A token is ``prt_`` followed by URL-safe base64, so it never contains a
dot and is never mistaken for a JWT.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proctor.core.events import EventType as E
from proctor.core.plans import PERSON_NAME, PERSON_NAME_HINT, PERSON_NAME_RULE
from proctor.core.ports import Clock, Store
from proctor.core.principals import Principal, TokenRecord
from proctor.errors import InvalidRequestError, NotFoundError

if TYPE_CHECKING:
    from proctor.app.journal import Journal

__all__ = ["NewToken", "TokenService", "hash_token"]

TOKEN_PREFIX = "prt_"  # noqa: S105 - a prefix that marks API tokens, not a secret
_NAME = PERSON_NAME  # one grammar for people: a token's name may be a plan's on_behalf_of
_MAX_TOKEN = 512


def hash_token(token: str) -> str:
    """Return the stored form of a token: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class NewToken:
    """A freshly created token: the plaintext (shown once) and its record."""

    token: str
    record: TokenRecord

    def as_dict(self) -> dict[str, object]:
        """Return the JSON printed by ``proctor tokens create --json``."""
        return {
            "token": self.token,
            "id": self.record.token_id,
            "name": self.record.name,
            "roles": list(self.record.roles),
            "groups": list(self.record.groups),
        }


def _check_name(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise InvalidRequestError(
            f"{what} {value!r} must be {PERSON_NAME_RULE}",
            field=what,
            hint=PERSON_NAME_HINT if what == "name" else None,
        )
    return value


class TokenService:
    """Bearer tokens over the ``Store`` port.

    Args:
        store: Where token records live.
        clock: The time of creation and revocation.
        journal: The gateway's journal factory: creations and revocations are then audited
            (a service that only authenticates needs none).
    """

    def __init__(
        self, store: Store, clock: Clock, *, journal: Callable[[Any], Journal] | None = None
    ) -> None:
        self._store = store
        self._clock = clock
        self._journal = journal

    def _audit(self, tx: Any, type_: str, record: TokenRecord, by: str | None) -> None:
        if self._journal is None:
            return
        j = self._journal(tx)
        j.emit(
            type_,
            user_id=by,
            actor={"type": "human", "name": by or "unknown"},
            data={
                "token_id": record.token_id,
                "name": record.name,
                "roles": list(record.roles),
                "groups": list(record.groups),
                "by": by,
            },
        )
        j.flush()

    def create(
        self,
        *,
        name: str,
        roles: Iterable[str],
        groups: Iterable[str] = (),
        by: str | None = None,
    ) -> NewToken:
        """Create a token for ``name`` with ``roles`` and approver ``groups``.

        ``by`` is who creates it (recorded in ``token.created``).

        Raises:
            InvalidRequestError: a bad name, group or role, or no role at all.
        """
        _check_name(name, "name")
        roles_t = tuple(dict.fromkeys(roles))
        groups_t = tuple(dict.fromkeys(_check_name(g, "groups") for g in groups))
        if not roles_t:
            raise InvalidRequestError("a token needs at least one role", field="role")
        Principal(name=name, roles=roles_t, groups=groups_t)  # validates the role names
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = TokenRecord(
            token_id="tok_" + secrets.token_hex(8),
            name=name,
            roles=roles_t,
            groups=groups_t,
            token_hash=hash_token(token),
            created_at=self._clock.now(),
        )
        with self._store.transaction() as tx:
            tx.save_token(record)
            self._audit(tx, E.TOKEN_CREATED, record, by)
        return NewToken(token=token, record=record)

    def list(self) -> list[TokenRecord]:
        """Return every token record (never a token), oldest first."""
        return self._store.list_tokens()

    def revoke(self, token_id: str, *, by: str | None = None) -> TokenRecord:
        """Revoke a token; revoking a revoked token changes nothing (and records nothing).

        ``by`` is who revokes it (recorded in ``token.revoked``).

        Raises:
            NotFoundError: if there is no token with this id.
        """
        for record in self._store.list_tokens():
            if record.token_id == token_id:
                if record.revoked_at is not None:
                    return record
                revoked = dataclasses.replace(record, revoked_at=self._clock.now())
                with self._store.transaction() as tx:
                    tx.save_token(revoked)
                    self._audit(tx, E.TOKEN_REVOKED, revoked, by)
                return revoked
        raise NotFoundError(
            f"no token {token_id!r}", field="id", hint="List tokens with `proctor tokens list`."
        )

    def authenticate(self, token: str) -> Principal | None:
        """Return the principal of a valid, unrevoked token, or None."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > _MAX_TOKEN:
            return None
        record = self._store.find_token(hash_token(token))
        if record is None or record.revoked_at is not None:
            return None
        return record.principal()
