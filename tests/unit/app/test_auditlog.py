"""The live transparency log: tree in step with events, checkpoints, proofs, reloads."""

from __future__ import annotations

import base64
import dataclasses
import itertools
from pathlib import Path

import orjson
import pytest

from proctor import Proctor
from proctor.app.auditlog import AuditLog, CheckpointPolicy
from proctor.audit.events import verify_events
from proctor.audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from proctor.audit.note import Checkpoint, open_note, verifiers_from_vkeys
from proctor.bootstrap import init_home
from proctor.core.canonical import canonical
from proctor.errors import AuditIntegrityError, InvalidRequestError
from proctor.testing import FrozenClock, make_plan

READ = ("travel.search", {"destination": "Lisbon", "date": "2027-01-01"})


def _b(s):
    return base64.b64decode(s)


@pytest.fixture
def p():
    with Proctor.in_memory(clock=FrozenClock()) as instance:
        yield instance


class TestTree:
    def test_empty_log_has_no_checkpoint(self, p):
        """A new log has no events and signing a checkpoint is a no-op."""
        assert p.audit_log.size == 0
        assert p.checkpoint() is None

    def test_every_event_is_a_leaf(self, p):
        """Each stored event's canonical bytes are a leaf with a verifying inclusion proof."""
        p.submit(make_plan([READ]))
        events = p.events()
        assert p.audit_log.size == len(events) > 0
        root = p.audit_log.root()
        for e in events:
            proof = p.inclusion_proof(e.seq)
            assert _b(proof["leaf_hash"]) == leaf_hash(e.body)
            verify_inclusion(
                leaf_hash(e.body), e.seq, proof["tree_size"], [_b(h) for h in proof["hashes"]], root
            )

    def test_consistency_between_sizes(self, p):
        """A consistency proof links the tree before and after more plans."""
        p.submit(make_plan([READ]))
        old = p.audit_log.size
        old_root = p.audit_log.root()
        p.submit(make_plan([READ]))
        proof = p.consistency_proof(old, p.audit_log.size)
        verify_consistency(
            old, p.audit_log.size, old_root, p.audit_log.root(), [_b(h) for h in proof["hashes"]]
        )

    def test_proof_out_of_range(self, p):
        """Proofs outside the tree are refused with the field named."""
        p.submit(make_plan([READ]))
        with pytest.raises(InvalidRequestError) as ei:
            p.inclusion_proof(10_000)
        assert ei.value.field == "index"
        with pytest.raises(InvalidRequestError):
            p.consistency_proof(0, 1)


class TestCheckpoints:
    def test_signed_note_verifies_with_vkeys(self, p):
        """The checkpoint is a signed note that opens with the published verifier keys."""
        p.submit(make_plan([READ]))
        cp = p.checkpoint()
        text, signers = open_note(cp.note, verifiers_from_vkeys(p.vkeys()))
        parsed = Checkpoint.parse(text)
        assert (parsed.origin, parsed.size, parsed.root) == (p.origin, cp.size, cp.root)
        assert signers

    def test_every_n_events(self):
        """With every=5 a checkpoint is signed at least every five events."""
        clock = FrozenClock()
        with Proctor.in_memory(clock=clock) as p:
            p.audit_log.policy = CheckpointPolicy(every=5)
            for _ in range(4):
                p.submit(make_plan([READ]))
            sizes = [c.size for c in p.gateway.store.checkpoints()]
            assert len(sizes) >= 3
            assert all(b - a <= 5 + 6 for a, b in itertools.pairwise(sizes))

    def test_interval(self):
        """After the interval, the next append signs a checkpoint."""
        clock = FrozenClock()
        with Proctor.in_memory(clock=clock) as p:
            p.submit(make_plan([READ]))
            n = len(p.gateway.store.checkpoints())
            p.submit(make_plan([READ]))
            assert len(p.gateway.store.checkpoints()) == n
            clock.advance(61)
            p.submit(make_plan([READ]))
            assert len(p.gateway.store.checkpoints()) == n + 1

    def test_refuses_inconsistent_history(self, p):
        """If the stored tree no longer extends the last checkpoint, signing fails."""
        p.submit(make_plan([READ]))
        p.checkpoint()
        # Corrupt this process's copy of the tree: the store still has the truth, so the
        # next sync must reload and the signed history stays consistent.
        p.audit_log._nodes._block[0][0] = b"\x00" * 32  # leaf 0, in the block being filled
        p.submit(make_plan([READ]))
        cp = p.checkpoint()
        assert cp.root == p.audit_log.root()


