"""OIDC / JWT bearer tokens against a JWKS made in the test (a file, or a local HTTP server).

Keys are generated here (RSA 2048 and EC P-256); tokens are signed with PyJWT.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from proctor import Proctor
from proctor.bootstrap import SystemClock
from proctor.errors import ConfigError
from proctor.http import HttpSettings, JwtSettings, create_app
from proctor.testing import FrozenClock, make_plan

pytestmark = pytest.mark.anyio

ISSUER = "https://idp.example.test"


def _now() -> int:
    """Unix seconds now (PyJWT checks exp against the real clock)."""
    return int(SystemClock().now().timestamp())


AUDIENCE = "proctor-api"
SEARCH = ("travel.search", {"destination": "Lisbon", "date": "2027-03-12"})


class Keys:
    """Signing keys and their public JWKS."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.other = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self, *, with_other: bool = False) -> dict[str, Any]:
        keys = [
            RSAAlgorithm.to_jwk(self.rsa.public_key(), as_dict=True)
            | {"kid": "rsa-1", "alg": "RS256"},
            ECAlgorithm.to_jwk(self.ec.public_key(), as_dict=True)
            | {"kid": "ec-1", "alg": "ES256"},
        ]
        if with_other:
            keys.append(
                RSAAlgorithm.to_jwk(self.other.public_key(), as_dict=True)
                | {"kid": "rsa-2", "alg": "RS256"}
            )
        return {"keys": keys}

    def token(
        self,
        *,
        sub: str = "aud",
        roles: Any = ("auditor",),
        groups: Any = (),
        kid: str = "rsa-1",
        key: Any = None,
        alg: str = "RS256",
        **claims: Any,
    ) -> str:
        now = _now()
        payload = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": now,
            "exp": now + 300,
            "roles": list(roles) if not isinstance(roles, str) else roles,
            "groups": list(groups) if not isinstance(groups, str) else groups,
        } | claims
        payload = {k: v for k, v in payload.items() if v is not None}
        signer = key if key is not None else (self.ec if alg == "ES256" else self.rsa)
        return jwt.encode(payload, signer, algorithm=alg, headers={"kid": kid})


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture
def jwks_file(keys: Keys, tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(keys.jwks()))
    return path


