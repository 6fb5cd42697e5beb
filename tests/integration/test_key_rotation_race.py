"""Several processes opening a home whose key is due for rotation (``rotate_every_days``).

What ``proctor serve --workers N`` does at start-up: each worker opens the home. Before the
keyring lock, two or more of them rotated and the last to write keyring.json dropped the
others' keys, whose events then failed ``audit verify`` as ``unknown_key``; some failed to
open with a half-written keyring.json or a vanished ``keyring.tmp``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

import proctor
from proctor import Proctor
from proctor.bootstrap import init_home
from proctor.testing import FrozenClock

pytestmark = pytest.mark.slow

# Imports first, then waits for the go file, so the processes open the home together.
_CHILD = """
import os, sys, time
from proctor import Proctor
from proctor.testing import make_plan

home, go, ready = sys.argv[1], sys.argv[2], sys.argv[3]
open(ready, "w").close()
deadline = time.monotonic() + 30
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.001)
with Proctor.open(home) as p:
    p.submit(make_plan([("travel.search", {"destination": "Lisbon", "date": "2027-01-01"})]))
    print(p.gateway.signer.key_id)
"""


def _due_home(home: Path) -> None:
    """A home with a key from 2020 and a rotation every day (the children use the real clock)."""
    init_home(home, clock=FrozenClock(datetime(2020, 1, 1, tzinfo=UTC)))
    cfg = home / "config.toml"
    cfg.write_text(cfg.read_text().replace("rotate_every_days = 0", "rotate_every_days = 1"))


def test_processes_opening_a_due_home_at_once_rotate_once(tmp_path):
    """Four processes open a home due for rotation at once: one rotation, every key that
    signed is in the keyring, no orphan private key, and the log verifies."""
    home, go = tmp_path / "h", tmp_path / "go"
    _due_home(home)
    # The children import the proctor this test imported (a src checkout or the installed one).
    src = str(Path(proctor.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(home), str(go), str(tmp_path / f"ready{k}")],
            env=env,
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
    signed_with = {out.strip() for (out, _), _ in results}
    with Proctor.open(home) as p:
        entries = p.keyring.entries()
        assert len(entries) == 2  # exactly one rotation
        assert signed_with <= {e.key_id for e in entries}
        assert len(list((home / "keys").glob("*.pem"))) == 1  # the retired key is deleted
        assert sum(b'"keys.rotated"' in e.body for e in p.events()) == 1  # by the rotator
        assert p.verify().ok
