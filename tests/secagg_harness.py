"""A step-by-step SecAgg+ round whose messages tests can intercept and tamper with.

Shared by tests/unit/secagg (the ``make_round`` fixture) and tests/property: the root
conftest puts this folder on ``sys.path``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ztfm.crypto.kex import KexPrivateKey
from ztfm.crypto.signing import SigningKey, VerifyKey
from ztfm.secagg import (
    FixedPoint,
    SecAggClient,
    SecAggParams,
    SecAggServer,
    UnmaskRequest,
    UnmaskResponse,
)
from ztfm.secagg.driver import device_ids
from ztfm.types import DeviceId


@dataclass
class Harness:
    params: SecAggParams
    clients: dict[DeviceId, SecAggClient]
    server: SecAggServer
    inputs: dict[DeviceId, np.ndarray]
    codec: FixedPoint
    signing: dict[DeviceId, SigningKey]
    identities: dict[DeviceId, VerifyKey]
    server_key: KexPrivateKey
    log: dict[str, Any] = field(default_factory=dict)

    @property
    def ids(self) -> list[DeviceId]:
        return list(self.params.roster)

    def encoded(self, d: DeviceId) -> np.ndarray:
        return self.codec.encode(self.inputs[d])

    def run(
        self,
        *,
        skip: dict[str, set[DeviceId]] | None = None,
        tamper: dict[str, Callable[[Any], Any]] | None = None,
    ) -> np.ndarray:
        """Run all phases; ``skip[phase]`` devices stay silent from that phase on;
        ``tamper[phase]`` rewrites the list/dict of messages of that phase before delivery."""
        skip = skip or {}
        tamper = tamper or {}
        gone: set[DeviceId] = set()

        def alive(phase: str, d: DeviceId) -> bool:
            gone.update(skip.get(phase, set()))
            return d not in gone

        def t(phase: str, msgs: Any) -> Any:
            out = tamper[phase](msgs) if phase in tamper else msgs
            self.log[phase] = out
            return out

        adverts = t(
            "adverts", [c.advertise() for d, c in self.clients.items() if alive("adverts", d)]
        )
        dirs = t("dirs", self.server.receive_adverts(adverts))
        shares = t(
            "shares", [self.clients[d].share_keys(k) for d, k in dirs.items() if alive("shares", d)]
        )
        inbox = t("inbox", self.server.receive_shares(shares))
        masked = t(
            "masked",
            [
                self.clients[d].mask_input(b, self.encoded(d))
                for d, b in inbox.items()
                if alive("masked", d)
            ],
        )
        req = t("survivors", self.server.receive_masked(masked))
        confs = t(
            "confirm",
            [self.clients[d].confirm_survivors(req) for d in req.survivors if alive("confirm", d)],
        )
        ureqs = t("unmask_req", self.server.receive_confirmations(confs))
        resps = t(
            "unmask", [self.clients[d].unmask(r) for d, r in ureqs.items() if alive("unmask", d)]
        )
        result = self.server.finalize(resps)
        self.log["result"] = result
        return self.codec.decode_sum(result.total, len(result.included))

    def expected(self, included: tuple[DeviceId, ...]) -> np.ndarray:
        return np.sum(
            [np.clip(self.inputs[d], -self.codec.clip, self.codec.clip) for d in included], axis=0
        )

    def with_server(self, **kw: Any) -> SecAggServer:
        """Replace the server by one built with ``kw`` (trust_transport, advert_checks)."""
        self.server = SecAggServer(self.params, self.identities, self.server_key, **kw)
        return self.server

    def assert_exact(self, total: np.ndarray, included: tuple[DeviceId, ...] | None = None) -> None:
        """``total`` is the clipped plaintext sum of ``included`` (default: the round's included
        devices) within the fixed-point error bound."""
        inc = self.log["result"].included if included is None else included
        assert np.abs(total - self.expected(inc)).max() <= self.codec.max_error(len(inc))

    def lie_in_unmask(self, liars: list[DeviceId], noise: np.random.Generator) -> None:
        """Each liar answers unmask requests with shares it shifted by independent random
        amounts (valid MACs, wrong values). A common constant shift can cancel in some Lagrange
        sums and yield the right secret, which the commitment then accepts, correctly."""
        for liar in liars:
            c = self.clients[liar]
            orig = c.unmask

            def lie(req: UnmaskRequest, c: Any = c, orig: Any = orig) -> UnmaskResponse:
                c._held = {
                    d: ((s + int(noise.integers(1, 2**62))) % (2**256 + 297), k)
                    for d, (s, k) in c._held.items()
                }
                return orig(req)

            c.unmask = lie


def build_round(
    n: int = 8,
    length: int = 16,
    seed: int = 7,
    *,
    round_id: int = 3,
    server: dict[str, Any] | None = None,
    **kw: Any,
) -> Harness:
    """``n`` devices with fresh keys and uniform(-1, 1) inputs, their clients and a server
    (built with ``server`` options); ``kw`` goes to ``SecAggParams.create``."""
    rng = np.random.default_rng(seed)
    ids = device_ids(n)
    signing = {d: SigningKey.from_seed(rng.bytes(32)) for d in ids}
    identities = {d: k.verify_key for d, k in signing.items()}
    skey = KexPrivateKey.generate(rng)
    params = SecAggParams.create(
        round_id=round_id,
        session=rng.bytes(16),
        devices=ids,
        length=length,
        server_key=skey.public,
        **kw,
    )
    clients = {d: SecAggClient(params, d, signing[d], identities, rng) for d in ids}
    srv = SecAggServer(params, identities, skey, **(server or {}))
    inputs = {d: rng.uniform(-1, 1, length) for d in ids}
    codec = FixedPoint(clip=1.0, max_inputs=n, bits=params.bits)
    return Harness(params, clients, srv, inputs, codec, signing, identities, skey)
