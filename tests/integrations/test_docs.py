"""The documentation's samples run as written: the quickstart (its shell commands, its first
governed tool call and its service client) and the four integration tutorials, each in a
fresh directory, as a reader would run them."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from proctor.testing import free_port, wait_until_serving

from .conftest import POLICY

DOCS = Path(__file__).resolve().parents[2] / "docs"
VENV_BIN = Path(sys.executable).parent


def blocks(doc: str, lang: str, *, section: str | None = None) -> list[str]:
    """The fenced ``lang`` blocks of ``doc`` (of one ``## section`` only, if given)."""
    text = (DOCS / doc).read_text()
    if section is not None:
        start = text.index(f"\n## {section}")
        end = text.find("\n## ", start + 4)
        text = text[start : end if end != -1 else None]
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def reader_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A reader's shell: no PROCTOR_* of ours, the venv as ``.venv`` of the working dir."""
    if not (VENV_BIN / "proctor").is_file():
        pytest.skip("not run from a venv with the `proctor` script: `pip install -e .`")
    (tmp_path / ".venv").symlink_to(VENV_BIN.parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCTOR_")}
    return env | {"NO_COLOR": "1", "COLUMNS": "200", **extra}


def run_python(tmp_path: Path, name: str, code: str, env: dict[str, str] | None = None) -> str:
    path = tmp_path / name
    path.write_text(code)
    done = subprocess.run(
        [sys.executable, str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def run_sh(tmp_path: Path, script: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


# --------------------------------------------------------------------------- quickstart


@pytest.mark.cli
@pytest.mark.slow
def test_quickstart_first_governed_plan(tmp_path):
    """The CLI walk-through: init, submit (awaiting finance), enrol, approve with a TOTP code,
    show, explain, verify — every command exits 0 and says what the text says."""
    env = reader_env(tmp_path)
    script = "\n".join(blocks("quickstart.md", "sh", section="A first governed plan (CLI)"))

    out = run_sh(tmp_path, script, env)

    assert "trip-001  status awaiting_approval  outcome approve" in out
    assert "waiting for 1 approval(s) from finance with step-up (TOTP)" in out
    assert "trip-001  status succeeded" in out
    assert "trip-001: approve (succeeded)" in out  # policy explain
    assert "intact" in out  # audit verify


def test_quickstart_first_governed_tool_call(tmp_path):
    """The decorator sample: executes, then waits for finance, then returns the result."""
    (code,) = blocks("quickstart.md", "python", section="A first governed tool call (Python)")

    out = run_python(tmp_path, "first_call.py", code)

    assert "{'refunded': 1500, 'customer': 'c1'}" in out
    assert "{'refunded': 90000, 'customer': 'c2'}" in out


@pytest.mark.cli
@pytest.mark.server
@pytest.mark.slow
def test_quickstart_as_a_service(tmp_path):
    """Tokens, `proctor serve &` and the client sample: the agent's search runs at once."""
    port = free_port()
    env = reader_env(tmp_path, PROCTOR_PORT=str(port), PROCTOR_SERVER=f"http://127.0.0.1:{port}")
    env["PROCTOR_HOME"] = str(tmp_path / ".proctor")
    run_sh(tmp_path, ".venv/bin/proctor init", env)
    (shell,) = blocks("quickstart.md", "sh", section="As a service")
    (client,) = blocks("quickstart.md", "python", section="As a service")
    # The reader's shell keeps PROCTOR_TOKEN for the agent; so does this one.
    script = shell + '\nprintf "%s" "$PROCTOR_TOKEN" > token.txt\n'
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # `serve &` stays in this process group: killed below
        )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}", path="/readyz", output=log.read_text)
        token = (tmp_path / "token.txt").read_text()

        out = run_python(tmp_path, "agent.py", client, env | {"PROCTOR_TOKEN": token})
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)

    assert out.split()[1] == "succeeded", out


# --------------------------------------------------------------------------- integrations


@pytest.fixture
def refunds_dir(tmp_path) -> Path:
    """The tutorial's ``refunds/policy.rego``, written from the doc."""
    (rego,) = [b for b in blocks("integrations.md", "rego") if b.startswith("# refunds/")]
    (tmp_path / "refunds").mkdir()
    (tmp_path / "refunds" / "policy.rego").write_text(rego)
    return tmp_path


def test_the_tutorial_policy_is_the_test_suite_policy():
    """The policy the tutorials show is the one the integration tests run against."""
    (rego,) = [b for b in blocks("integrations.md", "rego") if b.startswith("# refunds/")]
    shown = rego[rego.index("package proctor") :]
    tested = (POLICY / "policy.rego").read_text()

    assert shown == tested[tested.index("package proctor") :]


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        pytest.param(
            "Tutorial: a plain decorator (any Python function)",
            [
                "{'refunded': 50, 'customer': 'c1'}",
                "refunds of 10000 or more are not allowed",
                "{'refunded': 500, 'customer': 'c2'}",
            ],
            id="decorator",
        ),
        pytest.param(
            "Tutorial: LangGraph / LangChain",
            [
                "awaiting_approval ['finance']",
                "{'customer': 'c2', 'refunded': 500}",
                "The refund is done.",
            ],
            id="langgraph",
            marks=pytest.mark.skipif(
                not __import__("importlib").util.find_spec("langgraph"), reason="no langgraph"
            ),
        ),
        pytest.param(
            "Tutorial: OpenAI Agents SDK",
            ["awaiting_approval", "The refund is done."],
            id="openai-agents",
            marks=pytest.mark.skipif(
                not __import__("importlib").util.find_spec("agents"), reason="no openai-agents"
            ),
        ),
        pytest.param(
            "Tutorial: pydantic-ai",
            ["awaiting_approval ['finance']", 'Done: {"refunded":500,"customer":"c2"}'],
            id="pydantic-ai",
            marks=pytest.mark.skipif(
                not __import__("importlib").util.find_spec("pydantic_ai"), reason="no pydantic-ai"
            ),
        ),
    ],
)
def test_integration_tutorial_runs(refunds_dir, section, expected):
    """Each tutorial is a complete program: it runs offline and prints what it says."""
    (code,) = blocks("integrations.md", "python", section=section)

    out = run_python(refunds_dir, "tutorial.py", code)

    for text in expected:
        assert text in out, out


