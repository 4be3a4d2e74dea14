"""Byzantine-robust aggregation rules over a stack of flattened updates (pure numpy).

Every rule takes ``f``, the number of Byzantine rows it must tolerate, checks its own
precondition on ``n`` and fails closed with ``AggregationError`` instead of degrading quietly.
References: Yin et al. 2018 (median, trimmed mean); Blanchard et al. 2017 (Krum, Multi-Krum);
El Mhamdi et al. 2018 (Bulyan); Pillutla et al. 2022 (RFA, smoothed Weiszfeld); Sun et al. 2019
(norm bounding); Karimireddy et al. 2021 (centered clipping); Cao et al. 2021 (FLTrust).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ztfm.errors import AggregationError
from ztfm.robust.base import (
    Aggregate,
    Matrix,
    Vector,
    check_f,
    check_updates,
    check_vector,
    distances_to,
    make_result,
    pairwise_sq_distances,
)

_EPS = 1e-12


def _need(name: str, n: int, minimum: int, f: int, rule: str) -> None:
    if n < minimum:
        raise AggregationError(f"{name}: needs n >= {rule} = {minimum} updates for f={f}, got {n}")


def _is_uniform(w: Vector) -> bool:
    return bool(np.allclose(w, w[0], rtol=0.0, atol=1e-15))


def weighted_coordinate_median(x: Matrix, w: Vector) -> Vector:
    """Per-coordinate weighted median (equals ``np.median`` for uniform weights)."""
    if _is_uniform(w):
        return np.asarray(np.median(x, axis=0), dtype=np.float64)
    order = np.argsort(x, axis=0, kind="stable")
    xs = np.take_along_axis(x, order, axis=0)
    cw = np.cumsum(w[order], axis=0)
    idx = np.argmax(cw >= 0.5 - 1e-12, axis=0)
    cols = np.arange(x.shape[1])
    lower = xs[idx, cols]
    upper = xs[np.minimum(idx + 1, x.shape[0] - 1), cols]
    at_half = np.isclose(cw[idx, cols], 0.5, rtol=0.0, atol=1e-12)
    return np.asarray(np.where(at_half, 0.5 * (lower + upper), lower), dtype=np.float64)


def _kept_mean(name: str, x: Matrix, w: Vector, keep: np.ndarray) -> tuple[Vector, Vector]:
    """Per coordinate, the weighted mean of the rows ``keep[:, j]`` (row indices into ``x``).
    Returns the mean and each row's average weight share over the coordinates."""
    n, d = x.shape
    xs = np.take_along_axis(x, keep, axis=0)
    ws = w[keep]
    tot = ws.sum(axis=0)
    if (tot <= _EPS).any():
        raise AggregationError(f"{name}: all kept values of a coordinate have weight 0")
    v = (ws * xs).sum(axis=0) / tot
    share = np.zeros(n)
    np.add.at(share, keep.ravel(), (ws / tot[None, :]).ravel())
    return v, share / d


@dataclass(frozen=True, slots=True)
class Mean:
    """Weighted mean (FedAvg). NOT robust: one row can move it arbitrarily far. Kept as the
    baseline for benchmarks; ``robust`` is False so callers can refuse it where robustness is
    required."""

    robust: bool = field(default=False, init=False)

    @property
    def name(self) -> str:
        return "mean"

    def aggregate(self, updates: Matrix, weights: Vector | None = None) -> Aggregate:
        x, w = check_updates(updates, weights)
        v = w @ x
        return make_result(self.name, x, v, range(x.shape[0]), w)


@dataclass(frozen=True, slots=True)
class CoordinateMedian:
    """Per-coordinate (weighted) median; tolerates f < n/2. Score = distance to the result."""

    f: int = 0
    robust: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        check_f(self.f)

    @property
    def name(self) -> str:
        return "median"

    def aggregate(self, updates: Matrix, weights: Vector | None = None) -> Aggregate:
        x, w = check_updates(updates, weights)
        n = x.shape[0]
        _need(self.name, n, 2 * self.f + 1, self.f, "2f+1")
        v = weighted_coordinate_median(x, w)
        return make_result(self.name, x, v, range(n), w)


