"""The SecAgg+ server side as a pure state machine: it routes messages, tracks who is still in,
and finally reconstructs the secrets it needs and removes every mask.

Each ``receive_*`` takes the messages that arrived before the phase deadline (the caller owns
time and transport) and returns what to send to each device next. Messages from unknown devices,
duplicates, malformed or unauthenticated messages are rejected: the device is then treated as a
dropout and the reason is kept in ``rejected`` for the audit log.
"""

from __future__ import annotations

import enum
import itertools
import logging
from collections.abc import Callable, Container, Iterable, Mapping
from typing import Literal

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
        if not self._p.in_roster(device):
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

    # -- phase 0 -> 1 -------------------------------------------------------------------------
    def receive_adverts(self, msgs: Iterable[AdvertiseKeys]) -> dict[DeviceId, KeyDirectory]:
        self._enter(ServerPhase.ADVERTISE)
        seen: set[DeviceId] = set()
        for m in msgs:
            if not self._accept_from(m.device, seen, self._roster):
                continue
            try:
                if self._eager:
                    self._verify_advert(m)
                if self._e2e:
                    shared = self._key.exchange(KexPublicKey(m.channel_key))
                    self._shared[m.device] = dv.server_keys(self._p, shared, m.device)
                KexPublicKey(m.mask_key)
            except CryptoError:
                self._reject(m.device, "advertised keys fail verification")
                continue
            self._adverts[m.device] = m
        live = self._check_size(self._adverts, "advertise")
        out: dict[DeviceId, KeyDirectory] = {}
        for d in sorted(live):
            nb = [self._adverts[o] for o in self._p.neighbours[d] if o in live]
            if len(nb) >= self._p.threshold:
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
        for m in msgs:
            if not self._accept_from(m.device, seen, self._adverts):
                continue
            nbrs = set(self._p.neighbours[m.device])
            if not set(m.sealed) <= nbrs or any(r not in self._adverts for r in m.sealed):
                self._reject(m.device, "shares addressed outside its live neighbourhood")
                continue
            got[m.device] = m
        if not self._eager:
            # a device that went quiet may have aborted on a forged neighbour advert: check
            for quiet in self._directed - set(got):
                for o in self._p.neighbours[quiet]:
                    adv = self._adverts.get(o)
                    if adv is None or o in self._verified or o in self.rejected:
                        continue
                    try:
                        self._verify_advert(adv)
                    except CryptoError:
                        self._reject(o, "advertised keys fail verification")
        live = self._check_size(got, "share keys")
        inbox: dict[DeviceId, dict[DeviceId, bytes]] = {d: {} for d in live}
        for sender in live:
            for to, ct in got[sender].sealed.items():
                if to in live:
                    inbox[to][sender] = ct
        self._u2 = live
        self._routed = {d: frozenset(v) for d, v in inbox.items()}
        self.phase = ServerPhase.MASK
        return {d: ShareInbox(d, v) for d, v in inbox.items() if len(v) >= self._p.threshold}

    # -- phase 2 -> 3 -------------------------------------------------------------------------
    def receive_masked(self, msgs: Iterable[MaskedInput]) -> SurvivorsRequest:
        """Verify each masked input's MAC and add it into the running sum."""
        self._enter(ServerPhase.MASK)
        seen: set[DeviceId] = set()
        acc = np.zeros(self._p.length, dtype=self._p.dtype)
        ok: list[DeviceId] = []
        for m in msgs:
            if not self._accept_from(m.device, seen, self._u2):
                continue
            if m.masked.dtype != self._p.dtype or m.masked.shape != (self._p.length,):
                self._reject(m.device, "masked input has the wrong dtype or length")
                continue
            if self._e2e:
                key = self._shared[m.device].input
                try:
                    verify_mac(key, m.tag, np.ascontiguousarray(m.masked).data.cast("B"))
                except CryptoError:
                    self._reject(m.device, "masked input failed authentication")
                    continue
            np.add(acc, m.masked, out=acc)
            ok.append(m.device)
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
            if not self._accept_from(m.device, seen, surv):
                continue
            if not set(m.tags) <= set(self._p.neighbours[m.device]) & surv:
                self._reject(m.device, "confirmations addressed outside its neighbourhood")
                continue
            got[m.device] = m
        live = self._check_size(got, "survivor confirmations")
        inbox: dict[DeviceId, dict[DeviceId, bytes]] = {d: {} for d in live}
        for sender in live:
            for to, tag in got[sender].tags.items():
                if to in live:
                    inbox[to][sender] = tag
        self._confirmed = live
        self.phase = ServerPhase.UNMASK
        return {d: UnmaskRequest(d, self._u3, v) for d, v in inbox.items()}

    # -- phase 4 -> result --------------------------------------------------------------------
    def finalize(self, msgs: Iterable[UnmaskResponse]) -> SecAggResult:
        """Reconstruct self-mask seeds of survivors and mask keys of post-share dropouts, remove
        all masks and return the field sum. Raises ``SecAggError`` if any needed secret has fewer
        than ``threshold`` valid shares, or shares that do not match the signed commitments."""
        self._enter(ServerPhase.UNMASK)
        assert self._acc is not None
        seen: set[DeviceId] = set()
        seed_sh: dict[DeviceId, dict[int, int]] = {d: {} for d in self._u3}
        dropped = sorted(self._u2 - set(self._u3))
        key_sh: dict[DeviceId, dict[int, int]] = {d: {} for d in dropped}
        for m in msgs:
            if not self._accept_from(m.device, seen, self._confirmed):
                continue
            if self._e2e:
                key = self._shared[m.device].unmask
                transcript = dv.unmask_transcript(self._p, m.device, m.seed_shares, m.key_shares)
                try:
                    verify_mac(key, m.tag, transcript)
                except CryptoError:
                    self._reject(m.device, "unmask response failed authentication")
                    continue
            nbrs = set(self._p.neighbours[m.device])
            holder = m.device
            try:
                for d, raw in m.seed_shares.items():
                    if d in seed_sh and d in nbrs:
                        seed_sh[d][self._p.share_x(d, holder)] = shamir.share_from_bytes(raw)
                for d, raw in m.key_shares.items():
                    if d in key_sh and d in nbrs:
                        key_sh[d][self._p.share_x(d, holder)] = shamir.share_from_bytes(raw)
            except SecAggError:
                self._reject(m.device, "unmask response has a malformed share")
        acc = self._acc
        exp = self._exp or MaskExpander(self._p.length, self._p.dtype)
        for d in self._u3:
            seed = self._recover(d, seed_sh[d], "self-mask seed", self._check_seed)
            exp.sub_mask(acc, seed)
        survivors = set(self._u3)
        for j in dropped:
            partners = [
                i for i in self._p.neighbours[j] if i in survivors and j in self._routed.get(i, ())
            ]
            if not partners:
                continue
            raw = self._recover(j, key_sh[j], "mask key", self._check_mask_key)
            sk = KexPrivateKey.from_bytes(raw)
            for i in partners:
                shared = sk.exchange(KexPublicKey(self._adverts[i].mask_key))
                seed = dv.pair_seed(self._p, shared, i, j)
                # device i added +PRG if i < j, -PRG otherwise: undo exactly that.
                if i < j:
                    exp.sub_mask(acc, seed)
                else:
                    exp.add_mask(acc, seed)
        self.phase = ServerPhase.DONE
        rejected = dict(self.rejected)
        return SecAggResult(acc, self._u3, tuple(dropped), rejected)

    def _check_seed(self, device: DeviceId, secret: bytes) -> None:
        if dv.seed_commitment(self._p, device, secret) != self._adverts[device].seed_commitment:
            raise SecAggError("commitment mismatch")

    def _check_mask_key(self, device: DeviceId, secret: bytes) -> None:
        try:
            pk = KexPrivateKey.from_bytes(secret).public.raw
        except CryptoError as exc:
            raise SecAggError("not a key") from exc
        if pk != self._adverts[device].mask_key:
            raise SecAggError("public key mismatch")

    def _recover(
        self,
        device: DeviceId,
        shares: dict[int, int],
        what: str,
        check: Callable[[DeviceId, bytes], None],
    ) -> bytes:
        t = self._p.threshold
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
                secret = shamir.reconstruct({x: shares[x] for x in subset}, t)
                check(device, secret)
            except SecAggError:
                continue
            return secret
        raise self._fail(f"shares of the {what} of {device!r} are inconsistent: tampered shares")
