"""Bytes on the wire per device per SecAgg+ round (no dropouts), from the message layouts in
``messages.py``; the driver measures the same figures message by message."""

from __future__ import annotations

from dataclasses import dataclass

from ztfm.errors import SecAggError
from ztfm.secagg.messages import (
    COMMIT_BYTES,
    KEY_BYTES,
    SEALED_SHARE_BYTES,
    SHARE_BYTES,
    SIG_BYTES,
    TAG_BYTES,
)


@dataclass(frozen=True, slots=True)
class WireBytes:
    up: int
    down: int
    masked_vector: int

    @property
    def overhead_up(self) -> int:
        """Protocol bytes up beyond the masked vector itself."""
        return self.up - self.masked_vector


def bytes_per_device(n: int, degree: int, length: int, bits: int, id_bytes: int = 9) -> WireBytes:
    """Upload and download of one device in a round of ``n`` devices (k = ``degree``), vector
    ``length`` in a ``bits``-bit field, device ids of ``id_bytes`` bytes."""
    if n < 2 or not 1 <= degree < n or length < 1 or bits not in (16, 32, 64) or id_bytes < 1:
        raise SecAggError("invalid arguments for the wire-size estimate")
    idl = 4 + id_bytes
    advert = idl + 2 * KEY_BYTES + COMMIT_BYTES + SIG_BYTES
    vector = length * bits // 8
    up = (
        advert
        + idl + degree * (idl + SEALED_SHARE_BYTES)
        + idl + vector + TAG_BYTES
        + idl + degree * (idl + TAG_BYTES)
        + idl + degree * (idl + 1 + SHARE_BYTES) + TAG_BYTES
    )  # fmt: skip
    down = (
        idl + degree * advert
        + idl + degree * (idl + SEALED_SHARE_BYTES)
        + 4 + n * idl
        + idl + 4 + n * idl + degree * (idl + TAG_BYTES)
    )  # fmt: skip
    return WireBytes(up=up, down=down, masked_vector=vector)
