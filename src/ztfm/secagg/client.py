"""The SecAgg+ device side as a pure state machine: one method per phase, in order.

advertise -> share_keys -> mask_input -> sign_survivors -> unmask. Any failed check moves the
client to ``aborted`` and raises ``SecAggError``; an aborted client answers nothing more (a device
that aborts simply counts as a dropout for the server).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import numpy as np

from ztfm.crypto.kex import (
    KexPrivateKey,
    KexPublicKey,
    RandomSource,
    mac,
    open_sealed,
    seal,
    verify_mac,
)
from ztfm.crypto.prg import MaskExpander
from ztfm.crypto.signing import SigningKey, VerifyKey
from ztfm.errors import CryptoError, SecAggError
from ztfm.secagg import _derive as dv
from ztfm.secagg import shamir
from ztfm.secagg.messages import (
    AdvertiseKeys,
    KeyDirectory,
    MaskedInput,
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


class ClientPhase(enum.Enum):
    ADVERTISE = 0
    SHARE = 1
    MASK = 2
    SURVIVORS = 3
    UNMASK = 4
    DONE = 5
    ABORTED = 6


class SecAggClient:
    """One device's side of one round. ``identities`` maps (at least) every neighbour to its
    long-term Ed25519 verify key; ``rng`` supplies key material (use ``SystemRandomSource``
    outside simulations)."""

    def __init__(
        self,
        params: SecAggParams,
        device: DeviceId,
        signing_key: SigningKey,
        identities: Mapping[DeviceId, VerifyKey],
        rng: RandomSource,
        expander: MaskExpander | None = None,
    ) -> None:
        self._p = params
        self._me = device
        params.x_of(device)  # refuses a device outside the roster
        self._sk = signing_key
        self._nbrs = frozenset(params.neighbours[device])
        missing = [d for d in self._nbrs if d not in identities]
        if missing:
            raise SecAggError(f"no identity key for neighbour {sorted(missing)[0]!r}")
        self._ids = {d: identities[d] for d in self._nbrs}
        self._rng = rng
        if expander is not None and (
            expander.length != params.length or expander.dtype != params.dtype
        ):
            raise SecAggError("mask expander does not match the round's length and field")
        self._exp = expander
        self.phase = ClientPhase.ADVERTISE
        self._c: KexPrivateKey | None = None
        self._s: KexPrivateKey | None = None
        self._seed = b""
        self._adverts: dict[DeviceId, AdvertiseKeys] = {}
        self._held: dict[DeviceId, tuple[int, int]] = {}  # sender -> (seed share, key share)
        self._survivors: tuple[DeviceId, ...] = ()
        self._chan: dict[DeviceId, dv.ChannelKeys] = {}  # neighbour -> its channel's keys
        self._server_keys: dv.ServerKeys | None = None

    @property
    def device(self) -> DeviceId:
        return self._me

    def _enter(self, phase: ClientPhase) -> None:
        if self.phase is not phase:
            raise SecAggError(
                f"client {self._me!r} is in phase {self.phase.name}, not {phase.name}"
            )

    def _abort(self, reason: str) -> SecAggError:
        self.phase = ClientPhase.ABORTED
        return SecAggError(f"{self._me}: {reason}")

    # -- phase 0 ------------------------------------------------------------------------------
    def advertise(self) -> AdvertiseKeys:
        self._enter(ClientPhase.ADVERTISE)
        self._c = KexPrivateKey.generate(self._rng)
        self._s = KexPrivateKey.generate(self._rng)
        self._seed = self._rng.bytes(32)
        commit = dv.seed_commitment(self._p, self._me, self._seed)
        c_pk, s_pk = self._c.public.raw, self._s.public.raw
        sig = self._sk.sign(dv.advert_payload(self._p, self._me, c_pk, s_pk, commit))
        self.phase = ClientPhase.SHARE
        return AdvertiseKeys(self._me, c_pk, s_pk, commit, sig)

    # -- phase 1 ------------------------------------------------------------------------------
    def share_keys(self, directory: KeyDirectory) -> ShareKeys:
        self._enter(ClientPhase.SHARE)
        assert self._c is not None and self._s is not None
        if directory.recipient != self._me:
            raise self._abort("key directory is addressed to another device")
        adverts: dict[DeviceId, AdvertiseKeys] = {}
        for adv in directory.adverts:
            if adv.device not in self._nbrs:
                raise self._abort(f"key directory lists non-neighbour {adv.device!r}")
            if adv.device in adverts:
                raise self._abort(f"key directory lists {adv.device!r} twice")
            payload = dv.advert_payload(
                self._p, adv.device, adv.channel_key, adv.mask_key, adv.seed_commitment
            )
            try:
                self._ids[adv.device].verify(adv.signature, payload)
            except CryptoError as exc:
                raise self._abort(
                    f"advertised keys of {adv.device!r} fail signature check"
                ) from exc
            adverts[adv.device] = adv
        if len(adverts) < self._p.threshold:
            raise self._abort(
                f"only {len(adverts)} live neighbours, threshold is {self._p.threshold}"
            )
        self._adverts = adverts
        order = sorted(adverts)
        xs = [self._p.share_x(self._me, d) for d in order]
        t = self._p.threshold
        seed_sh = shamir.split(self._seed, t, xs, self._rng)
        key_sh = shamir.split(self._s.private_bytes(), t, xs, self._rng)
        sealed: dict[DeviceId, bytes] = {}
        for d, x in zip(order, xs, strict=True):
            try:
                shared = self._c.exchange(KexPublicKey(adverts[d].channel_key))
            except CryptoError as exc:
                raise self._abort(f"channel key of {d!r} is invalid") from exc
            self._chan[d] = dv.channel_keys(self._p, shared, self._me, d)
            pt = shamir.share_to_bytes(seed_sh[x]) + shamir.share_to_bytes(key_sh[x])
            key = self._chan[d].share(self._me, d)
            sealed[d] = seal(key, pt, dv.share_aad(self._p, self._me, d))
        self.phase = ClientPhase.MASK
        return ShareKeys(self._me, sealed)

    # -- phase 2 ------------------------------------------------------------------------------
    def mask_input(self, inbox: ShareInbox, encoded: UIntArray) -> MaskedInput:
        """Mask ``encoded`` (already in the field: ``FixedPoint.encode`` or a quantiser)."""
        self._enter(ClientPhase.MASK)
        assert self._c is not None and self._s is not None
        if inbox.recipient != self._me:
            raise self._abort("share inbox is addressed to another device")
        if not isinstance(encoded, np.ndarray) or encoded.dtype != self._p.dtype:
            raise self._abort(f"input must be a {self._p.dtype} array")
        if encoded.shape != (self._p.length,):
            raise self._abort(f"input must have shape ({self._p.length},)")
        held: dict[DeviceId, tuple[int, int]] = {}
        for sender, ct in inbox.sealed.items():
            adv = self._adverts.get(sender)
            if adv is None:
                raise self._abort(f"share inbox has shares from unexpected {sender!r}")
            try:
                key = self._chan[sender].share(sender, self._me)
                pt = open_sealed(key, ct, dv.share_aad(self._p, sender, self._me))
            except CryptoError as exc:
                raise self._abort(f"shares from {sender!r} failed authentication") from exc
            held[sender] = (
                shamir.share_from_bytes(pt[: shamir.SHARE_BYTES]),
                shamir.share_from_bytes(pt[shamir.SHARE_BYTES :]),
            )
        if len(held) < self._p.threshold:
            raise self._abort(
                f"only {len(held)} neighbours sent shares, threshold is {self._p.threshold}"
            )
        self._held = held
        exp = self._exp or MaskExpander(self._p.length, self._p.dtype)
        y = encoded.copy()
        exp.add_mask(y, self._seed)
        for d in held:
            shared = self._s.exchange(KexPublicKey(self._adverts[d].mask_key))
            seed = dv.pair_seed(self._p, shared, self._me, d)
            if self._me < d:
                exp.add_mask(y, seed)
            else:
                exp.sub_mask(y, seed)
        try:
            server_shared = self._c.exchange(self._p.server_key)
        except CryptoError as exc:
            raise self._abort("the round's server key is invalid") from exc
        self._server_keys = dv.server_keys(self._p, server_shared, self._me)
        tag = mac(self._server_keys.input, y.data.cast("B"))
        self.phase = ClientPhase.SURVIVORS
        return MaskedInput(self._me, y, tag)

    # -- phase 3 ------------------------------------------------------------------------------
    def confirm_survivors(self, request: SurvivorsRequest) -> SurvivorsConfirmation:
        self._enter(ClientPhase.SURVIVORS)
        surv = request.survivors
        if tuple(sorted(set(surv))) != surv:
            raise self._abort("survivor list is not sorted and unique")
        if any(not self._p.in_roster(d) for d in surv):
            raise self._abort("survivor list names a device outside the roster")
        if self._me not in surv:
            raise self._abort("survivor list leaves out this device")
        if len(surv) < self._p.min_survivors:
            raise self._abort(
                f"only {len(surv)} survivors, at least {self._p.min_survivors} required"
            )
        self._survivors = surv
        payload = dv.survivors_payload(self._p, surv)
        tags = {
            d: mac(self._chan[d].confirm(self._me, d), payload)
            for d in sorted(self._held)
            if d in set(surv)
        }
        self.phase = ClientPhase.UNMASK
        return SurvivorsConfirmation(self._me, tags)

    # -- phase 4 ------------------------------------------------------------------------------
    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        self._enter(ClientPhase.UNMASK)
        assert self._c is not None
        if request.recipient != self._me:
            raise self._abort("unmask request is addressed to another device")
        if request.survivors != self._survivors:
            raise self._abort("server sent two different survivor lists")
        payload = dv.survivors_payload(self._p, self._survivors)
        surv = set(self._survivors)
        for sender, tag in request.confirmations.items():
            if sender not in surv or sender not in self._chan:
                raise self._abort(f"survivor confirmation from unexpected {sender!r}")
            try:
                verify_mac(self._chan[sender].confirm(sender, self._me), tag, payload)
            except CryptoError as exc:
                raise self._abort(f"survivor confirmation of {sender!r} does not verify") from exc
        if len(request.confirmations) + 1 < self._p.threshold:
            raise self._abort(
                f"only {len(request.confirmations)} neighbours confirmed the survivor list, "
                f"threshold is {self._p.threshold}"
            )
        seeds: dict[DeviceId, bytes] = {}
        keys: dict[DeviceId, bytes] = {}
        for d, (seed_share, key_share) in self._held.items():
            if d in surv:
                seeds[d] = shamir.share_to_bytes(seed_share)
            else:
                keys[d] = shamir.share_to_bytes(key_share)
        if self._server_keys is None:  # set with the masked input
            raise self._abort("no masked input was sent this round")
        tag = mac(self._server_keys.unmask, dv.unmask_transcript(self._p, self._me, seeds, keys))
        self.phase = ClientPhase.DONE
        self._s = None
        return UnmaskResponse(self._me, seeds, keys, tag)
