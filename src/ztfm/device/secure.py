"""The device's side of SecAgg+ rounds, shared by ``ztfm simulate`` and ``ztfm device run``.

``SecureDevice`` holds a device's agent, its SecAgg identity key, its error-feedback residual
and the round's ``SecAggClient``; it takes and returns encoded protocol messages only, and its
plaintext update never leaves it.

``SecureEndpoint`` is the networked ``Endpoint`` (``bytes -> bytes``) around it:

* a ``RoundTask`` is trained on; the update is kept on the device and the reply is a
  ``SecAggReply(phase="train")`` carrying only the device's SecAgg identity key;
* ``SecAggTask(advertise)`` carries the round's SecAgg parameters and the neighbours' identity
  keys: the device checks them against its own settings (field bits, vector length, that it is
  in the roster and the round is the one it trained for), builds its ``UpdateCodec`` from its
  *own* clip, noise and compression settings and answers with its signed key advertisement;
* ``share`` / ``mask`` / ``confirm`` / ``unmask`` go through the SecAgg+ client; just before
  masking, the update is compressed, clipped, noised and encoded;
* anything else (evaluation) goes to the agent.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ztfm.crypto.kex import KexPublicKey
from ztfm.crypto.prg import MaskExpander
from ztfm.crypto.signing import SigningKey, VerifyKey
from ztfm.device.agent import DeviceAgent
from ztfm.errors import CryptoError, RoundError, SecAggError, UpdateRejected
from ztfm.fl import codec as fl_codec
from ztfm.fl.messages import RoundTask, SecAggReply, SecAggTask, UpdateReply
from ztfm.fl.params import ParamSpec
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
from ztfm.types import DeviceId

log = logging.getLogger(__name__)


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


class SecureEndpoint:
    """A networked device's ``Endpoint`` for ``[secagg]`` rounds (see the module docstring)."""

    def __init__(
        self,
        agent: DeviceAgent,
        settings: UpdateSettings,
        rng: np.random.Generator,
        *,
        signing: SigningKey | None = None,
    ) -> None:
        """``rng`` draws this device's SecAgg key material, Shamir coefficients, noise share
        and stochastic rounding; ``signing`` is its SecAgg identity key (fresh if None)."""
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

    @property
    def device_id(self) -> str:
        return self.agent.device_id

    def handle(self, data: bytes) -> bytes:
        kind = fl_codec.kind_of(data)
        if kind is RoundTask:
            reply = self.device.train(data)
            spec = ParamSpec.of(reply.delta)
            self._round = reply.round_id
            self._update = spec.flatten(reply.delta).astype(np.float64)
            key = self.device.signing.verify_key.raw
            return self._reply(reply.round_id, "train", reply.nonce, key)
        if kind is not SecAggTask:
            return self.agent.handle(data)
        task = fl_codec.decode(data)
        assert isinstance(task, SecAggTask)
        if task.round_id != self._round or self._update is None:
            raise UpdateRejected(f"no update held for secure round {task.round_id}")
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
        return self._reply(task.round_id, task.phase, task.nonce, out)

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
            identities = {DeviceId(d): VerifyKey(k) for d, k in cfg.identities.items()}
        except CryptoError as exc:
            raise SecAggError(f"secure round config carries an invalid key: {exc}") from exc
        codec = s.codec(self.length, len(params.roster), params.min_survivors)
        expander = MaskExpander(params.length, params.dtype)
        return self.device.join(params, codec, identities, expander)


__all__ = ["SecureDevice", "SecureEndpoint", "UpdateSettings"]