@dataclass(frozen=True, slots=True)
class TrimmedMean:
    """Per coordinate, drop the f largest and f smallest values and average the rest (weighted).
    Needs n >= 2f+1. ``weights`` in the result is each row's average share over coordinates."""

    f: int = 0
    robust: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        check_f(self.f)

    @property
    def name(self) -> str:
        return "trimmed_mean"

    def aggregate(self, updates: Matrix, weights: Vector | None = None) -> Aggregate:
        x, w = check_updates(updates, weights)
        n = x.shape[0]
        _need(self.name, n, 2 * self.f + 1, self.f, "2f+1")
        order = np.argsort(x, axis=0, kind="stable")
        keep = order[self.f : n - self.f]  # (n - 2f, d) row indices per coordinate
        v, share = _kept_mean(self.name, x, w, keep)
        return make_result(self.name, x, v, range(n), share)


def _krum_scores_from(dist: Matrix, f: int) -> Vector:
    n = dist.shape[0]
    k = max(n - f - 2, 1)
    d = dist.copy()
    np.fill_diagonal(d, np.inf)
    nearest = np.partition(d, k - 1, axis=1)[:, :k] if k < n else d
    return np.asarray(nearest.sum(axis=1), dtype=np.float64)


def tie_stable_order(scores: Vector, rtol: float = 1e-9) -> np.ndarray:
    """Indices by ascending score, where scores equal up to rounding (within rtol of the
    largest magnitude) count as ties and keep index order. Distances from the Gram identity
    carry rounding error, so two rows at the same true distance may differ in the last bits,
    and which one wins would otherwise depend on the scale of the inputs."""
    s = np.asarray(scores, dtype=np.float64)
    finite = s[np.isfinite(s)]
    tol = rtol * float(np.abs(finite).max()) if finite.size else 0.0
    order = np.argsort(s, kind="stable")
    out: list[int] = []
    i = 0
    while i < len(order):
        j = i + 1
        while j < len(order) and s[order[j]] - s[order[i]] <= tol:
            j += 1
        out.extend(sorted(int(k) for k in order[i:j]))
        i = j
    return np.asarray(out, dtype=np.intp)


def krum_scores(x: Matrix, f: int) -> Vector:
    """Krum score of each row: sum of squared distances to its n - f - 2 nearest other rows."""
    return _krum_scores_from(pairwise_sq_distances(x), f)


@dataclass(frozen=True, slots=True)
class Krum:
    """Krum (m=1) and Multi-Krum (m>1): keep the m rows with the lowest Krum scores and return
    their weighted mean. Needs n >= 2f+3 and 1 <= m <= n - f. Score = Krum score."""

    f: int = 0
    m: int = 1
    robust: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        check_f(self.f)
        if isinstance(self.m, bool) or not isinstance(self.m, int) or self.m < 1:
            raise AggregationError(f"krum: m must be an integer >= 1, got {self.m!r}")

    @property
    def name(self) -> str:
        return "krum" if self.m == 1 else "multi_krum"

    def aggregate(self, updates: Matrix, weights: Vector | None = None) -> Aggregate:
        x, w = check_updates(updates, weights)
        n = x.shape[0]
        _need(self.name, n, 2 * self.f + 3, self.f, "2f+3")
        if self.m > n - self.f:
            raise AggregationError(f"{self.name}: m={self.m} exceeds n - f = {n - self.f}")
        scores = krum_scores(x, self.f)
        chosen = tie_stable_order(scores)[: self.m]
        cw = w[chosen]
        if cw.sum() <= _EPS:
            raise AggregationError(f"{self.name}: the selected updates all have weight 0")
        share = np.zeros(n)
        share[chosen] = cw / cw.sum()
        return make_result(self.name, x, share @ x, chosen, share, scores)


