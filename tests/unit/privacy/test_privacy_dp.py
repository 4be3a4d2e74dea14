"""Clipping, noise and accounting."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from dp_accounting import rdp

from ztfm.errors import PrivacyBudgetExceeded, PrivacyError
from ztfm.privacy import (
    CentralGaussian,
    DeviceAccountant,
    DistributedGaussian,
    FleetAccountant,
    clip_update,
    epsilon_for,
    l2_norm,
    noise_multiplier_for,
)
from ztfm.privacy.accounting import ORDERS, _event_rdp, epsilons_from_rdp
from ztfm.types import DeviceId


# ---- clipping ----------------------------------------------------------------------------------
def test_clip_bounds_norm_and_keeps_direction(rng: np.random.Generator) -> None:
    x = rng.normal(0, 10, 50)
    y = clip_update(x, 1.5)
    assert l2_norm(y) == pytest.approx(1.5)
    assert np.allclose(y / l2_norm(y), x / l2_norm(x))


def test_clip_leaves_small_updates_alone() -> None:
    x = np.array([0.1, -0.2])
    y = clip_update(x, 1.0)
    assert np.array_equal(x, y) and y is not x


@pytest.mark.parametrize("bad_norm", [0.0, -1.0, float("nan"), float("inf")])
def test_clip_rejects_bad_norm(bad_norm: float) -> None:
    with pytest.raises(PrivacyError, match="clip_norm"):
        clip_update(np.ones(3), bad_norm)


@pytest.mark.parametrize("bad", [np.array([np.nan, 1.0]), np.array([np.inf]), np.zeros(0)])
def test_clip_rejects_bad_update(bad: np.ndarray) -> None:
    with pytest.raises(PrivacyError):
        clip_update(bad, 1.0)


# ---- noise -------------------------------------------------------------------------------------
def test_distributed_noise_sums_to_target_variance() -> None:
    dg = DistributedGaussian(noise_multiplier=1.0, clip_norm=2.0, min_survivors=10)
    rng = np.random.default_rng(0)
    total = sum(dg.noise(20000, rng) for _ in range(10))
    assert np.std(total) == pytest.approx(2.0, rel=0.03)


def test_distributed_noise_dropouts_only_raise_noise() -> None:
    dg = DistributedGaussian(1.0, 1.0, min_survivors=8)
    assert dg.effective_noise_multiplier(8) == pytest.approx(1.0)
    assert dg.effective_noise_multiplier(12) > 1.0
    with pytest.raises(PrivacyError, match="below min_survivors"):
        dg.effective_noise_multiplier(7)


def test_distributed_noise_refuses_unclipped_update() -> None:
    dg = DistributedGaussian(1.0, 1.0, 4)
    with pytest.raises(PrivacyError, match="not clipped"):
        dg.privatise(np.ones(4), np.random.default_rng(0))
    out = dg.privatise(clip_update(np.ones(4), 1.0), np.random.default_rng(0))
    assert out.shape == (4,)


def test_noise_is_reproducible_with_same_rng() -> None:
    dg = DistributedGaussian(1.0, 1.0, 4)
    a = dg.noise(10, np.random.default_rng(5))
    b = dg.noise(10, np.random.default_rng(5))
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "kw", [{"noise_multiplier": -1.0}, {"clip_norm": 0.0}, {"min_survivors": 0}]
)
def test_distributed_noise_rejects_bad_config(kw: dict[str, float]) -> None:
    args: dict[str, float] = {"noise_multiplier": 1.0, "clip_norm": 1.0, "min_survivors": 3}
    args.update(kw)
    with pytest.raises(PrivacyError):
        DistributedGaussian(**args)  # type: ignore[arg-type]


def test_central_noise_std_and_validation() -> None:
    cg = CentralGaussian(0.5, 4.0)
    out = cg.privatise_sum(np.zeros(40000), np.random.default_rng(1))
    assert np.std(out) == pytest.approx(2.0, rel=0.03)
    with pytest.raises(PrivacyError, match="NaN"):
        cg.privatise_sum(np.array([np.nan]), np.random.default_rng(1))
    with pytest.raises(PrivacyError):
        CentralGaussian(1.0, float("nan"))


# ---- accounting --------------------------------------------------------------------------------
def test_vectorised_conversion_matches_dp_accounting() -> None:
    vec = np.asarray(_event_rdp(0.9, 0.05, "poisson", 0)) * 37
    ref, _ = rdp.compute_epsilon(list(ORDERS), list(vec), 1e-6)
    assert epsilons_from_rdp(vec, 1e-6)[0] == pytest.approx(ref)


def test_accountant_matches_dp_accounting_composition() -> None:
    import dp_accounting as dpa

    acc = DeviceAccountant(100.0, 1e-5)
    for _ in range(25):
        acc.record(1.1, 0.1)
    ref = rdp.RdpAccountant(list(ORDERS))
    ref.compose(dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(1.1)), 25)
    assert acc.epsilon_spent() == pytest.approx(ref.get_epsilon(1e-5))


def test_accountant_monotone_and_refuses_past_budget() -> None:
    acc = DeviceAccountant(3.0, 1e-5)
    spent = [acc.epsilon_spent()]
    with pytest.raises(PrivacyBudgetExceeded, match="budget"):
        for _ in range(10_000):
            acc.check(1.2, 0.2)
            acc.record(1.2, 0.2)
            spent.append(acc.epsilon_spent())
    assert all(b >= a for a, b in itertools.pairwise(spent))
    assert spent[-1] <= 3.0 < acc.epsilon_after(1.2, 0.2)
    assert len(acc.history) == len(spent) - 1 > 1


def test_noise_rounding_is_conservative() -> None:
    a, b = DeviceAccountant(50, 1e-5), DeviceAccountant(50, 1e-5)
    a.record(1.0009, 0.1)
    b.record(1.0, 0.1)
    assert a.epsilon_spent() == pytest.approx(b.epsilon_spent())


@pytest.mark.parametrize(
    ("z", "q"), [(0.0, 0.1), (-1.0, 0.1), (float("nan"), 0.1), (1.0, 0.0), (1.0, 1.5)]
)
def test_accountant_rejects_bad_events(z: float, q: float) -> None:
    with pytest.raises(PrivacyError):
        DeviceAccountant(1.0, 1e-5).check(z, q)


@pytest.mark.parametrize(
    ("eps", "delta"), [(0.0, 1e-5), (float("inf"), 1e-5), (1.0, 0.0), (1.0, 1.0)]
)
def test_accountant_rejects_bad_budget(eps: float, delta: float) -> None:
    with pytest.raises(PrivacyError):
        DeviceAccountant(eps, delta)


def test_uniform_sampling_needs_population() -> None:
    with pytest.raises(PrivacyError, match="population"):
        DeviceAccountant(5.0, 1e-5, sampling="uniform").check(1.0, 0.1)
    acc = DeviceAccountant(5.0, 1e-5, sampling="uniform", population=1000)
    acc.record(1.0, 0.1)
    assert 0 < acc.epsilon_spent() < 5


def test_fleet_eligibility_and_per_device_epsilon() -> None:
    fleet = FleetAccountant(3.0, 1e-5)
    a, b = DeviceId("a"), DeviceId("b")
    fleet.record_round([a], 1.5, 0.1)
    spent = fleet.epsilon_spent()
    assert spent[a] > 0 and spent.get(b, 0.0) == 0.0
    rounds = 1
    while fleet.eligible([a], 1.5, 0.1):
        fleet.record_round([a], 1.5, 0.1)
        rounds += 1
    assert rounds > 2
    assert fleet.eligible([a, b], 1.5, 0.1) == [b]
    with pytest.raises(PrivacyBudgetExceeded, match="a:"):
        fleet.check(a, 1.5, 0.1)
    fleet.check(b, 1.5, 0.1)
    assert 0 < fleet.epsilon_spent(a)[a] <= 3.0


def test_calibration_meets_target() -> None:
    z = noise_multiplier_for(4.0, 1e-5, rounds=50, sampling_rate=0.1)
    assert epsilon_for(z, 50, 0.1, 1e-5) <= 4.0
    assert epsilon_for(z * 0.9, 50, 0.1, 1e-5) > 4.0
    assert epsilon_for(z, 50, 0.1, 1e-5, method="pld") <= epsilon_for(z, 50, 0.1, 1e-5) + 1e-6


@pytest.mark.parametrize(
    "kw",
    [
        {"target_epsilon": 0.0},
        {"rounds": 0},
        {"sampling_rate": 0.0},
        {"sampling_rate": 2.0},
    ],
)
def test_calibration_rejects_bad_arguments(kw: dict[str, float]) -> None:
    args: dict[str, float] = {
        "target_epsilon": 1.0,
        "target_delta": 1e-5,
        "rounds": 10,
        "sampling_rate": 0.1,
    }
    args.update(kw)
    with pytest.raises(PrivacyError):
        noise_multiplier_for(**args)  # type: ignore[arg-type]


def test_epsilon_for_rejects_bad_arguments() -> None:
    with pytest.raises(PrivacyError):
        epsilon_for(1.0, 0, 0.1, 1e-5)
    with pytest.raises(PrivacyError):
        epsilon_for(1.0, 1, 0.1, 0.0)
    with pytest.raises(PrivacyError):
        epsilon_for(1.0, 1, 0.1, 1e-5, method="moments")  # type: ignore[arg-type]
    assert math.isfinite(epsilon_for(1.0, 1, 1.0, 1e-5))


def test_fleet_state_round_trip() -> None:
    import json

    fleet = FleetAccountant(6.0, 1e-5)
    fleet.record_round([DeviceId("a"), DeviceId("b")], 1.3, 0.2)
    fleet.record_round([DeviceId("a")], 1.3, 0.2)
    again = FleetAccountant.from_state(json.loads(json.dumps(fleet.to_state())))
    assert again.epsilon_spent() == pytest.approx(fleet.epsilon_spent())
    assert again.eligible(["a", "b"], 1.3, 0.2) == fleet.eligible(["a", "b"], 1.3, 0.2)  # type: ignore[list-item]


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda s: s.update(version=3),
        lambda s: s.update(orders=[2.0]),
        lambda s: s.update(devices={"a": [1.0]}),
        lambda s: s.update(devices={"a": [-1.0] * len(s["orders"])}),
        lambda s: s.update(devices={"a": [float("nan")] * len(s["orders"])}),
        lambda s: s.update(devices=[1, 2]),
        lambda s: s.pop("target_delta"),
        lambda s: s.update(target_epsilon="x"),
        lambda s: s.update(sampling="sometimes"),
    ],
)
def test_fleet_state_rejects_corruption(corrupt: object) -> None:
    fleet = FleetAccountant(6.0, 1e-5)
    fleet.record_round([DeviceId("a")], 1.3, 0.2)
    state = fleet.to_state()
    corrupt(state)  # type: ignore[operator]
    with pytest.raises(PrivacyError):
        FleetAccountant.from_state(state)
