"""The signed model bundle: one file holding a manifest, weights, a signature and a ledger receipt.

Container (all integers big-endian)::

    b"ZTFMBND1"
    member*  :=  name_len:u8  name:ascii  data_len:u64  data
    members, in this order: manifest.json, weights.safetensors, manifest.sig, [receipt.json]

Names and order are fixed, so there are no paths to traverse, no duplicates and nothing to
decompress; each member has a size limit checked before it is sliced; trailing bytes are refused.
``Bundle.from_bytes`` checks every invariant it can without keys (formats, limits, the weights
hash); ``ztfm.bundle.verify.verify_bundle`` checks the rest (signer, signature, version, ledger).
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from ztfm.bundle.tensors import DEFAULT_LIMITS, TensorLimits, decode_tensors
from ztfm.crypto.signing import SIGNATURE_BYTES
from ztfm.errors import BundleError, LedgerError
from ztfm.ledger import InclusionProof
from ztfm.ledger.entry import MAX_ENTRY_BYTES, canonical_json, parse_canonical_json

MAGIC = b"ZTFMBND1"
FORMAT = "ztfm-bundle/1"
SIGNING_CONTEXT = b"ztfm-bundle-manifest-v1\x00"
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
SIGNATURE = "manifest.sig"
RECEIPT = "receipt.json"
MAX_MANIFEST_BYTES = 16 * 1024
MAX_RECEIPT_BYTES = 4 * MAX_ENTRY_BYTES
QUANTISATIONS = ("none", "float16", "int8")
_MODEL_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX_BYTES = re.compile(r"(?:[0-9a-f]{2})+")


class Reason(StrEnum):
    """Why a bundle was refused (stable codes for the audit log)."""

    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    HASH_MISMATCH = "hash_mismatch"
    UNKNOWN_SIGNER = "unknown_signer"
    BAD_SIGNATURE = "bad_signature"
    WRONG_MODEL = "wrong_model"
    ROLLBACK = "rollback"
    NOT_IN_LEDGER = "not_in_ledger"
    LEDGER_MISMATCH = "ledger_mismatch"
    UNTRUSTED_LEDGER = "untrusted_ledger"


class BundleRejected(BundleError):
    """A bundle failed a check; ``reason`` is a stable code, the message says what exactly."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"bundle refused ({reason.value}): {message}")
        self.reason = reason


def _int(v: Any, what: str, *, minimum: int = 0) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not minimum <= v < 2**63:
        raise BundleRejected(Reason.MALFORMED, f"manifest {what} must be an integer >= {minimum}")
    return v


def _str(v: Any, what: str, limit: int = 128) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= limit:
        raise BundleRejected(Reason.MALFORMED, f"manifest {what} must be a short string")
    return v


