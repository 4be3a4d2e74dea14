"""Per-phase SecAgg+ messages: plain values, no transport. ``wire_bytes`` gives their size as a
length-prefixed binary encoding would carry it (for bytes-on-the-wire accounting)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sized
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ztfm.errors import SecAggError
from ztfm.types import DeviceId

KEY_BYTES = 32
COMMIT_BYTES = 32
SIG_BYTES = 64
TAG_BYTES = 16
SHARE_BYTES = 33
SEALED_SHARE_BYTES = 2 * SHARE_BYTES + 16

UIntArray = npt.NDArray[np.unsignedinteger[Any]]


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise SecAggError(f"malformed message: {what}")


def _all_len(values: Iterable[Sized], n: int) -> bool:
    """Every value has length ``n``; a plain loop (faster than ``all()`` over a generator, and
    these run for every message)."""
    for v in values:  # noqa: SIM110
        if len(v) != n:
            return False
    return True


def _idlen(d: DeviceId) -> int:
    return 4 + len(d.encode())


@dataclass(frozen=True, slots=True)
class AdvertiseKeys:
    """Phase 0, device -> server: two X25519 public keys, a commitment to the self-mask seed,
    and the device's Ed25519 signature over all of it and the round digest."""

    device: DeviceId
    channel_key: bytes
    mask_key: bytes
    seed_commitment: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _need(len(self.channel_key) == KEY_BYTES, "channel key length")
        _need(len(self.mask_key) == KEY_BYTES, "mask key length")
        _need(len(self.seed_commitment) == COMMIT_BYTES, "seed commitment length")
        _need(len(self.signature) == SIG_BYTES, "signature length")

    def wire_bytes(self) -> int:
        return _idlen(self.device) + 2 * KEY_BYTES + COMMIT_BYTES + SIG_BYTES


@dataclass(frozen=True, slots=True)
class KeyDirectory:
    """Server -> device: the advertisements of the recipient's neighbours that arrived."""

    recipient: DeviceId
    adverts: tuple[AdvertiseKeys, ...]

    def wire_bytes(self) -> int:
        return _idlen(self.recipient) + sum(a.wire_bytes() for a in self.adverts)


@dataclass(frozen=True, slots=True)
class ShareKeys:
    """Phase 1, device -> server: one sealed share pair per neighbour (recipient -> ciphertext)."""

    device: DeviceId
    sealed: Mapping[DeviceId, bytes]

    def __post_init__(self) -> None:
        _need(_all_len(self.sealed.values(), SEALED_SHARE_BYTES), "sealed share length")

    def wire_bytes(self) -> int:
        return _idlen(self.device) + sum(_idlen(r) + len(c) for r, c in self.sealed.items())


@dataclass(frozen=True, slots=True)
class ShareInbox:
    """Server -> device: the sealed shares addressed to the recipient (sender -> ciphertext)."""

    recipient: DeviceId
    sealed: Mapping[DeviceId, bytes]

    def __post_init__(self) -> None:
        _need(_all_len(self.sealed.values(), SEALED_SHARE_BYTES), "sealed share length")

    @classmethod
    def prechecked(cls, recipient: DeviceId, sealed: Mapping[DeviceId, bytes]) -> ShareInbox:
        """Without ``__post_init__``: for the server, which routes only ciphertexts taken from
        ``ShareKeys`` messages (each checked the same way when it was built)."""
        obj = object.__new__(cls)
        object.__setattr__(obj, "recipient", recipient)
        object.__setattr__(obj, "sealed", sealed)
        return obj

    def wire_bytes(self) -> int:
        return _idlen(self.recipient) + sum(_idlen(s) + len(c) for s, c in self.sealed.items())


