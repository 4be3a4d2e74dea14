"""Secure rounds for ``ztfm simulate``: SecAgg+ with DP and compression, the coordinator sees sums.

With ``[secagg] enabled`` a round runs like this (every protocol message is encoded to bytes with
``ztfm.secagg.codec`` and decoded on the other side, so byte counts are real):

1. ``Coordinator.open_round`` selects devices through its gates (privacy budget, attestation)
   and issues the round tasks; each task is encoded and counted as bytes down.
2. The selected devices are split into SecAgg groups (``group_size`` 0 = one group) by a seeded
   draw the aggregator commits to before any update exists. Each group runs its own SecAgg+
   instance (X25519, Shamir, AES-CTR masks; ``ztfm.secagg``) with its own server key.
3. Each device trains (``DeviceAgent.train``, on the device object) and passes its update through
   ``UpdateCodec``: error-feedback residual -> the round's shared coordinates -> L2 clip ->
   its distributed Gaussian share -> fixed point. Only the masked field vector leaves it.
4. The aggregation server (``GroupServer``) sees protocol messages only and unmasks group sums.
5. ``group_size`` 0: the mean of the one sum is the step (FedAvg, equal weights). Otherwise each
   group sum's norm is checked against its members' declared clip (plus the noise allowance) and
   the ``[robust]`` aggregator runs over the group means. Only this step reaches the coordinator,
   which releases it as the next model version.

Dropouts: the network's failure/straggler draw and ``dropout_prob`` (per phase) remove devices;
those that drop after sending a masked input are unmasked with their neighbours' shares; when a
neighbourhood keeps fewer than ``t`` members the instance aborts. With one group the round then
fails with a ``RoundError``; with groups the failed group is left out (the round fails if fewer
than ``[rounds] min_devices`` inputs remain).

Model attacks (``alie``, ``scaling``, ...) are crafted on the attackers' own devices (from the
omniscient view of the round, the strongest case) and skip the L2 clip, as a real attacker
would; the fixed-point range still bounds each coordinate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ztfm.coordinator.core import Coordinator
from ztfm.coordinator.secure import (
    NOISE_TAIL,
    GroupOutcome,
    GroupServer,
    SecureAggregator,
    SecureSettings,
    resolve_degree,
    resolve_min_survivors,
    resolve_threshold,
)
from ztfm.crypto.signing import SigningKey, VerifyKey
from ztfm.device.agent import DeviceAgent
from ztfm.device.secure import SecureDevice, UpdateSettings
from ztfm.errors import RoundError, SecAggError, ZtfmError
from ztfm.fl import codec as fl_codec
from ztfm.fl.messages import RoundTask, UpdateReply
from ztfm.privacy.compress import ErrorFeedback
from ztfm.sim.config import SimConfig
from ztfm.sim.scenario import Adversary, Scenario
from ztfm.transport.inproc import LatencyModel, RoundTraffic
from ztfm.types import DeviceId

log = logging.getLogger(__name__)

PHASES = ("before_shares", "before_input", "before_unmask")


def secure_settings(cfg: SimConfig) -> SecureSettings:
    """The server side's settings from the simulation config."""
    s, c, p = cfg.secagg, cfg.compression, cfg.privacy
    return SecureSettings(
        clip_norm=p.clip_norm,
        group_size=s.group_size,
        neighbours=s.neighbours,
        threshold=s.threshold,
        min_survivors=s.min_survivors,
        bits=s.bits,
        keep_ratio=c.keep_ratio,
        rounding=c.rounding,
        noise=p.noise,
        noise_multiplier=p.noise_multiplier,
        aggregator=cfg.robust.aggregator,
        f=cfg.robust.f,
        min_devices=cfg.rounds.min_devices,
        server_lr=cfg.rounds.server_lr,
    )


def attach_trust(server: SecureAggregator, scenario: Scenario | None) -> None:
    """Group-level trust: the scenario's trust manager observes each round's group means, and
    its changes go to the scenario's trust log (then the audit log), as in plain rounds."""
    if scenario is None or scenario.trust is None:
        return
    server.trust = scenario.trust
    server.on_trust_change = lambda change: scenario.trust_log.append(change.to_dict())


def update_settings(cfg: SimConfig) -> UpdateSettings:
    """A device's own settings from the simulation config."""
    p, c = cfg.privacy, cfg.compression
    return UpdateSettings(
        clip_norm=p.clip_norm,
        noise_multiplier=p.noise_multiplier if p.noise == "distributed" else 0.0,
        keep_ratio=c.keep_ratio,
        bits=cfg.secagg.bits,
        rounding=c.rounding,
        error_feedback=c.error_feedback,
    )