@dataclass(frozen=True, slots=True)
class Bulyan:
    """Bulyan: select theta = n - 2f rows by repeated Krum, then per coordinate average the
    beta = theta - 2f values closest to the coordinate median of the selection.
    Needs n >= 4f+3. Score = Krum score of each row in the first selection step."""

    f: int = 0
    robust: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        check_f(self.f)

    @property
    def name(self) -> str:
        return "bulyan"

    def aggregate(self, updates: Matrix, weights: Vector | None = None) -> Aggregate:
        x, w = check_updates(updates, weights)
        n = x.shape[0]
        f = self.f
        _need(self.name, n, 4 * f + 3, f, "4f+3")
        theta = n - 2 * f
        remaining = list(range(n))
        chosen: list[int] = []
        dist = pairwise_sq_distances(x)  # once; each Krum step works on a sub-matrix
        first_scores = _krum_scores_from(dist, f)
        while len(chosen) < theta:
            idx = np.array(remaining)
            s = _krum_scores_from(dist[np.ix_(idx, idx)], f) if len(idx) > 1 else np.zeros(1)
            pick = remaining[int(tie_stable_order(s)[0])]
            chosen.append(pick)
            remaining.remove(pick)
        sel = np.array(sorted(chosen))
        xs = x[sel]
        beta = theta - 2 * f
        med = np.median(xs, axis=0)
        # Values equally far from the median (common when theta is even) are ties; deviations
        # are snapped to a grid far above rounding error so that ties keep row order whatever
        # the offset or scale of the inputs.
        dev = np.abs(xs - med[None, :])
        grid = 1e-9 * np.maximum(np.abs(xs).max(axis=0), _EPS)
        order = np.argsort(np.round(dev / grid[None, :]), axis=0, kind="stable")[:beta]
        v, share = _kept_mean(self.name, x, w, sel[order])
        return make_result(self.name, x, v, sel, share, first_scores)


@dataclass(frozen=True, slots=True)
class GeometricMedian:
    """Geometric median by smoothed Weiszfeld (RFA, Pillutla et al.); tolerates f < n/2.
    Starts at the coordinate median. ``nu`` smooths the distance (no division by zero).
    Score = distance to the result; ``weights`` are the final Weiszfeld weights."""

    f: int = 0
    nu: float = 1e-6
    max_iter: int = 100
    tol: float = 1e-7
    robust: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        check_f(self.f)
        if not (np.isfinite(self.nu) and self.nu > 0):
            raise AggregationError(f"geometric_median: nu must be > 0, got {self.nu}")
        if self.max_iter < 1 or not (np.isfinite(self.tol) and self.tol > 0):
            raise AggregationError("geometric_median: max_iter must be >= 1 and tol > 0")

    @property
    def name(self) -> str:
        return "geometric_median"

    def aggregate(self, updates: Matrix, weights: Vector | None = None) -> Aggregate:
        x, w = check_updates(updates, weights)
        n = x.shape[0]
        _need(self.name, n, 2 * self.f + 1, self.f, "2f+1")
        v = weighted_coordinate_median(x, w)
        beta = w
        for _ in range(self.max_iter):
            dist = distances_to(x, v)
            beta = w / np.maximum(self.nu, dist)
            beta = beta / beta.sum()
            nxt = beta @ x
            step = float(np.linalg.norm(nxt - v))
            v = nxt
            if step <= self.tol * max(1.0, float(np.linalg.norm(v))):
                break
        return make_result(self.name, x, v, range(n), beta)


