"""TrustManager: evidence -> score/state, gates, quarantine, canary replay, rate limits."""

from __future__ import annotations

import numpy as np
import pytest

from ztfm.errors import TrustError
from ztfm.trust import (
    CanaryResult,
    MemoryTrustStore,
    TrustConfig,
    TrustManager,
    TrustState,
    UpdateObservation,
    observe_updates,
)
from ztfm.types import DeviceId

D = DeviceId("dev-1")


def _mgr() -> TrustManager:
    return TrustManager(MemoryTrustStore())


def _obs(device: str = "dev-1", **kw: float | bool) -> UpdateObservation:
    base: dict[str, float | bool] = {
        "distance": 1.0,
        "distance_z": 0.0,
        "cosine": 0.9,
        "nn_ratio": 1.0,
        "norm_ratio": 1.0,
    }
    base.update(kw)
    return UpdateObservation(device=DeviceId(device), **base)  # type: ignore[arg-type]


def test_new_device_starts_at_prior_and_must_attest_first() -> None:
    m = _mgr()
    assert m.score(D, 0.0) == pytest.approx(0.75)
    with pytest.raises(TrustError, match="no passing attestation"):
        m.check_participation(D, 0.0)  # no implicit trust
    m.observe_attestation(D, True, 0.0)
    m.check_participation(D, 0.0)
    assert m.weight(D, 0.0) == pytest.approx(0.75, abs=0.02)


def test_good_rounds_raise_trust_and_explain() -> None:
    m = _mgr()
    changes = [m.observe_round(r, [_obs()], float(r))[0] for r in range(5)]
    assert changes[-1].new_score > 0.8
    assert all(c.reason == "update_ok" and c.new_score >= c.old_score for c in changes)
    assert changes[0].to_dict()["inputs"]["cosine"] == 0.9
    assert "dev-1: update_ok" in changes[0].message


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("distance_z", 10.0, "far_from_aggregate"),
        ("cosine", -0.8, "opposes_aggregate"),
        ("nn_ratio", 0.0, "duplicate_of_peer"),
        ("norm_ratio", 0.0, "negligible_update"),
    ],
)
def test_each_strong_flag_quarantines_within_three_rounds(
    field: str, value: float, flag: str
) -> None:
    m = _mgr()
    states = []
    for r in range(3):
        (c,) = m.observe_round(r, [_obs(**{field: value})], float(r))
        assert flag in str(c.inputs["flags"]) and c.reason == "update_flagged"
        states.append(c.new_state)
    assert states[0] is TrustState.SUSPICIOUS
    assert states[-1] is TrustState.QUARANTINED
    with pytest.raises(TrustError, match="quarantined"):
        m.check_participation(D, 3.0)
    assert m.weight(D, 3.0) == 0.0
    assert m.record(D, 3.0).quarantined_round == 2


def test_one_false_flag_does_not_quarantine_an_established_device() -> None:
    m = _mgr()
    for r in range(10):
        m.observe_round(r, [_obs()], float(r))
    (c,) = m.observe_round(10, [_obs(distance_z=9.0)], 10.0)
    assert c.new_state is TrustState.ACTIVE
    (c,) = m.observe_round(11, [_obs(distance_z=9.0)], 11.0)
    assert c.new_state is not TrustState.QUARANTINED


def test_excluded_by_rule_is_weak_evidence() -> None:
    m = _mgr()
    (c,) = m.observe_round(0, [_obs(excluded=True)], 0.0)
    assert c.new_score < c.old_score and c.new_state is TrustState.ACTIVE


def test_attestation_failure_quarantines_at_once() -> None:
    m = _mgr()
    c = m.observe_attestation(D, False, 5.0, round_id=1, detail="PCR 7 mismatch")
    assert c.new_state is TrustState.QUARANTINED and c.reason == "attestation_failed"
    assert c.inputs["detail"] == "PCR 7 mismatch"
    with pytest.raises(TrustError):
        m.check_participation(D, 6.0)


def test_attestation_ok_is_positive() -> None:
    m = _mgr()
    c = m.observe_attestation(D, True, 1.0)
    assert c.new_score > c.old_score


@pytest.mark.parametrize("reason", ["bad_signature", "replay", "non_finite", "whatever"])
def test_rejections_lower_trust(reason: str) -> None:
    m = _mgr()
    c = m.observe_rejection(D, reason, 1.0, round_id=3)
    assert c.new_score < c.old_score and c.reason == f"rejected:{reason}"


def test_forged_signatures_quarantine_quickly() -> None:
    m = _mgr()
    m.observe_rejection(D, "bad_signature", 1.0)
    c = m.observe_rejection(D, "bad_signature", 2.0)
    assert c.new_state is TrustState.QUARANTINED


def test_alerts() -> None:
    m = _mgr()
    up = m.observe_alerts(D, confirmed=5, false_alarms=0, now=1.0)
    down = m.observe_alerts(D, confirmed=0, false_alarms=1000, now=2.0)
    assert up.new_score > up.old_score and down.new_score < down.old_score
    # capped: a thousand false alarms weigh no more than max_alert_evidence
    assert down.old_score - down.new_score < 0.4
    with pytest.raises(TrustError):
        m.observe_alerts(D, confirmed=-1, false_alarms=0, now=3.0)


