"""Security scenarios over the network: the glue between ``build_scenario`` (what ``ztfm
simulate`` runs) and the networked processes (``ztfm coordinator serve``, ``ztfm device run``,
``ztfm up``).

The scenario is built the same way on both sides of the wire, from the same config, seed and
fleet, so a networked run reaches the same models as the simulation:

* the coordinator process takes the strategy (``FedAvg`` with optional central noise, or
  ``DefendedFedAvg``: robust aggregator weighted by trust), the eligibility gates (trust, privacy
  budget), the reply hooks and the trust manager and accountant (``coordinator_scenario``);
* each device process takes its (possibly poisoned) training rows and its update transforms:
  clip and its distributed noise share (``device_agent``).

Model attacks that need the honest updates of the round (ALIE, IPM, min-max, scaling, ...) are
omniscient: they are played, exactly as in simulate, by the coordinator-side ``Adversary`` hook
that replaces the attackers' replies before aggregation. The attacker devices themselves train
honestly; data attacks (label flip, backdoor) poison the attacker's own training rows in its own
process. Model replacement is both halves: the device process trains on its poisoned rows and the
coordinator-side hook boosts its reply (so, like every model attack, not with ``[secagg]``).

Every exclusion from a round, every trust change and every quarantine decision goes to the audit
log with its reason.

With ``[secagg] enabled`` the rounds run SecAgg+ over the same two RPCs: the coordinator takes a
``SecureAggregator`` (``secure_aggregator``) seeded like simulate's, and each fleet device a
``SecureEndpoint`` (``secure_endpoint``) with simulate's SecAgg stream for its rank in the
fleet, so the unmasked sums, hence models and metrics, equal simulate's for the same seed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ztfm.audit import AuditSink
from ztfm.coordinator.core import Coordinator, Eligibility, ReplyHook
from ztfm.coordinator.secure import SecureAggregator
from ztfm.device.agent import DeviceAgent, UpdateTransform
from ztfm.device.secure import SecureEndpoint
from ztfm.errors import ConfigError
from ztfm.fl.messages import EvalReply
from ztfm.fl.strategy import Strategy
from ztfm.sim.config import SimConfig
from ztfm.sim.fleet import Fleet
from ztfm.sim.runner import build_agent, build_coordinator, security_metrics
from ztfm.sim.scenario import Scenario, build_scenario, privacy_transforms
from ztfm.sim.secure import attach_trust, device_rng, secure_settings, update_settings
from ztfm.trust import TrustState
from ztfm.types import DeviceId

UNSAFE_ATTESTATION = "UNSAFE: attestation not checked (--attestation none)"


def scenario_configured(cfg: SimConfig) -> bool:
    """True if the config asks for more than plain sample-weighted FedAvg."""
    p = cfg.privacy
    return (
        cfg.attacks.name != "none"
        or cfg.trust.enabled
        or p.clip_norm > 0
        or p.noise_multiplier > 0
        or cfg.robust.aggregator not in ("mean", "fedavg")
        or cfg.robust.equal_weights
    )


def check_network_config(cfg: SimConfig) -> None:
    """Raise ``ConfigError`` for what a networked run cannot do the way simulate does."""
    if cfg.attestation.backend != "none":
        raise ConfigError(
            f'[attestation] backend = "{cfg.attestation.backend}" is simulation-only (software '
            "TPMs inside one process); over the network use `ztfm coordinator serve --attestation`"
        )
    if cfg.secagg.enabled and cfg.secagg.dropout_prob > 0:
        raise ConfigError(
            "[secagg] dropout_prob is simulation-only (injected dropouts); over the network "
            "devices drop out for real: set it to 0"
        )


def check_network_scenario_secure(cfg: SimConfig, scenario: Scenario) -> None:
    """With ``[secagg]``, the coordinator never sees an update: an omniscient model attack
    (played on the coordinator's view of the updates) cannot run over the network."""
    if cfg.secagg.enabled and scenario.adversary is not None:
        raise ConfigError(
            f'[attacks] name = "{cfg.attacks.name}" with [secagg] is simulation-only: the model '
            "attack is played on the round's plaintext updates, which the networked coordinator "
            "never sees (data attacks such as label_flip run over the network)"
        )


def check_network_scenario(cfg: SimConfig, fleet: Fleet) -> None:
    """Raise ``ConfigError`` before any process starts if ``cfg`` cannot run on ``fleet``: the
    network limits, then every check simulate makes while building the scenario (attack and
    aggregator parameters, central noise with a robust rule or trust, ...)."""
    check_network_config(cfg)
    scenario, _ = build_scenario(cfg, fleet, lambda: 0.0)
    check_network_scenario_secure(cfg, scenario)


def device_agent(cfg: SimConfig, fleet: Fleet, index: int) -> DeviceAgent:
    """Fleet member ``index`` as ``ztfm simulate`` builds it: the same (for a data attacker,
    poisoned) training rows and the same update transforms (clip, distributed noise share)."""
    if not 0 <= index < len(fleet.devices):
        raise ConfigError(f"fleet index {index} is outside the fleet (0..{len(fleet.devices) - 1})")
    scenario, poisoned = build_scenario(cfg, fleet, lambda: 0.0)
    spec = poisoned.devices[index]
    return build_agent(cfg, spec, index, poisoned.n_features, scenario.transforms)


def secure_endpoint(cfg: SimConfig, fleet: Fleet, index: int) -> SecureEndpoint:
    """Fleet member ``index`` for ``[secagg]`` rounds: its agent (as ``device_agent``) behind a
    ``SecureEndpoint`` that draws from simulate's SecAgg stream for the device's rank in the
    sorted fleet (keys, Shamir coefficients, noise share, rounding), so the unmasked sums equal
    simulate's. That stream is known to whoever knows the seed: a device on its own telemetry
    uses ``file_secure_endpoint`` (operating-system randomness) instead."""
    agent = device_agent(cfg, fleet, index)
    rank = sorted(d.device_id for d in fleet.devices).index(agent.device_id)
    return SecureEndpoint(agent, update_settings(cfg), device_rng(cfg.seed, rank))


def file_secure_endpoint(cfg: SimConfig, agent: DeviceAgent) -> SecureEndpoint:
    """A device on its own telemetry in ``[secagg]`` rounds: fresh, unseeded randomness."""
    return SecureEndpoint(agent, update_settings(cfg), np.random.default_rng())


def secure_aggregator(
    cfg: SimConfig, n_params: int, scenario: Scenario | None = None
) -> SecureAggregator | None:
    """The coordinator's SecAgg+ server side (None without ``[secagg]``), seeded like
    simulate's, so group draws, server keys, sessions and central noise are the same; with the
    ``scenario``'s trust manager, group-level trust as in simulate."""
    if not cfg.secagg.enabled:
        return None
    # every device message reaches this server signed by the device key (request binding) over
    # mTLS, so the SecAgg server's own MACs would check the same thing a second time
    settings = dataclasses.replace(secure_settings(cfg), trust_transport=True)
    server = SecureAggregator(settings, n_params, np.random.default_rng([cfg.seed, 20]))
    attach_trust(server, scenario)
    return server


def file_device_transforms(cfg: SimConfig, fleet_size: int) -> list[UpdateTransform]:
    """Update transforms of a device on its own telemetry (``--telemetry``): the configured clip
    and noise share, sized like simulate's for a fleet of ``fleet_size`` devices. Such a device
    is real, so it never plays an attacker."""
    p = cfg.privacy
    if p.clip_norm <= 0:
        return []
    if fleet_size <= 0:
        raise ConfigError(
            "[privacy] on a --telemetry device needs the fleet size (--devices N): "
            "each device's noise share is sized to the expected participants"
        )
    r = cfg.rounds
    return privacy_transforms(cfg, max(r.min_devices, math.ceil(r.fraction * fleet_size)))


@dataclass(slots=True)
class CoordinatorScenario:
    """The coordinator's side of a scenario, plus the bookkeeping a networked run needs.

    Wire it as: ``coord = cs.coordinator(cfg, n_features)`` (events, strategy, eligibility and
    reply hooks wired; ``cs.devices`` tracks the coordinator's devices), then
    ``CoordinatorService(coord, ..., on_round=cs.on_round)``.
    ``rounds`` then holds, per round run (a failed round too, as in simulate), what simulate
    adds to its round record (``excluded`` and the security metrics).
    """

    scenario: Scenario
    audit: AuditSink | None
    clock: Callable[[], float]
    devices: Mapping[str, str] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    assume_attested: bool = True
    _round_start: int = 0
    _trust_seen: int = 0

    @property
    def strategy(self) -> Strategy:
        return self.scenario.strategy

    @property
    def eligibility(self) -> list[Eligibility]:
        return self.scenario.eligibility()

    @property
    def reply_hooks(self) -> list[ReplyHook]:
        return [self.scenario.adversary] if self.scenario.adversary is not None else []

    def coordinator(
        self, cfg: SimConfig, n_features: int, gates: Sequence[Eligibility] = ()
    ) -> Coordinator:
        """The coordinator simulate would build, wired to this scenario; ``gates`` run first
        (e.g. the attestation gate)."""
        coord = build_coordinator(
            cfg,
            n_features,
            self.on_event,
            strategy=self.strategy,
            eligibility=[*gates, *self.eligibility],
            reply_hooks=self.reply_hooks,
        )
        self.devices = coord.devices
        return coord

    def on_event(self, record: dict[str, Any]) -> None:
        """The coordinator's event sink (called under the service lock)."""
        self.events.append(record)
        event = record.get("event")
        if event == "device_registered" and self.assume_attested:
            self._assume_attested(str(record["device"]))
        elif event == "device_excluded":
            self._audit(
                "round.device_excluded",
                {"device": record["device"], "reason": record["reason"]},
            )
        elif event in ("round_closed", "round_failed"):
            self._flush_trust()

    def on_round(self, done_round: int, info: Mapping[str, Any]) -> None:
        """After round ``done_round`` is evaluated: book its privacy cost for every device that
        could have been sampled, then take the round's security metrics (as simulate does)."""
        self._flush_trust()
        evals: Mapping[str, EvalReply] = info["evals"]
        excluded = {
            str(e["device"]): str(e["reason"])
            for e in self.events[self._round_start :]
            if e.get("event") == "device_excluded"
        }
        self._round_start = len(self.events)
        self.scenario.after_round([d for d in sorted(self.devices) if d not in excluded])
        rec = {
            "excluded": excluded,
            **security_metrics(self.scenario, evals, self.devices, self.clock()),
        }
        self.rounds.append(rec)
        if "epsilon" in rec:
            self._audit("privacy.spent", {"round": done_round, "epsilon": rec["epsilon"]})

    def _assume_attested(self, device: str) -> None:
        """A device the scenario does not know yet (one on its own telemetry) gets the same
        attestation-by-fiat as the fleet's devices under ``--attestation none``."""
        trust = self.scenario.trust
        if trust is None or trust.store.load(DeviceId(device)) is not None:
            return
        change = trust.observe_attestation(
            DeviceId(device), True, self.clock(), detail=UNSAFE_ATTESTATION
        )
        self.scenario.trust_log.append(change.to_dict())
        self._flush_trust()

    def _flush_trust(self) -> None:
        log = self.scenario.trust_log
        for change in log[self._trust_seen :]:
            quarantined = (
                change["new_state"] == TrustState.QUARANTINED.value
                and change["old_state"] != TrustState.QUARANTINED.value
            )
            self._audit("trust.quarantined" if quarantined else "trust.changed", change)
        self._trust_seen = len(log)

    def _audit(self, event: str, fields: Mapping[str, object]) -> None:
        if self.audit is not None:
            self.audit.record(event, fields, self.clock())


def coordinator_scenario(
    cfg: SimConfig,
    fleet: Fleet,
    audit: AuditSink | None = None,
    clock: Callable[[], float] = lambda: 0.0,
    *,
    assume_attested: bool = True,
) -> CoordinatorScenario:
    """The coordinator's scenario for ``fleet`` (the one ``ztfm simulate`` would build).
    ``assume_attested=False`` when real attestation verdicts feed trust (``--attestation
    tpm``): no device is then counted as attested by fiat, at start or on registration."""
    check_network_config(cfg)
    scenario, _ = build_scenario(cfg, fleet, clock, assume_attested=assume_attested)
    check_network_scenario_secure(cfg, scenario)
    return CoordinatorScenario(scenario, audit, clock, assume_attested=assume_attested)
