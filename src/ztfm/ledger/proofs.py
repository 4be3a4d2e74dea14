"""Signed tree heads and proof values, with strict parsing from their JSON form."""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ztfm.crypto.signing import SIGNATURE_BYTES, SigningKey, VerifyKey
from ztfm.errors import CryptoError, LedgerError
from ztfm.ledger import merkle
from ztfm.ledger.entry import canonical_json, parse_canonical_json, to_time_ms

STH_CONTEXT = b"ztfm-ledger-tree-head-v1\x00"
_HEX = re.compile(r"(?:[0-9a-f]{2})*")
MAX_JSON_BYTES = 16 * 1024


def _hex(v: Any, what: str, length: int | None = None) -> bytes:
    if not isinstance(v, str) or _HEX.fullmatch(v) is None:
        raise LedgerError(f"{what} must be lowercase hex")
    raw = bytes.fromhex(v)
    if length is not None and len(raw) != length:
        raise LedgerError(f"{what} must be {length} bytes")
    return raw


def _int(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= merkle.MAX_TREE_SIZE:
        raise LedgerError(f"{what} must be a non-negative integer")
    return v


def _fields(obj: Any, names: set[str], what: str) -> Mapping[str, Any]:
    if not isinstance(obj, dict) or set(obj) != names:
        raise LedgerError(f"{what} must have exactly the fields {sorted(names)}")
    return obj


def _path(v: Any) -> tuple[bytes, ...]:
    if not isinstance(v, list) or len(v) > merkle.MAX_PROOF_NODES:
        raise LedgerError("proof path must be a list of at most 64 hashes")
    return tuple(_hex(x, "proof node", merkle.HASH_BYTES) for x in v)


@dataclass(frozen=True, slots=True)
class TreeHead:
    """(log id, tree size, root hash, timestamp): what a log operator signs."""

    log_id: bytes  # SHA-256 of the log's Ed25519 public key
    tree_size: int
    root_hash: bytes
    timestamp_ms: int

    def __post_init__(self) -> None:
        if len(self.log_id) != 32 or len(self.root_hash) != merkle.HASH_BYTES:
            raise LedgerError("tree head log id and root hash must be 32 bytes")
        _int(self.tree_size, "tree size")
        if not 0 <= self.timestamp_ms < 2**63:
            raise LedgerError("tree head timestamp is out of range")

    def signing_bytes(self) -> bytes:
        """Domain-separated, fixed-layout message the log key signs."""
        return (
            STH_CONTEXT
            + self.log_id
            + struct.pack(">QQ", self.tree_size, self.timestamp_ms)
            + self.root_hash
        )


@dataclass(frozen=True, slots=True)
class SignedTreeHead:
    head: TreeHead
    signature: bytes

    @classmethod
    def sign(
        cls, key: SigningKey, tree_size: int, root_hash: bytes, *, now: float
    ) -> SignedTreeHead:
        log_id = bytes.fromhex(key.verify_key.fingerprint())
        head = TreeHead(log_id, tree_size, root_hash, to_time_ms(now))
        return cls(head, key.sign(head.signing_bytes()))

    def verify(self, log_key: VerifyKey) -> None:
        """Return None if this head was signed by ``log_key``; raise ``LedgerError`` if not."""
        if self.head.log_id.hex() != log_key.fingerprint():
            raise LedgerError("tree head is from a different log (log id does not match the key)")
        try:
            log_key.verify(self.signature, self.head.signing_bytes())
        except CryptoError as exc:
            raise LedgerError(f"tree head signature is invalid: {exc}") from exc

    @property
    def tree_size(self) -> int:
        return self.head.tree_size

    @property
    def root_hash(self) -> bytes:
        return self.head.root_hash

    def to_json(self) -> dict[str, Any]:
        return {
            "log_id": self.head.log_id.hex(),
            "root_hash": self.head.root_hash.hex(),
            "signature": self.signature.hex(),
            "timestamp_ms": self.head.timestamp_ms,
            "tree_size": self.head.tree_size,
        }

    @classmethod
    def from_json(cls, obj: Any) -> SignedTreeHead:
        f = _fields(
            obj, {"log_id", "root_hash", "signature", "timestamp_ms", "tree_size"}, "tree head"
        )
        ts = f["timestamp_ms"]
        if not isinstance(ts, int) or isinstance(ts, bool):
            raise LedgerError("tree head timestamp must be an integer")
        head = TreeHead(
            _hex(f["log_id"], "log id", 32),
            _int(f["tree_size"], "tree size"),
            _hex(f["root_hash"], "root hash", merkle.HASH_BYTES),
            ts,
        )
        return cls(head, _hex(f["signature"], "signature", SIGNATURE_BYTES))

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedTreeHead:
        return cls.from_json(parse_canonical_json(data, what="tree head", limit=MAX_JSON_BYTES))


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """Audit path proving leaf ``index`` is in the tree of ``tree_size`` leaves."""

    index: int
    tree_size: int
    path: tuple[bytes, ...]

    def verify(self, leaf_data: bytes, root_hash: bytes) -> None:
        """Return None if ``leaf_data`` is leaf ``index`` under ``root_hash``; raise otherwise."""
        merkle.verify_inclusion(
            self.index, self.tree_size, merkle.leaf_hash(leaf_data), self.path, root_hash
        )

    def verify_against(self, leaf_data: bytes, head: SignedTreeHead) -> None:
        """As ``verify``, against a (separately verified) signed tree head of the same size."""
        if head.tree_size != self.tree_size:
            raise LedgerError(
                f"inclusion proof is for tree size {self.tree_size}, "
                f"the trusted head has size {head.tree_size}"
            )
        self.verify(leaf_data, head.root_hash)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "path": [p.hex() for p in self.path],
            "tree_size": self.tree_size,
        }

    @classmethod
    def from_json(cls, obj: Any) -> InclusionProof:
        f = _fields(obj, {"index", "path", "tree_size"}, "inclusion proof")
        return cls(_int(f["index"], "index"), _int(f["tree_size"], "tree size"), _path(f["path"]))


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    """Proof that the tree of ``new_size`` leaves extends the tree of ``old_size`` leaves."""

    old_size: int
    new_size: int
    path: tuple[bytes, ...]

    def verify(self, old_root: bytes, new_root: bytes) -> None:
        merkle.verify_consistency(self.old_size, self.new_size, old_root, new_root, self.path)

    def to_json(self) -> dict[str, Any]:
        return {
            "new_size": self.new_size,
            "old_size": self.old_size,
            "path": [p.hex() for p in self.path],
        }

    @classmethod
    def from_json(cls, obj: Any) -> ConsistencyProof:
        f = _fields(obj, {"new_size", "old_size", "path"}, "consistency proof")
        return cls(
            _int(f["old_size"], "old size"), _int(f["new_size"], "new size"), _path(f["path"])
        )
