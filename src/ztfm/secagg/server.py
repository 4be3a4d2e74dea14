"""The SecAgg+ server side as a pure state machine: it routes messages, tracks who is still in,
and finally reconstructs the secrets it needs and removes every mask.

Each ``receive_*`` takes the messages that arrived before the phase deadline (the caller owns
time and transport) and returns what to send to each device next. Messages from unknown devices,
duplicates, malformed or unauthenticated messages are rejected: the device is then treated as a
dropout and the reason is kept in ``rejected`` for the audit log.

Costs: the messages the server builds from parts of checked messages are not checked again,
and the secrets of a round are rebuilt in one batch (``shamir.combine_many``: with no dropouts
every owner's first ``t`` shares sit at x = 1..t), each then checked against its commitment or
public key; only a secret that fails goes through the search over share subsets.
"""

from __future__ import annotations

import enum
import itertools
import logging
from collections.abc import Callable, Container, Iterable, Mapping
from typing import Literal, TypeVar

import numpy as np

from ztfm.crypto.kex import KexPrivateKey, KexPublicKey, verify_mac
from ztfm.crypto.prg import MaskExpander
from ztfm.crypto.signing import VerifyKey
from ztfm.errors import CryptoError, SecAggError
from ztfm.secagg import _derive as dv
from ztfm.secagg import shamir
from ztfm.secagg.messages import (
    AdvertiseKeys,
    KeyDirectory,
    MaskedInput,
    SecAggResult,
    ShareInbox,
    ShareKeys,
    SurvivorsConfirmation,
    SurvivorsRequest,
    UIntArray,
    UnmaskRequest,
    UnmaskResponse,
)
from ztfm.secagg.params import SecAggParams
from ztfm.types import DeviceId

MAX_RECONSTRUCTION_TRIES = 64
_log = logging.getLogger(__name__)
_T = TypeVar("_T")


class ServerPhase(enum.Enum):
    ADVERTISE = 0
    SHARE = 1
    MASK = 2
    SURVIVORS = 3
    UNMASK = 4
    DONE = 5
    ABORTED = 6


