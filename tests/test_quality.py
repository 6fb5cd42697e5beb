"""Static checks run as tests: ruff, mypy (strict) and the import-linter layering contract."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: install the dev extra (pip install -e '.[dev]')")
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


class TestQuality:
    def test_ruff_lint(self):
        """ruff finds no lint errors in src, tests and bench."""
        r = _run(_tool("ruff"), "check", "src", "tests", "bench")
        assert r.returncode == 0, r.stdout + r.stderr

    def test_ruff_format(self):
        """The code is ruff-formatted."""
        r = _run(_tool("ruff"), "format", "--check", "src", "tests", "bench")
        assert r.returncode == 0, r.stdout + r.stderr

    def test_mypy_strict(self):
        """mypy --strict passes on src/proctor."""
        r = _run(_tool("mypy"))
        assert r.returncode == 0, r.stdout + r.stderr

    def test_import_layers(self):
        """The core is pure, the app imports no adapter, adapters are independent."""
        r = _run(_tool("lint-imports"))
        assert r.returncode == 0, r.stdout + r.stderr
