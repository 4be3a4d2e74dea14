"""AttestationVerifier against SoftTpm devices: one honest path, many ways to be rejected."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from attfix import (
    FW_EVIL,
    FW_GOOD,
    FW_GOOD_2,
    MODEL_EVIL,
    MODEL_V1,
    MODEL_V2,
    T0,
    SoftFleet,
)

from ztfm.attestation import (
    AttestationVerifier,
    AttestingDevice,
    EnrolledDevice,
    EnrolmentRequest,
    Measurement,
    QuoteEvidence,
    QuoteRejected,
    SoftTpm,
)
from ztfm.attestation.soft import AK_ATTRIBUTES
from ztfm.attestation.structures import (
    ALG_ECDSA,
    ALG_SHA256,
    RESTRICTED,
    PcrSelection,
    QuoteInfo,
    TpmPublic,
    TpmSignature,
)
from ztfm.crypto.tpm import EccP256Key
from ztfm.errors import AttestationError, ConfigError, TpmError
from ztfm.types import DeviceId

CAM = DeviceId("cam-1")


def _round(fleet: SoftFleet, name: str = "cam-1", at: float = T0 + 10) -> QuoteEvidence:
    nonce = fleet.verifier.issue_nonce(DeviceId(name), at)
    return fleet.devices[name].quote(nonce)


def _reject(fleet: SoftFleet, ev: QuoteEvidence, reason: str, at: float = T0 + 11,
            name: str = "cam-1") -> QuoteRejected:  # fmt: skip
    with pytest.raises(QuoteRejected) as info:
        fleet.verifier.check_quote(DeviceId(name), ev, at)
    assert info.value.reason == reason, str(info.value)
    return info.value


# --- the honest path --------------------------------------------------------------------------
def test_enrolled_device_passes_every_round(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    for r in range(5):
        at = T0 + 100 * (r + 1)
        verdict = fleet.verifier.check_quote(CAM, _round(fleet, at=at), at + 1)
        assert verdict.ok and verdict.reason == "ok"
        assert verdict.firmware_version == "1.0.0"
        assert verdict.model_digest == MODEL_V1
        assert verdict.hardware_backed is False
        assert verdict.time == at + 1
        verdict.require_fresh(at + 2, max_age_s=60)
    assert fleet.verifier.latest_verdict(CAM) == verdict


def test_pcr_digest_equals_golden_value(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    verdict = fleet.verifier.check_quote(CAM, _round(fleet), T0 + 11)
    golden = fleet.verifier.reference.golden_digest("camera", "1.0.0", [MODEL_V1])
    assert verdict.pcr_digest == golden


def test_model_update_then_new_allow_list(fleet: SoftFleet) -> None:
    dev = fleet.enrol("cam-1")
    fleet.verifier.reference = fleet.verifier.reference.with_models([MODEL_V2])
    dev.measure_model(MODEL_V2)
    verdict = fleet.verifier.check_quote(CAM, _round(fleet), T0 + 11)
    assert verdict.model_digest == MODEL_V2


def test_second_firmware_version_is_recognised(fleet: SoftFleet) -> None:
    fleet.device("cam-1", fw=FW_GOOD_2)
    fleet.enrol("cam-1")
    assert fleet.verifier.check_quote(CAM, _round(fleet), T0 + 11).firmware_version == "1.1.0"


# --- nonce and freshness ----------------------------------------------------------------------
def test_wrong_nonce_is_rejected(fleet: SoftFleet) -> None:
    dev = fleet.enrol("cam-1")
    fleet.verifier.issue_nonce(CAM, T0 + 10)
    ev = dev.quote(b"\x42" * 32)
    assert "not issued" in str(_reject(fleet, ev, "nonce"))


def test_nonce_of_another_device_is_rejected(fleet: SoftFleet) -> None:
    dev = fleet.enrol("cam-1")
    fleet.enrol("cam-2")
    other = fleet.verifier.issue_nonce(DeviceId("cam-2"), T0 + 10)
    _reject(fleet, dev.quote(other), "nonce")


def test_replayed_quote_is_rejected(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    ev = _round(fleet)
    fleet.verifier.check_quote(CAM, ev, T0 + 11)
    _reject(fleet, ev, "nonce", at=T0 + 12)


def test_stale_quote_is_rejected(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    ev = _round(fleet, at=T0 + 10)
    err = _reject(fleet, ev, "stale", at=T0 + 10 + 31)
    assert "stale" in str(err)


def test_stale_nonce_is_burnt(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    ev = _round(fleet, at=T0 + 10)
    _reject(fleet, ev, "stale", at=T0 + 100)
    _reject(fleet, ev, "nonce", at=T0 + 11)


def test_nonce_from_the_future_is_rejected(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    ev = _round(fleet, at=T0 + 10)
    _reject(fleet, ev, "nonce", at=T0 + 5)


def test_only_latest_nonces_are_kept(fleet: SoftFleet) -> None:
    dev = fleet.enrol("cam-1")
    first = fleet.verifier.issue_nonce(CAM, T0 + 10)
    for _ in range(4):
        fleet.verifier.issue_nonce(CAM, T0 + 10)
    _reject(fleet, dev.quote(first), "nonce")


def test_nonce_for_unenrolled_device_is_refused(fleet: SoftFleet) -> None:
    with pytest.raises(AttestationError, match="not enrolled"):
        fleet.verifier.issue_nonce(DeviceId("ghost"), T0)


# --- measurements -----------------------------------------------------------------------------
def test_tampered_firmware_is_rejected(fleet: SoftFleet) -> None:
    fleet.device("cam-1", fw=FW_EVIL)
    fleet.enrol("cam-1")
    err = _reject(fleet, _round(fleet), "firmware")
    assert "allow-list" in str(err)


def test_tampered_firmware_with_forged_log_is_rejected(fleet: SoftFleet) -> None:
    fleet.device("cam-1", fw=FW_EVIL)
    fleet.enrol("cam-1")
    ev = _round(fleet)
    lie = (Measurement(8, FW_GOOD), *ev.log[1:])
    _reject(fleet, dataclasses.replace(ev, log=lie), "pcr_log")


def test_tampered_model_is_rejected(fleet: SoftFleet) -> None:
    fleet.device("cam-1", models=(MODEL_EVIL,))
    fleet.enrol("cam-1")
    assert "model" in str(_reject(fleet, _round(fleet), "model"))


def test_tampered_model_with_forged_log_is_rejected(fleet: SoftFleet) -> None:
    fleet.device("cam-1", models=(MODEL_EVIL,))
    fleet.enrol("cam-1")
    ev = _round(fleet)
    _reject(fleet, dataclasses.replace(ev, log=(ev.log[0], Measurement(9, MODEL_V1))), "pcr_log")


def test_model_missing_from_log_is_rejected(fleet: SoftFleet) -> None:
    fleet.device("cam-1", models=())
    fleet.enrol("cam-1")
    _reject(fleet, _round(fleet), "model")


def test_retired_model_as_latest_is_rejected(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    fleet.verifier.reference = fleet.verifier.reference.with_models([MODEL_V2])
    _reject(fleet, _round(fleet), "model")


def test_retired_model_earlier_in_log_is_accepted(fleet: SoftFleet) -> None:
    fleet.device("cam-1", models=(MODEL_V1, MODEL_V2))
    fleet.enrol("cam-1")
    fleet.verifier.reference = fleet.verifier.reference.with_models([MODEL_V2])
    assert fleet.verifier.check_quote(CAM, _round(fleet), T0 + 11).ok


def test_unknown_model_earlier_in_log_is_rejected(fleet: SoftFleet) -> None:
    fleet.device("cam-1", models=(MODEL_EVIL, MODEL_V1))
    fleet.enrol("cam-1")
    assert "since boot" in str(_reject(fleet, _round(fleet), "model"))


def test_firmware_of_another_device_type_is_rejected(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1", device_type="thermostat")
    _reject(fleet, _round(fleet), "firmware")


def test_firmware_measured_twice_is_rejected(fleet: SoftFleet) -> None:
    dev = fleet.enrol("cam-1")
    dev.tpm.extend_pcr(8, FW_GOOD)
    ev = _round(fleet)
    log = (ev.log[0], ev.log[0], *ev.log[1:])
    _reject(fleet, dataclasses.replace(ev, log=log), "firmware")


def test_device_refuses_second_firmware_measurement(fleet: SoftFleet) -> None:
    dev = fleet.device("cam-1")
    with pytest.raises(AttestationError, match="already measured"):
        dev.measure_firmware(FW_GOOD)


# --- who signed -------------------------------------------------------------------------------
def test_quote_from_another_devices_ak_is_rejected(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    intruder = fleet.enrol("cam-2")
    nonce = fleet.verifier.issue_nonce(CAM, T0 + 10)
    _reject(fleet, intruder.quote(nonce), "signer")


def test_quote_from_unbound_ak_claiming_enrolled_name_is_rejected(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    nonce = fleet.verifier.issue_nonce(CAM, T0 + 10)
    honest = fleet.devices["cam-1"].quote(nonce)
    info = QuoteInfo.from_bytes(honest.attest)
    rogue = EccP256Key.from_entropy(b"\x01" * 48)
    r, s = rogue.sign_sha256(info.raw)
    forged = dataclasses.replace(honest, signature=TpmSignature.build_ecdsa(r, s))
    _reject(fleet, forged, "signature")


@pytest.mark.parametrize("offset", [0, 6, 40, 70, -1])
def test_flipped_attest_byte_is_rejected(fleet: SoftFleet, offset: int) -> None:
    fleet.enrol("cam-1")
    ev = _round(fleet)
    raw = bytearray(ev.attest)
    raw[offset] ^= 0x01
    with pytest.raises(QuoteRejected):
        fleet.verifier.check_quote(CAM, dataclasses.replace(ev, attest=bytes(raw)), T0 + 11)


def test_flipped_signature_byte_is_rejected(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    ev = _round(fleet)
    raw = bytearray(ev.signature)
    raw[10] ^= 0x80
    _reject(fleet, dataclasses.replace(ev, signature=bytes(raw)), "signature")


def test_quote_over_other_pcrs_is_rejected(fleet: SoftFleet) -> None:
    dev = fleet.enrol("cam-1")
    nonce = fleet.verifier.issue_nonce(CAM, T0 + 10)
    attest, sig = dev.tpm.quote(nonce, PcrSelection((8,)))
    _reject(fleet, QuoteEvidence(attest, sig, dev.log), "selection")


def test_unknown_device_is_rejected(fleet: SoftFleet) -> None:
    dev = fleet.device("cam-1")
    ev = QuoteEvidence(*dev.tpm.quote(b"\x00" * 32, PcrSelection((8, 9))), dev.log)
    _reject(fleet, ev, "unknown_device")


def test_revoked_device_is_rejected(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    ev = _round(fleet)
    fleet.verifier.revoke(CAM)
    _reject(fleet, ev, "unknown_device")


def test_tpm_clock_rollback_is_rejected(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    early = _round(fleet, at=T0 + 10)
    late = _round(fleet, at=T0 + 10)
    fleet.verifier.check_quote(CAM, late, T0 + 11)
    _reject(fleet, early, "clock")


def test_garbage_attest_is_rejected(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    ev = _round(fleet)
    _reject(fleet, dataclasses.replace(ev, attest=b"\xff" * 40), "evidence")


def test_assess_turns_rejection_into_failed_verdict(fleet: SoftFleet) -> None:
    dev = fleet.enrol("cam-1")
    fleet.verifier.issue_nonce(CAM, T0 + 10)
    verdict = fleet.verifier.assess_quote(CAM, dev.quote(b"\x07" * 32), T0 + 11)
    assert not verdict.ok and verdict.reason == "nonce"
    assert fleet.verifier.latest_verdict(CAM) == verdict
    with pytest.raises(AttestationError, match="failed attestation"):
        verdict.require_fresh(T0 + 11, 60)


def test_old_passing_verdict_is_not_fresh(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    verdict = fleet.verifier.check_quote(CAM, _round(fleet), T0 + 11)
    with pytest.raises(AttestationError, match="no fresh"):
        verdict.require_fresh(T0 + 200, max_age_s=60)


# --- enrolment --------------------------------------------------------------------------------
def test_ek_cert_from_unknown_ca_is_rejected(fleet: SoftFleet, make_fleet) -> None:  # type: ignore[no-untyped-def]
    stranger = make_fleet(99).device("x")
    with pytest.raises(AttestationError, match="does not chain"):
        fleet.verifier.begin_enrolment(CAM, "camera", stranger.enrolment_request(), T0)


def test_ek_cert_outside_validity_is_rejected(fleet: SoftFleet) -> None:
    dev = fleet.device("cam-1")
    with pytest.raises(AttestationError, match="not valid at this time"):
        fleet.verifier.begin_enrolment(CAM, "camera", dev.enrolment_request(), T0 + 11 * 3.2e7)


def test_ek_public_not_matching_cert_is_rejected(fleet: SoftFleet) -> None:
    a, b = fleet.device("cam-1"), fleet.device("cam-2")
    req = dataclasses.replace(a.enrolment_request(), ek_public=b.tpm.ek_public())
    with pytest.raises(AttestationError, match="does not match the EK certificate"):
        fleet.verifier.begin_enrolment(CAM, "camera", req, T0)


def test_ak_that_is_not_restricted_is_rejected(fleet: SoftFleet) -> None:
    dev = fleet.device("cam-1")
    ak = TpmPublic.from_bytes(dev.tpm.ak_public())
    weak = TpmPublic.build_ecc(
        ak.key,  # type: ignore[arg-type]
        AK_ATTRIBUTES & ~RESTRICTED,
        scheme=(ALG_ECDSA, ALG_SHA256),
    )
    req = dataclasses.replace(dev.enrolment_request(), ak_public=weak.raw)
    with pytest.raises(AttestationError, match="AK must be"):
        fleet.verifier.begin_enrolment(CAM, "camera", req, T0)


def test_ek_that_is_a_signing_key_is_rejected(fleet: SoftFleet) -> None:
    dev = fleet.device("cam-1")
    req = dataclasses.replace(dev.enrolment_request(), ek_public=dev.tpm.ak_public())
    with pytest.raises(AttestationError, match="EK must"):
        fleet.verifier.begin_enrolment(CAM, "camera", req, T0)


def test_borrowed_ek_with_own_ak_cannot_enrol(fleet: SoftFleet) -> None:
    """An attacker presents a victim's EK certificate with an AK of its own choosing."""
    victim, attacker = fleet.device("victim"), fleet.device("attacker")
    req = dataclasses.replace(victim.enrolment_request(), ak_public=attacker.tpm.ak_public())
    challenge = fleet.verifier.begin_enrolment(CAM, "camera", req, T0)
    with pytest.raises(TpmError):  # the attacker's TPM holds a different EK
        attacker.activate(challenge)
    with pytest.raises(TpmError):  # the victim's TPM does not hold that AK
        victim.activate(challenge)
    with pytest.raises(AttestationError, match="not bound"):
        fleet.verifier.finish_enrolment(CAM, b"\x00" * 32, T0 + 1)


