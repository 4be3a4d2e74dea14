"""A device certificate's endorsement of the device's SecAgg identity key for one round.

SecAgg+ neighbours verify each other's key advertisements against a per-device Ed25519
"SecAgg identity key". Over the network those keys travel through the coordinator, so the
coordinator must not be the one vouching for them: each device signs, with its *certificate*
key (its ``KeyStore``), a domain-separated message binding (purpose, fleet, device id, round
id, SecAgg key), and sends its certificate with it. A neighbour accepts the key only if
``verify_secagg_endorsement`` passes: the certificate validates against the fleet CA the
neighbour already trusts (``CertValidator``: chain, validity window, fleet, revocation), names
exactly the expected device with the device role, and its key signed this round's message over
this SecAgg key. A key the coordinator made itself, a genuine certificate of another device, an
endorsement from another round or of another key all fail.
"""

from __future__ import annotations

import struct
from typing import Final

from ztfm.crypto.pki import Certificate
from ztfm.errors import CryptoError, IdentityError
from ztfm.identity.binding import _lp  # the request binding's length-prefix framing
from ztfm.identity.keystore import KeyStore
from ztfm.identity.spiffe import Identity
from ztfm.identity.validate import CertValidator

SECAGG_IDENTITY_PURPOSE: Final = b"ztfm-secagg-identity-v1"
SECAGG_KEY_BYTES: Final = 32


def secagg_endorsement_message(
    fleet: str, device_id: str, round_id: int, secagg_key: bytes
) -> bytes:
    """The canonical, length-prefixed bytes a device certificate key signs."""
    if not isinstance(round_id, int) or isinstance(round_id, bool) or not 0 <= round_id < 2**63:
        raise IdentityError("endorsement round id must be an int in [0, 2^63)")
    if not isinstance(secagg_key, bytes) or len(secagg_key) != SECAGG_KEY_BYTES:
        raise IdentityError(f"a SecAgg identity key is {SECAGG_KEY_BYTES} bytes")
    return b"".join(
        [
            _lp(SECAGG_IDENTITY_PURPOSE),
            _lp(fleet.encode()),
            _lp(device_id.encode()),
            struct.pack(">Q", round_id),
            _lp(secagg_key),
        ]
    )


def endorse_secagg_key(
    keystore: KeyStore, identity: Identity, round_id: int, secagg_key: bytes
) -> bytes:
    """The device's certificate key's signature over its SecAgg key for ``round_id``."""
    message = secagg_endorsement_message(identity.fleet, identity.device_id, round_id, secagg_key)
    return keystore.sign(message)


def verify_secagg_endorsement(
    validator: CertValidator,
    cert_der: bytes,
    signature: bytes,
    *,
    device_id: str,
    round_id: int,
    secagg_key: bytes,
    now: float,
) -> Identity:
    """Return the identity of ``device_id``'s valid certificate if it endorses ``secagg_key``
    for ``round_id``; raise ``IdentityError`` with the reason otherwise.

    Checked in order: the certificate parses and validates against the fleet CA now (chain,
    not a CA, validity window with the validator's skew, one URI SAN of this fleet, not revoked
    when the validator holds a revocation list), it names the device role and exactly
    ``device_id``, and ``signature`` verifies under its key over this round and this key."""
    try:
        cert = Certificate(cert_der)
    except CryptoError as exc:
        raise IdentityError(f"malformed certificate: {exc}") from exc
    identity = validator.validate(cert, now)
    if identity.role != "device":
        raise IdentityError(f"certificate is for a {identity.role}, not a device")
    if identity.device_id != device_id:
        raise IdentityError(f"certificate names device {identity.device_id!r}, not {device_id!r}")
    message = secagg_endorsement_message(validator.fleet, device_id, round_id, secagg_key)
    try:
        cert.public_key.verify(signature, message)
    except CryptoError as exc:
        raise IdentityError(
            "endorsement signature does not verify for this round and SecAgg key"
        ) from exc
    return identity


__all__ = [
    "SECAGG_IDENTITY_PURPOSE",
    "endorse_secagg_key",
    "secagg_endorsement_message",
    "verify_secagg_endorsement",
]
