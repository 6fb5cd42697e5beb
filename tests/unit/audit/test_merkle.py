"""Tests for proctor.audit.merkle against an independent RFC 6962 reference.

The reference below is written from the recursive definitions of RFC 6962 section 2.1
(MTH, PATH, PROOF/SUBPROOF) and deliberately shares no code with production: it slices the
leaf list and recurses, where production reads stored perfect subtrees and walks iteratively.
The reference verifiers rebuild the roots by replaying the same recursion, so they are also
independent of the RFC 9162 bit-twiddling verifiers under test.
"""

from __future__ import annotations

import hashlib
from functools import cache

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from proctor.audit.merkle import (
    EMPTY_ROOT,
    CompactNodes,
    MemoryNodes,
    MerkleTree,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from proctor.errors import AuditIntegrityError, InvalidRequestError

# ---------------------------------------------------------------------------- reference


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    """The largest power of two smaller than n (RFC 6962: k < n <= 2k)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


MAX = 300
DATA = [f"entry {i}".encode() for i in range(MAX)]  # Distinct, so no two leaves collide.


@cache
def ref_mth(lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) over DATA, straight from RFC 6962 section 2.1."""
    n = hi - lo
    if n == 0:
        return _sha(b"")
    if n == 1:
        return _sha(b"\x00" + DATA[lo])
    k = _k(n)
    return _sha(b"\x01" + ref_mth(lo, lo + k) + ref_mth(lo + k, hi))


def ref_path(m: int, lo: int, hi: int) -> list[bytes]:
    """PATH(m, D[lo:hi]), RFC 6962 section 2.1.1."""
    n = hi - lo
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*ref_path(m, lo, lo + k), ref_mth(lo + k, hi)]
    return [*ref_path(m - k, lo + k, hi), ref_mth(lo, lo + k)]


def ref_subproof(m: int, lo: int, hi: int, b: bool) -> list[bytes]:
    """SUBPROOF(m, D[lo:hi], b), RFC 6962 section 2.1.2."""
    n = hi - lo
    if m == n:
        return [] if b else [ref_mth(lo, hi)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, lo, lo + k, b), ref_mth(lo + k, hi)]
    return [*ref_subproof(m - k, lo + k, hi, False), ref_mth(lo, lo + k)]


def ref_proof(m: int, n: int) -> list[bytes]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true)."""
    return ref_subproof(m, 0, n, True)


def _ref_root_from_path(m: int, n: int, leaf: bytes, path: list[bytes]) -> bytes | None:
    # PATH appends the top-level sibling last, so peel from the end while recursing down.
    if n == 1:
        return None if path else leaf
    if not path:
        return None
    k, rest, last = _k(n), path[:-1], path[-1]
    if m < k:
        sub = _ref_root_from_path(m, k, leaf, rest)
        return None if sub is None else _sha(b"\x01" + sub + last)
    sub = _ref_root_from_path(m - k, n - k, leaf, rest)
    return None if sub is None else _sha(b"\x01" + last + sub)


def ref_verify_inclusion(leaf: bytes, m: int, n: int, path: list[bytes], root: bytes) -> bool:
    """Accept iff replaying PATH's recursion over ``path`` rebuilds ``root``."""
    if not 0 <= m < n or any(len(h) != 32 for h in [leaf, root, *path]):
        return False
    return _ref_root_from_path(m, n, leaf, path) == root


def _ref_roots(
    m: int, n: int, b: bool, proof: list[bytes], old_root: bytes
) -> tuple[bytes, bytes] | None:
    # Returns (hash of the old tree's part of this subtree, hash of the whole subtree).
    if m == n:
        if b:  # The subtree is the old tree itself: the verifier already has its hash.
            return None if proof else (old_root, old_root)
        return (proof[0], proof[0]) if len(proof) == 1 else None
    if not proof:
        return None
    k, rest, last = _k(n), proof[:-1], proof[-1]
    if m <= k:
        sub = _ref_roots(m, k, b, rest, old_root)
        return None if sub is None else (sub[0], _sha(b"\x01" + sub[1] + last))
    sub = _ref_roots(m - k, n - k, False, rest, old_root)
    if sub is None:
        return None
    return _sha(b"\x01" + last + sub[0]), _sha(b"\x01" + last + sub[1])