def test_wrong_secret_fails_and_clears_pending(fleet: SoftFleet) -> None:
    dev = fleet.device("cam-1")
    challenge = fleet.verifier.begin_enrolment(CAM, "camera", dev.enrolment_request(), T0)
    secret = dev.activate(challenge)
    with pytest.raises(AttestationError, match="not bound"):
        fleet.verifier.finish_enrolment(CAM, secret[:-1] + b"\x00", T0 + 1)
    with pytest.raises(AttestationError, match="no enrolment in progress"):
        fleet.verifier.finish_enrolment(CAM, secret, T0 + 1)


def test_expired_challenge_is_rejected(fleet: SoftFleet) -> None:
    dev = fleet.device("cam-1")
    challenge = fleet.verifier.begin_enrolment(CAM, "camera", dev.enrolment_request(), T0)
    with pytest.raises(AttestationError, match="expired"):
        fleet.verifier.finish_enrolment(CAM, dev.activate(challenge), T0 + 301)


def test_finish_without_begin_is_rejected(fleet: SoftFleet) -> None:
    with pytest.raises(AttestationError, match="no enrolment"):
        fleet.verifier.finish_enrolment(CAM, b"\x00" * 32, T0)


def test_malformed_ek_cert_is_rejected(fleet: SoftFleet) -> None:
    dev = fleet.device("cam-1")
    req = dataclasses.replace(dev.enrolment_request(), ek_certificate=b"\x30\x82garbage")
    with pytest.raises(AttestationError, match="malformed"):
        fleet.verifier.begin_enrolment(CAM, "camera", req, T0)


