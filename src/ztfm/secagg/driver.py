"""In-process driver: every device and the server in one process, for simulations and benches.

It runs the real protocol (real keys, shares, AEAD, masks); only the transport is a function
call. Dropouts are injected per phase by input index.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ztfm.crypto.kex import KexPrivateKey
from ztfm.crypto.prg import MaskExpander
from ztfm.crypto.signing import SigningKey, VerifyKey
from ztfm.errors import SecAggError
from ztfm.secagg.client import SecAggClient
from ztfm.secagg.encoding import FixedPoint, FloatArray, Rounding
from ztfm.secagg.messages import SecAggResult, UIntArray
from ztfm.secagg.params import SecAggParams
from ztfm.secagg.server import SecAggServer
from ztfm.types import DeviceId


@dataclass(frozen=True, slots=True)
class Dropouts:
    """Input indices that vanish before a phase (each index in at most one set)."""

    before_shares: frozenset[int] = frozenset()  # advertised keys, then silent
    before_input: frozenset[int] = frozenset()  # sent shares, never a masked input
    before_unmask: frozenset[int] = frozenset()  # sent a masked input, then silent

    @classmethod
    def of(
        cls,
        before_shares: Collection[int] = (),
        before_input: Collection[int] = (),
        before_unmask: Collection[int] = (),
    ) -> Dropouts:
        out = cls(frozenset(before_shares), frozenset(before_input), frozenset(before_unmask))
        sets = (out.before_shares, out.before_input, out.before_unmask)
        if sum(len(s) for s in sets) != len(frozenset().union(*sets)):
            raise SecAggError("a device can drop out only once")
        return out

    @property
    def all(self) -> frozenset[int]:
        return self.before_shares | self.before_input | self.before_unmask


@dataclass(slots=True)
class SecAggRun:
    """What a simulated round produced, with per-party compute time if a timer was given."""

    total: FloatArray
    result: SecAggResult
    params: SecAggParams
    codec: FixedPoint
    client_seconds: dict[DeviceId, float] = field(default_factory=dict)
    server_seconds: float = 0.0
    bytes_up: dict[DeviceId, int] = field(default_factory=dict)
    bytes_down: dict[DeviceId, int] = field(default_factory=dict)


def device_ids(n: int) -> list[DeviceId]:
    return [DeviceId(f"dev-{i:05d}") for i in range(n)]


def simulate_round(
    inputs: Sequence[npt.ArrayLike],
    *,
    clip: float,
    rng: np.random.Generator,
    dropouts: Dropouts | None = None,
    bits: int = 32,
    degree: int = 0,
    threshold: int = 0,
    min_survivors: int = 0,
    headroom_bits: int = 4,
    rounding: Rounding = "nearest",
    encoded: Sequence[UIntArray] | None = None,
    timer: Callable[[], float] | None = None,
    trust_transport: bool = False,
    advert_checks: Literal["eager", "lazy"] = "lazy",
) -> SecAggRun:
    """Run one full SecAgg+ round over ``inputs`` (equal-length 1-D float vectors).

    ``encoded`` skips fixed-point encoding (inputs already in the field, e.g. quantised).
    ``timer`` (e.g. ``time.perf_counter``) turns on per-party compute timing.
    """
    n = len(inputs)
    if n < 2:
        raise SecAggError("secure aggregation needs at least 2 inputs")
    drops = dropouts or Dropouts()
    if any(not 0 <= i < n for i in drops.all):
        raise SecAggError("dropout index out of range")
    codec = FixedPoint(clip=clip, max_inputs=n, bits=bits, headroom_bits=headroom_bits)
    vecs = [np.asarray(x, dtype=np.float64) for x in inputs]
    length = vecs[0].shape[0] if vecs[0].ndim == 1 else -1
    if any(v.ndim != 1 or v.shape[0] != length for v in vecs) or length <= 0:
        raise SecAggError("inputs must be non-empty 1-D vectors of one length")
    if encoded is not None and (
        len(encoded) != n or any(e.dtype != codec.dtype or e.shape != (length,) for e in encoded)
    ):
        raise SecAggError("encoded inputs do not match the inputs")

    ids = device_ids(n)
    signing = [SigningKey.from_seed(rng.bytes(32)) for _ in range(n)]
    identities: dict[DeviceId, VerifyKey] = {
        d: k.verify_key for d, k in zip(ids, signing, strict=True)
    }
    server_key = KexPrivateKey.generate(rng)
    params = SecAggParams.create(
        round_id=0,
        session=rng.bytes(16),
        devices=ids,
        length=length,
        server_key=server_key.public,
        bits=bits,
        degree=degree,
        threshold=threshold,
        min_survivors=min_survivors,
    )
    clock = timer or (lambda: 0.0)
    client_s: dict[DeviceId, float] = dict.fromkeys(ids, 0.0)
    server_s = 0.0
    up: dict[DeviceId, int] = dict.fromkeys(ids, 0)
    down: dict[DeviceId, int] = dict.fromkeys(ids, 0)
    expander = MaskExpander(length, codec.dtype)

    def timed(dev: DeviceId, fn: Callable[[], Any]) -> Any:
        t0 = clock()
        out = fn()
        client_s[dev] += clock() - t0
        return out

    clients = {
        d: SecAggClient(params, d, signing[i], identities, rng, expander) for i, d in enumerate(ids)
    }
    server = SecAggServer(
        params,
        identities,
        server_key,
        expander,
        trust_transport=trust_transport,
        advert_checks=advert_checks,
    )
    idx = {d: i for i, d in enumerate(ids)}

    adverts = [timed(d, clients[d].advertise) for d in ids]
    for a in adverts:
        up[a.device] += a.wire_bytes()
    t0 = clock()
    dirs = server.receive_adverts(adverts)
    server_s += clock() - t0

    shares = []
    for d, kd in dirs.items():
        down[d] += kd.wire_bytes()
        if idx[d] in drops.before_shares:
            continue
        msg = timed(d, partial(clients[d].share_keys, kd))
        up[d] += msg.wire_bytes()
        shares.append(msg)
    t0 = clock()
    inboxes = server.receive_shares(shares)
    server_s += clock() - t0

    masked = []
    for d, box in inboxes.items():
        down[d] += box.wire_bytes()
        if idx[d] in drops.before_input:
            continue
        i = idx[d]

        def work(c: SecAggClient = clients[d], b: Any = box, i: int = i) -> Any:
            enc = encoded[i] if encoded is not None else codec.encode(vecs[i], rounding, rng=rng)
            return c.mask_input(b, enc)

        msg = timed(d, work)
        up[d] += msg.wire_bytes()
        masked.append(msg)
    t0 = clock()
    req = server.receive_masked(masked)
    server_s += clock() - t0

    confs = []
    for d in req.survivors:
        down[d] += req.wire_bytes()
        if idx[d] in drops.before_unmask:
            continue
        conf = timed(d, partial(clients[d].confirm_survivors, req))
        up[d] += conf.wire_bytes()
        confs.append(conf)
    t0 = clock()
    ureqs = server.receive_confirmations(confs)
    server_s += clock() - t0

    responses = []
    for d, ureq in ureqs.items():
        down[d] += ureq.wire_bytes()
        msg = timed(d, partial(clients[d].unmask, ureq))
        up[d] += msg.wire_bytes()
        responses.append(msg)
    t0 = clock()
    result = server.finalize(responses)
    total = codec.decode_sum(result.total, len(result.included))
    server_s += clock() - t0
    return SecAggRun(total, result, params, codec, client_s, server_s, up, down)


def run_secagg(
    inputs: Sequence[npt.ArrayLike],
    *,
    clip: float,
    rng: np.random.Generator,
    dropouts: Dropouts | None = None,
    **options: Any,
) -> FloatArray:
    """The securely aggregated sum of the inputs that survived (clipped to [-clip, clip] per
    coordinate, fixed-point encoded); see ``simulate_round`` for options and details."""
    return simulate_round(inputs, clip=clip, rng=rng, dropouts=dropouts, **options).total
