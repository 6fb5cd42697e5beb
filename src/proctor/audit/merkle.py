"""RFC 9162 Merkle tree: incremental tree, inclusion and consistency proofs, and verifiers.

The audit log is a transparency log. Its tree is the Merkle Tree Hash (MTH) of RFC 9162
section 2.1.1 (identical to RFC 6962 section 2.1): leaves are hashed as SHA-256(0x00 || d)
and interior nodes as SHA-256(0x01 || left || right). The 0x00 / 0x01 prefixes are domain
separation: without them an interior node could be passed off as a leaf (a second-preimage
attack on the tree).

``MerkleTree`` stores the hash of every *perfect* subtree it has completed, level by level,
in a ``NodeStore``. The subtree ``[i * 2**k, (i + 1) * 2**k)`` is node ``i`` of level ``k``.
Every root, path and proof of RFC 9162 is then a handful of stored nodes plus at most one
non-perfect subtree folded from O(log n) of them. ``MemoryNodes`` keeps every node;
``CompactNodes`` keeps the upper levels and recomputes a lower node from its block of leaves.

The verifiers transcribe RFC 9162 sections 2.1.3.2 and 2.1.4.2 step by step; they check the
proof length up front only to give a precise reason. This module does no I/O.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from proctor.errors import AuditIntegrityError, InvalidRequestError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactNodes",
    "MemoryNodes",
    "MerkleTree",
    "NodeStore",
    "leaf_hash",
    "node_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Length in bytes of every hash in the tree (SHA-256)."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256() — the root of the empty tree (RFC 9162 section 2.1.1)."""


def leaf_hash(data: bytes) -> bytes:
    """Return the RFC 9162 leaf hash, SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 interior node hash, SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Return k, the largest power of two strictly smaller than n (n > 1; RFC 9162 2.1.1)."""
    return 1 << ((n - 1).bit_length() - 1)


class NodeStore(Protocol):
    """Where a ``MerkleTree`` keeps its perfect-subtree hashes.

    Level 0 holds the leaf hashes; node ``i`` of level ``k`` is the hash of leaves
    ``[i * 2**k, (i + 1) * 2**k)``. Levels only grow, by appending at the end, so a store can
    be an append-only table (the lead's SQLite store keys rows by ``(level, index)``).
    """

    def get(self, level: int, index: int) -> bytes:
        """Return node ``index`` of ``level``; it must exist."""
        ...

    def append(self, level: int, node: bytes) -> None:
        """Append ``node`` as the next node of ``level``."""
        ...

    def count(self, level: int) -> int:
        """Return how many nodes ``level`` holds (0 for a level never written)."""
        ...


class MemoryNodes:
    """In-memory ``NodeStore``: one list of hashes per level (~64 bytes a leaf all told)."""

    __slots__ = ("_levels",)

    def __init__(self) -> None:
        self._levels: list[list[bytes]] = []

    def get(self, level: int, index: int) -> bytes:
        """Return node ``index`` of ``level``."""
        return self._levels[level][index]

    def append(self, level: int, node: bytes) -> None:
        """Append ``node`` to ``level``, creating the level when it is the next one up."""
        if level == len(self._levels):
            self._levels.append([])
        self._levels[level].append(node)

    def count(self, level: int) -> int:
        """Return how many nodes ``level`` holds."""
        return len(self._levels[level]) if level < len(self._levels) else 0


