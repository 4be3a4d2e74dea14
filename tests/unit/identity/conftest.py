"""Fixtures: a fleet CA at a fixed time, enrolled devices, validators."""

from __future__ import annotations

import pytest
from idfix import FLEET, T0, Device, make_device

from ztfm.identity import CertValidator, FleetCA, RevocationChecker


@pytest.fixture(scope="module")
def ca() -> FleetCA:
    return FleetCA.create(FLEET, T0 - 86400)


@pytest.fixture(scope="module")
def other_ca() -> FleetCA:
    return FleetCA.create(FLEET, T0 - 86400)


@pytest.fixture
def checker(ca: FleetCA) -> RevocationChecker:
    chk = RevocationChecker(ca.cert.public_key, FLEET)
    chk.update(ca.publish_revocations(T0), T0)
    return chk


@pytest.fixture
def validator(ca: FleetCA, checker: RevocationChecker) -> CertValidator:
    return CertValidator(ca.cert, FLEET, checker)


@pytest.fixture(scope="module")
def cam1(ca: FleetCA) -> Device:
    return make_device(ca, "cam-1")


@pytest.fixture(scope="module")
def cam2(ca: FleetCA) -> Device:
    return make_device(ca, "cam-2")
