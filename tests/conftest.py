"""Shared fixtures: a clean environment for every test."""

from __future__ import annotations

import os

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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """On CI (CI=true) a skipped test is a failure: every service a test needs must be there."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") and _SKIPPED:
        print("\nCI does not allow skipped tests; these skipped:")
        for line in _SKIPPED:
            print(f"  {line}")
        session.exitstatus = 1
