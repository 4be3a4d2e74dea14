"""UpdateCodec: DP + compression + fixed point composed with the real protocol."""

from __future__ import annotations

import numpy as np
import pytest

from ztfm.errors import PrivacyError, SecAggError
from ztfm.privacy import DistributedGaussian, l2_norm
from ztfm.privacy.compress import ErrorFeedback
from ztfm.secagg import UpdateCodec, simulate_round

SEED = b"round-digest"


def test_dense_codec_without_noise_is_exact_sum_of_clipped(rng: np.random.Generator) -> None:
    codec = UpdateCodec(length=50, clip_norm=1.0, max_inputs=6, rounding="nearest")
    ups = [rng.normal(0, 1, 50) for _ in range(6)]
    enc = [codec.encode(u, round_seed=SEED, rng=rng) for u in ups]
    run = simulate_round([np.zeros(50)] * 6, clip=1.0, rng=rng, encoded=enc)
    total = codec.decode(run.result.total, 6, round_seed=SEED)
    clipped = [u * min(1.0, 1.0 / l2_norm(u)) for u in ups]
    assert np.abs(total - np.sum(clipped, axis=0)).max() <= codec.max_error(6)


def test_sparse_16bit_codec_through_secagg(rng: np.random.Generator) -> None:
    n, d = 8, 1000
    codec = UpdateCodec(length=d, clip_norm=1.0, max_inputs=n, keep=50, bits=16, headroom_bits=2)
    fbs = [ErrorFeedback(d) for _ in range(n)]
    ups = [rng.normal(0, 0.05, d) for _ in range(n)]
    enc = [
        codec.encode(u, round_seed=SEED, rng=rng, feedback=f) for u, f in zip(ups, fbs, strict=True)
    ]
    assert all(e.dtype == np.uint16 and e.shape == (50,) for e in enc)
    run = simulate_round(
        [np.zeros(50)] * n, clip=1.0, rng=rng, bits=16, headroom_bits=2, encoded=enc
    )
    total = codec.decode(run.result.total, n, round_seed=SEED)
    idx = codec.indices(SEED)
    assert idx is not None
    sent = np.sum([u[idx] for u in ups], axis=0)  # norms are far below the clip here
    assert np.abs(total[idx] - sent).max() <= codec.max_error(n)
    mask = np.ones(d, bool)
    mask[idx] = False
    assert np.all(total[mask] == 0)
    # tiny model: the protocol's fixed bytes dominate; a 100k model at 5% in 16 bits: > 20x
    assert codec.upload_bytes(n, run.params.degree) == max(run.bytes_up.values())
    assert codec.compression_ratio(n, run.params.degree) < 4 * d / (50 * 2)
    big = UpdateCodec(length=100_000, clip_norm=1.0, max_inputs=50, keep=5000, bits=16)
    assert big.compression_ratio(50, 12) > 20


def test_noise_is_added_and_sum_carries_target_std(rng: np.random.Generator) -> None:
    n, d = 10, 4000
    noise = DistributedGaussian(noise_multiplier=1.0, clip_norm=1.0, min_survivors=n)
    codec = UpdateCodec(length=d, clip_norm=1.0, max_inputs=n, noise=noise)
    enc = [codec.encode(np.zeros(d), round_seed=SEED, rng=rng) for _ in range(n)]
    total = np.zeros(d, np.uint32)
    for e in enc:
        total += e
    out = codec.decode(total, n, round_seed=SEED)
    assert np.std(out) == pytest.approx(1.0, rel=0.05)


def test_codec_rejects_bad_config_and_input(rng: np.random.Generator) -> None:
    with pytest.raises(SecAggError, match="keep"):
        UpdateCodec(length=10, clip_norm=1.0, max_inputs=3, keep=11)
    with pytest.raises(SecAggError, match="clip_norm"):
        UpdateCodec(length=10, clip_norm=0.0, max_inputs=3)
    with pytest.raises(SecAggError, match="differs"):
        UpdateCodec(length=10, clip_norm=1.0, max_inputs=3, noise=DistributedGaussian(1.0, 2.0, 3))
    with pytest.raises(SecAggError, match="too small"):
        UpdateCodec(length=10, clip_norm=1.0, max_inputs=5000, bits=16)
    codec = UpdateCodec(length=10, clip_norm=1.0, max_inputs=3)
    with pytest.raises(SecAggError, match="shape"):
        codec.encode(np.zeros(9), round_seed=SEED, rng=rng)
    with pytest.raises(PrivacyError, match="NaN"):
        codec.encode(np.full(10, np.nan), round_seed=SEED, rng=rng)
