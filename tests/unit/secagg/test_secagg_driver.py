"""The in-process driver and the wire-size model."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ztfm.errors import SecAggError
from ztfm.secagg import Dropouts, bytes_per_device, run_secagg, simulate_round


def test_run_secagg_returns_clipped_sum(rng: np.random.Generator) -> None:
    xs = [rng.normal(0, 2, 30) for _ in range(6)]
    total = run_secagg(xs, clip=1.0, rng=rng)
    assert np.allclose(total, np.sum([np.clip(x, -1, 1) for x in xs], axis=0), atol=1e-4)


def test_same_seed_same_everything() -> None:
    xs = [np.linspace(-1, 1, 20) * i for i in range(5)]
    a = simulate_round(xs, clip=5.0, rng=np.random.default_rng(4))
    b = simulate_round(xs, clip=5.0, rng=np.random.default_rng(4))
    assert np.array_equal(a.result.total, b.result.total)
    assert a.params.digest == b.params.digest


def test_wire_model_matches_measured_bytes(rng: np.random.Generator) -> None:
    run = simulate_round([rng.normal(size=64) for _ in range(12)], clip=1.0, rng=rng, bits=16)
    est = bytes_per_device(12, run.params.degree, 64, 16, id_bytes=9)
    assert set(run.bytes_up.values()) == {est.up}
    assert set(run.bytes_down.values()) == {est.down}
    assert est.masked_vector == 128 and est.overhead_up == est.up - 128


def test_timer_fills_per_party_seconds(rng: np.random.Generator) -> None:
    run = simulate_round(
        [rng.normal(size=8) for _ in range(4)], clip=1.0, rng=rng, timer=time.perf_counter
    )
    assert all(s > 0 for s in run.client_seconds.values()) and run.server_seconds > 0


@pytest.mark.parametrize(
    ("inputs", "kw", "msg"),
    [
        ([np.ones(3)], {}, "at least 2"),
        ([np.ones(3), np.ones(4)], {}, "one length"),
        ([np.ones((2, 2)), np.ones((2, 2))], {}, "1-D"),
        ([np.ones(3), np.ones(3)], {"dropouts": Dropouts.of([5])}, "out of range"),
        ([np.ones(3), np.ones(3)], {"encoded": [np.zeros(3, np.uint16)] * 2}, "encoded"),
    ],
)
def test_driver_rejects_bad_arguments(inputs: list[np.ndarray], kw: dict, msg: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(SecAggError, match=msg):
        simulate_round(inputs, clip=1.0, rng=np.random.default_rng(0), **kw)


def test_dropout_sets_must_be_disjoint() -> None:
    with pytest.raises(SecAggError, match="only once"):
        Dropouts.of([1], [1])


def test_wire_model_rejects_bad_arguments() -> None:
    with pytest.raises(SecAggError):
        bytes_per_device(1, 1, 10, 32)
    with pytest.raises(SecAggError):
        bytes_per_device(10, 2, 10, 8)
