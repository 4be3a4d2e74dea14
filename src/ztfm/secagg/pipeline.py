"""One object that turns a device's raw model update into what SecAgg masks, and the server's
unmasked sum back into a dense update: the round's privacy and compression knobs in one place.

Device, per round:   update -> (+ error-feedback residual) -> shared coordinates -> L2 clip
                     -> distributed Gaussian share -> fixed-point (stochastic rounding) -> field
Server, per round:   field sum -> decode (bounds-checked) -> scatter to d coordinates

The order is deliberate: every release is a clipped (norm <= clip_norm) function of the
device's data plus Gaussian noise, so rounds compose like DP-SGD steps even though the residual
carries data between rounds (the residual itself never leaves the device).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ztfm.errors import SecAggError
from ztfm.privacy.clip import clip_update
from ztfm.privacy.compress import ErrorFeedback, IndexArray, scatter, shared_indices
from ztfm.privacy.noise import DistributedGaussian
from ztfm.secagg.costs import bytes_per_device
from ztfm.secagg.encoding import FixedPoint, FloatArray, Rounding
from ztfm.secagg.messages import UIntArray


@dataclass(frozen=True, slots=True)
class UpdateCodec:
    """Round-wide settings (part of the signed round config; identical on every device).

    ``keep``: number of coordinates sent (``length`` = dense). ``noise``: the distributed
    Gaussian share each device adds (None = no DP, or central DP on the server). ``bits``: the
    SecAgg field (16 is the compressed setting). ``sigmas``: the coordinate clip of the
    fixed-point grid in units of the device noise std, on top of ``clip_norm``.
    """

    length: int
    clip_norm: float
    max_inputs: int
    keep: int = 0
    bits: int = 32
    headroom_bits: int = 4
    noise: DistributedGaussian | None = None
    rounding: Rounding = "stochastic"
    sigmas: float = 4.0

    def __post_init__(self) -> None:
        if self.length < 1:
            raise SecAggError("update length must be positive")
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise SecAggError("clip_norm must be positive and finite")
        if not 0 <= self.keep <= self.length:
            raise SecAggError(f"keep={self.keep} outside [0, {self.length}]")
        if self.noise is not None and self.noise.clip_norm != self.clip_norm:
            raise SecAggError("noise clip_norm differs from the codec's clip_norm")
        if not (math.isfinite(self.sigmas) and self.sigmas >= 0):
            raise SecAggError("sigmas must be non-negative")
        _ = self.fixed_point  # validates bits/headroom against max_inputs

    @property
    def sent(self) -> int:
        """Coordinates on the wire per device."""
        return self.keep or self.length

    @property
    def fixed_point(self) -> FixedPoint:
        std = self.noise.device_std if self.noise is not None else 0.0
        return FixedPoint(
            clip=self.clip_norm + self.sigmas * std,
            max_inputs=self.max_inputs,
            bits=self.bits,
            headroom_bits=self.headroom_bits,
        )

    def indices(self, round_seed: bytes) -> IndexArray | None:
        """The round's shared coordinates (None when dense)."""
        if self.sent == self.length:
            return None
        return shared_indices(self.length, self.sent, round_seed)

    def encode(
        self,
        update: npt.ArrayLike,
        *,
        round_seed: bytes,
        rng: np.random.Generator,
        feedback: ErrorFeedback | None = None,
    ) -> UIntArray:
        """Device side: the field vector (length ``sent``) for ``SecAggClient.mask_input``."""
        arr = np.asarray(update, dtype=np.float64)
        if arr.shape != (self.length,):
            raise SecAggError(f"update must have shape ({self.length},)")
        idx = self.indices(round_seed)
        if feedback is not None:
            values = (
                feedback.compress_shared(arr, idx)
                if idx is not None
                else feedback.compress_shared(arr, np.arange(self.length))
            )
        else:
            values = arr if idx is None else arr[idx]
        values = clip_update(values, self.clip_norm)
        if self.noise is not None:
            values = self.noise.privatise(values, rng)
        return self.fixed_point.encode(values, self.rounding, rng=rng)

    def decode(self, total: UIntArray, n_inputs: int, *, round_seed: bytes) -> FloatArray:
        """Server side: the dense (length ``length``) sum of the included devices' releases."""
        summed = self.fixed_point.decode_sum(total, n_inputs)
        idx = self.indices(round_seed)
        return summed if idx is None else scatter(summed, idx, self.length)

    def max_error(self, n_inputs: int) -> float:
        """Per-coordinate quantisation error bound of a decoded sum (noise not included)."""
        return self.fixed_point.max_error(n_inputs, self.rounding)

    def upload_bytes(self, n: int, degree: int, id_bytes: int = 9) -> int:
        """Bytes up per device per round, protocol included."""
        return bytes_per_device(n, degree, self.sent, self.bits, id_bytes).up

    def compression_ratio(self, n: int, degree: int, id_bytes: int = 9) -> float:
        """Dense float32 upload (4 * length bytes) over this codec's upload, protocol included."""
        return 4 * self.length / self.upload_bytes(n, degree, id_bytes)
