"""Merkle hashing, proofs and verification against the RFC 6962 reference, plus tampering."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_ref import mth, path, proof

from ztfm.errors import LedgerError
from ztfm.ledger import merkle

EDGE_SIZES = sorted({1, 2, 3} | {s for p in range(1, 7) for s in (2**p - 1, 2**p, 2**p + 1)})


class Tree:
    """Leaves plus the stored perfect-subtree nodes, built through ``Frontier`` like a store."""

    def __init__(self, n: int) -> None:
        self.data = [f"leaf-{i}".encode() for i in range(n)]
        self.nodes: dict[tuple[int, int], bytes] = {}
        f = merkle.Frontier.empty()
        for i, d in enumerate(self.data):
            h = merkle.leaf_hash(d)
            self.nodes[(0, i)] = h
            for lv, ix, nh in f.push(h):
                self.nodes[(lv, ix)] = nh
        self.frontier = f

    def read(self, level: int, index: int) -> bytes:
        return self.nodes[(level, index)]


TREE = Tree(70)


def test_hashes_are_rfc6962_domain_separated() -> None:
    assert merkle.leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert (
        merkle.node_hash(b"a" * 32, b"b" * 32)
        == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )
    # a leaf can never be confused with an interior node
    assert merkle.leaf_hash(b"\x01" + b"a" * 64) != merkle.node_hash(b"a" * 32, b"a" * 32)


def test_empty_tree_root_is_hash_of_empty_string() -> None:
    assert merkle.root_hash(TREE.read, 0) == hashlib.sha256(b"").digest()


@pytest.mark.parametrize("n", EDGE_SIZES)
def test_roots_and_proofs_match_reference_at_edge_sizes(n: int) -> None:
    d = TREE.data[:n]
    assert merkle.root_hash(TREE.read, n) == mth(d)
    for m in range(n):
        assert merkle.inclusion_path(TREE.read, m, n) == path(m, d)
        merkle.verify_inclusion(m, n, merkle.leaf_hash(d[m]), path(m, d), mth(d))
    for m in range(1, n + 1):
        assert merkle.consistency_path(TREE.read, m, n) == proof(m, d)
        merkle.verify_consistency(m, n, mth(d[:m]), mth(d), proof(m, d))


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 70).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_inclusion_matches_reference(nm: tuple[int, int]) -> None:
    n, m = nm
    d = TREE.data[:n]
    got = merkle.inclusion_path(TREE.read, m, n)
    assert got == path(m, d)
    assert merkle.root_from_inclusion(m, n, merkle.leaf_hash(d[m]), got) == mth(d)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 70).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))))
def test_consistency_matches_reference(mn: tuple[int, int]) -> None:
    m, n = mn
    d = TREE.data[:n]
    got = merkle.consistency_path(TREE.read, m, n)
    assert got == proof(m, d)
    merkle.verify_consistency(m, n, mth(d[:m]), mth(d), got)


def test_frontier_root_matches_reference_and_reload() -> None:
    assert TREE.frontier.root() == mth(TREE.data)
    again = merkle.Frontier.load(TREE.read, 70)
    assert again.hashes == TREE.frontier.hashes


# --- inclusion: negative -----------------------------------------------------------------------
N = 21
D = TREE.data[:N]
ROOT = mth(D)


@pytest.mark.parametrize("m", [0, 7, 16, 20])
def test_inclusion_rejects_wrong_leaf(m: int) -> None:
    with pytest.raises(LedgerError):
        merkle.verify_inclusion(m, N, merkle.leaf_hash(b"forged"), path(m, D), ROOT)


@pytest.mark.parametrize("m", [0, 7, 16, 20])
def test_inclusion_rejects_wrong_index(m: int) -> None:
    for other in range(N):
        if other == m:
            continue
        with pytest.raises(LedgerError):
            merkle.verify_inclusion(other, N, merkle.leaf_hash(D[m]), path(m, D), ROOT)


@pytest.mark.parametrize("m", [0, 7, 16, 20])
def test_inclusion_rejects_proof_for_another_tree_size(m: int) -> None:
    # A signed head binds (size, root); a proof made for size N must fail for any other head.
    for size in [*range(m + 1, N), N + 1, N + 5, 2 * N]:
        with pytest.raises(LedgerError):
            merkle.verify_inclusion(
                m, size, merkle.leaf_hash(D[m]), path(m, D), mth(TREE.data[:size])
            )


def test_inclusion_rejects_wrong_root() -> None:
    with pytest.raises(LedgerError):
        merkle.verify_inclusion(3, N, merkle.leaf_hash(D[3]), path(3, D), mth(D[:20]))


def test_inclusion_rejects_index_outside_tree() -> None:
    with pytest.raises(LedgerError):
        merkle.verify_inclusion(N, N, merkle.leaf_hash(D[0]), path(0, D), ROOT)
    with pytest.raises(LedgerError):
        merkle.verify_inclusion(-1, N, merkle.leaf_hash(D[0]), path(0, D), ROOT)
    with pytest.raises(LedgerError):
        merkle.inclusion_path(TREE.read, N, N)


def test_inclusion_rejects_truncated_and_extended_paths() -> None:
    p = path(5, D)
    with pytest.raises(LedgerError):
        merkle.verify_inclusion(5, N, merkle.leaf_hash(D[5]), p[:-1], ROOT)
    with pytest.raises(LedgerError):
        merkle.verify_inclusion(5, N, merkle.leaf_hash(D[5]), [*p, p[0]], ROOT)
    with pytest.raises(LedgerError):
        merkle.verify_inclusion(5, N, merkle.leaf_hash(D[5]), [], ROOT)


def test_inclusion_rejects_every_single_bit_flip_in_path() -> None:
    p = path(9, D)
    for i in range(len(p)):
        for bit in (0, 7, 255):
            forged = list(p)
            node = bytearray(forged[i])
            node[bit // 8] ^= 1 << (bit % 8)
            forged[i] = bytes(node)
            with pytest.raises(LedgerError):
                merkle.verify_inclusion(9, N, merkle.leaf_hash(D[9]), forged, ROOT)


def test_inclusion_rejects_malformed_nodes() -> None:
    p = path(2, D)
    with pytest.raises(LedgerError):
        merkle.verify_inclusion(2, N, merkle.leaf_hash(D[2]), [p[0][:31], *p[1:]], ROOT)
    with pytest.raises(LedgerError):
        merkle.verify_inclusion(2, N, merkle.leaf_hash(D[2]), [b"\x00" * 32] * 65, ROOT)
    with pytest.raises(LedgerError):
        merkle.verify_inclusion(2, N, b"short", p, ROOT)


def test_inclusion_of_single_leaf_tree_is_empty_path() -> None:
    merkle.verify_inclusion(0, 1, merkle.leaf_hash(D[0]), [], mth(D[:1]))
    with pytest.raises(LedgerError):
        merkle.verify_inclusion(0, 1, merkle.leaf_hash(D[0]), [ROOT], mth(D[:1]))


# --- consistency: negative ---------------------------------------------------------------------
@pytest.mark.parametrize("m", [1, 2, 3, 4, 7, 8, 13, 16, 20])
def test_consistency_rejects_rewritten_prefix(m: int) -> None:
    rewritten = list(D)
    rewritten[m - 1] = b"rewritten"
    # the operator rewrote history: the new tree's prefix differs from what the client saw
    with pytest.raises(LedgerError):
        merkle.verify_consistency(m, N, mth(D[:m]), mth(rewritten), proof(m, rewritten))
    with pytest.raises(LedgerError):
        merkle.verify_consistency(m, N, mth(D[:m]), mth(rewritten), proof(m, D))


@pytest.mark.parametrize("m", [1, 3, 8, 13])
def test_consistency_rejects_swapped_or_wrong_roots(m: int) -> None:
    p = proof(m, D)
    with pytest.raises(LedgerError):
        merkle.verify_consistency(m, N, mth(D), mth(D[:m]), p)
    with pytest.raises(LedgerError):
        merkle.verify_consistency(m, N, mth(D[: m + 1]), mth(D), p)
    with pytest.raises(LedgerError):
        merkle.verify_consistency(m, N, mth(D[:m]), mth(D[: N - 1]), p)


@pytest.mark.parametrize("m", [1, 3, 8, 13])
def test_consistency_rejects_wrong_sizes_and_paths(m: int) -> None:
    p = proof(m, D)
    with pytest.raises(LedgerError):
        merkle.verify_consistency(m, N + 1, mth(D[:m]), mth(TREE.data[: N + 1]), p)
    with pytest.raises(LedgerError):
        merkle.verify_consistency(m + 1, N, mth(D[: m + 1]), mth(D), p)
    with pytest.raises(LedgerError):
        merkle.verify_consistency(m, N, mth(D[:m]), mth(D), p[:-1])
    with pytest.raises(LedgerError):
        merkle.verify_consistency(m, N, mth(D[:m]), mth(D), [*p, p[-1]])


def test_consistency_rejects_bit_flips() -> None:
    p = proof(13, D)
    for i in range(len(p)):
        forged = list(p)
        forged[i] = bytes([forged[i][0] ^ 0x80]) + forged[i][1:]
        with pytest.raises(LedgerError):
            merkle.verify_consistency(13, N, mth(D[:13]), mth(D), forged)


def test_consistency_equal_sizes_and_degenerate_inputs() -> None:
    merkle.verify_consistency(N, N, ROOT, ROOT, [])
    with pytest.raises(LedgerError, match="forked"):
        merkle.verify_consistency(N, N, ROOT, mth(D[:20]), [])
    with pytest.raises(LedgerError):
        merkle.verify_consistency(N, N, ROOT, ROOT, [ROOT])
    with pytest.raises(LedgerError):
        merkle.verify_consistency(0, N, ROOT, ROOT, [])
    with pytest.raises(LedgerError):
        merkle.verify_consistency(N, 3, ROOT, ROOT, [])
    with pytest.raises(LedgerError):
        merkle.verify_consistency(3, N, mth(D[:3]), ROOT, [])
    with pytest.raises(LedgerError):
        merkle.consistency_path(TREE.read, 0, N)
    with pytest.raises(LedgerError):
        merkle.consistency_path(TREE.read, N + 1, N)


def test_sizes_out_of_range_are_refused() -> None:
    with pytest.raises(LedgerError):
        merkle.root_hash(TREE.read, -1)
    with pytest.raises(LedgerError):
        merkle.root_from_inclusion(0, 2**63, merkle.leaf_hash(b""), [])


@pytest.mark.parametrize("n", [2**20 - 1, 2**20, 10**6, 2**40 + 12345])
def test_proofs_read_log_n_nodes_not_n(n: int) -> None:
    """The O(log n) claim, counted rather than timed: reads per proof at up to 2**40 leaves."""
    reads: list[tuple[int, int]] = []

    def read(level: int, index: int) -> bytes:
        assert index >= 0 and (index + 1) << level <= n, "read outside the tree"
        reads.append((level, index))
        return hashlib.sha256(f"{level}/{index}".encode()).digest()

    depth = n.bit_length()
    for m in (0, 1, n // 3, n - 2, n - 1):
        reads.clear()
        p = merkle.inclusion_path(read, m, n)
        assert len(p) <= depth and len(reads) <= 2 * depth
    for old in (1, 2, n // 2, n - 1):
        reads.clear()
        c = merkle.consistency_path(read, old, n)
        assert len(c) <= depth + 1 and len(reads) <= 3 * depth
    # (the fake nodes are not a consistent tree, so correctness is tested against the reference
    # above; this test only counts work)
