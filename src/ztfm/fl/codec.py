"""Binary encoding of the round messages: a length-prefixed JSON header plus raw float32 arrays.

No pickle. ``decode`` parses, checks every field's type and every array's shape against the
bytes actually present, and rejects anything malformed or oversized with ``UpdateRejected``, so a
message object that exists is well formed. The networked transport carries these bytes inside
its signed protobuf envelope; the in-process transport carries them as they are, so both count
the same bytes on the wire.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np

from ztfm.errors import PrivacyError, UpdateRejected
from ztfm.fl.messages import (
    SECURE_PHASES,
    AttestReply,
    AttestTask,
    EndorsedKey,
    EvalReply,
    EvalTask,
    RoundTask,
    SecAggReply,
    SecAggTask,
    SecureRoundConfig,
    UpdateReply,
)
from ztfm.privacy.sparse import QuantizedSparse, decode_sparse

MAGIC = b"ZTFM"
VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_ARRAYS = 256
MAX_NDIM = 4

Message = (
    RoundTask
    | UpdateReply
    | EvalTask
    | EvalReply
    | AttestTask
    | AttestReply
    | SecAggTask
    | SecAggReply
)

_KINDS: dict[type[Any], int] = {
    RoundTask: 1,
    UpdateReply: 2,
    EvalTask: 3,
    EvalReply: 4,
    AttestTask: 5,
    AttestReply: 6,
    SecAggTask: 7,
    SecAggReply: 8,
}
_BY_KIND = {v: k for k, v in _KINDS.items()}
# field name -> expected python type after JSON decoding (nonce travels as hex)
_FIELDS: dict[type[Any], dict[str, type | tuple[type, ...]]] = {
    RoundTask: {
        "round_id": int,
        "model_version": int,
        "local_epochs": int,
        "prox_mu": (int, float),
        "deadline_s": (int, float),
        "nonce": str,
        "settings": dict,
    },
    UpdateReply: {
        "round_id": int,
        "device_id": str,
        "model_version": int,
        "n_samples": int,
        "train_loss": (int, float),
        "nonce": str,
    },
    EvalTask: {"round_id": int, "model_version": int, "nonce": str},
    EvalReply: {
        "round_id": int,
        "device_id": str,
        "model_version": int,
        "tp": int,
        "fp": int,
        "fn": int,
        "tn": int,
        "roc_auc": (int, float),
        "nonce": str,
    },
    AttestTask: {"round_id": int, "nonce": str},
    AttestReply: {"round_id": int, "device_id": str, "evidence": str, "nonce": str},
    SecAggTask: {"round_id": int, "phase": str, "nonce": str},
    SecAggReply: {"round_id": int, "device_id": str, "phase": str, "nonce": str},
}
_ARRAY_FIELD = {RoundTask: "params", UpdateReply: "delta", EvalTask: "params"}
# kinds whose binary part is one opaque byte string (its length is in the header as "b")
_BLOB_FIELD = {SecAggTask: "payload", SecAggReply: "payload"}
_HEAD = struct.Struct(">4sBBI")  # magic, version, kind, header length


def encode(msg: Message) -> bytes:
    """Serialise a round message to bytes."""
    cls = type(msg)
    if cls in _BLOB_FIELD:
        blob = bytes(getattr(msg, _BLOB_FIELD[cls]))
        return _header(msg, [], blob_bytes=len(blob)) + blob
    arrays: list[np.ndarray] = list(getattr(msg, _ARRAY_FIELD[cls])) if cls in _ARRAY_FIELD else []
    if isinstance(msg, UpdateReply) and msg.sparse is not None:
        if msg.sparse.length != sum(int(np.asarray(a).size) for a in arrays):
            raise UpdateRejected("the sparse upload does not match the update's size")
        packed = msg.sparse.encode()
        return _header(msg, arrays, sparse_bytes=len(packed)) + packed
    blobs = [np.ascontiguousarray(a, dtype="<f4").tobytes() for a in arrays]
    return b"".join([_header(msg, arrays), *blobs])


def encode_many(msgs: dict[str, RoundTask] | dict[str, EvalTask]) -> dict[str, bytes]:
    """Encode tasks that share one parameter list (one per device, differing in their nonce),
    serialising the parameter bytes once instead of once per device."""
    out: dict[str, bytes] = {}
    blob_for: dict[tuple[int, ...], bytes] = {}
    for key, msg in msgs.items():
        arrays = msg.params
        ident = tuple(id(a) for a in arrays)
        blob = blob_for.get(ident)
        if blob is None:
            blob = b"".join(np.ascontiguousarray(a, dtype="<f4").tobytes() for a in arrays)
            blob_for[ident] = blob
        out[key] = _header(msg, arrays) + blob
    return out


def _header(
    msg: Message,
    arrays: list[np.ndarray],
    blob_bytes: int | None = None,
    sparse_bytes: int | None = None,
) -> bytes:
    cls = type(msg)
    fields: dict[str, Any] = {}
    for name in _FIELDS[cls]:
        value = getattr(msg, name)
        fields[name] = value.hex() if name == "nonce" else value
    head: dict[str, Any] = {"f": fields, "a": [list(a.shape) for a in arrays]}
    if blob_bytes is not None:
        head["b"] = blob_bytes
    if sparse_bytes is not None:
        head["s"] = sparse_bytes
    header = json.dumps(
        head,
        separators=(",", ":"),
        sort_keys=True,
        allow_nan=False,
    ).encode()
    return _HEAD.pack(MAGIC, VERSION, _KINDS[cls], len(header)) + header


def kind_of(data: bytes) -> type[Any] | None:
    """The message class a well-formed ``data`` would decode to (header only), else None."""
    if len(data) < _HEAD.size:
        return None
    magic, version, kind, _ = _HEAD.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        return None
    return _BY_KIND.get(kind)


def decode(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Parse bytes into a round message; ``UpdateRejected`` with a reason if malformed."""
    if len(data) > max_bytes:
        raise UpdateRejected(f"message of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    if len(data) < _HEAD.size:
        raise UpdateRejected("message too short")
    magic, version, kind, hlen = _HEAD.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise UpdateRejected("not a ztfm round message (bad magic or version)")
    cls = _BY_KIND.get(kind)
    if cls is None:
        raise UpdateRejected(f"unknown message kind {kind}")
    if hlen > MAX_HEADER_BYTES or _HEAD.size + hlen > len(data):
        raise UpdateRejected("message header length is out of range")
    try:
        header = json.loads(data[_HEAD.size : _HEAD.size + hlen])
        fields, shapes = header["f"], header["a"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UpdateRejected("message header is not valid JSON of the expected form") from exc
    if not isinstance(fields, dict) or not isinstance(shapes, list):
        raise UpdateRejected("message header is not of the expected form")
    if set(fields) != set(_FIELDS[cls]):
        raise UpdateRejected("message fields are missing or unexpected")
    kwargs: dict[str, Any] = {}
    for name, typ in _FIELDS[cls].items():
        value = fields[name]
        if isinstance(value, bool) or not isinstance(value, typ):
            raise UpdateRejected(f"field {name} has the wrong type")
        if name == "nonce":
            try:
                value = bytes.fromhex(str(value))
            except ValueError as exc:
                raise UpdateRejected("nonce is not hex") from exc
        elif isinstance(value, float) and not np.isfinite(value):
            raise UpdateRejected(f"field {name} is not finite")
        kwargs[name] = value
    if "phase" in kwargs and kwargs["phase"] not in SECURE_PHASES:
        raise UpdateRejected("unknown secure-round phase")
    if cls in _BLOB_FIELD:
        size = header.get("b")
        if shapes or not isinstance(size, int) or isinstance(size, bool):
            raise UpdateRejected("message header is not of the expected form")
        if _HEAD.size + hlen + size != len(data):
            raise UpdateRejected("message payload length does not match its header")
        kwargs[_BLOB_FIELD[cls]] = bytes(data[_HEAD.size + hlen :])
        blob_msg: Message = cls(**kwargs)
        return blob_msg
    if "b" in header:
        raise UpdateRejected("message carries a payload it should not")
    if "s" in header:
        if cls is not UpdateReply:
            raise UpdateRejected("message carries a sparse update it should not")
        kwargs["delta"], kwargs["sparse"] = _decode_sparse(data, _HEAD.size + hlen, shapes, header)
        sparse_msg: Message = cls(**kwargs)
        return sparse_msg
    arrays = _decode_arrays(data, _HEAD.size + hlen, shapes)
    if cls in _ARRAY_FIELD:
        kwargs[_ARRAY_FIELD[cls]] = arrays
    elif arrays:
        raise UpdateRejected("message carries arrays it should not")
    msg: Message = cls(**kwargs)
    return msg


def _decode_sparse(
    data: bytes, offset: int, shapes: list[Any], header: dict[str, Any]
) -> tuple[list[np.ndarray], QuantizedSparse]:
    """A per-device top-k upload: the dense delta (split into ``shapes``) and the upload."""
    sizes = _sizes(shapes)
    size = header["s"]
    if not isinstance(size, int) or isinstance(size, bool) or offset + size != len(data):
        raise UpdateRejected("sparse update length does not match its header")
    try:
        sparse = decode_sparse(data[offset:], sum(sizes))
    except PrivacyError as exc:
        raise UpdateRejected(str(exc)) from exc
    flat = sparse.dense().astype(np.float32)  # |value| <= scale, a finite float32
    bounds = np.cumsum([0, *sizes])
    arrays = [flat[bounds[i] : bounds[i + 1]].reshape(shape) for i, shape in enumerate(shapes)]
    return arrays, sparse


def _sizes(shapes: list[Any]) -> list[int]:
    if len(shapes) > MAX_ARRAYS:
        raise UpdateRejected("too many arrays in message")
    sizes: list[int] = []
    for shape in shapes:
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_NDIM
            or not all(
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31 for s in shape
            )
        ):
            raise UpdateRejected("array shape is malformed")
        sizes.append(math.prod(shape))
    return sizes


def _decode_arrays(data: bytes, offset: int, shapes: list[Any]) -> list[np.ndarray]:
    sizes = _sizes(shapes)
    total = sum(sizes)
    if offset + 4 * total > len(data):
        raise UpdateRejected("message is truncated (array data missing)")
    if offset + 4 * total != len(data):
        raise UpdateRejected("message has trailing bytes")
    # zero-copy: each array is a read-only view into the message bytes (an in-place change
    # fails loudly; whoever keeps parameters copies them, as detectors' set_params does)
    flat = np.frombuffer(data, dtype="<f4", count=total, offset=offset)
    if flat.dtype != np.float32:  # a big-endian host: convert once
        flat = flat.astype(np.float32)
    arrays: list[np.ndarray] = []
    pos = 0
    for shape, n in zip(shapes, sizes, strict=True):
        arrays.append(flat[pos : pos + n].reshape(shape))
        pos += n
    return arrays


# --- endorsed SecAgg identity keys (the ``train`` reply's payload, and per neighbour below) ---
_EK_MAGIC = b"ZEK1"
KEY_BYTES = 32
MAX_CERT_BYTES = 8 * 1024  # a device certificate is ~0.6 KB; the PKI layer allows 16 KiB
MAX_SIGNATURE_BYTES = 160  # what ``PublicKey.verify`` accepts (P-256 DER <= 72, Ed25519 64)


def _endorsed_parts(ek: EndorsedKey) -> list[bytes]:
    if len(ek.key) != KEY_BYTES:
        raise UpdateRejected(f"a SecAgg identity key is {KEY_BYTES} bytes")
    if not 0 < len(ek.cert) <= MAX_CERT_BYTES:
        raise UpdateRejected(f"an endorsing certificate is 1..{MAX_CERT_BYTES} bytes")
    if not 0 < len(ek.signature) <= MAX_SIGNATURE_BYTES:
        raise UpdateRejected(f"an endorsement signature is 1..{MAX_SIGNATURE_BYTES} bytes")
    return [
        ek.key,
        struct.pack(">H", len(ek.cert)),
        ek.cert,
        struct.pack(">B", len(ek.signature)),
        ek.signature,
    ]


def encode_endorsed_key(ek: EndorsedKey) -> bytes:
    """The ``train`` reply's payload: magic, key (32 B), cert (u16 length), signature (u8
    length)."""
    return b"".join([_EK_MAGIC, *_endorsed_parts(ek)])


def decode_endorsed_key(data: bytes) -> EndorsedKey:
    """Parse ``encode_endorsed_key``; ``UpdateRejected`` if malformed, oversized or trailing."""
    if not data.startswith(_EK_MAGIC):
        raise UpdateRejected("not an endorsed SecAgg key (bad magic)")
    r = _Reader(data, len(_EK_MAGIC), "endorsed SecAgg key")
    ek = r.endorsed()
    if r.pos != len(data):
        raise UpdateRejected("endorsed SecAgg key has trailing bytes")
    return ek


# --- the secure round's configuration (the binary payload of the ``advertise`` task) ----------
_CFG_MAGIC = b"ZSC2"  # 2: every neighbour's key comes with its certificate and endorsement
_CFG_HEAD = struct.Struct(">4sQIBIII")  # magic, round, length, bits, degree, threshold, m
MAX_ROSTER = 100_000
MAX_ID_BYTES = 256
MAX_ENDORSED = 4_096  # neighbours whose endorsed keys one config may carry (k is far smaller)


def encode_secure_config(cfg: SecureRoundConfig) -> bytes:
    """Compact binary form of a ``SecureRoundConfig`` (it can be far larger than the 64 KiB JSON
    header allows: the roster and the neighbours' endorsed keys grow with the group)."""
    out = [
        _CFG_HEAD.pack(
            _CFG_MAGIC,
            cfg.round_id,
            cfg.length,
            cfg.bits,
            cfg.degree,
            cfg.threshold,
            cfg.min_survivors,
        ),
        struct.pack(">B", len(cfg.session)),
        cfg.session,
        cfg.server_key,
        struct.pack(">I", len(cfg.roster)),
    ]
    for d in cfg.roster:
        raw = d.encode()
        out += [struct.pack(">H", len(raw)), raw]
    out.append(struct.pack(">I", len(cfg.identities)))
    for d, ek in sorted(cfg.identities.items()):
        raw = d.encode()
        out += [struct.pack(">H", len(raw)), raw, *_endorsed_parts(ek)]
    return b"".join(out)


class _Reader:
    def __init__(self, data: bytes, pos: int, what: str = "secure round config") -> None:
        self.data, self.pos, self.what = data, pos, what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise UpdateRejected(f"{self.what} is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u(self, fmt: str) -> int:
        st = struct.Struct(fmt)
        value: int = st.unpack(self.take(st.size))[0]
        return value

    def ident(self) -> str:
        n = self.u(">H")
        if not 0 < n <= MAX_ID_BYTES:
            raise UpdateRejected(f"{self.what} has a malformed device id")
        try:
            return self.take(n).decode()
        except UnicodeDecodeError as exc:
            raise UpdateRejected(f"{self.what} has a malformed device id") from exc

    def endorsed(self) -> EndorsedKey:
        key = self.take(KEY_BYTES)
        n = self.u(">H")
        if not 0 < n <= MAX_CERT_BYTES:
            raise UpdateRejected(f"{self.what} has a certificate of {n} bytes")
        cert = self.take(n)
        n = self.u(">B")
        if not 0 < n <= MAX_SIGNATURE_BYTES:
            raise UpdateRejected(f"{self.what} has an endorsement signature of {n} bytes")
        return EndorsedKey(key, cert, self.take(n))


def decode_secure_config(data: bytes) -> SecureRoundConfig:
    """Parse ``encode_secure_config``; ``UpdateRejected`` if malformed, oversized or trailing."""
    if len(data) < _CFG_HEAD.size:
        raise UpdateRejected("secure round config is truncated")
    magic, round_id, length, bits, degree, threshold, m = _CFG_HEAD.unpack_from(data)
    if magic != _CFG_MAGIC:
        raise UpdateRejected("not a secure round config (bad magic or version)")
    r = _Reader(data, _CFG_HEAD.size)
    session = r.take(r.u(">B"))
    server_key = r.take(KEY_BYTES)
    n = r.u(">I")
    if n > MAX_ROSTER:
        raise UpdateRejected("secure round config roster is too large")
    roster = tuple(r.ident() for _ in range(n))
    k = r.u(">I")
    if k > n:
        raise UpdateRejected("secure round config has more identities than roster members")
    if k > MAX_ENDORSED:
        raise UpdateRejected("secure round config carries too many endorsed keys")
    identities: dict[str, EndorsedKey] = {}
    for _ in range(k):
        d = r.ident()
        if d in identities:
            raise UpdateRejected("secure round config lists an identity twice")
        identities[d] = r.endorsed()
    if r.pos != len(data):
        raise UpdateRejected("secure round config has trailing bytes")
    return SecureRoundConfig(
        round_id, session, roster, length, server_key, bits, degree, threshold, m, identities
    )
