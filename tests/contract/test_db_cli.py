"""``proctor db status|upgrade`` and an instance on PostgreSQL, end to end.

The database comes from ``config.toml`` or ``PROCTOR_DATABASE_URL``; the schema is the one
of ``storage.migrations`` for either dialect.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proctor.storage import SCHEMA_VERSION, open_store

pytestmark = pytest.mark.cli

PLAN = {
    "actor": {"type": "agent", "name": "bot", "model_version": "m-1", "agent_id": "bot"},
    "on_behalf_of": "alice",
    "intent": "find flights",
    "steps": [
        {
            "id": "s1",
            "action": "travel.search",
            "params": {"destination": "Lisbon", "date": "2027-03-12"},
        }
    ],
}


@pytest.fixture(scope="module")
def exe() -> str:
    beside = Path(sys.executable).parent / "proctor"
    found = str(beside) if beside.is_file() else shutil.which("proctor")
    if found is None:
        pytest.skip("the `proctor` console script is not on PATH: `pip install -e .` in a venv")
    return found


def _run(exe, *args, env_url=None, check_code=0):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCTOR_")}
    if env_url is not None:
        env["PROCTOR_DATABASE_URL"] = env_url
    done = subprocess.run(
        [exe, *args], capture_output=True, text=True, env=env, timeout=110, check=False
    )
    assert done.returncode == check_code, done.stdout + done.stderr
    return done.stdout if check_code == 0 else done.stdout + done.stderr


def _json(out):
    return json.loads(out)


class TestDbCommands:
    def test_sqlite_home_is_up_to_date_after_init(self, exe, tmp_path):
        """``proctor init`` creates the SQLite schema; status and upgrade then report it."""
        home = str(tmp_path / "h")
        _run(exe, "init", "--home", home)

        status = _json(_run(exe, "db", "status", "--home", home, "--json"))
        upgrade = _json(_run(exe, "db", "upgrade", "--home", home, "--json"))

        assert (status["version"], status["expected"]) == (SCHEMA_VERSION, SCHEMA_VERSION)
        assert (upgrade["from"], upgrade["to"]) == (SCHEMA_VERSION, SCHEMA_VERSION)

    def test_postgres_from_the_environment_is_migrated_by_upgrade(self, exe, tmp_path, pg_url):
        """On an empty PostgreSQL schema, status exits 1 until ``db upgrade`` migrates it."""
        home = str(tmp_path / "h")
        _run(exe, "init", "--home", home)  # its own SQLite file; the env URL comes after

        before = _json(
            _run(exe, "db", "status", "--home", home, "--json", env_url=pg_url, check_code=1)
        )
        upgrade = _json(_run(exe, "db", "upgrade", "--home", home, "--json", env_url=pg_url))
        after = _json(_run(exe, "db", "status", "--home", home, "--json", env_url=pg_url))
        again = _json(_run(exe, "db", "upgrade", "--home", home, "--json", env_url=pg_url))

        assert before["version"] == 0
        assert before["url"].startswith("postgresql://")
        assert (upgrade["from"], upgrade["to"]) == (0, SCHEMA_VERSION)
        assert after["version"] == SCHEMA_VERSION
        assert (again["from"], again["to"]) == (SCHEMA_VERSION, SCHEMA_VERSION)

    def test_memory_database_has_no_schema_to_upgrade(self, exe, tmp_path):
        """An in-memory database is refused by ``db upgrade`` with an error naming the field."""
        home = str(tmp_path / "h")
        _run(exe, "init", "--home", home)

        out = _run(exe, "db", "upgrade", "--home", home, env_url="memory://", check_code=1)

        assert "database.url" in out

    def test_status_of_a_missing_sqlite_file_fails_and_creates_nothing(self, exe, tmp_path):
        """``db status`` on a deleted SQLite database exits 1 and does not create the file."""
        home = tmp_path / "h"
        _run(exe, "init", "--home", str(home))
        for f in home.glob("proctor.db*"):
            f.unlink()

        out = _run(exe, "db", "status", "--home", str(home), check_code=1)

        assert "no database at" in out
        assert not (home / "proctor.db").exists()


class TestSchemaStates:
    """``db status`` tells a schema behind this Proctor from one ahead of it."""

    @staticmethod
    def _set_version(home: Path, version: int) -> None:
        import sqlite3

        with sqlite3.connect(home / "proctor.db") as c:
            c.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))

    def test_states_in_json(self, exe, tmp_path):
        """``--json`` has ``state``: current, needs_upgrade, newer; exit 1 unless current."""
        home = tmp_path / "h"
        _run(exe, "init", "--home", str(home))
        states = [_json(_run(exe, "db", "status", "--home", str(home), "--json"))["state"]]
        for version in (SCHEMA_VERSION - 1, SCHEMA_VERSION + 1):
            self._set_version(home, version)
            out = _run(exe, "db", "status", "--home", str(home), "--json", check_code=1)
            states.append(json.JSONDecoder().raw_decode(out)[0]["state"])  # stdout, stderr

        assert states == ["current", "needs_upgrade", "newer"]

    def test_a_newer_schema_says_to_install_that_version_not_to_upgrade(self, exe, tmp_path):
        """A schema newer than this Proctor is not sent to ``db upgrade`` (which refuses it):
        status and upgrade both say to install the newer Proctor or restore the backup."""
        home = tmp_path / "h"
        _run(exe, "init", "--home", str(home))
        self._set_version(home, SCHEMA_VERSION + 1)

        status = _run(exe, "db", "status", "--home", str(home), check_code=1)
        upgrade = _run(exe, "db", "upgrade", "--home", str(home), check_code=1)
        status, upgrade = " ".join(status.split()), " ".join(upgrade.split())  # 80 columns

        assert "db upgrade` never downgrades" in status
        assert "needs `proctor db upgrade`" not in status
        assert f"schema {SCHEMA_VERSION + 1} is newer than this Proctor" in status
        assert "install the version that wrote it" in status
        assert "restore the backup" in status
        assert "Install the Proctor version that wrote it" in upgrade


class TestInstanceOnPostgres:
    def test_config_url_runs_plans_and_verifies(self, exe, tmp_path, pg_url):
        """With a ``postgresql://`` URL in config.toml, init, submit and audit verify work."""
        from proctor import Proctor

        home = tmp_path / "h"
        _run(exe, "init", "--home", str(home))
        cfg = home / "config.toml"
        text = cfg.read_text()
        assert 'url = "sqlite:///proctor.db"' in text
        cfg.write_text(text.replace('url = "sqlite:///proctor.db"', f'url = "{pg_url}"'))

        init = _run(exe, "init", "--home", str(home), "--json")
        with Proctor.open(home) as p:
            record = p.submit(PLAN)
        plan_file = tmp_path / "plan.json"
        plan_file.write_text(json.dumps({**PLAN, "intent": "second"}))
        _run(exe, "submit", str(plan_file), "--home", str(home), "--json")
        verify = _json(_run(exe, "audit", "verify", "--home", str(home), "--json"))
        listed = _json(_run(exe, "plans", "--home", str(home), "--json"))

        assert "database" in json.loads(init)["created"]  # the PostgreSQL schema was new
        assert record.status.value == "succeeded"
        assert verify["ok"] is True
        assert verify["events"] >= 2 * 4
        assert len(listed["plans"]) == 2
        pg = open_store(pg_url)  # the events are in PostgreSQL
        try:
            assert pg.event_count() == verify["events"]
        finally:
            pg.close()


