"""Attestation end to end with real software TPMs (swtpm + tpm2-pytss), on 127.0.0.1.

Three devices enrol (EK certificate chain to swtpm's local CA, MakeCredential by the verifier,
ActivateCredential in the TPM) and attest every round with a fresh nonce; then every attack of
the brief is tried against real TPM output and must be rejected with its reason.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import pytest

from ztfm.attestation import (
    QUOTE_PCRS,
    AttestationVerifier,
    AttestingDevice,
    QuoteRejected,
    ReferenceValues,
    SoftManufacturer,
    SystemNonceSource,
)
from ztfm.attestation.swtpm import SwtpmCa, SwtpmProcess
from ztfm.errors import AttestationError, CryptoError, TpmError
from ztfm.types import DeviceId

pytestmark = pytest.mark.tpm

T0 = 1_900_000_000.0
FW = hashlib.sha256(b"gateway firmware 3.2.1").digest()
FW_EVIL = hashlib.sha256(b"gateway firmware 3.2.1 with implant").digest()
MODEL = hashlib.sha256(b"model bundle r1").digest()
MODEL_EVIL = hashlib.sha256(b"model bundle r1 backdoored").digest()


@dataclass
class Rig:
    verifier: AttestationVerifier
    devices: dict[str, AttestingDevice]


def _verifier(ca: SwtpmCa) -> AttestationVerifier:
    ref = ReferenceValues().with_firmware("gateway", "3.2.1", FW).with_models([MODEL])
    return AttestationVerifier(
        manufacturer_roots=[ca.root_cert_pem],
        intermediates=[ca.issuer_cert_pem],
        reference=ref,
        nonces=SystemNonceSource(),
        max_quote_age_s=30.0,
    )


def _opener() -> Iterator[Callable[[SwtpmProcess], AttestingDevice]]:
    from ztfm.attestation.tpm import Tpm

    opened: list[Tpm] = []

    def _open(proc: SwtpmProcess) -> AttestingDevice:
        tpm = Tpm(proc.tcti)
        opened.append(tpm)
        return AttestingDevice(tpm)

    yield _open
    for tpm in opened:
        tpm.close()


@pytest.fixture
def open_tpm() -> Iterator[Callable[[SwtpmProcess], AttestingDevice]]:
    yield from _opener()


@pytest.fixture(scope="module")
def open_tpm_module() -> Iterator[Callable[[SwtpmProcess], AttestingDevice]]:
    yield from _opener()


def _device(
    factory: Callable[[], SwtpmProcess],
    open_tpm: Callable[[SwtpmProcess], AttestingDevice],
    fw: bytes = FW,
    model: bytes = MODEL,
) -> AttestingDevice:
    dev = open_tpm(factory())
    dev.measure_firmware(fw, "firmware:3.2.1")
    dev.measure_model(model, "model:r1")
    return dev


def _enrol(
    v: AttestationVerifier,
    name: str,
    dev: AttestingDevice,
    now: float = T0,
    first_quote: bool = False,
) -> None:
    challenge = v.begin_enrolment(DeviceId(name), "gateway", dev.enrolment_request(), now)
    quote = dev.quote(challenge.nonce) if first_quote else None
    v.finish_enrolment(DeviceId(name), dev.activate(challenge), now + 1, quote=quote)


def test_three_swtpm_devices_enrol_and_attest_every_round(
    swtpm_ca: SwtpmCa,
    swtpm_factory: Callable[[], SwtpmProcess],
    open_tpm: Callable[[SwtpmProcess], AttestingDevice],
) -> None:
    devices = {f"gw-{i}": _device(swtpm_factory, open_tpm) for i in range(3)}
    v = _verifier(swtpm_ca)
    for name, dev in devices.items():
        _enrol(v, name, dev, first_quote=True)  # enrolment nonce -> first quote
        assert v.enrolled(DeviceId(name)).ek_root == "CN=swtpm-localca-rootca"
        assert v.status(DeviceId(name), T0 + 1) == (True, 0.0)
    seen_nonces: set[bytes] = set()
    for rnd in range(3):
        now = T0 + 60 * (rnd + 1)
        for name, dev in devices.items():
            nonce = v.issue_nonce(DeviceId(name), now)
            assert nonce not in seen_nonces
            seen_nonces.add(nonce)
            verdict = v.check_quote(DeviceId(name), dev.quote(nonce), now + 0.5)
            assert verdict.ok and verdict.firmware_version == "3.2.1"
            assert verdict.model_digest == MODEL
    # A model update: each device loads r2 (PCR 9 extended again) and still attests.
    model2 = hashlib.sha256(b"model bundle r2").digest()
    v.reference = v.reference.with_models([model2])
    for name, dev in devices.items():
        dev.measure_model(model2, "model:r2")
        nonce = v.issue_nonce(DeviceId(name), T0 + 500)
        assert v.check_quote(DeviceId(name), dev.quote(nonce), T0 + 501).model_digest == model2
    # The golden PCR values equal what the TPMs really hold.
    dev0 = devices["gw-0"]
    golden = v.reference.golden_pcrs("gateway", "3.2.1", [MODEL, model2])
    assert dev0.tpm.read_pcrs(QUOTE_PCRS) == golden


@pytest.fixture(scope="module")
def rig(
    swtpm_ca: SwtpmCa,
    swtpm_module_factory: Callable[[], SwtpmProcess],
    open_tpm_module: Callable[[SwtpmProcess], AttestingDevice],
) -> Rig:
    devices = {
        "good": _device(swtpm_module_factory, open_tpm_module),
        "other": _device(swtpm_module_factory, open_tpm_module),
        "evil-fw": _device(swtpm_module_factory, open_tpm_module, fw=FW_EVIL),
        "evil-model": _device(swtpm_module_factory, open_tpm_module, model=MODEL_EVIL),
    }
    v = _verifier(swtpm_ca)
    for name, dev in devices.items():
        _enrol(v, name, dev)
    return Rig(v, devices)


def _reason(rig: Rig, name: str, ev_name: str, nonce: bytes | None, at: float) -> str:
    dev = DeviceId(name)
    issued = rig.verifier.issue_nonce(dev, T0 + 10)
    ev = rig.devices[ev_name].quote(nonce if nonce is not None else issued)
    with pytest.raises(QuoteRejected) as info:
        rig.verifier.check_quote(dev, ev, at)
    return info.value.reason


def test_real_tpm_attacks_are_rejected(rig: Rig) -> None:
    # wrong nonce
    assert _reason(rig, "good", "good", b"\x13" * 32, T0 + 11) == "nonce"
    # stale quote (nonce issued 10 s after T0, quote checked 31 s later)
    assert _reason(rig, "good", "good", None, T0 + 41) == "stale"
    # tampered firmware: honest log, PCR 8 holds the implant's digest
    assert _reason(rig, "evil-fw", "evil-fw", None, T0 + 11) == "firmware"
    # tampered model: PCR 9 holds a backdoored bundle
    assert _reason(rig, "evil-model", "evil-model", None, T0 + 11) == "model"
    # quote by an AK bound to another EK, presented as "good"
    assert _reason(rig, "good", "other", None, T0 + 11) == "signer"
    # a lying log for the tampered firmware does not match the quoted PCRs
    dev = DeviceId("evil-fw")
    ev = rig.devices["evil-fw"].quote(rig.verifier.issue_nonce(dev, T0 + 10))
    lie = replace(ev, log=(replace(ev.log[0], digest=FW), *ev.log[1:]))
    with pytest.raises(QuoteRejected) as info:
        rig.verifier.check_quote(dev, lie, T0 + 11)
    assert info.value.reason == "pcr_log"
    # and the honest device still passes after all that
    nonce = rig.verifier.issue_nonce(DeviceId("good"), T0 + 20)
    assert rig.verifier.check_quote(DeviceId("good"), rig.devices["good"].quote(nonce), T0 + 21).ok


def test_ak_not_bound_to_the_ek_cannot_enrol(rig: Rig) -> None:
    victim, attacker = rig.devices["good"], rig.devices["other"]
    req = replace(victim.enrolment_request(), ak_public=attacker.tpm.ak_public())
    # another identity cannot borrow the victim's (already enrolled) EK at all
    with pytest.raises(AttestationError, match="already enrolled for device good"):
        rig.verifier.begin_enrolment(DeviceId("mallory"), "gateway", req, T0)
    # under the victim's own identity, the foreign AK cannot be bound
    before = rig.verifier.enrolled(DeviceId("good"))
    challenge = rig.verifier.begin_enrolment(DeviceId("good"), "gateway", req, T0)
    with pytest.raises(TpmError):  # wrapped to the victim's EK: the attacker's TPM can't open it
        attacker.activate(challenge)
    with pytest.raises(TpmError):  # the victim's TPM does not hold an object with that AK name
        victim.activate(challenge)
    with pytest.raises(AttestationError, match="not bound"):
        rig.verifier.finish_enrolment(DeviceId("good"), b"\x00" * 32, T0 + 1)
    assert rig.verifier.enrolled(DeviceId("good")) == before  # the victim's binding is kept


def test_ek_cert_from_unknown_ca_is_rejected(
    swtpm: SwtpmProcess, open_tpm: Callable[[SwtpmProcess], AttestingDevice]
) -> None:
    dev = open_tpm(swtpm)
    other_maker = SoftManufacturer(np.random.default_rng(0), T0, name="some other manufacturer")
    v = AttestationVerifier(
        manufacturer_roots=[other_maker.root_certificate],
        reference=ReferenceValues(),
        nonces=SystemNonceSource(),
    )
    with pytest.raises(AttestationError, match="does not chain"):
        v.begin_enrolment(DeviceId("x"), "gateway", dev.enrolment_request(), T0)


def test_swtpm_process_stops_and_bad_tcti_is_refused(swtpm: SwtpmProcess) -> None:
    from ztfm.attestation.tpm import Tpm

    pid = swtpm.pid
    swtpm.stop()
    with pytest.raises(TpmError):
        _ = swtpm.tcti
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(TpmError, match="unsupported TCTI"):
        Tpm("mssim;rm -rf /")


def test_tpm_resident_request_key(
    swtpm_ca: SwtpmCa, swtpm: SwtpmProcess, open_tpm: Callable[[SwtpmProcess], AttestingDevice]
) -> None:
    dev = open_tpm(swtpm)
    v = _verifier(swtpm_ca)
    _enrol(v, "signer", dev)
    did = DeviceId("signer")
    key = v.certify_request_key(did, dev.certify_request_key(v.issue_nonce(did, T0 + 5)), T0 + 6)
    message = b"ztfm/update round=3 digest=..."
    key.verify(dev.sign_request(message), message)
    with pytest.raises(CryptoError):
        key.verify(dev.sign_request(message), message + b"!")
    # the AK signed a certification of exactly this key: another name is refused
    cert = dev.certify_request_key(v.issue_nonce(did, T0 + 7))
    with pytest.raises(AttestationError, match="unrestricted"):
        v.certify_request_key(did, replace(cert, key_public=dev.tpm.ak_public()), T0 + 8)


def test_ak_survives_tpm_restart_and_old_quotes_do_not(
    swtpm_ca: SwtpmCa, swtpm: SwtpmProcess
) -> None:
    """Power-cycle a swtpm: PCRs reset, reset counter goes up, the AK (a primary) is the same."""
    from ztfm.attestation.structures import QuoteInfo
    from ztfm.attestation.tpm import Tpm

    v = _verifier(swtpm_ca)
    did = DeviceId("cycler")
    with Tpm(swtpm.tcti) as tpm:
        dev = AttestingDevice(tpm)
        dev.measure_firmware(FW)
        dev.measure_model(MODEL)
        _enrol(v, "cycler", dev, first_quote=True)
        old = dev.quote(v.issue_nonce(did, T0 + 10))
        assert v.check_quote(did, old, T0 + 11).ok
        ak_before = tpm.ak_public()
    swtpm.stop()
    swtpm.start()  # same state directory, new port
    with Tpm(swtpm.tcti) as tpm:
        assert tpm.ak_public() == ak_before
        dev = AttestingDevice(tpm)
        # the PCRs are zero again: an agent that kept its old log is caught
        nonce = v.issue_nonce(did, T0 + 20)
        stale_log = replace(dev.quote(nonce), log=old.log)
        with pytest.raises(QuoteRejected) as info:
            v.check_quote(did, stale_log, T0 + 21)
        assert info.value.reason == "pcr_log"
        dev.measure_firmware(FW)
        dev.measure_model(MODEL)
        fresh = dev.quote(v.issue_nonce(did, T0 + 30))
        assert v.check_quote(did, fresh, T0 + 31).ok
        assert (
            QuoteInfo.from_bytes(fresh.attest).reset_count
            > QuoteInfo.from_bytes(old.attest).reset_count
        )
        with pytest.raises(QuoteRejected) as info:  # the pre-restart quote is dead
            v.check_quote(did, old, T0 + 32)
        assert info.value.reason == "nonce"


def _install_ecc_ek_cert(proc: SwtpmProcess, maker: SoftManufacturer) -> None:
    """Play the manufacturer: certify the TPM's ECC P-256 EK and store it at NV 0x01C0000A."""
    from tpm2_pytss import ESAPI, TCTILdr
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPMA_NV
    from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC
    from tpm2_pytss.utils import NVReadEK, create_ek_template

    from ztfm.attestation.structures import TpmPublic

    ctx = ESAPI(TCTILdr("swtpm", f"host=127.0.0.1,port={proc.port}"))
    try:
        _, template = create_ek_template("EK-ECC256", NVReadEK(ctx))
        handle, pub, _, _, _ = ctx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
        ctx.flush_context(handle)
        cert = maker.issue(TpmPublic.from_bytes(bytes(pub.publicArea.marshal())), "ecc-ek", T0)
        attrs = (
            TPMA_NV.PPWRITE | TPMA_NV.PPREAD | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD
            | TPMA_NV.PLATFORMCREATE | TPMA_NV.NO_DA
        )  # fmt: skip
        info = TPM2B_NV_PUBLIC(
            nvPublic=TPMS_NV_PUBLIC(
                nvIndex=0x01C0000A, nameAlg=TPM2_ALG.SHA256, attributes=attrs, dataSize=len(cert)
            )
        )
        nv = ctx.nv_define_space(b"", info, ESYS_TR.PLATFORM)
        ctx.nv_write(nv, cert, 0, ESYS_TR.PLATFORM)
    finally:
        ctx.close()


