"""t-of-k Shamir secret sharing over the prime field GF(2^256 + 297).

Secrets are 32-byte strings (a mask seed or an X25519 scalar), read as integers < 2^256, so one
field element holds a whole secret (2^256 + 297 is the smallest prime above 2^256). Shares are
(x, y) with x a small positive integer (in SecAgg+, the holder's position among the owner's
neighbours + 1: ``SecAggParams.share_x``) and y a field element serialised as 33 big-endian
bytes.
``reconstruct`` needs at least ``threshold`` shares with distinct x; extra shares are checked to
lie on the same polynomial, so an inconsistent share makes it raise instead of returning a wrong
secret. ``combine_many`` is ``reconstruct`` with exactly ``threshold`` shares (nothing to
cross-check: the caller checks each secret, e.g. against a commitment) for many secrets whose
shares sit at the same x-coordinates, as a server rebuilding a whole round's secrets has them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from itertools import repeat
from math import gcd, lcm, prod
from operator import sub

from ztfm.crypto.kex import RandomSource
from ztfm.errors import SecAggError

PRIME = (1 << 256) + 297
SHARE_BYTES = 33
SECRET_BYTES = 32
MAX_X = 1 << 32
_PRIME_BYTES = PRIME.to_bytes(SHARE_BYTES, "big")
_SHARE_LEN = {SHARE_BYTES}


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


def combine_many(xs: tuple[int, ...], rows: Sequence[Sequence[bytes]]) -> list[bytes | None]:
    """One secret per row of encoded shares, row[i] the share at ``xs[i]``, all of them used
    (the threshold is ``len(xs)``): ``reconstruct`` over exactly those shares, with None where
    it would raise for a secret out of range. Raise ``SecAggError`` if a share fails
    ``share_from_bytes``'s checks or the x-coordinates fail ``reconstruct``'s.

    The basis for ``xs`` is computed once per distinct tuple, as small integers over one common
    denominator (for x = 1..t the Lagrange values at 0 are integers, +-binomial(t, i)). All rows
    share it, so the work is done column by column on integers holding one slot per row (each
    slot wide enough for its signed sum plus an offset that keeps it non-negative): t
    multiplications by small integers in all, and per row only one reduction modulo the prime."""
    t = len(xs)
    if not t:
        raise SecAggError("Shamir threshold must be positive")
    if any(len(row) != t for row in rows):
        raise SecAggError("Shamir shares: as many values as x-coordinates needed")
    coeffs, inv_den = _basis_at_zero(xs)
    if not rows:
        return []
    cols = list(zip(*rows, strict=True))
    for col in cols:
        if set(map(len, col)) != _SHARE_LEN:
            raise SecAggError(f"Shamir share must be {SHARE_BYTES} bytes")
        if max(col) >= _PRIME_BYTES:
            raise SecAggError("Shamir share value is outside the field")
    # a slot holds sum(c_i * y_i) + offset, offset = (sum of |negative c_i|) * PRIME: in
    # [0, sum(|c_i|) * PRIME), so slots never borrow from or carry into their neighbours
    offset = sum(-c for c in coeffs if c < 0) * PRIME
    width = max(SHARE_BYTES, -(-(sum(map(abs, coeffs)) * PRIME).bit_length() // 8))
    n = len(rows)
    total = offset * int.from_bytes((bytes(width - 1) + b"\x01") * n)
    pad = bytes(width - SHARE_BYTES)
    for c, col in zip(coeffs, cols, strict=True):
        total += c * int.from_bytes(pad.join(col))  # row j in slot n - 1 - j
    buf = total.to_bytes(n * width, "big")
    vals = [int.from_bytes(buf[i : i + width]) % PRIME for i in range(0, n * width, width)]
    if inv_den != 1:
        vals = [v * inv_den % PRIME for v in vals]
    limit = 1 << (8 * SECRET_BYTES)
    return [v.to_bytes(SECRET_BYTES, "big") if v < limit else None for v in vals]


@lru_cache(maxsize=1024)
def _basis_at_zero(xs: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """Integers c_i and the inverse of a common denominator D with L_i(0) = c_i / D (mod p)."""
    _check_xs(xs)  # raises, and then nothing is cached
    nums, dens = [], []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num *= -xj
                den *= xi - xj
        g = gcd(num, den) * (-1 if den < 0 else 1)
        nums.append(num // g)
        dens.append(den // g)  # positive, in lowest terms
    common = lcm(*dens)
    coeffs = tuple(n * (common // d) for n, d in zip(nums, dens, strict=True))
    return coeffs, (1 if common == 1 else pow(common, -1, PRIME))


def all_shares(values: Iterable[bytes]) -> bool:
    """Every value is what ``share_from_bytes`` accepts (33 bytes, below the prime: big-endian
    strings of one length compare as the integers they encode), without parsing any."""
    try:
        for raw in values:
            if len(raw) != SHARE_BYTES or raw >= _PRIME_BYTES:
                return False
    except TypeError:  # not bytes-like
        return False
    return True


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
    """Lagrange basis values at ``at`` for nodes ``xs`` (positive integers, distinct).

    L_i(at) = prod_{j != i} (at - x_j) / prod_{j != i} (x_i - x_j). The nodes are small, so the
    products are exact integers. When the nodes fill most of 1..k (k = max node: the shares a
    server gathers, with some holders gone), the denominator is (x_i - 1)! (k - x_i)!, signed,
    divided by the product over the few missing positions: t * (k - t) small products and
    inverse factorials from a table instead of t^2 products and inversions. Otherwise all
    denominators are inverted with one modular inversion (Montgomery's trick)."""
    if at in xs:
        return tuple(int(x == at) for x in xs)
    t, k = len(xs), max(xs)
    diffs = [at - x for x in xs]
    whole = prod(diffs)
    if k - t < t:
        have = set(xs)
        missing = [m for m in range(1, k + 1) if m not in have]
        c = len(missing)
        inv_fact = _inverse_factorials(k)
        out = []
        for d, xi in zip(diffs, xs, strict=True):
            num = whole // d * prod(map(sub, repeat(xi, c), missing))
            if (k - xi) & 1:
                num = -num
            out.append(num * inv_fact[xi - 1] % PRIME * inv_fact[k - xi] % PRIME)
        return tuple(out)
    nums = [whole // d % PRIME for d in diffs]
    dens = [
        prod(map(sub, repeat(xi, i), xs[:i]))
        * prod(map(sub, repeat(xi, t - i - 1), xs[i + 1 :]))
        % PRIME
        for i, xi in enumerate(xs)
    ]
    prefix = [1]
    for d in dens:
        prefix.append(prefix[-1] * d % PRIME)
    inv = pow(prefix[-1], -1, PRIME)
    invs = [0] * t
    for i in range(t - 1, -1, -1):
        invs[i] = inv * prefix[i] % PRIME
        inv = inv * dens[i] % PRIME
    return tuple(n * v % PRIME for n, v in zip(nums, invs, strict=True))


_INV_FACT: list[int] = [1]


def _inverse_factorials(k: int) -> list[int]:
    """1/m! mod p for m = 0..k (at least), grown on demand: one inversion per growth."""
    if len(_INV_FACT) <= k:
        size = max(k + 1, 2 * len(_INV_FACT))
        fact = 1
        for m in range(2, size):
            fact = fact * m % PRIME
        inv = pow(fact, -1, PRIME)
        table = [0] * size
        for m in range(size - 1, -1, -1):
            table[m] = inv
            inv = inv * m % PRIME if m else inv
        _INV_FACT[:] = table
    return _INV_FACT