class TestPendingCheckpoint:
    """The newest events get a checkpoint without waiting for the next append."""

    def test_nothing_to_sign_on_an_empty_or_covered_log(self, p):
        """An empty log, or one whose last event is covered, signs nothing."""
        assert p.audit_log.checkpoint_pending() is None
        p.submit(make_plan([READ]))
        p.checkpoint()

        assert p.audit_log.checkpoint_pending() is None

    def test_uncovered_events_are_signed(self, p):
        """Events after the last checkpoint get one covering the whole log."""
        p.submit(make_plan([READ]))
        p.submit(make_plan([READ]))
        assert p.latest_checkpoint().size < p.audit_log.size

        cp = p.audit_log.checkpoint_pending()

        assert cp is not None
        assert cp.size == p.audit_log.size

    def test_due_only_waits_for_the_interval(self):
        """``due_only`` signs only once the last checkpoint is older than the interval."""
        clock = FrozenClock()
        with Proctor.in_memory(clock=clock) as p:
            p.submit(make_plan([READ]))
            p.submit(make_plan([READ]))

            early = p.audit_log.checkpoint_pending(due_only=True)
            clock.advance(61)
            late = p.audit_log.checkpoint_pending(due_only=True)

            assert early is None
            assert late is not None
            assert late.size == p.audit_log.size

    def test_the_worker_checkpoints_an_idle_log(self):
        """A worker pass signs the events left uncovered once the interval has passed."""
        from proctor.app.worker import Worker

        clock = FrozenClock()
        with Proctor.in_memory(clock=clock) as p:
            p.submit(make_plan([READ]))
            p.submit(make_plan([READ]))
            clock.advance(61)

            Worker(p.gateway).run_once()

            assert p.latest_checkpoint().size == p.audit_log.size

    def test_closing_covers_the_newest_events(self, tmp_path):
        """Closing an instance signs a checkpoint over the events appended since the last."""
        home = tmp_path / "h"
        init_home(home)
        with Proctor.open(home) as p:
            p.submit(make_plan([READ]))
            p.submit(make_plan([READ]))
            size = p.audit_log.size
            assert p.latest_checkpoint().size < size

        with Proctor.open(home) as p:
            assert p.latest_checkpoint().size == size

    def test_an_export_covers_every_event(self, p, tmp_path):
        """An export carries a checkpoint over all its events, so its tail cannot be cut."""
        p.submit(make_plan([READ]))
        p.submit(make_plan([READ]))

        manifest = p.export(tmp_path / "bundle")

        assert max(int(Path(c).stem) for c in manifest.checkpoints) == manifest.events


class TestReopen:
    def test_reopen_checks_and_continues(self, tmp_path):
        """A reopened SQLite instance rebuilds the tree and keeps the same roots."""
        home = tmp_path / "h"
        init_home(home)
        with Proctor.open(home) as p:
            p.submit(make_plan([READ]))
            cp = p.checkpoint()
        with Proctor.open(home) as p:
            assert p.audit_log.root(cp.size) == cp.root
            p.submit(make_plan([READ]))
            assert p.verify().ok

    def test_tampered_checkpoint_detected_on_start(self, tmp_path):
        """A stored checkpoint whose root does not match the tree stops the start."""
        import sqlite3

        home = tmp_path / "h"
        init_home(home)
        with Proctor.open(home) as p:
            p.submit(make_plan([READ]))
            p.checkpoint()
        with sqlite3.connect(home / "proctor.db") as db:
            db.execute("UPDATE checkpoints SET root = ?", (b"\x01" * 32,))
        with pytest.raises(AuditIntegrityError):
            Proctor.open(home)

    def test_two_processes_share_one_tree(self, tmp_path):
        """Two instances on one database append to one linear log and one tree."""
        home = tmp_path / "h"
        init_home(home)
        a, b = Proctor.open(home), Proctor.open(home)
        try:
            for _ in range(3):
                a.submit(make_plan([READ]))
                b.submit(make_plan([READ]))
            assert a.audit_log.root() == b.audit_log.root()
            assert a.verify().ok
            assert isinstance(a.audit_log, AuditLog)
            a.checkpoint()
            b.checkpoint()
        finally:
            a.close()
            b.close()


