"""The aggregation server side of SecAgg+ rounds, shared by ``ztfm simulate`` and the network.

* ``SecureAggregator`` holds what does not change between rounds: the settings, the group draw
  (committed before any update exists), one ``GroupServer`` (a ``SecAggServer`` and the round's
  ``UpdateCodec``) per group, and the step: the mean of the one sum, or the ``[robust]`` rule
  over group means after each group sum's norm check. Only that step reaches the
  ``Coordinator`` (``close_secure_round``).
* ``SecurePhases`` runs one round's SecAgg+ phases over pull/push transport (the
  ``CoordinatorService``): for each phase it hands out one encoded message per live device,
  takes each device's reply (checked to be that device's message of that phase), and at the
  phase deadline moves every group on. A device that misses a phase is a dropout of the
  protocol; a group that keeps fewer than its threshold aborts with a one-line reason.

``sim.secure`` drives the same objects in process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ztfm.crypto.kex import KexPrivateKey
from ztfm.crypto.prg import MaskExpander
from ztfm.crypto.signing import VerifyKey
from ztfm.errors import AggregationError, CryptoError, RoundError, SecAggError, UpdateRejected
from ztfm.fl import codec as fl_codec
from ztfm.fl.messages import EndorsedKey, SecureRoundConfig
from ztfm.privacy.compress import k_for_ratio
from ztfm.privacy.noise import DistributedGaussian
from ztfm.robust import make_aggregator
from ztfm.robust.base import Aggregator
from ztfm.robust.groups import aggregate_group_sums, assign_groups
from ztfm.secagg import SecAggParams, SecAggServer, UpdateCodec
from ztfm.secagg.codec import decode_message, encode_message
from ztfm.secagg.graph import default_degree
from ztfm.secagg.messages import (
    AdvertiseKeys,
    MaskedInput,
    SecAggResult,
    ShareKeys,
    SurvivorsConfirmation,
    UnmaskResponse,
)
from ztfm.trust import TrustChange, TrustManager, TrustState, observe_groups
from ztfm.types import DeviceId

NOISE_TAIL = 4.0  # noise allowance of the group-sum norm check: sigma * (sqrt(d) + NOISE_TAIL)
PROTOCOL_PHASES = ("advertise", "share", "mask", "confirm", "unmask")
_REPLY_TYPE: dict[str, type[Any]] = {
    "advertise": AdvertiseKeys,
    "share": ShareKeys,
    "mask": MaskedInput,
    "confirm": SurvivorsConfirmation,
    "unmask": UnmaskResponse,
}


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


@dataclass(frozen=True, slots=True)
class SecureSettings:
    """The ``[secagg]``, ``[compression]`` and ``[privacy]`` values the server side needs."""

    clip_norm: float
    group_size: int = 0
    neighbours: int = 0
    threshold: float = 0.0
    min_survivors: float = 0.0
    bits: int = 32
    keep_ratio: float = 1.0
    rounding: str = "stochastic"
    noise: str = "distributed"  # distributed | central
    noise_multiplier: float = 0.0
    aggregator: str = "mean"
    f: int = 0
    min_devices: int = 2
    server_lr: float = 1.0
    # True where every device message arrives signed by the device key over an authenticated
    # channel (the networked coordinator): the SecAgg server then skips its own MACs
    trust_transport: bool = False


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
        *,
        trust_transport: bool = False,
    ) -> None:
        self.params = params
        self.codec = codec
        self.expander = expander
        self.server = SecAggServer(
            params, identities, server_key, expander, trust_transport=trust_transport
        )
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

    def take_result(self, total: np.ndarray, result: SecAggResult) -> None:
        self.total = total
        self.included = tuple(result.included)
        for dev in result.dropped:
            self.dropped.setdefault(dev, "dropped out (left out of the sum)")
        for dev, why in result.rejected.items():
            self.dropped.setdefault(dev, f"rejected by secure aggregation: {why}")


class SecureAggregator:
    """The server side of ``[secagg]`` rounds for a model of ``length`` parameters.

    ``rng`` draws the groups, each group's server key and session and the central noise (in
    that order, so a networked run draws what ``ztfm simulate`` draws for the same seed)."""

    def __init__(self, settings: SecureSettings, length: int, rng: np.random.Generator) -> None:
        self.settings = settings
        self.length = length
        self.rng = rng
        self.keep = k_for_ratio(length, settings.keep_ratio) if settings.keep_ratio < 1 else 0
        self.aggregator: Aggregator | None = None
        if settings.group_size > 0:
            name = settings.aggregator
            params = {"f": settings.f} if name not in ("mean", "fedavg") else {}
            self.aggregator = make_aggregator(name, **params)
        self.last: dict[str, Any] = {}
        # group-level trust (``[trust]`` with SecAgg groups): every member of a group inherits a
        # share of its group mean's observation against the robust aggregate (group testing)
        self.trust: TrustManager | None = None
        self.on_trust_change: Callable[[TrustChange], None] | None = None

    @property
    def sent(self) -> int:
        return self.keep or self.length

    def codec(self, n: int, min_survivors: int) -> UpdateCodec:
        s = self.settings
        noise = None
        if s.noise == "distributed" and s.noise_multiplier > 0:
            noise = DistributedGaussian(s.noise_multiplier, s.clip_norm, min_survivors)
        return UpdateCodec(
            length=self.length,
            clip_norm=s.clip_norm,
            max_inputs=n,
            keep=self.keep,
            bits=s.bits,
            noise=noise,
            rounding="stochastic" if s.rounding == "stochastic" else "nearest",
        )

    def groups(self, selected: Sequence[str]) -> list[tuple[str, ...]]:
        """The round's groups over the sorted ``selected`` devices (one group if group_size 0)."""
        if len(selected) < 2:
            raise RoundError(
                f"secure aggregation needs at least 2 devices, {len(selected)} selected"
            )
        if self.settings.group_size > 0:
            try:
                plan = assign_groups(len(selected), self.settings.group_size, self.rng)
            except AggregationError as exc:
                raise RoundError(str(exc)) from exc
            return [tuple(selected[i] for i in g) for g in plan.groups]
        return [tuple(selected)]

    def open_group(
        self, round_id: int, members: tuple[str, ...], identities: Mapping[DeviceId, VerifyKey]
    ) -> tuple[GroupOutcome, GroupServer | None]:
        """One SecAgg+ instance over ``members``: its outcome record and its server (None, with
        ``outcome.failed`` set, if the group cannot run)."""
        s = self.settings
        n = len(members)
        k = resolve_degree(s.neighbours, n)
        out = GroupOutcome(members, k, 0, 0)
        try:
            server_key = KexPrivateKey.generate(self.rng)
            params = SecAggParams.create(
                round_id=round_id,
                session=self.rng.bytes(16),
                devices=list(members),
                length=self.sent,
                server_key=server_key.public,
                bits=s.bits,
                degree=k,
                threshold=resolve_threshold(s.threshold, k),
                min_survivors=resolve_min_survivors(s.min_survivors, n),
            )
        except SecAggError as exc:
            out.failed = f"SecAgg group of {n}: {exc}"
            return out, None
        out.threshold, out.min_survivors = params.threshold, params.min_survivors
        codec = self.codec(n, params.min_survivors)
        expander = MaskExpander(params.length, params.dtype)
        ids = {DeviceId(d): identities[DeviceId(d)] for d in members}
        return out, GroupServer(
            params, codec, ids, server_key, expander, trust_transport=s.trust_transport
        )

    def finish(
        self,
        round_id: int,
        outcomes: Sequence[GroupOutcome],
        dropouts: Mapping[str, str] | None = None,
        now: float = 0.0,
    ) -> tuple[np.ndarray, tuple[str, ...]]:
        """The round's step and the devices it covers; ``RoundError`` (one line) if every group
        failed, too few inputs remain, or the robust rule refuses the group sums. With
        ``trust``, the group means are then observed against that step (at ``now``)."""
        good = [o for o in outcomes if o.failed is None and o.total is not None]
        included = tuple(sorted(d for o in good for d in o.included))
        self.last = {
            "groups": [o.to_dict() for o in outcomes],
            "failed_groups": sum(o.failed is not None for o in outcomes),
            "dropouts": dict(sorted((dropouts or {}).items())),
        }
        if not good:
            reason = outcomes[0].failed if len(outcomes) == 1 else "every SecAgg group failed"
            raise RoundError(f"round {round_id}: {reason}")
        if len(included) < self.settings.min_devices:
            raise RoundError(
                f"round {round_id}: {len(included)} inputs aggregated, need at least "
                f"{self.settings.min_devices}"
            )
        try:
            step = self.combine(good)
        except RoundError as exc:
            raise RoundError(f"round {round_id}: {exc}") from exc
        self._observe_groups(round_id, good, step, now)
        return step, included

    def _observe_groups(
        self, round_id: int, groups: Sequence[GroupOutcome], step: np.ndarray, now: float
    ) -> None:
        """Group testing: a group mean far from (or against) the robust step flags all of its
        members, each with evidence 1/size; groups are re-drawn every round, so an attacker is
        flagged every round and an honest device only when it shares a group with one. Groups
        that broke the clipping bound are observed too (their mean is far off by definition)."""
        if self.trust is None or self.aggregator is None or len(groups) < 2:
            return
        # a quarantined device takes no part in trust updates (observe_round refuses it); it
        # should not be in a round at all, but a stale gate must not end the run
        trust = self.trust
        quarantined = {
            d
            for g in groups
            for d in g.included
            if trust.record(DeviceId(d), now).state is TrustState.QUARANTINED
        }
        if quarantined:
            groups = [g for g in groups if not quarantined & set(g.included)]
            if len(groups) < 2:
                return
        members = [tuple(DeviceId(d) for d in g.included) for g in groups]
        means = np.stack([np.asarray(g.total) / len(g.included) for g in groups])
        observations = observe_groups(members, means, np.asarray(step))
        changes = self.trust.observe_round(round_id, observations, now)
        if self.on_trust_change is not None:
            for change in changes:
                self.on_trust_change(change)

    def combine(self, groups: Sequence[GroupOutcome]) -> np.ndarray:
        s = self.settings
        if self.aggregator is None:
            (g,) = groups
            assert g.total is not None
            m = len(g.included)
            mean = g.total / m
            if s.noise == "central" and s.noise_multiplier > 0:
                sigma = s.noise_multiplier * s.clip_norm
                mean = mean + self.rng.normal(0.0, sigma / m, mean.shape)
            return np.asarray(mean)
        sums = np.stack([g.total for g in groups if g.total is not None])
        sizes = np.array([len(g.included) for g in groups], dtype=np.float64)
        bound = self.member_bound(groups)
        try:
            agg = aggregate_group_sums(sums, sizes, self.aggregator, clip_norm=bound)
        except AggregationError as exc:
            raise RoundError(
                f"robust aggregation over group sums refused the round: {exc}"
            ) from exc
        self.last["rejected_groups"] = list(agg.rejected_groups)
        return np.asarray(agg.vector)

    def member_bound(self, groups: Sequence[GroupOutcome]) -> float:
        """Per-member norm bound for the group-sum check: clip_norm, plus the noise allowance
        of the largest group spread over its members (noise norm <= sigma (sqrt(d) + 4))."""
        s = self.settings
        if not (s.noise == "distributed" and s.noise_multiplier > 0):
            return s.clip_norm
        worst = 0.0
        d = self.sent
        for g in groups:
            m, size = max(1, g.min_survivors), len(g.included)
            sigma_sum = s.noise_multiplier * s.clip_norm * math.sqrt(size / m)
            worst = max(worst, sigma_sum * (math.sqrt(d) + NOISE_TAIL) / size)
        return s.clip_norm + worst