def device_rng(seed: int, rank: int) -> np.random.Generator:
    """The SecAgg stream of the device at ``rank`` in the sorted fleet (keys, noise, rounding)."""
    return np.random.default_rng([seed, 21, rank])


def drop_plan(devices: Sequence[str], prob: float, rng: np.random.Generator) -> dict[str, str]:
    """Device -> the phase it drops before, each phase independently with ``prob``."""
    out: dict[str, str] = {}
    for dev in devices:
        for phase in PHASES:
            if prob > 0 and rng.random() < prob:
                out[dev] = phase
                break
    return out


class SecureRounds:
    """Runs ``[secagg]`` rounds against a ``Coordinator`` that is handed only the aggregate."""

    def __init__(
        self,
        cfg: SimConfig,
        agents: Mapping[str, DeviceAgent],
        coordinator: Coordinator,
        scenario: Scenario,
        latency: LatencyModel,
        events: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.coordinator = coordinator
        self.scenario = scenario
        self.latency = latency
        self._events = events
        seed = cfg.seed
        self.rng = np.random.default_rng([seed, 20])
        self.net_rng = np.random.default_rng([seed, 23])
        d = coordinator.spec.size
        self.server = SecureAggregator(secure_settings(cfg), d, self.rng)
        attach_trust(self.server, scenario)
        keyring = np.random.default_rng([seed, 22])
        self.devices: dict[str, SecureDevice] = {}
        for i, (dev, agent) in enumerate(sorted(agents.items())):
            fb = ErrorFeedback(d) if cfg.compression.error_feedback else None
            self.devices[dev] = SecureDevice(
                agent,
                SigningKey.from_seed(keyring.bytes(32)),
                device_rng(seed, i),
                fb if cfg.compression.keep_ratio < 1 else None,
            )
        self.identities: dict[DeviceId, VerifyKey] = {
            DeviceId(dev): sd.signing.verify_key for dev, sd in self.devices.items()
        }
        self.length = d
        self.keep = self.server.keep
        self.servers: list[GroupServer] = []  # the last round's servers (inspection, tests)

    @property
    def last(self) -> dict[str, Any]:
        """The last round's SecAgg record (groups, failures, dropouts, rejected groups)."""
        return self.server.last

    # --- helpers -----------------------------------------------------------------------------
    def _emit(self, event: str, **fields: Any) -> None:
        if self._events is not None:
            self._events({"event": event, **fields})

    # --- one round ---------------------------------------------------------------------------
    def run_round(self, now: float) -> RoundTraffic:
        """One secure round; raises ``RoundError`` (after closing the round) when it fails."""
        clock = time.perf_counter
        t0 = clock()
        coord = self.coordinator
        tasks = coord.open_round(now)
        round_id = coord.next_round_id  # the open round's id (advanced when it closes)
        traffic = RoundTraffic(round_id)
        try:
            step, included, rejected = self._secure_round(round_id, tasks, now, traffic)
        except ZtfmError as exc:
            reason = str(exc) if isinstance(exc, RoundError) else f"secure aggregation: {exc}"
            coord.abort_round(reason, now)
            raise RoundError(reason) from exc
        t1 = clock()
        summary = coord.close_secure_round(
            step, included, rejected, now, server_lr=self.cfg.rounds.server_lr
        )
        traffic.summary = replace(summary, model_version=coord.model_version)
        traffic.wall_s["aggregate"] = clock() - t1
        traffic.wall_s["round"] = clock() - t0
        return traffic

    def _secure_round(
        self, round_id: int, tasks: Mapping[str, RoundTask], now: float, traffic: RoundTraffic
    ) -> tuple[np.ndarray, tuple[str, ...], dict[str, str]]:
        cfg = self.cfg
        clock = time.perf_counter
        selected = sorted(tasks)
        # groups are fixed before any update exists (the aggregator commits to the draw)
        groups = self.server.groups(selected)
        drops = drop_plan(selected, cfg.secagg.dropout_prob, self.rng)
        # tasks down
        encoded = fl_codec.encode_many(dict(tasks))
        for dev in selected:
            traffic.bytes_down[dev] = len(encoded[dev])
            traffic.bytes_up[dev] = 0
        # local training (the device keeps its update)
        a = clock()
        replies: dict[str, UpdateReply] = {}
        rejected: dict[str, str] = {}
        deadline = cfg.rounds.deadline_s
        for dev in selected:
            try:
                replies[dev] = self.devices[dev].train(encoded[dev])
            except ZtfmError as exc:
                traffic.failed.append(dev)
                rejected[dev] = f"training failed: {exc}"
                continue
            sent = self.server.sent * cfg.secagg.bits // 8
            delay = self.latency.draw(self.net_rng, len(encoded[dev]), sent)
            if delay is None:
                traffic.failed.append(dev)
                rejected[dev] = "no reply (network failure)"
            elif delay > deadline:
                rejected[dev] = "no reply before the deadline"
            else:
                traffic.latency_s[dev] = delay
        train_s = clock() - a
        adversary = self.scenario.adversary
        crafted: set[str] = set()
        if adversary is not None:
            crafted = self._craft(adversary, round_id, replies)
        late = set(rejected)
        spec = self.coordinator.spec
        outcomes: list[GroupOutcome] = []
        self.servers = []
        b = clock()
        for members in groups:
            out = self._run_group(round_id, members, replies, crafted, late, drops, traffic, spec)
            outcomes.append(out)
            rejected.update({d: r for d, r in out.dropped.items() if d not in rejected})
            if out.failed is not None:
                self._emit(
                    "secagg_group_failed", round=round_id, members=list(members), reason=out.failed
                )
        secure_s = clock() - b
        traffic.wall_s = {"local_training": train_s, "secure_aggregation": secure_s}
        step, included = self.server.finish(round_id, outcomes, drops, now)
        return step, included, rejected

    def _craft(
        self, adversary: Adversary, round_id: int, replies: dict[str, UpdateReply]
    ) -> set[str]:
        """Model attackers replace their own updates (omniscient: they see the round's updates)."""
        ordered = [replies[d] for d in sorted(replies)]
        forged = adversary(round_id, ordered)
        bad = set(adversary.attackers) & set(replies)
        for r in forged:
            replies[r.device_id] = r
        return bad

    def _run_group(
        self,
        round_id: int,
        members: tuple[str, ...],
        replies: Mapping[str, UpdateReply],
        crafted: set[str],
        late: set[str],
        drops: Mapping[str, str],
        traffic: RoundTraffic,
        spec: Any,
    ) -> GroupOutcome:
        out, server = self.server.open_group(round_id, members, self.identities)
        if server is None:
            return out
        self.servers.append(server)
        params, codec = server.params, server.codec
        expander = server.expander
        up, down = traffic.bytes_up, traffic.bytes_down
        alive = set(members)

        def gone(dev: str, reason: str) -> None:
            alive.discard(dev)
            out.dropped.setdefault(dev, reason)

        def ask(msgs: Mapping[DeviceId, bytes], phase: str) -> list[bytes]:
            answers = []
            for dev, data in sorted(msgs.items()):
                down[dev] += len(data)
                if dev not in alive:
                    continue
                if drops.get(dev) == phase:
                    gone(dev, f"dropped out {phase.replace('_', ' ')}")
                    continue
                if phase == "before_input":
                    if dev in late or dev not in replies:
                        gone(dev, "no update before the deadline")
                        continue
                    delta = spec.flatten(replies[dev].delta).astype(np.float64)
                    self.devices[dev].prepare(delta, honest=dev not in crafted)
                try:
                    answer = self.devices[dev].deliver(data)
                except SecAggError as exc:
                    gone(dev, f"aborted: {exc}")
                    continue
                up[dev] += len(answer)
                answers.append(answer)
            return answers

        n = len(members)
        try:
            adverts = []
            for dev in members:
                data = self.devices[dev].join(params, codec, self.identities, expander)
                up[dev] += len(data)
                adverts.append(data)
            dirs = server.adverts(adverts)
            inboxes = server.shares(ask(dirs, "before_shares"))
            request = server.masked(ask(inboxes, "before_input"))
            unmask = server.confirmations(ask(request, "before_unmask"))
            out.take_result(*server.finalize(ask(unmask, "unmask")))
        except SecAggError as exc:
            out.failed = f"SecAgg group of {n} aborted: {exc}"
        return out


__all__ = [
    "NOISE_TAIL",
    "GroupOutcome",
    "GroupServer",
    "SecureDevice",
    "SecureRounds",
    "drop_plan",
    "resolve_degree",
    "resolve_min_survivors",
    "resolve_threshold",
    "secure_settings",
    "update_settings",
]
