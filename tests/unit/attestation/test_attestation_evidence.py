"""Evidence values: JSON round trips, and strict rejection of malformed input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ztfm.attestation import (
    CredentialChallenge,
    EnrolmentRequest,
    Measurement,
    NonceBook,
    QuoteEvidence,
    UnsafeRngNonceSource,
)
from ztfm.attestation.evidence import MAX_LOG_EVENTS
from ztfm.errors import AttestationError
from ztfm.types import DeviceId

VEC: dict[str, Any] = json.loads(
    (Path(__file__).with_name("vectors") / "swtpm_quote.json").read_text()
)


def test_recorded_evidence_round_trips() -> None:
    q = QuoteEvidence.from_dict(VEC["quote"])
    assert QuoteEvidence.from_dict(q.to_dict()) == q
    e = EnrolmentRequest.from_dict(VEC["enrolment"])
    assert EnrolmentRequest.from_dict(e.to_dict()) == e
    c = CredentialChallenge(b"\x01" * 70, b"\x02" * 256)
    assert CredentialChallenge.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("attest"),
        lambda d: d.update(attest="zz"),
        lambda d: d.update(attest=123),
        lambda d: d.update(attest=""),
        lambda d: d.update(signature="00" * 5000),
        lambda d: d.update(log="not a list"),
        lambda d: d.update(log=[{"pcr": 8, "digest": "00" * 31}]),
        lambda d: d.update(log=[{"pcr": 7, "digest": "00" * 32}]),
        lambda d: d.update(log=[{"pcr": True, "digest": "00" * 32}]),
        lambda d: d.update(log=[{"pcr": 8}]),
        lambda d: d.update(log=[{"pcr": 8, "digest": "00" * 32, "label": "x" * 200}]),
        lambda d: d.update(log=[{"pcr": 9, "digest": "00" * 32}] * (MAX_LOG_EVENTS + 1)),
        lambda d: d.update(log=["x"]),
    ],
)
def test_malformed_quote_dicts_rejected(mutate: Any) -> None:
    d = json.loads(json.dumps(VEC["quote"]))
    mutate(d)
    with pytest.raises(AttestationError):
        QuoteEvidence.from_dict(d)


def test_non_mapping_rejected() -> None:
    with pytest.raises(AttestationError):
        EnrolmentRequest.from_dict([])  # type: ignore[arg-type]
    with pytest.raises(AttestationError):
        CredentialChallenge.from_dict({"credential_blob": "00" * 600, "encrypted_secret": "00"})


def test_measurement_needs_a_measured_pcr() -> None:
    with pytest.raises(AttestationError):
        Measurement(0, b"\x00" * 32)


def test_nonce_book_single_use_and_bounded(rng: Any) -> None:
    book = NonceBook(UnsafeRngNonceSource(rng), max_outstanding=2)
    dev = DeviceId("d")
    a = book.issue(dev, 0.0)
    assert book.consume(dev, a, 1.0, 10.0) == 0.0
    with pytest.raises(AttestationError, match="already used"):
        book.consume(dev, a, 1.0, 10.0)
    first = book.issue(dev, 0.0)
    book.issue(dev, 0.0)
    book.issue(dev, 0.0)
    assert book.outstanding(dev) == 2
    with pytest.raises(AttestationError):
        book.consume(dev, first, 1.0, 10.0)


def test_rng_nonces_reproducible() -> None:
    import numpy as np

    a = UnsafeRngNonceSource(np.random.default_rng(1)).token(32)
    assert a == UnsafeRngNonceSource(np.random.default_rng(1)).token(32)
    assert len(a) == 32


def test_short_nonce_source_rejected() -> None:
    class Short:
        def token(self, n: int) -> bytes:
            return b"\x00"

    with pytest.raises(AttestationError, match="wrong number"):
        NonceBook(Short()).issue(DeviceId("d"), 0.0)
