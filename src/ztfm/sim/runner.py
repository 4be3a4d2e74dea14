"""Run a whole fleet in one process: federated rounds, then local-only and centralised baselines
with the same detector, features and split, so the comparison is like for like."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ztfm.bundle import Bundle
from ztfm.coordinator.core import Coordinator, Eligibility, ReplyHook, RoundSettings
from ztfm.detect import make_detector
from ztfm.detect.base import BaseDetector
from ztfm.detect.stream import ScoreSmoother
from ztfm.device.agent import DeviceAgent, UpdateTransform
from ztfm.errors import RoundError
from ztfm.fl.messages import EvalReply, EvalTask
from ztfm.fl.params import Params
from ztfm.fl.strategy import FedAvg, Strategy
from ztfm.ledger import EntryKind
from ztfm.privacy.sparse import TopKCompressor
from ztfm.sim.attest import SoftAttestation, build_soft_attestation
from ztfm.sim.config import SimConfig
from ztfm.sim.fleet import DeviceSpec, Fleet, build_fleet
from ztfm.sim.release import FleetReleases
from ztfm.sim.scenario import Scenario, build_scenario
from ztfm.sim.secure import SecureRounds
from ztfm.transport.inproc import InProcessTransport, LatencyModel
from ztfm.trust import TrustState, quarantine_decisions
from ztfm.types import DeviceId

ROUND_PERIOD_S = 3600.0  # simulated time between round starts (one round an hour)


def make_local_model(cfg: SimConfig, n_features: int) -> BaseDetector:
    d = cfg.detector
    if d.name == "ae":
        return make_detector(
            "ae",
            n_features,
            hidden=tuple(d.hidden),
            lr=d.lr,
            batch_size=d.batch_size,
            whiten=d.whiten,
        )
    return make_detector(d.name, n_features)


def causal_smoother(window: int) -> Callable[[np.ndarray], np.ndarray] | None:
    """Moving average of the last ``window`` scores (only past rows), or None when off."""
    if window <= 1:
        return None
    return ScoreSmoother(window).transform


def rates(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """F1, FAR, MAR, precision and recall from confusion counts (1 = attack)."""

    def div(a: float, b: float) -> float:
        return float(a / b) if b else 0.0

    return {
        "f1": div(2 * tp, 2 * tp + fp + fn),
        "far": div(fp, fp + tn),
        "mar": div(fn, fn + tp),
        "precision": div(tp, tp + fp),
        "recall": div(tp, tp + fn),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def summarise(evals: dict[str, EvalReply], segments: dict[str, str]) -> dict[str, Any]:
    """Pooled (global), per-device and per-segment metrics from evaluation replies."""
    per_device = {}
    for dev, e in sorted(evals.items()):
        per_device[dev] = {
            **rates(e.tp, e.fp, e.fn, e.tn),
            "roc_auc": None if e.roc_auc < 0 else e.roc_auc,
        }

    def pooled(devs: list[str]) -> dict[str, Any]:
        c = [sum(getattr(evals[d], k) for d in devs) for k in ("tp", "fp", "fn", "tn")]
        aucs = [evals[d].roc_auc for d in devs if evals[d].roc_auc >= 0]
        return {**rates(*c), "roc_auc": float(np.mean(aucs)) if aucs else None}

    seg_devs: dict[str, list[str]] = {}
    for dev in evals:
        seg_devs.setdefault(segments[dev], []).append(dev)
    return {
        "global": pooled(sorted(evals)),
        "per_device": per_device,
        "per_segment": {s: pooled(sorted(v)) for s, v in sorted(seg_devs.items())},
    }


def security_metrics(
    scenario: Scenario, evals: Mapping[str, EvalReply], segments: Mapping[str, str], now: float
) -> dict[str, Any]:
    """Attackers, honest-only global metrics, trust scores, quarantined set and epsilon of one
    round (simulate's round record; networked runs add the same through ``sim.network``)."""
    out: dict[str, Any] = {}
    attackers = set(scenario.attackers)
    if attackers:
        honest = {d: e for d, e in evals.items() if d not in attackers}
        out["attackers"] = sorted(attackers)
        out["global_honest"] = summarise(honest, dict(segments))["global"]
    if scenario.trust is not None:
        recs = {d: scenario.trust.record(DeviceId(d), now) for d in sorted(segments)}
        out["trust"] = {d: round(r.score, 4) for d, r in recs.items()}
        out["quarantined"] = sorted(d for d, r in recs.items() if r.state is TrustState.QUARANTINED)
    if scenario.accountant is not None:
        out["epsilon"] = {d: round(e, 4) for d, e in scenario.accountant.epsilon_spent().items()}
    return out


@dataclass
class SimulationResult:
    metrics: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)


