"""TPM attestation over the network: real swtpm TPMs, real gRPC over mutual TLS, signed bundles.

Three devices, each with its own swtpm, enrol their TPM with the coordinator (EK certificate to
swtpm's local CA, MakeCredential / ActivateCredential, a first quote over the enrolment nonce),
install the signed initial model bundle (measured into PCR 9), answer a fresh nonce with a quote
before every round, and install every released bundle. Devices with tampered firmware or a
tampered model cannot enrol, and a device whose model is tampered with mid-run is left out of the
next round and then refused by policy.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ztfm.attestation import (
    AttestationVerifier,
    AttestingDevice,
    ReferenceValues,
    SystemNonceSource,
)
from ztfm.attestation.swtpm import SwtpmCa, SwtpmProcess
from ztfm.audit import MemoryAuditSink
from ztfm.coordinator.attest import FleetAttestation
from ztfm.coordinator.core import Coordinator, RoundSettings
from ztfm.coordinator.server import CoordinatorServer, ModelReleaser
from ztfm.coordinator.service import CoordinatorService
from ztfm.crypto.signing import SigningKey
from ztfm.device.attest import open_measured_device
from ztfm.device.runner import DeviceRunner, ModelInstaller, PollBackoff
from ztfm.errors import AttestationError
from ztfm.fl import codec
from ztfm.fl.messages import EvalReply, EvalTask, RoundTask, UpdateReply
from ztfm.fl.strategy import FedAvg
from ztfm.ledger import EntryKind, Ledger, MemoryLedgerStore
from ztfm.transport.grpc_client import RpcFailed
from ztfm.transport.grpc_fleet import LocalFleet

pytestmark = pytest.mark.tpm

FW = hashlib.sha256(b"camera firmware 2.0").digest()
FW_EVIL = hashlib.sha256(b"camera firmware 2.0 with implant").digest()


class _Echo:
    """A device endpoint: adds 1 to each parameter; evaluates with fixed counts."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id

    def handle(self, data: bytes) -> bytes:
        task = codec.decode(data)
        if isinstance(task, EvalTask):
            v, n = task.model_version, task.nonce
            return codec.encode(EvalReply(task.round_id, self.device_id, v, 1, 0, 0, 1, 1.0, n))
        assert isinstance(task, RoundTask)
        delta = [np.ones_like(p) for p in task.params]
        reply = UpdateReply(
            task.round_id, self.device_id, task.model_version, delta, 5, 0.1, task.nonce
        )
        return codec.encode(reply)


class Rig:
    """One coordinator (attestation required) on 127.0.0.1 and a way to make swtpm devices."""

    def __init__(self, tmp: Path, ca: SwtpmCa, factory: Callable[[], SwtpmProcess]) -> None:
        from ztfm.attestation.tpm import Tpm

        self.tmp, self.factory, self.tpm_cls, self.ca = tmp, factory, Tpm, ca
        self._spare = [factory()]  # swtpm_localca writes its root on the first provisioning
        self.now = time.time()
        self.fleet = LocalFleet.create("fleet.local", self.now, cert_ttl_s=3600)
        self.audit = MemoryAuditSink()
        self.log_key, self.release_key = SigningKey.generate(), SigningKey.generate()
        self.ledger = Ledger(MemoryLedgerStore(), self.log_key)
        self.tpms: list[Any] = []
        self.kept: dict[str, SwtpmProcess] = {}
        self.start_coordinator()

    def start_coordinator(self, expected_devices: int = 3) -> None:
        """A coordinator on this rig's fleet CA and ledger, with attestation state from
        scratch (a restarted coordinator keeps its ledger and keys, not its memory)."""
        verifier = AttestationVerifier(
            manufacturer_roots=[self.ca.root_cert_pem],
            intermediates=[self.ca.issuer_cert_pem],
            reference=ReferenceValues().with_firmware("cams", "2.0", FW),
            nonces=SystemNonceSource(),
        )
        self.attestation = FleetAttestation(verifier, self.audit, ledger=self.ledger)
        self.coord = Coordinator(
            [np.zeros(3, np.float32)],
            FedAvg(),
            RoundSettings(deadline_s=60),
            rng=np.random.default_rng(0),
            eligibility=[self.attestation.gate],
        )
        self.service = CoordinatorService(
            self.coord,
            rounds=2,
            expected_devices=expected_devices,
            attestation=self.attestation,
            eval_deadline_s=3.0,  # a device refused mid-run never evaluates: do not wait long
        )
        releaser = ModelReleaser(self.ledger, self.release_key, model_id="m", architecture="step")
        self.server = CoordinatorServer(
            self.fleet,
            self.service,
            self.audit,
            self.attestation,
            tick_s=0.02,
            releaser=releaser,
            attestation=self.attestation,
        )
        self.endpoint = self.server.start().fleet

    def device(
        self, name: str, fw: bytes = FW, implant_at: int | None = None, *, keep_tpm: bool = False
    ) -> tuple[DeviceRunner, AttestingDevice]:
        """A swtpm-backed device; ``implant_at=v``: when it installs bundle v, malware also
        loads an unknown model (measured into PCR 9 like any model load). ``keep_tpm``: like
        ``device run`` on a hardware TPM, reuse this name's TPM (no reset: PCRs kept) and its
        measurement log saved in its state folder."""
        proc = self.kept.get(name) if keep_tpm else None
        if proc is None:
            proc = self._spare.pop() if self._spare else self.factory()
        if keep_tpm:
            self.kept[name] = proc
        tpm = self.tpm_cls(proc.tcti)
        self.tpms.append(tpm)
        if keep_tpm:
            state = self.tmp / f"{name}-state"
            state.mkdir(exist_ok=True)
            dev = open_measured_device(tpm, state, fw, "firmware:2.0")
        else:
            dev = AttestingDevice(tpm)
            dev.measure_firmware(fw, "firmware:2.0")
        installer = ModelInstaller(
            self.tmp / name,
            model_id="m",
            release_key=self.release_key.verify_key,
            log_key=self.log_key.verify_key,
            on_install=lambda b: on_install(b),
        )

        def on_install(b: Any) -> None:
            dev.measure_model(b.measurement(), f"model:v{b.version}")
            if b.version == implant_at:
                dev.measure_model(hashlib.sha256(b"implant").digest(), "model:implant")

        creds = self.fleet.enroll("cams", name, self.now)
        runner = DeviceRunner(
            creds.identity,
            creds.keystore,
            self.fleet.ca.cert,
            _Echo(name),
            self.endpoint,
            np.random.default_rng(len(self.tpms)),
            cert=creds.cert,
            backoff=PollBackoff(0.01, 2.0, 0.05),
            installer=installer,
            attestation=dev,
            give_up_s=20.0,
        )
        return runner, dev

    def close(self) -> None:
        self.server.stop()
        for tpm in self.tpms:
            tpm.close()


