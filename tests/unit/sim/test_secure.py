"""`ztfm simulate` with [secagg]: real SecAgg+ rounds on a small real SKAB fleet.

The secure aggregate equals the plaintext one within the fixed-point error; the coordinator is
never handed a single update; dropouts after the masked input are recovered and too many
dropouts fail the round with one line; groups + median resist a scaling attacker; config
mistakes are one line.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sim_overlay import overlay, overlay_fleet

from ztfm.errors import ConfigError
from ztfm.fl import codec as fl_codec
from ztfm.secagg import UpdateCodec
from ztfm.secagg.codec import decode_message
from ztfm.secagg.messages import MaskedInput
from ztfm.sim import secure
from ztfm.sim.config import SimConfig
from ztfm.sim.fleet import Fleet
from ztfm.sim.runner import Simulation

CLIP = 0.5
BASE: dict[str, Any] = {
    "fleet": {"devices": 8},
    "detector": {"hidden": [8, 4]},
    "rounds": {"rounds": 1, "local_epochs": 1},
    "compare": {"local_only": False, "centralised": False},
    "privacy": {"clip_norm": CLIP},
    "robust": {"equal_weights": True},
}


def _cfg(**sections: dict[str, Any]) -> SimConfig:
    return overlay(BASE, **sections)


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return overlay_fleet(BASE)


def _flat(sim: Simulation) -> np.ndarray:
    return sim.coordinator.spec.flatten(sim.coordinator.params).astype(np.float64)


def test_secure_aggregate_equals_plaintext_within_quantisation_error(fleet: Fleet) -> None:
    plain = Simulation(_cfg(), fleet)
    sec = Simulation(_cfg(secagg={"enabled": True}, compression={"rounding": "nearest"}), fleet)
    start = _flat(plain)
    assert np.array_equal(start, _flat(sec))
    rp, rs = plain.run_round(0), sec.run_round(0)
    assert rp.get("failed") is None and rs.get("failed") is None
    n = len(fleet.devices)
    assert sorted(rs["accepted"]) == sorted(rp["accepted"]) and len(rs["accepted"]) == n
    codec = UpdateCodec(
        length=start.size, clip_norm=CLIP, max_inputs=n, bits=32, rounding="nearest"
    )
    bound = codec.max_error(n) / n  # error of the mean, per coordinate
    diff = np.abs(_flat(sec) - _flat(plain))
    assert diff.max() <= bound + 1e-6 * np.abs(_flat(plain)).max()
    assert np.abs(_flat(plain) - start).max() > 100 * bound  # the round really moved the model
    assert sec.coordinator.model_version == 1
    # bytes are the encoded protocol messages: masked vector (4 B/coord) plus protocol overhead
    up = rs["bytes_up"]
    assert set(up) == set(rs["accepted"])
    assert all(4 * start.size < b < 4 * start.size + 4000 for b in up.values())
    assert all(b > rp["bytes_down"][d] for d, b in rs["bytes_down"].items())


def test_coordinator_never_handed_an_individual_update(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = Simulation(
        _cfg(
            privacy={"noise_multiplier": 1.0},
            secagg={"enabled": True, "group_size": 4},
            robust={"aggregator": "median"},
        ),
        fleet,
    )
    coord = sim.coordinator
    handed: list[str] = []
    for name in ("submit", "submit_bytes", "close_round"):
        monkeypatch.setattr(coord, name, lambda *a, _n=name, **k: handed.append(_n))
    monkeypatch.setattr(
        type(coord.strategy), "aggregate", lambda *a, **k: handed.append("aggregate")
    )
    rec = sim.run_round(0)
    assert rec.get("failed") is None and handed == []
    assert coord.model_version == 1 and coord.round is None
    assert len(sim.secure.servers) == 2  # type: ignore[union-attr]
    fields = {
        d: sd.field_vector
        for d, sd in sim.secure.devices.items()  # type: ignore[union-attr]
    }
    seen_masked = 0
    for server in sim.secure.servers:  # type: ignore[union-attr]
        assert server.received
        for data in server.received:
            with pytest.raises(Exception):  # noqa: B017 - not an FL message of any kind
                fl_codec.decode(data)
            msg = decode_message(data)
            if isinstance(msg, MaskedInput):
                seen_masked += 1
                own = fields[msg.device]
                assert own is not None and not np.array_equal(msg.masked, own)
    assert seen_masked == len(fleet.devices)
    # per-device DP accounting still books every eligible device
    assert set(rec["epsilon"]) == {d.device_id for d in fleet.devices}
    assert min(rec["epsilon"].values()) > 0


def _drops(plan: dict[int, str]) -> Any:
    def fake(devices: list[str], prob: float, rng: np.random.Generator) -> dict[str, str]:
        return {devices[i]: phase for i, phase in plan.items()}

    return fake


def test_dropout_after_masked_input_is_recovered(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(secure, "drop_plan", _drops({0: "before_unmask", 1: "before_input"}))
    sim = Simulation(_cfg(secagg={"enabled": True}), fleet)
    rec = sim.run_round(0)
    ids = sorted(d.device_id for d in fleet.devices)
    assert rec.get("failed") is None
    assert ids[0] in rec["accepted"]  # its masked input counts; its self mask was rebuilt
    assert ids[1] not in rec["accepted"] and "before input" in rec["rejected"][ids[1]]
    assert len(rec["accepted"]) == len(ids) - 1 and sim.coordinator.model_version == 1


def test_dropouts_below_threshold_fail_the_round_cleanly(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(secure, "drop_plan", _drops(dict.fromkeys(range(5), "before_unmask")))
    sim = Simulation(_cfg(secagg={"enabled": True}), fleet)
    rec = sim.run_round(0)
    reason = rec["failed"]
    assert isinstance(reason, str) and "\n" not in reason
    assert reason.startswith("round 1: SecAgg group of 8 aborted") and "needed" in reason
    assert rec["accepted"] == [] and sim.coordinator.model_version == 0
    assert sim.coordinator.round is None
    assert any(e["event"] == "round_failed" for e in sim.events)
    monkeypatch.setattr(secure, "drop_plan", _drops({}))
    again = sim.run_round(1)  # the next round runs normally
    assert again.get("failed") is None and sim.coordinator.model_version == 1


def test_privacy_budget_still_gates_the_secure_path(fleet: Fleet) -> None:
    sim = Simulation(
        _cfg(privacy={"noise_multiplier": 1.0, "epsilon_budget": 0.5}, secagg={"enabled": True}),
        fleet,
    )
    rec = sim.run_round(0)
    assert rec["failed"] is not None and "eligible" in rec["failed"]
    assert len(rec["excluded"]) == len(fleet.devices)
    assert all("budget" in r or "epsilon" in r for r in rec["excluded"].values())


def _step_norm(sim: Simulation) -> float:
    before = _flat(sim)
    rec = sim.run_round(0)
    assert rec.get("failed") is None
    return float(np.linalg.norm(_flat(sim) - before))


def test_groups_and_median_resist_a_scaling_attacker(fleet: Fleet) -> None:
    attack = {"name": "scaling", "fraction": 0.25, "params": {"factor": 200.0}}
    mean = Simulation(_cfg(secagg={"enabled": True}, attacks=attack), fleet)
    robust = Simulation(
        _cfg(
            secagg={"enabled": True, "group_size": 2},
            attacks=attack,
            robust={"aggregator": "median"},
        ),
        fleet,
    )
    honest = Simulation(_cfg(secagg={"enabled": True, "group_size": 2}), fleet)
    n_mean, n_robust, n_honest = _step_norm(mean), _step_norm(robust), _step_norm(honest)
    # the attack is real: under the plain secure mean it blows the step far past the clip
    assert n_mean > 5 * CLIP
    # honest devices clip to CLIP, so an honest step stays within it; groups + median too
    assert n_honest <= CLIP * (1 + 1e-6) and n_robust <= CLIP * (1 + 1e-6)
    assert robust.secure is not None and robust.secure.last["rejected_groups"]


@pytest.mark.parametrize(
    ("sections", "match"),
    [
        ({"secagg": {"enabled": True, "bits": 8}}, r"\[secagg\] bits"),
        ({"secagg": {"enabled": True, "neighbours": 3}}, r"\[secagg\] neighbours"),
        ({"secagg": {"enabled": True, "threshold": 2.5}}, r"\[secagg\] threshold"),
        ({"secagg": {"enabled": True, "dropout_prob": 1.0}}, r"\[secagg\] dropout_prob"),
        ({"secagg": {"enabled": True, "group_size": 1}}, r"\[secagg\] group_size"),
        ({"secagg": {"enabled": True}, "privacy": {"clip_norm": 0.0}}, "clip_norm > 0"),
        (
            {"secagg": {"enabled": True}, "robust": {"aggregator": "median"}},
            "robust aggregator needs group_size",
        ),
        ({"compression": {"value_bits": 1}}, r"\[compression\] value_bits"),
        ({"compression": {"value_bits": 17}}, r"\[compression\] value_bits"),
        ({"compression": {"keep_ratio": 0.0}}, r"\[compression\] keep_ratio"),
        ({"compression": {"rounding": "up"}}, r"\[compression\] rounding"),
        ({"secagg": {"enabled": "yes"}}, "true or false"),
        ({"secagg": {"groupsize": 3}}, "unknown option"),
    ],
)
def test_config_errors_are_one_line(sections: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        _cfg(**sections)
    assert "\n" not in str(info.value)


def test_report_shows_epsilon_and_bytes_per_device(fleet: Fleet) -> None:
    from ztfm.report.html import device_traffic, render_report
    from ztfm.sim.runner import run_simulation

    cfg = _cfg(
        privacy={"noise_multiplier": 1.0},
        secagg={"enabled": True, "bits": 16},
        compression={"keep_ratio": 0.1},
        rounds={"rounds": 2},
    )
    m = run_simulation(cfg, fleet=fleet).metrics
    traffic = device_traffic(m)
    assert set(traffic) == {d.device_id for d in fleet.devices}
    up, down, up_week, _ = traffic[fleet.devices[0].device_id]
    assert 0 < up < down and up_week == pytest.approx(up * 168 / 1e3)
    page = render_report(m)
    assert "Secure aggregation" in page and "KB up / week" in page
    eps = m["rounds"][-1]["epsilon"][fleet.devices[0].device_id]
    assert f"<td>{eps:.3f}</td>" in page and f"<td>{up:.0f}</td>" in page
