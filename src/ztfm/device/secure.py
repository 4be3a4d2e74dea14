"""The device's side of SecAgg+ rounds, shared by ``ztfm simulate`` and ``ztfm device run``.

``SecureDevice`` holds a device's agent, its SecAgg identity key, its error-feedback residual
and the round's ``SecAggClient``; it takes and returns encoded protocol messages only, and its
plaintext update never leaves it.

``SecureEndpoint`` is the networked ``Endpoint`` (``bytes -> bytes``) around it:

* a ``RoundTask`` is trained on; the update is kept on the device and the reply is a
  ``SecAggReply(phase="train")`` carrying only the device's SecAgg identity key, endorsed for
  this round by its device certificate (``SecAggCredentials.endorse``);
* ``SecAggTask(advertise)`` carries the round's SecAgg parameters and the neighbours' endorsed
  identity keys: the device checks them against its own settings (field bits, vector length,
  that it is in the roster and the round is the one it trained for), checks every neighbour's
  endorsement against the fleet CA it trusts (``SecAggCredentials.check``: a coordinator that
  substitutes a key is caught here), builds its ``UpdateCodec`` from its *own* clip, noise and
  compression settings and answers with its signed key advertisement;
* ``share`` / ``mask`` / ``confirm`` / ``unmask`` go through the SecAgg+ client; just before
  masking, the update is compressed, clipped, noised and encoded;
* anything else (evaluation) goes to the agent.

A ``SecAggError`` in any secure phase aborts this device's part in the round: the update it
holds is dropped (no masked input can follow), the one-line reason is kept in ``aborts`` and
logged, and the error goes up to the caller (the ``DeviceLoop`` then sends no reply).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ztfm.crypto.kex import KexPublicKey
from ztfm.crypto.pki import Certificate
from ztfm.crypto.prg import MaskExpander
from ztfm.crypto.signing import SigningKey, VerifyKey
from ztfm.device.agent import DeviceAgent
from ztfm.errors import CryptoError, IdentityError, RoundError, SecAggError, UpdateRejected
from ztfm.fl import codec as fl_codec
from ztfm.fl.messages import EndorsedKey, RoundTask, SecAggReply, SecAggTask, UpdateReply
from ztfm.fl.params import ParamSpec
from ztfm.identity import (
    CertValidator,
    Identity,
    KeyStore,
    endorse_secagg_key,
    verify_secagg_endorsement,
)
from ztfm.privacy.compress import ErrorFeedback, k_for_ratio
from ztfm.privacy.noise import DistributedGaussian
from ztfm.secagg import SecAggClient, SecAggParams, UpdateCodec
from ztfm.secagg.codec import Message, decode_message, encode_message
from ztfm.secagg.messages import (
    KeyDirectory,
    ShareInbox,
    SurvivorsRequest,
    UnmaskRequest,
)
from ztfm.types import Clock, DeviceId

log = logging.getLogger(__name__)


class SecAggCredentials(Protocol):
    """How a networked device endorses its own SecAgg identity key and checks its neighbours'
    (``CertCredentials``: its device certificate and the fleet CA it trusts)."""

    def endorse(self, round_id: int, secagg_key: bytes) -> EndorsedKey: ...

    def check(self, device_id: str, endorsed: EndorsedKey, round_id: int) -> None: ...


@dataclass(slots=True)
class CertCredentials:
    """``SecAggCredentials`` from the device's certificate, key store and fleet CA validator.

    ``cert`` and ``validator`` are read at each use (the device runner renews the certificate
    and refreshes the signed revocation list the validator checks)."""

    identity: Identity
    keystore: KeyStore
    cert: Callable[[], Certificate | None]
    validator: Callable[[], CertValidator | None]
    clock: Clock

    def endorse(self, round_id: int, secagg_key: bytes) -> EndorsedKey:
        cert = self.cert()
        if cert is None:
            raise SecAggError("no device certificate to endorse the SecAgg identity key with")
        try:
            sig = endorse_secagg_key(self.keystore, self.identity, round_id, secagg_key)
        except IdentityError as exc:
            raise SecAggError(f"cannot endorse the SecAgg identity key: {exc}") from exc
        return EndorsedKey(secagg_key, cert.der, sig)

    def check(self, device_id: str, endorsed: EndorsedKey, round_id: int) -> None:
        """None if ``device_id``'s certificate validates against the fleet CA now and endorses
        ``endorsed.key`` for ``round_id``; ``SecAggError`` (one line) otherwise."""
        validator = self.validator()
        if validator is None:
            raise SecAggError("no fleet CA validator to check the neighbours' certificates")
        try:
            verify_secagg_endorsement(
                validator,
                endorsed.cert,
                endorsed.signature,
                device_id=device_id,
                round_id=round_id,
                secagg_key=endorsed.key,
                now=self.clock.now(),
            )
        except IdentityError as exc:
            raise SecAggError(
                f"neighbour {device_id!r}: SecAgg key not endorsed by its device certificate: {exc}"
            ) from exc


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


@dataclass(frozen=True, slots=True)
class UpdateSettings:
    """The device's own privacy and compression settings (``[privacy]``, ``[compression]``,
    ``[secagg] bits``): the coordinator cannot change them, it only says how many devices share
    the round (which sizes each device's noise share)."""

    clip_norm: float
    noise_multiplier: float = 0.0  # of the distributed noise (0 = none on the device)
    keep_ratio: float = 1.0
    bits: int = 32
    rounding: str = "stochastic"
    error_feedback: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise SecAggError("secure aggregation needs clip_norm > 0")

    def keep(self, length: int) -> int:
        return k_for_ratio(length, self.keep_ratio) if self.keep_ratio < 1 else 0

    def codec(self, length: int, n: int, min_survivors: int) -> UpdateCodec:
        noise = None
        if self.noise_multiplier > 0:
            noise = DistributedGaussian(self.noise_multiplier, self.clip_norm, min_survivors)
        return UpdateCodec(
            length=length,
            clip_norm=self.clip_norm,
            max_inputs=n,
            keep=self.keep(length),
            bits=self.bits,
            noise=noise,
            rounding="stochastic" if self.rounding == "stochastic" else "nearest",
        )


MAX_ROSTER = 10_000  # devices in one SecAgg instance (use [secagg] group_size beyond this)
MAX_DEGREE = 512  # neighbours per device (SecAgg+ needs about 2 log2 n)


class SecureEndpoint:
    """A networked device's ``Endpoint`` for ``[secagg]`` rounds (see the module docstring)."""

    def __init__(
        self,
        agent: DeviceAgent,
        settings: UpdateSettings,
        rng: np.random.Generator,
        *,
        signing: SigningKey | None = None,
        credentials: SecAggCredentials | None = None,
    ) -> None:
        """``rng`` draws this device's SecAgg key material, Shamir coefficients, noise share
        and stochastic rounding; ``signing`` is its SecAgg identity key (fresh if None).
        ``credentials`` endorse that key and check the neighbours' (the ``DeviceRunner`` sets
        them from its certificate and CA); without them the device refuses secure rounds."""
        self.credentials = credentials
        self.agent = agent
        self.settings = settings
        self.length = ParamSpec.of(agent.model.get_params()).size
        feedback = None
        if settings.keep_ratio < 1 and settings.error_feedback:
            feedback = ErrorFeedback(self.length)
        self.device = SecureDevice(agent, signing or SigningKey.generate(), rng, feedback)
        self._round: int | None = None  # the round of the update held
        self._update: np.ndarray | None = None
        self.rounds_masked = 0
        self.aborts: list[tuple[int, str]] = []  # (round, one-line reason)

    @property
    def device_id(self) -> str:
        return self.agent.device_id

    def handle(self, data: bytes) -> bytes:
        kind = fl_codec.kind_of(data)
        if kind is RoundTask:
            credentials = self.credentials
            if credentials is None:
                raise SecAggError("no device certificate to endorse a SecAgg identity key")
            reply = self.device.train(data)
            spec = ParamSpec.of(reply.delta)
            self._round = reply.round_id
            self._update = spec.flatten(reply.delta).astype(np.float64)
            key = self.device.signing.verify_key.raw
            endorsed = credentials.endorse(reply.round_id, key)
            payload = fl_codec.encode_endorsed_key(endorsed)
            return self._reply(reply.round_id, "train", reply.nonce, payload)
        if kind is not SecAggTask:
            return self.agent.handle(data)
        task = fl_codec.decode(data)
        assert isinstance(task, SecAggTask)
        if task.round_id != self._round or self._update is None:
            # e.g. a task still open from a round this device left (or restarted in): nothing
            # to answer with; an abort, not a crash of the device process
            raise SecAggError(f"no update held for secure round {task.round_id}")
        try:
            if task.phase == "advertise":
                out = self._advertise(task)
            else:
                if task.phase == "mask":
                    self.device.prepare(self._update, honest=True)
                out = self.device.deliver(task.payload)
                if task.phase == "mask":
                    self.rounds_masked += 1
                if task.phase == "unmask":
                    self._update = None  # the round is over for this device
        except SecAggError as exc:
            self._abort(task.round_id, task.phase, exc)
            raise
        except (UpdateRejected, ValueError) as exc:
            # a malformed or unexpected secure task from the coordinator: leave the round (the
            # update is dropped) instead of ending the device process
            abort = SecAggError(f"malformed secure task: {exc}")
            self._abort(task.round_id, task.phase, abort)
            raise abort from exc
        return self._reply(task.round_id, task.phase, task.nonce, out)

    def _abort(self, round_id: int, phase: str, exc: SecAggError) -> None:
        """This device leaves the round: its update and protocol state are dropped, so no
        masked input (or any later message) of this round can come from it."""
        self._update, self._round = None, None
        self.device.client, self.device.field_vector = None, None
        reason = " ".join(str(exc).split())
        self.aborts.append((round_id, reason))
        log.warning("secure round %s (%s): %s aborts: %s", round_id, phase, self.device_id, reason)

    def _reply(self, round_id: int, phase: str, nonce: bytes, payload: bytes) -> bytes:
        return fl_codec.encode(SecAggReply(round_id, self.device_id, phase, nonce, payload))

    def _advertise(self, task: SecAggTask) -> bytes:
        cfg = fl_codec.decode_secure_config(task.payload)
        s = self.settings
        sent = self.settings.keep(self.length) or self.length
        if cfg.round_id != task.round_id:
            raise SecAggError("secure round config is for another round")
        if cfg.bits != s.bits:
            raise SecAggError(f"round asks for a {cfg.bits}-bit field, this device uses {s.bits}")
        if cfg.length != sent:
            raise SecAggError(f"round asks for {cfg.length} coordinates, this device sends {sent}")
        if self.device_id not in cfg.roster:
            raise SecAggError("this device is not in the round's roster")
        # the graph costs the device O(roster x degree) before any key is checked: bound what a
        # coordinator may ask of it
        if len(cfg.roster) > MAX_ROSTER or min(cfg.degree, len(cfg.roster) - 1) > MAX_DEGREE:
            raise SecAggError(
                f"secure round of {len(cfg.roster)} devices, degree {cfg.degree}: this device "
                f"takes part in at most {MAX_ROSTER} devices and degree {MAX_DEGREE}"
            )
        try:
            params = SecAggParams(
                round_id=cfg.round_id,
                session=cfg.session,
                roster=tuple(DeviceId(d) for d in cfg.roster),
                length=cfg.length,
                server_key=KexPublicKey(cfg.server_key),
                bits=cfg.bits,
                degree=cfg.degree,
                threshold=cfg.threshold,
                min_survivors=cfg.min_survivors,
            )
        except CryptoError as exc:
            raise SecAggError(f"secure round config carries an invalid key: {exc}") from exc
        identities = self._neighbour_keys(cfg.identities, params)
        codec = s.codec(self.length, len(params.roster), params.min_survivors)
        expander = MaskExpander(params.length, params.dtype)
        return self.device.join(params, codec, identities, expander)

    def _neighbour_keys(
        self, endorsed: Mapping[str, EndorsedKey], params: SecAggParams
    ) -> dict[DeviceId, VerifyKey]:
        """Exactly this device's neighbours' SecAgg keys, each checked against its device
        certificate before it is used; ``SecAggError`` on the first that fails."""
        if self.credentials is None:
            raise SecAggError("no fleet CA to check the neighbours' SecAgg keys against")
        nbrs = params.neighbours[DeviceId(self.device_id)]
        extra = sorted(set(endorsed) - set(nbrs))
        if extra:
            raise SecAggError(f"secure round config carries a key for non-neighbour {extra[0]!r}")
        out: dict[DeviceId, VerifyKey] = {}
        for n in sorted(nbrs):
            ek = endorsed.get(n)
            if ek is None:
                raise SecAggError(f"secure round config has no key for neighbour {n!r}")
            self.credentials.check(n, ek, params.round_id)
            try:
                out[n] = VerifyKey(ek.key)
            except CryptoError as exc:
                raise SecAggError(f"neighbour {n!r} has an invalid SecAgg key: {exc}") from exc
        return out


__all__ = [
    "CertCredentials",
    "SecAggCredentials",
    "SecureDevice",
    "SecureEndpoint",
    "UpdateSettings",
]