def ref_verify_consistency(
    m: int, n: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> bool:
    """Accept iff replaying SUBPROOF's recursion over ``proof`` rebuilds both roots."""
    if not 0 < m <= n or any(len(h) != 32 for h in [old_root, new_root, *proof]):
        return False
    if m == n:
        return not proof and old_root == new_root
    return _ref_roots(m, n, True, proof, old_root) == (old_root, new_root)


# ---------------------------------------------------------------------------- fixtures

TREE = MerkleTree.from_leaf_hashes(_sha(b"\x00" + d) for d in DATA)


def leaf(i: int) -> bytes:
    return _sha(b"\x00" + DATA[i])


@st.composite
def index_and_size(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, MAX))
    return draw(st.integers(0, size - 1)), size


@st.composite
def two_sizes(draw: st.DrawFn) -> tuple[int, int]:
    new = draw(st.integers(1, MAX))
    return draw(st.integers(1, new)), new


def mutations(proof: list[bytes]) -> list[list[bytes]]:
    """Every proof one edit away: each element dropped, an element inserted anywhere."""
    out = [proof[:i] + proof[i + 1 :] for i in range(len(proof))]
    extra = [_sha(b"junk"), *proof[:1]]
    out += [[*proof[:i], e, *proof[i:]] for i in range(len(proof) + 1) for e in extra]
    return out