class SecAggServer:
    """The aggregator's side of one round. ``identities`` maps every roster device to its
    long-term Ed25519 verify key; ``key`` is the X25519 key whose public half is in params."""

    def __init__(
        self,
        params: SecAggParams,
        identities: Mapping[DeviceId, VerifyKey],
        key: KexPrivateKey,
        expander: MaskExpander | None = None,
        *,
        trust_transport: bool = False,
        advert_checks: Literal["eager", "lazy"] = "lazy",
    ) -> None:
        """``trust_transport=True`` is for callers whose every device -> server message already
        arrives authenticated and bound to the device id (ztfm's gRPC transport: mTLS, and each
        request signed over its payload by the device key): the server then skips the
        device-server channel key and the MACs on masked inputs and unmask responses (one X25519
        per device and a MAC over each masked input, per round). Advert signatures are still
        checked as ``advert_checks`` says, neighbours still verify every advert they use, and
        unmasking still checks every secret against its signed commitment; what is lost is
        protection against a relay that can alter messages *inside* the authenticated channel,
        which request signatures already exclude. Logged (info) on every round.

        ``advert_checks="lazy"`` (the default; end-to-end mode) verifies advert signatures
        only around devices that went silent after receiving their key directory (an honest
        neighbour that sees a forged advert aborts, which is how a forgery shows up): no Ed25519
        work in a round without dropouts, forgeries still attributed in ``rejected``, but a
        forged advert costs its neighbours the round instead of being excluded before they see
        it. ``"eager"`` checks every advert first; it closes no denial of service a device could
        not cause anyway, since sealed shares that fail authentication abort neighbours too."""
        if key.public != params.server_key:
            raise SecAggError("server key does not match the round parameters")
        missing = [d for d in params.roster if d not in identities]
        if missing:
            raise SecAggError(f"no identity key for roster device {missing[0]!r}")
        self._p = params
        self._ids = dict(identities)
        self._key = key
        self._exp = expander
        if advert_checks not in ("eager", "lazy"):
            raise SecAggError(f"advert_checks must be 'eager' or 'lazy', not {advert_checks!r}")
        self._e2e = not trust_transport
        self._eager = advert_checks == "eager"
        self._verified: set[DeviceId] = set()
        self._directed: set[DeviceId] = set()
        self._roster = frozenset(params.roster)
        if trust_transport:
            _log.info(
                "secagg round %d: server trusts the transport; end-to-end MACs are off",
                params.round_id,
            )
        self.phase = ServerPhase.ADVERTISE
        self.rejected: dict[DeviceId, str] = {}
        self._adverts: dict[DeviceId, AdvertiseKeys] = {}
        self._shared: dict[DeviceId, dv.ServerKeys] = {}  # device -> MAC keys with it
        self._routed: dict[DeviceId, frozenset[DeviceId]] = {}  # recipient -> senders
        self._u2: set[DeviceId] = set()
        self._acc: UIntArray | None = None
        self._u3: tuple[DeviceId, ...] = ()
        self._confirmed: set[DeviceId] = set()
        self._dtype = params.dtype
        self._nbr_sets: dict[DeviceId, frozenset[DeviceId]] = {}
        self._order: dict[DeviceId, list[DeviceId]] = {}  # device -> its sorted neighbours
        self._first_xs = tuple(range(1, params.threshold + 1))

    # -- helpers ------------------------------------------------------------------------------
    def _enter(self, phase: ServerPhase) -> None:
        if self.phase is not phase:
            raise SecAggError(f"server is in phase {self.phase.name}, not {phase.name}")

    def _fail(self, reason: str) -> SecAggError:
        self.phase = ServerPhase.ABORTED
        return SecAggError(reason)

    def _reject(self, device: DeviceId, reason: str) -> None:
        self.rejected.setdefault(device, reason)

    def _accept_from(
        self, device: DeviceId, seen: set[DeviceId], allowed: Container[DeviceId]
    ) -> bool:
        """Admit one message: ignored if its device is outside the roster, rejected ("duplicate
        message") if the device already sent one this phase, ignored if it is not expected in
        this phase."""
        if device not in self._roster:
            return False  # not ours: nothing to record against a roster device
        if device in seen:
            self._reject(device, "duplicate message")
            return False
        if device not in allowed:
            return False
        seen.add(device)
        return True

    def _check_size(self, active: Iterable[DeviceId], stage: str) -> set[DeviceId]:
        act = set(active) - set(self.rejected)
        if len(act) < self._p.min_survivors:
            raise self._fail(
                f"{stage}: only {len(act)} devices left, at least {self._p.min_survivors} needed"
            )
        return act

    def _nbrs(self, device: DeviceId) -> frozenset[DeviceId]:
        """``device``'s neighbours as a set (built once per device and round)."""
        out = self._nbr_sets.get(device)
        if out is None:
            out = self._nbr_sets[device] = frozenset(self._p.neighbours[device])
        return out

    # -- phase 0 -> 1 -------------------------------------------------------------------------
    def receive_adverts(self, msgs: Iterable[AdvertiseKeys]) -> dict[DeviceId, KeyDirectory]:
        self._enter(ServerPhase.ADVERTISE)
        seen: set[DeviceId] = set()
        roster, adverts = self._roster, self._adverts
        for m in msgs:
            dev = m.device
            if not self._accept_from(dev, seen, roster):
                continue
            try:
                if self._eager:
                    self._verify_advert(m)
                if self._e2e:
                    shared = self._key.exchange(KexPublicKey(m.channel_key))
                    self._shared[dev] = dv.server_keys(self._p, shared, dev)
                KexPublicKey(m.mask_key)
            except CryptoError:
                self._reject(dev, "advertised keys fail verification")
                continue
            adverts[dev] = m
        live = self._check_size(adverts, "advertise")
        out: dict[DeviceId, KeyDirectory] = {}
        t, neighbours = self._p.threshold, self._p.neighbours
        for d in sorted(live):
            nb = [adverts[o] for o in neighbours[d] if o in live]
            if len(nb) >= t:
                out[d] = KeyDirectory(d, tuple(nb))
        self._directed = set(out)
        self.phase = ServerPhase.SHARE
        return out

    def _verify_advert(self, m: AdvertiseKeys) -> None:
        payload = dv.advert_payload(self._p, m.device, m.channel_key, m.mask_key, m.seed_commitment)
        self._ids[m.device].verify(m.signature, payload)
        self._verified.add(m.device)

    # -- phase 1 -> 2 -------------------------------------------------------------------------
    def receive_shares(self, msgs: Iterable[ShareKeys]) -> dict[DeviceId, ShareInbox]:
        self._enter(ServerPhase.SHARE)
        seen: set[DeviceId] = set()
        got: dict[DeviceId, ShareKeys] = {}
        adverts = self._adverts
        advertised = adverts.keys()
        for m in msgs:
            dev = m.device
            if not self._accept_from(dev, seen, adverts):
                continue
            to = m.sealed.keys()
            if not (to <= self._nbrs(dev) and to <= advertised):
                self._reject(dev, "shares addressed outside its live neighbourhood")
                continue
            got[dev] = m
        if not self._eager:
            # a device that went quiet may have aborted on a forged neighbour advert: check
            for quiet in self._directed - set(got):
                for o in self._p.neighbours[quiet]:
                    adv = adverts.get(o)
                    if adv is None or o in self._verified or o in self.rejected:
                        continue
                    try:
                        self._verify_advert(adv)
                    except CryptoError:
                        self._reject(o, "advertised keys fail verification")
        live = self._check_size(got, "share keys")
        inbox: dict[DeviceId, dict[DeviceId, bytes]] = {d: {} for d in live}
        box_of = inbox.get
        for sender in live:
            for to_dev, ct in got[sender].sealed.items():
                box = box_of(to_dev)
                if box is not None:
                    box[sender] = ct
        self._u2 = live
        self._routed = {d: frozenset(v) for d, v in inbox.items()}
        self.phase = ServerPhase.MASK
        t = self._p.threshold
        # the ciphertexts were checked when their ShareKeys were built: no second check
        return {d: ShareInbox.prechecked(d, v) for d, v in inbox.items() if len(v) >= t}

    # -- phase 2 -> 3 -------------------------------------------------------------------------
    def receive_masked(self, msgs: Iterable[MaskedInput]) -> SurvivorsRequest:
        """Verify each masked input's MAC and add it into the running sum."""
        self._enter(ServerPhase.MASK)
        seen: set[DeviceId] = set()
        dtype, shape = self._dtype, (self._p.length,)
        acc = np.zeros(shape, dtype=dtype)
        ok: list[DeviceId] = []
        expected = self._u2
        for m in msgs:
            dev = m.device
            if not self._accept_from(dev, seen, expected):
                continue
            masked = m.masked
            if masked.dtype != dtype or masked.shape != shape:
                self._reject(dev, "masked input has the wrong dtype or length")
                continue
            if self._e2e:
                key = self._shared[dev].input
                try:
                    verify_mac(key, m.tag, np.ascontiguousarray(masked).data.cast("B"))
                except CryptoError:
                    self._reject(dev, "masked input failed authentication")
                    continue
            np.add(acc, masked, out=acc)
            ok.append(dev)
        self._check_size(ok, "masked input")
        self._acc = acc
        self._u3 = tuple(sorted(ok))
        self.phase = ServerPhase.SURVIVORS
        return SurvivorsRequest(self._u3)

    # -- phase 3 -> 4 -------------------------------------------------------------------------
    def receive_confirmations(
        self, msgs: Iterable[SurvivorsConfirmation]
    ) -> dict[DeviceId, UnmaskRequest]:
        """Route each device's survivor-list confirmations to the neighbours they address (the
        server cannot check them; the neighbours do)."""
        self._enter(ServerPhase.SURVIVORS)
        seen: set[DeviceId] = set()
        surv = set(self._u3)
        got: dict[DeviceId, SurvivorsConfirmation] = {}
        for m in msgs:
            dev = m.device
            if not self._accept_from(dev, seen, surv):
                continue
            to = m.tags.keys()
            if not (to <= self._nbrs(dev) and to <= surv):
                self._reject(dev, "confirmations addressed outside its neighbourhood")
                continue
            got[dev] = m
        live = self._check_size(got, "survivor confirmations")
        inbox: dict[DeviceId, dict[DeviceId, bytes]] = {d: {} for d in live}
        box_of = inbox.get
        for sender in live:
            for to_dev, tag in got[sender].tags.items():
                box = box_of(to_dev)
                if box is not None:
                    box[sender] = tag
        self._confirmed = live
        self.phase = ServerPhase.UNMASK
        # the tags were checked when their SurvivorsConfirmations were built
        u3 = self._u3
        return {d: UnmaskRequest.prechecked(d, u3, v) for d, v in inbox.items()}

    # -- phase 4 -> result --------------------------------------------------------------------
    def finalize(self, msgs: Iterable[UnmaskResponse]) -> SecAggResult:
        """Reconstruct self-mask seeds of survivors and mask keys of post-share dropouts, remove
        all masks and return the field sum. Raises ``SecAggError`` if any needed secret has fewer
        than ``threshold`` valid shares, or shares that do not match the signed commitments."""
        self._enter(ServerPhase.UNMASK)
        assert self._acc is not None
        seen: set[DeviceId] = set()
        survivors = set(self._u3)
        dropped = sorted(self._u2 - survivors)
        gone = set(dropped)
        # holder -> the shares it sent (owner -> 33 bytes), every one a field element
        seed_from: dict[DeviceId, Mapping[DeviceId, bytes]] = {}
        key_from: dict[DeviceId, Mapping[DeviceId, bytes]] = {}
        expected = self._confirmed
        for m in msgs:
            dev = m.device
            if not self._accept_from(dev, seen, expected):
                continue
            if self._e2e:
                key = self._shared[dev].unmask
                transcript = dv.unmask_transcript(self._p, dev, m.seed_shares, m.key_shares)
                try:
                    verify_mac(key, m.tag, transcript)
                except CryptoError:
                    self._reject(dev, "unmask response failed authentication")
                    continue
            if shamir.all_shares(m.seed_shares.values()) and shamir.all_shares(
                m.key_shares.values()
            ):
                seed_from[dev], key_from[dev] = m.seed_shares, m.key_shares
            else:
                seed_from[dev], key_from[dev] = self._parse_shares(m, survivors, gone)
        acc = self._acc
        exp = self._exp or MaskExpander(self._p.length, self._p.dtype)
        first = self._first_secrets(self._u3, seed_from)
        for d in self._u3:
            exp.sub_mask(acc, self._secret(d, first, seed_from, "self-mask seed", self._check_seed))
        to_undo: list[tuple[DeviceId, list[DeviceId]]] = []
        for j in dropped:
            partners = [
                i for i in self._p.neighbours[j] if i in survivors and j in self._routed.get(i, ())
            ]
            if partners:
                to_undo.append((j, partners))
        first = self._first_secrets([j for j, _ in to_undo], key_from)
        mask_keys: dict[DeviceId, KexPublicKey] = {}
        for j, partners in to_undo:
            sk = self._secret(j, first, key_from, "mask key", self._check_mask_key)
            for i in partners:
                pk = mask_keys.get(i)
                if pk is None:
                    pk = mask_keys[i] = KexPublicKey(self._adverts[i].mask_key)
                seed = dv.pair_seed(self._p, sk.exchange(pk), i, j)
                # device i added +PRG if i < j, -PRG otherwise: undo exactly that.
                if i < j:
                    exp.sub_mask(acc, seed)
                else:
                    exp.add_mask(acc, seed)
        self.phase = ServerPhase.DONE
        rejected = dict(self.rejected)
        return SecAggResult(acc, self._u3, tuple(dropped), rejected)

    def _parse_shares(
        self, m: UnmaskResponse, survivors: set[DeviceId], gone: set[DeviceId]
    ) -> tuple[dict[DeviceId, bytes], dict[DeviceId, bytes]]:
        """Share by share, as every response was parsed before the batch path: for a response
        with some share that is not a 33-byte field element. Keeps, in order, the shares the
        server needs up to the first bad one among them, and then rejects the holder."""
        holder = m.device
        nbrs = self._nbrs(holder)
        seeds: dict[DeviceId, bytes] = {}
        keys: dict[DeviceId, bytes] = {}
        try:
            for d, raw in m.seed_shares.items():
                if d in survivors and d in nbrs:
                    self._p.share_x(d, holder)
                    shamir.share_from_bytes(raw)
                    seeds[d] = bytes(raw)
            for d, raw in m.key_shares.items():
                if d in gone and d in nbrs:
                    self._p.share_x(d, holder)
                    shamir.share_from_bytes(raw)
                    keys[d] = bytes(raw)
        except SecAggError:
            self._reject(holder, "unmask response has a malformed share")
        return seeds, keys

    def _check_seed(self, device: DeviceId, secret: bytes) -> bytes:
        if dv.seed_commitment(self._p, device, secret) != self._adverts[device].seed_commitment:
            raise SecAggError("commitment mismatch")
        return secret

    def _check_mask_key(self, device: DeviceId, secret: bytes) -> KexPrivateKey:
        try:
            sk = KexPrivateKey.from_bytes(secret)
        except CryptoError as exc:
            raise SecAggError("not a key") from exc
        if sk.public.raw != self._adverts[device].mask_key:
            raise SecAggError("public key mismatch")
        return sk

    def _sorted_nbrs(self, device: DeviceId) -> list[DeviceId]:
        """``device``'s neighbours in id order: the holder at index i has x = i + 1
        (``SecAggParams.share_x``; the graph is undirected, so they hold its shares)."""
        out = self._order.get(device)
        if out is None:
            out = self._order[device] = sorted(self._p.neighbours[device])
        return out

    def _first_secrets(
        self, owners: Iterable[DeviceId], held: Mapping[DeviceId, Mapping[DeviceId, bytes]]
    ) -> dict[DeviceId, bytes]:
        """Unchecked secrets of the ``owners`` whose first ``t`` neighbours all sent a share
        (x = 1..t: one Lagrange basis), in one batch. The first combination ``_recover`` would
        try: the caller checks each, and searches with ``_recover`` where that fails."""
        t = self._p.threshold
        rows: list[list[bytes]] = []
        done: list[DeviceId] = []
        for d in owners:
            try:
                rows.append([held[h][d] for h in self._sorted_nbrs(d)[:t]])
            except KeyError:
                continue  # a holder or its share is missing: _recover searches
            done.append(d)
        try:
            secrets = shamir.combine_many(self._first_xs, rows)
        except SecAggError:  # shares are checked on receipt, so this is not expected
            return {}
        return {d: s for d, s in zip(done, secrets, strict=True) if s is not None}

    def _secret(
        self,
        device: DeviceId,
        first: Mapping[DeviceId, bytes],
        held: Mapping[DeviceId, Mapping[DeviceId, bytes]],
        what: str,
        check: Callable[[DeviceId, bytes], _T],
    ) -> _T:
        """``check(device, secret)`` of ``device``'s secret: the batch one if it passes, else
        the result of ``_recover``'s search."""
        secret = first.get(device)
        if secret is not None:
            try:
                return check(device, secret)
            except SecAggError:
                pass  # a wrong share among the first t: search
        return self._recover(device, held, what, check)

    def _recover(
        self,
        device: DeviceId,
        held: Mapping[DeviceId, Mapping[DeviceId, bytes]],
        what: str,
        check: Callable[[DeviceId, bytes], _T],
    ) -> _T:
        """``device``'s secret from every share ``held`` for it (holder -> owner -> share),
        trying subsets of ``t`` in order until one passes ``check``."""
        t = self._p.threshold
        shares: dict[int, bytes] = {}  # x -> share, parsed only when a subset uses it
        for x, h in enumerate(self._sorted_nbrs(device), 1):
            sent = held.get(h)
            if sent is not None:
                raw = sent.get(device)
                if raw is not None:
                    shares[x] = raw
        if len(shares) < t:
            raise self._fail(
                f"cannot unmask: {len(shares)} shares of the {what} of {device!r} "
                f"arrived, threshold is {t}"
            )
        xs = sorted(shares)
        for tries, subset in enumerate(itertools.combinations(xs, t)):
            if tries >= MAX_RECONSTRUCTION_TRIES:
                break
            try:
                ys = {x: int.from_bytes(shares[x]) for x in subset}
                return check(device, shamir.reconstruct(ys, t))
            except SecAggError:
                continue
        raise self._fail(f"shares of the {what} of {device!r} are inconsistent: tampered shares")
