"""Differential privacy and compression for model updates (layer 2, pure).

clip_update -> DistributedGaussian.privatise (or CentralGaussian on the sum) -> codecs;
DeviceAccountant / FleetAccountant track epsilon per device; noise_multiplier_for calibrates.
"""

from ztfm.privacy.accounting import (
    DeviceAccountant,
    FleetAccountant,
    RoundEvent,
    epsilon_for,
    noise_multiplier_for,
)
from ztfm.privacy.clip import clip_update, l2_norm
from ztfm.privacy.noise import CentralGaussian, DistributedGaussian, gaussian_noise

__all__ = [
    "CentralGaussian",
    "DeviceAccountant",
    "DistributedGaussian",
    "FleetAccountant",
    "RoundEvent",
    "clip_update",
    "epsilon_for",
    "gaussian_noise",
    "l2_norm",
    "noise_multiplier_for",
]
