"""Token bucket that takes ``now``: pure value, no clock, no sleeping."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ztfm.errors import TrustError


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """``capacity`` tokens, refilled at ``refill_per_s``; ``take`` returns the new bucket or
    raises ``TrustError``. A clock that goes backwards refills nothing (it cannot mint tokens)."""

    capacity: float
    refill_per_s: float
    tokens: float
    at: float

    def __post_init__(self) -> None:
        for v in (self.capacity, self.refill_per_s, self.tokens, self.at):
            if not math.isfinite(v):
                raise TrustError("token bucket values must be finite")
        if self.capacity <= 0 or self.refill_per_s <= 0 or not 0 <= self.tokens <= self.capacity:
            raise TrustError("token bucket needs capacity > 0, refill > 0, 0 <= tokens <= capacity")

    @classmethod
    def full(cls, capacity: float, refill_per_s: float, now: float) -> TokenBucket:
        return cls(capacity=capacity, refill_per_s=refill_per_s, tokens=capacity, at=now)

    def refilled(self, now: float) -> TokenBucket:
        if not math.isfinite(now):
            raise TrustError("now must be finite")
        if now <= self.at:
            return self
        tokens = min(self.capacity, self.tokens + (now - self.at) * self.refill_per_s)
        return TokenBucket(self.capacity, self.refill_per_s, tokens, now)

    def take(self, now: float, cost: float = 1.0) -> TokenBucket:
        if not (math.isfinite(cost) and cost > 0):
            raise TrustError(f"token cost must be > 0, got {cost}")
        b = self.refilled(now)
        if b.tokens + 1e-12 < cost:
            wait = (cost - b.tokens) / b.refill_per_s
            raise TrustError(f"rate limited: {b.tokens:.2f} tokens left, retry in {wait:.0f} s")
        return TokenBucket(b.capacity, b.refill_per_s, max(0.0, b.tokens - cost), b.at)
