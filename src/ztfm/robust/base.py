"""The ``Aggregator`` plug point, its result value and the input checks every aggregator shares.

An update stack is a float matrix of shape ``(n, d)``: one flattened model update per row.
Optional ``weights`` (shape ``(n,)``, finite, >= 0, positive sum) carry trust or sample counts.
Everything here is pure numpy; nothing reads the clock or a global RNG.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from ztfm.errors import AggregationError

Matrix = np.ndarray
Vector = np.ndarray

#: Refuse stacks larger than this many float values (about 1 GiB of float64): a bound on memory
#: an attacker-controlled round can make the aggregator allocate.
MAX_ELEMENTS = 128 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Aggregate:
    """What an aggregator returns.

    ``vector`` is the aggregate (float64, shape ``(d,)``). ``selected`` lists the rows that took
    part in the result (all rows for coordinate-wise rules; the chosen ones for Krum/Bulyan; rows
    with positive trust for FLTrust). ``weights`` is the effective share each row had in the
    result (sums to 1; for coordinate-wise rules the average share over coordinates).
    ``distances`` is each row's L2 distance to ``vector``; ``scores`` is the rule's own suspicion
    score per row (higher = more suspicious; see each rule's docstring).
    """

    method: str
    vector: Vector
    selected: tuple[int, ...]
    weights: Vector
    distances: Vector
    scores: Vector

    def __post_init__(self) -> None:
        for arr in (self.vector, self.weights, self.distances, self.scores):
            arr.setflags(write=False)


@runtime_checkable
class Aggregator(Protocol):
    """Combines a stack of updates into one; raises ``AggregationError`` when it cannot do so
    with its guarantee (too few updates for the declared number ``f`` of attackers, bad input)."""

    @property
    def name(self) -> str: ...

    def aggregate(self, updates: Matrix, weights: Vector | None = None) -> Aggregate: ...


def check_f(f: int) -> int:
    """Validate a declared number of Byzantine updates."""
    if isinstance(f, bool) or not isinstance(f, int | np.integer) or f < 0:
        raise AggregationError(f"f (attackers tolerated) must be an integer >= 0, got {f!r}")
    return int(f)


def check_updates(updates: object, weights: object = None) -> tuple[Matrix, Vector]:
    """Parse an update stack and its weights; return float64 copies with weights summing to 1.

    Rejects: non-arrays, non-float dtypes, wrong rank, empty stacks, NaN/Inf, oversize stacks,
    weights of the wrong shape, negative or non-finite weights, zero total weight.
    """
    if not isinstance(updates, np.ndarray):
        raise AggregationError(f"updates must be a numpy array, got {type(updates).__name__}")
    if updates.dtype.kind != "f":
        raise AggregationError(f"updates must be float32/float64, got dtype {updates.dtype}")
    if updates.ndim != 2:
        raise AggregationError(f"updates must have shape (n, d), got shape {updates.shape}")
    n, d = updates.shape
    if n == 0 or d == 0:
        raise AggregationError(f"updates must be non-empty, got shape {updates.shape}")
    if updates.size > MAX_ELEMENTS:
        raise AggregationError(f"update stack too large: {updates.size} values > {MAX_ELEMENTS}")
    x = np.asarray(updates, dtype=np.float64)
    if not np.isfinite(x).all():
        bad = sorted({int(i) for i in np.nonzero(~np.isfinite(x))[0]})
        raise AggregationError(f"updates contain NaN/Inf in rows {bad[:10]}")
    if weights is None:
        w = np.full(n, 1.0 / n)
    else:
        if not isinstance(weights, np.ndarray):
            raise AggregationError(f"weights must be a numpy array, got {type(weights).__name__}")
        if weights.dtype.kind not in "fiu":
            raise AggregationError(f"weights must be numeric, got dtype {weights.dtype}")
        if weights.shape != (n,):
            raise AggregationError(f"weights must have shape ({n},), got {weights.shape}")
        w = np.asarray(weights, dtype=np.float64)
        if not np.isfinite(w).all() or (w < 0).any():
            raise AggregationError("weights must be finite and >= 0")
        total = float(w.sum())
        if not total > 0.0 or not np.isfinite(total):
            raise AggregationError("weights must have a positive, finite sum")
        w = w / total
    return x, w


def check_vector(vector: object, d: int, what: str) -> Vector:
    """Parse a reference vector (server update, centre) of length ``d``."""
    if not isinstance(vector, np.ndarray) or vector.dtype.kind != "f":
        raise AggregationError(f"{what} must be a float numpy array")
    if vector.shape != (d,):
        raise AggregationError(f"{what} must have shape ({d},), got {vector.shape}")
    v = np.asarray(vector, dtype=np.float64)
    if not np.isfinite(v).all():
        raise AggregationError(f"{what} contains NaN/Inf")
    return v


def distances_to(x: Matrix, v: Vector) -> Vector:
    """L2 distance of every row of ``x`` to ``v``."""
    return np.asarray(np.linalg.norm(x - v[None, :], axis=1), dtype=np.float64)


def pairwise_sq_distances(x: Matrix) -> Matrix:
    """Squared L2 distances between rows, computed after centring on the coordinate median so
    that a large common offset does not cancel away the small differences."""
    c = x - np.median(x, axis=0)[None, :]
    sq = np.einsum("ij,ij->i", c, c)
    dist = sq[:, None] + sq[None, :] - 2.0 * (c @ c.T)
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    return np.asarray(dist, dtype=np.float64)


def make_result(
    method: str,
    x: Matrix,
    vector: Vector,
    selected: Iterable[int] | np.ndarray,
    weights: Vector,
    scores: Vector | None = None,
) -> Aggregate:
    """Build an ``Aggregate`` (fills in distances; copies arrays so callers cannot alias them)."""
    dist = distances_to(x, vector)
    return Aggregate(
        method=method,
        vector=np.array(vector, dtype=np.float64),
        selected=tuple(sorted(int(i) for i in selected)),
        weights=np.array(weights, dtype=np.float64),
        distances=dist,
        scores=np.array(dist if scores is None else scores, dtype=np.float64),
    )