def test_quarantined_update_must_not_be_observed() -> None:
    m = _mgr()
    m.observe_attestation(D, False, 0.0)
    with pytest.raises(TrustError, match="must not be aggregated"):
        m.observe_round(1, [_obs()], 1.0)


def test_duplicate_device_in_round_rejected() -> None:
    with pytest.raises(TrustError, match="twice"):
        _mgr().observe_round(1, [_obs(), _obs()], 1.0)


def _quarantine(m: TrustManager) -> None:
    m.observe_attestation(D, True, 0.0)
    for r in range(3):
        m.observe_round(r, [_obs(cosine=-1.0)], float(r))
    assert m.record(D, 3.0).state is TrustState.QUARANTINED


def _good(update: np.ndarray) -> CanaryResult:
    return CanaryResult(metric=0.9, baseline=0.9)


def _bad(update: np.ndarray) -> CanaryResult:
    return CanaryResult(metric=0.5, baseline=0.9)


def test_readmission_after_consecutive_good_replays() -> None:
    m = _mgr()
    _quarantine(m)
    u = np.ones(4)
    c1 = m.replay_quarantined(D, u, _good, 10.0)
    c2 = m.replay_quarantined(D, u, _bad, 11.0)  # resets the streak
    assert (c1.reason, c2.reason) == ("canary_pass", "canary_fail")
    reasons = [m.replay_quarantined(D, u, _good, 12.0 + i).reason for i in range(3)]
    assert reasons == ["canary_pass", "canary_pass", "readmitted"]
    r = m.record(D, 20.0)
    assert r.state is TrustState.SUSPICIOUS and r.score == pytest.approx(0.5)
    m.check_participation(D, 20.0)
    assert m.weight(D, 20.0) == pytest.approx(0.25)


def test_no_readmission_without_attestation() -> None:
    m = _mgr()
    m.observe_attestation(D, False, 0.0)
    for i in range(5):
        c = m.replay_quarantined(D, np.ones(3), _good, 1.0 + i)
    assert c.new_state is TrustState.QUARANTINED and c.reason == "canary_pass"
    m.observe_attestation(D, True, 9.0)
    assert m.record(D, 9.0).state is TrustState.QUARANTINED  # a good quote alone does not release
    c = m.replay_quarantined(D, np.ones(3), _good, 10.0)
    assert c.reason == "readmitted"


def test_replay_fails_closed() -> None:
    m = _mgr()
    _quarantine(m)

    def crash(update: np.ndarray) -> CanaryResult:
        raise RuntimeError("boom")

    def mutate(update: np.ndarray) -> CanaryResult:
        update[0] = 0.0  # the sandbox hands over a read-only copy
        return CanaryResult(1.0, 0.0)

    def wrong_type(update: np.ndarray) -> CanaryResult:
        return 1.0  # type: ignore[return-value]

    def nan_metric(update: np.ndarray) -> CanaryResult:
        return CanaryResult(float("nan"), 0.0)

    u = np.ones(3)
    for ev in (crash, mutate, wrong_type, nan_metric):
        c = m.replay_quarantined(D, u, ev, 10.0)
        assert c.reason == "canary_fail" and "error" in c.inputs
    assert u[0] == 1.0
    c = m.replay_quarantined(D, np.array([np.nan, 1.0]), _good, 11.0)
    assert c.reason == "canary_fail"


def test_replay_of_unquarantined_device_rejected() -> None:
    with pytest.raises(TrustError, match="not quarantined"):
        _mgr().replay_quarantined(D, np.ones(2), _good, 0.0)


def test_manual_release_needs_operator_and_reason() -> None:
    m = _mgr()
    _quarantine(m)
    with pytest.raises(TrustError):
        m.release(D, 5.0, operator="", reason="x")
    c = m.release(D, 5.0, operator="alice", reason="firmware reflashed")
    assert c.new_state is TrustState.SUSPICIOUS and c.inputs["operator"] == "alice"
    with pytest.raises(TrustError):
        m.release(D, 6.0, operator="alice", reason="again")


def test_gate_blocks_low_trust_before_quarantine() -> None:
    m = TrustManager(MemoryTrustStore(), TrustConfig(gate=0.55))
    m.observe_attestation(D, True, 0.0)
    m.observe_round(0, [_obs(cosine=-1.0)], 0.0)
    r = m.record(D, 1.0)
    assert r.state is TrustState.SUSPICIOUS
    with pytest.raises(TrustError, match="below the gate"):
        m.check_participation(D, 1.0)


def test_rate_limit_for_suspicious_devices() -> None:
    m = _mgr()
    for _ in range(100):
        m.admit_request(D, 0.0)  # active: not limited
    m.observe_round(0, [_obs(cosine=-1.0)], 0.0)
    assert m.record(D, 0.0).state is TrustState.SUSPICIOUS
    for _ in range(3):
        m.admit_request(D, 1.0)
    with pytest.raises(TrustError, match="rate limited"):
        m.admit_request(D, 1.0)
    with pytest.raises(TrustError, match="rate limited"):
        m.admit_request(D, 0.5)  # going back in time mints nothing
    m.admit_request(D, 61.0)  # one token refilled after 60 s