def build_agent(
    cfg: SimConfig,
    spec: DeviceSpec,
    index: int,
    n_features: int,
    transforms: list[UpdateTransform] | None = None,
) -> DeviceAgent:
    """The device agent for fleet member ``index``: the same in process and in its own process."""
    return DeviceAgent(
        spec.device_id,
        spec.segment,
        make_local_model(cfg, n_features),
        spec.data,
        rng=np.random.default_rng([cfg.seed, 1, index]),
        target_far=cfg.detector.target_far,
        threshold_margin=cfg.detector.threshold_margin,
        postprocess=causal_smoother(cfg.detector.smoothing),
        transforms=transforms,
        compressor=update_compressor(cfg),
    )


def update_compressor(cfg: SimConfig) -> TopKCompressor | None:
    """A device's per-device top-k upload (``[compression]`` without ``[secagg]``), else None:
    with ``[secagg]`` compression runs inside the secure round (shared coordinates)."""
    c = cfg.compression
    if c.keep_ratio >= 1.0 or cfg.secagg.enabled:
        return None
    return TopKCompressor(c.keep_ratio, c.value_bits, c.error_feedback, c.rounding)


def build_coordinator(
    cfg: SimConfig,
    n_features: int,
    events: Callable[[dict[str, Any]], None] | None = None,
    *,
    strategy: Strategy | None = None,
    eligibility: Sequence[Eligibility] = (),
    reply_hooks: Sequence[ReplyHook] = (),
) -> Coordinator:
    """The coordinator with the configured strategy, starting from the detector's initial model."""
    r = cfg.rounds
    return Coordinator(
        make_local_model(cfg, n_features).get_params(),
        strategy or FedAvg(fraction=r.fraction, min_devices=r.min_devices, server_lr=r.server_lr),
        RoundSettings(local_epochs=r.local_epochs, prox_mu=r.prox_mu, deadline_s=r.deadline_s),
        rng=np.random.default_rng([cfg.seed, 2]),
        events=events,
        eligibility=eligibility,
        reply_hooks=reply_hooks,
    )


