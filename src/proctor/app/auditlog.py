"""The transparency log over the event chain: Merkle tree, signed checkpoints, proofs.

Every event appended by a ``Journal`` becomes a leaf (its canonical bytes, signature
included) of an RFC 9162 Merkle tree. The leaf hashes are stored in the same transaction as
the events, so the tree never lags or leads the log. The upper interior nodes (one per 128
leaves) are kept in memory, maintained incrementally as leaves arrive and rebuilt from the
stored leaves on start (about a second per million events); the lower ones are recomputed
from a block of 256 stored leaves when a proof needs them (``CompactNodes``), so memory does
not grow with every action. Storing them would put one B-tree page per tree level in every
commit that acknowledges an action. Before each append this copy is checked against
the store (size and last leaf) and what another process, or a rolled-back transaction,
changed is reloaded.

Checkpoints are C2SP signed notes over (origin, size, root), issued every N events, every T
seconds (checked on append, and by the worker's timer: ``checkpoint_pending``), when the log
is closed, before an export, or on demand. Before signing, the new tree is proven consistent
with the last signed checkpoint: the log never signs two views of history that disagree.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from proctor.audit.events import UNSIGNED, pinned
from proctor.audit.merkle import CompactNodes, MerkleTree, leaf_hash, verify_consistency
from proctor.audit.note import Checkpoint, sign_note
from proctor.core.ports import (
    AuditHead,
    CheckpointRow,
    Clock,
    EventRow,
    Signer,
    Store,
    Transaction,
)
from proctor.errors import AuditIntegrityError, InvalidRequestError

__all__ = ["AuditLog", "CheckpointPolicy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointPolicy:
    """When checkpoints are signed.

    Attributes:
        every: Sign after this many new events. Default 1,000.
        interval: Sign when the last checkpoint is older than this and there are new events.
            Default 60 seconds.
    """

    every: int = 1000
    interval: timedelta = timedelta(seconds=60)


class AuditLog:
    """The Merkle tree and checkpoints of one store's event log."""

    def __init__(
        self,
        store: Store,
        signer: Signer,
        clock: Clock,
        *,
        origin: str,
        policy: CheckpointPolicy | None = None,
    ) -> None:
        self.store = store
        self.signer = signer
        self.clock = clock
        self.origin = origin
        self.policy = policy or CheckpointPolicy()
        self._lock = threading.RLock()
        # The transaction the tree reads stored leaves through, set while ``_lock`` is held
        # inside one (``_reading``): its own appends are visible to it, and on PostgreSQL a
        # pooled connection would not see them.
        self._source: Transaction | None = None
        self._nodes = CompactNodes(self._read_leaves)
        self._tree = MerkleTree(self._nodes)
        self._last_cp: CheckpointRow | None = None
        self._last_hash: str | None = None  # hash of the last event this copy has seen
        self._last_key: str | None = None  # the key that signed it
        self._loaded = False
        # An unsigned log (``NoSigner``) keeps the chain and the tree but signs no checkpoint.
        self._signs = signer.key_id != UNSIGNED

    # ------------------------------------------------------------------ sync

    def _read_leaves(self, start: int, count: int) -> list[bytes]:
        if self._source is None:  # internal invariant: reads happen inside ``_reading``
            raise AuditIntegrityError("the Merkle tree read leaves outside a transaction")
        return self._source.load_nodes({0: start}, limit=count).get(0, [])

    @contextmanager
    def _reading(self, tx: Transaction) -> Iterator[None]:
        """Hold ``_lock`` with ``tx`` as the source of stored leaves."""
        with self._lock:
            outer, self._source = self._source, tx
            try:
                yield
            finally:
                self._source = outer

    def _reload(self, source: Transaction, size: int) -> None:
        self._nodes = CompactNodes(self._read_leaves)
        self._tree = MerkleTree(self._nodes)
        # Inside an append the store already holds the new events: take only ``size`` leaves.
        # Read in chunks: the whole log's leaf hashes never sit in memory at once.
        chunk = 1 << 16
        while self._tree.size < size:
            leaves = source.load_nodes(
                {0: self._tree.size}, limit=min(chunk, size - self._tree.size)
            )
            if not leaves.get(0):
                break  # fewer events than ``size``: the caller reports the mismatch
            for h in leaves[0]:
                self._tree.append(h)
        self._last_cp = source.latest_checkpoint()
        self._loaded = True

    def _sync(self, tx: Transaction, size: int, last_hash: str | None = None) -> None:
        """Make the in-memory tree match the store's ``size`` committed leaves."""
        tree = self._tree
        # The head's hash commits to the last event, hence to its leaf: if it is the one
        # this copy appended last, nothing changed underneath and no query is needed.
        same_size = self._loaded and tree.size == size
        if same_size and last_hash is not None and last_hash == self._last_hash:
            return
        if same_size and (size == 0 or tx.node(0, size - 1) == self._nodes.get(0, size - 1)):
            self._last_cp = tx.latest_checkpoint()
            return
        if (
            self._loaded
            and tree.size < size
            and (tree.size == 0 or tx.node(0, tree.size - 1) == self._nodes.get(0, tree.size - 1))
        ):
            # Another writer appended: load only the new leaves.
            for h in tx.load_nodes({0: tree.size}, limit=size - tree.size).get(0, []):
                self._tree.append(h)
            self._last_cp = tx.latest_checkpoint()
            return
        self._reload(tx, size)
        if self._tree.size != size:
            raise AuditIntegrityError(
                f"the Merkle tree has {self._tree.size} leaves but the log has {size} events",
                field="merkle",
                hint="Run `proctor audit verify`; the tree is rebuilt from the events.",
            )

    def open(self) -> None:
        """Load the tree and check every stored checkpoint against it (on start).

        Raises:
            AuditIntegrityError: if a checkpoint's root is not the tree's root at its size.
        """
        # Under the write lock: another process (a server next to this CLI) may append
        # at any moment, and the tree must be loaded from one consistent view of the log.
        # Lock order, here and in every method: the log's lock (``audit_head`` takes it:
        # PostgreSQL locks there, SQLite when the transaction begins), then ``_lock``. An
        # append holds the first when it calls ``on_append``; the reverse order deadlocks.
        with self.store.transaction(durable=False) as tx:
            n = tx.audit_head().size
            with self._reading(tx):
                self._reload(tx, n)
                if self._tree.size != n:
                    raise AuditIntegrityError(
                        f"the Merkle tree has {self._tree.size} leaves but the log has {n} events",
                        field="merkle",
                    )
                for cp in self.store.checkpoints():
                    if cp.size > n and self.store.event_count() >= cp.size:
                        continue  # signed by another process since: checked when it syncs
                    if cp.size > n or self._tree.root(cp.size) != cp.root:
                        raise AuditIntegrityError(
                            f"signed checkpoint at size {cp.size} does not match the log",
                            field="checkpoints",
                            problem="inconsistent_checkpoints",
                        )

    # ------------------------------------------------------------------ append

    def on_append(
        self,
        tx: Transaction,
        rows: Sequence[EventRow],
        head: AuditHead,
        *,
        key_id: str | None = None,
    ) -> None:
        """Add ``rows`` (just appended after ``head``) as leaves; checkpoint if due.

        ``key_id`` is the key that signed them (one journal signs with one key), for
        ``head_key``.
        """
        with self._reading(tx):
            self._sync(tx, head.size, head.last_hash)
            # The store keeps each event's leaf hash in its row; the interior nodes live here.
            for row in rows:
                self._tree.append(leaf_hash(row.body))
            # Valid only once the transaction commits; a rollback leaves the store's head
            # different from this hash, and the next sync then reloads.
            if rows:
                self._last_hash, self._last_key = rows[-1].hash, key_id
            if self._signs and self._due():
                self._sign(tx)

    def head_key(self, head: AuditHead) -> str | None:
        """Return the key that signed the event at ``head``.

        Known without reading the event when this copy appended it (hashes are unique);
        otherwise read from its bytes (``AuditHead.key_id``). Called by an appender holding
        the log's lock, so no other append of this process changes ``_last_hash`` meanwhile.
        """
        if self._last_key is not None and head.last_hash == self._last_hash:
            return self._last_key
        return head.key_id

    def _due(self) -> bool:
        size = self._tree.size
        last = self._last_cp
        if last is None:
            return size >= 1
        if size - last.size >= self.policy.every:
            return True
        age = self.clock.now() - datetime.fromisoformat(last.created_at)
        return size > last.size and age >= self.policy.interval

    def _sign(self, tx: Transaction) -> CheckpointRow:
        size = self._tree.size
        root = self._tree.root()
        # Another process may have signed since we last looked: compare with the store's.
        last = self._last_cp = tx.latest_checkpoint()
        if last is not None:
            if size < last.size:
                raise AuditIntegrityError(
                    f"the log shrank from {last.size} to {size} events", field="checkpoints"
                )
            if size == last.size:
                if root != last.root:
                    raise AuditIntegrityError("same size, different root", field="checkpoints")
                return last
            # Never sign a view of history inconsistent with one signed before.
            proof = self._tree.consistency_proof(last.size, size) if last.size else []
            if last.size:
                verify_consistency(last.size, size, last.root, root, proof)
        body = Checkpoint(origin=self.origin, size=size, root=root).body()
        signer = pinned(self.signer)  # one key for the name and the signature
        note = sign_note(body, self.origin, signer.sign, signer.public_keys()[signer.key_id])
        row = CheckpointRow(
            size=size, root=root, note=note, created_at=self.clock.now().isoformat()
        )
        tx.add_checkpoint(row)
        self._last_cp = row
        return row

    def checkpoint(self) -> CheckpointRow | None:
        """Sign a checkpoint of the current tree now (no-op if the log is empty).

        Raises:
            InvalidRequestError: the log is unsigned (it has no key to sign with).
        """
        if not self._signs:
            raise InvalidRequestError(
                "this audit log is unsigned (audit_signatures=False): it signs no checkpoints",
                field="audit_signatures",
            )
        with self.store.transaction() as tx:
            head = tx.audit_head()  # the log's lock first (see ``open``)
            with self._reading(tx):
                self._sync(tx, head.size)
                if head.size == 0:
                    return None
                return self._sign(tx)

    def checkpoint_pending(self, *, due_only: bool = False) -> CheckpointRow | None:
        """Sign a checkpoint if events were appended since the last one; else do nothing.

        Checkpoints signed only inside an append leave the newest events uncovered until
        the next append: whoever controls the store could cut them and the log would still
        verify. So, as transparency logs do, the log is also checkpointed when it closes,
        before an export, and by the worker of long-running processes every
        ``policy.interval`` (``due_only``). Cheap when nothing is pending: two indexed reads,
        no write transaction.

        Args:
            due_only: Sign only if the last checkpoint is older than ``policy.interval``.

        Returns:
            The new checkpoint, or None when none was needed (or the log is unsigned).
        """
        if not self._signs:
            return None
        last = self.store.latest_checkpoint()
        if due_only and last is not None:
            age = self.clock.now() - datetime.fromisoformat(last.created_at)
            if age < self.policy.interval:
                return None
        after = -1 if last is None else last.size - 1
        if not self.store.read_events(after=after, limit=1):
            return None
        return self.checkpoint()

    # ------------------------------------------------------------------ read

    @contextmanager
    def _fresh(self) -> Iterator[MerkleTree]:
        """Hold the tree, synced with the committed log, until the block ends."""
        # The log's lock first, then ours (see ``open``): taking ours first deadlocks
        # against an append that waits in ``on_append`` while holding the log's.
        with self.store.transaction() as tx:
            size = tx.audit_head().size
            with self._reading(tx):
                self._sync(tx, size)
                yield self._tree

    @property
    def size(self) -> int:
        """The number of leaves (events) now."""
        with self._fresh() as tree:
            return tree.size

    def root(self, size: int | None = None) -> bytes:
        """Return the tree root at ``size`` (default: now)."""
        with self._fresh() as tree:
            return tree.root(size)

    def latest_checkpoint(self) -> CheckpointRow | None:
        """Return the latest signed checkpoint."""
        return self.store.latest_checkpoint()

    def inclusion_proof(self, index: int, size: int | None = None) -> tuple[int, list[bytes]]:
        """Return ``(tree_size, hashes)`` proving leaf ``index`` is in the tree of ``size``.

        Raises:
            InvalidRequestError: if ``index`` or ``size`` is out of range.
        """
        with self._fresh() as tree:
            size = tree.size if size is None else size
            if not 0 <= index < size <= tree.size:
                raise InvalidRequestError(
                    f"need 0 <= index < size <= {tree.size}; got index {index}, size {size}",
                    field="index",
                )
            return size, tree.inclusion_proof(index, size)

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        """Return the RFC 9162 consistency proof between two tree sizes.

        Raises:
            InvalidRequestError: unless 0 < old <= new <= size.
        """
        with self._fresh() as tree:
            if not 0 < old <= new <= tree.size:
                raise InvalidRequestError(
                    f"need 0 < from <= to <= {tree.size}; got {old}, {new}", field="from"
                )
            return tree.consistency_proof(old, new)

    def leaf_hash(self, index: int) -> bytes:
        """Return the stored leaf hash of event ``index``."""
        with self._fresh():
            return self._nodes.get(0, index)