def _by_id(msgs: Mapping[DeviceId, bytes]) -> dict[str, bytes]:
    return {str(d): m for d, m in msgs.items()}


@dataclass(slots=True)
class _Group:
    outcome: GroupOutcome
    server: GroupServer | None
    pending: dict[str, bytes] = field(default_factory=dict)  # device -> its next message
    replies: dict[str, bytes] = field(default_factory=dict)  # this phase's replies


class SecurePhases:
    """One secure round over pull/push transport, phase by phase.

    Built after the ``train`` phase from the devices that trained (``keys``: device -> its
    SecAgg identity key endorsed by its device certificate, learned over its own authenticated
    channel); each device's ``advertise`` task relays its neighbours' endorsed keys, which the
    device checks itself against the fleet CA. ``tasks()`` gives this
    phase's payload per live device; ``receive`` takes one device's reply payload; ``advance``
    closes the phase (whoever has not replied is a dropout) and returns False once the last
    phase has run, when ``outcomes`` hold each group's sum or failure."""

    def __init__(
        self,
        aggregator: SecureAggregator,
        round_id: int,
        selected: Sequence[str],
        keys: Mapping[str, EndorsedKey],
    ) -> None:
        self.aggregator = aggregator
        self.round_id = round_id
        self.phase_index = 0
        self.groups: list[_Group] = []
        self.group_of: dict[str, _Group] = {}
        try:
            identities = {DeviceId(d): VerifyKey(k.key) for d, k in keys.items()}
        except CryptoError as exc:
            raise RoundError(f"a SecAgg identity key is invalid: {exc}") from exc
        for members in aggregator.groups(sorted(selected)):
            roster = tuple(d for d in members if d in keys)
            missing = {d: "no reply before the deadline (train)" for d in members if d not in keys}
            if len(roster) < 2:
                out = GroupOutcome(members, 0, 0, 0, dropped=missing)
                out.failed = f"SecAgg group of {len(members)}: {len(roster)} devices trained"
                self.groups.append(_Group(out, None))
                continue
            out, server = aggregator.open_group(round_id, roster, identities)
            out.dropped.update(missing)
            g = _Group(out, server)
            self.groups.append(g)
            if server is None:
                continue
            p = server.params
            for d in roster:
                nbrs = p.neighbours[DeviceId(d)]
                g.pending[d] = fl_codec.encode_secure_config(
                    SecureRoundConfig(
                        p.round_id,
                        p.session,
                        tuple(p.roster),
                        p.length,
                        p.server_key.raw,
                        p.bits,
                        p.degree,
                        p.threshold,
                        p.min_survivors,
                        {n: keys[n] for n in nbrs},
                    )
                )
                self.group_of[d] = g

    @property
    def phase(self) -> str:
        return PROTOCOL_PHASES[min(self.phase_index, len(PROTOCOL_PHASES) - 1)]

    @property
    def done(self) -> bool:
        return self.phase_index >= len(PROTOCOL_PHASES)

    def tasks(self) -> dict[str, bytes]:
        """This phase's message for each live device of a running group."""
        out: dict[str, bytes] = {}
        for g in self.groups:
            if g.outcome.failed is None:
                out.update(g.pending)
        return out

    def receive(self, device: str, payload: bytes) -> None:
        """``device``'s reply of this phase; ``UpdateReject`` if it is not that device's own
        well-formed message of this phase (the device then counts as not having replied)."""
        g = self.group_of.get(device)
        if g is None or device not in g.pending or g.outcome.failed is not None:
            raise UpdateRejected(f"{device} has no open secure-aggregation task")
        try:
            msg = decode_message(payload)
        except SecAggError as exc:
            raise UpdateRejected(f"malformed secure-aggregation message: {exc}") from exc
        want = _REPLY_TYPE[self.phase]
        if not isinstance(msg, want):
            raise UpdateRejected(f"expected {want.__name__} in phase {self.phase}")
        if msg.device != device:
            raise UpdateRejected(f"{device} sent a message in the name of {msg.device!r}")
        g.replies[device] = payload

    def advance(self) -> bool:
        """Close this phase in every running group; True while phases remain."""
        phase = self.phase
        for g in self.groups:
            if g.outcome.failed is not None or g.server is None:
                continue
            for d in sorted(set(g.pending) - set(g.replies)):
                g.outcome.dropped.setdefault(d, f"no reply before the deadline ({phase})")
            items = [g.replies[d] for d in sorted(g.replies)]
            g.pending, g.replies = {}, {}
            n = len(g.outcome.members)
            try:
                if phase == "advertise":
                    g.pending = _by_id(g.server.adverts(items))
                elif phase == "share":
                    g.pending = _by_id(g.server.shares(items))
                elif phase == "mask":
                    g.pending = _by_id(g.server.masked(items))
                elif phase == "confirm":
                    g.pending = _by_id(g.server.confirmations(items))
                else:
                    g.outcome.take_result(*g.server.finalize(items))
            except (SecAggError, CryptoError) as exc:
                g.outcome.failed = f"SecAgg group of {n} aborted: {exc}"
                g.pending = {}
        self.phase_index += 1
        return not self.done

    @property
    def outcomes(self) -> list[GroupOutcome]:
        return [g.outcome for g in self.groups]

    def rejected(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for g in self.groups:
            out.update(g.outcome.dropped)
            if g.outcome.failed is not None:
                for d in g.outcome.members:
                    out.setdefault(d, g.outcome.failed)
        return out


__all__ = [
    "GroupOutcome",
    "GroupServer",
    "SecureAggregator",
    "SecurePhases",
    "SecureSettings",
    "resolve_degree",
    "resolve_min_survivors",
    "resolve_threshold",
]