@dataclass(frozen=True, slots=True)
class NormBounding:
    """Clip every update to L2 norm <= ``clip_norm`` then take the weighted mean (Sun et al.).
    ``clip_norm=None`` uses the median update norm (adaptive; tolerates f < n/2).
    A row's influence is at most its weight times the bound. Score = the row's norm."""

    f: int = 0
    clip_norm: float | None = None
    robust: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        check_f(self.f)
        if self.clip_norm is not None and not (np.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise AggregationError(f"norm_bounding: clip_norm must be > 0, got {self.clip_norm}")

    @property
    def name(self) -> str:
        return "norm_bounding"

    def aggregate(self, updates: Matrix, weights: Vector | None = None) -> Aggregate:
        x, w = check_updates(updates, weights)
        n = x.shape[0]
        _need(self.name, n, 2 * self.f + 1, self.f, "2f+1")
        norms = np.linalg.norm(x, axis=1)
        bound = float(np.median(norms)) if self.clip_norm is None else float(self.clip_norm)
        scale = np.minimum(1.0, bound / np.maximum(norms, _EPS))
        v = w @ (x * scale[:, None])
        return make_result(self.name, x, v, range(n), w, norms)


@dataclass(frozen=True, slots=True)
class CenteredClipping:
    """Centered clipping (Karimireddy et al. 2021): starting from ``center`` (e.g. last round's
    aggregate; default the coordinate median), repeat ``v += sum_i w_i clip(x_i - v, tau)``.
    ``tau=None`` uses the median distance to the start. Tolerates f < n/2. Score = distance."""

    f: int = 0
    tau: float | None = None
    iters: int = 3
    center: Vector | None = None
    robust: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        check_f(self.f)
        if self.tau is not None and not (np.isfinite(self.tau) and self.tau > 0):
            raise AggregationError(f"centered_clipping: tau must be > 0, got {self.tau}")
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1:
            raise AggregationError(f"centered_clipping: iters must be >= 1, got {self.iters!r}")

    @property
    def name(self) -> str:
        return "centered_clipping"

    def aggregate(self, updates: Matrix, weights: Vector | None = None) -> Aggregate:
        x, w = check_updates(updates, weights)
        n, d = x.shape
        _need(self.name, n, 2 * self.f + 1, self.f, "2f+1")
        if self.center is None:
            v = weighted_coordinate_median(x, w)
        else:
            v = check_vector(self.center, d, "centered_clipping center").copy()
        tau = float(np.median(distances_to(x, v))) if self.tau is None else float(self.tau)
        if tau <= _EPS:
            return make_result(self.name, x, v, range(n), w)
        for _ in range(self.iters):
            diff = x - v[None, :]
            norms = np.linalg.norm(diff, axis=1)
            scale = np.minimum(1.0, tau / np.maximum(norms, _EPS))
            v = v + w @ (diff * scale[:, None])
        return make_result(self.name, x, v, range(n), w)


@dataclass(frozen=True, slots=True)
class FLTrust:
    """FLTrust (Cao et al. 2021). ``server_update`` is the coordinator's own update, trained on
    its small clean root set (the canary set of real benign telemetry). Each row gets trust
    ``relu(cos(x_i, g0)) * w_i`` and is rescaled to ``||g0||``; the result is the trust-weighted
    mean. Fails closed when no row has positive trust. Score = 1 - cosine (0..2)."""

    server_update: Vector
    robust: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        g0 = self.server_update
        if not isinstance(g0, np.ndarray) or g0.ndim != 1 or g0.dtype.kind != "f":
            raise AggregationError("fltrust: server_update must be a 1-D float array")
        if not np.isfinite(g0).all():
            raise AggregationError("fltrust: server_update contains NaN/Inf")
        if not np.linalg.norm(g0) > 0:
            raise AggregationError("fltrust: server_update is the zero vector")

    @property
    def name(self) -> str:
        return "fltrust"

    def aggregate(self, updates: Matrix, weights: Vector | None = None) -> Aggregate:
        x, w = check_updates(updates, weights)
        d = x.shape[1]
        g0 = check_vector(self.server_update, d, "fltrust server_update")
        g0_norm = float(np.linalg.norm(g0))
        norms = np.linalg.norm(x, axis=1)
        safe = np.maximum(norms, _EPS)
        cos = np.where(norms > _EPS, (x @ g0) / (safe * g0_norm), 0.0)
        ts = np.maximum(cos, 0.0) * w
        if ts.sum() <= _EPS:
            raise AggregationError("fltrust: no update points in the server update's direction")
        share = ts / ts.sum()
        v = share @ (x * (g0_norm / safe)[:, None])
        selected = np.nonzero(ts > 0)[0]
        return make_result(self.name, x, v, selected, share, 1.0 - cos)
