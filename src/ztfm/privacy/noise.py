"""Gaussian noise for DP-FedAvg: distributed (each device adds a share) or central.

Distributed: each of the devices of a round adds N(0, (z*C)^2 / m) where m = ``min_survivors``
is the smallest number of inputs the secure sum will ever contain (SecAgg aborts below it). If
m' >= m inputs survive, the sum carries variance (z*C)^2 * m'/m >= (z*C)^2: dropouts can only
raise the noise above target, never lower it. The realised noise multiplier is
``effective_noise_multiplier(m')`` = z * sqrt(m'/m); account with it (or, conservatively, z).
The price: with no dropouts the sum carries n/m times the needed variance. Honest devices only
count: a device that omits its noise weakens everyone's guarantee, so m should be set with the
number of possibly-colluding devices in mind (documented in docs/privacy.md).

Central: the aggregator adds N(0, (z*C)^2) to the sum (trusts the aggregator with the
un-noised sum; combine with SecAgg only when the aggregator runs in a TEE or is trusted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ztfm.errors import PrivacyError
from ztfm.privacy.clip import FloatArray


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise PrivacyError(
            f"{name} must be a {'non-negative' if allow_zero else 'positive'} finite number"
        )


def gaussian_noise(
    shape: int | tuple[int, ...], std: float, rng: np.random.Generator
) -> FloatArray:
    _positive("noise std", std, allow_zero=True)
    out: FloatArray = rng.normal(0.0, std, shape) if std > 0 else np.zeros(shape)
    return out


@dataclass(frozen=True, slots=True)
class DistributedGaussian:
    """Each device's share of the round's Gaussian noise (see module docstring)."""

    noise_multiplier: float
    clip_norm: float
    min_survivors: int

    def __post_init__(self) -> None:
        _positive("noise_multiplier", self.noise_multiplier, allow_zero=True)
        _positive("clip_norm", self.clip_norm)
        if self.min_survivors < 1:
            raise PrivacyError("min_survivors must be at least 1")

    @property
    def device_std(self) -> float:
        return self.noise_multiplier * self.clip_norm / math.sqrt(self.min_survivors)

    def noise(self, shape: int | tuple[int, ...], rng: np.random.Generator) -> FloatArray:
        return gaussian_noise(shape, self.device_std, rng)

    def privatise(self, clipped: npt.ArrayLike, rng: np.random.Generator) -> FloatArray:
        """``clipped`` plus this device's noise share (clip first with ``clip_update``)."""
        arr = np.asarray(clipped, dtype=np.float64)
        if np.sqrt(np.dot(arr.ravel(), arr.ravel())) > self.clip_norm * (1 + 1e-9):
            raise PrivacyError("update is not clipped to clip_norm")
        out: FloatArray = arr + self.noise(arr.shape, rng)
        return out

    def effective_noise_multiplier(self, survivors: int) -> float:
        """Noise multiplier of a sum of ``survivors`` noised inputs; raise if below the minimum."""
        if survivors < self.min_survivors:
            raise PrivacyError(
                f"{survivors} survivors is below min_survivors={self.min_survivors}: "
                "the round's noise is too small to release"
            )
        return self.noise_multiplier * math.sqrt(survivors / self.min_survivors)


@dataclass(frozen=True, slots=True)
class CentralGaussian:
    """Noise added once by the aggregator to the sum of clipped updates."""

    noise_multiplier: float
    clip_norm: float

    def __post_init__(self) -> None:
        _positive("noise_multiplier", self.noise_multiplier, allow_zero=True)
        _positive("clip_norm", self.clip_norm)

    @property
    def std(self) -> float:
        return self.noise_multiplier * self.clip_norm

    def privatise_sum(self, total: npt.ArrayLike, rng: np.random.Generator) -> FloatArray:
        arr = np.asarray(total, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise PrivacyError("aggregate has NaN or infinite values")
        out: FloatArray = arr + gaussian_noise(arr.shape, self.std, rng)
        return out
