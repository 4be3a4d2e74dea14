"""Storage interface of the ledger, and an in-memory implementation for tests.

A store keeps raw bytes only: entry data, leaf hashes, interior nodes of complete subtrees, signed
tree heads and a little metadata. All Merkle logic lives in ``ztfm.ledger.log``; a store need not
be trusted (``Ledger.verify_all`` and every client recompute what they rely on).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from ztfm.errors import LedgerError

Leaf = tuple[bytes, bytes]  # (entry data, leaf hash)
Node = tuple[int, int, bytes]  # (level >= 1, index, hash)
Subject = tuple[str, int]  # (subject, entry index): the lookup index, not authenticated


class LedgerStore(Protocol):
    """Append-only storage behind a ``Ledger`` (SQLite here; PostgreSQL and others can follow)."""

    def size(self) -> int:
        """Number of entries."""
        ...

    def append(
        self,
        first_index: int,
        leaves: Sequence[Leaf],
        nodes: Sequence[Node],
        subjects: Sequence[Subject] = (),
    ) -> None:
        """Atomically add ``leaves`` at ``first_index`` (which must equal ``size()``), the
        interior ``nodes`` they complete and their ``subjects`` index rows; raise
        ``LedgerError`` and change nothing otherwise."""
        ...

    def indices_for(self, subject: str) -> list[int]:
        """Entry indices recorded for ``subject``, ascending (a hint: callers re-check)."""
        ...

    def subjects_range(self, start: int, stop: int) -> list[Subject]:
        """Index rows for entries ``start <= idx < stop`` (any order; for ``verify_all``)."""
        ...

    def entry(self, index: int) -> bytes:
        """Entry data at ``index``; ``LedgerError`` if absent."""
        ...

    def iter_leaves(self, start: int, stop: int) -> Iterator[Leaf]:
        """(data, leaf hash) for indices ``start <= i < stop``, in order."""
        ...

    def node(self, level: int, index: int) -> bytes:
        """Hash of the perfect subtree (level, index); level 0 is the leaf hash."""
        ...

    def nodes(self, coords: Sequence[tuple[int, int]]) -> list[bytes]:
        """``node`` for each (level, index), in order, in one round trip where possible."""
        ...

    def node_range(self, level: int, start: int, stop: int) -> list[bytes]:
        """Hashes of nodes ``start <= index < stop`` at ``level`` (level >= 1), in order."""
        ...

    def add_tree_head(self, tree_size: int, data: bytes) -> None: ...

    def tree_heads(self) -> list[bytes]:
        """Every stored signed tree head, oldest first."""
        ...

    def latest_tree_head(self) -> bytes | None: ...

    def get_meta(self, key: str) -> bytes | None: ...

    def set_meta(self, key: str, value: bytes) -> None: ...

    def close(self) -> None: ...


class MemoryLedgerStore:
    """A ``LedgerStore`` in process memory (tests, simulations)."""

    def __init__(self) -> None:
        self._data: list[bytes] = []
        self._levels: list[list[bytes]] = [[]]  # _levels[0] = leaf hashes
        self._heads: list[bytes] = []
        self._meta: dict[str, bytes] = {}
        self._subjects: dict[str, list[int]] = {}

    def size(self) -> int:
        return len(self._data)

    def append(
        self,
        first_index: int,
        leaves: Sequence[Leaf],
        nodes: Sequence[Node],
        subjects: Sequence[Subject] = (),
    ) -> None:
        if first_index != len(self._data):
            raise LedgerError(
                f"append at {first_index} but the ledger has {len(self._data)} entries"
            )
        # Check everything before changing anything, so a failed append leaves no trace.
        pending: dict[int, int] = {}
        for level, index, h in nodes:
            if level < 1 or len(h) != 32:
                raise LedgerError("invalid interior node")
            have = len(self._levels[level]) if level < len(self._levels) else 0
            expect = have + pending.get(level, 0)
            if index != expect:
                raise LedgerError(f"interior node ({level}, {index}) is out of order")
            pending[level] = pending.get(level, 0) + 1
        for data, h in leaves:
            self._data.append(data)
            self._levels[0].append(h)
        for level, _index, h in nodes:
            while len(self._levels) <= level:
                self._levels.append([])
            self._levels[level].append(h)
        for subject, index in subjects:
            self._subjects.setdefault(subject, []).append(index)

    def indices_for(self, subject: str) -> list[int]:
        return list(self._subjects.get(subject, ()))

    def subjects_range(self, start: int, stop: int) -> list[Subject]:
        return [(s, i) for s, idxs in self._subjects.items() for i in idxs if start <= i < stop]

    def entry(self, index: int) -> bytes:
        if not 0 <= index < len(self._data):
            raise LedgerError(f"no entry {index} (ledger has {len(self._data)})")
        return self._data[index]

    def iter_leaves(self, start: int, stop: int) -> Iterator[Leaf]:
        for i in range(max(start, 0), min(stop, len(self._data))):
            yield self._data[i], self._levels[0][i]

    def node(self, level: int, index: int) -> bytes:
        try:
            if level < 0 or index < 0:
                raise IndexError
            return self._levels[level][index]
        except IndexError:
            raise LedgerError(f"missing tree node ({level}, {index})") from None

    def nodes(self, coords: Sequence[tuple[int, int]]) -> list[bytes]:
        return [self.node(level, index) for level, index in coords]

    def node_range(self, level: int, start: int, stop: int) -> list[bytes]:
        if level >= len(self._levels):
            return []
        return self._levels[level][start:stop]

    def add_tree_head(self, tree_size: int, data: bytes) -> None:
        self._heads.append(data)

    def tree_heads(self) -> list[bytes]:
        return list(self._heads)

    def latest_tree_head(self) -> bytes | None:
        return self._heads[-1] if self._heads else None

    def get_meta(self, key: str) -> bytes | None:
        return self._meta.get(key)

    def set_meta(self, key: str, value: bytes) -> None:
        self._meta[key] = value

    def close(self) -> None:
        return None

    # --- test hooks: simulate an attacker with write access to the storage ---------------------
    def tamper_entry(self, index: int, data: bytes, leaf: bytes) -> None:
        """Overwrite an entry and its leaf hash in place (tests only: an attacker's rewrite)."""
        self._data[index] = data
        self._levels[0][index] = leaf

    def tamper_node(self, level: int, index: int, h: bytes) -> None:
        self._levels[level][index] = h

    def truncate(self, size: int) -> None:
        """Drop entries from ``size`` on, with their nodes (tests only)."""
        del self._data[size:]
        for level, hashes in enumerate(self._levels):
            del hashes[size >> level :]
