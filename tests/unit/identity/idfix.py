"""Helpers for identity tests: constants and device enrolment."""

from __future__ import annotations

from dataclasses import dataclass

from ztfm.crypto.pki import Certificate
from ztfm.identity import (
    FleetCA,
    Identity,
    MemoryKeyStore,
)

T0 = 1_800_000_000.0
FLEET = "acme.example"


@dataclass
class Device:
    identity: Identity
    keys: MemoryKeyStore
    cert: Certificate


def make_device(
    ca: FleetCA,
    device_id: str,
    segment: str = "cams",
    role: str = "device",
    now: float = T0,
    ttl_s: float = 3600.0,
) -> Device:
    ident = Identity(ca.fleet, segment, role, device_id)
    keys = MemoryKeyStore()
    cert = ca.issue(keys.make_csr(ident), ident, now, ttl_s)
    return Device(ident, keys, cert)
