"""Security scenarios of ``ztfm simulate``: poisoning attackers, robust aggregation, trust and
differential privacy, built from the ``[attacks]``, ``[robust]``, ``[trust]`` and ``[privacy]``
sections of the configuration.

* Attackers are a seeded share of the fleet. A data attack (``label_flip``, ``backdoor``) poisons
  an attacker's training rows with its own attack traffic before it trains honestly. A model
  attack (``alie``, ``ipm``, ``scaling``, ...) is played by a colluding adversary who, at the
  coordinator's door, replaces the attackers' updates with crafted ones after seeing the honest
  updates of the round (the omniscient case, the strongest). ``model_replacement`` is both: the
  attacker trains on label-flipped (or backdoored) rows, then the adversary boosts its update.
* Defences: a robust aggregator over the updates; per-device trust that weights aggregation,
  gates participation and quarantines; device-side clipping with distributed Gaussian noise (or
  central noise at the coordinator) and a per-device privacy accountant whose budget gates
  participation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ztfm.coordinator.defence import DefendedFedAvg
from ztfm.device.agent import DeviceData, UpdateTransform
from ztfm.errors import ConfigError, PrivacyBudgetExceeded
from ztfm.fl.messages import RoundTask, UpdateReply
from ztfm.fl.params import Params, ParamSpec
from ztfm.fl.strategy import FedAvg, Strategy
from ztfm.privacy.accounting import FleetAccountant
from ztfm.privacy.clip import clip_update
from ztfm.privacy.noise import DistributedGaussian
from ztfm.robust import make_aggregator
from ztfm.sim.attacks import DataAttack, UpdateAttack, make_attack
from ztfm.sim.config import SimConfig
from ztfm.sim.fleet import Fleet
from ztfm.trust import MemoryTrustStore, TrustConfig, TrustManager
from ztfm.types import DeviceId

UNLIMITED_EPSILON = 1e9  # accounting without a budget: report epsilon, never refuse


def choose_attackers(fleet: Fleet, fraction: float, seed: int) -> list[str]:
    ids = [d.device_id for d in fleet.devices]
    k = round(fraction * len(ids))
    if fraction > 0 and k == 0:
        k = 1
    rng = np.random.default_rng([seed, 6])
    return sorted(ids[i] for i in rng.choice(len(ids), size=k, replace=False)) if k else []


def poison_fleet(fleet: Fleet, attackers: Sequence[str], attack: DataAttack, seed: int) -> Fleet:
    """Attackers train on their own attack rows as if they were benign."""
    out = []
    for i, d in enumerate(fleet.devices):
        if d.device_id not in attackers:
            out.append(d)
            continue
        data = d.data
        rows = data.test_x[data.test_y == 1]
        kinds = None if data.test_kinds is None else data.test_kinds[data.test_y == 1]
        if len(rows) == 0:
            out.append(d)
            continue
        train = attack.poison(
            data.train, rows, np.random.default_rng([seed, 7, i]), attack_kinds=kinds
        )
        train = np.asarray(train, dtype=np.float32)
        out.append(
            replace(
                d, data=DeviceData(train, data.calib, data.test_x, data.test_y, data.test_kinds)
            )
        )
    return Fleet(fleet.dataset, tuple(out), fleet.n_features, fleet.has_signal)


@dataclass(slots=True)
class Adversary:
    """Colluding attackers: replaces their updates with crafted ones before aggregation."""

    attackers: frozenset[str]
    attack: UpdateAttack
    rng: np.random.Generator
    spec: ParamSpec | None = None

    def __call__(self, round_id: int, replies: Sequence[UpdateReply]) -> Sequence[UpdateReply]:
        bad = [r for r in replies if r.device_id in self.attackers]
        if not bad:
            return replies
        good = [r for r in replies if r.device_id not in self.attackers]
        spec = self.spec or ParamSpec.of(bad[0].delta)
        own = np.stack([spec.flatten(r.delta) for r in bad]).astype(np.float64)
        benign = (
            np.stack([spec.flatten(r.delta) for r in good]).astype(np.float64) if good else None
        )
        crafted = np.asarray(self.attack.craft(own, benign, self.rng), dtype=np.float64)
        forged = {
            r.device_id: replace(
                r, delta=spec.unflatten(crafted[i].astype(np.float32)), sparse=None
            )
            for i, r in enumerate(bad)
        }
        return [forged.get(r.device_id, r) for r in replies]


def privacy_transforms(cfg: SimConfig, expected_participants: int) -> list[UpdateTransform]:
    """Device side: clip the whole update to ``clip_norm``; add this device's noise share."""
    p = cfg.privacy
    if p.clip_norm <= 0 or cfg.secagg.enabled:  # [secagg]: clip and noise run in sim.secure
        return []
    noise = (
        DistributedGaussian(p.noise_multiplier, p.clip_norm, max(1, expected_participants))
        if p.noise == "distributed" and p.noise_multiplier > 0
        else None
    )

    def privatise(delta: Params, task: RoundTask, rng: np.random.Generator) -> Params:
        spec = ParamSpec.of(delta)
        flat = clip_update(spec.flatten(delta), p.clip_norm)
        if noise is not None:
            flat = noise.privatise(flat, rng)
        return spec.unflatten(np.asarray(flat, dtype=np.float32))

    return [privatise]