@dataclass(frozen=True, slots=True)
class MaskedInput:
    """Phase 2, device -> server: the masked vector and a MAC under the device-server key."""

    device: DeviceId
    masked: UIntArray = field(repr=False)
    tag: bytes

    def __post_init__(self) -> None:
        _need(isinstance(self.masked, np.ndarray), "masked input is not an array")
        _need(self.masked.ndim == 1, "masked input is not 1-D")
        _need(self.masked.dtype in (np.uint16, np.uint32, np.uint64), "masked input dtype")
        _need(len(self.tag) == TAG_BYTES, "tag length")

    def wire_bytes(self) -> int:
        return _idlen(self.device) + int(self.masked.nbytes) + TAG_BYTES


@dataclass(frozen=True, slots=True)
class SurvivorsRequest:
    """Phase 3, server -> device: who sent a masked input (the set the sum will cover)."""

    survivors: tuple[DeviceId, ...]

    def wire_bytes(self) -> int:
        return 4 + sum(_idlen(d) for d in self.survivors)


@dataclass(frozen=True, slots=True)
class SurvivorsConfirmation:
    """Phase 3, device -> server: for each live neighbour, a MAC over the survivor list under
    the pairwise channel key (only that neighbour can check it; the server only routes it)."""

    device: DeviceId
    tags: Mapping[DeviceId, bytes]

    def __post_init__(self) -> None:
        _need(_all_len(self.tags.values(), TAG_BYTES), "confirmation tag length")

    def wire_bytes(self) -> int:
        return _idlen(self.device) + sum(_idlen(d) + TAG_BYTES for d in self.tags)


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    """Phase 4, server -> device: the survivor list again, with the confirmations addressed to
    the recipient (sender -> tag)."""

    recipient: DeviceId
    survivors: tuple[DeviceId, ...]
    confirmations: Mapping[DeviceId, bytes]

    def __post_init__(self) -> None:
        _need(_all_len(self.confirmations.values(), TAG_BYTES), "confirmation tag length")

    @classmethod
    def prechecked(
        cls,
        recipient: DeviceId,
        survivors: tuple[DeviceId, ...],
        confirmations: Mapping[DeviceId, bytes],
    ) -> UnmaskRequest:
        """Without ``__post_init__``: for the server, which routes only tags taken from
        ``SurvivorsConfirmation`` messages (each checked the same way when it was built)."""
        obj = object.__new__(cls)
        object.__setattr__(obj, "recipient", recipient)
        object.__setattr__(obj, "survivors", survivors)
        object.__setattr__(obj, "confirmations", confirmations)
        return obj

    def wire_bytes(self) -> int:
        return (
            _idlen(self.recipient)
            + 4
            + sum(_idlen(d) for d in self.survivors)
            + sum(_idlen(d) + TAG_BYTES for d in self.confirmations)
        )


@dataclass(frozen=True, slots=True)
class UnmaskResponse:
    """Phase 4, device -> server: for each neighbour, a share of its self-mask seed (if it
    survived) or of its mask key (if it dropped after sharing); never both. MAC'd to the server."""

    device: DeviceId
    seed_shares: Mapping[DeviceId, bytes]
    key_shares: Mapping[DeviceId, bytes]
    tag: bytes

    def __post_init__(self) -> None:
        _need(
            self.seed_shares.keys().isdisjoint(self.key_shares), "both share kinds for one device"
        )
        _need(
            _all_len(self.seed_shares.values(), SHARE_BYTES)
            and _all_len(self.key_shares.values(), SHARE_BYTES),
            "share length",
        )
        _need(len(self.tag) == TAG_BYTES, "tag length")

    def wire_bytes(self) -> int:
        items = [*self.seed_shares, *self.key_shares]
        return _idlen(self.device) + sum(_idlen(d) + 1 + SHARE_BYTES for d in items) + TAG_BYTES


@dataclass(frozen=True, slots=True)
class SecAggResult:
    """The unmasked sum (in the field) and who it covers."""

    total: UIntArray = field(repr=False)
    included: tuple[DeviceId, ...]
    dropped: tuple[DeviceId, ...]
    rejected: Mapping[DeviceId, str]
