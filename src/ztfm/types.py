"""Small shared values and protocols (layer 0: imports nothing from ztfm but errors).

Every time-dependent API in ztfm takes ``now`` (seconds since the epoch, float) or a ``Clock``;
every random one takes an ``np.random.Generator``. Only adapters at the edge (CLI, transport,
device agent) read the real clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NewType, Protocol

import numpy as np

DeviceId = NewType("DeviceId", str)
RoundId = NewType("RoundId", int)
SegmentId = NewType("SegmentId", str)

Rng = np.random.Generator


class Clock(Protocol):
    """Source of wall-clock time in seconds since the epoch."""

    def now(self) -> float: ...


class SystemClock:
    """The real clock; used only by edge adapters (CLI, agents, servers)."""

    def now(self) -> float:
        return time.time()


@dataclass(slots=True)
class FixedClock:
    """A settable clock for tests and simulations."""

    t: float = 0.0

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
