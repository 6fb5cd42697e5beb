"""Reading ``Authorization: Bearer`` credentials the way FastAPI's ``HTTPBearer`` does."""

from __future__ import annotations

import pytest
from fastapi.security.utils import get_authorization_scheme_param

from proctor.http.auth import bearer_token


class TestBearerToken:
    def test_no_header_is_none(self):
        """A missing or empty header has no credentials."""
        assert bearer_token(None) is None
        assert bearer_token("") is None

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("Bearer prt_abc", "prt_abc"),
            ("bearer prt_abc", "prt_abc"),
            ("BEARER  prt_abc ", "prt_abc"),
            ("Bearer", None),
            ("Bearer ", None),
            ("Basic Ym90Og==", None),
            (" Bearer prt_abc", None),
            ("Token prt_abc", None),
        ],
    )
    def test_agrees_with_httpbearer(self, value, expected):
        """The scheme is matched case-insensitively and the credentials are stripped."""
        scheme, credentials = get_authorization_scheme_param(value)
        fastapi = credentials if scheme.lower() == "bearer" and credentials else None

        assert bearer_token(value) == expected == fastapi