class CompactNodes:
    """A ``NodeStore`` whose memory grows by ~1 hash per ``2**low / 2`` leaves, not 2 per leaf.

    It keeps the nodes of level ``low`` and above, and the nodes below ``low`` of the block
    of ``2**low`` leaves being filled. A node below ``low`` in an earlier block is recomputed
    from that block's leaf hashes, read with ``read(start, count)`` (the store keeps every
    leaf hash with its event); the last ``cache`` blocks completed or read stay in memory, so
    a checkpoint's consistency proof (within the last thousand events) reads nothing. At
    ``low = 8`` a log of 6 million events holds ~47,000 hashes (~3.5 MB) where
    ``MemoryNodes`` would hold 12 million (~900 MB), and no list ever grows large enough
    for its reallocation to stall an append.

    Args:
        read: Returns the leaf hashes ``[start, start + count)``; called only for a block
            that is complete, so it must return exactly ``count`` of them.
        low: Levels kept per block (a block is ``2**low`` leaves).
        cache: How many complete blocks to keep.
    """

    __slots__ = ("_block", "_cache", "_cache_size", "_counts", "_low", "_read", "_upper")

    def __init__(
        self, read: Callable[[int, int], Sequence[bytes]], *, low: int = 8, cache: int = 8
    ) -> None:
        self._read = read
        self._low = low
        self._counts: list[int] = []
        self._upper: list[list[bytes]] = []  # levels low, low + 1, ...
        self._block: list[list[bytes]] = [[] for _ in range(low)]  # the block being filled
        self._cache: OrderedDict[int, list[list[bytes]]] = OrderedDict()
        self._cache_size = cache

    def count(self, level: int) -> int:
        """Return how many nodes ``level`` holds."""
        return self._counts[level] if level < len(self._counts) else 0

    def append(self, level: int, node: bytes) -> None:
        """Append ``node`` as the next node of ``level`` (leaves first, then their parents)."""
        if level == len(self._counts):
            self._counts.append(0)
        index = self._counts[level]
        self._counts[level] = index + 1
        low = self._low
        if level >= low:
            if level - low == len(self._upper):
                self._upper.append([])
            self._upper[level - low].append(node)
            return
        if level == 0 and index and not index & ((1 << low) - 1):
            # A new block starts: the finished one moves to the cache (its nodes are all
            # there: the leaf that completed it also completed its parents, up to ``low``).
            self._remember((index >> low) - 1, self._block)
            self._block = [[] for _ in range(low)]
        self._block[level].append(node)

    def get(self, level: int, index: int) -> bytes:
        """Return node ``index`` of ``level``; it must exist."""
        low = self._low
        if level >= low:
            return self._upper[level - low][index]
        if not 0 <= index < self.count(level):
            raise IndexError(f"no node {index} at level {level}")
        shift = low - level
        block = index >> shift
        offset = index - (block << shift)
        if block == (self._counts[0] - 1) >> low:
            return self._block[level][offset]
        levels = self._cache.get(block)
        if levels is None:
            levels = self._load(block)
        else:
            self._cache.move_to_end(block)
        return levels[level][offset]

    def _load(self, block: int) -> list[list[bytes]]:
        size = 1 << self._low
        leaves = list(self._read(block * size, size))
        if len(leaves) != size:
            raise AuditIntegrityError(
                f"the store returned {len(leaves)} leaf hashes for block {block}, not {size}",
                field="merkle.store",
            )
        levels = [leaves]
        for _ in range(1, self._low):
            below = levels[-1]
            levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below), 2)])
        self._remember(block, levels)
        return levels

    def _remember(self, block: int, levels: list[list[bytes]]) -> None:
        self._cache[block] = levels
        self._cache.move_to_end(block)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


