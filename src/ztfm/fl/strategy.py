"""Strategies decide who takes part in a round and how replies are combined (no transport here).

``FedAvg`` averages parameter deltas weighted by each device's sample count; a robust
``combine`` function (from ``ztfm.robust``, wired in by the caller) can replace the weighted mean,
and ``prox_mu`` > 0 asks devices for the FedProx proximal term (non-IID fleets).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ztfm.errors import RoundError
from ztfm.fl.messages import UpdateReply
from ztfm.fl.params import Params, ParamSpec

# (deltas (n, d) float, weights (n,) summing to 1) -> combined delta (d,)
Combine = Callable[[np.ndarray, np.ndarray], np.ndarray]


class Strategy(Protocol):
    """Chooses participants and aggregates replies; knows nothing about the network."""

    min_devices: int

    def select(
        self, round_id: int, eligible: Sequence[str], rng: np.random.Generator
    ) -> list[str]: ...

    def aggregate(
        self,
        global_params: Params,
        spec: ParamSpec,
        replies: Sequence[UpdateReply],
        rng: np.random.Generator,
    ) -> Params: ...


def weighted_mean(deltas: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Plain FedAvg combination: sum_i w_i * delta_i."""
    return np.asarray(weights @ deltas, dtype=np.float32)


@dataclass(slots=True)
class FedAvg:
    """Federated averaging (McMahan et al. 2017), weighted by sample count.

    fraction: share of eligible devices sampled per round; min_devices: fewer eligible devices, or
    fewer accepted replies, fails the round; server_lr: step applied to the combined delta;
    combine: replaces the weighted mean (robust aggregation); weight_by_samples: False gives
    every reply equal weight (robust settings, where a device could lie about its count).
    """

    fraction: float = 1.0
    min_devices: int = 1
    server_lr: float = 1.0
    combine: Combine | None = None
    weight_by_samples: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise RoundError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.min_devices < 1:
            raise RoundError("min_devices must be at least 1")

    def select(self, round_id: int, eligible: Sequence[str], rng: np.random.Generator) -> list[str]:
        pool = sorted(eligible)
        if len(pool) < self.min_devices:
            raise RoundError(
                f"round {round_id}: {len(pool)} eligible devices, need at least {self.min_devices}"
            )
        k = min(len(pool), max(self.min_devices, math.ceil(self.fraction * len(pool))))
        if k == len(pool):
            return pool
        idx = rng.choice(len(pool), size=k, replace=False)
        return sorted(pool[i] for i in idx)

    def aggregate(
        self,
        global_params: Params,
        spec: ParamSpec,
        replies: Sequence[UpdateReply],
        rng: np.random.Generator,
    ) -> Params:
        ordered, deltas = stack_replies(replies, spec, self.min_devices)
        if self.weight_by_samples:
            counts = np.array([r.n_samples for r in ordered], dtype=np.float64)
        else:
            counts = np.ones(len(ordered))
        weights = counts / counts.sum()
        combine = self.combine or weighted_mean
        return apply_update(global_params, spec, combine(deltas, weights), self.server_lr)


def stack_replies(
    replies: Sequence[UpdateReply], spec: ParamSpec, min_devices: int
) -> tuple[list[UpdateReply], np.ndarray]:
    """The replies sorted by device id (so the result does not depend on arrival order) and
    their deltas as one float64 (n, d) matrix; ``RoundError`` below ``min_devices``."""
    if len(replies) < min_devices:
        raise RoundError(f"{len(replies)} accepted replies, need at least {min_devices}")
    ordered = sorted(replies, key=lambda r: r.device_id)
    return ordered, np.stack([spec.flatten(r.delta) for r in ordered]).astype(np.float64)


def apply_update(
    global_params: Params, spec: ParamSpec, combined: np.ndarray, server_lr: float
) -> Params:
    """``global + server_lr * combined``; ``RoundError`` if ``combined`` is malformed."""
    step = np.asarray(combined, dtype=np.float64)
    if step.shape != (spec.size,) or not np.isfinite(step).all():
        raise RoundError("aggregation produced a malformed or non-finite update")
    new = spec.flatten(global_params).astype(np.float64) + server_lr * step
    return spec.unflatten(new.astype(np.float32))
