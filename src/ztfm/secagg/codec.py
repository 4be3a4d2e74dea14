"""Binary encoding of the SecAgg+ messages for any transport (gRPC bytes field, MQTT, file).

Layout: b"ZSA1", one type byte, then the fields in declaration order; ids are u16-length-prefixed
UTF-8, maps and lists carry a u32 count, fixed-size fields are raw, the masked vector is
(bits: u8, count: u32, little-endian words). ``decode_message`` checks every length, count and
limit, refuses duplicate map keys and trailing bytes, and rebuilds the message through its own
constructor checks, so a decoded message is a valid one. Errors are ``SecAggError``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ztfm.errors import SecAggError
from ztfm.secagg.messages import (
    COMMIT_BYTES,
    KEY_BYTES,
    SEALED_SHARE_BYTES,
    SHARE_BYTES,
    SIG_BYTES,
    TAG_BYTES,
    AdvertiseKeys,
    KeyDirectory,
    MaskedInput,
    ShareInbox,
    ShareKeys,
    SurvivorsConfirmation,
    SurvivorsRequest,
    UnmaskRequest,
    UnmaskResponse,
)
from ztfm.secagg.params import MAX_DEVICES, MAX_ID_BYTES, MAX_LENGTH
from ztfm.types import DeviceId

MAGIC = b"ZSA1"
Message = (
    AdvertiseKeys
    | KeyDirectory
    | ShareKeys
    | ShareInbox
    | MaskedInput
    | SurvivorsRequest
    | SurvivorsConfirmation
    | UnmaskRequest
    | UnmaskResponse
)
_WORDS: dict[int, np.dtype[Any]] = {16: np.dtype("<u2"), 32: np.dtype("<u4"), 64: np.dtype("<u8")}


class _W:
    def __init__(self, kind: int) -> None:
        self.parts: list[bytes] = [MAGIC, bytes([kind])]

    def raw(self, b: bytes) -> None:
        self.parts.append(b)

    def id(self, d: str) -> None:
        raw = d.encode()
        if not 0 < len(raw) <= MAX_ID_BYTES:
            raise SecAggError("device id must be 1 to 256 bytes")
        self.parts += [struct.pack("<H", len(raw)), raw]

    def count(self, n: int) -> None:
        self.parts.append(struct.pack("<I", n))

    def id_map(self, m: Mapping[DeviceId, bytes]) -> None:
        self.count(len(m))
        for k in sorted(m):
            self.id(k)
            self.raw(m[k])

    def bytes(self) -> bytes:
        return b"".join(self.parts)


class _R:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise SecAggError("truncated secagg message")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def id(self) -> DeviceId:
        n = int(struct.unpack("<H", self.take(2))[0])
        if not 0 < n <= MAX_ID_BYTES:
            raise SecAggError("device id length out of range")
        try:
            return DeviceId(self.take(n).decode())
        except UnicodeDecodeError as exc:
            raise SecAggError("device id is not UTF-8") from exc

    def count(self, limit: int = MAX_DEVICES) -> int:
        n = int(struct.unpack("<I", self.take(4))[0])
        if n > limit:
            raise SecAggError("count out of range in secagg message")
        return n

    def id_map(self, size: int) -> dict[DeviceId, bytes]:
        out: dict[DeviceId, bytes] = {}
        for _ in range(self.count()):
            k = self.id()
            if k in out:
                raise SecAggError("duplicate device in secagg message")
            out[k] = self.take(size)
        return out

    def ids(self) -> tuple[DeviceId, ...]:
        return tuple(self.id() for _ in range(self.count()))

    def end(self) -> None:
        if self.pos != len(self.data):
            raise SecAggError("trailing bytes after secagg message")


def _advert_fields(w: _W, a: AdvertiseKeys) -> None:
    w.id(a.device)
    for b in (a.channel_key, a.mask_key, a.seed_commitment, a.signature):
        w.raw(b)


def _read_advert(r: _R) -> AdvertiseKeys:
    return AdvertiseKeys(
        r.id(), r.take(KEY_BYTES), r.take(KEY_BYTES), r.take(COMMIT_BYTES), r.take(SIG_BYTES)
    )


def encode_message(msg: Message) -> bytes:
    """The wire bytes of one SecAgg+ message."""
    if isinstance(msg, AdvertiseKeys):
        w = _W(1)
        _advert_fields(w, msg)
    elif isinstance(msg, KeyDirectory):
        w = _W(2)
        w.id(msg.recipient)
        w.count(len(msg.adverts))
        for a in msg.adverts:
            _advert_fields(w, a)
    elif isinstance(msg, ShareKeys):
        w = _W(3)
        w.id(msg.device)
        w.id_map(msg.sealed)
    elif isinstance(msg, ShareInbox):
        w = _W(4)
        w.id(msg.recipient)
        w.id_map(msg.sealed)
    elif isinstance(msg, MaskedInput):
        w = _W(5)
        w.id(msg.device)
        bits = msg.masked.dtype.itemsize * 8
        w.raw(bytes([bits]))
        w.count(msg.masked.size)
        w.raw(np.ascontiguousarray(msg.masked, dtype=_WORDS[bits]).tobytes())
        w.raw(msg.tag)
    elif isinstance(msg, SurvivorsRequest):
        w = _W(6)
        w.count(len(msg.survivors))
        for d in msg.survivors:
            w.id(d)
    elif isinstance(msg, SurvivorsConfirmation):
        w = _W(7)
        w.id(msg.device)
        w.id_map(msg.tags)
    elif isinstance(msg, UnmaskRequest):
        w = _W(8)
        w.id(msg.recipient)
        w.count(len(msg.survivors))
        for d in msg.survivors:
            w.id(d)
        w.id_map(msg.confirmations)
    elif isinstance(msg, UnmaskResponse):
        w = _W(9)
        w.id(msg.device)
        w.id_map(msg.seed_shares)
        w.id_map(msg.key_shares)
        w.raw(msg.tag)
    else:
        raise SecAggError(f"not a secagg message: {type(msg).__name__}")
    return w.bytes()


def _masked(r: _R) -> MaskedInput:
    device = r.id()
    bits = r.take(1)[0]
    if bits not in _WORDS:
        raise SecAggError("masked input has an unknown word size")
    n = r.count(MAX_LENGTH)
    if n == 0:
        raise SecAggError("masked input is empty")
    dt = _WORDS[bits]
    words = np.frombuffer(r.take(n * dt.itemsize), dtype=dt).astype(dt.newbyteorder("="))
    return MaskedInput(device, words, r.take(TAG_BYTES))


_READERS: dict[int, Callable[[_R], Any]] = {
    1: _read_advert,
    2: lambda r: KeyDirectory(r.id(), tuple(_read_advert(r) for _ in range(r.count()))),
    3: lambda r: ShareKeys(r.id(), r.id_map(SEALED_SHARE_BYTES)),
    4: lambda r: ShareInbox(r.id(), r.id_map(SEALED_SHARE_BYTES)),
    5: _masked,
    6: lambda r: SurvivorsRequest(r.ids()),
    7: lambda r: SurvivorsConfirmation(r.id(), r.id_map(TAG_BYTES)),
    8: lambda r: UnmaskRequest(r.id(), r.ids(), r.id_map(TAG_BYTES)),
    9: lambda r: UnmaskResponse(
        r.id(), r.id_map(SHARE_BYTES), r.id_map(SHARE_BYTES), r.take(TAG_BYTES)
    ),
}


def decode_message(data: bytes, *, max_bytes: int = 1 << 30) -> Message:
    """Parse one message; raise ``SecAggError`` on anything malformed or oversized."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SecAggError("secagg message must be bytes")
    if len(data) > max_bytes:
        raise SecAggError(f"secagg message larger than {max_bytes} bytes")
    r = _R(bytes(data))
    if r.take(4) != MAGIC:
        raise SecAggError("not a secagg message (bad magic)")
    kind = r.take(1)[0]
    reader = _READERS.get(kind)
    if reader is None:
        raise SecAggError(f"unknown secagg message type {kind}")
    msg: Message = reader(r)
    r.end()
    return msg
