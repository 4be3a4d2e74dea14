"""``ztfm.sim.network``: the scenario glue of networked runs, without a network."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ztfm.audit import MemoryAuditSink
from ztfm.errors import ConfigError
from ztfm.fl.messages import RoundTask
from ztfm.sim.attacks import ModelReplacement
from ztfm.sim.config import SimConfig, TrustSimConfig, from_mapping, load_config
from ztfm.sim.fleet import build_fleet
from ztfm.sim.network import (
    UNSAFE_ATTESTATION,
    check_network_config,
    check_network_scenario,
    coordinator_scenario,
    device_agent,
    file_device_transforms,
    secure_aggregator,
)
from ztfm.sim.scenario import build_scenario
from ztfm.sim.secure import secure_settings


def _cfg(**sections: object) -> SimConfig:
    cfg = SimConfig()
    cfg = replace(cfg, fleet=replace(cfg.fleet, devices=2))
    return replace(cfg, **sections)  # type: ignore[arg-type]


def test_soft_attestation_is_refused_over_the_network() -> None:
    cfg = _cfg(attestation=replace(SimConfig().attestation, backend="soft"))
    with pytest.raises(ConfigError, match="simulation-only"):
        check_network_config(cfg)
    check_network_config(_cfg())  # the default config is fine


def test_secagg_runs_over_the_network_but_injected_dropouts_do_not() -> None:
    # [secagg] runs SecAgg+ over gRPC (tests/integration/test_secagg_network.py); only the
    # simulated dropout injection is refused: over the network devices drop out for real
    check_network_config(_cfg(secagg=replace(SimConfig().secagg, enabled=True)))
    cfg = _cfg(secagg=replace(SimConfig().secagg, enabled=True, dropout_prob=0.1))
    with pytest.raises(ConfigError, match=r"\[secagg\] dropout_prob.*simulation-only"):
        check_network_config(cfg)


def test_file_device_clips_and_needs_the_fleet_size_for_its_noise_share() -> None:
    assert file_device_transforms(_cfg(), 0) == []  # no [privacy]: nothing to do
    cfg = _cfg(privacy=replace(SimConfig().privacy, clip_norm=0.5))
    with pytest.raises(ConfigError, match="--devices"):
        file_device_transforms(cfg, 0)
    (clip,) = file_device_transforms(cfg, 4)
    task = RoundTask(1, 0, [np.zeros(3, np.float32)], 1, 0.0, 10.0, b"n" * 16, {})
    out = clip([np.full(3, 10.0, np.float32)], task, np.random.default_rng(0))
    assert float(np.linalg.norm(out[0])) == pytest.approx(0.5, rel=1e-6)


def test_device_agent_outside_the_fleet_is_a_config_error() -> None:
    cfg = _cfg()
    fleet = build_fleet(cfg.fleet, cfg.detector)
    with pytest.raises(ConfigError, match="outside the fleet"):
        device_agent(cfg, fleet, 2)


def test_registration_exclusion_and_trust_changes_are_audited() -> None:
    cfg = _cfg(trust=TrustSimConfig(enabled=True))
    fleet = build_fleet(cfg.fleet, cfg.detector)
    audit = MemoryAuditSink()
    sc = coordinator_scenario(cfg, fleet, audit, lambda: 5.0)
    known = fleet.devices[0].device_id
    # a fleet device was attested by the scenario already: registering it changes nothing
    sc.on_event({"event": "device_registered", "device": known, "segment": "valve1"})
    assert audit.of("trust.changed") == []
    # a device the scenario does not know gets the same (unsafe) attestation, audited
    sc.on_event({"event": "device_registered", "device": "cam-9", "segment": "cams"})
    (change,) = audit.of("trust.changed")
    assert change["device"] == "cam-9" and change["reason"] == "attestation_ok"
    assert change["inputs"] == {"detail": UNSAFE_ATTESTATION}
    sc.on_event({"event": "device_excluded", "device": known, "reason": "trust 0.2 < gate"})
    assert audit.of("round.device_excluded") == [{"device": known, "reason": "trust 0.2 < gate"}]


def test_with_real_attestation_no_device_is_attested_by_fiat() -> None:
    """coordinator serve --attestation tpm: only TPM verdicts may move trust."""
    cfg = _cfg(trust=TrustSimConfig(enabled=True))
    fleet = build_fleet(cfg.fleet, cfg.detector)
    audit = MemoryAuditSink()
    sc = coordinator_scenario(cfg, fleet, audit, lambda: 5.0, assume_attested=False)
    trust = sc.scenario.trust
    assert trust is not None
    assert all(trust.store.load(d.device_id) is None for d in fleet.devices)
    for device in (fleet.devices[0].device_id, "cam-9"):
        sc.on_event({"event": "device_registered", "device": device, "segment": "valve1"})
        assert trust.store.load(device) is None
    assert audit.of("trust.changed") == []
    assert sc.scenario.trust_log == []


def test_model_replacement_poisons_the_device_and_boosts_at_the_coordinator() -> None:
    """Both halves of the composite attack run over the network: the attacker's device process
    trains on label-flipped rows, the coordinator-side hook boosts its reply; with [secagg] the
    boost has no plaintext to act on, so the config is refused."""
    attacks = {"name": "model_replacement", "fraction": 0.5, "params": {"factor": 5.0}}
    cfg = replace(from_mapping({"attacks": attacks}), fleet=replace(SimConfig().fleet, devices=2))
    fleet = build_fleet(cfg.fleet, cfg.detector)
    scenario, poisoned = build_scenario(cfg, fleet, lambda: 0.0)
    (attacker,) = scenario.attackers
    assert scenario.adversary is not None
    assert isinstance(scenario.adversary.attack, ModelReplacement)
    assert scenario.adversary.attack.factor == 5.0
    for i, dev in enumerate(fleet.devices):
        agent = device_agent(cfg, fleet, i)
        grew = len(agent.data.train) > len(dev.data.train)
        assert grew == (dev.device_id == attacker)  # only the attacker's rows are poisoned
        assert len(agent.data.train) == len(poisoned.devices[i].data.train)
    cs = coordinator_scenario(cfg, fleet)
    assert cs.reply_hooks == [cs.scenario.adversary]
    check_network_scenario(cfg, fleet)
    secure = replace(cfg, secagg=replace(SimConfig().secagg, enabled=True))
    with pytest.raises(ConfigError, match=r"model_replacement.*simulation-only"):
        check_network_scenario(secure, fleet)


def test_the_networked_secagg_server_relies_on_signed_requests_not_its_own_macs() -> None:
    # over gRPC every device message is signed over its payload by the device key and bound to
    # its mTLS identity, so the coordinator's SecAgg server skips its own MACs there; simulate's
    # in-process server (no transport to rely on) keeps them
    cfg = from_mapping({"secagg": {"enabled": True}, "privacy": {"clip_norm": 0.5}}, load_config())
    net = secure_aggregator(cfg, 100)
    assert net is not None and net.settings.trust_transport
    assert not secure_settings(cfg).trust_transport
