"""``LedgerClient``: a witness that only ever moves forward along one consistent log.

It keeps the last signed tree head it accepted. A new head is accepted only if it is signed by the
pinned log key, is not older or smaller, and a consistency proof shows the old tree is a prefix of
the new one; two heads of the same size with different roots are a fork. Devices check inclusion
proofs against this trusted head only.
"""

from __future__ import annotations

from ztfm.crypto.signing import VerifyKey
from ztfm.errors import LedgerError
from ztfm.ledger.entry import parse_canonical_json
from ztfm.ledger.merkle import EMPTY_ROOT
from ztfm.ledger.proofs import MAX_JSON_BYTES, ConsistencyProof, InclusionProof, SignedTreeHead


class LedgerClient:
    """Tracks one log (by its public key) and the newest head proven consistent with the past."""

    __slots__ = ("_head", "_key")

    def __init__(self, log_key: VerifyKey, head: SignedTreeHead | None = None) -> None:
        self._key = log_key
        self._head: SignedTreeHead | None = None
        if head is not None:
            head.verify(log_key)
            self._head = head

    @property
    def log_key(self) -> VerifyKey:
        return self._key

    @property
    def head(self) -> SignedTreeHead:
        """The trusted head; ``LedgerError`` if none was accepted yet."""
        if self._head is None:
            raise LedgerError("the ledger client has not accepted any tree head yet")
        return self._head

    @property
    def has_head(self) -> bool:
        return self._head is not None

    def update(self, new: SignedTreeHead, proof: ConsistencyProof | None = None) -> None:
        """Accept ``new`` if it extends the trusted head; raise ``LedgerError`` and keep the old
        head otherwise. ``proof`` is required when the tree grew from a non-empty size."""
        new.verify(self._key)
        if new.tree_size == 0 and new.root_hash != EMPTY_ROOT:
            raise LedgerError("signed head of an empty tree with a non-empty root")
        old = self._head
        if old is None or old.tree_size == 0:
            if old is not None and new.head.timestamp_ms < old.head.timestamp_ms:
                raise LedgerError("new tree head is older than the trusted one")
            self._head = new
            return
        if new.tree_size < old.tree_size:
            raise LedgerError(
                f"new tree head has {new.tree_size} entries, fewer than the trusted "
                f"{old.tree_size}: the log was truncated or rolled back"
            )
        if new.head.timestamp_ms < old.head.timestamp_ms:
            raise LedgerError("new tree head is older than the trusted one")
        if new.tree_size == old.tree_size:
            if new.root_hash != old.root_hash:
                raise LedgerError("two signed roots for the same tree size: the log forked")
            if proof is not None and proof.path:
                raise LedgerError("unexpected consistency proof for an unchanged tree")
            self._head = new
            return
        if proof is None:
            raise LedgerError("a consistency proof is required to accept a larger tree head")
        if proof.old_size != old.tree_size or proof.new_size != new.tree_size:
            raise LedgerError(
                f"consistency proof is for sizes {proof.old_size}->{proof.new_size}, "
                f"expected {old.tree_size}->{new.tree_size}"
            )
        try:
            proof.verify(old.root_hash, new.root_hash)
        except LedgerError as exc:
            raise LedgerError(f"the log is not consistent with the trusted head: {exc}") from exc
        self._head = new

    def cross_check(self, other: SignedTreeHead, proof: ConsistencyProof | None = None) -> None:
        """Gossip: check a head another party holds against ours, without adopting it.

        Raises ``LedgerError`` if the two cannot both be true of one append-only log (a split
        view). ``proof`` links the smaller of the two heads to the larger.
        """
        other.verify(self._key)
        mine = self.head
        small, large = (mine, other) if mine.tree_size <= other.tree_size else (other, mine)
        if small.tree_size == large.tree_size:
            if small.root_hash != large.root_hash:
                raise LedgerError("split view: two signed roots for the same tree size")
            return
        if small.tree_size == 0:
            return
        if proof is None or (proof.old_size, proof.new_size) != (
            small.tree_size,
            large.tree_size,
        ):
            raise LedgerError(
                f"a consistency proof {small.tree_size}->{large.tree_size} is required"
            )
        try:
            proof.verify(small.root_hash, large.root_hash)
        except LedgerError as exc:
            raise LedgerError(f"split view: the two heads are not consistent: {exc}") from exc

    def check_fresh(self, *, now: float, max_age_s: float, max_skew_s: float = 300.0) -> None:
        """Raise ``LedgerError`` unless the trusted head was signed within ``max_age_s`` of
        ``now`` (and not more than ``max_skew_s`` in the future).

        Consistency alone cannot tell a frozen log from a quiet one: a log operator (or a
        network attacker replaying old heads) could hide a revocation by never showing a newer
        head. Callers that rely on absence (no revocation) should demand fresh heads.
        """
        age_s = now - self.head.head.timestamp_ms / 1000.0
        if age_s > max_age_s:
            raise LedgerError(f"trusted tree head is {age_s:.0f} s old (limit {max_age_s:.0f} s)")
        if age_s < -max_skew_s:
            raise LedgerError(f"trusted tree head is {-age_s:.0f} s in the future")

    def check_inclusion(self, leaf_data: bytes, proof: InclusionProof) -> None:
        """Return None if ``leaf_data`` is in the trusted tree per ``proof``; raise otherwise."""
        proof.verify_against(leaf_data, self.head)

    # --- persistence (the caller stores the bytes, e.g. with an atomic file write) -------------
    def state_bytes(self) -> bytes:
        """The trusted head in canonical form (b"" if none)."""
        return b"" if self._head is None else self._head.to_bytes()

    @classmethod
    def from_state(cls, log_key: VerifyKey, data: bytes) -> LedgerClient:
        if not data:
            return cls(log_key)
        return cls(
            log_key,
            SignedTreeHead.from_json(
                parse_canonical_json(data, what="client state", limit=MAX_JSON_BYTES)
            ),
        )