@pytest.fixture
def rig(
    tmp_path: Path, swtpm_ca: SwtpmCa, swtpm_factory: Callable[[], SwtpmProcess]
) -> Iterator[Rig]:
    r = Rig(tmp_path, swtpm_ca, swtpm_factory)
    try:
        yield r
    finally:
        r.close()


def _run_all(runners: list[DeviceRunner]) -> list[BaseException]:
    errors: list[BaseException] = []

    def run(r: DeviceRunner) -> None:
        try:
            r.run()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(r,)) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    return errors


def test_three_swtpm_devices_enrol_attest_every_round_and_install_bundles(rig: Rig) -> None:
    runners = [rig.device(f"cam-{i}")[0] for i in range(3)]
    errors = _run_all(runners)
    assert rig.server.wait(5) and not errors, errors
    rig.server.linger(5)
    for r in runners:
        assert r.stats.finished and r.stats.tpm_enrolled
        assert r.stats.hardware_backed  # the EK chains to the manufacturer CA (swtpm's here)
        assert r.stats.quotes == 2  # one fresh-nonce quote before each of the 2 rounds
        assert r.stats.model_version == 3  # initial release + one per round, all verified
    summaries = rig.service.log.summaries
    assert [sorted(s.accepted) for s in summaries] == [["cam-0", "cam-1", "cam-2"]] * 2
    assert np.allclose(rig.coord.params[0], 2.0)
    kinds = [rig.ledger.entry(i).kind for i in range(rig.ledger.size)]
    assert kinds.count(EntryKind.ENROLMENT) == 3
    assert kinds.count(EntryKind.ATTESTATION_VERDICT) == 3 + 3 * 2  # enrolment + every round
    assert kinds.count(EntryKind.MODEL_RELEASE) == 3
    contributors = [e.body for e in map(rig.ledger.entry, range(rig.ledger.size))
                    if e.kind == EntryKind.ROUND_CONTRIBUTORS]  # fmt: skip
    assert [(c["round"], c["contributors"]) for c in contributors] == [
        (1, ["cam-0", "cam-1", "cam-2"]),
        (2, ["cam-0", "cam-1", "cam-2"]),
    ]
    verdicts = [f for e, f, _t in rig.audit.events if e == "attest.verdict"]
    assert len(verdicts) == 9 and all(v["ok"] for v in verdicts)
    # every verdict is on the ledger, provably, under the last signed tree head
    head = rig.ledger.latest_tree_head()
    assert head is not None
    for i in range(head.tree_size):
        rig.ledger.inclusion_proof(i, head.tree_size)
    # the quotes covered the model each device really loaded: PCR 9 replays the 3 releases
    rels = [rig.ledger.entry(i) for i in range(rig.ledger.size)]
    assert [e.body["version"] for e in rels if e.kind == EntryKind.MODEL_RELEASE] == [1, 2, 3]


