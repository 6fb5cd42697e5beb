"""Who is calling: bearer API tokens, JWTs, and the failed-authentication rate limit.

``Auth`` is the FastAPI dependency of every ``/v1`` route. It answers 429 to an address
that failed to authenticate too often in the last minute (before looking at its
credentials, so a guesser learns nothing more), 401 for missing or invalid credentials,
and otherwise returns the ``Principal``. Authorization (what the principal may do) is the
core's role table, ``proctor.core.principals``.
"""

# NOTE(http): no `from __future__ import annotations` here: FastAPI reads the route
# signatures at runtime, and the aliases they use (Caller, PlanId) are local names.

import hashlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from proctor.app.tokens import TokenService
from proctor.core.principals import Principal
from proctor.http.errors import RateLimitedError, UnauthenticatedError
from proctor.http.jwt import JwtVerifier, looks_like_jwt

__all__ = ["UNSAFE_LOCAL", "Auth", "FailureLimiter", "bearer", "bearer_token"]

log = logging.getLogger("proctor.http.auth")

UNSAFE_LOCAL = Principal(name="local", roles=("user", "approver", "admin"))
"""Who every request is under ``--unsafe-no-auth``."""

bearer = HTTPBearer(auto_error=False, description="An API token or an OIDC JWT.")

_MAX_CLIENTS = 10_000


class FailureLimiter:
    """Counts failed authentications per client address over a sliding window."""

    def __init__(
        self,
        limit: int,
        *,
        window: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self._now = monotonic
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, client: str) -> int | None:
        """Seconds until ``client`` may try again, or None if it may now."""
        with self._lock:
            times = self._failures.get(client)
            if times is None:
                return None
            now = self._now()
            while times and times[0] <= now - self.window:
                times.popleft()
            if not times:
                del self._failures[client]
                return None
            if len(times) < self.limit:
                return None
            return max(1, math.ceil(times[0] + self.window - now))

    def failed(self, client: str) -> None:
        """Record one failed authentication from ``client``."""
        with self._lock:
            if client not in self._failures and len(self._failures) >= _MAX_CLIENTS:
                # Bounded memory under a spray of addresses: forget the oldest entry.
                self._failures.pop(next(iter(self._failures)))
            times = self._failures.setdefault(client, deque())
            times.append(self._now())
            while len(times) > self.limit:
                times.popleft()


class _TokenCache:
    """Verified API tokens by hash, for a few seconds (a revocation waits this long)."""

    def __init__(self, ttl: float, monotonic: Callable[[], float]) -> None:
        self.ttl = ttl
        self._now = monotonic
        self._entries: dict[str, tuple[Principal, float]] = {}

    def get(self, key: str) -> Principal | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] < self._now():
            self._entries.pop(key, None)
            return None
        return entry[0]

    def put(self, key: str, principal: Principal) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= _MAX_CLIENTS:
            self._entries.clear()
        self._entries[key] = (principal, self._now() + self.ttl)


class Auth:
    """The authentication dependency: ``Depends(auth)`` yields the calling ``Principal``."""

    def __init__(
        self,
        tokens: TokenService,
        *,
        limiter: FailureLimiter,
        jwt: JwtVerifier | None = None,
        token_cache_seconds: float = 2.0,
        unsafe_no_auth: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tokens = tokens
        self.limiter = limiter
        self.jwt = jwt
        self.unsafe_no_auth = unsafe_no_auth
        self._cache = _TokenCache(token_cache_seconds, monotonic)

    def verify(self, token: str) -> Principal | None:
        """Return the principal of an API token or a JWT, or None (may do I/O)."""
        if self.jwt is not None and looks_like_jwt(token):
            return self.jwt.verify(token)
        key = hashlib.sha256(token.encode()).hexdigest()
        principal = self.tokens.authenticate(token)
        if principal is not None:
            self._cache.put(key, principal)
        return principal

    async def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        """Authenticate the request.

        Raises:
            RateLimitedError: the client address failed too often in the last minute.
            UnauthenticatedError: no bearer credentials, or they do not verify.
        """
        client = request.client.host if request.client else "unknown"
        return await self.authenticate(client, credentials.credentials if credentials else None)

    async def authenticate(self, client: str, token: str | None) -> Principal:
        """Return the principal of a bearer ``token`` sent from the address ``client``.

        ``token`` is None when the request has no ``Authorization: Bearer`` credentials.
        The FastAPI dependency and the submit route's own ASGI path both come here.

        Raises:
            RateLimitedError: the client address failed too often in the last minute.
            UnauthenticatedError: no bearer credentials, or they do not verify.
        """
        if self.unsafe_no_auth:
            return UNSAFE_LOCAL  # create_app logs a warning for every such request
        retry = self.limiter.retry_after(client)
        if retry is not None:
            raise RateLimitedError(
                "too many failed authentications from this address",
                retry_after=retry,
                hint=f"Retry in {retry} s with a valid token.",
            )
        if token is None:
            raise UnauthenticatedError(
                "this route needs Authorization: Bearer <token>",
                field="Authorization",
                hint="Create a token with `proctor tokens create`.",
            )
        cached = self._cache.get(hashlib.sha256(token.encode()).hexdigest())
        if cached is not None:
            return cached
        principal = await run_in_threadpool(self.verify, token)
        if principal is None:
            self.limiter.failed(client)
            raise UnauthenticatedError(
                "the bearer token is not valid (unknown, revoked or expired)",
                field="Authorization",
            )
        return principal


def bearer_token(authorization: str | None) -> str | None:
    """The credentials of an ``Authorization: Bearer`` header value, as ``HTTPBearer`` reads it.

    None when the header is missing, empty, of another scheme, or has no credentials.
    """
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    credentials = credentials.strip()
    if not scheme or not credentials or scheme.lower() != "bearer":
        return None
    return credentials
