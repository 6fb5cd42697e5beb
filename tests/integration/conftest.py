"""Fixtures for the CLI tests: the installed ``proctor`` script and initialised homes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True)
class CliResult:
    """One finished ``proctor`` run."""

    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def json(self) -> Any:
        """Parse stdout as one JSON document, with the run in the message if it is not."""
        try:
            return json.loads(self.out)
        except json.JSONDecodeError as exc:
            raise AssertionError(
                f"stdout of proctor {' '.join(self.args)} is not JSON ({exc}):\n"
                f"--- stdout\n{self.out}\n--- stderr\n{self.err}"
            ) from exc

    def error(self) -> dict[str, Any]:
        """Return the ``error`` object printed with ``--json`` on a failure."""
        doc = self.json()
        assert isinstance(doc, dict) and "error" in doc, doc
        return doc["error"]

    def __str__(self) -> str:
        return (
            f"proctor {' '.join(self.args)} -> exit {self.code}\n"
            f"--- stdout\n{self.out}\n--- stderr\n{self.err}"
        )


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the environment without PROCTOR_* and with a wide, colourless terminal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCTOR_")}
    env.update({"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb", "PYTHONUTF8": "1"})
    if extra:
        env.update(extra)
    return env


class Cli:
    """Runs the installed console script as a subprocess."""

    def __init__(self, exe: str, cwd: Path) -> None:
        self.exe = exe
        self.cwd = cwd

    def __call__(
        self,
        *args: str | Path,
        home: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 60,
    ) -> CliResult:
        """Run ``proctor ARGS [--home HOME]`` and return its exit code and output."""
        argv = [str(a) for a in args]
        if home is not None:
            argv += ["--home", str(home)]
        proc = subprocess.run(
            [self.exe, *argv],
            capture_output=True,
            text=True,
            env=clean_env(env),
            cwd=cwd or self.cwd,
            timeout=timeout,
            check=False,
        )
        return CliResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def proctor_exe() -> str:
    """The path of the installed ``proctor`` console script (skip when it is absent).

    The script next to this interpreter comes first: a venv's bin/ need not be on PATH.
    """
    beside = Path(sys.executable).parent / "proctor"
    exe = str(beside) if beside.is_file() else shutil.which("proctor")
    if exe is None:
        pytest.skip("the `proctor` console script is not on PATH: `pip install -e .` in a venv")
    return exe


@pytest.fixture(scope="session")
def cli(proctor_exe: str, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """A runner for the installed CLI, in an empty working directory."""
    return Cli(proctor_exe, tmp_path_factory.mktemp("cwd"))


def _init(cli: Cli, home: Path) -> Path:
    result = cli("init", home=home)
    assert result.code == 0, str(result)
    return home


@pytest.fixture(scope="class")
def shared_home(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised instance shared by the tests of one class (they must not interfere)."""
    return _init(cli, tmp_path_factory.mktemp("home") / "instance")


@pytest.fixture
def fresh_home(cli: Cli, tmp_path: Path) -> Path:
    """An initialised instance of this test alone."""
    return _init(cli, tmp_path / "instance")


# ---------------------------------------------------------------------------- moto (S3, KMS)


@pytest.fixture(scope="module")
def endpoint() -> Any:
    """A moto server (S3, KMS) on a free port of 127.0.0.1, for one test module."""
    moto_server = pytest.importorskip(
        "moto.server", reason="moto's server mode is not installed: pip install 'moto[server]'"
    )
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials, and nothing from the host's AWS config or instance metadata."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
