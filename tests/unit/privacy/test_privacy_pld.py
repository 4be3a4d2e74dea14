"""PLD accounting: the closed form for full participation, the tighter-of-two fleet ledger,
budgets, calibration and state."""

from __future__ import annotations

import json

import dp_accounting as dpa
import pytest
from dp_accounting import pld

from ztfm.errors import PrivacyBudgetExceeded, PrivacyError
from ztfm.privacy import DeviceAccountant, FleetAccountant, epsilon_for, noise_multiplier_for
from ztfm.privacy.accounting import gaussian_delta, gaussian_epsilon
from ztfm.types import DeviceId

DEVS = [DeviceId(f"d{i}") for i in range(5)]


def _dpa_pld(z: float, rounds: int, q: float, delta: float) -> float:
    acc = pld.PLDAccountant()
    event = dpa.GaussianDpEvent(z)
    acc.compose(event if q == 1 else dpa.PoissonSampledDpEvent(q, event), rounds)
    return float(acc.get_epsilon(delta))


@pytest.mark.parametrize(("z", "rounds"), [(2.02, 10), (0.8, 3)])
def test_closed_form_matches_dp_accounting_pld(z: float, rounds: int) -> None:
    ours = epsilon_for(z, rounds, 1.0, 1e-5, method="pld")
    assert ours == pytest.approx(_dpa_pld(z, rounds, 1.0, 1e-5), abs=1e-4)
    assert ours < epsilon_for(z, rounds, 1.0, 1e-5)  # RDP is looser


def test_gaussian_epsilon_inverts_delta_and_never_under_reports() -> None:
    for mu in (0.3, 1.0, 1.66, 4.0):
        eps = gaussian_epsilon(mu, 1e-5)
        assert gaussian_delta(eps, mu) <= 1e-5 < gaussian_delta(eps * 0.999, mu)
    assert gaussian_epsilon(0.0, 1e-5) == 0.0
    with pytest.raises(PrivacyError):
        gaussian_epsilon(1.0, 0.0)
    with pytest.raises(PrivacyError):
        gaussian_delta(1.0, float("nan"))


def test_fleet_pld_is_the_tighter_bound_and_matches_composition() -> None:
    rdp_fleet = FleetAccountant(100.0, 1e-5)
    pld_fleet = FleetAccountant(100.0, 1e-5, method="pld")
    for z in (2.0, 1.5, 3.0):  # heterogeneous multipliers compose as one Gaussian
        for f in (rdp_fleet, pld_fleet):
            f.record_round(DEVS, z, 1.0)
    pld_fleet.record_round(DEVS[:2], 1.0, 1.0)  # two devices have one more round
    rdp_fleet.record_round(DEVS[:2], 1.0, 1.0)
    tight, loose = pld_fleet.epsilon_spent(), rdp_fleet.epsilon_spent()
    mu_more = (1 / 4 + 1 / 2.25 + 1 / 9 + 1) ** 0.5
    mu_less = (1 / 4 + 1 / 2.25 + 1 / 9) ** 0.5
    assert tight[DEVS[0]] == pytest.approx(gaussian_epsilon(mu_more, 1e-5))
    assert tight[DEVS[4]] == pytest.approx(gaussian_epsilon(mu_less, 1e-5))
    assert all(tight[d] < loose[d] for d in DEVS)


def test_fleet_pld_with_sampling_uses_dp_accounting() -> None:
    fleet = FleetAccountant(100.0, 1e-5, method="pld")
    fleet.record_round(DEVS, 1.0, 0.5)
    fleet.record_round(DEVS, 1.0, 0.5)
    eps = fleet.epsilon_spent()[DEVS[0]]
    assert eps == pytest.approx(_dpa_pld(1.0, 2, 0.5, 1e-5), rel=1e-6)
    assert eps <= epsilon_for(1.0, 2, 0.5, 1e-5)


def test_pld_budget_admits_a_round_rdp_refuses() -> None:
    # z = 2, full participation, delta 1e-5: RDP 2.17 / 3.19 / 4.01; exact 1.99 / 2.94 / 3.71
    rdp_acc = DeviceAccountant(3.8, 1e-5)
    pld_acc = DeviceAccountant(3.8, 1e-5, method="pld")
    for acc in (rdp_acc, pld_acc):
        for _ in range(2):
            acc.check(2.0, 1.0)
            acc.record(2.0, 1.0)
    pld_acc.check(2.0, 1.0)
    with pytest.raises(PrivacyBudgetExceeded, match=r"4\.01"):
        rdp_acc.check(2.0, 1.0)
    pld_acc.record(2.0, 1.0)
    assert pld_acc.epsilon_spent() == pytest.approx(3.7086, abs=1e-3)
    with pytest.raises(PrivacyBudgetExceeded):
        pld_acc.check(2.0, 1.0)
    fleet = FleetAccountant(3.8, 1e-5, method="pld")
    for _ in range(3):
        assert fleet.eligible(DEVS, 2.0, 1.0) == DEVS
        fleet.record_round(DEVS, 2.0, 1.0)
    assert fleet.eligible(DEVS, 2.0, 1.0) == []


def test_calibration_returns_what_the_accountant_certifies() -> None:
    for method in ("rdp", "pld"):
        z = noise_multiplier_for(8.0, 1e-5, 10, 1.0, method=method)  # type: ignore[arg-type]
        fleet = FleetAccountant(8.0, 1e-5, method=method)  # type: ignore[arg-type]
        for _ in range(10):
            fleet.check(DEVS[0], z, 1.0)
            fleet.record_round(DEVS, z, 1.0)
        assert fleet.epsilon_spent()[DEVS[0]] <= 8.0
        assert epsilon_for(round(z - 0.01, 2), 10, 1.0, 1e-5, method=method) > 8.0  # type: ignore[arg-type]
    assert noise_multiplier_for(8.0, 1e-5, 10, 1.0, method="pld") == 1.9
    assert noise_multiplier_for(8.0, 1e-5, 10, 1.0) == 2.02


def test_pld_state_round_trip_and_corruption() -> None:
    fleet = FleetAccountant(6.0, 1e-5, method="pld")
    fleet.record_round(DEVS, 2.0, 1.0)
    fleet.record_round(DEVS[:1], 1.5, 1.0)
    state = json.loads(json.dumps(fleet.to_state()))
    again = FleetAccountant.from_state(state)
    assert again.method == "pld" and again.epsilon_spent() == fleet.epsilon_spent()
    for corrupt in (
        lambda s: s["histories"].pop("d1"),
        lambda s: s["histories"].update(d0=[[2.0, 1.0, 0]]),
        lambda s: s["histories"].update(d0=[[2.0, 1.0, 1], [2.0, 1.0, 1]]),
        lambda s: s["histories"].update(d0=[[-2.0, 1.0, 1]]),
        lambda s: s["histories"].update(d0="x"),
        lambda s: s.update(method="moments"),
    ):
        bad = json.loads(json.dumps(state))
        corrupt(bad)
        with pytest.raises(PrivacyError):
            FleetAccountant.from_state(bad)


def test_version_1_state_still_loads_as_rdp() -> None:
    fleet = FleetAccountant(6.0, 1e-5)
    fleet.record_round(DEVS, 1.3, 0.2)
    state = fleet.to_state()
    del state["histories"], state["method"]
    state["version"] = 1
    again = FleetAccountant.from_state(state)
    assert again.method == "rdp" and again.epsilon_spent() == fleet.epsilon_spent()


def test_unknown_method_refused() -> None:
    with pytest.raises(PrivacyError, match="method"):
        FleetAccountant(1.0, 1e-5, method="moments")  # type: ignore[arg-type]
