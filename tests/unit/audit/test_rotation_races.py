"""Signing and verifying across a rotation made while the instance is open (t08, t18)."""

from __future__ import annotations

from datetime import UTC, datetime

from proctor import Proctor
from proctor.audit.events import KeyInfo, seal, verify_events
from proctor.audit.keys import LocalSigner
from proctor.bootstrap import init_home
from proctor.testing import make_plan


class _Rotating:
    """A signer that, like ``KeyringSigner``, may switch keys between two calls."""

    def __init__(self) -> None:
        self.old, self.new = LocalSigner.generate(), LocalSigner.generate()
        self.reads = 0

    def _current(self) -> LocalSigner:
        self.reads += 1
        return self.old if self.reads == 1 else self.new  # a rotation after the first look

    def snapshot(self) -> LocalSigner:
        return self._current()

    @property
    def key_id(self) -> str:
        return self._current().key_id

    def sign(self, data: bytes) -> bytes:
        return self._current().sign(data)

    def public_keys(self):
        return {**self.old.public_keys(), **self.new.public_keys()}


class TestSealAcrossRotation:
    def test_the_named_key_is_the_signing_key(self):
        """A rotation between naming the key and signing cannot produce a bad signature."""
        signer = _Rotating()
        body = {"type": "x", "timestamp": datetime(2027, 1, 1, tzinfo=UTC).isoformat(), "data": {}}

        row = seal(body, seq=0, prev_hash="sha256:" + "0" * 64, signer=signer)

        keys = {k: KeyInfo(v) for k, v in signer.public_keys().items()}
        report = verify_events([row], keys)
        assert report.ok, report


class TestLibraryKeysFollowTheKeyring:
    def test_verify_and_key_infos_see_a_rotation_by_another_process(self, tmp_path):
        """After ``proctor keys rotate`` elsewhere, verify() and key_infos know the new key."""
        home = tmp_path / "h"
        init_home(home)
        with Proctor.open(home) as p, Proctor.open(home) as other:
            new = other.rotate_key()  # another process's rotation (it records keys.rotated)
            p.submit(
                make_plan([("travel.search", {"destination": "Lisbon", "date": "2027-01-01"})])
            )

            assert new in p.key_infos
            assert len(p.vkeys()) == 2
            assert p.verify().ok
