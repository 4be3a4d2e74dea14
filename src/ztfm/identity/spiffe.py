"""SPIFFE-style workload identities: ``spiffe://<fleet>/segment/<s>/role/<r>/id/<device-id>``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from ztfm.errors import IdentityError

ROLES: Final = frozenset({"device", "gateway", "coordinator"})
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
_FLEET = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,253}[a-z0-9])?")
MAX_URI_CHARS: Final = 512


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a certificate names. Every field is validated, so an ``Identity`` that exists is sane.

    ``fleet`` is a trust-domain name (lowercase DNS-like); ``segment`` and ``device_id`` are
    lowercase names of 1-64 chars from ``[a-z0-9._-]``; ``role`` is device, gateway or coordinator.
    """

    fleet: str
    segment: str
    role: str
    device_id: str

    def __post_init__(self) -> None:
        if not isinstance(self.fleet, str) or not _FLEET.fullmatch(self.fleet):
            raise IdentityError(f"invalid fleet name {self.fleet!r}")
        for label, value in (("segment", self.segment), ("device id", self.device_id)):
            if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
                raise IdentityError(f"invalid {label} {value!r}")
        if self.role not in ROLES:
            raise IdentityError(f"invalid role {self.role!r} (expected one of {sorted(ROLES)})")

    @property
    def uri(self) -> str:
        return f"spiffe://{self.fleet}/segment/{self.segment}/role/{self.role}/id/{self.device_id}"

    @classmethod
    def from_uri(cls, uri: str) -> Identity:
        """Parse a SPIFFE URI; anything but the exact expected shape raises ``IdentityError``."""
        if not isinstance(uri, str) or len(uri) > MAX_URI_CHARS:
            raise IdentityError("identity URI is missing or too long")
        prefix = "spiffe://"
        if not uri.startswith(prefix):
            raise IdentityError("identity URI is not spiffe://")
        rest = uri[len(prefix) :]
        parts = rest.split("/")
        if len(parts) != 7 or parts[1] != "segment" or parts[3] != "role" or parts[5] != "id":
            raise IdentityError(
                "identity URI must be spiffe://<fleet>/segment/<s>/role/<r>/id/<device-id>"
            )
        return cls(fleet=parts[0], segment=parts[2], role=parts[4], device_id=parts[6])

    def __str__(self) -> str:
        return self.uri


def ca_uri(fleet: str) -> str:
    """The URI SAN of a fleet's CA certificate (the SPIFFE trust-domain root)."""
    if not _FLEET.fullmatch(fleet):
        raise IdentityError(f"invalid fleet name {fleet!r}")
    return f"spiffe://{fleet}"
