"""Fixed-point encoding of clipped real vectors into Z_{2^bits}, and decoding of their sum.

Each coordinate is clipped to [-clip, clip], multiplied by ``scale`` and rounded to an integer
(to nearest, or stochastically with an explicit rng: unbiased). ``scale`` is chosen so that the
sum of up to ``max_inputs`` encoded vectors stays inside a band of width 2^(bits-1-headroom_bits)
around zero: decoding treats the sum as a signed integer, and a sum outside that band (what a
wrong mask or a tampered input produces with probability about 1 - 2^-headroom_bits per
coordinate) is rejected instead of being returned.

Quantisation error of a decoded sum of m inputs, per coordinate:
  nearest rounding:    |error| <= m / (2 * scale)
  stochastic rounding: |error| <  m / scale, and the error has mean zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ztfm.errors import SecAggError

FloatArray = npt.NDArray[np.floating[Any]]
UIntArray = npt.NDArray[np.unsignedinteger[Any]]
Rounding = Literal["nearest", "stochastic"]
_DTYPES = {16: np.uint16, 32: np.uint32, 64: np.uint64}
_SIGNED = {16: np.int16, 32: np.int32, 64: np.int64}


@dataclass(frozen=True, slots=True)
class FixedPoint:
    """Encoding parameters shared by every device of a round (part of the round config)."""

    clip: float
    max_inputs: int
    bits: int = 32
    headroom_bits: int = 4

    def __post_init__(self) -> None:
        if self.bits not in _DTYPES:
            raise SecAggError("fixed-point bits must be 16, 32 or 64")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise SecAggError("fixed-point clip must be a positive finite number")
        if self.max_inputs < 1:
            raise SecAggError("fixed-point max_inputs must be positive")
        if not 0 <= self.headroom_bits < self.bits - 2:
            raise SecAggError("fixed-point headroom_bits out of range")
        if self.scale < 1.0:
            raise SecAggError(
                f"{self.bits}-bit field too small for {self.max_inputs} inputs with "
                f"{self.headroom_bits} headroom bits"
            )

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(_DTYPES[self.bits])

    @property
    def bound(self) -> int:
        """Largest |integer sum| a valid round can produce."""
        return (1 << (self.bits - 1 - self.headroom_bits)) - 1

    @property
    def scale(self) -> float:
        """Integer units per unit of input; the sum of max_inputs clipped inputs fits ``bound``."""
        # stochastic rounding can add one unit per input.
        return (self.bound - self.max_inputs) / (self.max_inputs * self.clip)

    def max_error(self, n_inputs: int, rounding: Rounding = "nearest") -> float:
        """Worst-case per-coordinate error of a decoded sum of ``n_inputs`` vectors."""
        return n_inputs / (2.0 * self.scale) if rounding == "nearest" else n_inputs / self.scale

    def encode(
        self,
        x: npt.ArrayLike,
        rounding: Rounding = "nearest",
        rng: np.random.Generator | None = None,
    ) -> UIntArray:
        """Clip, scale, round and wrap ``x`` (1-D, finite) into the field."""
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 1 or arr.size == 0:
            raise SecAggError("fixed-point input must be a non-empty 1-D vector")
        if not np.all(np.isfinite(arr)):
            raise SecAggError("fixed-point input has NaN or infinite values")
        cs = self.clip * self.scale
        scaled = arr * self.scale
        np.clip(scaled, -cs, cs, out=scaled)
        if rounding == "nearest":
            np.rint(scaled, out=scaled)
        elif rounding == "stochastic":
            if rng is None:
                raise SecAggError("stochastic rounding needs an rng")
            low = np.floor(scaled)
            scaled = low + (rng.random(scaled.shape) < (scaled - low))
        else:
            raise SecAggError(f"unknown rounding {rounding!r}")
        out: UIntArray = scaled.astype(_SIGNED[self.bits]).view(self.dtype)
        return out

    def decode_sum(self, total: UIntArray, n_inputs: int) -> FloatArray:
        """The real-valued sum of ``n_inputs`` encoded vectors; raise if any coordinate is
        outside the range ``n_inputs`` clipped inputs can reach (a wrong mask or tampering)."""
        if total.dtype != self.dtype or total.ndim != 1:
            raise SecAggError("encoded sum has the wrong dtype or shape")
        if not 1 <= n_inputs <= self.max_inputs:
            raise SecAggError(f"sum of {n_inputs} inputs outside [1, {self.max_inputs}]")
        signed = total.view(_SIGNED[self.bits])
        limit = min(
            math.ceil(n_inputs * (self.clip * self.scale + 1.0)), (1 << (self.bits - 1)) - 1
        )
        bad = (signed > limit) | (signed < -limit)  # no abs(): abs(INT_MIN) overflows
        if bad.any():
            raise SecAggError(
                f"aggregate out of range in {int(np.count_nonzero(bad))} coordinates: "
                "wrong mask or tampered input"
            )
        out: FloatArray = signed.astype(np.float64)
        out *= 1.0 / self.scale
        return out
