"""Shared fixtures: a clean environment for every test."""

from __future__ import annotations

import os
from typing import Any

import pytest


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
