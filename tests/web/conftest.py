"""Fixtures for the console's browser tests: a real ``proctor serve`` and one Chromium.

The server is the installed ``proctor`` script in a subprocess on a free 127.0.0.1 port, over
an instance home made by ``proctor init``; tokens come from ``proctor tokens create``. The
browser is Debian's Chromium driven by Playwright (never ``playwright install``): one browser
for the whole session, one context (its own cookies) per person.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from proctor.testing import free_port, stop_process, wait_until_serving

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCTOR_")}
    return env | {"NO_COLOR": "1", "TERM": "dumb", "PYTHONUTF8": "1"}


def _exe() -> str:
    beside = Path(sys.executable).parent / "proctor"
    exe = str(beside) if beside.is_file() else shutil.which("proctor")
    if exe is None:
        pytest.skip("the `proctor` console script is not on PATH: `pip install -e .` in a venv")
    return exe


def _run(exe: str, home: Path, *args: str) -> Any:
    proc = subprocess.run(
        [exe, *args, "--home", str(home), "--json"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"proctor {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


@dataclass
class Server:
    """A running ``proctor serve`` with the tokens of its people."""

    url: str
    home: Path
    exe: str
    tokens: dict[str, str] = field(default_factory=dict)
    totp_secret: str = ""
    _n: int = 0

    def submit(
        self, *steps: tuple[str, dict[str, Any]], user: str = "alice", **fields: Any
    ) -> dict[str, Any]:
        """Submit a plan as the agent ``bot`` through the API; return the plan JSON.

        ``fields`` replace the manifest's own (``plan_id``, ``intent``, ``actor`` …).
        """
        self._n += 1
        manifest = {
            "actor": {
                "type": "agent",
                "name": "travel-bot",
                "model_version": "gpt-x-2026-10",
                "agent_id": "bot",
            },
            "on_behalf_of": user,
            "intent": f"console test plan {self._n}",
            "reasoning": "the cheapest option that meets the request",
            "steps": [
                {"id": f"s{i + 1}", "action": a, "params": p} for i, (a, p) in enumerate(steps)
            ],
        } | fields
        r = httpx.post(
            f"{self.url}/v1/plans",
            json=manifest,
            headers={"Authorization": f"Bearer {self.tokens['bot']}"},
            timeout=30,
        )
        assert r.status_code == 201, r.text
        return r.json()

    def events(self, *, plan_id: str | None = None, type_: str = "") -> list[dict[str, Any]]:
        """The audit log's events (of one plan, of types starting ``type_``), as the admin."""
        out: list[dict[str, Any]] = []
        after = -1
        while True:
            r = httpx.get(
                f"{self.url}/v1/audit/events",
                params={"after": after, "limit": 1000},
                headers={"Authorization": f"Bearer {self.tokens['root']}"},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            doc = r.json()
            out += [
                e
                for e in doc["events"]
                if e["type"].startswith(type_) and plan_id in (None, e["plan_id"])
            ]
            if doc["next_after"] is None:
                return out
            after = doc["next_after"]

    def plan(self, plan_id: str) -> dict[str, Any]:
        """Read a plan through the API as the admin."""
        r = httpx.get(
            f"{self.url}/v1/plans/{plan_id}",
            headers={"Authorization": f"Bearer {self.tokens['root']}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``proctor init`` + tokens + ``proctor serve`` on a free port, for the whole session."""
    exe = _exe()
    home = tmp_path_factory.mktemp("console") / "home"
    _run(exe, home, "init")
    config = home / "config.toml"
    # Sign a checkpoint every few events, so the audit page has one to verify.
    config.write_text(config.read_text().replace("checkpoint_every = 1000", "checkpoint_every = 5"))
    # Only the tests' own toggles open breakers: the tests share this server in random order,
    # and one test's 640,000 payment after others' small ones is a "cost spike" that would
    # otherwise open the agent's breaker (and send the next test's plans to an approver).
    with config.open("a") as f:
        f.write("\n[guards.breaker]\ncost_spike = 1e9\n\n[guards.anomaly]\ncost_factor = 1e9\n")
    people = {
        "bot": ["--role", "agent"],
        "alice": ["--role", "user"],
        "fiona": ["--role", "approver", "--groups", "finance,sre"],
        "root": ["--role", "admin"],
        "audrey": ["--role", "auditor"],
    }
    tokens = {
        name: _run(exe, home, "tokens", "create", "--name", name, *args)["token"]
        for name, args in people.items()
    }
    secret = _run(exe, home, "totp", "enrol", "--as", "fiona")["secret"]
    port = free_port()
    logs = tmp_path_factory.mktemp("serve")
    with (logs / "out").open("wb") as out, (logs / "err").open("wb") as err:
        proc = subprocess.Popen(
            [exe, "serve", "--home", str(home), "--port", str(port), "--no-access-log"],
            stdout=out,
            stderr=err,
            env=_env(),
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, proc=proc, output=(logs / "err").read_text)
        yield Server(url=url, home=home, exe=exe, tokens=tokens, totp_secret=secret)
    finally:
        stop_process(proc)
        errors = (logs / "err").read_text()
        assert "Traceback" not in errors, errors


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, for one module.

    Not for the session: Playwright's sync API keeps an event loop running in the main
    thread while it is open, and the anyio tests of other modules would then fail to start
    theirs (seen with pytest-randomly's module order).
    """
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'"
    )
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            yield b
        finally:
            b.close()
