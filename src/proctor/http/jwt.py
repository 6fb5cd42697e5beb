"""OIDC / JWT bearer tokens verified against a JWKS (a file or a URL).

A token is accepted only if its signature verifies with a key of the JWKS (asymmetric
algorithms only), it has not expired, and its ``iss`` and ``aud`` are the configured ones.
The principal's name, roles and groups come from configured claims; roles that Proctor
does not know are ignored.

The JWKS is cached. An unknown ``kid`` (the issuer rotated its keys) triggers a refetch,
but at most once per ``refresh_seconds``: random ``kid`` values must not turn every bad
token into a request to the identity provider.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import jwt

from proctor.core.principals import ROLES, Principal
from proctor.errors import ConfigError
from proctor.http.settings import JwtSettings

__all__ = ["JwtVerifier", "looks_like_jwt"]

log = logging.getLogger("proctor.http.auth")

_MAX_JWKS_BYTES = 1024 * 1024
_MAX_NAME = 200


def looks_like_jwt(token: str) -> bool:
    """Whether ``token`` has the three dot-separated parts of a compact JWS."""
    return token.count(".") == 2


class JwtVerifier:
    """Verifies JWT bearer tokens and maps their claims to a ``Principal``."""

    def __init__(
        self, settings: JwtSettings, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self._now = monotonic
        self._lock = threading.Lock()
        self._keys: list[jwt.PyJWK] = []
        self._fetched_at: float | None = None

    # ------------------------------------------------------------------ the key set

    def _read_jwks(self) -> dict[str, Any]:
        s = self.settings
        try:
            if s.jwks_file is not None:
                raw = s.jwks_file.read_bytes()
            else:
                url = s.jwks_url or ""
                if not url.startswith(("https://", "http://")):
                    raise ConfigError(f"jwks_url {url!r} is not http(s)", field="auth.jwt")
                with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - scheme checked
                    raw = resp.read(_MAX_JWKS_BYTES + 1)
            if len(raw) > _MAX_JWKS_BYTES:
                raise ConfigError("the JWKS is larger than 1 MiB", field="auth.jwt")
            doc = json.loads(raw)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load the JWKS: {exc}", field="auth.jwt") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise ConfigError("the JWKS has no keys list", field="auth.jwt")
        return doc

    def load(self) -> None:
        """Fetch the key set now.

        Raises:
            ConfigError: if it cannot be read or holds no usable key.
        """
        doc = self._read_jwks()
        keys = []
        for entry in doc["keys"]:
            try:
                keys.append(jwt.PyJWK(entry))
            except jwt.PyJWTError as exc:
                log.warning("skipping a JWKS key: %s", exc)
        if not keys:
            raise ConfigError("the JWKS holds no usable key", field="auth.jwt")
        self._keys = keys
        self._fetched_at = self._now()

    def _candidates(self, kid: str | None) -> list[jwt.PyJWK]:
        with self._lock:
            age = None if self._fetched_at is None else self._now() - self._fetched_at
            stale = age is None or age > self.settings.max_age_seconds
            may_refresh = age is None or age > self.settings.refresh_seconds
            matches = [k for k in self._keys if kid is None or k.key_id == kid]
            if stale or (not matches and may_refresh):
                try:
                    self.load()
                except ConfigError as exc:
                    # Keep the keys we have: the provider may be down for a moment.
                    log.warning("JWKS refresh failed: %s", exc.message)
                    self._fetched_at = self._now()
                matches = [k for k in self._keys if kid is None or k.key_id == kid]
            return matches

    # ------------------------------------------------------------------ tokens

    def verify(self, token: str) -> Principal | None:
        """Return the principal of a valid token, or None (the reason is logged at debug)."""
        s = self.settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            log.debug("JWT rejected: %s", exc)
            return None
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            return None
        for key in self._candidates(kid):
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=list(s.algorithms),
                    audience=s.audience,
                    issuer=s.issuer,
                    leeway=s.leeway_seconds,
                    options={"require": ["exp", "iss", "aud", s.name_claim]},
                )
            except jwt.InvalidSignatureError:
                continue  # without a kid, another key of the set may verify it
            except jwt.PyJWTError as exc:
                log.debug("JWT rejected: %s", exc)
                return None
            return self._principal(claims)
        log.debug("JWT rejected: no key of the JWKS verifies it")
        return None

    def _principal(self, claims: dict[str, Any]) -> Principal | None:
        s = self.settings
        name = claims.get(s.name_claim)
        if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME:
            return None
        roles = tuple(r for r in _strings(claims.get(s.roles_claim)) if r in ROLES)
        groups = tuple(_strings(claims.get(s.groups_claim)))
        return Principal(name=name, roles=roles, groups=groups)


def _strings(value: Any) -> list[str]:
    """A claim holding a list of names, or one space-separated string (as OAuth scopes)."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str) and 0 < len(v) <= _MAX_NAME]
    return []
