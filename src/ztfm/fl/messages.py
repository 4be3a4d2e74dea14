"""The messages of one federated round.

Only these cross the boundary between a device and the coordinator. None of them carries
telemetry rows: a task carries global parameters and settings, an update carries a parameter delta
and a sample count, an evaluation carries confusion counts and a ROC-AUC.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ztfm.fl.params import Params


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
    """Device -> coordinator: the change of parameters after local training."""

    round_id: int
    device_id: str
    model_version: int
    delta: Params
    n_samples: int
    train_loss: float
    nonce: bytes


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
