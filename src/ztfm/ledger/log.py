"""The ledger: an append-only RFC 6962 Merkle log of typed entries with signed tree heads."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ztfm.crypto.signing import SigningKey, VerifyKey
from ztfm.errors import CryptoError, LedgerError
from ztfm.ledger import merkle
from ztfm.ledger.entry import Entry, to_time_ms
from ztfm.ledger.proofs import ConsistencyProof, InclusionProof, SignedTreeHead
from ztfm.ledger.store import LedgerStore, Node

LOG_KEY_META = "log_public_key"
VERIFY_CHUNK = 1 << 14  # leaves per chunk in verify_all (a power of two)


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What ``Ledger.verify_all`` recomputed and checked."""

    entries: int
    nodes: int
    tree_heads: int
    root_hash: bytes


class Ledger:
    """Append entries, sign tree heads, and serve inclusion and consistency proofs.

    Only the log operator holds ``signing_key``; readers open the same store without one. The log
    public key is pinned in the store on first use, and a different key is refused.
    """

    def __init__(self, store: LedgerStore, signing_key: SigningKey | None = None) -> None:
        self._store = store
        self._key = signing_key
        stored = store.get_meta(LOG_KEY_META)
        if signing_key is not None:
            raw = signing_key.verify_key.raw
            if stored is None:
                store.set_meta(LOG_KEY_META, raw)
            elif stored != raw:
                raise LedgerError("this ledger belongs to a different log key")
        self._frontier = merkle.Frontier.load(store.node, store.size())
        self._lock = threading.RLock()  # appends and head signing from several threads

    def refresh(self) -> int:
        """Catch up with entries appended by another process (readers); return the new size."""
        with self._lock:
            size = self._store.size()
            if size < self._frontier.size:
                raise LedgerError(
                    f"the ledger shrank from {self._frontier.size} to {size} entries: truncated"
                )
            if size != self._frontier.size:
                self._frontier = merkle.Frontier.load(self._store.node, size)
            return size

    # --- reading -------------------------------------------------------------------------------
    @property
    def store(self) -> LedgerStore:
        return self._store

    @property
    def size(self) -> int:
        return self._frontier.size

    @property
    def log_key(self) -> VerifyKey | None:
        """The log's public key as pinned in the store (``None`` before the first signer)."""
        raw = self._store.get_meta(LOG_KEY_META)
        if raw is None:
            return None
        try:
            return VerifyKey(raw)
        except CryptoError as exc:
            raise LedgerError(f"stored log key is invalid: {exc}") from exc

    def root(self, tree_size: int | None = None) -> bytes:
        """Root hash of the first ``tree_size`` entries (default: all)."""
        n = self._check_size(tree_size)
        if n == self._frontier.size:
            return self._frontier.root()
        return merkle.root_hash(self._store.node, n, read_many=self._store.nodes)

    def entry_bytes(self, index: int) -> bytes:
        self._check_index(index)
        return self._store.entry(index)

    def entry(self, index: int) -> Entry:
        return Entry.from_bytes(self.entry_bytes(index))

    def tail(self, n: int) -> list[tuple[int, Entry]]:
        """The last ``n`` entries with their indices, oldest first."""
        start = max(0, self.size - max(n, 0))
        return [
            (start + i, Entry.from_bytes(d))
            for i, (d, _h) in enumerate(self._store.iter_leaves(start, self.size))
        ]

    # --- appending -----------------------------------------------------------------------------
    def append(self, entry: Entry) -> int:
        """Append one entry in its own transaction; return its index."""
        return self.append_many([entry])[0]

    def append_many(self, entries: Iterable[Entry]) -> range:
        """Append entries in one transaction (all or nothing); return their indices."""
        es = list(entries)
        return self._append([e.to_bytes() for e in es], es)

    def append_raw(self, datas: Sequence[bytes]) -> range:
        """Append already-encoded entries (each must parse as an ``Entry``)."""
        return self._append(datas, [Entry.from_bytes(d) for d in datas])

    def _append(self, datas: Sequence[bytes], entries: Sequence[Entry]) -> range:
        with self._lock:
            return self._append_locked(datas, entries)

    def _append_locked(self, datas: Sequence[bytes], entries: Sequence[Entry]) -> range:
        first = self._frontier.size
        subjects = [(subject, first + i) for i, e in enumerate(entries) for subject in e.subjects()]
        work = merkle.Frontier(first, list(self._frontier.hashes))
        leaves: list[tuple[bytes, bytes]] = []
        nodes: list[Node] = []
        for d in datas:
            h = merkle.leaf_hash(d)
            leaves.append((d, h))
            nodes.extend(work.push(h))
        self._store.append(first, leaves, nodes, subjects)
        self._frontier = work
        return range(first, work.size)

    # --- tree heads ----------------------------------------------------------------------------
    def sign_tree_head(self, *, now: float) -> SignedTreeHead:
        """Sign and store a head over the current tree (log operator only)."""
        if self._key is None:
            raise LedgerError("this ledger was opened without the log signing key")
        with self._lock:
            return self._sign_locked(self._key, now)

    def _sign_locked(self, key: SigningKey, now: float) -> SignedTreeHead:
        latest = self.latest_tree_head()
        if latest is not None and to_time_ms(now) < latest.head.timestamp_ms:
            raise LedgerError("refusing to sign a tree head older than the latest one")
        sth = SignedTreeHead.sign(key, self.size, self._frontier.root(), now=now)
        self._store.add_tree_head(sth.tree_size, sth.to_bytes())
        return sth

    def latest_tree_head(self) -> SignedTreeHead | None:
        data = self._store.latest_tree_head()
        return None if data is None else SignedTreeHead.from_bytes(data)

    def tree_heads(self) -> list[SignedTreeHead]:
        return [SignedTreeHead.from_bytes(d) for d in self._store.tree_heads()]

    # --- proofs --------------------------------------------------------------------------------
    def inclusion_proof(self, index: int, tree_size: int | None = None) -> InclusionProof:
        n = self._check_size(tree_size)
        if not 0 <= index < n:
            raise LedgerError(f"entry {index} is not in a tree of size {n}")
        path = merkle.inclusion_path(self._store.node, index, n, read_many=self._store.nodes)
        return InclusionProof(index, n, tuple(path))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> ConsistencyProof:
        n = self._check_size(new_size)
        path = merkle.consistency_path(self._store.node, old_size, n, read_many=self._store.nodes)
        return ConsistencyProof(old_size, n, tuple(path))

    def history(self, subject: str) -> list[tuple[int, Entry]]:
        """Entries about ``subject`` (a device id, model id or round contributor), oldest first.

        Uses the store's subject index, then re-reads each entry and checks it really names
        ``subject``; it cannot show that nothing was *left out* of the index (``verify_all``
        and a scan with ``find`` can).
        """
        out: list[tuple[int, Entry]] = []
        for index in self._store.indices_for(subject):
            if not 0 <= index < self.size:
                raise LedgerError(f"subject index points outside the ledger ({index})")
            entry = self.entry(index)
            if subject not in entry.subjects():
                raise LedgerError(f"subject index for {subject!r} is wrong at entry {index}")
            out.append((index, entry))
        return out

    def find(self, predicate: Callable[[Entry], bool], *, start: int = 0) -> list[int]:
        """Indices of entries matching ``predicate`` (a linear scan; for tools, not hot paths)."""
        return [
            start + i
            for i, (d, _h) in enumerate(self._store.iter_leaves(start, self.size))
            if predicate(Entry.from_bytes(d))
        ]

    # --- auditing ------------------------------------------------------------------------------
    def verify_all(
        self,
        log_key: VerifyKey | None = None,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> VerifyReport:
        """Recompute every leaf, every stored node and every signed head; raise on any mismatch.

        ``log_key`` pins the expected key; without it the key stored in the database is used,
        which only proves internal consistency (whoever rewrote the file could swap the key).
        """
        stored_key = self.log_key
        key = log_key if log_key is not None else stored_key
        if key is None:
            raise LedgerError("no log key: pass one or open the ledger with its signing key")
        if stored_key is not None and stored_key.raw != key.raw:
            raise LedgerError("the ledger's stored log key is not the expected key")
        heads = self.tree_heads()
        by_size: dict[int, list[SignedTreeHead]] = {}
        for sth in heads:
            sth.verify(key)
            by_size.setdefault(sth.tree_size, []).append(sth)
        for a, b in itertools.pairwise(heads):
            if b.tree_size < a.tree_size or b.head.timestamp_ms < a.head.timestamp_ms:
                raise LedgerError("signed tree heads go backwards: the ledger was truncated")
        size = self._store.size()
        if heads and heads[-1].tree_size > size:
            raise LedgerError(
                f"a signed tree head covers {heads[-1].tree_size} entries "
                f"but the ledger holds {size}: it was truncated"
            )
        frontier = merkle.Frontier.empty()
        n_nodes = 0
        self._check_heads_at(0, frontier, by_size)
        for chunk_start in range(0, size, VERIFY_CHUNK):
            chunk_end = min(chunk_start + VERIFY_CHUNK, size)
            computed: dict[int, list[tuple[int, bytes]]] = {}
            subjects: set[tuple[str, int]] = set()
            for offset, (data, stored_leaf) in enumerate(
                self._store.iter_leaves(chunk_start, chunk_end)
            ):
                index = chunk_start + offset
                try:
                    entry = Entry.from_bytes(data)
                except LedgerError as exc:
                    raise LedgerError(f"entry {index} is malformed: {exc}") from exc
                subjects.update((s, index) for s in entry.subjects())
                h = merkle.leaf_hash(data)
                if h != stored_leaf:
                    raise LedgerError(f"entry {index} does not match its stored leaf hash")
                for level, ix, nh in frontier.push(h):
                    computed.setdefault(level, []).append((ix, nh))
                self._check_heads_at(frontier.size, frontier, by_size)
            if frontier.size != chunk_end:
                raise LedgerError(f"ledger entry {frontier.size} is missing")
            stored_subjects = self._store.subjects_range(chunk_start, chunk_end)
            if len(stored_subjects) != len(subjects) or set(stored_subjects) != subjects:
                raise LedgerError(
                    f"the subject index for entries {chunk_start}..{chunk_end - 1} does not "
                    "match the entries"
                )
            for level, items in computed.items():
                first = items[0][0]
                stored = self._store.node_range(level, first, first + len(items))
                if stored != [nh for _ix, nh in items]:
                    raise LedgerError(f"stored tree nodes at level {level} were altered")
                n_nodes += len(items)
            if progress is not None:
                progress(chunk_end - chunk_start)
        if size == self.size and frontier.root() != self._frontier.root():
            raise LedgerError("the stored right edge of the tree does not match the entries")
        return VerifyReport(size, n_nodes, len(heads), frontier.root())

    @staticmethod
    def _check_heads_at(
        size: int, frontier: merkle.Frontier, by_size: dict[int, list[SignedTreeHead]]
    ) -> None:
        for sth in by_size.get(size, ()):
            if sth.root_hash != frontier.root():
                raise LedgerError(
                    f"signed tree head at size {size} does not match the recomputed root: "
                    "the ledger was rewritten"
                )

    # --- helpers -------------------------------------------------------------------------------
    def _check_size(self, tree_size: int | None) -> int:
        if tree_size is None:
            return self._frontier.size
        if not 0 <= tree_size <= self._frontier.size:
            raise LedgerError(f"tree size {tree_size} exceeds the ledger size {self.size}")
        return tree_size

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self._frontier.size:
            raise LedgerError(f"no entry {index} (the ledger has {self.size})")
