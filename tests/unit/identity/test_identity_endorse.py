"""A device certificate's endorsement of a SecAgg identity key: verified only for the right
certificate (fleet CA, valid now, not revoked, device role, this device), round and key."""

from __future__ import annotations

import pytest
from idfix import FLEET, T0, Device, make_device

from ztfm.errors import IdentityError
from ztfm.identity import (
    CertValidator,
    FleetCA,
    RevocationChecker,
    endorse_secagg_key,
    secagg_endorsement_message,
    verify_secagg_endorsement,
)
from ztfm.identity.endorse import SECAGG_IDENTITY_PURPOSE

KEY = bytes(range(32))
ROUND = 7


def _verify(
    validator: CertValidator,
    dev: Device,
    sig: bytes,
    *,
    device_id: str | None = None,
    round_id: int = ROUND,
    key: bytes = KEY,
    now: float = T0 + 10,
) -> None:
    verify_secagg_endorsement(
        validator,
        dev.cert.der,
        sig,
        device_id=device_id or dev.identity.device_id,
        round_id=round_id,
        secagg_key=key,
        now=now,
    )


def test_genuine_endorsement_verifies_and_names_the_device(
    ca: FleetCA, validator: CertValidator
) -> None:
    dev = make_device(ca, "cam-1")
    sig = endorse_secagg_key(dev.keys, dev.identity, ROUND, KEY)
    got = verify_secagg_endorsement(
        validator, dev.cert.der, sig, device_id="cam-1", round_id=ROUND, secagg_key=KEY, now=T0
    )
    assert got == dev.identity


def test_message_is_domain_separated_and_binds_every_field() -> None:
    base = secagg_endorsement_message(FLEET, "cam-1", ROUND, KEY)
    assert SECAGG_IDENTITY_PURPOSE in base
    others = {
        secagg_endorsement_message("other.example", "cam-1", ROUND, KEY),
        secagg_endorsement_message(FLEET, "cam-2", ROUND, KEY),
        secagg_endorsement_message(FLEET, "cam-1", ROUND + 1, KEY),
        secagg_endorsement_message(FLEET, "cam-1", ROUND, bytes(32)),
        # length prefixes: moving a character between fields changes the bytes
        secagg_endorsement_message(FLEET + "c", "am-1", ROUND, KEY),
    }
    assert base not in others and len(others) == 5
    for bad_round in (-1, 2**63, True):
        with pytest.raises(IdentityError, match="round id"):
            secagg_endorsement_message(FLEET, "cam-1", bad_round, KEY)
    with pytest.raises(IdentityError, match="32 bytes"):
        secagg_endorsement_message(FLEET, "cam-1", ROUND, KEY[:31])


def test_endorsement_for_another_key_round_or_device_is_rejected(
    ca: FleetCA, validator: CertValidator
) -> None:
    dev = make_device(ca, "cam-1")
    other = make_device(ca, "cam-2")
    sig = endorse_secagg_key(dev.keys, dev.identity, ROUND, KEY)
    with pytest.raises(IdentityError, match="does not verify"):
        _verify(validator, dev, sig, key=bytes(32))  # a key the coordinator substituted
    with pytest.raises(IdentityError, match="does not verify"):
        _verify(validator, dev, sig, round_id=ROUND + 1)  # replayed into a later round
    with pytest.raises(IdentityError, match="names device 'cam-1', not 'cam-2'"):
        _verify(validator, dev, sig, device_id="cam-2")  # a genuine cert of another device
    # another device's cert with the first device's signature
    with pytest.raises(IdentityError, match="does not verify"):
        _verify(validator, other, sig)
    # a signature of the right signer over the right fields, but tampered
    with pytest.raises(IdentityError, match="does not verify"):
        _verify(validator, dev, sig[:-1] + bytes([sig[-1] ^ 1]))


def test_certificate_of_another_ca_expired_or_not_a_device_is_rejected(
    ca: FleetCA, other_ca: FleetCA, validator: CertValidator
) -> None:
    cases = [
        (make_device(other_ca, "cam-1"), T0 + 10, "not issued by the fleet CA"),
        (make_device(ca, "cam-1", now=T0 - 7200, ttl_s=3600), T0, "expired"),
        (make_device(ca, "cam-1", now=T0 + 3600), T0, "not yet valid"),
        (make_device(ca, "cam-1", role="gateway"), T0 + 10, "for a gateway, not a device"),
        (make_device(ca, "cam-1", role="coordinator"), T0 + 10, "coordinator, not a device"),
    ]
    for dev, now, match in cases:
        sig = endorse_secagg_key(dev.keys, dev.identity, ROUND, KEY)
        with pytest.raises(IdentityError, match=match):
            _verify(validator, dev, sig, now=now)


def test_revoked_or_malformed_certificate_is_rejected(ca: FleetCA) -> None:
    dev = make_device(ca, "cam-9")
    sig = endorse_secagg_key(dev.keys, dev.identity, ROUND, KEY)
    ca.revoke_serial(dev.cert.serial)
    checker = RevocationChecker(ca.cert.public_key, FLEET)
    checker.update(ca.publish_revocations(T0), T0)
    validator = CertValidator(ca.cert, FLEET, checker)
    with pytest.raises(IdentityError, match="revoked"):
        _verify(validator, dev, sig)
    with pytest.raises(IdentityError, match="malformed certificate"):
        verify_secagg_endorsement(
            validator, b"\x30\x03junk", sig, device_id="cam-9", round_id=1, secagg_key=KEY, now=T0
        )
    # a stale revocation list fails closed
    fresh = make_device(ca, "cam-10")
    sig = endorse_secagg_key(fresh.keys, fresh.identity, ROUND, KEY)
    with pytest.raises(IdentityError, match="stale"):
        _verify(validator, fresh, sig, now=T0 + 3000)