class MerkleTree:
    """An append-only RFC 9162 Merkle tree over leaf hashes.

    Args:
        store: Where the perfect-subtree hashes live; a fresh ``MemoryNodes`` by default. A
            store that already holds nodes (a reopened SQLite log) is checked for shape.

    Raises:
        AuditIntegrityError: The store's levels do not have the sizes a tree of its leaf
            count must have (for example a crash between writing a leaf and its parents).
    """

    __slots__ = ("_nodes", "_size")

    def __init__(self, store: NodeStore | None = None) -> None:
        self._nodes: NodeStore = MemoryNodes() if store is None else store
        self._size = self._nodes.count(0)
        # A tree of n leaves has exactly n >> k complete subtrees at level k, and nothing
        # above. Fail closed on any other shape: proofs from a torn store would be wrong.
        level, expected = 0, self._size
        while expected or self._nodes.count(level):
            if self._nodes.count(level) != expected:
                raise AuditIntegrityError(
                    f"Merkle node store level {level} holds {self._nodes.count(level)} nodes,"
                    f" but a tree of {self._size} leaves needs {expected}",
                    field="merkle.store",
                    hint="rebuild the tree from the leaf hashes (MerkleTree.from_leaf_hashes)",
                )
            level, expected = level + 1, expected >> 1

    @classmethod
    def from_leaf_hashes(
        cls, leaf_hashes: Iterable[bytes], *, store: NodeStore | None = None
    ) -> MerkleTree:
        """Build a tree by appending ``leaf_hashes`` in order (for rebuilds and tests).

        Args:
            leaf_hashes: The leaf hashes, already hashed with ``leaf_hash``.
            store: An empty store to fill; a fresh ``MemoryNodes`` by default.

        Returns:
            The tree.
        """
        tree = cls(store)
        for h in leaf_hashes:
            tree.append(h)
        return tree

    @property
    def size(self) -> int:
        """The number of leaves."""
        return self._size

    def append(self, leaf: bytes) -> int:
        """Append a leaf hash and complete every perfect subtree it closes.

        Amortised O(1) hashes (at most log2(n) for one call): leaf ``n`` closes one subtree
        per trailing 1 bit of ``n``.

        Args:
            leaf: The leaf hash, ``leaf_hash(entry)``; the raw entry is never stored here.

        Returns:
            The leaf's index.

        Raises:
            InvalidRequestError: ``leaf`` is not 32 bytes.
        """
        if len(leaf) != HASH_SIZE:
            raise InvalidRequestError(
                f"a leaf hash is {HASH_SIZE} bytes, got {len(leaf)}", field="leaf_hash"
            )
        index = self._size
        self._nodes.append(0, leaf)
        level, i, h = 0, index, leaf
        while i & 1:  # i is a right child: its parent subtree is now complete.
            h = node_hash(self._nodes.get(level, i - 1), h)
            level, i = level + 1, i >> 1
            self._nodes.append(level, h)
        self._size = index + 1
        return index

    def root(self, size: int | None = None) -> bytes:
        """Return MTH(D[0:size]), the root of the tree as it was at ``size`` leaves.

        Args:
            size: A tree size at most the current one; the current size by default.

        Returns:
            The 32-byte root; ``EMPTY_ROOT`` for size 0.

        Raises:
            InvalidRequestError: ``size`` is negative or larger than the tree.
        """
        size = self._size if size is None else size
        self._check_size(size, "size")
        return self._range_hash(0, size) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """Return PATH(index, D[0:size]), RFC 9162 section 2.1.3.1, leaf's sibling first.

        Args:
            index: The leaf index, ``0 <= index < size``.
            size: The tree size the proof is for, at most the current size.

        Returns:
            The audit path; empty for a one-leaf tree.

        Raises:
            InvalidRequestError: ``index`` or ``size`` is out of range.
        """
        self._check_size(size, "size")
        if not 0 <= index < size:
            raise InvalidRequestError(
                f"leaf index {index} is not in a tree of {size} leaves", field="index"
            )
        # Walk the RFC recursion top-down over the range [lo, hi); the sibling at each step
        # is the other half. Left halves are always perfect and aligned (one stored node);
        # a right half is non-perfect at most once (the first time we go left), so the cost
        # is O(log n) node reads. The RFC lists the root's child last, hence the reverse.
        path: list[bytes] = []
        lo, hi = 0, size
        while hi - lo > 1:
            k = _split(hi - lo)
            if index < lo + k:
                path.append(self._range_hash(lo + k, hi))
                hi = lo + k
            else:
                path.append(self._range_hash(lo, lo + k))
                lo += k
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """Return PROOF(old_size, D[0:new_size]), RFC 9162 section 2.1.4.1.

        Args:
            old_size: The earlier tree size, ``0 < old_size <= new_size``.
            new_size: The later tree size, at most the current size.

        Returns:
            The consistency proof; empty when the sizes are equal.

        Raises:
            InvalidRequestError: A size is out of range. Size 0 is refused because RFC 9162
                only defines the proof for 0 < m (the empty tree is consistent with all).
        """
        self._check_size(new_size, "new_size")
        if not 0 < old_size <= new_size:
            raise InvalidRequestError(
                f"no consistency proof from size {old_size} to size {new_size}",
                field="old_size",
                hint="the old size must be at least 1 and at most the new size",
            )
        # SUBPROOF(m, D[lo:hi], complete), unrolled. ``complete`` stays true while the old
        # tree is a prefix of the left-most subtrees, whose hash the verifier already has
        # (the old root), so it is left out of the proof.
        proof: list[bytes] = []
        lo, hi, m, complete = 0, new_size, old_size, True
        while m != hi - lo:
            k = _split(hi - lo)
            if m <= k:
                proof.append(self._range_hash(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._range_hash(lo, lo + k))
                lo, m, complete = lo + k, m - k, False
        if not complete:
            proof.append(self._range_hash(lo, hi))
        proof.reverse()
        return proof

    def _check_size(self, size: int, field: str) -> None:
        if not 0 <= size <= self._size:
            raise InvalidRequestError(
                f"tree size {size} is not between 0 and the current size {self._size}",
                field=field,
            )

    def _range_hash(self, lo: int, hi: int) -> bytes:
        """Return MTH(D[lo:hi]) for a range the RFC recursion can produce.

        Such a range starts on a multiple of the largest power of two not above its length,
        so its binary decomposition is a run of aligned perfect subtrees, largest first. MTH
        splits off the largest power of two below the length each time, which folds those
        subtrees right to left.
        """
        stack: list[bytes] = []
        pos = lo
        while pos < hi:
            level = (hi - pos).bit_length() - 1
            assert pos & ((1 << level) - 1) == 0, "range is not aligned"  # internal invariant
            stack.append(self._nodes.get(level, pos >> level))
            pos += 1 << level
        h = stack.pop()
        while stack:
            h = node_hash(stack.pop(), h)
        return h


def _fail(reason: str) -> AuditIntegrityError:
    return AuditIntegrityError(reason, field="proof")


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise _fail(f"{what} is {len(value)} bytes, not {HASH_SIZE}")


def _inclusion_shape(index: int, size: int) -> tuple[int, int]:
    """Return (inner, border): path nodes below the split of index and size - 1, and above.

    ``inner`` levels are where the paths to ``index`` and to the last leaf differ (each gives
    one sibling); above that, every 1 bit of ``index`` is a left sibling on the border.
    """
    inner = (index ^ (size - 1)).bit_length()
    return inner, (index >> inner).bit_count()


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Verify an inclusion proof, RFC 9162 section 2.1.3.2.

    Args:
        leaf: The leaf hash (``leaf_hash(entry)``).
        index: The leaf index.
        size: The tree size the proof and root are for.
        proof: The audit path, leaf's sibling first.
        root: The trusted root of the tree of ``size`` leaves.

    Raises:
        AuditIntegrityError: The proof does not show ``leaf`` at ``index`` under ``root``; the
            message says why.
    """
    _check_hash(leaf, "leaf hash")
    _check_hash(root, "root hash")
    for i, p in enumerate(proof):
        _check_hash(p, f"proof element {i}")
    # Step 1.
    if not 0 <= index < size:
        raise _fail(f"leaf index {index} is not in a tree of {size} leaves")
    inner, border = _inclusion_shape(index, size)
    if len(proof) != inner + border:
        raise _fail(
            f"inclusion proof for index {index} in size {size} has {len(proof)} hashes,"
            f" expected {inner + border}"
        )
    # Steps 2-4.
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:  # 4a: more hashes than levels.
            raise _fail("inclusion proof is too long")
        if fn & 1 or fn == sn:  # 4b: p is a left sibling.
            r = node_hash(p, r)
            # 4b.ii: if fn was the last node of its level (fn == sn, even), climb the
            # levels where it has no right sibling and is simply carried up.
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:  # p is a right sibling.
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1  # 4c.
    # Step 5.
    if sn != 0:
        raise _fail("inclusion proof is too short")
    if r != root:
        raise _fail(f"inclusion proof for index {index} does not lead to the root of size {size}")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Verify that the tree of ``new_size`` extends the tree of ``old_size``, RFC 9162 2.1.4.2.

    Args:
        old_size: The earlier tree size; must be at least 1.
        new_size: The later tree size.
        old_root: The trusted root at ``old_size``.
        new_root: The root at ``new_size`` being checked.
        proof: The consistency proof.

    Raises:
        AuditIntegrityError: The proof does not show the old tree is a prefix of the new one;
            the message says why.
    """
    _check_hash(old_root, "old root hash")
    _check_hash(new_root, "new root hash")
    for i, p in enumerate(proof):
        _check_hash(p, f"proof element {i}")
    # RFC 9162 defines the proof only for 0 < first. Size 0 proves nothing (every tree
    # extends the empty one), so a caller asking is confused: refuse rather than pass
    # trivially.
    if old_size < 1:
        raise _fail(f"no consistency proof exists from tree size {old_size}")
    if old_size > new_size:
        raise _fail(f"old size {old_size} is larger than new size {new_size}")
    if old_size == new_size:
        # Equal sizes: the proof is empty and the roots must simply match. A non-empty
        # proof here is malformed, and accepting it would let junk ride along.
        if proof:
            raise _fail(f"proof between equal sizes {old_size} must be empty")
        if old_root != new_root:
            raise _fail(f"roots differ at the same size {old_size}")
        return
    # Expected length: the inclusion shape of the old tree's last leaf, minus the levels
    # below the old tree's largest perfect right-most subtree, plus one seed hash unless that
    # subtree is the whole old tree (then the old root is the seed, step 2).
    shift = (old_size & -old_size).bit_length() - 1
    inner, border = _inclusion_shape(old_size - 1, new_size)
    power_of_two = old_size == 1 << shift
    expected = (0 if power_of_two else 1) + inner - shift + border
    if len(proof) != expected:
        raise _fail(
            f"consistency proof from size {old_size} to {new_size} has {len(proof)} hashes,"
            f" expected {expected}"
        )
    # Step 1.
    if not proof:
        raise _fail("consistency proof is empty")
    # Step 2.
    path = [old_root, *proof] if power_of_two else list(proof)
    # Steps 3-4.
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    # Step 5.
    fr = sr = path[0]
    # Step 6.
    for c in path[1:]:
        if sn == 0:  # 6a.
            raise _fail("consistency proof is too long")
        if fn & 1 or fn == sn:  # 6b.
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while fn and not fn & 1:  # 6b.iii, as in 4b.ii of the inclusion check.
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1  # 6c.
    # Step 7.
    if sn != 0:
        raise _fail("consistency proof is too short")
    if fr != old_root:
        raise _fail(f"consistency proof does not lead to the old root of size {old_size}")
    if sr != new_root:
        raise _fail(f"consistency proof does not lead to the new root of size {new_size}")
