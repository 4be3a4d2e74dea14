"""Identity ledger (layer 2): an append-only RFC 6962 Merkle log with signed tree heads.

Typed entries (enrolment, key rotation, revocation, attestation verdict, model release,
quarantine decision, round contributors) are appended to a ``Ledger`` over a ``LedgerStore``
(SQLite or in-memory); the log operator signs tree heads; anyone can ask for inclusion and
consistency proofs and check them with a ``LedgerClient`` that never accepts a forked log.
"""

from ztfm.ledger.entry import Entry, EntryKind
from ztfm.ledger.log import Ledger, VerifyReport
from ztfm.ledger.merkle import leaf_hash, node_hash, verify_consistency, verify_inclusion
from ztfm.ledger.proofs import ConsistencyProof, InclusionProof, SignedTreeHead, TreeHead
from ztfm.ledger.sqlite import SqliteLedgerStore
from ztfm.ledger.store import LedgerStore, MemoryLedgerStore
from ztfm.ledger.witness import LedgerClient

__all__ = [
    "ConsistencyProof",
    "Entry",
    "EntryKind",
    "InclusionProof",
    "Ledger",
    "LedgerClient",
    "LedgerStore",
    "MemoryLedgerStore",
    "SignedTreeHead",
    "SqliteLedgerStore",
    "TreeHead",
    "VerifyReport",
    "leaf_hash",
    "node_hash",
    "verify_consistency",
    "verify_inclusion",
]
