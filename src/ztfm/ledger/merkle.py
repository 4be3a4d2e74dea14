"""RFC 6962 / RFC 9162 Merkle tree hashing, proof generation and proof verification (pure).

Hashing: ``leaf = SHA-256(0x00 || data)``, ``node = SHA-256(0x01 || left || right)``; the tree over
``n`` leaves splits at the largest power of two smaller than ``n`` (RFC 6962 section 2.1).

Proof generation reads *perfect subtrees* through a ``NodeReader``: ``read(level, index)`` returns
the hash of the aligned subtree covering leaves ``[index * 2**level, (index + 1) * 2**level)``
(level 0 is the leaf hash). Every interior node a proof needs is either such a subtree or the
right edge of the tree, which is folded from at most ``log2(n)`` of them; so a proof costs
``O(log n)`` reads however large the log is.

Verification follows the iterative algorithms of RFC 9162 sections 2.1.3.2 and 2.1.4.2 and raises
``LedgerError``; it never returns ``bool``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ztfm.errors import LedgerError

HASH_BYTES = 32
MAX_PROOF_NODES = 64  # a tree of 2**63 leaves needs at most 63 (+1 for consistency) nodes
MAX_TREE_SIZE = 2**62

NodeReader = Callable[[int, int], bytes]
"""``read(level, index)``: hash of the perfect subtree over leaves ``index << level`` onwards."""

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _largest_pow2_below(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def perfect_subtrees(start: int, end: int) -> list[tuple[int, int]]:
    """Split ``[start, end)`` into aligned perfect subtrees, left to right, as (level, index).

    ``start`` must be aligned so that the RFC 6962 recursion over ``[start, end)`` only ever
    produces perfect left children (true for 0 and for every subtree the proofs visit).
    """
    out: list[tuple[int, int]] = []
    pos = start
    remaining = end - start
    while remaining > 0:
        level = remaining.bit_length() - 1
        out.append((level, pos >> level))
        pos += 1 << level
        remaining -= 1 << level
    return out


def fold_subtrees(hashes: Sequence[bytes]) -> bytes:
    """Root over perfect subtrees given left to right in descending size (right fold)."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


BatchReader = Callable[[Sequence[tuple[int, int]]], list[bytes]]
"""``read_many(coords) -> hashes``: several perfect subtrees in one go (one query for a store)."""


def _resolve(
    ranges: Sequence[tuple[int, int]], read: NodeReader, read_many: BatchReader | None
) -> list[bytes]:
    """MTH(D[start:end]) for each (aligned) range, reading every needed node exactly once."""
    parts = [perfect_subtrees(a, b) for a, b in ranges]
    coords = list(dict.fromkeys(c for p in parts for c in p))
    if read_many is not None:
        hashes = read_many(coords)
        if len(hashes) != len(coords):
            raise LedgerError("the store returned the wrong number of tree nodes")
    else:
        hashes = [read(lv, ix) for lv, ix in coords]
    table = dict(zip(coords, hashes, strict=True))
    return [fold_subtrees([table[c] for c in p]) for p in parts]


def _check_size(tree_size: int) -> None:
    if not 0 <= tree_size <= MAX_TREE_SIZE:
        raise LedgerError(f"tree size {tree_size} is out of range")


def root_hash(read: NodeReader, tree_size: int, *, read_many: BatchReader | None = None) -> bytes:
    """MTH of the first ``tree_size`` leaves."""
    _check_size(tree_size)
    return _resolve([(0, tree_size)], read, read_many)[0]


