"""Key rotation for replicas on one PostgreSQL database, each with a copy of ``keys/``.

Review finding t07: with ``[keys] rotate_every_days`` each replica rotated its own copy of
the keyring to a different key, signed the shared log with it, and ``audit verify`` then
failed on every replica with ``unknown_key``. The schedule is now refused on PostgreSQL; the
procedure of docs/replicas.md ("Rotating keys") is what replicas do instead.
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from proctor import Proctor
from proctor.bootstrap import init_home
from proctor.errors import ConfigError
from proctor.testing import FrozenClock, make_plan

READ = ("travel.search", {"destination": "Lisbon", "date": "2027-01-01"})


def _replicas(tmp_path: Path, url: str, *, every: int, clock: FrozenClock) -> tuple[Path, Path]:
    """Two homes on ``url``: one initialised, the other an identical copy (docs/replicas.md)."""
    a, b = tmp_path / "a", tmp_path / "b"
    init_home(a, clock=clock)
    cfg = a / "config.toml"
    text = cfg.read_text()
    assert "rotate_every_days = 0" in text and 'url = "sqlite:///proctor.db"' in text
    cfg.write_text(
        text.replace("rotate_every_days = 0", f"rotate_every_days = {every}").replace(
            'url = "sqlite:///proctor.db"', f'url = "{url}"'
        )
    )
    shutil.copytree(a, b)
    return a, b


def _copy_keys(source: Path, target: Path) -> None:
    """Distribute a rotated keyring: the private keys first, keyring.json last."""
    for pem in sorted((source / "keys").glob("*.pem")):
        shutil.copy2(pem, target / "keys" / pem.name)
    shutil.copy2(source / "keys" / "keyring.json", target / "keys" / "keyring.json")


class TestScheduledRotationOnPostgres:
    def test_schedule_is_refused_before_any_rotation(self, tmp_path, pg_url):
        """A due key with rotate_every_days on PostgreSQL: the instance does not open, no key
        is made, and the message says how to rotate instead (t07)."""
        clock = FrozenClock(datetime(2020, 1, 1, tzinfo=UTC))
        a, b = _replicas(tmp_path, pg_url, every=1, clock=clock)
        clock.advance(timedelta(days=30))

        for home in (a, b):
            with pytest.raises(ConfigError) as info:
                Proctor.open(home, clock=clock)

            assert info.value.field == "keys.rotate_every_days"
            assert "PostgreSQL" in info.value.message
            assert info.value.hint is not None and "proctor keys rotate" in info.value.hint
            assert len(list((home / "keys").glob("ed25519-*.pem"))) == 1
            assert (home / "keys" / "keyring.json").read_bytes() == (
                a / "keys" / "keyring.json"
            ).read_bytes()

    def test_schedule_is_refused_even_when_not_due(self, tmp_path, pg_url):
        """The refusal comes at deployment, not months later when the key falls due."""
        clock = FrozenClock(datetime(2020, 1, 1, tzinfo=UTC))
        a, _ = _replicas(tmp_path, pg_url, every=90, clock=clock)

        with pytest.raises(ConfigError, match="rotate_every_days"):
            Proctor.open(a, clock=clock)

    def test_documented_procedure_keeps_the_log_verifiable(self, tmp_path, pg_url):
        """Rotate on one replica, copy keys/ to the other within the grace: both sign with the
        new key (the running one reloads it) and the shared log verifies on both."""
        clock = FrozenClock(datetime(2026, 1, 1, tzinfo=UTC))
        a, b = _replicas(tmp_path, pg_url, every=0, clock=clock)

        with Proctor.open(a, clock=clock) as pa, Proctor.open(b, clock=clock) as pb:
            pa.submit(make_plan([READ]))
            pb.submit(make_plan([READ]))
            old = pa.gateway.signer.key_id
            assert pb.gateway.signer.key_id == old

            new = pa.rotate_key()
            clock.advance(timedelta(minutes=1))
            pb.submit(make_plan([READ]))  # not copied yet: the old key, within its grace
            _copy_keys(a, b)
            time.sleep(1.1)  # a running signer looks at keyring.json at most once a second
            clock.advance(timedelta(minutes=1))
            pb.submit(make_plan([READ]))
            signed_by_b = orjson.loads(pb.events()[-1].body)["key_id"]
            pa.submit(make_plan([READ]))

            assert signed_by_b == pb.gateway.signer.key_id == new
            for p in (pa, pb):
                report = p.verify()
                assert report.ok, report
        for home in (a, b):
            with Proctor.open(home, clock=clock) as p:
                assert p.verify().ok
                assert [e.key_id for e in p.keyring.entries()] == [old, new]


class TestUnrecordedRotationOnPostgres:
    def test_replicas_record_a_killed_rotation_once(self, tmp_path, pg_url):
        """A rotation killed before its keys.rotated committed, its keyring copied to the
        other replica: four instances on two replicas then append at once, and exactly one
        records the rotation (the log's advisory lock orders them); the log verifies on both.
        """
        import threading

        from proctor.audit.keys import Keyring

        clock = FrozenClock(datetime(2026, 1, 1, tzinfo=UTC))
        a, b = _replicas(tmp_path, pg_url, every=0, clock=clock)
        with Proctor.open(a, clock=clock) as pa:
            pa.submit(make_plan([READ]))
            old = pa.gateway.signer.key_id
        new = Keyring(a / "keys").create(clock.now()).key_id  # what the killed rotation left
        _copy_keys(a, b)
        clock.advance(timedelta(seconds=1))

        instances = [Proctor.open(home, clock=clock) for home in (a, b, a, b)]
        barrier = threading.Barrier(len(instances), timeout=10)
        errors: list[Exception] = []

        def append(p: Proctor) -> None:
            try:
                barrier.wait()
                p.submit(make_plan([READ]))
            except Exception as exc:  # noqa: BLE001 - collected for the assert
                errors.append(exc)

        try:
            threads = [threading.Thread(target=append, args=(p,)) for p in instances]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        finally:
            for p in instances:
                p.close()

        assert errors == []
        for home in (a, b):
            with Proctor.open(home, clock=clock) as p:
                rotated = [orjson.loads(e.body) for e in p.events() if b'"keys.rotated"' in e.body]
                assert [r["data"] for r in rotated] == [
                    {"key_id": new, "previous": old, "on_first_use": True}
                ]
                report = p.verify()
                assert report.ok, report