def test_readme_library_sample(tmp_path):
    """README's "As a library" sample runs: a pii change waits for hr, then succeeds."""
    readme = (DOCS.parent / "README.md").read_text()
    section = readme[readme.index("## As a library") :]
    code = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]

    out = run_python(tmp_path, "library.py", code)

    assert out.split() == ["awaiting_approval", "succeeded"]


# --------------------------------------------------------------------------- audit


def test_independent_export_check(tmp_path):
    """docs/audit.md's stand-alone script verifies a real export, and stops on a forged byte
    and on a removed event."""
    from proctor import Proctor
    from proctor.policy import RegoPolicyEngine

    (script,) = [b for b in blocks("audit.md", "python") if b.startswith('"""Check a Proctor')]
    with Proctor.in_memory(policy=RegoPolicyEngine.from_directory(POLICY)) as p:
        p.action(
            "refund",
            category="financial",
            baselines={"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1},
        )(lambda params, call: {"ok": True})
        for amount in (10, 20, 500):
            p.submit(
                {
                    "actor": {
                        "type": "agent",
                        "name": "bot",
                        "model_version": "m",
                        "agent_id": "bot",
                    },
                    "on_behalf_of": "alice",
                    "intent": "refund",
                    "steps": [{"id": "s1", "action": "refund", "params": {"amount": amount}}],
                }
            )
        p.checkpoint()
        p.export(tmp_path / "export")
    (tmp_path / "verify_export.py").write_text(script)

    def check(bundle: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "verify_export.py", str(bundle)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    ok = check(tmp_path / "export")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok: ")

    (segment,) = (tmp_path / "export" / "events").iterdir()
    lines = segment.read_bytes().splitlines(keepends=True)
    segment.write_bytes(b"".join(lines).replace(b'"amount":500', b'"amount":900'))
    forged = check(tmp_path / "export")
    segment.write_bytes(b"".join(lines[:3] + lines[4:]))
    deleted = check(tmp_path / "export")

    assert forged.returncode != 0 and "InvalidSignature" in forged.stderr
    assert deleted.returncode != 0 and "found seq 4" in deleted.stderr


def test_independent_export_check_of_key_changes(tmp_path):
    """docs/audit.md's stand-alone script accepts a key change a keys.rotated event records
    and stops on one nothing records, as `audit verify` does (unrecorded_rotation)."""
    from datetime import UTC, datetime

    from proctor.audit.events import GENESIS, seal
    from proctor.audit.export import export_log
    from proctor.audit.keys import KeyEntry, LocalSigner
    from proctor.storage.memory import MemoryStore

    (script,) = [b for b in blocks("audit.md", "python") if b.startswith('"""Check a Proctor')]
    (tmp_path / "verify_export.py").write_text(script)
    old, new = LocalSigner.generate(), LocalSigner.generate()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    keys = [KeyEntry(key_id=s.key_id, public_key=s.public_key, created_at=at) for s in (old, new)]
    rotated = {"key_id": new.key_id, "previous": old.key_id}

    def check(
        name: str, events: list[tuple[LocalSigner, str, dict]]
    ) -> subprocess.CompletedProcess[str]:
        rows, prev = [], GENESIS
        for seq, (signer, type_, data) in enumerate(events):
            body = {"type": type_, "timestamp": at.isoformat(), "plan_id": None, "data": data}
            rows.append(seal(body, seq=seq, prev_hash=prev, signer=signer))
            prev = rows[-1].hash
        store = MemoryStore()
        with store.transaction() as tx:
            tx.append_events(rows)
        export_log(store, keys=keys, origin="example.com/test", directory=tmp_path / name)
        return subprocess.run(
            [sys.executable, "verify_export.py", name],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    recorded = check(
        "recorded",
        [(old, "test.event", {}), (old, "keys.rotated", rotated), (new, "test.event", {})],
    )
    unrecorded = check("unrecorded", [(old, "test.event", {}), (new, "test.event", {})])

    assert recorded.returncode == 0, recorded.stderr
    assert unrecorded.returncode != 0 and "event 1: key change not recorded" in unrecorded.stderr


# --------------------------------------------------------------------------- operations


@pytest.mark.cli
@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("sqlite3"), reason="the sqlite3 shell is not installed")
def test_operations_backup_and_restore(tmp_path):
    """docs/operations.md's online backup (sqlite3 .backup plus the home's files) writes
    copies only their owner can read, and restored into a new home passes `proctor db
    status` and `proctor audit verify`."""
    env = reader_env(tmp_path)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    plan = {
        "actor": {"type": "agent", "name": "bot", "model_version": "m", "agent_id": "bot"},
        "on_behalf_of": "alice",
        "intent": "find flights",
        "steps": [
            {
                "id": "s1",
                "action": "travel.search",
                "params": {"destination": "Porto", "date": "2027-04-02"},
            }
        ],
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    env["PROCTOR_HOME"] = str(tmp_path / ".proctor")
    run_sh(tmp_path, "proctor init && proctor submit plan.json", env)
    (taking, restoring) = blocks("operations.md", "sh", section="Backups")
    backups = tmp_path / "backups"
    backups.mkdir()
    run_sh(tmp_path, taking.replace("/backups", str(backups)), env)
    (db,) = backups.glob("proctor-*.db")
    (home_tgz,) = backups.glob("proctor-home-*.tgz")
    # The copies hold TOTP secrets and the private keys: the recipe keeps them private.
    assert {oct(f.stat().st_mode & 0o777) for f in (db, home_tgz)} == {"0o600"}
    restored = tmp_path / "restored"
    restored.mkdir()
    run_sh(tmp_path, f"tar xzf {home_tgz} -C {restored} && cp {db} {restored}/proctor.db", env)

    out = run_sh(tmp_path, restoring, env | {"PROCTOR_HOME": str(restored)})

    assert "up to date" in out
    verified = re.search(r"ok: (\d+) events verified \(full\), intact", out)
    assert verified and int(verified.group(1)) > 5, out  # the plan's events came back
