"""Settings of the HTTP service, and the ``[auth.jwt]`` table of ``config.toml``.

Only entry points (``proctor serve``) call ``load_http_settings``; ``create_app`` receives
the values.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proctor.config import reject_unknown
from proctor.errors import ConfigError

__all__ = ["HttpSettings", "JwtSettings", "load_http_settings"]

ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
"""JWT algorithms a JWKS can verify. Never ``HS*`` or ``none``: with a public JWKS, a
symmetric algorithm would let anyone who reads the key forge tokens (algorithm confusion)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtSettings:
    """OIDC / JWT bearer validation against a JWKS.

    Attributes:
        issuer: Required ``iss``.
        audience: Required ``aud`` (a token for another service must not work here).
        jwks_file: A JWKS JSON file; or
        jwks_url: a JWKS URL (fetched at most every ``refresh_seconds`` on an unknown ``kid``).
        name_claim: The claim naming the principal. Default ``sub``.
        roles_claim: A list of Proctor roles. Default ``roles``; unknown roles are ignored.
        groups_claim: A list of approver groups. Default ``groups``.
        algorithms: Accepted algorithms; asymmetric only. Default all of them.
        leeway_seconds: Clock skew allowed on ``exp`` / ``nbf`` / ``iat``. Default 30.
        refresh_seconds: Least time between two JWKS fetches. Default 30.
        max_age_seconds: Refetch the JWKS when it is older than this. Default 600.
    """

    issuer: str
    audience: str
    jwks_file: Path | None = None
    jwks_url: str | None = None
    name_claim: str = "sub"
    roles_claim: str = "roles"
    groups_claim: str = "groups"
    algorithms: tuple[str, ...] = ASYMMETRIC_ALGORITHMS
    leeway_seconds: int = 30
    refresh_seconds: int = 30
    max_age_seconds: int = 600

    def __post_init__(self) -> None:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ConfigError(
                "[auth.jwt] needs exactly one of jwks_file and jwks_url", field="auth.jwt"
            )
        if not self.issuer or not self.audience:
            raise ConfigError(
                "[auth.jwt] needs issuer and audience: a token minted for another service"
                " must not be accepted here",
                field="auth.jwt.audience",
            )
        bad = [a for a in self.algorithms if a not in ASYMMETRIC_ALGORITHMS]
        if bad or not self.algorithms:
            raise ConfigError(
                f"[auth.jwt] algorithm {bad[0] if bad else '(none)'!r} is not allowed;"
                f" use {', '.join(ASYMMETRIC_ALGORITHMS)}",
                field="auth.jwt.algorithms",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSettings:
    """How the HTTP service behaves.

    Attributes:
        max_body_bytes: Largest request body; larger gets 413 before parsing. Default 256 KiB.
        auth_failures_per_minute: Failed authentications per client address per minute
            before 429. Default 20.
        token_cache_seconds: How long a verified API token is trusted without asking the
            store again (a revocation takes effect within this). Default 2; 0 disables.
        max_wait_seconds: Longest long-poll (``?wait=``). Default 60.
        poll_interval_seconds: How often a long-poll or an event stream reads the store.
            Default 0.05.
        stream_max_seconds: Longest event stream; the client reconnects with
            ``Last-Event-ID``. Default 300.
        stream_keepalive_seconds: A comment line this often keeps proxies from closing an
            idle stream. Default 15.
        submit_threads: Most plan submissions (``POST /v1/plans``) that run at once. One
            runs at a time, plus one for each running submission slower than
            ``submit_stall_seconds`` (a slow tool): more at once only contend for the GIL and
            the store's lock (``proctor.http.lanes``). Default 16.
        submit_stall_seconds: How long a submission runs before the next one may start
            beside it. Default 0.02 (a plan without slow tools takes 2-3 ms here).
        jwt: OIDC / JWT validation, or None (API tokens only). Default None.
    """

    max_body_bytes: int = 256 * 1024
    auth_failures_per_minute: int = 20
    token_cache_seconds: float = 2.0
    max_wait_seconds: float = 60.0
    poll_interval_seconds: float = 0.05
    stream_max_seconds: float = 300.0
    stream_keepalive_seconds: float = 15.0
    submit_threads: int = 16
    submit_stall_seconds: float = 0.02
    jwt: JwtSettings | None = None

    def __post_init__(self) -> None:
        if self.submit_threads < 1:
            raise ConfigError("submit_threads must be at least 1", field="submit_threads")
        if not self.submit_stall_seconds > 0:
            raise ConfigError("submit_stall_seconds must be positive", field="submit_stall_seconds")


def _str(table: Mapping[str, Any], key: str, default: str | None = None) -> str | None:
    value = table.get(key, default)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"auth.jwt.{key} must be a string", field=f"auth.jwt.{key}")
    return value


def _jwt(table: Mapping[str, Any], home: Path, config: Path) -> JwtSettings:
    known = {
        "issuer",
        "audience",
        "jwks_file",
        "jwks_url",
        "name_claim",
        "roles_claim",
        "groups_claim",
        "algorithms",
        "leeway_seconds",
    }
    reject_unknown(table, known, where="auth.jwt", path=config)
    file = _str(table, "jwks_file")
    path = None
    if file is not None:
        path = Path(file) if Path(file).is_absolute() else home / file
    algorithms = table.get("algorithms", list(ASYMMETRIC_ALGORITHMS))
    if not isinstance(algorithms, list) or not all(isinstance(a, str) for a in algorithms):
        raise ConfigError(
            "auth.jwt.algorithms must be a list of names", field="auth.jwt.algorithms"
        )
    leeway = table.get("leeway_seconds", 30)
    if type(leeway) is not int or not 0 <= leeway <= 300:
        raise ConfigError(
            "auth.jwt.leeway_seconds must be an integer from 0 to 300",
            field="auth.jwt.leeway_seconds",
        )
    return JwtSettings(
        issuer=_str(table, "issuer", "") or "",
        audience=_str(table, "audience", "") or "",
        jwks_file=path,
        jwks_url=_str(table, "jwks_url"),
        name_claim=_str(table, "name_claim", "sub") or "sub",
        roles_claim=_str(table, "roles_claim", "roles") or "roles",
        groups_claim=_str(table, "groups_claim", "groups") or "groups",
        algorithms=tuple(algorithms),
        leeway_seconds=leeway,
    )


def load_http_settings(home: Path) -> HttpSettings:
    """Read the HTTP service's settings from ``<home>/config.toml`` (``[auth.jwt]``).

    Raises:
        ConfigError: naming the key at fault.
    """
    path = home / "config.toml"
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} is missing", field="config.toml") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", field="config.toml") from exc
    auth = doc.get("auth", {})
    if not isinstance(auth, dict):
        raise ConfigError("[auth] must be a table", field="auth")
    table = auth.get("jwt")
    if table is None:
        return HttpSettings()
    if not isinstance(table, dict):
        raise ConfigError("[auth.jwt] must be a table", field="auth.jwt")
    return HttpSettings(jwt=_jwt(table, home, path))