def test_devices_attest_again_after_the_coordinator_and_they_restart(rig: Rig) -> None:
    """After a restart both sides have lost their memory (TPM PCRs from zero, coordinator's
    allowed models from zero) but keep their disks: the device must measure only the bundle it
    will run, the newest release, not the one it installed before (unknown to the new
    coordinator, which would refuse the quote: 'an unknown model bundle was loaded')."""
    first = [rig.device(f"cam-{i}")[0] for i in range(2)]
    rig.service.expected_devices = 2
    assert not _run_all(first) and rig.server.wait(5)
    assert all(r.stats.model_version == 3 for r in first)
    rig.server.stop()
    for tpm in rig.tpms:
        tpm.close()
    rig.start_coordinator(expected_devices=2)  # same ledger: release versions continue
    again = [rig.device(f"cam-{i}")[0] for i in range(2)]  # same model dirs, fresh TPMs
    errors = _run_all(again)
    assert rig.server.wait(5) and not errors, errors
    for r in again:
        assert r.stats.tpm_enrolled and r.stats.quotes == 2
        assert r.stats.model_version == 6  # 3 before, then 4 (initial of the restart), 5, 6
    failed = [f for e, f, _t in rig.audit.events if e == "attest.verdict" and not f["ok"]]
    assert failed == []


def test_a_device_agent_restarted_without_a_tpm_reset_attests_again(rig: Rig) -> None:
    """cam-0's agent registers and enrols, then restarts; its TPM keeps PCRs 8/9. The new agent
    continues the saved log (no second firmware extend), enrols again and attests every round
    (before: every quote, the enrolment one first, failed 'pcr_log')."""
    rig.service.expected_devices = 2
    early, _ = rig.device("cam-0", keep_tpm=True)
    early.run(max_polls=2)  # registered and TPM enrolled; then the process "exits"
    assert early.stats.tpm_enrolled
    restarted, dev = rig.device("cam-0", keep_tpm=True)
    assert [m.label for m in dev.log] == ["firmware:2.0", "model:v1"]  # continued, not re-made
    other, _ = rig.device("cam-1")
    errors = _run_all([restarted, other])
    assert rig.server.wait(5) and not errors, errors
    assert restarted.stats.tpm_enrolled and restarted.stats.quotes == 2
    assert restarted.stats.model_version == 3
    # the resumed log already ends with the installed bundle: no event per restart (a crash
    # loop would otherwise overflow the 256-event log)
    assert [m.label for m in dev.log] == ["firmware:2.0", "model:v1", "model:v2", "model:v3"]
    failed = [f for e, f, _t in rig.audit.events if e == "attest.verdict" and not f["ok"]]
    assert failed == []
    assert [sorted(s.accepted) for s in rig.service.log.summaries] == [["cam-0", "cam-1"]] * 2


@pytest.mark.parametrize("tamper", ["firmware", "model"])
def test_a_tampered_device_cannot_enrol_and_never_gets_a_round(rig: Rig, tamper: str) -> None:
    runner, dev = rig.device("cam-x", fw=FW_EVIL if tamper == "firmware" else FW)
    if tamper == "model":
        dev.measure_model(hashlib.sha256(b"backdoored model").digest(), "model:evil")
    with pytest.raises(AttestationError, match="refused TPM enrolment"):
        runner.run()
    (verdict,) = [f for e, f, _t in rig.audit.events if e == "attest.verdict"]
    assert not verdict["ok"] and verdict["reason"] == tamper
    assert "cam-x" not in rig.coord.devices
    client = runner._client(None)
    with pytest.raises(RpcFailed) as ei:
        client.call("GetRound", b"")
    assert ei.value.status.name == "PERMISSION_DENIED"  # policy: attestation-required
    kinds = [rig.ledger.entry(i).kind for i in range(rig.ledger.size)]
    assert EntryKind.ENROLMENT not in kinds and EntryKind.ATTESTATION_VERDICT in kinds


def test_a_device_tampered_mid_run_is_left_out_of_the_next_round_then_refused(rig: Rig) -> None:
    runners = [rig.device(f"cam-{i}", implant_at=2 if i == 2 else None)[0] for i in range(3)]
    errors = _run_all(runners)
    assert rig.server.wait(10)
    # cam-2's round-2 quote failed; its next GetRound is refused by policy
    assert len(errors) == 1 and isinstance(errors[0], RpcFailed), errors
    assert errors[0].status.name == "PERMISSION_DENIED"
    s1, s2 = rig.service.log.summaries
    assert sorted(s1.accepted) == ["cam-0", "cam-1", "cam-2"]
    assert sorted(s2.accepted) == ["cam-0", "cam-1"] and "cam-2" not in s2.selected
    failed = [f for e, f, _t in rig.audit.events if e == "attest.verdict" and not f["ok"]]
    assert [(f["device_id"], f["reason"]) for f in failed] == [("cam-2", "model")]
    assert runners[2].stats.quotes == 2  # it did answer; the answer showed the implant