class Simulation:
    """A fleet, its coordinator and the in-process transport, ready to run rounds."""

    def __init__(
        self, cfg: SimConfig, fleet: Fleet | None = None, ledger_path: Path | None = None
    ) -> None:
        """``ledger_path``: with attestation, keep the identity ledger in this SQLite file
        (default: in memory)."""
        self.cfg = cfg
        seed = cfg.seed
        self.now = 0.0
        self.scenario, self.fleet = build_scenario(
            cfg, fleet or build_fleet(cfg.fleet, cfg.detector), lambda: self.now
        )
        self.attackers = set(self.scenario.attackers)
        self.events: list[dict[str, Any]] = []
        self._trust_seen = 0
        nf = self.fleet.n_features
        self.agents = {
            d.device_id: build_agent(cfg, d, i, nf, self.scenario.transforms)
            for i, d in enumerate(self.fleet.devices)
        }
        self.segments = {d.device_id: d.segment for d in self.fleet.devices}
        sc = self.scenario
        gates = sc.eligibility()
        self.attestation: SoftAttestation | None = None
        self.releases: FleetReleases | None = None
        if cfg.attestation.backend == "soft":
            ids = [d.device_id for d in self.fleet.devices]
            pick = np.random.default_rng([seed, 12]).permutation(len(ids))
            tampered = {ids[i] for i in pick[: cfg.attestation.tampered]}
            # every model the devices load is a signed bundle on the ledger (sim/release.py)
            self.releases = FleetReleases(
                ids,
                seed=seed,
                architecture=cfg.detector.name,
                on_install=self._installed,
                path=ledger_path,
            )
            self.attestation = build_soft_attestation(
                [(d.device_id, d.segment) for d in self.fleet.devices],
                None,
                tampered,
                seed,
                -1.0,
                sc.trust,
                ledger=self.releases,
            )
            gates = [self.attestation.gate, *gates]
        self.coordinator = build_coordinator(
            cfg,
            nf,
            self.events.append,
            strategy=sc.strategy,
            eligibility=gates,
            reply_hooks=[sc.adversary] if sc.adversary is not None else [],
        )
        self.initial_params: Params = self.coordinator.params
        if self.releases is not None:
            self._release(0)
        for d in self.fleet.devices:
            self.coordinator.register(d.device_id, d.segment)
        n = cfg.network
        self.transport = InProcessTransport(
            self.agents,
            rng=np.random.default_rng([seed, 3]),
            latency=LatencyModel(
                base_s=n.base_s,
                straggler_prob=n.straggler_prob,
                straggler_factor=n.straggler_factor,
                failure_prob=n.failure_prob,
                uplink_bps=n.uplink_bps,
                downlink_bps=n.downlink_bps,
            ),
        )
        self.secure: SecureRounds | None = None
        if cfg.secagg.enabled:
            self.secure = SecureRounds(
                cfg, self.agents, self.coordinator, sc, self.transport.latency, self.events.append
            )

    # --- releases ---------------------------------------------------------------------------
    def _installed(self, device_id: str, bundle: Bundle) -> None:
        assert self.attestation is not None
        self.attestation.install(device_id, bundle)

    def _release(self, round_id: int) -> None:
        """The coordinator's current model as the next signed bundle; devices verify it."""
        assert self.releases is not None and self.attestation is not None
        bundle = self.releases.release(self.coordinator.params, round_id, self.now)
        self.attestation.allow_model(bundle.measurement())

    def _ledger_round(self, round_id: int, summary: Any, changes: list[dict[str, Any]]) -> None:
        """Round contributors, quarantine decisions and the new release, on the ledger."""
        assert self.releases is not None
        for body in quarantine_decisions(changes, round_id):
            self.releases.record(EntryKind.QUARANTINE_DECISION, body, self.now)
        if summary is not None:
            body = {
                "round": round_id,
                "contributors": sorted(summary.accepted),
                "rejected": dict(sorted(summary.rejected.items())),
            }
            self.releases.record(EntryKind.ROUND_CONTRIBUTORS, body, self.now)
            self._release(round_id)

    # --- federated ---------------------------------------------------------------------------
    def run_round(self, r: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.now = r * ROUND_PERIOD_S
        n_events = len(self.events)
        try:
            if self.secure is not None:
                traffic = self.secure.run_round(self.now)
            else:
                traffic = self.transport.run_round(self.coordinator, now=self.now)
            summary = traffic.summary
            failed = None
        except RoundError as exc:
            traffic, summary, failed = None, None, str(exc)
        t1 = time.perf_counter()
        evals = self.transport.run_eval(self.coordinator)
        t2 = time.perf_counter()
        rec: dict[str, Any] = {
            "round": r + 1,
            "model_version": self.coordinator.model_version,
            **summarise(evals, self.segments),
        }
        sc_log = self.scenario.trust_log
        self.events.extend({"event": "trust_change", **c} for c in sc_log[self._trust_seen :])
        if self.releases is not None:
            self._ledger_round(r + 1, summary, sc_log[self._trust_seen :])
        self._trust_seen = len(sc_log)
        excluded = {
            e["device"]: e["reason"]
            for e in self.events[n_events:]
            if e["event"] == "device_excluded"
        }
        rec["excluded"] = excluded
        self.scenario.after_round([d for d in self.segments if d not in excluded])
        rec.update(self._security_metrics(evals))
        if self.secure is not None:
            rec["secagg"] = self.secure.last
        if traffic is not None and summary is not None:
            rec.update(
                {
                    "accepted": list(summary.accepted),  # type: ignore[attr-defined]
                    "rejected": dict(summary.rejected),  # type: ignore[attr-defined]
                    "bytes_up": traffic.bytes_up,
                    "bytes_down": traffic.bytes_down,
                    "wall_s": {**traffic.wall_s, "evaluate": t2 - t1},
                }
            )
        else:
            rec.update(
                {
                    "accepted": [],
                    "rejected": {},
                    "failed": failed,
                    "bytes_up": {},
                    "bytes_down": {},
                    "wall_s": {"round": t1 - t0, "evaluate": t2 - t1},
                }
            )
        return rec

    def _security_metrics(self, evals: dict[str, EvalReply]) -> dict[str, Any]:
        return security_metrics(self.scenario, evals, self.segments, self.now)

    # --- baselines ---------------------------------------------------------------------------
    def _evaluate_params(self, params_for: Callable[[str], Params]) -> dict[str, EvalReply]:
        return {
            dev: agent.evaluate(EvalTask(0, 0, params_for(dev), b""))
            for dev, agent in sorted(self.agents.items())
        }

    def total_epochs(self) -> int:
        return self.cfg.rounds.rounds * self.cfg.rounds.local_epochs

    def local_only(self) -> dict[str, Any]:
        """Each device trains alone, from the same start, for the same number of epochs."""
        params: dict[str, Params] = {}
        for i, (dev, agent) in enumerate(sorted(self.agents.items())):
            agent.model.set_params(self.initial_params)
            agent.model.train_epochs(
                agent.data.train,
                epochs=self.total_epochs(),
                rng=np.random.default_rng([self.cfg.seed, 4, i]),
            )
            params[dev] = agent.model.get_params()
        return summarise(self._evaluate_params(params.__getitem__), self.segments)

    def centralised(self) -> dict[str, Any]:
        """One model trained on every device's (locally scaled) training rows pooled together."""
        # each device's training rows in its own local feature space (scaler, whitening)
        x = np.concatenate(
            [
                agent.model.scale(agent.data.train)  # type: ignore[attr-defined]
                for agent in self.agents.values()
            ]
        )
        central = make_local_model(self.cfg, self.fleet.n_features)
        central.set_identity_scaler()
        central.set_params(self.initial_params)
        central.train_epochs(
            x, epochs=self.total_epochs(), rng=np.random.default_rng([self.cfg.seed, 5])
        )
        params = central.get_params()
        return summarise(self._evaluate_params(lambda _dev: params), self.segments)

    def flag_everything(self) -> dict[str, Any]:
        tp = sum(int(a.data.test_y.sum()) for a in self.agents.values())
        fp = sum(int((a.data.test_y == 0).sum()) for a in self.agents.values())
        return {**rates(tp, fp, 0, 0), "roc_auc": 0.5}


def run_simulation(
    cfg: SimConfig,
    *,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    fleet: Fleet | None = None,
    ledger_path: Path | None = None,
) -> SimulationResult:
    """Federated rounds plus the baselines; returns everything ``metrics.json`` holds."""
    t_start = time.perf_counter()
    sim = Simulation(cfg, fleet, ledger_path)
    t_built = time.perf_counter()
    rounds = []
    for r in range(cfg.rounds.rounds):
        rec = sim.run_round(r)
        rounds.append(rec)
        if on_round is not None:
            on_round(rec)
    t_fed = time.perf_counter()
    comparison: dict[str, Any] = {
        "federated": rounds[-1]["global"],
        "federated_per_segment": rounds[-1]["per_segment"],
    }
    if cfg.compare.local_only:
        lo = sim.local_only()
        comparison["local_only"] = lo["global"]
        comparison["local_only_per_segment"] = lo["per_segment"]
    if cfg.compare.centralised:
        ce = sim.centralised()
        comparison["centralised"] = ce["global"]
        comparison["centralised_per_segment"] = ce["per_segment"]
    comparison["flag_everything"] = sim.flag_everything()
    t_end = time.perf_counter()
    ups = [sum(r["bytes_up"].values()) / max(1, len(r["bytes_up"])) for r in rounds]
    downs = [sum(r["bytes_down"].values()) / max(1, len(r["bytes_down"])) for r in rounds]
    per_round_up = float(np.mean(ups)) if ups else 0.0
    per_round_down = float(np.mean(downs)) if downs else 0.0
    rounds_per_week = 7 * 24 * 3600 / ROUND_PERIOD_S
    metrics: dict[str, Any] = {
        "ztfm_simulate_version": 1,
        "config": cfg.to_dict(),
        "dataset": sim.fleet.dataset,
        "has_signal": sim.fleet.has_signal,
        "n_devices": len(sim.fleet.devices),
        "n_features": sim.fleet.n_features,
        "n_params": int(sum(p.size for p in sim.initial_params)),
        "devices": [
            {
                "id": d.device_id,
                "segment": d.segment,
                "source": d.source,
                "train_rows": len(d.data.train),
                "test_rows": len(d.data.test_x),
                "test_attack_rows": int(d.data.test_y.sum()),
            }
            for d in sim.fleet.devices
        ],
        "rounds": rounds,
        "comparison": comparison,
        "bandwidth": {
            "mean_bytes_up_per_device_per_round": per_round_up,
            "mean_bytes_down_per_device_per_round": per_round_down,
            "round_period_s": ROUND_PERIOD_S,
            "bytes_up_per_device_per_week": per_round_up * rounds_per_week,
            "bytes_down_per_device_per_week": per_round_down * rounds_per_week,
        },
        "wall_s": {
            "build_fleet": t_built - t_start,
            "federated": t_fed - t_built,
            "baselines": t_end - t_fed,
            "total": t_end - t_start,
        },
        "event_counts": dict(Counter(e["event"] for e in sim.events)),
        **({"ledger": sim.releases.summary()} if sim.releases is not None else {}),
    }
    return SimulationResult(metrics, sim.events)
