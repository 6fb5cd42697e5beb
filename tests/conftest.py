"""Shared fixtures: a clean environment for every test."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

# Read before ``clean_environ`` removes PROCTOR_* from each test's environment.
POSTGRES_URL = os.environ.get(
    "PROCTOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL store URL on a schema of this test alone (dropped afterwards).

    The server is ``PROCTOR_TEST_POSTGRES_URL`` (default the local one CI starts).
    """
    psycopg = pytest.importorskip(
        "psycopg", reason="psycopg is not installed: pip install -e '.[postgres]'"
    )
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server at {POSTGRES_URL}: {exc}")
    schema = "t_" + secrets.token_hex(6)
    admin.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove PROCTOR_* variables so a developer's shell cannot change test results."""
    for key in list(os.environ):
        if key.startswith("PROCTOR_"):
            monkeypatch.delenv(key)


_SKIPPED: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember every skipped test (xfails excluded) for the CI check below."""
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPPED.append(f"{report.nodeid}: {reason}")


def _on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say why a CI run with skipped tests fails."""
    if _on_ci() and _SKIPPED:
        terminalreporter.write_line("CI does not allow skipped tests; these skipped:", red=True)
        for line in _SKIPPED:
            terminalreporter.write_line(f"  {line}", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """On CI (CI=true) a skipped test is a failure: every service a test needs must be there."""
    if _on_ci() and _SKIPPED:
        session.exitstatus = 1
