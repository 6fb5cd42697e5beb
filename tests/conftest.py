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
