"""The transparency-log commands through the installed script: checkpoint, prove, keys,
export, offline verification, and their bad input."""

from __future__ import annotations

import base64
import json
import shutil

import pytest

from proctor.audit.merkle import verify_consistency, verify_inclusion

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


def _b(s):
    return base64.b64decode(s)


@pytest.fixture
def home(cli, fresh_home, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN))
    for _ in range(3):
        assert cli("submit", plan, home=fresh_home).code == 0
    return fresh_home


class TestCheckpointAndProofs:
    def test_checkpoint_and_proofs_verify(self, cli, home):
        """A signed checkpoint, and inclusion/consistency proofs that verify against roots."""
        cp = cli("audit", "checkpoint", "--sign", "--json", home=home)
        assert cp.code == 0, str(cp)
        size = cp.json()["size"]
        root = _b(cp.json()["root_hash"])
        assert cp.json()["note"].splitlines()[1] == str(size)

        inc = cli("audit", "prove", "--index", "2", "--size", str(size), "--json", home=home)
        con = cli("audit", "prove", "--from", "3", "--to", str(size), "--json", home=home)

        assert inc.code == 0, str(inc)
        d = inc.json()
        verify_inclusion(_b(d["leaf_hash"]), 2, size, [_b(h) for h in d["hashes"]], root)
        c = con.json()
        verify_consistency(3, size, _b(c["from_root"]), root, [_b(h) for h in c["hashes"]])

    @pytest.mark.parametrize(
        "args",
        [
            ("--index", "100000"),
            ("--from", "0", "--to", "2"),
            ("--index", "1", "--from", "1", "--to", "2"),
        ],
    )
    def test_bad_proof_requests_exit_1(self, cli, home, args):
        """Out-of-range or mixed proof requests exit 1 with a field, no traceback."""
        r = cli("audit", "prove", *args, "--json", home=home)
        assert r.code == 1, str(r)
        assert "Traceback" not in r.err
        assert r.json()["error"]["field"] in {"index", "from"}


class TestKeys:
    def test_vkey_and_rotation(self, cli, home):
        """keys list --vkey prints name+id+key; after a rotation the log still verifies."""
        vk = cli("keys", "list", "--vkey", home=home)
        assert vk.code == 0
        name, key_id, key = vk.out.strip().split("+", 2)
        assert name.startswith("proctor/")
        assert len(key_id) == 8
        assert _b(key)[0] == 1

        rot = cli("keys", "rotate", "--json", home=home)
        keys = cli("keys", "list", "--json", home=home).json()["keys"]
        verify = cli("audit", "verify", "--json", home=home)

        assert rot.code == 0
        assert [k["current"] for k in keys] == [False, True]
        assert verify.json()["ok"] is True

    def test_rotation_records_who_rotated(self, cli, home):
        """keys.rotated names the new key, the one it replaced, and `local:<login>` as who
        rotated (as token.created does); it used to record no one."""
        old = cli("keys", "list", "--json", home=home).json()["keys"][0]["key_id"]
        new = cli("keys", "rotate", "--json", home=home).json()["key_id"]
        events = cli("audit", "events", "--json", home=home).json()["events"]

        (rotated,) = [e for e in events if e["type"] == "keys.rotated"]
        by = rotated["data"]["by"]
        assert by.startswith("local:")
        assert rotated["data"] == {"key_id": new, "previous": old, "by": by}
        assert rotated["user_id"] == by
        assert rotated["actor"] == {"type": "human", "name": by}


class TestLostKeys:
    """A home whose keys/ is gone, beside a database that holds its signed events."""

    def test_init_makes_no_new_keyring_beside_a_signed_log(self, cli, home, tmp_path):
        """keys/ lost: commands say restore it, init refuses, and restoring it still verifies.

        init used to make a new keyring, after which `audit verify` stopped at the first
        event with unknown_key.
        """
        backup = tmp_path / "keys-backup"
        shutil.copytree(home / "keys", backup)
        shutil.rmtree(home / "keys")

        plans = cli("plans", "--json", home=home)
        init = cli("init", "--json", home=home)
        verify = cli("audit", "verify", "--json", home=home)

        for r in (plans, init, verify):
            assert r.code == 1, str(r)
            assert (r.error()["code"], r.error()["field"]) == ("config_error", "keys"), str(r)
            assert r.error()["hint"].startswith("Restore keys/ from the backup"), str(r)
            assert "proctor init` to create" not in r.error()["hint"]
        assert "holds audit events" in init.error()["message"]
        assert not (home / "keys").exists()
        shutil.copytree(backup, home / "keys")
        assert cli("audit", "verify", "--json", home=home).json()["ok"] is True

    def test_a_home_without_keys_or_database_is_told_to_init(self, cli, tmp_path):
        """No keyring and no database: the hint is `proctor init`, and init creates both."""
        home = tmp_path / "h"
        assert cli("init", home=home).code == 0
        shutil.rmtree(home / "keys")
        for f in home.glob("proctor.db*"):
            f.unlink()

        plans = cli("plans", "--json", home=home)
        init = cli("init", "--json", home=home)

        assert plans.code == 1, str(plans)
        assert plans.error()["hint"] == "Run `proctor init` to create the instance."
        assert init.code == 0, str(init)
        assert set(init.json()["created"]) == {"keys/", "database"}
        assert cli("plans", "--json", home=home).code == 0