@dataclass(frozen=True, slots=True)
class Manifest:
    """What the release key signs. Construct through ``Manifest.create`` or ``from_bytes``."""

    model_id: str
    version: int
    parent_version: int | None
    architecture: str
    quantisation: str
    training_round: int
    weights_sha256: str
    weights_bytes: int
    ledger_index: int
    release_key: str  # SHA-256 fingerprint (hex) of the release public key
    created_ms: int

    def __post_init__(self) -> None:
        if _MODEL_ID.fullmatch(_str(self.model_id, "model_id", 64)) is None:
            raise BundleRejected(Reason.MALFORMED, "manifest model_id has forbidden characters")
        _int(self.version, "version", minimum=1)
        if self.parent_version is not None and (
            _int(self.parent_version, "parent_version", minimum=0) >= self.version
        ):
            raise BundleRejected(Reason.MALFORMED, "parent_version must be below version")
        _str(self.architecture, "architecture")
        if self.quantisation not in QUANTISATIONS:
            raise BundleRejected(
                Reason.MALFORMED, f"quantisation must be one of {', '.join(QUANTISATIONS)}"
            )
        _int(self.training_round, "training_round")
        for what, v in (("weights_sha256", self.weights_sha256), ("release_key", self.release_key)):
            if not isinstance(v, str) or _HEX64.fullmatch(v) is None:
                raise BundleRejected(Reason.MALFORMED, f"manifest {what} must be 64 hex digits")
        _int(self.weights_bytes, "weights_bytes")
        _int(self.ledger_index, "ledger_index")
        _int(self.created_ms, "created_ms")

    def to_json(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "created_ms": self.created_ms,
            "format": FORMAT,
            "ledger_index": self.ledger_index,
            "model_id": self.model_id,
            "parent_version": self.parent_version,
            "quantisation": self.quantisation,
            "release_key": self.release_key,
            "training_round": self.training_round,
            "version": self.version,
            "weights_bytes": self.weights_bytes,
            "weights_sha256": self.weights_sha256,
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    def signing_bytes(self) -> bytes:
        return SIGNING_CONTEXT + self.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            obj = parse_canonical_json(data, what="manifest", limit=MAX_MANIFEST_BYTES)
        except LedgerError as exc:
            raise BundleRejected(Reason.MALFORMED, str(exc)) from exc
        fields = set(cls.__dataclass_fields__) | {"format"}
        if not isinstance(obj, dict) or set(obj) != fields:
            raise BundleRejected(Reason.MALFORMED, "manifest fields are not the expected set")
        if obj.pop("format") != FORMAT:
            raise BundleRejected(Reason.MALFORMED, f"manifest format is not {FORMAT}")
        return cls(**obj)


@dataclass(frozen=True, slots=True)
class LedgerReceipt:
    """The ledger entry of a release and a proof that it is in the log (unsigned: it is checked
    against a tree head the device already trusts)."""

    entry: bytes
    proof: InclusionProof

    def to_bytes(self) -> bytes:
        return canonical_json({"entry": self.entry.hex(), "proof": self.proof.to_json()})

    @classmethod
    def from_bytes(cls, data: bytes) -> LedgerReceipt:
        try:
            obj = parse_canonical_json(data, what="ledger receipt", limit=MAX_RECEIPT_BYTES)
            if not isinstance(obj, dict) or set(obj) != {"entry", "proof"}:
                raise LedgerError("ledger receipt needs exactly entry and proof")
            hex_entry = obj["entry"]
            if (
                not isinstance(hex_entry, str)
                or re.fullmatch(r"(?:[0-9a-f]{2})+", hex_entry) is None
            ):
                raise LedgerError("ledger receipt entry must be lowercase hex")
            return cls(bytes.fromhex(hex_entry), InclusionProof.from_json(obj["proof"]))
        except LedgerError as exc:
            raise BundleRejected(Reason.MALFORMED, str(exc)) from exc


def _read_members(data: bytes, limits: dict[str, int]) -> list[tuple[str, bytes]]:
    if data[: len(MAGIC)] != MAGIC:
        raise BundleRejected(Reason.MALFORMED, "not a ztfm bundle (bad magic)")
    pos = len(MAGIC)
    out: list[tuple[str, bytes]] = []
    while pos < len(data):
        name_len = data[pos]
        pos += 1
        raw_name = data[pos : pos + name_len]
        if len(raw_name) != name_len:
            raise BundleRejected(Reason.MALFORMED, "bundle is truncated (member name)")
        pos += name_len
        try:
            name = raw_name.decode("ascii")
        except UnicodeDecodeError:
            raise BundleRejected(Reason.MALFORMED, "bundle member name is not ASCII") from None
        order = (MANIFEST, WEIGHTS, SIGNATURE, RECEIPT)
        if name not in limits:
            raise BundleRejected(Reason.MALFORMED, f"unexpected bundle member {name[:40]!r}")
        if len(out) >= len(order) or name != order[len(out)]:
            raise BundleRejected(Reason.MALFORMED, f"bundle member {name!r} is out of order")
        if pos + 8 > len(data):
            raise BundleRejected(Reason.MALFORMED, "bundle is truncated (member length)")
        (size,) = struct.unpack(">Q", data[pos : pos + 8])
        pos += 8
        if size > limits[name]:
            raise BundleRejected(
                Reason.TOO_LARGE, f"member {name} of {size} bytes exceeds {limits[name]}"
            )
        if pos + size > len(data):
            raise BundleRejected(Reason.MALFORMED, f"bundle is truncated (member {name})")
        out.append((name, data[pos : pos + size]))
        pos += size
    if len(out) < 3:
        raise BundleRejected(Reason.MALFORMED, "bundle is truncated (missing members)")
    return out


def _member(name: str, data: bytes) -> bytes:
    raw = name.encode("ascii")
    return bytes([len(raw)]) + raw + struct.pack(">Q", len(data)) + data


def encode_bundle(
    manifest_bytes: bytes, weights_blob: bytes, signature: bytes, receipt: LedgerReceipt | None
) -> bytes:
    """The container bytes for these members (no checks: parse the result with ``from_bytes``)."""
    parts = [
        MAGIC,
        _member(MANIFEST, manifest_bytes),
        _member(WEIGHTS, weights_blob),
        _member(SIGNATURE, signature),
    ]
    if receipt is not None:
        parts.append(_member(RECEIPT, receipt.to_bytes()))
    return b"".join(parts)


_SEAL = object()


@dataclass(frozen=True, slots=True)
class Bundle:
    """A parsed bundle. Its weights are read-only arrays that passed every format check.

    Only ``Bundle.from_bytes`` (and ``with_receipt``) make one, so ``weights`` always is the
    decoding of ``weights_blob``, whose hash the manifest names.
    """

    manifest: Manifest
    manifest_bytes: bytes
    weights_blob: bytes
    signature: bytes
    receipt: LedgerReceipt | None
    weights: dict[str, np.ndarray[Any, Any]]
    _seal: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._seal is not _SEAL:
            raise BundleError("a Bundle is made by Bundle.from_bytes, not by hand")

    @classmethod
    def from_bytes(cls, data: bytes, *, limits: TensorLimits = DEFAULT_LIMITS) -> Bundle:
        weights_limit = limits.max_bytes + limits.max_header_bytes + 8
        sizes = {
            MANIFEST: MAX_MANIFEST_BYTES,
            WEIGHTS: weights_limit,
            SIGNATURE: SIGNATURE_BYTES,
            RECEIPT: MAX_RECEIPT_BYTES,
        }
        if len(data) > len(MAGIC) + sum(sizes.values()) + 4 * (1 + 32 + 8):
            raise BundleRejected(Reason.TOO_LARGE, "bundle file exceeds the size limit")
        members = dict(_read_members(data, sizes))
        manifest_bytes = members[MANIFEST]
        manifest = Manifest.from_bytes(manifest_bytes)
        signature = members[SIGNATURE]
        if len(signature) != SIGNATURE_BYTES:
            raise BundleRejected(Reason.MALFORMED, "signature has the wrong length")
        blob = members[WEIGHTS]
        if len(blob) != manifest.weights_bytes:
            raise BundleRejected(Reason.HASH_MISMATCH, "weights size does not match the manifest")
        if hashlib.sha256(blob).hexdigest() != manifest.weights_sha256:
            raise BundleRejected(Reason.HASH_MISMATCH, "weights hash does not match the manifest")
        try:
            weights = decode_tensors(blob, limits=limits)
        except BundleRejected:
            raise
        except BundleError as exc:
            raise BundleRejected(Reason.MALFORMED, f"weights: {exc}") from exc
        receipt = LedgerReceipt.from_bytes(members[RECEIPT]) if RECEIPT in members else None
        return cls(manifest, manifest_bytes, blob, signature, receipt, weights, _SEAL)

    def to_bytes(self) -> bytes:
        return encode_bundle(self.manifest_bytes, self.weights_blob, self.signature, self.receipt)

    def with_receipt(self, receipt: LedgerReceipt | None) -> Bundle:
        """The same signed bundle with a (new) ledger receipt; the signature is unaffected."""
        return Bundle(
            self.manifest,
            self.manifest_bytes,
            self.weights_blob,
            self.signature,
            receipt,
            self.weights,
            _SEAL,
        )

    @property
    def version(self) -> int:
        return self.manifest.version

    def measurement(self) -> bytes:
        """SHA-256 of the signed manifest (which names the weights hash): the value a device
        extends into a TPM PCR so that attestation covers the model it runs."""
        return hashlib.sha256(self.manifest_bytes).digest()
