"""Update compression that still works under secure aggregation.

Secure aggregation sums vectors coordinate-wise, so every device must send the *same*
coordinates in the *same* integer field. Hence:

* Sparsification uses a coordinate set shared by the whole round: ``shared_indices`` (k random
  coordinates from the public round seed: rand-k) or indices the server publishes, e.g. the
  top-k coordinates of the previous global update (``topk_indices`` of public data). Each device
  keeps an error-feedback residual so unsent mass is carried to later rounds.
* Quantisation happens *before* masking: stochastic rounding to integers (unbiased), then the
  integers are masked mod 2^bits. With secure aggregation the field width, not the quantiser,
  sets the bytes per coordinate: bits >= quantiser bits + log2(n) + headroom (see
  ``secagg.FixedPoint``: ``FixedPoint(clip, n, bits=16)`` is the quantise-then-mask codec).

Without secure aggregation, per-device top-k (``topk_sparsify``) plus ``StochasticQuantizer``
send (index, value) pairs.

Bytes on the wire for an update of d float32 coordinates:
  dense:              4 d
  shared k, field b:  k * b / 8          (no indices: the set is public)
  per-device top-k:   k * (4 + q / 8)    (32-bit index + q-bit value)
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ztfm.crypto.prg import expand_mask
from ztfm.errors import PrivacyError

FloatArray = npt.NDArray[np.floating[Any]]
IndexArray = npt.NDArray[np.int64]


def _vector(update: npt.ArrayLike) -> FloatArray:
    arr = np.asarray(update, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise PrivacyError("update must be a non-empty 1-D vector")
    if not np.all(np.isfinite(arr)):
        raise PrivacyError("update has NaN or infinite values")
    return arr


def _check_k(k: int, length: int) -> None:
    if not 1 <= k <= length:
        raise PrivacyError(f"k={k} outside [1, {length}]")


def k_for_ratio(length: int, ratio: float) -> int:
    """Number of coordinates kept for a keep-ratio in (0, 1]."""
    if not 0 < ratio <= 1:
        raise PrivacyError("keep ratio must be in (0, 1]")
    return max(1, math.ceil(length * ratio))


def shared_indices(length: int, k: int, seed: bytes) -> IndexArray:
    """k distinct coordinates, sorted, from a public seed: every device derives the same set.
    Uses the AES-CTR PRG (version-stable, unlike numpy's samplers)."""
    if length <= 0:
        raise PrivacyError("length must be positive")
    _check_k(k, length)
    if not seed:
        raise PrivacyError("shared sparsity seed is empty")
    key = hashlib.sha256(b"ztfm/privacy/shared-indices/v1" + seed).digest()
    scores = expand_mask(key, length, np.uint64)
    idx = np.argpartition(scores, k - 1)[:k] if k < length else np.arange(length)
    out: IndexArray = np.sort(idx).astype(np.int64)
    return out


def cyclic_indices(length: int, k: int, round_index: int, seed: bytes) -> IndexArray:
    """Round ``round_index``'s block of k coordinates from one public permutation of the vector
    (from ``seed``): consecutive rounds send disjoint blocks, so every coordinate is sent once
    every ceil(length / k) rounds (rand-k repeats some and misses others: after r rounds it has
    covered 1 - (1 - k/length)^r of the vector, cyclic min(1, r k / length))."""
    if length <= 0:
        raise PrivacyError("length must be positive")
    _check_k(k, length)
    if round_index < 0:
        raise PrivacyError("round_index must be non-negative")
    if not seed:
        raise PrivacyError("shared sparsity seed is empty")
    key = hashlib.sha256(b"ztfm/privacy/cyclic-indices/v1" + seed).digest()
    perm = np.argsort(expand_mask(key, length, np.uint64), kind="stable")
    start = (round_index * k) % length
    block = np.take(perm, np.arange(start, start + k), mode="wrap")
    out: IndexArray = np.sort(block).astype(np.int64)
    return out


def public_topk_indices(
    previous_update: npt.ArrayLike, k: int, seed: bytes, explore: float = 0.5
) -> IndexArray:
    """k shared coordinates from PUBLIC data only: the top (1 - explore) k of |previous global
    update| (released, so no device's data is revealed by the choice) plus explore k random
    others from ``seed``. Exploration is needed: under shared sparsity the previous global
    update is non-zero only on the previous round's coordinates, so pure top-k would pick the
    same set for ever."""
    prev = _vector(previous_update)
    length = prev.size
    _check_k(k, length)
    if not 0 <= explore <= 1:
        raise PrivacyError("explore must be in [0, 1]")
    k_top = min(k - round(explore * k), int(np.count_nonzero(prev)))
    top = topk_indices(prev, k_top) if k_top > 0 else np.zeros(0, dtype=np.int64)
    need = k - top.size
    rest = np.flatnonzero(prev == 0)
    if rest.size < need:
        rest = np.setdiff1d(np.arange(length), top)
    if need > 0:
        pick = shared_indices(rest.size, need, seed)
        top = np.concatenate([top, rest[pick]])
    out: IndexArray = np.sort(top).astype(np.int64)
    return out


def topk_indices(x: npt.ArrayLike, k: int) -> IndexArray:
    """Sorted indices of the k largest |x| (ties broken by position)."""
    arr = _vector(x)
    _check_k(k, arr.size)
    idx = np.argpartition(-np.abs(arr), k - 1)[:k] if k < arr.size else np.arange(arr.size)
    out: IndexArray = np.sort(idx).astype(np.int64)
    return out


def _check_indices(indices: npt.ArrayLike, length: int) -> IndexArray:
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise PrivacyError("indices must be a non-empty 1-D integer array")
    if idx[0] < 0 or idx[-1] >= length or np.any(np.diff(idx) <= 0):
        raise PrivacyError("indices must be sorted, unique and within the vector")
    out: IndexArray = idx.astype(np.int64)
    return out


def scatter(values: npt.ArrayLike, indices: npt.ArrayLike, length: int) -> FloatArray:
    """Dense vector of ``length`` with ``values`` at ``indices`` and zeros elsewhere."""
    idx = _check_indices(indices, length)
    vals = np.asarray(values, dtype=np.float64)
    if vals.shape != idx.shape:
        raise PrivacyError("values and indices differ in length")
    out = np.zeros(length)
    out[idx] = vals
    return out


@dataclass(slots=True)
class ErrorFeedback:
    """A device's residual: what compression has not sent yet (added to the next update)."""

    length: int
    residual: FloatArray = field(init=False)

    def __post_init__(self) -> None:
        if self.length <= 0:
            raise PrivacyError("length must be positive")
        self.residual = np.zeros(self.length)

    def compress_shared(self, update: npt.ArrayLike, indices: npt.ArrayLike) -> FloatArray:
        """Values at the round's shared ``indices`` of (update + residual); keep the rest."""
        arr = _vector(update)
        if arr.size != self.length:
            raise PrivacyError("update length does not match the feedback state")
        idx = _check_indices(indices, self.length)
        corrected = arr + self.residual
        values: FloatArray = corrected[idx].copy()
        corrected[idx] = 0.0
        self.residual = corrected
        return values

    def compress_topk(self, update: npt.ArrayLike, k: int) -> SparseUpdate:
        """Per-device top-k of (update + residual), for rounds without secure aggregation."""
        arr = _vector(update)
        if arr.size != self.length:
            raise PrivacyError("update length does not match the feedback state")
        corrected = arr + self.residual
        idx = topk_indices(corrected, k)
        values = corrected[idx].copy()
        corrected[idx] = 0.0
        self.residual = corrected
        return SparseUpdate(idx, values, self.length)


@dataclass(frozen=True, slots=True)
class SparseUpdate:
    """(index, value) pairs of a per-device sparsified update."""

    indices: IndexArray
    values: FloatArray
    length: int

    def __post_init__(self) -> None:
        _check_indices(self.indices, self.length)
        if np.asarray(self.values).shape != np.asarray(self.indices).shape:
            raise PrivacyError("values and indices differ in length")

    def dense(self) -> FloatArray:
        return scatter(self.values, self.indices, self.length)

    def wire_bytes(self, value_bits: int = 32) -> int:
        return int(self.indices.size) * (4 + math.ceil(value_bits / 8))


def topk_sparsify(update: npt.ArrayLike, k: int) -> SparseUpdate:
    """Top-k without error feedback (use ``ErrorFeedback.compress_topk`` across rounds)."""
    arr = _vector(update)
    idx = topk_indices(arr, k)
    return SparseUpdate(idx, arr[idx].copy(), arr.size)


@dataclass(frozen=True, slots=True)
class StochasticQuantizer:
    """Unbiased stochastic rounding of [-clip, clip] onto the integers -L..L, L = 2^(bits-1)-1.
    Per-coordinate error < clip / L, zero mean. Values beyond clip are clipped first."""

    bits: int
    clip: float

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 16:
            raise PrivacyError("quantiser bits must be in [2, 16]")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise PrivacyError("quantiser clip must be positive and finite")

    @property
    def levels(self) -> int:
        return (1 << (self.bits - 1)) - 1

    def quantize(self, x: npt.ArrayLike, rng: np.random.Generator) -> npt.NDArray[np.int32]:
        arr = _vector(x)
        scaled = np.clip(arr, -self.clip, self.clip) * (self.levels / self.clip)
        low = np.floor(scaled)
        q = low + (rng.random(scaled.shape) < (scaled - low))
        out: npt.NDArray[np.int32] = q.astype(np.int32)
        return out

    def dequantize(self, q: npt.ArrayLike) -> FloatArray:
        arr = np.asarray(q)
        if not np.issubdtype(arr.dtype, np.integer):
            raise PrivacyError("quantised values must be integers")
        out: FloatArray = arr.astype(np.float64) * (self.clip / self.levels)
        return out


# ---- bytes on the wire --------------------------------------------------------------------------
def dense_bytes(length: int, value_bytes: int = 4) -> int:
    return length * value_bytes


def shared_sparse_bytes(k: int, field_bits: int) -> int:
    """A masked (secure-aggregation) upload of k shared coordinates in a field_bits field."""
    return k * field_bits // 8


def compression_ratio(length: int, k: int, field_bits: int) -> float:
    """Dense float32 bytes over masked shared-sparse bytes."""
    return dense_bytes(length) / shared_sparse_bytes(k, field_bits)
