"""The HTTP service's settings from config.toml (``[auth.jwt]``)."""

from __future__ import annotations

import pytest

from proctor.errors import ConfigError
from proctor.http.settings import HttpSettings, load_http_settings


def _home(tmp_path, text: str):
    (tmp_path / "config.toml").write_text(text)
    return tmp_path


class TestLoad:
    def test_no_auth_table_means_api_tokens_only(self, tmp_path):
        """Without [auth.jwt] the defaults apply and JWT is off."""
        assert load_http_settings(_home(tmp_path, "[instance]\nid = 'x'\n")) == HttpSettings()

    def test_a_jwks_file_is_relative_to_the_home(self, tmp_path):
        """jwks_file, issuer, audience and claim names are read; the path is home-relative."""
        home = _home(
            tmp_path,
            """
[auth.jwt]
jwks_file = "jwks.json"
issuer = "https://idp.test"
audience = "proctor"
roles_claim = "proctor_roles"
""",
        )

        jwt = load_http_settings(home).jwt

        assert jwt is not None
        assert jwt.jwks_file == home / "jwks.json"
        assert (jwt.issuer, jwt.audience, jwt.roles_claim) == (
            "https://idp.test",
            "proctor",
            "proctor_roles",
        )
        assert (jwt.name_claim, jwt.groups_claim) == ("sub", "groups")

    @pytest.mark.parametrize(
        ("text", "field"),
        [
            (
                "[auth.jwt]\njwks_url = 'http://x'\nissuer = 'i'\naudience = 'a'\nsurprise = 1\n",
                "auth.jwt.surprise",
            ),
            ("[auth.jwt]\njwks_url = 1\nissuer = 'i'\naudience = 'a'\n", "auth.jwt.jwks_url"),
            (
                "[auth.jwt]\njwks_url = 'http://x'\nissuer = 'i'\naudience = 'a'\n"
                "leeway_seconds = 5.5\n",
                "auth.jwt.leeway_seconds",
            ),
            (
                "[auth.jwt]\njwks_url = 'http://x'\nissuer = 'i'\naudience = 'a'\n"
                "algorithms = 'RS256'\n",
                "auth.jwt.algorithms",
            ),
            ("[auth.jwt]\njwks_url = 'http://x'\naudience = 'a'\n", "auth.jwt.audience"),
            ("[auth.jwt]\nissuer = 'i'\naudience = 'a'\n", "auth.jwt"),
            ("[auth]\njwt = 3\n", "auth.jwt"),
            ("auth = 3\n", "auth"),
            ("[auth\n", "config.toml"),
        ],
    )
    def test_bad_tables_name_the_key(self, tmp_path, text, field):
        """Unknown keys, wrong types, missing issuer/audience or source: ConfigError."""
        with pytest.raises(ConfigError) as exc:
            load_http_settings(_home(tmp_path, text))

        assert exc.value.field == field

    @pytest.mark.parametrize(
        ("key", "meant"),
        [("issuerr", "issuer"), ("audiance", "audience"), ("jwks_uri", "jwks_url")],
    )
    def test_a_misspelt_key_suggests_the_known_one(self, tmp_path, key, meant):
        """As in every other section of config.toml: the key, the file and what was meant."""
        text = f"[auth.jwt]\njwks_url = 'http://x'\nissuer = 'i'\naudience = 'a'\n{key} = 'v'\n"
        with pytest.raises(ConfigError) as exc:
            load_http_settings(_home(tmp_path, text))

        assert exc.value.field == f"auth.jwt.{key}"
        assert exc.value.hint == f"Did you mean {meant!r}?"
        assert "[auth.jwt]" in exc.value.message
        assert str(tmp_path / "config.toml") in exc.value.message

    def test_a_missing_config_is_a_config_error(self, tmp_path):
        """No config.toml: ConfigError."""
        with pytest.raises(ConfigError):
            load_http_settings(tmp_path)