def bit_flips(proof: list[bytes]) -> list[list[bytes]]:
    """Every proof with exactly one bit of one element flipped."""
    out = []
    for i, h in enumerate(proof):
        for bit in range(256):
            flipped = bytearray(h)
            flipped[bit // 8] ^= 1 << (bit % 8)
            out.append([*proof[:i], bytes(flipped), *proof[i + 1 :]])
    return out


# ---------------------------------------------------------------------------- tests

# Certificate Transparency's reference vectors (RFC 6962 test data, as pinned by
# transparency-dev/merkle testonly/constants.go): leaves, and the root for each size 0..8.
CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    bytes(range(0x60, 0x70)),
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = {
    (0, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (5, 8): [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
}
CT_CONSISTENCY = {
    (1, 8): CT_INCLUSION[0, 8],
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
}


class TestHashes:
    def test_empty_root_is_sha256_of_nothing(self):
        """The empty tree's root is SHA-256 of the empty string."""
        assert EMPTY_ROOT.hex() == CT_ROOTS[0]

    def test_leaf_and_node_hashes_are_domain_separated(self):
        """A leaf and a node over the same bytes hash differently (0x00 vs 0x01 prefix)."""
        a, b = bytes(32), bytes([1]) * 32

        assert leaf_hash(a + b) == _sha(b"\x00" + a + b)
        assert node_hash(a, b) == _sha(b"\x01" + a + b)
        assert leaf_hash(a + b) != node_hash(a, b)


class TestKnownAnswers:
    def test_reference_matches_ct_vectors(self):
        """The test's own recursive MTH reproduces the published CT roots."""
        for n, want in enumerate(CT_ROOTS):
            assert _ct_mth(CT_LEAVES[:n]).hex() == want

    def test_roots_match_ct_vectors(self):
        """The production tree reproduces the published CT root of every size 0..8."""
        tree = MerkleTree.from_leaf_hashes(leaf_hash(d) for d in CT_LEAVES)

        assert [tree.root(n).hex() for n in range(9)] == CT_ROOTS

    def test_inclusion_proofs_match_ct_vectors(self):
        """Production inclusion proofs equal the published ones, and verify."""
        tree = MerkleTree.from_leaf_hashes(leaf_hash(d) for d in CT_LEAVES)

        for (i, n), want in CT_INCLUSION.items():
            proof = tree.inclusion_proof(i, n)
            assert [h.hex() for h in proof] == want
            verify_inclusion(leaf_hash(CT_LEAVES[i]), i, n, proof, bytes.fromhex(CT_ROOTS[n]))

    def test_consistency_proofs_match_ct_vectors(self):
        """Production consistency proofs equal the published ones, and verify."""
        tree = MerkleTree.from_leaf_hashes(leaf_hash(d) for d in CT_LEAVES)

        for (m, n), want in CT_CONSISTENCY.items():
            proof = tree.consistency_proof(m, n)
            assert [h.hex() for h in proof] == want
            roots = bytes.fromhex(CT_ROOTS[m]), bytes.fromhex(CT_ROOTS[n])
            verify_consistency(m, n, *roots, proof)

    def test_every_small_proof_matches_the_reference(self):
        """For every size up to 64, each root, path and consistency proof equals the RFC's."""
        for n in range(1, 65):
            assert TREE.root(n) == ref_mth(0, n)
            for i in range(n):
                assert TREE.inclusion_proof(i, n) == ref_path(i, 0, n)
            for m in range(1, n + 1):
                assert TREE.consistency_proof(m, n) == ref_proof(m, n)


def _ct_mth(leaves: list[bytes]) -> bytes:
    if not leaves:
        return _sha(b"")
    if len(leaves) == 1:
        return _sha(b"\x00" + leaves[0])
    k = _k(len(leaves))
    return _sha(b"\x01" + _ct_mth(leaves[:k]) + _ct_mth(leaves[k:]))


class TestMerkleTree:
    def test_empty_tree(self):
        """A new tree has size 0 and the empty root, and offers no proofs."""
        tree = MerkleTree()

        assert tree.size == 0
        assert tree.root() == EMPTY_ROOT
        with pytest.raises(InvalidRequestError):
            tree.inclusion_proof(0, 0)

    def test_append_returns_consecutive_indices(self):
        """append returns each leaf's index and grows the size by one."""
        tree = MerkleTree()

        assert [tree.append(leaf(i)) for i in range(5)] == [0, 1, 2, 3, 4]
        assert tree.size == 5

    def test_append_rejects_a_non_hash(self):
        """A leaf that is not 32 bytes is refused before it reaches the store."""
        tree = MerkleTree()

        with pytest.raises(InvalidRequestError):
            tree.append(b"raw entry, not a hash")
        assert tree.size == 0

    @settings(max_examples=50, deadline=None)
    @given(st.lists(st.binary(max_size=40), min_size=1, max_size=MAX))
    def test_every_earlier_root_matches_the_reference(self, entries):
        """After appending arbitrary entries, root(s) equals the recursive MTH for every s."""
        tree = MerkleTree()
        roots = []
        for e in entries:
            tree.append(leaf_hash(e))
            roots.append(tree.root())

        for s in range(1, len(entries) + 1):
            assert tree.root(s) == roots[s - 1] == _ct_mth(entries[:s])

    @given(index_and_size())
    def test_inclusion_proof_equals_rfc_path(self, case):
        """inclusion_proof(i, n) equals PATH(i, D[n]) computed recursively."""
        i, n = case

        assert TREE.inclusion_proof(i, n) == ref_path(i, 0, n)

    @given(two_sizes())
    def test_consistency_proof_equals_rfc_proof(self, case):
        """consistency_proof(m, n) equals PROOF(m, D[n]) computed recursively."""
        m, n = case

        assert TREE.consistency_proof(m, n) == ref_proof(m, n)

    @pytest.mark.parametrize(("index", "size"), [(0, 0), (5, 5), (-1, 5), (0, MAX + 1), (0, -1)])
    def test_inclusion_proof_rejects_out_of_range(self, index, size):
        """No inclusion proof is made for an index outside the tree or a size beyond it."""
        with pytest.raises(InvalidRequestError):
            TREE.inclusion_proof(index, size)

    @pytest.mark.parametrize(("old", "new"), [(0, 5), (6, 5), (-1, 5), (1, MAX + 1)])
    def test_consistency_proof_rejects_out_of_range(self, old, new):
        """No consistency proof is made from size 0, backwards, or beyond the tree."""
        with pytest.raises(InvalidRequestError):
            TREE.consistency_proof(old, new)

    def test_root_rejects_a_future_size(self):
        """root() of a size the tree has not reached is an error, not a guess."""
        with pytest.raises(InvalidRequestError):
            TREE.root(MAX + 1)

    def test_reopened_store_gives_the_same_tree(self):
        """A tree opened over an existing store continues where the first one stopped."""
        store = MemoryNodes()
        first = MerkleTree(store)
        for i in range(37):
            first.append(leaf(i))

        second = MerkleTree(store)
        second.append(leaf(37))

        assert second.size == 38
        assert second.root() == ref_mth(0, 38)
        assert second.inclusion_proof(3, 38) == ref_path(3, 0, 38)

    def test_torn_store_is_rejected(self):
        """A store missing a parent node (a crash mid-append) fails closed on open."""
        store = MemoryNodes()
        for i in range(4):
            store.append(0, leaf(i))
        store.append(1, node_hash(leaf(0), leaf(1)))  # Levels 1 and 2 are incomplete.

        with pytest.raises(AuditIntegrityError):
            MerkleTree(store)

    def test_large_tree_proofs_have_log_length(self):
        """At 2**16 + 1 leaves a path is 17 hashes and the proofs still verify."""
        tree = MerkleTree.from_leaf_hashes(
            leaf_hash(i.to_bytes(4, "big")) for i in range(2**16 + 1)
        )
        n = tree.size

        path = tree.inclusion_proof(12345, n)
        proof = tree.consistency_proof(54_321, n)

        assert len(path) == 17
        verify_inclusion(leaf_hash((12345).to_bytes(4, "big")), 12345, n, path, tree.root())
        verify_consistency(54_321, n, tree.root(54_321), tree.root(), proof)


class TestVerifyInclusion:
    def test_single_leaf_tree_needs_no_proof(self):
        """In a one-leaf tree the leaf hash is the root and the proof is empty."""
        verify_inclusion(leaf(0), 0, 1, [], leaf(0))

        assert ref_verify_inclusion(leaf(0), 0, 1, [], leaf(0))

    @given(index_and_size())
    def test_valid_proofs_verify(self, case):
        """Every production proof passes the production and the reference verifier."""
        i, n = case
        proof = TREE.inclusion_proof(i, n)

        verify_inclusion(leaf(i), i, n, proof, TREE.root(n))
        assert ref_verify_inclusion(leaf(i), i, n, proof, TREE.root(n))

    @settings(max_examples=40, deadline=None)  # Each example checks ~2,500 edits.
    @given(index_and_size())
    def test_edited_proofs_fail(self, case):
        """Dropping or inserting any element, or flipping any bit, fails both verifiers."""
        i, n = case
        proof, root = TREE.inclusion_proof(i, n), TREE.root(n)

        for bad in mutations(proof) + bit_flips(proof):
            with pytest.raises(AuditIntegrityError):
                verify_inclusion(leaf(i), i, n, bad, root)
            assert not ref_verify_inclusion(leaf(i), i, n, bad, root)

    @given(index_and_size(), st.integers(0, MAX - 1))
    def test_wrong_index_fails(self, case, other):
        """A proof for one index does not prove the same leaf at another index."""
        i, n = case
        other %= n
        assume(other != i)
        proof = TREE.inclusion_proof(i, n)

        with pytest.raises(AuditIntegrityError):
            verify_inclusion(leaf(i), other, n, proof, TREE.root(n))
        assert not ref_verify_inclusion(leaf(i), other, n, proof, TREE.root(n))

    @given(index_and_size(), st.integers(1, MAX))
    def test_wrong_size_fails(self, case, other):
        """A proof for size n fails against any other size with that size's root."""
        i, n = case
        assume(other != n and i < other)
        proof = TREE.inclusion_proof(i, n)

        with pytest.raises(AuditIntegrityError):
            verify_inclusion(leaf(i), i, other, proof, TREE.root(other))
        assert not ref_verify_inclusion(leaf(i), i, other, proof, TREE.root(other))

    @given(index_and_size(), st.binary(min_size=32, max_size=32))
    def test_wrong_root_or_leaf_fails(self, case, junk):
        """Any other root, or any other leaf, fails."""
        i, n = case
        proof, root = TREE.inclusion_proof(i, n), TREE.root(n)

        for lf, rt in [(leaf(i), junk), (junk, root), (leaf((i + 1) % MAX), root)]:
            with pytest.raises(AuditIntegrityError):
                verify_inclusion(lf, i, n, proof, rt)
            assert not ref_verify_inclusion(lf, i, n, proof, rt)

    @pytest.mark.parametrize(
        ("index", "size", "reason"),
        [(3, 3, "not in a tree"), (-1, 3, "not in a tree"), (0, 0, "not in a tree")],
    )
    def test_index_outside_the_tree_fails(self, index, size, reason):
        """An index at or past the size (or negative) is rejected with that reason."""
        with pytest.raises(AuditIntegrityError, match=reason):
            verify_inclusion(leaf(0), index, size, [], TREE.root(1))

    def test_hashes_of_the_wrong_length_fail(self):
        """A leaf, root or proof element that is not 32 bytes is rejected as such."""
        proof, root = TREE.inclusion_proof(1, 4), TREE.root(4)

        for lf, pr, rt in [
            (leaf(1)[:31], proof, root),
            (leaf(1), proof, root + b"\x00"),
            (leaf(1), [proof[0][:31], proof[1]], root),
            (leaf(1), [*proof[:1], b""], root),
        ]:
            with pytest.raises(AuditIntegrityError, match="not 32"):
                verify_inclusion(lf, 1, 4, pr, rt)

    def test_wrong_length_is_reported_precisely(self):
        """A proof with one hash too many or too few says how many were expected."""
        proof, root = TREE.inclusion_proof(1, 4), TREE.root(4)

        with pytest.raises(AuditIntegrityError, match="has 3 hashes, expected 2"):
            verify_inclusion(leaf(1), 1, 4, [*proof, proof[0]], root)
        with pytest.raises(AuditIntegrityError, match="has 1 hashes, expected 2"):
            verify_inclusion(leaf(1), 1, 4, proof[:1], root)


class TestVerifyConsistency:
    def test_equal_sizes_need_an_empty_proof_and_equal_roots(self):
        """Between equal sizes the proof is empty and the roots must be identical."""
        root = TREE.root(7)

        verify_consistency(7, 7, root, root, [])
        with pytest.raises(AuditIntegrityError, match="must be empty"):
            verify_consistency(7, 7, root, root, [root])
        with pytest.raises(AuditIntegrityError, match="roots differ"):
            verify_consistency(7, 7, root, TREE.root(8), [])

    def test_from_size_zero_is_not_provable(self):
        """A consistency proof from the empty tree is rejected, even an empty one."""
        with pytest.raises(AuditIntegrityError, match="from tree size 0"):
            verify_consistency(0, 5, EMPTY_ROOT, TREE.root(5), [])

    def test_old_size_larger_than_new_fails(self):
        """The old tree cannot be bigger than the new one."""
        with pytest.raises(AuditIntegrityError, match="larger than"):
            verify_consistency(6, 5, TREE.root(6), TREE.root(5), TREE.consistency_proof(5, 6))

    def test_hashes_of_the_wrong_length_fail(self):
        """Roots and proof elements that are not 32 bytes are rejected as such."""
        proof = TREE.consistency_proof(3, 8)
        old, new = TREE.root(3), TREE.root(8)

        for o, nw, pr in [
            (old[:16], new, proof),
            (old, new * 2, proof),
            (old, new, [*proof[:-1], proof[-1] + b"\x00"]),
        ]:
            with pytest.raises(AuditIntegrityError, match="not 32"):
                verify_consistency(3, 8, o, nw, pr)

    @given(two_sizes())
    def test_valid_proofs_verify(self, case):
        """Every production proof passes the production and the reference verifier."""
        m, n = case
        proof, old, new = TREE.consistency_proof(m, n), TREE.root(m), TREE.root(n)

        verify_consistency(m, n, old, new, proof)
        assert ref_verify_consistency(m, n, old, new, proof)

    @settings(max_examples=40, deadline=None)  # Each example checks ~2,500 edits.
    @given(two_sizes())
    def test_edited_proofs_fail(self, case):
        """Dropping or inserting any element, or flipping any bit, fails both verifiers."""
        m, n = case
        proof, old, new = TREE.consistency_proof(m, n), TREE.root(m), TREE.root(n)

        for bad in mutations(proof) + bit_flips(proof):
            with pytest.raises(AuditIntegrityError):
                verify_consistency(m, n, old, new, bad)
            assert not ref_verify_consistency(m, n, old, new, bad)

    @given(two_sizes(), st.integers(1, MAX))
    def test_wrong_sizes_fail(self, case, other):
        """The proof fails for any other old or new size, even with that size's true root."""
        m, n = case
        proof = TREE.consistency_proof(m, n)

        if other != m and other <= n:
            with pytest.raises(AuditIntegrityError):
                verify_consistency(other, n, TREE.root(other), TREE.root(n), proof)
            assert not ref_verify_consistency(other, n, TREE.root(other), TREE.root(n), proof)
        if other != n and other >= m:
            with pytest.raises(AuditIntegrityError):
                verify_consistency(m, other, TREE.root(m), TREE.root(other), proof)
            assert not ref_verify_consistency(m, other, TREE.root(m), TREE.root(other), proof)

    @given(two_sizes(), st.binary(min_size=32, max_size=32))
    def test_wrong_roots_fail(self, case, junk):
        """Replacing either root with any other hash fails."""
        m, n = case
        proof, old, new = TREE.consistency_proof(m, n), TREE.root(m), TREE.root(n)

        for o, nw in [(junk, new), (old, junk)]:
            with pytest.raises(AuditIntegrityError):
                verify_consistency(m, n, o, nw, proof)
            assert not ref_verify_consistency(m, n, o, nw, proof)

    def test_wrong_length_is_reported_precisely(self):
        """A proof with a hash too many or too few says how many were expected."""
        proof = TREE.consistency_proof(3, 8)
        old, new = TREE.root(3), TREE.root(8)

        with pytest.raises(AuditIntegrityError, match=f"expected {len(proof)}"):
            verify_consistency(3, 8, old, new, proof[:-1])
        with pytest.raises(AuditIntegrityError, match=f"expected {len(proof)}"):
            verify_consistency(3, 8, old, new, [*proof, proof[0]])


# ---------------------------------------------------------------------------- compact nodes


class TestCompactNodes:
    """``CompactNodes`` (upper levels in memory, lower ones from stored leaves) is exact."""

    @staticmethod
    def _tree(n: int, *, low: int = 2, cache: int = 1) -> tuple[MerkleTree, list[int]]:
        leaves = [leaf(i) for i in range(n)]
        reads: list[int] = []

        def read(start: int, count: int) -> list[bytes]:
            reads.append(start)
            return leaves[start : start + count]

        tree = MerkleTree(CompactNodes(read, low=low, cache=cache))
        for h in leaves:
            tree.append(h)
        return tree, reads

    @given(st.integers(min_value=1, max_value=70), st.data())
    @settings(max_examples=150, deadline=None)
    def test_roots_paths_and_proofs_equal_the_reference(self, n, data):
        """Any size, index and old size: the same answers as the RFC recursion."""
        tree, _ = self._tree(n)
        size = data.draw(st.integers(min_value=1, max_value=n))
        index = data.draw(st.integers(min_value=0, max_value=size - 1))
        old = data.draw(st.integers(min_value=1, max_value=size))

        assert tree.root(size) == ref_mth(0, size)
        assert tree.inclusion_proof(index, size) == ref_path(index, 0, size)
        assert tree.consistency_proof(old, size) == ref_proof(old, size)

    def test_appends_read_nothing_and_old_blocks_are_read_once(self):
        """The hot path (append, current root) never reads; a proof reads one block."""
        tree, reads = self._tree(64, low=3, cache=1)
        assert reads == []  # appends and their parents come from memory
        assert tree.root() == ref_mth(0, 64)
        assert reads == []

        assert tree.inclusion_proof(5, 64) == ref_path(5, 0, 64)
        assert reads == [0]  # block 0 (leaves 0-7), read once for the whole path
        tree.inclusion_proof(6, 64)
        assert reads == [0]  # cached

    def test_memory_holds_a_fraction_of_the_nodes(self):
        """At low=4, 4,096 leaves keep ~ n/8 hashes, not the 2n of ``MemoryNodes``."""
        hashes = [leaf_hash(i.to_bytes(4, "big")) for i in range(4096)]
        tree = MerkleTree(CompactNodes(lambda s, c: hashes[s : s + c], low=4, cache=2))
        for h in hashes:
            tree.append(h)
        nodes = tree._nodes
        assert isinstance(nodes, CompactNodes)
        held = sum(len(x) for x in nodes._upper) + sum(len(x) for x in nodes._block)
        held += sum(len(x) for levels in nodes._cache.values() for x in levels)
        assert held < 4096 // 8 + 3 * 32  # upper levels, the block being filled, the cache
        full = MerkleTree.from_leaf_hashes(hashes)
        assert tree.root() == full.root()
        assert tree.inclusion_proof(1234, 4096) == full.inclusion_proof(1234, 4096)
        assert tree.consistency_proof(777, 4001) == full.consistency_proof(777, 4001)

    def test_a_store_returning_too_few_leaves_fails_closed(self):
        """A short read (a truncated log) is an integrity error, never a wrong proof."""
        leaves = [leaf(i) for i in range(16)]
        tree = MerkleTree(CompactNodes(lambda s, c: leaves[s : s + c - 1], low=2, cache=1))
        for h in leaves:
            tree.append(h)
        tree.inclusion_proof(15, 16)  # current block: from memory
        with pytest.raises(AuditIntegrityError, match="leaf hashes for block"):
            tree.inclusion_proof(0, 16)
