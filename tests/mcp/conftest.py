"""Fixtures for the MCP proxy tests: the npm servers, the ``proctor`` script, a governed home.

The third-party servers (``@modelcontextprotocol/server-filesystem`` and ``server-everything``,
pinned in ``npm/package.json`` and ``npm/package-lock.json``) are installed once with
``npm ci`` into ``$XDG_CACHE_HOME/proctor-tests/mcp-npm-<lock hash>`` (``~/.cache`` by
default); the tests skip only when npm itself is missing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proctor.testing import free_port

HERE = Path(__file__).parent
EXAMPLES = HERE.parent.parent / "src" / "proctor" / "mcp" / "examples"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCTOR_")}
    env.update(extra)
    return env


@dataclass(frozen=True)
class Servers:
    filesystem: Path
    everything: Path


@pytest.fixture(scope="session")
def npm_servers() -> Servers:
    """The npm servers, installed once per lock file (skip only where npm is missing)."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("npm/node are not installed: the MCP tests need Node.js and npm")
    lock = (HERE / "npm" / "package-lock.json").read_bytes()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "proctor-tests"
    target = base / f"mcp-npm-{hashlib.sha256(lock).hexdigest()[:16]}"
    modules = target / "node_modules" / "@modelcontextprotocol"
    fs = modules / "server-filesystem" / "dist" / "index.js"
    everything = modules / "server-everything" / "dist" / "index.js"
    target.mkdir(parents=True, exist_ok=True)
    # pytest-xdist runs this fixture once per worker: one installs, the others wait for it
    # (``npm ci`` starts by deleting node_modules, under a worker already using it).
    with (target.parent / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (fs.is_file() and everything.is_file()):
            shutil.copy(HERE / "npm" / "package.json", target / "package.json")
            shutil.copy(HERE / "npm" / "package-lock.json", target / "package-lock.json")
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=target,
                check=True,
                timeout=900,
            )
    return Servers(filesystem=fs, everything=everything)


@pytest.fixture(scope="session")
def proctor_exe() -> str:
    beside = Path(sys.executable).parent / "proctor"
    exe = str(beside) if beside.is_file() else shutil.which("proctor")
    if exe is None:
        pytest.skip("the `proctor` console script is not installed: `pip install -e .`")
    return exe


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture(scope="session")
def cli(proctor_exe: str):
    def run(*args: str | Path, home: Path | None = None, timeout: float = 90) -> Run:
        argv = [proctor_exe, *map(str, args)]
        if home is not None:
            argv += ["--home", str(home)]
        p = subprocess.run(argv, capture_output=True, text=True, env=clean_env(), timeout=timeout)
        return Run(p.returncode, p.stdout, p.stderr)

    return run


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    root = tmp_path / "allowed"
    root.mkdir()
    (root / "notes.txt").write_text("hello from the allowed root\n")
    return root


@pytest.fixture
def home(cli, tmp_path: Path, roots: Path) -> Path:
    """A home governed by the example MCP catalog and policy (docs/mcp.md)."""
    h = tmp_path / "home"
    r = cli("init", home=h)
    assert r.code == 0, r.err
    shutil.copy(EXAMPLES / "mcp_catalog.toml", h / "catalog.toml")
    for rego in (h / "policy").glob("*.rego"):
        rego.unlink()
    shutil.copy(EXAMPLES / "mcp.rego", h / "policy" / "mcp.rego")
    data = {
        "mcp": {
            "roots": [str(roots)],
            "approver_roles": ["ops"],
            "execute": [
                "mcp.everything.get_sum",
                "mcp.everything.get_structured_content",
                "mcp.everything.toggle_simulated_logging",
                "mcp.everything.toggle_subscriber_updates",
                "mcp.everything.trigger_long_running_operation",
                "mcp.flaky.ok",
                "mcp.flaky.fail",
                "mcp.flaky.hang",
                "mcp.flaky.crash",
                "mcp.flaky.garbage",
                "mcp.flaky.malformed",
                "mcp.flaky.numbers",
                "mcp.flaky.slow",
            ],
            "confirm": ["mcp.everything.echo"],
        }
    }
    (h / "policy" / "data.json").write_text(json.dumps(data))
    return h


def write_config(home: Path, name: str, servers: dict[str, Any]) -> Path:
    path = home / name
    path.write_text(json.dumps({"mcpServers": servers}))
    return path


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, f"{what} exited with {proc.returncode}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.monotonic() < deadline, f"{what} did not listen on {port}"
        time.sleep(0.1)


@pytest.fixture
def spawn() -> Iterator[Any]:
    """Start background processes; all are stopped after the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            argv,
            env=env or clean_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(20)


def events(cli, home: Path) -> list[dict[str, Any]]:
    r = cli("audit", "events", "--json", "--limit", "10000", home=home)
    assert r.code == 0, r.err
    return list(r.json()["events"])


@pytest.fixture(scope="session")
def kit() -> Any:
    """The helpers above, for the test modules (they cannot import this conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        write_config=write_config,
        free_port=free_port,
        wait_port=wait_port,
        events=events,
        clean_env=clean_env,
    )
