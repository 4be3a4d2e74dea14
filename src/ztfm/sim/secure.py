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
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ztfm.coordinator.core import Coordinator, RoundSummary
from ztfm.crypto.kex import KexPrivateKey
from ztfm.crypto.prg import MaskExpander
from ztfm.crypto.signing import SigningKey, VerifyKey
from ztfm.device.agent import DeviceAgent
from ztfm.errors import AggregationError, RoundError, SecAggError, ZtfmError
from ztfm.fl import codec as fl_codec
from ztfm.fl.messages import RoundTask, UpdateReply
from ztfm.fl.strategy import apply_update
from ztfm.privacy.compress import ErrorFeedback, k_for_ratio
from ztfm.privacy.noise import DistributedGaussian
from ztfm.robust import make_aggregator
from ztfm.robust.base import Aggregator
from ztfm.robust.groups import aggregate_group_sums, assign_groups
from ztfm.secagg import SecAggClient, SecAggParams, SecAggServer, UpdateCodec
from ztfm.secagg.codec import Message, decode_message, encode_message
from ztfm.secagg.graph import default_degree
from ztfm.secagg.messages import (
    KeyDirectory,
    SecAggResult,
    ShareInbox,
    SurvivorsRequest,
    UnmaskRequest,
)
from ztfm.sim.config import SimConfig
from ztfm.sim.scenario import Adversary, Scenario
from ztfm.transport.inproc import LatencyModel, RoundTraffic
from ztfm.types import DeviceId

log = logging.getLogger(__name__)

PHASES = ("before_shares", "before_input", "before_unmask")
NOISE_TAIL = 4.0  # noise allowance of the group-sum norm check: sigma * (sqrt(d) + NOISE_TAIL)


def resolve_degree(neighbours: int, n: int) -> int:
    """k for a group of ``n``: the configured even k, or the default; the complete graph when
    k >= n - 1."""
    k = neighbours or default_degree(n)
    return min(k, n - 1)