@dataclass(slots=True)
class Scenario:
    """Everything the security sections of the config add to a simulation."""

    attackers: list[str]
    strategy: Strategy
    adversary: Adversary | None
    trust: TrustManager | None
    accountant: FleetAccountant | None
    sampling_rate: float
    transforms: list[UpdateTransform]
    noise_multiplier: float = 0.0
    trust_log: list[dict[str, Any]] = field(default_factory=list)

    def eligibility(self) -> list[Callable[[str, float], str | None]]:
        gates: list[Callable[[str, float], str | None]] = []
        if isinstance(self.strategy, DefendedFedAvg) and self.trust is not None:
            gates.append(self.strategy.trust_gate)
        if self.accountant is not None and self.accountant.target_epsilon < UNLIMITED_EPSILON:
            acc, z, q = self.accountant, self.noise_multiplier, self.sampling_rate

            def budget(dev: str, now: float) -> str | None:
                try:
                    acc.check(DeviceId(dev), z, q)
                except PrivacyBudgetExceeded as exc:
                    return str(exc)
                return None

            gates.append(budget)
        return gates

    def after_round(self, eligible: Sequence[str]) -> None:
        """Book the round's privacy cost for every device that could have been sampled."""
        if self.accountant is not None:
            self.accountant.record_round(
                [DeviceId(d) for d in eligible], self.noise_multiplier, self.sampling_rate
            )


def central_noise(sigma_sum: float, seed: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """FedAvg combine step for central DP: the plain mean of the (clipped) updates plus Gaussian
    noise of std ``sigma_sum`` on their SUM, i.e. ``sigma_sum / m`` on the mean of the ``m``
    replies actually aggregated (fewer replies than planned get more noise, never less)."""
    rng = np.random.default_rng([seed, 9])

    def combine(deltas: np.ndarray, weights: np.ndarray) -> np.ndarray:
        m = deltas.shape[0]
        out: np.ndarray = deltas.mean(axis=0) + rng.normal(0.0, sigma_sum / m, deltas.shape[1])
        return out

    return combine


def build_scenario(
    cfg: SimConfig, fleet: Fleet, now: Callable[[], float], *, assume_attested: bool = True
) -> tuple[Scenario, Fleet]:
    """The scenario and the (possibly poisoned) fleet. With trust on and no attestation backend,
    every device starts with one passing attestation by fiat (``assume_attested``); a caller
    that feeds real TPM verdicts into trust (``coordinator serve --attestation tpm``) passes
    ``assume_attested=False`` so that only evidence moves the scores."""
    n = len(fleet.devices)
    attackers: list[str] = []
    adversary = None
    if cfg.attacks.name != "none":
        attack = make_attack(cfg.attacks.name, **cfg.attacks.params)
        attackers = choose_attackers(fleet, cfg.attacks.fraction, cfg.seed)
        # An attack may be both (model replacement: poisoned rows, then a boosted update).
        if isinstance(attack, DataAttack):
            fleet = poison_fleet(fleet, attackers, attack, cfg.seed)
        if isinstance(attack, UpdateAttack):
            adversary = Adversary(
                frozenset(attackers), attack, np.random.default_rng([cfg.seed, 8])
            )
        if not isinstance(
            attack, DataAttack | UpdateAttack
        ):  # pragma: no cover - make_attack returns one of the two
            raise ConfigError(f"attack {cfg.attacks.name!r} is neither a data nor a model attack")
    r, p = cfg.rounds, cfg.privacy
    dp = p.clip_norm > 0 and p.noise_multiplier > 0
    participants = max(r.min_devices, math.ceil(r.fraction * n))
    trust = None
    if cfg.trust.enabled:
        trust = TrustManager(MemoryTrustStore(), TrustConfig(gate=cfg.trust.gate))
        fiat = assume_attested and cfg.attestation.backend == "none"
        for d in fleet.devices if fiat else ():
            trust.observe_attestation(
                DeviceId(d.device_id), True, 0.0, detail="attestation not simulated in this run"
            )
    central = p.noise == "central" and dp
    defended = cfg.robust.aggregator not in ("mean", "fedavg") or trust is not None
    if central and defended:
        raise ConfigError(
            "[privacy] central noise is added to the plain mean; it is not "
            "supported with a robust aggregator or trust (use distributed noise)"
        )
    log: list[dict[str, Any]] = []
    weight_by_samples = not (cfg.robust.equal_weights or dp)
    strategy: Strategy
    if defended:
        name = cfg.robust.aggregator
        params = {"f": cfg.robust.f} if name not in ("mean", "fedavg") else {}
        strategy = DefendedFedAvg(
            make_aggregator(name, **params),
            fraction=r.fraction,
            min_devices=r.min_devices,
            server_lr=r.server_lr,
            weight_by_samples=weight_by_samples,
            trust=trust,
            now=now,
            on_trust_change=lambda change: log.append(change.to_dict()),
        )
    else:
        strategy = FedAvg(
            fraction=r.fraction,
            min_devices=r.min_devices,
            server_lr=r.server_lr,
            combine=central_noise(p.noise_multiplier * p.clip_norm, cfg.seed) if central else None,
            weight_by_samples=weight_by_samples,
        )
    accountant = None
    if dp:
        budget = p.epsilon_budget if p.epsilon_budget > 0 else UNLIMITED_EPSILON
        accountant = FleetAccountant(budget, p.delta, sampling="poisson", population=n)
    scenario = Scenario(
        attackers,
        strategy,
        adversary,
        trust,
        accountant,
        r.fraction,
        privacy_transforms(cfg, participants),
        noise_multiplier=p.noise_multiplier if dp else 0.0,
        trust_log=log,
    )
    return scenario, fleet
