"""t-of-k Shamir secret sharing over the prime field GF(2^256 + 297).

Secrets are 32-byte strings (a mask seed or an X25519 scalar), read as integers < 2^256, so one
field element holds a whole secret (2^256 + 297 is the smallest prime above 2^256). Shares are
(x, y) with x a small positive integer (in SecAgg+, the holder's position among the owner's
neighbours + 1: ``SecAggParams.share_x``) and y a field element serialised as 33 big-endian
bytes.
``reconstruct`` needs at least ``threshold`` shares with distinct x; extra shares are checked to
lie on the same polynomial, so an inconsistent share makes it raise instead of returning a wrong
secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

from ztfm.crypto.kex import RandomSource
from ztfm.errors import SecAggError

PRIME = (1 << 256) + 297
SHARE_BYTES = 33
SECRET_BYTES = 32
MAX_X = 1 << 32


def split(secret: bytes, threshold: int, xs: Sequence[int], rng: RandomSource) -> dict[int, int]:
    """Shares of ``secret`` for the holders ``xs``; any ``threshold`` of them reconstruct it."""
    if len(secret) != SECRET_BYTES:
        raise SecAggError(f"Shamir secret must be {SECRET_BYTES} bytes")
    if threshold < 1 or threshold > len(xs):
        raise SecAggError(f"Shamir threshold {threshold} not in [1, {len(xs)}]")
    _check_xs(xs)
    # 48 random bytes per coefficient: bias modulo p is below 2^-120.
    coeffs = [int.from_bytes(secret, "big")]
    coeffs += [int.from_bytes(rng.bytes(48), "big") % PRIME for _ in range(threshold - 1)]
    out: dict[int, int] = {}
    for x in xs:
        acc = 0
        for c in reversed(coeffs):
            acc = (acc * x + c) % PRIME
        out[x] = acc
    return out


def reconstruct(shares: Mapping[int, int], threshold: int) -> bytes:
    """The 32-byte secret from at least ``threshold`` shares; raise if too few or inconsistent."""
    if threshold < 1:
        raise SecAggError("Shamir threshold must be positive")
    if len(shares) < threshold:
        raise SecAggError(f"only {len(shares)} shares, {threshold} needed to reconstruct")
    xs = sorted(shares)
    _check_xs(xs)
    for y in shares.values():
        if not 0 <= y < PRIME:
            raise SecAggError("Shamir share value is outside the field")
    base = tuple(xs[:threshold])
    secret = _interpolate(base, [shares[x] for x in base], 0)
    for x in xs[threshold:]:
        if _interpolate(base, [shares[b] for b in base], x) != shares[x]:
            raise SecAggError("Shamir shares are inconsistent (a share was altered)")
    if secret >> (8 * SECRET_BYTES):
        raise SecAggError("reconstructed Shamir secret is out of range (a share was altered)")
    return secret.to_bytes(SECRET_BYTES, "big")


def share_to_bytes(y: int) -> bytes:
    if not 0 <= y < PRIME:
        raise SecAggError("Shamir share value is outside the field")
    return y.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(raw: bytes) -> int:
    if len(raw) != SHARE_BYTES:
        raise SecAggError(f"Shamir share must be {SHARE_BYTES} bytes")
    y = int.from_bytes(raw, "big")
    if y >= PRIME:
        raise SecAggError("Shamir share value is outside the field")
    return y


def _check_xs(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs):
        raise SecAggError("Shamir share holders must be distinct")
    for x in xs:
        if not 0 < x < MAX_X:
            raise SecAggError("Shamir share x-coordinate out of range")


def _interpolate(xs: tuple[int, ...], ys: Sequence[int], at: int) -> int:
    coeffs = _lagrange(xs, at)
    return sum(c * y for c, y in zip(coeffs, ys, strict=True)) % PRIME


@lru_cache(maxsize=4096)
def _lagrange(xs: tuple[int, ...], at: int) -> tuple[int, ...]:
    """Lagrange basis values at ``at`` for nodes ``xs``. The nodes are small integers, so the
    products are computed exactly (cheap small-int arithmetic) and reduced once; all
    denominators are inverted with a single modular inversion (Montgomery's trick)."""
    nums, dens = [], []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num *= at - xj
                den *= xi - xj
        nums.append(num % PRIME)
        dens.append(den % PRIME)
    prefix = [1]
    for d in dens:
        prefix.append(prefix[-1] * d % PRIME)
    inv = pow(prefix[-1], -1, PRIME)
    invs = [0] * len(dens)
    for i in range(len(dens) - 1, -1, -1):
        invs[i] = inv * prefix[i] % PRIME
        inv = inv * dens[i] % PRIME
    return tuple(n * v % PRIME for n, v in zip(nums, invs, strict=True))
