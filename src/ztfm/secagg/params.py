"""Round parameters shared by the server and every device of one SecAgg+ round."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from ztfm.crypto.kex import KexPublicKey
from ztfm.errors import SecAggError
from ztfm.secagg.graph import default_degree, default_threshold, harary_neighbours
from ztfm.types import DeviceId

MAX_DEVICES = 100_000
MAX_LENGTH = 1 << 28
MAX_ID_BYTES = 256
_DTYPES = {16: np.uint16, 32: np.uint32, 64: np.uint64}


@lru_cache(maxsize=1 << 16)
def lp(data: bytes | str) -> bytes:
    """Length-prefixed bytes, so concatenated fields cannot be re-split differently."""
    raw = data.encode() if isinstance(data, str) else data
    return struct.pack(">I", len(raw)) + raw


@dataclass(frozen=True, slots=True)
class SecAggParams:
    """Everything both sides must agree on; its ``digest`` is bound into every key and signature.

    ``session`` is a fresh random value (>= 16 bytes) per round from the coordinator; the roster is
    the sorted list of selected devices; ``server_key`` is the aggregator's X25519 key for this
    round (the coordinator's signed round config vouches for it).
    """

    round_id: int
    session: bytes
    roster: tuple[DeviceId, ...]
    length: int
    server_key: KexPublicKey
    bits: int = 32
    degree: int = 0
    threshold: int = 0
    min_survivors: int = 0
    digest: bytes = field(init=False, repr=False, compare=False)
    neighbours: dict[DeviceId, tuple[DeviceId, ...]] = field(init=False, repr=False, compare=False)
    _index: dict[DeviceId, int] = field(init=False, repr=False, compare=False)
    _share_xs: dict[DeviceId, dict[DeviceId, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.roster)
        if not 2 <= n <= MAX_DEVICES:
            raise SecAggError(f"roster size {n} outside [2, {MAX_DEVICES}]")
        if tuple(sorted(set(self.roster))) != self.roster:
            raise SecAggError("roster must be sorted and free of duplicates")
        for d in self.roster:
            if not isinstance(d, str) or not 0 < len(d.encode()) <= MAX_ID_BYTES:
                raise SecAggError("device id must be a non-empty string of at most 256 bytes")
        if not isinstance(self.session, bytes) or not 16 <= len(self.session) <= 64:
            raise SecAggError("session nonce must be 16 to 64 bytes")
        if self.round_id < 0:
            raise SecAggError("round id must be non-negative")
        if not 1 <= self.length <= MAX_LENGTH:
            raise SecAggError(f"vector length {self.length} outside [1, {MAX_LENGTH}]")
        if self.bits not in _DTYPES:
            raise SecAggError("field bits must be 16, 32 or 64")
        k = self.degree or default_degree(n)
        object.__setattr__(self, "degree", k)
        if not 1 <= k <= n - 1:
            raise SecAggError(f"degree {k} outside [1, {n - 1}]")
        t = self.threshold or default_threshold(k)
        object.__setattr__(self, "threshold", t)
        if not (2 * t > k and t <= k and t >= 1):
            raise SecAggError(f"threshold {t} must satisfy k/2 < t <= k (k={k})")
        m = self.min_survivors or t
        object.__setattr__(self, "min_survivors", m)
        if not 1 <= m <= n:
            raise SecAggError(f"min_survivors {m} outside [1, {n}]")
        h = hashlib.sha256(b"ztfm/secagg/params/v1")
        h.update(struct.pack(">QIIIII", self.round_id, self.length, self.bits, k, t, m))
        h.update(lp(self.session) + lp(self.server_key.raw) + struct.pack(">I", n))
        for d in self.roster:
            h.update(lp(d))
        digest = h.digest()
        object.__setattr__(self, "digest", digest)
        object.__setattr__(self, "neighbours", harary_neighbours(self.roster, k, digest))
        object.__setattr__(self, "_index", {d: i + 1 for i, d in enumerate(self.roster)})
        object.__setattr__(self, "_share_xs", {})

    @classmethod
    def create(
        cls,
        *,
        round_id: int,
        session: bytes,
        devices: Sequence[str],
        length: int,
        server_key: KexPublicKey,
        bits: int = 32,
        degree: int = 0,
        threshold: int = 0,
        min_survivors: int = 0,
    ) -> SecAggParams:
        """Build params from an unsorted device list (0 means "pick the default")."""
        return cls(
            round_id=round_id,
            session=session,
            roster=tuple(sorted(DeviceId(d) for d in devices)),
            length=length,
            server_key=server_key,
            bits=bits,
            degree=degree,
            threshold=threshold,
            min_survivors=min_survivors,
        )

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(_DTYPES[self.bits])

    def x_of(self, device: DeviceId) -> int:
        """The 1-based roster position of ``device`` (its Shamir x-coordinate is per owner:
        ``share_x``)."""
        try:
            return self._index[device]
        except KeyError:
            raise SecAggError(f"device {device!r} is not in this round's roster") from None

    def share_x(self, owner: DeviceId, holder: DeviceId) -> int:
        """The Shamir x-coordinate of ``holder``'s share of ``owner``'s secrets: the holder's
        position among the owner's sorted neighbours, + 1. Positions in the neighbourhood (not
        the roster) make every owner's first ``threshold`` shares sit at x = 1..t when no
        neighbour drops, so one set of Lagrange coefficients serves the whole round."""
        xs = self._share_xs.get(owner)
        if xs is None:
            try:
                nbrs = self.neighbours[owner]
            except KeyError:
                raise SecAggError(f"device {owner!r} is not in this round's roster") from None
            xs = {d: i + 1 for i, d in enumerate(sorted(nbrs))}
            self._share_xs[owner] = xs
        try:
            return xs[holder]
        except KeyError:
            raise SecAggError(f"{holder!r} is not a neighbour of {owner!r}") from None

    def in_roster(self, device: DeviceId) -> bool:
        return device in self._index
