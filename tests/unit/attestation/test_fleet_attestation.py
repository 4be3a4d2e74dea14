"""The coordinator's attestation service (``coordinator.attest.FleetAttestation``) on SoftTpms:
enrolment over the ``Attest`` payloads, one quote a round, the eligibility gate, the policy
context, and every malformed, replayed or forged input refused with a reason."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from ztfm.attestation import (
    AttestationVerifier,
    AttestingDevice,
    CredentialChallenge,
    ReferenceValues,
    SoftManufacturer,
    SoftTpm,
    UnsafeRngNonceSource,
)
from ztfm.audit import MemoryAuditSink
from ztfm.coordinator.attest import MAX_ATTEST_BYTES, FleetAttestation
from ztfm.device.attest import AttestingEndpoint
from ztfm.errors import RoundError, UpdateRejected
from ztfm.fl import codec
from ztfm.fl.messages import AttestReply, AttestTask
from ztfm.identity import Identity
from ztfm.trust import TrustManager
from ztfm.trust.store import MemoryTrustStore
from ztfm.types import DeviceId

T0 = 1_900_000_000.0
FW = hashlib.sha256(b"fw 1").digest()
M1 = hashlib.sha256(b"bundle v1").digest()
M2 = hashlib.sha256(b"bundle v2").digest()


def _ident(dev: str, role: str = "device") -> Identity:
    return Identity("fleet.local", "cams", role, dev)


class _Fleet:
    def __init__(self) -> None:
        rng = np.random.default_rng(3)
        self.maker = SoftManufacturer(rng, T0)
        self.rng = rng
        verifier = AttestationVerifier(
            manufacturer_roots=[],
            soft_roots=[self.maker.root_certificate],
            reference=ReferenceValues().with_firmware("cams", "1", FW),
            nonces=UnsafeRngNonceSource(np.random.default_rng(4)),
        )
        self.audit = MemoryAuditSink()
        self.trust = TrustManager(MemoryTrustStore())
        self.log: list[dict[str, object]] = []
        self.fa = FleetAttestation(verifier, self.audit, trust=self.trust, trust_log=self.log)
        self.fa.allow_model(M1)

    def device(self, name: str, fw: bytes = FW, model: bytes = M1) -> AttestingDevice:
        dev = AttestingDevice(SoftTpm(self.maker, self.rng, T0, name))
        dev.measure_firmware(fw)
        dev.measure_model(model)
        return dev

    def enrol(self, name: str, dev: AttestingDevice, now: float = T0) -> bytes:
        req = {"op": "enrol", "request": dev.enrolment_request().to_dict()}
        reply = self.fa(_ident(name), json.dumps(req).encode(), now)
        challenge = CredentialChallenge.from_dict(json.loads(reply)["challenge"])
        act = {
            "op": "activate",
            "secret": dev.activate(challenge).hex(),
            "quote": dev.quote(challenge.nonce).to_dict(),
        }
        return self.fa(_ident(name), json.dumps(act).encode(), now + 1)


def test_enrol_then_one_quote_a_round_gates_and_feeds_trust() -> None:
    f = _Fleet()
    devs = {n: f.device(n) for n in ("cam-0", "cam-1")}
    for n, d in devs.items():
        assert json.loads(f.enrol(n, d))["ok"] is True
    ctx = f.fa.context_for(_ident("cam-0"), T0 + 2)
    assert ctx.attestation_ok and ctx.attestation_age_s == pytest.approx(1.0)
    assert f.fa.gate("cam-0", T0 + 2) == "attestation: no quote for this round"
    tasks = f.fa.round_tasks(["cam-0", "cam-1", "never-enrolled"], 1, T0 + 10)
    assert sorted(tasks) == ["cam-0", "cam-1"]  # no nonce for a device that is not enrolled
    assert f.log and all(c["device"] in devs for c in f.log)  # enrolment verdicts reached trust
    for n, d in devs.items():
        f.fa.submit(n, _answer(d, n, tasks[n]), T0 + 11)
        assert f.fa.gate(n, T0 + 12) is None
    assert f.fa.passed() == ["cam-0", "cam-1"]
    # a new round needs a new quote: the last round's pass does not carry over
    tasks = f.fa.round_tasks(["cam-0", "cam-1"], 2, T0 + 20)
    assert f.fa.gate("cam-0", T0 + 21) == "attestation: no quote for this round"
    # cam-1 loads an unknown model: its quote fails, it is out, and policy sees it
    devs["cam-1"].measure_model(hashlib.sha256(b"implant").digest())
    with pytest.raises(UpdateRejected, match="attestation failed: model"):
        f.fa.submit("cam-1", _answer(devs["cam-1"], "cam-1", tasks["cam-1"]), T0 + 21)
    assert f.fa.gate("cam-1", T0 + 22) == "attestation failed: model"
    assert not f.fa.context_for(_ident("cam-1"), T0 + 22).attestation_ok
    rec = f.trust.record(DeviceId("cam-1"), T0 + 22)
    assert rec.score < f.trust.record(DeviceId("cam-0"), T0 + 22).score


def test_a_new_release_is_allowed_and_the_one_before_it_too() -> None:
    f = _Fleet()
    dev = f.device("cam-0")
    f.enrol("cam-0", dev)
    f.fa.allow_model(M2)
    dev.measure_model(M2)
    tasks = f.fa.round_tasks(["cam-0"], 1, T0 + 5)
    f.fa.submit("cam-0", _answer(dev, "cam-0", tasks["cam-0"]), T0 + 6)
    old = f.device("cam-1", model=M1)  # still on the previous release: allowed
    assert json.loads(f.enrol("cam-1", old))["ok"]
    f.fa.allow_model(hashlib.sha256(b"bundle v3").digest())  # v1 now two releases behind
    with pytest.raises(RoundError, match="model"):
        f.enrol("cam-2", f.device("cam-2", model=M1))


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", '"op"'),
        (b'{"op": 3}', '"op"'),
        (b'{"op": "teleport"}', "unknown Attest op"),
        (b'{"op": "enrol"}', "TPM enrolment refused: malformed"),
        (b'{"op": "enrol", "request": {"ek_certificate": "zz"}}', "TPM enrolment refused"),
        (b'{"op": "activate", "secret": "00", "quote": {}}', "TPM enrolment refused"),
        (b"{" + b" " * MAX_ATTEST_BYTES + b"}", "exceeds"),
    ],
)
def test_malformed_attest_payloads_are_refused_with_a_reason(payload: bytes, match: str) -> None:
    f = _Fleet()
    with pytest.raises(RoundError, match=match):
        f.fa(_ident("cam-0"), payload, T0)
    assert f.fa.verifier.latest_verdict(DeviceId("cam-0")) is None


def test_only_devices_attest_and_only_for_themselves() -> None:
    f = _Fleet()
    dev = f.device("cam-0")
    req = json.dumps({"op": "enrol", "request": dev.enrolment_request().to_dict()}).encode()
    with pytest.raises(RoundError, match="does not attest"):
        f.fa(_ident("gw-0", role="gateway"), req, T0)
    f.enrol("cam-0", dev)
    other = f.device("cam-1")
    f.enrol("cam-1", other)
    tasks = f.fa.round_tasks(["cam-0", "cam-1"], 1, T0 + 5)
    reply = _answer(dev, "cam-0", tasks["cam-0"])
    with pytest.raises(UpdateRejected, match="another device"):
        f.fa.submit("cam-1", reply, T0 + 6)  # cam-1 replays cam-0's answer as its own
    # cam-1 answers its task with cam-0's nonce: the quote is not over its own nonce
    forged = _answer(other, "cam-1", tasks["cam-0"])
    with pytest.raises(UpdateRejected, match="attestation failed: nonce"):
        f.fa.submit("cam-1", forged, T0 + 6)
    # a reply for an old round, and evidence that is not a quote
    stale = codec.encode(AttestReply(0, "cam-0", "{}", b"\x00" * 32))
    with pytest.raises(UpdateRejected, match="round 0"):
        f.fa.submit("cam-0", stale, T0 + 6)
    junk = codec.encode(AttestReply(1, "cam-0", "{not json", b"\x00" * 32))
    with pytest.raises(UpdateRejected, match="attestation failed: evidence"):
        f.fa.submit("cam-0", junk, T0 + 6)
    with pytest.raises(UpdateRejected, match="expected an attestation reply"):
        f.fa.submit("cam-0", codec.encode(AttestTask(1, b"\x01" * 32)), T0 + 6)
    # replaying a quote that already passed: its challenge is closed (the RPC layer audits the
    # refusal as rpc.handler_error); quote checks that fail are failing verdicts
    ok = _answer(dev, "cam-0", tasks["cam-0"])
    f.fa.submit("cam-0", ok, T0 + 7)
    with pytest.raises(UpdateRejected, match="no attestation challenge is open"):
        f.fa.submit("cam-0", ok, T0 + 8)
    verdicts = [fields for e, fields, _t in f.audit.events if e == "attest.verdict"]
    assert sum(not v["ok"] for v in verdicts) >= 2


def _answer(dev: AttestingDevice, name: str, task: bytes) -> bytes:
    """The device's reply to an attestation task, as its runner's endpoint builds it."""
    return AttestingEndpoint(_NoTraining(), dev, name).handle(task)


class _NoTraining:
    def handle(self, data: bytes) -> bytes:
        raise AssertionError("only attestation tasks are expected here")


def _challenge(f: _Fleet, name: str, dev: AttestingDevice, now: float) -> CredentialChallenge:
    req = {"op": "enrol", "request": dev.enrolment_request().to_dict()}
    return CredentialChallenge.from_dict(
        json.loads(f.fa(_ident(name), json.dumps(req).encode(), now))["challenge"]
    )


EVIL = hashlib.sha256(b"implant").digest()


def _passes_round_1(f: _Fleet) -> tuple[AttestingDevice, bytes]:
    """cam-0 enrolled, and its quote for round 1 accepted: the device and that round's task."""
    dev = f.device("cam-0")
    f.enrol("cam-0", dev)
    task = f.fa.round_tasks(["cam-0"], 1, T0 + 10)["cam-0"]
    f.fa.submit("cam-0", _answer(dev, "cam-0", task), T0 + 11)
    assert f.fa.gate("cam-0", T0 + 12) is None
    return dev, task


