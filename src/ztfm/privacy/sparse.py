"""Per-device top-k uploads for rounds without secure aggregation, and their wire form.

Without secure aggregation each device may send its *own* coordinates. ``TopKCompressor`` keeps
a device's error-feedback residual and, every round, sends the ``keep_ratio`` largest
coordinates of (update + residual), each stochastically rounded to one of ``2^bits - 1``
levels of a per-update scale. Everything not delivered (the coordinates left out *and* the
rounding error of those sent) stays in the residual for the next round, so no part of an
update is lost, only delayed.

``QuantizedSparse`` is what goes on the wire (``encode`` / ``decode_sparse``)::

    magic "ZSP1" | bits u8 | length u32 | k u32 | scale f32 | z u32 | zlib(bitmap) | levels

* the index set is a bitmap of ``length`` bits, deflated (zlib): about ``length * H(k/length)``
  bits instead of 32 bits an index (10 % of 8 384 coordinates: ~640 B, against 3 356 B);
* the levels are ``k`` unsigned ``bits``-bit integers (level + L), packed MSB first.

The decoder checks every field against the expected vector length, inflates at most the
bitmap's exact size (a deflate bomb stops there), and refuses padding bits, trailing bytes, a
popcount other than ``k``, levels outside ``[-L, L]`` and a scale that is not finite: a value
that decodes is a finite vector of the expected length with ``k`` non-zero coordinates at most.

Bytes up per round, for ``d`` coordinates, ``k`` kept, ``q`` bits a level:
  ``21 + zlib(bitmap) + ceil(k q / 8)``, against ``4 d`` dense.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ztfm.errors import PrivacyError
from ztfm.privacy.compress import (
    ErrorFeedback,
    IndexArray,
    StochasticQuantizer,
    k_for_ratio,
    topk_sparsify,
)

FloatArray = npt.NDArray[np.floating[Any]]
LevelArray = npt.NDArray[np.int32]

MAGIC = b"ZSP1"
_HEAD = struct.Struct(">4sBIIfI")  # magic, bits, length, k, scale, deflated bitmap length
MAX_LENGTH = 1 << 24  # what a dense 64 MiB message holds in float32
MIN_BITS, MAX_BITS = 2, 16
ROUNDINGS = ("stochastic", "nearest")
_F32_MAX = float(np.finfo(np.float32).max)


def _levels(bits: int) -> int:
    return (1 << (bits - 1)) - 1


@dataclass(frozen=True, slots=True)
class QuantizedSparse:
    """``k`` coordinates of a ``length``-vector, each ``level * scale / L`` (L = 2^(bits-1)-1).

    ``indices`` are strictly increasing; ``levels`` lie in ``[-L, L]``."""

    length: int
    indices: IndexArray
    levels: LevelArray
    bits: int
    scale: float

    def __post_init__(self) -> None:
        if not isinstance(self.length, int) or not 1 <= self.length <= MAX_LENGTH:
            raise PrivacyError(f"sparse update length must be in [1, {MAX_LENGTH}]")
        if not isinstance(self.bits, int) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise PrivacyError(f"sparse update bits must be in [{MIN_BITS}, {MAX_BITS}]")
        # the scale travels as float32: keep the value the receiver will see
        finite = math.isfinite(self.scale) and abs(self.scale) <= _F32_MAX
        scale = float(np.float32(self.scale)) if finite else math.inf
        if not (math.isfinite(scale) and scale >= 0):
            raise PrivacyError("sparse update scale must be finite (float32) and >= 0")
        object.__setattr__(self, "scale", scale)
        idx, lev = np.asarray(self.indices), np.asarray(self.levels)
        if idx.ndim != 1 or lev.shape != idx.shape or not 1 <= idx.size <= self.length:
            raise PrivacyError("sparse update needs 1..length indices and one level each")
        if not (np.issubdtype(idx.dtype, np.integer) and np.issubdtype(lev.dtype, np.integer)):
            raise PrivacyError("sparse update indices and levels must be integers")
        if idx[0] < 0 or idx[-1] >= self.length or np.any(np.diff(idx) <= 0):
            raise PrivacyError("sparse update indices must be strictly increasing, in range")
        top = _levels(self.bits)
        if np.any(np.abs(lev) > top):
            raise PrivacyError(f"sparse update levels must lie in [-{top}, {top}]")

    @property
    def k(self) -> int:
        return int(np.asarray(self.indices).size)

    def values(self) -> FloatArray:
        out: FloatArray = np.asarray(self.levels, dtype=np.float64) * (
            self.scale / _levels(self.bits)
        )
        return out

    def dense(self) -> FloatArray:
        out: FloatArray = np.zeros(self.length)
        out[np.asarray(self.indices)] = self.values()
        return out

    def encode(self) -> bytes:
        bitmap = np.zeros(self.length, dtype=bool)
        bitmap[np.asarray(self.indices)] = True
        deflated = zlib.compress(np.packbits(bitmap).tobytes(), 9)
        unsigned = np.asarray(self.levels, dtype=np.int64) + _levels(self.bits)
        shifts = np.arange(self.bits - 1, -1, -1, dtype=np.int64)
        bit_rows = ((unsigned[:, None] >> shifts) & 1).astype(np.uint8)
        head = _HEAD.pack(MAGIC, self.bits, self.length, self.k, self.scale, len(deflated))
        return head + deflated + np.packbits(bit_rows.ravel()).tobytes()


def sparse_bytes(length: int, k: int, bits: int, bitmap_bytes: int) -> int:
    """Encoded size of a sparse update whose deflated bitmap takes ``bitmap_bytes``."""
    return _HEAD.size + bitmap_bytes + math.ceil(k * bits / 8)


def decode_sparse(data: bytes, length: int) -> QuantizedSparse:
    """Parse an encoded sparse update of a ``length``-vector; ``PrivacyError`` if malformed."""
    buf = bytes(data)
    if len(buf) < _HEAD.size:
        raise PrivacyError("sparse update is too short")
    magic, bits, n, k, scale, zlen = _HEAD.unpack_from(buf)
    if magic != MAGIC:
        raise PrivacyError("not a sparse update (bad magic)")
    if n != length:
        raise PrivacyError(f"sparse update is for {n} coordinates, expected {length}")
    if not MIN_BITS <= bits <= MAX_BITS or not 1 <= k <= n <= MAX_LENGTH:
        raise PrivacyError("sparse update header is out of range")
    if not (math.isfinite(scale) and scale >= 0):
        raise PrivacyError("sparse update scale is not finite")
    start = _HEAD.size
    bitmap_len = math.ceil(n / 8)
    level_len = math.ceil(k * bits / 8)
    if start + zlen + level_len != len(buf):
        raise PrivacyError("sparse update length does not match its header")
    inflater = zlib.decompressobj()
    try:
        packed = inflater.decompress(buf[start : start + zlen], bitmap_len)
    except zlib.error as exc:
        raise PrivacyError("sparse update index bitmap is not valid deflate data") from exc
    if len(packed) != bitmap_len or not inflater.eof or inflater.unconsumed_tail:
        raise PrivacyError("sparse update index bitmap has the wrong size")
    if inflater.unused_data:
        raise PrivacyError("sparse update index bitmap has trailing data")
    bitmap = np.unpackbits(np.frombuffer(packed, dtype=np.uint8))
    if np.any(bitmap[n:]):
        raise PrivacyError("sparse update index bitmap has padding bits set")
    indices = np.flatnonzero(bitmap[:n]).astype(np.int64)
    if indices.size != k:
        raise PrivacyError("sparse update index count does not match its header")
    raw = np.unpackbits(np.frombuffer(buf, dtype=np.uint8, offset=start + zlen))
    if np.any(raw[k * bits :]):
        raise PrivacyError("sparse update levels have padding bits set")
    weights = 1 << np.arange(bits - 1, -1, -1, dtype=np.int64)
    unsigned = raw[: k * bits].reshape(k, bits).astype(np.int64) @ weights
    top = _levels(bits)
    if np.any(unsigned > 2 * top):
        raise PrivacyError("sparse update level is out of range")
    return QuantizedSparse(n, indices, (unsigned - top).astype(np.int32), int(bits), float(scale))


@dataclass(slots=True)
class TopKCompressor:
    """One device's per-round top-k upload: ``compress.ErrorFeedback`` picks the coordinates
    (or ``topk_sparsify`` without feedback), ``compress.StochasticQuantizer`` rounds them."""

    keep_ratio: float
    bits: int = 4
    error_feedback: bool = True
    rounding: str = "stochastic"
    feedback: ErrorFeedback | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not 0 < self.keep_ratio <= 1:
            raise PrivacyError("keep ratio must be in (0, 1]")
        if not isinstance(self.bits, int) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise PrivacyError(f"value bits must be in [{MIN_BITS}, {MAX_BITS}]")
        if self.rounding not in ROUNDINGS:
            raise PrivacyError(f"rounding must be one of {', '.join(ROUNDINGS)}")

    @property
    def residual(self) -> FloatArray | None:
        """What has not been delivered yet (None before the first round or without feedback)."""
        return None if self.feedback is None else self.feedback.residual

    def compress(self, update: npt.ArrayLike, rng: np.random.Generator) -> QuantizedSparse:
        """The upload for ``update``; what it leaves out is kept for the next round."""
        arr = np.asarray(update, dtype=np.float64)
        if arr.ndim != 1 or not 0 < arr.size <= MAX_LENGTH:
            raise PrivacyError("update must be a non-empty 1-D vector")
        k = k_for_ratio(arr.size, self.keep_ratio)
        if self.error_feedback:
            feedback = self.feedback or ErrorFeedback(arr.size)
            picked = feedback.compress_topk(arr, k)  # refuses NaN or a new length first
            self.feedback = feedback
        else:
            picked = topk_sparsify(arr, k)
        peak = float(np.max(np.abs(picked.values)))
        if peak > _F32_MAX:
            if self.feedback is not None:  # nothing was sent: give the values back
                self.feedback.residual[picked.indices] += picked.values
            raise PrivacyError("update is too large for a float32 scale")
        # the scale travels as float32: quantise against the value the receiver will use
        scale = float(np.float32(peak))
        if scale == 0:
            levels = np.zeros(k, dtype=np.int32)
        elif self.rounding == "stochastic":
            levels = StochasticQuantizer(self.bits, scale).quantize(picked.values, rng)
        else:
            top = _levels(self.bits)
            levels = np.rint(np.clip(picked.values, -scale, scale) * (top / scale)).astype(np.int32)
        sent = QuantizedSparse(arr.size, picked.indices, levels, self.bits, scale)
        if self.feedback is not None:  # the rounding error waits for the next round too
            self.feedback.residual[picked.indices] += picked.values - sent.values()
        return sent
