"""Compression codecs: round trips, error feedback, and composition with secure aggregation."""

from __future__ import annotations

import numpy as np
import pytest

from ztfm.errors import PrivacyError
from ztfm.privacy.compress import (
    ErrorFeedback,
    SparseUpdate,
    StochasticQuantizer,
    compression_ratio,
    k_for_ratio,
    scatter,
    shared_indices,
    topk_indices,
    topk_sparsify,
)
from ztfm.secagg import simulate_round


def test_shared_indices_same_for_everyone_and_seed_dependent() -> None:
    a = shared_indices(1000, 50, b"round-1")
    assert np.array_equal(a, shared_indices(1000, 50, b"round-1"))
    assert not np.array_equal(a, shared_indices(1000, 50, b"round-2"))
    assert a.size == 50 and np.all(np.diff(a) > 0) and a[0] >= 0 and a[-1] < 1000
    assert np.array_equal(shared_indices(5, 5, b"x"), np.arange(5))


def test_topk_picks_largest_magnitudes() -> None:
    x = np.array([0.1, -5.0, 0.3, 4.0, -0.2])
    assert topk_indices(x, 2).tolist() == [1, 3]
    sp = topk_sparsify(x, 2)
    assert np.array_equal(sp.dense(), np.array([0, -5.0, 0, 4.0, 0]))
    assert sp.wire_bytes(16) == 2 * 6


def test_error_feedback_conserves_mass(rng: np.random.Generator) -> None:
    ef = ErrorFeedback(100)
    sent = np.zeros(100)
    total = np.zeros(100)
    for r in range(20):
        u = rng.normal(size=100)
        total += u
        idx = shared_indices(100, 10, f"r{r}".encode())
        sent += scatter(ef.compress_shared(u, idx), idx, 100)
    assert np.allclose(sent + ef.residual, total)


def test_error_feedback_topk_conserves_mass(rng: np.random.Generator) -> None:
    ef = ErrorFeedback(64)
    sent, total = np.zeros(64), np.zeros(64)
    for _ in range(10):
        u = rng.normal(size=64)
        total += u
        sent += ef.compress_topk(u, 8).dense()
    assert np.allclose(sent + ef.residual, total)


def test_quantizer_unbiased_and_bounded() -> None:
    q = StochasticQuantizer(bits=4, clip=1.0)
    x = np.full(50000, 0.33)
    ints = q.quantize(x, np.random.default_rng(0))
    assert ints.min() >= -q.levels and ints.max() <= q.levels
    assert q.dequantize(ints).mean() == pytest.approx(0.33, abs=0.005)
    assert np.abs(q.dequantize(ints) - x).max() < 1.0 / q.levels + 1e-12


def test_quantise_then_mask_composes_with_secagg(rng: np.random.Generator) -> None:
    n, d, k = 8, 400, 40
    idx = shared_indices(d, k, b"round-seed")
    efs = [ErrorFeedback(d) for _ in range(n)]
    ups = [rng.normal(0, 0.1, d) for _ in range(n)]
    vals = [ef.compress_shared(u, idx) for ef, u in zip(efs, ups, strict=True)]
    run = simulate_round(vals, clip=0.5, rng=rng, bits=16, headroom_bits=2, rounding="stochastic")
    exact = np.sum([np.clip(v, -0.5, 0.5) for v in vals], axis=0)
    assert np.abs(run.total - exact).max() <= run.codec.max_error(n, "stochastic")
    assert run.result.total.dtype == np.uint16
    up = {b for b in run.bytes_up.values()}
    assert all(b < d * 4 for b in up) or k * 2 < d * 4
    assert compression_ratio(d, k, 16) == pytest.approx(20.0)
    dense = scatter(run.total, idx, d)
    assert dense.shape == (d,)


@pytest.mark.parametrize(
    ("indices", "msg"),
    [
        (np.array([3, 1]), "sorted"),
        (np.array([1, 1]), "sorted"),
        (np.array([-1, 2]), "within"),
        (np.array([1, 10]), "within"),
        (np.array([], dtype=np.int64), "non-empty"),
        (np.array([0.5, 1.0]), "integer"),
    ],
)
def test_bad_indices_rejected(indices: np.ndarray, msg: str) -> None:
    with pytest.raises(PrivacyError, match=msg):
        scatter(np.ones(indices.size), indices, 10)


def test_bad_codec_arguments_rejected() -> None:
    with pytest.raises(PrivacyError):
        shared_indices(10, 0, b"s")
    with pytest.raises(PrivacyError):
        shared_indices(10, 11, b"s")
    with pytest.raises(PrivacyError, match="seed"):
        shared_indices(10, 2, b"")
    with pytest.raises(PrivacyError):
        topk_indices(np.array([np.nan, 1.0]), 1)
    with pytest.raises(PrivacyError, match="bits"):
        StochasticQuantizer(bits=1, clip=1.0)
    with pytest.raises(PrivacyError, match="clip"):
        StochasticQuantizer(bits=8, clip=0.0)
    with pytest.raises(PrivacyError, match="integers"):
        StochasticQuantizer(bits=8, clip=1.0).dequantize(np.array([0.5]))
    with pytest.raises(PrivacyError, match="ratio"):
        k_for_ratio(10, 0.0)
    with pytest.raises(PrivacyError, match="length"):
        ErrorFeedback(4).compress_shared(np.ones(5), np.array([0]))
    with pytest.raises(PrivacyError, match="differ"):
        SparseUpdate(np.array([0, 1]), np.array([1.0]), 4)
    with pytest.raises(PrivacyError, match="differ"):
        scatter(np.ones(3), np.array([0, 1]), 4)
    assert k_for_ratio(1000, 0.05) == 50