def test_a_quote_held_back_from_another_challenge_is_refused() -> None:
    """A clean device mints a spare nonce (the always-permitted enrol op), quotes it, loads an
    implant, then answers the next round with the held quote: refused, gate closed."""
    f = _Fleet()
    dev, _ = _passes_round_1(f)
    spare = _challenge(f, "cam-0", dev, T0 + 12).nonce
    held = dev.quote(spare)
    dev.measure_model(EVIL)
    t2 = f.fa.round_tasks(["cam-0"], 2, T0 + 20)
    task = codec.decode(t2["cam-0"])
    assert isinstance(task, AttestTask)
    forged = codec.encode(AttestReply(2, "cam-0", json.dumps(held.to_dict()), task.nonce))
    with pytest.raises(UpdateRejected, match="nonce: quote is not over the nonce"):
        f.fa.submit("cam-0", forged, T0 + 21)
    assert f.fa.gate("cam-0", T0 + 22) is not None
    # naming the spare nonce in the reply does not help either
    forged = codec.encode(AttestReply(2, "cam-0", json.dumps(held.to_dict()), spare))
    with pytest.raises(UpdateRejected, match="nonce: quote is not over the nonce"):
        f.fa.submit("cam-0", forged, T0 + 21)


def test_a_pass_does_not_carry_over_to_the_retry_of_the_same_round() -> None:
    """A round that fails to open is retried under the same round id: every device must quote
    the retry's fresh nonce; a pass from the failed attempt does not count."""
    f = _Fleet()
    dev, first = _passes_round_1(f)
    retry = f.fa.round_tasks(["cam-0"], 1, T0 + 20)  # same round id, new attest phase
    assert f.fa.gate("cam-0", T0 + 21) == "attestation: no quote for this round"
    # the first attempt's reply (same round id, old nonce) is refused too
    with pytest.raises(UpdateRejected):
        f.fa.submit("cam-0", _answer(dev, "cam-0", first), T0 + 21)
    f.fa.submit("cam-0", _answer(dev, "cam-0", retry["cam-0"]), T0 + 22)
    assert f.fa.gate("cam-0", T0 + 23) is None
    # one pass per challenge: the same (now answered) challenge cannot be answered again
    with pytest.raises(UpdateRejected, match="no attestation challenge"):
        f.fa.submit("cam-0", _answer(dev, "cam-0", retry["cam-0"]), T0 + 24)


