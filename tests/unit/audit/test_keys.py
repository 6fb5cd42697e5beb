"""The keyring on disk: keys, modes, and changes from several threads at once.

A change takes an ``flock`` on ``keys/keyring.lock``; flocks on two open file descriptions
conflict within one process too, so threads stand in for processes here (the processes
themselves are in ``tests/integration/test_key_rotation_race.py``).
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from proctor.audit.keys import ROTATION_GRACE, Keyring

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def _at_once(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run ``fn(0)`` … ``fn(n - 1)`` in ``n`` threads released together; return the results
    (an exception is returned as the result)."""
    barrier = threading.Barrier(n, timeout=10)
    results: list[Any] = [None] * n

    def run(k: int) -> None:
        barrier.wait()
        try:
            results[k] = fn(k)
        except Exception as exc:  # noqa: BLE001 - reported to the test as a result
            results[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def _pems(keyring: Keyring) -> set[str]:
    return {p.name for p in keyring.directory.glob("*.pem")}


def _pem_names(keyring: Keyring) -> set[str]:
    """The private key files a keyring keeps: the current key's alone (retired ones go)."""
    return {keyring.entries()[-1].key_id.replace(":", "-") + ".pem"}


class TestKeyring:
    def test_create_first_on_an_existing_keyring_creates_nothing(self, tmp_path):
        """``create_first`` makes the first key once; on an existing keyring it returns None."""
        keyring = Keyring(tmp_path / "keys")

        first = keyring.create_first(T0)
        again = keyring.create_first(T0 + DAY)

        assert first is not None
        assert again is None
        assert [e.key_id for e in keyring.entries()] == [first.key_id]

    def test_create_closes_the_previous_key_after_the_grace(self, tmp_path):
        """A rotation appends the new key and ends the old one's validity ``grace`` later."""
        keyring = Keyring(tmp_path / "keys")
        keyring.create(T0)

        new = keyring.create(T0 + DAY)

        old, cur = keyring.entries()
        assert cur.key_id == new.key_id
        assert old.not_after == T0 + DAY + ROTATION_GRACE
        assert cur.not_after is None

    def test_rotate_if_due_only_rotates_a_key_that_old(self, tmp_path):
        """``rotate_if_due`` leaves a younger key alone and rotates one ``every`` old."""
        keyring = Keyring(tmp_path / "keys")
        keyring.create(T0)

        early = keyring.rotate_if_due(T0 + DAY - timedelta(seconds=1), every=DAY)
        due = keyring.rotate_if_due(T0 + DAY, every=DAY)

        assert early is None
        assert due is not None
        assert [e.key_id for e in keyring.entries()][-1] == due.key_id

    def test_previous_names_the_key_a_rotation_replaced(self, tmp_path):
        """``previous`` of the new key is the one before it; of the first key, None."""
        keyring = Keyring(tmp_path / "keys")
        first = keyring.create(T0)
        second = keyring.create(T0 + DAY)

        assert keyring.previous(second.key_id) == first.key_id
        assert keyring.previous(first.key_id) is None

    def test_a_rotation_deletes_the_retired_private_key(self, tmp_path):
        """Only the current key can sign: a retired one left on disk could sign events that
        verify, backdated into its validity. Its public key stays, for verification."""
        keyring = Keyring(tmp_path / "keys")
        first = keyring.create(T0)
        before = keyring.local_signer()  # a process that loaded the old key

        second = keyring.create(T0 + DAY)

        assert _pems(keyring) == {second.key_id.replace(":", "-") + ".pem"}
        assert [e.key_id for e in keyring.entries()] == [first.key_id, second.key_id]
        assert keyring.local_signer().key_id == second.key_id
        assert set(keyring.local_signer().public_keys()) == {first.key_id, second.key_id}
        assert before.key_id == first.key_id and before.sign(b"x")  # in memory, for the grace

    def test_a_signer_loaded_across_a_rotation_reads_the_index_again(self, tmp_path, monkeypatch):
        """The index read just before a rotation names a key whose file is then gone."""
        keyring = Keyring(tmp_path / "keys")
        keyring.create(T0)
        stale = keyring.entries()
        new = keyring.create(T0 + DAY)
        reads = iter([stale])
        fresh = keyring.entries
        monkeypatch.setattr(keyring, "entries", lambda: next(reads, None) or fresh())

        assert keyring.local_signer().key_id == new.key_id

    def test_file_modes_and_no_temporary_files_left(self, tmp_path):
        """Private keys are 0600, keyring.json keeps the umask's mode, no temp file stays."""
        keyring = Keyring(tmp_path / "keys")
        old_umask = os.umask(0o022)
        try:
            keyring.create(T0)
            keyring.create(T0 + DAY)
        finally:
            os.umask(old_umask)

        for pem in keyring.directory.glob("*.pem"):
            assert stat.S_IMODE(pem.stat().st_mode) == 0o600
        assert stat.S_IMODE((keyring.directory / "keyring.json").stat().st_mode) == 0o644
        assert not list(keyring.directory.glob("*.tmp"))


class TestConcurrentChanges:
    def test_concurrent_creates_lose_no_entry(self, tmp_path):
        """Rotations at once each add their key: none is dropped by another's write
        (a read-modify-write of keyring.json without the lock lost keys)."""
        keyring = Keyring(tmp_path / "keys")
        keyring.create(T0)

        made = _at_once(8, lambda k: keyring.create(T0 + DAY + timedelta(seconds=k)))

        assert not [r for r in made if isinstance(r, BaseException)]
        ids = [e.key_id for e in keyring.entries()]
        assert len(ids) == 9
        assert {e.key_id for e in made} <= set(ids)
        assert _pems(keyring) == _pem_names(keyring)  # no orphan or retired private key
        # Every key but the newest was closed by the rotation that followed it.
        assert all(e.not_after is not None for e in keyring.entries()[:-1])

    def test_concurrent_rotate_if_due_rotates_once(self, tmp_path):
        """Of several openers finding the key due, exactly one rotates."""
        keyring = Keyring(tmp_path / "keys")
        keyring.create(T0)

        made = _at_once(8, lambda _k: keyring.rotate_if_due(T0 + 2 * DAY, every=DAY))

        assert not [r for r in made if isinstance(r, BaseException)]
        new = [r for r in made if r is not None]
        assert len(new) == 1
        assert [e.key_id for e in keyring.entries()][-1] == new[0].key_id
        assert len(keyring.entries()) == 2
        assert _pems(keyring) == _pem_names(keyring)

    def test_concurrent_create_first_makes_one_key(self, tmp_path):
        """Several ``proctor init`` at once leave one key and no orphan private key."""
        keyring = Keyring(tmp_path / "keys")

        made = _at_once(8, lambda _k: keyring.create_first(T0))

        assert not [r for r in made if isinstance(r, BaseException)]
        assert len([r for r in made if r is not None]) == 1
        assert len(keyring.entries()) == 1
        assert _pems(keyring) == _pem_names(keyring)

    def test_readers_never_see_a_partial_index(self, tmp_path):
        """While keys are created, every read of keyring.json parses."""
        keyring = Keyring(tmp_path / "keys")
        keyring.create(T0)
        done = threading.Event()
        errors: list[Exception] = []

        def read() -> None:
            while not done.is_set():
                try:
                    keyring.entries()
                except Exception as exc:  # noqa: BLE001 - collected for the assert
                    errors.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        try:
            _at_once(4, lambda k: keyring.create(T0 + DAY + timedelta(seconds=k)))
        finally:
            done.set()
            reader.join(10)

        assert errors == []
        assert len(keyring.entries()) == 5
