"""The SecAgg+ communication graph: a k-regular Harary graph over a seeded permutation.

Devices are placed on a ring in the order of SHA-256(seed || device id) (so neither the server
nor a device chooses its neighbours once the seed is fixed) and each is joined to the k/2 nearest
devices on either side. Version-stable: no numpy RNG is involved.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from ztfm.errors import SecAggError
from ztfm.types import DeviceId


def harary_neighbours(
    roster: Sequence[DeviceId], degree: int, seed: bytes
) -> dict[DeviceId, tuple[DeviceId, ...]]:
    """Map each device to its ``degree`` neighbours (all others when ``degree >= n - 1``)."""
    n = len(roster)
    if n < 2:
        raise SecAggError("secure aggregation needs at least 2 devices")
    if len(set(roster)) != n:
        raise SecAggError("roster has duplicate device ids")
    if degree < 1:
        raise SecAggError("graph degree must be positive")
    if degree >= n - 1:
        return {d: tuple(o for o in roster if o != d) for d in roster}
    if degree % 2:
        raise SecAggError("graph degree must be even when smaller than n - 1")
    ring = sorted(roster, key=lambda d: hashlib.sha256(seed + d.encode()).digest())
    half = degree // 2
    out: dict[DeviceId, tuple[DeviceId, ...]] = {}
    for pos, dev in enumerate(ring):
        near = [ring[(pos + off) % n] for off in range(-half, half + 1) if off != 0]
        out[dev] = tuple(near)
    return out


def default_degree(n: int) -> int:
    """An even degree of about 2*log2(n) (complete graph for small n), as SecAgg+ suggests."""
    if n <= 8:
        return n - 1
    k = 2 * max(1, (n - 1).bit_length())
    k += k % 2
    return min(k, n - 1 if (n - 1) % 2 == 0 else n - 2)


def default_threshold(degree: int) -> int:
    """The smallest threshold with 2t > k (so no two disjoint sets of holders both reach t)."""
    return degree // 2 + 1


def degree_for_dropout(n: int, dropout_rate: float, failure_prob: float = 1e-3) -> int:
    """Smallest even degree (at least ``default_degree(n)``) such that, with independent dropouts
    at ``dropout_rate``, the chance that any neighbourhood keeps fewer than ``k // 2 + 1``
    members is at most ``failure_prob`` (union bound over the n neighbourhoods)."""
    if not 0.0 <= dropout_rate < 0.5:
        raise SecAggError("dropout_rate must be in [0, 0.5): a majority must survive")
    if not 0.0 < failure_prob < 1.0:
        raise SecAggError("failure_prob must be in (0, 1)")
    k = default_degree(n)
    while k < n - 1:
        t = default_threshold(k)
        tail = sum(
            math.comb(k, s) * (1 - dropout_rate) ** s * dropout_rate ** (k - s) for s in range(t)
        )
        if n * tail <= failure_prob:
            return k
        k += 2
    return n - 1