class TestExport:
    def test_export_then_verify_offline(self, cli, home, tmp_path):
        """An export verifies with nothing but itself, full and fast."""
        out = tmp_path / "bundle"
        e = cli("audit", "export", out, "--segment-size", "5", "--json", home=home)
        assert e.code == 0, str(e)
        for mode in ((), ("--fast",)):
            v = cli("audit", "verify", "--export", out, *mode, "--json")
            assert v.code == 0, str(v)
            assert v.json()["ok"] is True

    def test_export_refuses_a_non_empty_directory(self, cli, home, tmp_path):
        """Exporting into a non-empty directory exits 1, naming it, and writes nothing."""
        out = tmp_path / "busy"
        out.mkdir()
        (out / "keep.txt").write_text("x")
        r = cli("audit", "export", out, "--json", home=home)
        assert r.code == 1
        assert r.json()["error"]["field"] == "directory"
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]

    def test_verify_export_of_a_non_export(self, cli, tmp_path):
        """A directory without manifest.json is a clear error, exit 1."""
        r = cli("audit", "verify", "--export", tmp_path, "--json")
        assert r.code == 1
        assert r.json()["error"]["field"] == "export"


class TestVerifyOpensTheDatabaseAsItIs:
    """``audit verify`` reads the log where it is, and never makes an empty one to verify."""

    def test_a_deleted_database_fails_and_is_not_created(self, cli, home):
        """With the SQLite file gone, verify exits 1 naming database.url and creates nothing."""
        for f in home.glob("proctor.db*"):
            f.unlink()

        r = cli("audit", "verify", "--json", home=home)

        assert r.code == 1, str(r)
        assert r.error()["code"] == "storage_error"
        assert r.error()["field"] == "database.url"
        assert "Only `proctor init` creates" in r.error()["hint"]
        assert not (home / "proctor.db").exists()

    @pytest.mark.parametrize(
        "args",
        [
            ("plans",),
            ("show", "plan-x"),
            ("approve", "plan-x", "--as", "alice", "--role", "finance"),
            ("keys", "list"),
            ("audit", "events"),
            ("audit", "prove", "--index", "0"),
        ],
    )
    def test_no_command_starts_a_new_log_in_place_of_a_deleted_one(self, cli, home, args):
        """Every command that opens the home refuses a deleted SQLite file; none creates one.

        They used to create an empty database (a new audit log) and answer from it: `plans`
        listed nothing, `approve` said the plan did not exist.
        """
        for f in home.glob("proctor.db*"):
            f.unlink()

        r = cli(*args, "--json", home=home)

        assert r.code != 0, str(r)
        assert r.error()["code"] == "storage_error", str(r)
        assert r.error()["field"] == "database.url"
        assert not (home / "proctor.db").exists()

    def test_a_mistyped_database_url_fails(self, cli, home, tmp_path):
        """A PROCTOR_DATABASE_URL naming no file fails (it used to report "ok: 0 events")."""
        typo = tmp_path / "typo.db"

        r = cli("audit", "verify", home=home, env={"PROCTOR_DATABASE_URL": f"sqlite:///{typo}"})

        assert r.code == 1, str(r)
        assert "no database at" in r.err + r.out
        assert not typo.exists()

    def test_an_existing_log_still_verifies(self, cli, home):
        """The intact log of a home verifies as before, full and fast."""
        for mode in ((), ("--fast",)):
            r = cli("audit", "verify", *mode, "--json", home=home)
            assert r.code == 0, str(r)
            assert r.json()["events"] > 0

    def test_an_empty_postgres_database_is_not_migrated(self, cli, home, pg_url):
        """An empty PostgreSQL database fails verify and is left without tables."""
        import psycopg

        r = cli("audit", "verify", "--json", home=home, env={"PROCTOR_DATABASE_URL": pg_url})

        assert r.code == 1, str(r)
        assert "no Proctor schema" in r.error()["message"]
        with psycopg.connect(pg_url) as c:
            tables = c.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
            ).fetchone()
        assert tables == (0,)


class TestKeptCheckpoint:
    def test_a_cut_tail_fails_against_a_kept_note(self, cli, home, tmp_path):
        """Events and checkpoints deleted together verify alone, but not against a kept note."""
        import sqlite3

        kept = tmp_path / "kept.note"
        cp = cli("audit", "checkpoint", "--out", kept, "--json", home=home)
        assert cp.code == 0, str(cp)
        size = cp.json()["size"]
        assert kept.read_text() == cp.json()["note"]
        with sqlite3.connect(home / "proctor.db") as db:
            db.execute("DELETE FROM events WHERE seq >= ?", (size - 3,))
            db.execute("DELETE FROM checkpoints WHERE size > ?", (size - 3,))

        alone = cli("audit", "verify", "--json", home=home)
        pinned = cli("audit", "verify", "--checkpoint", kept, "--json", home=home)
        as_json = tmp_path / "kept.json"
        as_json.write_text(cp.out)
        pinned_json = cli("audit", "verify", "--fast", "--checkpoint", as_json, home=home)

        assert alone.code == 0, str(alone)  # the limitation: nothing in the store says so
        assert pinned.code == 1, str(pinned)
        assert (pinned.json()["problem"], pinned.json()["first_bad_seq"]) == (
            "truncated",
            size - 3,
        )
        assert pinned_json.code == 1
        assert "truncated" in pinned_json.out

    def test_checkpoint_covers_the_whole_log(self, cli, home):
        """`audit checkpoint` prints a note over every event (signing one if needed)."""
        cp = cli("audit", "checkpoint", "--json", home=home)
        events = cli("audit", "verify", "--fast", "--json", home=home)

        assert cp.json()["size"] == events.json()["events"]
