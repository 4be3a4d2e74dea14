"""Contract: every robust aggregator x every property (order invariance, identity, bounded
influence under f attackers, determinism, fail-closed preconditions and input checks)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from ztfm.errors import AggregationError
from ztfm.robust import (
    Aggregator,
    Bulyan,
    CenteredClipping,
    CoordinateMedian,
    FLTrust,
    GeometricMedian,
    Krum,
    Mean,
    NormBounding,
    TrimmedMean,
)

N, F, D = 15, 3, 20

# name -> (factory(f, reference) -> aggregator, smallest n that meets the precondition for f)
Factory = Callable[[int, np.ndarray], Aggregator]
ROBUST: dict[str, tuple[Factory, Callable[[int], int]]] = {
    "median": (lambda f, ref: CoordinateMedian(f=f), lambda f: 2 * f + 1),
    "trimmed_mean": (lambda f, ref: TrimmedMean(f=f), lambda f: 2 * f + 1),
    "krum": (lambda f, ref: Krum(f=f), lambda f: 2 * f + 3),
    "multi_krum": (lambda f, ref: Krum(f=f, m=4), lambda f: 2 * f + 3),
    "bulyan": (lambda f, ref: Bulyan(f=f), lambda f: 4 * f + 3),
    "geometric_median": (lambda f, ref: GeometricMedian(f=f), lambda f: 2 * f + 1),
    "norm_bounding": (lambda f, ref: NormBounding(f=f), lambda f: 2 * f + 1),
    "norm_bounding_fixed": (lambda f, ref: NormBounding(f=f, clip_norm=5.0), lambda f: 2 * f + 1),
    "centered_clipping": (lambda f, ref: CenteredClipping(f=f), lambda f: 2 * f + 1),
    "fltrust": (lambda f, ref: FLTrust(server_update=ref), lambda f: 1),
}
NAMES = sorted(ROBUST)
TAKES_F = [n for n in NAMES if n != "fltrust"]  # FLTrust has no f parameter


def _benign(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    mu = rng.normal(0.0, 1.0, D)
    return mu + 0.3 * rng.normal(size=(n, D)), mu


def _make(name: str, f: int = F, ref: np.ndarray | None = None) -> Aggregator:
    factory, _ = ROBUST[name]
    return factory(f, np.ones(D) if ref is None else ref)


@pytest.mark.parametrize("name", NAMES)
def test_order_invariance(name: str) -> None:
    rng = np.random.default_rng(1)
    x, mu = _benign(rng, N)
    x[:F] = 50.0 * rng.normal(size=(F, D))
    agg = _make(name, ref=mu)
    perm = rng.permutation(N)
    a = agg.aggregate(x)
    b = agg.aggregate(x[perm])
    np.testing.assert_allclose(a.vector, b.vector, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(a.distances[perm], b.distances, rtol=1e-9, atol=1e-9)
    assert {int(perm[i]) for i in b.selected} == set(a.selected)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_identity_on_identical_inputs(name: str, dtype: type) -> None:
    rng = np.random.default_rng(2)
    v = rng.normal(size=D)
    x = np.tile(v, (N, 1)).astype(dtype)
    out = _make(name, ref=v.astype(np.float64)).aggregate(x)
    np.testing.assert_allclose(out.vector, x[0].astype(np.float64), rtol=1e-6, atol=1e-6)
    assert out.vector.shape == (D,) and out.vector.dtype == np.float64


ATTACKS: dict[str, Callable[[np.random.Generator, np.ndarray, np.ndarray], np.ndarray]] = {
    "huge_constant": lambda rng, b, mu: np.full((F, D), 1e6),
    "huge_random": lambda rng, b, mu: 1e6 * rng.normal(size=(F, D)),
    "huge_negative": lambda rng, b, mu: np.tile(-1e4 * mu, (F, 1)),
    "huge_aligned": lambda rng, b, mu: np.tile(1e4 * mu, (F, 1)),
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_bounded_influence(name: str, attack: str) -> None:
    rng = np.random.default_rng(3)
    benign, mu = _benign(rng, N - F)
    bad = ATTACKS[attack](rng, benign, mu)
    x = np.vstack([bad, benign])
    out = _make(name, ref=mu).aggregate(x)
    # The attackers are 10^4..10^6 away; a robust result stays within the benign cloud plus at
    # most the attackers' share (f/n) of twice the largest benign norm.
    assert np.linalg.norm(out.vector - benign.mean(axis=0)) <= _bound(benign)


def _bound(benign: np.ndarray) -> float:
    centre = benign.mean(axis=0)
    radius = float(np.max(np.linalg.norm(benign - centre, axis=1)))
    return radius + 2.0 * F / N * float(np.max(np.linalg.norm(benign, axis=1)))


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_mean_is_not_robust(attack: str) -> None:
    """The same bound fails for plain FedAvg, so the contract above can fail."""
    rng = np.random.default_rng(3)
    benign, mu = _benign(rng, N - F)
    x = np.vstack([ATTACKS[attack](rng, benign, mu), benign])
    out = Mean().aggregate(x)
    assert np.linalg.norm(out.vector - benign.mean(axis=0)) > 10.0 * _bound(benign)
    assert Mean().robust is False


@pytest.mark.parametrize("name", NAMES)
def test_determinism(name: str) -> None:
    outs = []
    for _ in range(2):
        rng = np.random.default_rng(4)
        x, mu = _benign(rng, N)
        w = rng.uniform(0.1, 1.0, N)
        outs.append(_make(name, ref=mu).aggregate(x, w))
    assert np.array_equal(outs[0].vector, outs[1].vector)
    assert outs[0].selected == outs[1].selected
    assert np.array_equal(outs[0].scores, outs[1].scores)


@pytest.mark.parametrize("name", NAMES)
def test_result_shapes_and_diagnostics(name: str) -> None:
    rng = np.random.default_rng(5)
    x, mu = _benign(rng, N)
    out = _make(name, ref=mu).aggregate(x.astype(np.float32))
    assert out.method
    for arr in (out.weights, out.distances, out.scores):
        assert arr.shape == (N,)
        assert np.isfinite(arr).all()
        assert not arr.flags.writeable
    assert out.weights.sum() == pytest.approx(1.0)
    assert (out.weights >= 0).all()
    assert all(0 <= i < N for i in out.selected) and out.selected


@pytest.mark.parametrize("name", [n for n in NAMES if ROBUST[n][1](F) > 1])
def test_precondition_failure_raises(name: str) -> None:
    _, minimum = ROBUST[name]
    n = minimum(F) - 1
    x = np.random.default_rng(6).normal(size=(n, D))
    with pytest.raises(AggregationError, match=r"needs n >="):
        _make(name).aggregate(x)


@pytest.mark.parametrize("name", NAMES)
def test_precondition_met_exactly(name: str) -> None:
    _, minimum = ROBUST[name]
    n = minimum(F)
    rng = np.random.default_rng(7)
    x, mu = _benign(rng, n)
    out = _make(name, ref=mu).aggregate(x)
    assert np.isfinite(out.vector).all()


def _bad_inputs() -> list[tuple[str, object, object]]:
    good = np.random.default_rng(8).normal(size=(N, D))
    nan = good.copy()
    nan[4, 2] = np.nan
    inf = good.copy()
    inf[0, 0] = -np.inf
    return [
        ("nan", nan, None),
        ("inf", inf, None),
        ("1d", good[0], None),
        ("3d", good[None], None),
        ("empty_rows", good[:0], None),
        ("empty_cols", good[:, :0], None),
        ("int_dtype", good.astype(np.int64), None),
        ("complex", good.astype(np.complex128), None),
        ("object", good.astype(object), None),
        ("list", good.tolist(), None),
        ("weights_shape", good, np.ones(N - 1)),
        ("weights_2d", good, np.ones((N, 1))),
        ("weights_negative", good, np.r_[-1.0, np.ones(N - 1)]),
        ("weights_nan", good, np.r_[np.nan, np.ones(N - 1)]),
        ("weights_inf", good, np.r_[np.inf, np.ones(N - 1)]),
        ("weights_zero", good, np.zeros(N)),
        ("weights_list", good, [1.0] * N),
        ("weights_str", good, np.array(["a"] * N)),
    ]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("case", "updates", "weights"), _bad_inputs(), ids=lambda v: None)
def test_rejects_bad_input(name: str, case: str, updates: object, weights: object) -> None:
    agg = _make(name)
    with pytest.raises(AggregationError):
        agg.aggregate(updates, weights)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", TAKES_F)
@pytest.mark.parametrize("f", [-1, 1.5, True, "2", None])
def test_rejects_bad_f(name: str, f: object) -> None:
    with pytest.raises(AggregationError):
        _make(name, f=f)  # type: ignore[arg-type]


LIBRARY = ["alie", "ipm", "min_max", "min_sum", "sign_flip", "scaling", "gaussian", "sybil"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("attack", LIBRARY)
def test_bounded_influence_under_attack_library(name: str, attack: str) -> None:
    """The same bound against the omniscient attacks of ``ztfm.sim.attacks`` (f colluders who
    see every benign update)."""
    from ztfm.sim.attacks import UpdateAttack, make_attack

    rng = np.random.default_rng(11)
    benign, mu = _benign(rng, N - F)
    atk = make_attack(attack, **({"factor": 1e4} if attack == "scaling" else {}))
    assert isinstance(atk, UpdateAttack)
    bad = atk.craft(benign[:F] + 0.0, benign, rng)
    out = _make(name, ref=mu).aggregate(np.vstack([bad, benign]))
    assert np.linalg.norm(out.vector - benign.mean(axis=0)) <= _bound(benign)
