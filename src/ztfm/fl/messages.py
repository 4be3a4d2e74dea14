"""The messages of one federated round.

Only these cross the boundary between a device and the coordinator. None of them carries
telemetry rows: a task carries global parameters and settings, an update carries a parameter delta
and a sample count, an evaluation carries confusion counts and a ROC-AUC.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ztfm.fl.params import Params
from ztfm.privacy.sparse import QuantizedSparse


@dataclass(frozen=True, slots=True)
class RoundTask:
    """Coordinator -> device: train from these global parameters."""

    round_id: int
    model_version: int
    params: Params
    local_epochs: int
    prox_mu: float
    deadline_s: float
    nonce: bytes
    settings: dict[str, float | int | str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UpdateReply:
    """Device -> coordinator: the change of parameters after local training.

    ``sparse``: set when the device uploads a per-device top-k (``[compression]`` without
    ``[secagg]``); ``delta`` is then its dense expansion, and the codec sends ``sparse`` instead
    of the dense arrays (the receiver rebuilds both)."""

    round_id: int
    device_id: str
    model_version: int
    delta: Params
    n_samples: int
    train_loss: float
    nonce: bytes
    sparse: QuantizedSparse | None = None


@dataclass(frozen=True, slots=True)
class EvalTask:
    """Coordinator -> device: evaluate these parameters on your own held-out data."""

    round_id: int
    model_version: int
    params: Params
    nonce: bytes


@dataclass(frozen=True, slots=True)
class EvalReply:
    """Device -> coordinator: confusion counts and ranking quality on its own held-out data."""

    round_id: int
    device_id: str
    model_version: int
    tp: int
    fp: int
    fn: int
    tn: int
    roc_auc: float
    nonce: bytes


@dataclass(frozen=True, slots=True)
class AttestTask:
    """Coordinator -> device: quote your PCRs over this fresh nonce before round ``round_id``."""

    round_id: int
    nonce: bytes


@dataclass(frozen=True, slots=True)
class AttestReply:
    """Device -> coordinator: the TPM quote over the task's nonce and the measurement log.

    ``evidence`` is the JSON form of ``ztfm.attestation.QuoteEvidence`` (the verifier parses and
    checks it; this layer only carries it).
    """

    round_id: int
    device_id: str
    evidence: str
    nonce: bytes


SECURE_PHASES = ("train", "advertise", "share", "mask", "confirm", "unmask")


@dataclass(frozen=True, slots=True)
class SecAggTask:
    """Coordinator -> device: one phase of a secure round.

    ``phase`` is one of ``SECURE_PHASES`` after ``train``; ``payload`` is the phase's SecAgg+
    message (``ztfm.secagg.codec``) or, for ``advertise``, the round's ``SecureRoundConfig``
    (``fl.codec.encode_secure_config``). ``nonce`` is fresh for every device and phase: the
    reply must echo it, so a reply cannot be replayed into another phase or round.
    """

    round_id: int
    phase: str
    nonce: bytes
    payload: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SecAggReply:
    """Device -> coordinator: this device's message for one phase of a secure round.

    For ``train`` the payload is the device's ``EndorsedKey`` (``fl.codec.encode_endorsed_key``:
    its SecAgg identity key, device certificate and the certificate key's endorsement): the
    update itself stays on the device. Otherwise it is the SecAgg+ message of the phase.
    """

    round_id: int
    device_id: str
    phase: str
    nonce: bytes
    payload: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class EndorsedKey:
    """A device's SecAgg identity key (raw Ed25519 public key, 32 bytes) with its device
    certificate (DER) and the certificate key's signature over (purpose, fleet, device id,
    round id, SecAgg key) (``identity.endorse``). The coordinator relays it; whoever uses the
    key checks the endorsement itself (``identity.verify_secagg_endorsement``)."""

    key: bytes
    cert: bytes = field(repr=False)
    signature: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SecureRoundConfig:
    """What a device needs to join one SecAgg+ instance (the ``SecAggParams`` fields) and the
    endorsed identity keys of its neighbours (device id -> ``EndorsedKey``)."""

    round_id: int
    session: bytes
    roster: tuple[str, ...]
    length: int
    server_key: bytes
    bits: int
    degree: int
    threshold: int
    min_survivors: int
    identities: dict[str, EndorsedKey] = field(default_factory=dict)
