"""Fixtures for attestation unit tests: a small fleet of SoftTpm devices and a verifier."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from attfix import T0, SoftFleet, reference

from ztfm.attestation import AttestationVerifier, SoftManufacturer, UnsafeRngNonceSource


@pytest.fixture
def fleet() -> SoftFleet:
    rng = np.random.default_rng(7)
    maker = SoftManufacturer(rng, T0)
    verifier = AttestationVerifier(
        manufacturer_roots=[],
        soft_roots=[maker.root_certificate],
        reference=reference(),
        nonces=UnsafeRngNonceSource(np.random.default_rng(8)),
        max_quote_age_s=30.0,
    )
    return SoftFleet(rng, maker, verifier)


@pytest.fixture
def make_fleet() -> Callable[[int], SoftFleet]:
    def _make(seed: int) -> SoftFleet:
        rng = np.random.default_rng(seed)
        maker = SoftManufacturer(rng, T0, name=f"other maker {seed}")
        verifier = AttestationVerifier(
            manufacturer_roots=[],
            soft_roots=[maker.root_certificate],
            reference=reference(),
            nonces=UnsafeRngNonceSource(np.random.default_rng(seed + 1)),
        )
        return SoftFleet(rng, maker, verifier)

    return _make