class TestPrivateFiles:
    """The home and its database are private: they hold TOTP secrets and the audit log."""

    def test_init_under_umask_022_makes_a_private_home_and_database(self, exe, tmp_path):
        """``proctor init`` with the usual umask 022 creates the home 0700 and proctor.db
        0600 (before: 0755 and 0644, readable by every local user)."""
        home = tmp_path / "h"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROCTOR_")}

        done = subprocess.run(
            [exe, "init", "--home", str(home)],
            capture_output=True,
            text=True,
            env=env,
            umask=0o022,
            timeout=110,
            check=False,
        )

        assert done.returncode == 0, done.stdout + done.stderr
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        assert stat.S_IMODE((home / "proctor.db").stat().st_mode) == 0o600
        assert "readable by other local users" not in done.stderr

    def test_status_reports_a_world_readable_database_and_leaves_it(self, exe, tmp_path):
        """On a database made 0644 (an older Proctor, a copy), ``db status`` warns on
        stderr, lists it under ``exposed`` and changes no mode."""
        home = tmp_path / "h"
        _run(exe, "init", "--home", str(home))
        db = home / "proctor.db"
        db.chmod(0o644)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROCTOR_")}

        done = subprocess.run(
            [exe, "db", "status", "--home", str(home), "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=110,
            check=False,
        )

        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["exposed"] == [f"{db} (mode 0644)"]
        assert "readable by other local users" in done.stderr
        assert f"chmod 600 {db}*" in done.stderr
        assert stat.S_IMODE(db.stat().st_mode) == 0o644


class TestPostgresUrlErrors:
    @pytest.mark.parametrize("url", ["postgresql://u@h/db?bogus=1", "postgresql://[::1/db"])
    def test_a_malformed_url_is_a_storage_error_not_a_traceback(self, url):
        """The URL is parsed inside the probe's error handling: a StorageError naming
        database.url (before: psycopg's ProgrammingError escaped)."""
        from proctor.errors import StorageError
        from proctor.storage.postgres import PostgresStore

        with pytest.raises(StorageError) as caught:
            PostgresStore(url, timeout=2)
        assert caught.value.field == "database.url"

    def test_a_missing_database_fails_at_once_with_its_cause_and_a_hint(
        self, exe, tmp_path, pg_url
    ):
        """A URL naming a database that does not exist fails within seconds, says so once,
        names database.url with a createdb hint, and prints none of the pool's retries
        (before: 30 s, six pool warnings, "pool initialization incomplete")."""
        from urllib.parse import urlsplit, urlunsplit

        home = str(tmp_path / "h")
        _run(exe, "init", "--home", home)
        missing = urlunsplit(urlsplit(pg_url)._replace(path="/proctor_no_such_db"))

        started = time.monotonic()
        out = _run(exe, "audit", "verify", "--home", home, env_url=missing, check_code=1)
        took = time.monotonic() - started

        assert took < 15, f"took {took:.1f} s"
        assert out.count('database "proctor_no_such_db" does not exist') <= 2, out  # + cause
        assert "field: database.url" in out
        assert "createdb proctor_no_such_db" in out
        assert "pool" not in out.lower(), out
