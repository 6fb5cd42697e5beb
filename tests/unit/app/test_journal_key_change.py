"""Every change of signing key is in the log, whether or not the rotation recorded it.

Review repro k1: ``proctor keys rotate`` killed after writing the keyring and before its
``keys.rotated`` event committed left events 0-5 signed by the old key and 6-11 by the new
one, no ``keys.rotated`` event, and ``audit verify`` passing. The first append signed by the
new key now records the rotation first, in its own transaction (``proctor.app.journal``).
The kill itself, with real processes, is in ``tests/integration/test_key_rotation_crash.py``.
"""

from __future__ import annotations

import orjson

from proctor import Proctor
from proctor.app.journal import Journal, record_rotation
from proctor.audit.keys import Keyring
from proctor.bootstrap import init_home
from proctor.core.ports import Clock
from proctor.testing import make_plan

READ = ("travel.search", {"destination": "Lisbon", "date": "2027-01-01"})


def _rotations(p: Proctor) -> list[dict]:
    return [b for b in (orjson.loads(e.body) for e in p.events()) if b["type"] == "keys.rotated"]


def _keyring_rotated_unrecorded(home, clock: Clock) -> str:
    """What a rotation killed before its event committed leaves: a new key, no event."""
    return Keyring(home / "keys").create(clock.now()).key_id


class TestRecordedOnFirstUse:
    def test_the_next_append_records_a_rotation_that_did_not(self, tmp_path):
        """The first transaction signed by the new key starts with keys.rotated (the new key,
        the head's key as previous, on_first_use), signed by the new key; once only."""
        home = tmp_path / "h"
        init_home(home)
        with Proctor.open(home) as p:
            p.submit(make_plan([READ]))
            old, before = p.gateway.signer.key_id, len(p.events())
        new = _keyring_rotated_unrecorded(home, p.gateway.clock)

        with Proctor.open(home) as p:
            assert _rotations(p) == []
            assert p.verify().ok  # nothing signed by the new key yet: no change to record
            p.submit(make_plan([READ]))
            p.submit(make_plan([READ]))
            events = [orjson.loads(e.body) for e in p.events()]
            report = p.verify()

        rotated, submitted = events[before], events[before + 1]
        assert rotated["type"] == "keys.rotated"
        assert rotated["data"] == {"key_id": new, "previous": old, "on_first_use": True}
        assert rotated["key_id"] == new
        assert rotated["actor"] == {"type": "system", "name": "proctor"}
        assert rotated["user_id"] is None
        assert rotated["timestamp"] == submitted["timestamp"]
        assert (submitted["type"], submitted["key_id"]) == ("plan.submitted", new)
        assert sum(e["type"] == "keys.rotated" for e in events) == 1
        assert report.ok, report

    def test_a_process_still_on_the_previous_key_records_nothing(self, tmp_path):
        """Within the second before it reloads the keyring, a process signs with the key a
        recorded rotation replaced: the log names it already, nothing is added."""
        home = tmp_path / "h"
        init_home(home)
        with Proctor.open(home) as p:
            stale = p.keyring.local_signer()  # the old key, as a running process holds it
            p.submit(make_plan([READ]))
            p.rotate_key()
        with Proctor.open(home) as p:
            p.submit(make_plan([READ]))  # the head is now signed by the new key
            with p.gateway.store.transaction() as tx:
                j = Journal(tx, stale, p.gateway.clock, log=p.gateway.audit_log)
                j.emit("test.note", data={"stale": True})
                j.flush()
            last = orjson.loads(p.events()[-1].body)

            assert (last["type"], last["key_id"]) == ("test.note", stale.key_id)
            assert len(_rotations(p)) == 1  # the rotation's own
            assert p.verify().ok


class TestRotationRecord:
    def test_rotate_key_records_who_rotated(self, tmp_path):
        """by is the event's user_id and actor, and in its data (as token.created)."""
        home = tmp_path / "h"
        init_home(home)
        with Proctor.open(home) as p:
            old = p.gateway.signer.key_id
            new = p.rotate_key(by="local:ops")
            (rotated,) = _rotations(p)

        assert rotated["data"] == {"key_id": new, "previous": old, "by": "local:ops"}
        assert rotated["user_id"] == "local:ops"
        assert rotated["actor"] == {"type": "human", "name": "local:ops"}

    def test_a_rotation_recorded_on_first_use_is_not_recorded_again(self, tmp_path):
        """Another process signed with the new key before the rotator's event committed and
        recorded it: the rotator's record_rotation adds nothing."""
        home = tmp_path / "h"
        init_home(home)
        with Proctor.open(home) as p:
            p.submit(make_plan([READ]))
            old = p.gateway.signer.key_id
        new = _keyring_rotated_unrecorded(home, p.gateway.clock)
        with Proctor.open(home) as other:
            other.submit(make_plan([READ]))  # signed by the new key: records it
        with Proctor.open(home) as p:
            gw = p.gateway
            added = record_rotation(gw.store, gw._journal, key_id=new, previous=old, by="local:ops")
            rotations = _rotations(p)
            assert p.verify().ok

        assert added is False
        assert [r["data"].get("on_first_use") for r in rotations] == [True]