@pytest.fixture
async def client(jwks_file: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = HttpSettings(jwt=JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=jwks_file))
    proctor = Proctor.in_memory(clock=FrozenClock())
    transport = httpx.ASGITransport(app=create_app(proctor, settings=settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://proctor") as c:
        c.proctor = proctor  # type: ignore[attr-defined]
        yield c


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class TestValid:
    @pytest.mark.parametrize(("kid", "alg"), [("rsa-1", "RS256"), ("ec-1", "ES256")])
    async def test_a_valid_token_authenticates(self, client, keys, kid, alg):
        """An RSA or EC token from the JWKS with the auditor role reads the audit keys."""
        resp = await client.get("/v1/audit/keys", headers=_auth(keys.token(kid=kid, alg=alg)))

        assert resp.status_code == 200, resp.text

    async def test_sub_and_roles_map_to_the_principal(self, client, keys):
        """sub is the name: an agent token submits plans only as that agent."""
        token = keys.token(sub="bot", roles=["agent"])

        own = await client.post(
            "/v1/plans", json=make_plan([SEARCH], agent_id="bot"), headers=_auth(token)
        )
        other = await client.post(
            "/v1/plans", json=make_plan([SEARCH], agent_id="bot2"), headers=_auth(token)
        )

        assert own.status_code == 201
        assert other.status_code == 403

    async def test_groups_are_approval_roles(self, client, keys):
        """An approver's groups claim lets it approve plans for those groups."""
        po = (
            "procurement.create_po",
            {"supplier": "a", "item": "b", "quantity": 1, "amount": 250_000},
        )
        plan_id = client.proctor.submit(make_plan([po])).plan_id
        finance = keys.token(sub="ann", roles=["approver"], groups="finance other")
        sre = keys.token(sub="sam", roles=["approver"], groups=["sre"])

        refused = await client.post(f"/v1/plans/{plan_id}/approve", headers=_auth(sre))
        approved = await client.post(f"/v1/plans/{plan_id}/approve", headers=_auth(finance))

        assert refused.status_code == 404  # not sam's to see
        assert approved.status_code == 200
        assert approved.json()["approvals"][0]["roles"] == ["finance", "other"]

    async def test_unknown_roles_are_ignored(self, client, keys):
        """A role Proctor does not know grants nothing (and does not break the token)."""
        token = keys.token(roles=["superuser", "auditor"])

        resp = await client.get("/v1/audit/keys", headers=_auth(token))

        assert resp.status_code == 200

    async def test_a_token_without_roles_is_authenticated_but_may_do_nothing(self, client, keys):
        """No roles: 403, not 401."""
        resp = await client.get("/v1/audit/keys", headers=_auth(keys.token(roles=[])))

        assert resp.status_code == 403


class TestInvalid:
    @pytest.mark.parametrize(
        "make",
        [
            pytest.param(lambda k: k.token(exp=_now() - 120), id="expired"),
            pytest.param(lambda k: k.token(aud="another-api"), id="wrong-audience"),
            pytest.param(lambda k: k.token(iss="https://evil.test"), id="wrong-issuer"),
            pytest.param(lambda k: k.token(key=k.other), id="wrong-key-same-kid"),
            pytest.param(lambda k: k.token(kid="nope"), id="unknown-kid"),
            pytest.param(lambda k: k.token(exp=None), id="no-exp"),
            pytest.param(lambda k: k.token(sub=None), id="no-sub"),
            pytest.param(lambda k: k.token(nbf=_now() + 600), id="not-yet-valid"),
            pytest.param(
                lambda k: jwt.encode(
                    {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": _now() + 60},
                    "a-shared-secret-that-is-long-enough-for-hs256",
                    algorithm="HS256",
                    headers={"kid": "rsa-1"},
                ),
                id="hs256",
            ),
            pytest.param(lambda k: k.token().rsplit(".", 1)[0] + ".", id="unsigned"),
            pytest.param(lambda k: "a.b.c", id="garbage"),
        ],
    )
    async def test_is_401(self, client, keys, make):
        """Expired, for another audience or issuer, signed by another key, HS256: 401."""
        resp = await client.get("/v1/audit/keys", headers=_auth(make(keys)))

        assert resp.status_code == 401
        assert resp.json()["code"] == "unauthenticated"

    async def test_api_tokens_still_work_next_to_jwt(self, client):
        """With JWT configured, API tokens keep working."""
        from proctor.app.tokens import TokenService

        p = client.proctor
        token = TokenService(p.gateway.store, p.gateway.clock).create(name="x", roles=["admin"])

        resp = await client.get("/v1/audit/keys", headers=_auth(token.token))

        assert resp.status_code == 200


class _Jwks(BaseHTTPRequestHandler):
    body = b"{}"
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(type(self).body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def jwks_server(keys: Keys) -> Iterator[tuple[str, type[_Jwks]]]:
    """A JWKS endpoint on 127.0.0.1 (a free port) whose body the test can change."""
    handler = type("Jwks", (_Jwks,), {"body": json.dumps(keys.jwks()).encode(), "hits": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", handler
    finally:
        server.shutdown()
        server.server_close()


class TestJwksUrl:
    async def test_fetches_the_key_set_and_follows_a_rotation(self, keys, jwks_server):
        """Keys come from the URL; a new kid triggers one refetch, and then verifies."""
        url, handler = jwks_server
        settings = HttpSettings(
            jwt=JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks_url=url, refresh_seconds=0)
        )
        app = create_app(Proctor.in_memory(clock=FrozenClock()), settings=settings)
        rotated = keys.token(kid="rsa-2", key=keys.other)
        transport = httpx.ASGITransport(app=app)

        async with httpx.AsyncClient(transport=transport, base_url="http://p") as c:
            first = await c.get("/v1/audit/keys", headers=_auth(keys.token()))
            before = await c.get("/v1/audit/keys", headers=_auth(rotated))
            handler.body = json.dumps(keys.jwks(with_other=True)).encode()
            after = await c.get("/v1/audit/keys", headers=_auth(rotated))

        assert first.status_code == 200
        assert before.status_code == 401
        assert after.status_code == 200
        assert handler.hits >= 2

    async def test_unknown_kids_do_not_hammer_the_provider(self, keys, jwks_server):
        """Within refresh_seconds, random kids cause no refetch."""
        url, handler = jwks_server
        settings = HttpSettings(
            auth_failures_per_minute=1000,
            jwt=JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks_url=url, refresh_seconds=60),
        )
        app = create_app(Proctor.in_memory(clock=FrozenClock()), settings=settings)
        transport = httpx.ASGITransport(app=app)

        async with httpx.AsyncClient(transport=transport, base_url="http://p") as c:
            for i in range(10):
                resp = await c.get("/v1/audit/keys", headers=_auth(keys.token(kid=f"k{i}")))
                assert resp.status_code == 401

        assert handler.hits == 1  # the start-up fetch only


class TestSettings:
    def test_an_unreadable_jwks_file_fails_at_start(self, tmp_path):
        """create_app refuses a JWKS file that is missing, naming the config key."""
        settings = HttpSettings(
            jwt=JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=tmp_path / "none.json")
        )

        with pytest.raises(ConfigError) as exc:
            create_app(Proctor.in_memory(clock=FrozenClock()), settings=settings)

        assert exc.value.field == "auth.jwt"

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"issuer": ISSUER, "audience": AUDIENCE},
            {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks_file": Path("a"),
                "jwks_url": "http://x",
            },
            {"issuer": "", "audience": AUDIENCE, "jwks_url": "http://x"},
            {"issuer": ISSUER, "audience": "", "jwks_url": "http://x"},
            {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks_url": "http://x",
                "algorithms": ("HS256",),
            },
        ],
    )
    def test_unsafe_or_incomplete_settings_are_refused(self, kwargs):
        """One JWKS source, an issuer and an audience, asymmetric algorithms only."""
        with pytest.raises(ConfigError):
            JwtSettings(**kwargs)
