"""A key rotation killed with SIGKILL between the keyring write and its ``keys.rotated`` event.

Review repro k1: the keyring is written first (the new key current, the old one's private
file deleted) and cannot be rolled back with the event. Killed in between, ``proctor keys
rotate`` left a log whose events changed key with no ``keys.rotated`` event, and ``proctor
audit verify`` passed. Now the first append signed by the new key records the rotation, once,
whichever process makes it; and verify reports a key change the log does not record.

The child processes are the real CLI with one change, loaded before it: ``Journal.flush``
kills its own process (SIGKILL) right after appending a ``keys.rotated`` event, before the
transaction commits. That is the window: the keyring is rotated, the event never commits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

import proctor
from proctor import Proctor
from proctor.bootstrap import init_home
from proctor.testing import FrozenClock, make_plan

pytestmark = [pytest.mark.slow, pytest.mark.cli]

READ = ("travel.search", {"destination": "Lisbon", "date": "2027-01-01"})

# The CLI, killed when its keys.rotated event is appended but not committed.
_KILLED_AT_THE_EVENT = """
import os, signal, sys
from proctor.app import journal

_flush = journal.Journal.flush

def flush(self):
    rotating = any(b["type"] == "keys.rotated" for b in self._bodies)
    rows = _flush(self)
    if rotating:  # in the transaction, not committed; the keyring is already rotated
        os.kill(os.getpid(), signal.SIGKILL)
    return rows

journal.Journal.flush = flush
from proctor.cli import main
main(sys.argv[1:])
"""

# Opens the home when the go file appears, appends one plan, prints its signing key.
_APPENDER = """
import os, sys, time
from proctor import Proctor
from proctor.testing import make_plan

home, go, ready = sys.argv[1], sys.argv[2], sys.argv[3]
with Proctor.open(home) as p:
    open(ready, "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.001)
    p.submit(make_plan([("travel.search", {"destination": "Lisbon", "date": "2027-01-01"})]))
    print(p.gateway.signer.key_id)
"""


def _env() -> dict[str, str]:
    """The children import the proctor this test imported (a src checkout or installed)."""
    src = str(Path(proctor.__file__).parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def _killed(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _KILLED_AT_THE_EVENT, *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _events(home: Path) -> list[dict]:
    with Proctor.open(home) as p:
        return [orjson.loads(e.body) for e in p.events()]


def _home_with_a_plan(home: Path) -> str:
    init_home(home)
    with Proctor.open(home) as p:
        p.submit(make_plan([READ]))
        return p.gateway.signer.key_id


def _assert_killed_in_the_window(run: subprocess.CompletedProcess[str], home: Path, old: str):
    """Killed by its own SIGKILL, with the keyring rotated and no keys.rotated committed."""
    assert run.returncode == -signal.SIGKILL, (run.returncode, run.stderr)
    with Proctor.open(home) as p:
        keys = [e.key_id for e in p.keyring.entries()]
        assert keys[0] == old and len(keys) == 2
        assert not any(b'"keys.rotated"' in e.body for e in p.events())
        assert p.verify().ok  # no event of the new key yet: the log has not changed key


def test_the_next_append_records_a_rotation_killed_before_its_event(tmp_path, cli):
    """kill -9 of `proctor keys rotate` in the window, then a plan: its transaction starts
    with keys.rotated (on_first_use), and `proctor audit verify` passes."""
    home = tmp_path / "h"
    old = _home_with_a_plan(home)
    before = len(_events(home))

    run = _killed("keys", "rotate", "--home", str(home))
    _assert_killed_in_the_window(run, home, old)
    with Proctor.open(home) as p:
        new = p.keyring.entries()[-1].key_id
        p.submit(make_plan([READ]))
    events = _events(home)
    verify = cli("audit", "verify", "--json", home=home)

    assert [(e["type"], e["key_id"]) for e in events[before : before + 2]] == [
        ("keys.rotated", new),
        ("plan.submitted", new),
    ]
    assert events[before]["data"] == {"key_id": new, "previous": old, "on_first_use": True}
    assert [e["key_id"] for e in events[:before]] == [old] * before
    assert sum(e["type"] == "keys.rotated" for e in events) == 1
    assert verify.code == 0, str(verify)
    assert verify.json()["ok"] is True


def test_a_scheduled_rotation_killed_before_its_event_is_recorded_too(tmp_path):
    """The same window in a scheduled rotation (`rotate_every_days`, at open)."""
    home = tmp_path / "h"
    init_home(home, clock=FrozenClock(datetime(2020, 1, 1, tzinfo=UTC)))
    with Proctor.open(home) as p:
        p.submit(make_plan([READ]))  # the children use the real clock: the key is due
        old = p.gateway.signer.key_id
    cfg = home / "config.toml"
    cfg.write_text(cfg.read_text().replace("rotate_every_days = 0", "rotate_every_days = 1"))

    run = _killed("plans", "--home", str(home))
    _assert_killed_in_the_window(run, home, old)
    with Proctor.open(home) as p:  # the new key is not due: no second rotation
        p.submit(make_plan([READ]))
        rotated = [orjson.loads(e.body) for e in p.events() if b'"keys.rotated"' in e.body]
        report = p.verify()

    assert [r["data"]["on_first_use"] for r in rotated] == [True]
    assert report.ok, report


def test_processes_appending_after_the_kill_record_it_once(tmp_path):
    """Four processes append at once after the kill: the SQLite write lock orders them, the
    first records the rotation and the others find it recorded."""
    home, go = tmp_path / "h", tmp_path / "go"
    old = _home_with_a_plan(home)
    _assert_killed_in_the_window(_killed("keys", "rotate", "--home", str(home)), home, old)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _APPENDER, str(home), str(go), str(tmp_path / f"ready{k}")],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(4)
    ]
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("ready*"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    results = [(c.communicate(timeout=60), c.returncode) for c in children]

    assert [code for _, code in results] == [0] * 4, [err for (_, err), _ in results]
    with Proctor.open(home) as p:
        new = p.keyring.entries()[-1].key_id
        events = [orjson.loads(e.body) for e in p.events()]
        report = p.verify()
    assert {out.strip() for (out, _), _ in results} == {new}
    rotated = [e for e in events if e["type"] == "keys.rotated"]
    assert [r["data"] for r in rotated] == [{"key_id": new, "previous": old, "on_first_use": True}]
    first_new = next(i for i, e in enumerate(events) if e["key_id"] == new)
    assert events[first_new]["type"] == "keys.rotated"
    assert report.ok, report