def test_tampered_credential_blob_fails_on_device(fleet: SoftFleet) -> None:
    dev = fleet.device("cam-1")
    ch = fleet.verifier.begin_enrolment(CAM, "camera", dev.enrolment_request(), T0)
    blob = bytearray(ch.credential_blob)
    blob[-1] ^= 1
    with pytest.raises(TpmError, match="integrity"):
        dev.activate(dataclasses.replace(ch, credential_blob=bytes(blob)))


def test_empty_request_fields_are_rejected() -> None:
    with pytest.raises(AttestationError):
        EnrolmentRequest(b"", b"x", b"y")


def test_verifier_needs_a_root() -> None:
    from ztfm.attestation import ReferenceValues, SystemNonceSource

    with pytest.raises(ConfigError, match="at least one"):
        AttestationVerifier([], ReferenceValues(), SystemNonceSource())
    with pytest.raises(ConfigError, match="bad manufacturer"):
        AttestationVerifier([b"not a cert"], ReferenceValues(), SystemNonceSource())


def test_restore_enrolment_keeps_quotes_verifiable(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    record = fleet.verifier.enrolled(CAM)
    fleet.verifier.revoke(CAM)
    fleet.verifier.restore_enrolment(record)
    assert fleet.verifier.check_quote(CAM, _round(fleet), T0 + 11).ok


def test_same_seed_same_devices() -> None:
    from ztfm.attestation import SoftManufacturer

    def keys(seed: int) -> bytes:
        rng = np.random.default_rng(seed)
        maker = SoftManufacturer(rng, T0)
        return AttestingDevice(SoftTpm(maker, rng, T0)).tpm.ak_public()

    assert keys(3) == keys(3) != keys(4)


def test_enrolment_record_round_trips_and_rejects_tampering(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    record = fleet.verifier.enrolled(CAM).to_dict()
    assert EnrolledDevice.from_dict(record) == fleet.verifier.enrolled(CAM)
    other = fleet.device("cam-2").tpm.ak_public().hex()
    with pytest.raises(AttestationError, match="does not match"):
        EnrolledDevice.from_dict({**record, "ak_public": other})
    with pytest.raises(AttestationError, match="malformed"):
        EnrolledDevice.from_dict({k: v for k, v in record.items() if k != "ek_root"})
    with pytest.raises(AttestationError, match="malformed"):
        EnrolledDevice.from_dict({**record, "ak_public": "zz"})


def test_verdict_to_dict_is_json_safe(fleet: SoftFleet) -> None:
    import json

    fleet.enrol("cam-1")
    verdict = fleet.verifier.check_quote(CAM, _round(fleet), T0 + 11)
    data = json.loads(json.dumps(verdict.to_dict()))
    assert data["ok"] is True and data["model_digest"] == MODEL_V1.hex()


def test_wrong_argument_types_are_rejected(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    with pytest.raises(QuoteRejected):
        fleet.verifier.check_quote(CAM, {"attest": "00"}, T0)  # type: ignore[arg-type]
    with pytest.raises(AttestationError, match="wrong type"):
        fleet.verifier.begin_enrolment(CAM, "camera", {"x": 1}, T0)  # type: ignore[arg-type]
    with pytest.raises(AttestationError, match="device type"):
        fleet.verifier.begin_enrolment(CAM, "", fleet.devices["cam-1"].enrolment_request(), T0)


def test_status_and_eligibility_gate(fleet: SoftFleet) -> None:
    gate = fleet.verifier.eligibility_gate(max_age_s=60)
    assert fleet.verifier.status(CAM, T0) == (False, None)
    fleet.enrol("cam-1")
    assert gate("cam-1", T0) == "no attestation"
    fleet.verifier.check_quote(CAM, _round(fleet), T0 + 11)
    assert fleet.verifier.status(CAM, T0 + 21) == (True, 10.0)
    assert gate("cam-1", T0 + 21) is None
    assert gate("cam-1", T0 + 100) == "attestation is not fresh"
    assert fleet.verifier.status(CAM, T0) == (False, None)  # verdict from the future
    fleet.verifier.assess_quote(CAM, fleet.devices["cam-1"].quote(b"\x01" * 32), T0 + 30)
    assert gate("cam-1", T0 + 31) == "attestation failed"
    with pytest.raises(ConfigError):
        fleet.verifier.eligibility_gate(0)


def test_revoked_ek_cannot_enrol_and_drops_devices(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    fp = fleet.verifier.enrolled(CAM).ek_fingerprint
    record = fleet.verifier.enrolled(CAM)
    assert fleet.verifier.revoke_ek(fp) == [CAM]
    with pytest.raises(AttestationError, match="not enrolled"):
        fleet.verifier.enrolled(CAM)
    with pytest.raises(AttestationError, match="revoked"):
        fleet.verifier.begin_enrolment(
            CAM, "camera", fleet.devices["cam-1"].enrolment_request(), T0
        )
    with pytest.raises(AttestationError, match="revoked"):
        fleet.verifier.restore_enrolment(record)


def test_enrolled_device_id_cannot_be_taken_over_by_another_tpm(fleet: SoftFleet) -> None:
    fleet.enrol("cam-1")
    usurper = fleet.device("usurper")
    with pytest.raises(AttestationError, match="another EK"):
        fleet.verifier.begin_enrolment(CAM, "camera", usurper.enrolment_request(), T0 + 5)
    # the same TPM may re-enrol (e.g. after an AK change); a revoked id may move
    fleet.enrol("cam-1", now=T0 + 6)
    fleet.verifier.revoke(CAM)
    ch = fleet.verifier.begin_enrolment(CAM, "camera", usurper.enrolment_request(), T0 + 7)
    fleet.verifier.finish_enrolment(CAM, usurper.activate(ch), T0 + 8)


def test_ak_point_off_curve_is_rejected(fleet: SoftFleet) -> None:
    dev = fleet.device("cam-1")
    ak = TpmPublic.from_bytes(dev.tpm.ak_public())
    from ztfm.crypto.tpm import EccPublicPoint

    bogus = TpmPublic.build_ecc(
        EccPublicPoint("P-256", 1, 2), ak.attributes, scheme=(ALG_ECDSA, ALG_SHA256)
    )
    req = dataclasses.replace(dev.enrolment_request(), ak_public=bogus.raw)
    with pytest.raises(AttestationError, match="AK public key is invalid"):
        fleet.verifier.begin_enrolment(CAM, "camera", req, T0)


def test_enrolment_with_first_quote(fleet: SoftFleet) -> None:
    dev = fleet.device("cam-1")
    ch = fleet.verifier.begin_enrolment(CAM, "camera", dev.enrolment_request(), T0)
    assert len(ch.nonce) == 32
    fleet.verifier.finish_enrolment(CAM, dev.activate(ch), T0 + 1, quote=dev.quote(ch.nonce))
    assert fleet.verifier.status(CAM, T0 + 2) == (True, 1.0)


def test_tampered_device_cannot_enrol_with_first_quote(fleet: SoftFleet) -> None:
    dev = fleet.device("cam-1", fw=FW_EVIL)
    ch = fleet.verifier.begin_enrolment(CAM, "camera", dev.enrolment_request(), T0)
    with pytest.raises(QuoteRejected) as info:
        fleet.verifier.finish_enrolment(CAM, dev.activate(ch), T0 + 1, quote=dev.quote(ch.nonce))
    assert info.value.reason == "firmware"
    with pytest.raises(AttestationError, match="not enrolled"):
        fleet.verifier.enrolled(CAM)


def test_enrolment_quote_with_wrong_nonce_is_rejected(fleet: SoftFleet) -> None:
    dev = fleet.device("cam-1")
    ch = fleet.verifier.begin_enrolment(CAM, "camera", dev.enrolment_request(), T0)
    with pytest.raises(QuoteRejected):
        fleet.verifier.finish_enrolment(
            CAM, dev.activate(ch), T0 + 1, quote=dev.quote(b"\x00" * 32)
        )


def test_device_reboot_then_fresh_measurements_pass(fleet: SoftFleet) -> None:
    dev = fleet.enrol("cam-1")
    assert fleet.verifier.check_quote(CAM, _round(fleet), T0 + 11).ok
    tpm = dev.tpm
    assert isinstance(tpm, SoftTpm)
    tpm.reboot()
    dev.tpm_was_reset()
    dev.measure_firmware(FW_GOOD)
    dev.measure_model(MODEL_V1)
    assert fleet.verifier.check_quote(CAM, _round(fleet, at=T0 + 20), T0 + 21).ok


def test_reboot_without_log_reset_is_caught(fleet: SoftFleet) -> None:
    dev = fleet.enrol("cam-1")
    tpm = dev.tpm
    assert isinstance(tpm, SoftTpm)
    tpm.reboot()  # PCRs are zero, but the agent still reports the old log
    _reject(fleet, _round(fleet), "pcr_log")
