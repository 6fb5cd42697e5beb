"""PostgreSQL for the contract tests: a fresh schema per test on the server of
``PROCTOR_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from urllib.parse import quote

import pytest

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_base_url() -> str:
    """The server the PostgreSQL tests use."""
    return os.environ.get("PROCTOR_TEST_POSTGRES_URL", DEFAULT_URL)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A store URL on a schema of this test alone (dropped afterwards)."""
    psycopg = pytest.importorskip(
        "psycopg", reason="psycopg is not installed: pip install -e '.[postgres]'"
    )
    base = postgres_base_url()
    try:
        admin = psycopg.connect(base, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server at {base}: {exc}")
    schema = "t_" + secrets.token_hex(6)
    admin.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()
