"""Console sessions and CSRF tokens.

A session is server-side: the browser holds a 256-bit random id in an HttpOnly cookie, the
store keeps ``sha256(id)`` → the session record as a keyed state row (kind
``console_session``, so every replica sharing the database knows it, and a leaked database
holds no usable session id). Signing out deletes the record, so a copied cookie dies with
it; expired records are deleted whenever a session opens (and when one is found expired), so
the table holds only live sessions. Each request re-checks the API token the session was
opened with: revoking the token ends its sessions.

CSRF protection is the **synchronizer token** pattern: each session holds a random token
that every state-changing form carries in a hidden field; a POST whose field differs is
refused before anything runs. The sign-in form has no session yet, so it uses a **signed
double-submit** token instead: a random nonce in a short-lived cookie, and in the form the
HMAC-SHA256 of that nonce under a key kept in the store's metadata (shared by replicas).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from proctor.core.ports import Clock, Store
from proctor.core.principals import Principal
from proctor.errors import ProctorError, StorageError

__all__ = ["KIND", "SESSION_LIFETIME", "Session", "SessionStore", "check_csrf"]

SESSION_LIFETIME = timedelta(hours=8)
"""Longest life of a console session (a JWT's own expiry shortens it)."""

KIND = "console_session"
"""The store's state kind that holds console sessions (key: ``sha256(id)`` in hex)."""

_KEY = "console:key"


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """A signed-in console session."""

    principal: Principal
    csrf: str
    expires_at: datetime
    token_hash: str | None  # the API token it was opened with; None for a JWT


class SessionStore:
    """Sessions over the ``Store`` port's state rows; CSRF secrets in its metadata."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    # ------------------------------------------------------------------ sessions

    def open(
        self, principal: Principal, *, token_hash: str | None, not_after: datetime | None = None
    ) -> tuple[str, Session]:
        """Start a session; return the id for the cookie (shown once) and the session.

        Expired sessions are deleted in the same transaction, so the store never holds
        more than the sessions opened within one ``SESSION_LIFETIME``.
        """
        now = self._clock.now()
        expires = now + SESSION_LIFETIME
        if not_after is not None:
            expires = min(expires, not_after)
        session = Session(
            principal=principal,
            csrf=secrets.token_urlsafe(32),
            expires_at=expires,
            token_hash=token_hash,
        )
        session_id = secrets.token_urlsafe(32)
        record = {
            "name": principal.name,
            "roles": list(principal.roles),
            "groups": list(principal.groups),
            "csrf": session.csrf,
            "token_hash": token_hash,
            "created_at": now.isoformat(),
            "expires_at": expires.isoformat(),
        }
        stale = self._expired(now)
        with self._store.transaction() as tx:
            for digest in stale:
                tx.put_state(KIND, digest, None, at=now)
            tx.put_state(KIND, _digest(session_id), record, at=now)
        return session_id, session

    def _expired(self, now: datetime) -> list[str]:
        """The keys of stored sessions that are over (or unreadable, which are none)."""
        out = []
        for digest, doc in self._store.list_state(KIND).items():
            try:
                over = datetime.fromisoformat(doc["expires_at"]) <= now
            except (KeyError, TypeError, ValueError):
                over = True  # a record we cannot read is no session: drop it
            if over:
                out.append(digest)
        return out

    def purge(self) -> int:
        """Delete every expired session now; return how many were deleted."""
        now = self._clock.now()
        stale = self._expired(now)
        if stale:
            with self._store.transaction() as tx:
                for digest in stale:
                    tx.put_state(KIND, digest, None, at=now)
        return len(stale)

    def get(self, session_id: str | None) -> Session | None:
        """Return the live session of a cookie value, or None (unknown, ended, expired)."""
        if not session_id or len(session_id) > 128:
            return None
        digest = _digest(session_id)
        # A plain read: every console request reads its session, and a write transaction
        # (SQLite: the writers' lock) per page would queue pages behind plans.
        doc: Any = self._store.read_state(KIND, digest)
        if not isinstance(doc, dict):
            return None
        try:
            expires = datetime.fromisoformat(doc["expires_at"])
            principal = Principal(
                name=doc["name"], roles=tuple(doc["roles"]), groups=tuple(doc["groups"])
            )
            csrf = str(doc["csrf"])
            token_hash = doc.get("token_hash")
        except (KeyError, TypeError, ValueError, ProctorError):
            return None  # a record we cannot read is no session (fail closed)
        now = self._clock.now()
        if expires <= now:
            with self._store.transaction(durable=False) as tx:
                tx.put_state(KIND, digest, None, at=now)
            return None
        if token_hash is not None:
            # The token may have been revoked since sign-in: the session ends with it.
            token = self._store.find_token(token_hash)
            if token is None or token.revoked_at is not None:
                return None
        return Session(principal=principal, csrf=csrf, expires_at=expires, token_hash=token_hash)

    def end(self, session_id: str | None) -> None:
        """End a session (sign-out): its record is deleted; an unknown one changes nothing."""
        if not session_id or len(session_id) > 128:
            return
        with self._store.transaction() as tx:
            tx.put_state(KIND, _digest(session_id), None, at=self._clock.now())

    # ------------------------------------------------------------------ CSRF

    def _secret(self) -> bytes:
        stored = self._store.get_meta(_KEY)
        if stored is None:
            with self._store.transaction() as tx:
                tx.put_meta(_KEY, secrets.token_hex(32))
            # Read back: of two replicas racing here the last write wins, for both.
            stored = self._store.get_meta(_KEY)
            if stored is None:  # pragma: no cover - a store that loses its writes
                raise StorageError("the console key was not stored", field="meta")
        return bytes.fromhex(stored)

    def login_token(self, nonce: str) -> str:
        """Return the sign-in form's CSRF token for the nonce in its cookie."""
        mac = hmac.new(self._secret(), b"login:" + nonce.encode(), hashlib.sha256)
        return mac.hexdigest()

    def check_login_token(self, nonce: str | None, token: str | None) -> bool:
        """Whether the sign-in form's token matches the nonce cookie (signed double-submit)."""
        if not nonce or not token or len(nonce) > 128 or len(token) > 128:
            return False
        return hmac.compare_digest(self.login_token(nonce), token)


def check_csrf(session: Session, token: str | None) -> bool:
    """Whether a form's CSRF token is the session's (synchronizer token)."""
    return bool(token) and hmac.compare_digest(session.csrf.encode(), (token or "").encode())