def resolve_threshold(threshold: float, k: int) -> int:
    """t for degree ``k``: 0 = k/2 + 1; a fraction of k (never below k/2 + 1); or a count."""
    if threshold == 0:
        return 0
    if threshold < 1:
        return min(k, max(k // 2 + 1, math.ceil(threshold * k)))
    return int(threshold)


def resolve_min_survivors(min_survivors: float, n: int) -> int:
    """m for a group of ``n``: 0 = the threshold; a fraction of the group; or a count."""
    if min_survivors == 0:
        return 0
    if min_survivors < 1:
        return max(1, math.ceil(min_survivors * n))
    return int(min_survivors)


def drop_plan(devices: Sequence[str], prob: float, rng: np.random.Generator) -> dict[str, str]:
    """Device -> the phase it drops before, each phase independently with ``prob``."""
    out: dict[str, str] = {}
    for dev in devices:
        for phase in PHASES:
            if prob > 0 and rng.random() < prob:
                out[dev] = phase
                break
    return out


@dataclass(slots=True)
class SecureDevice:
    """The device end: its agent, identity key, residual, and this round's protocol client.

    The plaintext update lives here and nowhere else; ``deliver`` takes and returns encoded
    protocol messages only."""

    agent: DeviceAgent
    signing: SigningKey
    rng: np.random.Generator
    feedback: ErrorFeedback | None = None
    client: SecAggClient | None = None
    codec: UpdateCodec | None = None
    params: SecAggParams | None = None
    field_vector: np.ndarray | None = None

    def train(self, task_bytes: bytes) -> UpdateReply:
        task = fl_codec.decode(task_bytes)
        if not isinstance(task, RoundTask):
            raise RoundError(f"a device expected a round task, got {type(task).__name__}")
        return self.agent.train(task)

    def join(
        self,
        params: SecAggParams,
        codec: UpdateCodec,
        identities: Mapping[DeviceId, VerifyKey],
        expander: MaskExpander,
    ) -> bytes:
        """Start this round's SecAgg instance; returns the encoded key advertisement."""
        self.params, self.codec, self.field_vector = params, codec, None
        me = DeviceId(self.agent.device_id)
        self.client = SecAggClient(params, me, self.signing, identities, self.rng, expander)
        return encode_message(self.client.advertise())

    def prepare(self, update: np.ndarray, *, honest: bool) -> None:
        """Compress, clip, noise and encode the update (an attacker skips the L2 clip)."""
        if self.codec is None or self.params is None:
            raise SecAggError("device has not joined a round")
        c, seed = self.codec, self.params.digest
        if honest:
            self.field_vector = c.encode(
                update, round_seed=seed, rng=self.rng, feedback=self.feedback
            )
            return
        idx = c.indices(seed)
        values = update if idx is None else update[idx]
        if c.noise is not None:
            values = values + c.noise.noise(values.shape, self.rng)
        self.field_vector = c.fixed_point.encode(values, c.rounding, rng=self.rng)

    def deliver(self, data: bytes) -> bytes:
        """One server message in, this device's encoded answer out (``SecAggError`` = abort)."""
        if self.client is None:
            raise SecAggError("device has not joined a round")
        msg = decode_message(data)
        out: Message
        if isinstance(msg, KeyDirectory):
            out = self.client.share_keys(msg)
        elif isinstance(msg, ShareInbox):
            if self.field_vector is None:
                raise SecAggError("no update to mask")
            out = self.client.mask_input(msg, self.field_vector)
        elif isinstance(msg, SurvivorsRequest):
            out = self.client.confirm_survivors(msg)
        elif isinstance(msg, UnmaskRequest):
            out = self.client.unmask(msg)
        else:
            raise SecAggError(f"a device does not accept {type(msg).__name__}")
        return encode_message(out)


class GroupServer:
    """The aggregation server of one group: takes encoded protocol messages, returns the group's
    unmasked (dense, float) sum and who it covers. It never holds a single device's update."""

    def __init__(
        self,
        params: SecAggParams,
        codec: UpdateCodec,
        identities: Mapping[DeviceId, VerifyKey],
        server_key: KexPrivateKey,
        expander: MaskExpander,
    ) -> None:
        self.params = params
        self.codec = codec
        self.server = SecAggServer(params, identities, server_key, expander)
        self.received: list[bytes] = []

    def _decode(self, items: Iterable[bytes]) -> list[Any]:
        out = []
        for data in items:
            self.received.append(data)
            out.append(decode_message(data))
        return out

    def adverts(self, items: Iterable[bytes]) -> dict[DeviceId, bytes]:
        dirs = self.server.receive_adverts(self._decode(items))
        return {d: encode_message(m) for d, m in dirs.items()}

    def shares(self, items: Iterable[bytes]) -> dict[DeviceId, bytes]:
        boxes = self.server.receive_shares(self._decode(items))
        return {d: encode_message(m) for d, m in boxes.items()}

    def masked(self, items: Iterable[bytes]) -> dict[DeviceId, bytes]:
        req = self.server.receive_masked(self._decode(items))
        data = encode_message(req)
        return dict.fromkeys(req.survivors, data)

    def confirmations(self, items: Iterable[bytes]) -> dict[DeviceId, bytes]:
        reqs = self.server.receive_confirmations(self._decode(items))
        return {d: encode_message(m) for d, m in reqs.items()}

    def finalize(self, items: Iterable[bytes]) -> tuple[np.ndarray, SecAggResult]:
        result = self.server.finalize(self._decode(items))
        total = self.codec.decode(result.total, len(result.included), round_seed=self.params.digest)
        return total, result


@dataclass(slots=True)
class GroupOutcome:
    members: tuple[str, ...]
    degree: int
    threshold: int
    min_survivors: int
    included: tuple[str, ...] = ()
    total: np.ndarray | None = None
    failed: str | None = None
    dropped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "members": len(self.members),
            "k": self.degree,
            "t": self.threshold,
            "min_survivors": self.min_survivors,
            "included": len(self.included),
            "failed": self.failed,
        }


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
        keyring = np.random.default_rng([seed, 22])
        self.devices: dict[str, SecureDevice] = {}
        for i, (dev, agent) in enumerate(sorted(agents.items())):
            fb = ErrorFeedback(d) if cfg.compression.error_feedback else None
            self.devices[dev] = SecureDevice(
                agent,
                SigningKey.from_seed(keyring.bytes(32)),
                np.random.default_rng([seed, 21, i]),
                fb if cfg.compression.keep_ratio < 1 else None,
            )
        self.identities: dict[DeviceId, VerifyKey] = {
            DeviceId(dev): sd.signing.verify_key for dev, sd in self.devices.items()
        }
        self.length = d
        self.keep = (
            k_for_ratio(d, cfg.compression.keep_ratio) if cfg.compression.keep_ratio < 1 else 0
        )
        self.aggregator: Aggregator | None = None
        if cfg.secagg.group_size > 0:
            name = cfg.robust.aggregator
            params = {"f": cfg.robust.f} if name not in ("mean", "fedavg") else {}
            self.aggregator = make_aggregator(name, **params)
        self.last: dict[str, Any] = {}
        self.servers: list[GroupServer] = []  # the last round's servers (inspection, tests)

    # --- helpers -----------------------------------------------------------------------------
    def _emit(self, event: str, **fields: Any) -> None:
        if self._events is not None:
            self._events({"event": event, **fields})

    def _codec(self, n: int, min_survivors: int) -> UpdateCodec:
        p = self.cfg.privacy
        noise = None
        if p.noise == "distributed" and p.noise_multiplier > 0:
            noise = DistributedGaussian(p.noise_multiplier, p.clip_norm, min_survivors)
        return UpdateCodec(
            length=self.length,
            clip_norm=p.clip_norm,
            max_inputs=n,
            keep=self.keep,
            bits=self.cfg.secagg.bits,
            noise=noise,
            rounding="stochastic" if self.cfg.compression.rounding == "stochastic" else "nearest",
        )

    def _release(self, step: np.ndarray | None) -> None:
        """Close the coordinator's round: the aggregate step is the only thing it is handed."""
        coord = self.coordinator
        if step is not None:
            coord.params = apply_update(coord.params, coord.spec, step, self.cfg.rounds.server_lr)
            coord.model_version += 1
        coord.round = None
        coord.next_round_id += 1

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
            step, summary = self._secure_round(round_id, tasks, now, traffic)
        except ZtfmError as exc:
            self._release(None)
            reason = str(exc) if isinstance(exc, RoundError) else f"secure aggregation: {exc}"
            self._emit("round_failed", round=round_id, accepted=0, reason=reason, secure=True)
            raise RoundError(reason) from exc
        t1 = clock()
        self._release(step)
        self._emit(
            "round_closed",
            round=round_id,
            version=coord.model_version,
            accepted=list(summary.accepted),
            rejected=summary.rejected,
            secure=True,
        )
        traffic.summary = replace(summary, model_version=coord.model_version)
        traffic.wall_s["aggregate"] = clock() - t1
        traffic.wall_s["round"] = clock() - t0
        return traffic

    def _secure_round(
        self, round_id: int, tasks: Mapping[str, RoundTask], now: float, traffic: RoundTraffic
    ) -> tuple[np.ndarray, RoundSummary]:
        cfg = self.cfg
        clock = time.perf_counter
        selected = sorted(tasks)
        if len(selected) < 2:
            raise RoundError(
                f"secure aggregation needs at least 2 devices, {len(selected)} selected"
            )
        # groups are fixed before any update exists (the aggregator commits to the draw)
        if cfg.secagg.group_size > 0:
            try:
                plan = assign_groups(len(selected), cfg.secagg.group_size, self.rng)
            except AggregationError as exc:
                raise RoundError(str(exc)) from exc
            groups = [tuple(selected[i] for i in g) for g in plan.groups]
        else:
            groups = [tuple(selected)]
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
            sent = (self.keep or self.length) * cfg.secagg.bits // 8
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
        good = [o for o in outcomes if o.failed is None and o.total is not None]
        included = sorted(d for o in good for d in o.included)
        self.last = {
            "groups": [o.to_dict() for o in outcomes],
            "failed_groups": sum(o.failed is not None for o in outcomes),
            "dropouts": dict(sorted(drops.items())),
        }
        traffic.wall_s = {"local_training": train_s, "secure_aggregation": secure_s}
        if not good:
            reason = outcomes[0].failed if len(outcomes) == 1 else "every SecAgg group failed"
            raise RoundError(f"round {round_id}: {reason}")
        if len(included) < cfg.rounds.min_devices:
            raise RoundError(
                f"round {round_id}: {len(included)} inputs aggregated, need at least "
                f"{cfg.rounds.min_devices}"
            )
        try:
            step = self._combine(good)
        except RoundError as exc:
            raise RoundError(f"round {round_id}: {exc}") from exc
        summary = RoundSummary(
            round_id,
            self.coordinator.model_version,
            tuple(selected),
            tuple(included),
            {d: r for d, r in sorted(rejected.items()) if d not in included},
            tuple(sorted(d for d, r in rejected.items() if "deadline" in r)),
        )
        return step, summary

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
        cfg = self.cfg.secagg
        n = len(members)
        k = resolve_degree(cfg.neighbours, n)
        out = GroupOutcome(members, k, 0, 0)
        try:
            server_key = KexPrivateKey.generate(self.rng)
            params = SecAggParams.create(
                round_id=round_id,
                session=self.rng.bytes(16),
                devices=list(members),
                length=self.keep or self.length,
                server_key=server_key.public,
                bits=cfg.bits,
                degree=k,
                threshold=resolve_threshold(cfg.threshold, k),
                min_survivors=resolve_min_survivors(cfg.min_survivors, n),
            )
        except SecAggError as exc:
            out.failed = f"SecAgg group of {n}: {exc}"
            return out
        out.threshold, out.min_survivors = params.threshold, params.min_survivors
        codec = self._codec(n, params.min_survivors)
        expander = MaskExpander(params.length, params.dtype)
        ids = {DeviceId(d): self.identities[DeviceId(d)] for d in members}
        server = GroupServer(params, codec, ids, server_key, expander)
        self.servers.append(server)
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
            total, result = server.finalize(ask(unmask, "unmask"))
        except SecAggError as exc:
            out.failed = f"SecAgg group of {n} aborted: {exc}"
            return out
        out.total = total
        out.included = tuple(result.included)
        for dev in result.dropped:
            out.dropped.setdefault(dev, "dropped out (left out of the sum)")
        for dev, why in result.rejected.items():
            out.dropped.setdefault(dev, f"rejected by secure aggregation: {why}")
        return out

    def _combine(self, groups: Sequence[GroupOutcome]) -> np.ndarray:
        p = self.cfg.privacy
        if self.aggregator is None:
            (g,) = groups
            assert g.total is not None
            m = len(g.included)
            mean = g.total / m
            if p.noise == "central" and p.noise_multiplier > 0:
                sigma = p.noise_multiplier * p.clip_norm
                mean = mean + self.rng.normal(0.0, sigma / m, mean.shape)
            return np.asarray(mean)
        sums = np.stack([g.total for g in groups if g.total is not None])
        sizes = np.array([len(g.included) for g in groups], dtype=np.float64)
        bound = self._member_bound(groups)
        try:
            agg = aggregate_group_sums(sums, sizes, self.aggregator, clip_norm=bound)
        except AggregationError as exc:
            raise RoundError(
                f"robust aggregation over group sums refused the round: {exc}"
            ) from exc
        self.last["rejected_groups"] = list(agg.rejected_groups)
        return np.asarray(agg.vector)

    def _member_bound(self, groups: Sequence[GroupOutcome]) -> float:
        """Per-member norm bound for the group-sum check: clip_norm, plus the noise allowance
        of the largest group spread over its members (noise norm <= sigma (sqrt(d) + 4))."""
        p = self.cfg.privacy
        if not (p.noise == "distributed" and p.noise_multiplier > 0):
            return p.clip_norm
        worst = 0.0
        d = self.keep or self.length
        for g in groups:
            m, size = max(1, g.min_survivors), len(g.included)
            sigma_sum = p.noise_multiplier * p.clip_norm * math.sqrt(size / m)
            worst = max(worst, sigma_sum * (math.sqrt(d) + NOISE_TAIL) / size)
        return p.clip_norm + worst


__all__ = ["GroupServer", "SecureDevice", "SecureRounds", "drop_plan"]