def test_ecc_ek_enrolment_against_real_tpm(swtpm: SwtpmProcess) -> None:
    """ECC MakeCredential (ECDH + KDFe) from ztfm, ActivateCredential in swtpm."""
    from ztfm.attestation.tpm import Tpm

    maker = SoftManufacturer(np.random.default_rng(9), T0, name="ecc ek test maker")
    _install_ecc_ek_cert(swtpm, maker)
    v = AttestationVerifier(
        manufacturer_roots=[maker.root_certificate],
        reference=ReferenceValues().with_firmware("gateway", "3.2.1", FW).with_models([MODEL]),
        nonces=SystemNonceSource(),
    )
    with Tpm(swtpm.tcti, ek_kind="ecc") as tpm:
        dev = AttestingDevice(tpm)
        dev.measure_firmware(FW)
        dev.measure_model(MODEL)
        _enrol(v, "ecc-dev", dev, first_quote=True)
        assert v.status(DeviceId("ecc-dev"), T0 + 2) == (True, 1.0)
    with pytest.raises(TpmError, match="EK kind"):
        Tpm(swtpm.tcti, ek_kind="dsa")


def test_second_swtpm_on_the_same_state_fails_cleanly(swtpm: SwtpmProcess) -> None:
    with pytest.raises(TpmError, match="did not start"):
        SwtpmProcess(swtpm.state_dir, start_timeout_s=3).start()