def test_one_tpm_cannot_attest_for_two_device_identities() -> None:
    f = _Fleet()
    dev = f.device("cam-0")
    f.enrol("cam-0", dev)
    with pytest.raises(RoundError, match="already enrolled for device cam-0"):
        f.enrol("cam-1", dev)
    (refusal,) = f.audit.of("attest.refused")
    assert refusal["device"] == "cam-1" and "already enrolled" in refusal["reason"]


def test_the_enrolment_quote_must_be_over_the_challenge_nonce() -> None:
    f = _Fleet()
    dev = f.device("cam-0")
    f.enrol("cam-0", dev)
    f.fa.round_tasks(["cam-0"], 1, T0 + 10)  # a round nonce is outstanding for cam-0
    round_nonce = f.fa._nonces["cam-0"]
    challenge = _challenge(f, "cam-0", dev, T0 + 11)
    act = {
        "op": "activate",
        "secret": dev.activate(challenge).hex(),
        "quote": dev.quote(round_nonce).to_dict(),  # over another outstanding nonce
    }
    with pytest.raises(RoundError, match="nonce"):
        f.fa(_ident("cam-0"), json.dumps(act).encode(), T0 + 12)


def _finish(
    f: _Fleet, name: str, dev: AttestingDevice, ch: CredentialChallenge, now: float
) -> bytes:
    act = {
        "op": "activate",
        "secret": dev.activate(ch).hex(),
        "quote": dev.quote(ch.nonce).to_dict(),
    }
    return f.fa(_ident(name), json.dumps(act).encode(), now)


def test_two_identities_racing_to_enrol_one_tpm_get_only_one_enrolment() -> None:
    f = _Fleet()
    dev = f.device("cam-0")
    c0 = _challenge(f, "cam-0", dev, T0)
    c1 = _challenge(f, "cam-1", dev, T0)  # cam-0 is not enrolled yet: both may begin
    _finish(f, "cam-0", dev, c0, T0 + 1)
    with pytest.raises(RoundError, match="already enrolled for device cam-0"):
        _finish(f, "cam-1", dev, c1, T0 + 1)


def test_an_ek_revoked_while_its_enrolment_is_pending_cannot_finish() -> None:
    f = _Fleet()
    dev = f.device("cam-2")
    ch = _challenge(f, "cam-2", dev, T0)
    fingerprint = f.fa.verifier._pending[DeviceId("cam-2")].ek_fingerprint
    f.fa.verifier.revoke_ek(fingerprint)
    with pytest.raises(RoundError, match="no enrolment in progress"):
        _finish(f, "cam-2", dev, ch, T0 + 1)
    with pytest.raises(RoundError, match="revoked"):
        f.enrol("cam-2", dev, T0 + 2)