def test_bad_device_ids() -> None:
    m = _mgr()
    for bad in ("", "x" * 300, 5, None):
        with pytest.raises(TrustError):
            m.record(bad, 0.0)  # type: ignore[arg-type]


def test_policy_input() -> None:
    p = _mgr().policy_input(D, 0.0)
    assert p == {
        "trust_score": 0.75,
        "trust_state": "active",
        "quarantined": False,
        "attested_ok": False,  # until the first passing quote
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prior_alpha": 0.0},
        {"forgetting": 1.0},
        {"quarantine_below": 0.6},
        {"suspicious_below": 0.7, "active_above": 0.6},
        {"readmit_score": 1.0},
        {"readmit_after": 0},
        {"gate": float("nan")},
        {"bucket_capacity": 0.5},
        {"bucket_refill_per_s": 0.0},
    ],
)
def test_bad_config_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(TrustError):
        TrustConfig(**kwargs)  # type: ignore[arg-type]


def test_observe_updates_flags_clones_and_outliers() -> None:
    rng = np.random.default_rng(0)
    honest = 1.0 + 0.1 * rng.normal(size=(20, 8))
    clones = np.tile(honest.mean(axis=0) - 0.05, (3, 1))
    x = np.vstack([honest, clones, -5.0 * honest[:1], 20.0 + honest[:1], np.zeros((1, 8))])
    ids = [DeviceId(f"d{i}") for i in range(len(x))]
    obs = observe_updates(ids, x, np.median(x, axis=0))
    assert all(o.nn_ratio < 0.1 for o in obs[20:23])
    assert all(o.nn_ratio > 0.1 for o in obs[:20])
    assert obs[23].cosine < -0.5
    assert obs[24].distance_z > 10
    assert obs[25].norm_ratio == 0.0
    assert sum(o.distance_z > 3.5 for o in obs[:20]) == 0


def test_observe_updates_rejects_bad_input() -> None:
    x = np.ones((3, 2))
    ids = [DeviceId("a"), DeviceId("b"), DeviceId("c")]
    cases = [
        (ids[:2], x, np.ones(2), None),
        ([ids[0]] * 3, x, np.ones(2), None),
        (ids, x, np.ones(3), None),
        (ids, x.astype(int), np.ones(2), None),
        (ids, np.array([[np.nan, 1.0]] * 3), np.ones(2), None),
        (ids, x, np.ones(2), np.ones(2)),
        (ids[:1], x[:1], np.ones(2), None),
    ]
    for devs, upd, agg, rw in cases:
        with pytest.raises(TrustError):
            observe_updates(devs, upd, agg, rule_weights=rw)


def test_distance_evidence_is_graded() -> None:
    from ztfm.trust import update_evidence

    cfg = TrustConfig()
    _, small, flags = update_evidence(_obs(distance_z=3.6), cfg)
    _, full, _ = update_evidence(_obs(distance_z=7.0), cfg)
    _, huge, _ = update_evidence(_obs(distance_z=500.0), cfg)
    assert flags == ["far_from_aggregate"]
    assert 0 < small < 0.1 * cfg.strong_flag
    assert full == huge == cfg.strong_flag


def test_honest_non_iid_outlier_is_not_quarantined() -> None:
    """Measured on the SKAB fleet: an honest device whose data differs sits at z 3.5-5.7 with a
    positive cosine round after round; it must not be quarantined."""
    m = _mgr()
    for r, z in enumerate([4.7, 5.7, 3.0, 3.5, 4.1, 5.0, 4.4]):
        (c,) = m.observe_round(r, [_obs(distance_z=z, cosine=0.5)], float(r))
    assert c.new_state is not TrustState.QUARANTINED


def test_too_central_flag() -> None:
    m = _mgr()
    (c,) = m.observe_round(0, [_obs(distance_z=-5.0)], 0.0)
    assert "too_central" in str(c.inputs["flags"])


def test_sleeper_that_turns_is_quarantined_within_six_rounds() -> None:
    """Built trust does not shield a device that starts attacking: suspicious within 2 rounds,
    quarantined within 6 (one strong flag per round)."""
    m = _mgr()
    for r in range(10):
        m.observe_round(r, [_obs()], float(r))
    states = [m.observe_round(10 + r, [_obs(cosine=-0.9)], 10.0 + r)[0].new_state for r in range(6)]
    assert TrustState.SUSPICIOUS in states[:2]
    assert states[-1] is TrustState.QUARANTINED


def test_on_off_attacker_is_quarantined() -> None:
    """Alternating good and bad rounds does not keep a device above the quarantine line."""
    m = _mgr()
    state = TrustState.ACTIVE
    for r in range(14):
        bad = r % 2 == 0
        (c,) = m.observe_round(r, [_obs(cosine=-0.9 if bad else 0.9)], float(r))
        state = c.new_state
        if state is TrustState.QUARANTINED:
            break
    assert state is TrustState.QUARANTINED