def inclusion_ranges(index: int, tree_size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose hashes form PATH(index, D[tree_size]), leaf-side first."""
    _check_size(tree_size)
    if not 0 <= index < tree_size:
        raise LedgerError(f"leaf index {index} is outside a tree of size {tree_size}")
    ranges: list[tuple[int, int]] = []
    start, end, m = 0, tree_size, index
    while end - start > 1:
        k = _largest_pow2_below(end - start)
        if m < k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
            m -= k
    ranges.reverse()
    return ranges


def consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose hashes form PROOF(old_size, D[new_size]) (RFC 6962 2.1.2)."""
    _check_size(new_size)
    if not 0 < old_size <= new_size:
        raise LedgerError(f"no consistency proof from size {old_size} to size {new_size}")
    ranges: list[tuple[int, int]] = []
    start, end, m, complete = 0, new_size, old_size, True
    while m != end - start:
        k = _largest_pow2_below(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
            m -= k
            complete = False
    if not complete:
        ranges.append((start, end))
    ranges.reverse()
    return ranges


def inclusion_path(
    read: NodeReader, index: int, tree_size: int, *, read_many: BatchReader | None = None
) -> list[bytes]:
    """RFC 6962 PATH(index, D[tree_size]): audit path, leaf-side first."""
    return _resolve(inclusion_ranges(index, tree_size), read, read_many)


def consistency_path(
    read: NodeReader, old_size: int, new_size: int, *, read_many: BatchReader | None = None
) -> list[bytes]:
    """RFC 6962 PROOF(old_size, D[new_size]); empty when the sizes are equal."""
    return _resolve(consistency_ranges(old_size, new_size), read, read_many)


# --- verification (RFC 9162 2.1.3.2 and 2.1.4.2) -----------------------------------------------
def _check_path(path: Sequence[bytes]) -> None:
    if len(path) > MAX_PROOF_NODES:
        raise LedgerError("proof is too long")
    for node in path:
        if not isinstance(node, bytes) or len(node) != HASH_BYTES:
            raise LedgerError("proof node is not a 32-byte hash")


def root_from_inclusion(index: int, tree_size: int, leaf: bytes, path: Sequence[bytes]) -> bytes:
    """The root implied by an inclusion proof; raises ``LedgerError`` if the proof is malformed."""
    _check_size(tree_size)
    _check_path(path)
    if len(leaf) != HASH_BYTES:
        raise LedgerError("leaf hash is not 32 bytes")
    if not 0 <= index < tree_size:
        raise LedgerError(f"leaf index {index} is outside a tree of size {tree_size}")
    fn, sn, r = index, tree_size - 1, leaf
    for p in path:
        if sn == 0:
            raise LedgerError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise LedgerError("inclusion proof is shorter than the tree is deep")
    return r


def verify_inclusion(
    index: int, tree_size: int, leaf: bytes, path: Sequence[bytes], root: bytes
) -> None:
    """Return None if ``leaf`` sits at ``index`` of the tree with ``root``; raise otherwise."""
    if root_from_inclusion(index, tree_size, leaf, path) != root:
        raise LedgerError(f"inclusion proof for leaf {index} does not match the tree root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, path: Sequence[bytes]
) -> None:
    """Return None if tree (new_size, new_root) extends (old_size, old_root); raise otherwise."""
    _check_size(new_size)
    _check_path(path)
    if len(old_root) != HASH_BYTES or len(new_root) != HASH_BYTES:
        raise LedgerError("root hash is not 32 bytes")
    if not 0 < old_size <= new_size:
        raise LedgerError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size == new_size:
        if path:
            raise LedgerError("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise LedgerError("two different roots for the same tree size: the log forked")
        return
    nodes = list(path)
    if _is_pow2(old_size):
        nodes.insert(0, old_root)
    if not nodes:
        raise LedgerError("consistency proof is empty")
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = nodes[0]
    for c in nodes[1:]:
        if sn == 0:
            raise LedgerError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise LedgerError("consistency proof is too short")
    if fr != old_root:
        raise LedgerError("consistency proof does not match the old root: the log was rewritten")
    if sr != new_root:
        raise LedgerError("consistency proof does not match the new root")


# --- incremental appends -----------------------------------------------------------------------
@dataclass(slots=True)
class Frontier:
    """Right edge of a growing tree: the perfect subtrees of ``size``, largest first.

    ``push`` returns the interior nodes completed by the new leaf as (level, index, hash), which a
    store keeps so that later proofs never rehash the log.
    """

    size: int
    hashes: list[bytes]

    @classmethod
    def empty(cls) -> Frontier:
        return cls(0, [])

    @classmethod
    def load(cls, read: NodeReader, size: int) -> Frontier:
        _check_size(size)
        return cls(size, [read(lv, ix) for lv, ix in perfect_subtrees(0, size)])

    def push(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        completed: list[tuple[int, int, bytes]] = []
        index = self.size
        h = leaf
        level = 0
        while index & 1:
            h = node_hash(self.hashes.pop(), h)
            level += 1
            index >>= 1
            completed.append((level, index, h))
        self.hashes.append(h)
        self.size += 1
        return completed

    def root(self) -> bytes:
        return fold_subtrees(self.hashes)