class TestKeyRotation:
    def test_rotation_keeps_old_events_verifiable(self, tmp_path):
        """After a rotation new events use the new key and the whole log still verifies."""
        home = tmp_path / "h"
        init_home(home)
        with Proctor.open(home) as p:
            p.submit(make_plan([READ]))
            old = p.gateway.signer.key_id
            new = p.rotate_key()
        with Proctor.open(home) as p:
            p.submit(make_plan([READ]))
            last = p.events()[-1].body
            assert new.encode() in last
            assert new != old
            assert [e.key_id for e in p.keyring.entries()] == [old, new]
            assert p.keyring.entries()[0].not_after is not None
            assert p.verify().ok
            assert any(b'"keys.rotated"' in e.body for e in p.events())

    def test_rotation_schedule(self, tmp_path):
        """With rotate_every_days, opening an instance whose key is older rotates it."""
        from datetime import timedelta

        home = tmp_path / "h"
        clock = FrozenClock()
        init_home(home, clock=clock)
        cfg = home / "config.toml"
        cfg.write_text(cfg.read_text().replace("rotate_every_days = 0", "rotate_every_days = 30"))
        with Proctor.open(home, clock=clock) as p:
            assert len(p.keyring.entries()) == 1
        clock.advance(timedelta(days=31))
        with Proctor.open(home, clock=clock) as p:
            assert len(p.keyring.entries()) == 2
            p.submit(make_plan([READ]))
            assert p.verify().ok

    def test_a_scheduled_rotation_is_recorded_like_a_manual_one(self, tmp_path):
        """rotate_every_days records keys.rotated (key_id, previous, scheduled: true) as the
        first event after the rotation, signed by the new key; the log verifies. Before, only
        `proctor keys rotate` recorded the event."""
        from datetime import timedelta

        home = tmp_path / "h"
        clock = FrozenClock()
        init_home(home, clock=clock)
        cfg = home / "config.toml"
        cfg.write_text(cfg.read_text().replace("rotate_every_days = 0", "rotate_every_days = 30"))
        with Proctor.open(home, clock=clock) as p:
            p.submit(make_plan([READ]))
            before = len(p.events())
        clock.advance(timedelta(days=31))

        with Proctor.open(home, clock=clock) as p:
            old, new = (e.key_id for e in p.keyring.entries())
            first = orjson.loads(p.events()[before].body)
            p.submit(make_plan([READ]))
            rotated = [e for e in p.events() if b'"keys.rotated"' in e.body]

            assert first["type"] == "keys.rotated"
            assert first["data"] == {"key_id": new, "previous": old, "scheduled": True}
            assert first["key_id"] == new
            assert len(rotated) == 1
            assert p.verify().ok
        with Proctor.open(home, clock=clock) as p:  # not due again: nothing more recorded
            assert sum(b'"keys.rotated"' in e.body for e in p.events()) == 1

    def test_instances_opening_a_due_home_at_once_rotate_once(self, tmp_path):
        """Several instances opening a home whose key is due rotate it once, sign only with
        keys of the keyring, and the log verifies (a lost key failed as unknown_key)."""
        import threading
        from datetime import timedelta

        home = tmp_path / "h"
        clock = FrozenClock()
        init_home(home, clock=clock)
        cfg = home / "config.toml"
        cfg.write_text(cfg.read_text().replace("rotate_every_days = 0", "rotate_every_days = 1"))
        clock.advance(timedelta(days=2))
        n = 6
        barrier = threading.Barrier(n, timeout=10)
        signed_with: list[str] = []
        errors: list[Exception] = []

        def open_and_submit() -> None:
            barrier.wait()
            try:
                with Proctor.open(home, clock=clock) as q:
                    q.submit(make_plan([READ]))
                    signed_with.append(q.gateway.signer.key_id)
            except Exception as exc:  # noqa: BLE001 - collected for the assert
                errors.append(exc)

        threads = [threading.Thread(target=open_and_submit) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

        assert errors == []
        with Proctor.open(home, clock=clock) as p:
            ids = [e.key_id for e in p.keyring.entries()]
            assert len(ids) == 2  # one rotation
            assert set(signed_with) == {ids[-1]}
            assert len(list((home / "keys").glob("*.pem"))) == 1  # the retired key is deleted
            assert sum(b'"keys.rotated"' in e.body for e in p.events()) == 1  # by the rotator
            assert p.verify().ok


class TestCompactTree:
    """The live tree keeps the upper levels only; proofs read old blocks from the store."""

    @pytest.mark.parametrize("where", ["memory", "sqlite"])
    def test_proofs_over_many_blocks_after_reopen(self, tmp_path, where):
        """Past a few 256-leaf blocks, every proof still verifies, before and after reopen."""
        home = tmp_path / "h"
        if where == "sqlite":
            init_home(home)
        opened = Proctor.open(home) if where == "sqlite" else Proctor.in_memory()
        with opened as p:
            for _ in range(150):  # ~6 events each: several complete blocks
                p.submit(make_plan([READ]))
            size, root = p.audit_log.size, p.audit_log.root()
            assert size > 3 * 256
            nodes = p.audit_log._nodes
            held = sum(len(x) for x in nodes._upper) + sum(len(x) for x in nodes._block)
            # The block being filled (< 2 * 256) and one hash per 128 events, not the ~2 per
            # event of a full in-memory tree.
            assert held < 2 * 256 + size // 100
            events = p.events(limit=size)
            for e in events[:: max(1, size // 40)]:
                proof = p.inclusion_proof(e.seq)
                verify_inclusion(
                    leaf_hash(e.body), e.seq, size, [_b(h) for h in proof["hashes"]], root
                )
            proof = p.consistency_proof(100, size)
            verify_consistency(
                100, size, p.audit_log.root(100), root, [_b(h) for h in proof["hashes"]]
            )
        if where == "sqlite":
            with Proctor.open(home) as p:
                assert p.audit_log.root(size) == root
                e = p.events(limit=1)[0]
                proof = p.inclusion_proof(e.seq, size)
                verify_inclusion(
                    leaf_hash(e.body), e.seq, size, [_b(h) for h in proof["hashes"]], root
                )


class TestUnsigned:
    """``Proctor.in_memory(audit_signatures=False)``: chain and tree, no signatures."""

    def test_events_are_chained_unsigned_and_verify_only_here(self):
        with Proctor.in_memory(clock=FrozenClock(), audit_signatures=False) as p:
            for _ in range(3):
                assert p.submit(make_plan([READ])).status.value == "succeeded"
            events = p.events()
            bodies = [orjson.loads(e.body) for e in events]
            assert {(b["key_id"], b["signature"]) for b in bodies} == {("unsigned", "")}
            assert [b["prev_hash"] for b in bodies[1:]] == [e.hash for e in events[:-1]]
            assert p.audit_log.size == len(events)
            assert p.verify().ok and p.verify(check_signatures=False).ok
            assert p.gateway.store.checkpoints() == []  # nothing to sign them with
            with pytest.raises(InvalidRequestError, match="unsigned"):
                p.checkpoint()

            # Another verifier (a signed instance's keyring) does not accept such events.
            with Proctor.in_memory() as signed:
                report = verify_events(events, signed._keys)
            assert (report.ok, report.problem, report.first_bad_seq) == (
                False,
                "unknown_key",
                0,
            )
            # And an unsigned event that claims a signature is refused.
            forged = dict(bodies[0], signature="AAAA")
            row = dataclasses.replace(events[0], body=canonical(forged))
            assert not verify_events([row], p._keys, check_signatures=True).ok

    def test_a_signed_instance_signs_by_default(self, p):
        p.submit(make_plan([READ]))
        body = orjson.loads(p.events()[0].body)
        assert body["key_id"].startswith("ed25519:") and len(_b(body["signature"])) == 64

    def test_an_unsigned_log_exports_and_has_no_note_keys(self, tmp_path):
        """Export works (the offline verifier then needs this keyring); no vkeys to publish."""
        with Proctor.in_memory(clock=FrozenClock(), audit_signatures=False) as p:
            p.submit(make_plan([READ]))
            assert p.vkeys() == []
            manifest = p.export(tmp_path / "out")
            assert manifest.events == len(p.events())
