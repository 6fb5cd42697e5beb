"""The Merkle log over every store: one tree for several replicas, and no lock-order deadlock.

Each replica keeps the interior nodes of the tree in memory (``app.auditlog.AuditLog``) and
catches up with the leaves other replicas appended before it proves, signs or reports a root.
"""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime, timedelta

import pytest

from proctor.app.auditlog import AuditLog, CheckpointPolicy
from proctor.audit.events import seal
from proctor.audit.keys import LocalSigner
from proctor.audit.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from proctor.storage import open_store

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SIGNER = LocalSigner(b"\x05" * 32)


class Clock:
    def now(self):
        return T0


def _log(store, every=1000):
    log = AuditLog(
        store,
        SIGNER,
        Clock(),
        origin="test.example/log",
        policy=CheckpointPolicy(every=every, interval=timedelta(days=1)),
    )
    log.open()
    return log


def _append(store, log, n=1, type_="t.e"):
    """Append ``n`` events in one transaction, as ``Journal.flush`` does."""
    with store.transaction() as tx:
        head = tx.audit_head()
        rows, seq, prev = [], head.size, head.last_hash
        for _ in range(n):
            body = {"type": type_, "timestamp": T0.isoformat(), "plan_id": None, "step_id": None}
            row = seal(body, seq=seq, prev_hash=prev, signer=SIGNER)
            rows.append(row)
            seq, prev = seq + 1, row.hash
        tx.append_events(rows)
        log.on_append(tx, rows, head)
    return rows


def _rebuilt(store):
    return MerkleTree.from_leaf_hashes(leaf_hash(r.body) for r in store.iter_events())


@pytest.fixture(params=["sqlite", "postgres"])
def shared_url(request, tmp_path):
    if request.param == "postgres":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'shared.db'}"


class TestOneProcess:
    @pytest.mark.parametrize("backend", ["memory", "sqlite"])
    def test_readers_and_appenders_do_not_deadlock(self, backend, tmp_path):
        """Proof and root readers running while events are appended never block each other.

        Regression: reads took the log object's lock before the store's, appends the other
        way round (``on_append`` runs inside the appending transaction): a deadlock. The lock
        order is the process's own, so memory and SQLite show it; a deadlocked store is left
        open (closing it would wait forever), so the test fails instead of hanging.
        """
        store = open_store("memory://" if backend == "memory" else f"sqlite:///{tmp_path}/p.db")
        log = _log(store, every=7)
        stop = threading.Event()
        errors = []

        def read():
            try:
                while not stop.is_set():
                    size = log.size
                    if size:
                        tree_size, proof = log.inclusion_proof(size - 1)
                        verify_inclusion(
                            log.leaf_hash(size - 1), size - 1, tree_size, proof, log.root(tree_size)
                        )
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        def write():
            try:
                for _ in range(60):
                    _append(store, log, 2)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        readers = [threading.Thread(target=read, daemon=True) for _ in range(2)]
        writers = [threading.Thread(target=write, daemon=True) for _ in range(2)]
        for t in (*readers, *writers):
            t.start()
        for t in writers:
            t.join(90)
        stop.set()
        for t in readers:
            t.join(10)

        if [t for t in (*readers, *writers) if t.is_alive()]:
            pytest.fail("readers and appenders deadlocked")
        try:
            assert not errors, errors
            assert log.size == store.event_count() == 240
            assert log.root() == _rebuilt(store).root()
        finally:
            store.close()


class TestReplicas:
    def test_each_replica_catches_up_before_it_answers(self, shared_url):
        """Two replicas appending in turn agree on size, root and proofs with a rebuild."""
        a_store, b_store = open_store(shared_url), open_store(shared_url)
        try:
            a, b = _log(a_store), _log(b_store)
            _append(a_store, a, 3)
            _append(b_store, b, 2)  # b first catches up with a's three leaves
            _append(a_store, a, 4)  # and a with b's two

            truth = _rebuilt(a_store)
            assert a.size == b.size == truth.size == 9
            assert a.root() == b.root() == truth.root()
            # b proves an event only a appended, against a root a computed.
            size, proof = b.inclusion_proof(8)
            verify_inclusion(b.leaf_hash(8), 8, size, proof, a.root(size))
            verify_consistency(3, 9, b.root(3), a.root(9), a.consistency_proof(3, 9))
        finally:
            a_store.close()
            b_store.close()

    def test_checkpoints_of_several_replicas_are_consistent(self, shared_url):
        """Concurrent appenders in two replicas sign checkpoints that all extend each other."""
        stores = [open_store(shared_url) for _ in range(2)]
        try:
            logs = [_log(s, every=5) for s in stores]
            errors = []

            def write(i):
                try:
                    for _ in range(20):
                        _append(stores[i], logs[i], 2, f"replica.{i}")
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(90)
            assert not errors, errors

            truth = _rebuilt(stores[0])
            cps = stores[0].checkpoints()
            assert truth.size == 80
            assert len(cps) >= 8  # one every five events at least, whoever signed it
            assert [c.size for c in cps] == sorted({c.size for c in cps})
            for cp in cps:  # every signed root is the root of the one log at its size
                assert cp.root == truth.root(cp.size)
            for old, new in itertools.pairwise(cps):
                proof = truth.consistency_proof(old.size, new.size)
                verify_consistency(old.size, new.size, old.root, new.root, proof)
            # A replica that restarts now loads and checks every checkpoint.
            fresh = open_store(shared_url)
            try:
                assert _log(fresh).root() == truth.root()
            finally:
                fresh.close()
        finally:
            for s in stores:
                s.close()
