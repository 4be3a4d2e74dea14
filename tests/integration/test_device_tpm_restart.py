"""A device agent that restarts while its TPM keeps running (swtpm on 127.0.0.1).

* The agent restarts, the TPM keeps its PCRs (one swtpm process across two agents, as a
  hardware TPM without a reboot): the second agent continues the saved measurement log and
  attests, including its enrolment quote.
* Something else extended a PCR between the two runs: a one-line refusal, before any quote.
* The TPM was reset (swtpm restarted: Startup(CLEAR), reset count up): a fresh measurement.
* A device process killed with SIGKILL leaves no swtpm behind (parent-death signal), so its
  state can be started again; ``ztfm up``'s teardown kills a device's whole process group.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ztfm.attestation import (
    PCR_MODEL,
    AttestationVerifier,
    AttestingDevice,
    ReferenceValues,
    SystemNonceSource,
)
from ztfm.attestation.swtpm import SwtpmCa, SwtpmProcess
from ztfm.device.attest import MEASUREMENT_LOG_FILE, open_measured_device
from ztfm.errors import AttestationError
from ztfm.types import DeviceId

pytestmark = pytest.mark.tpm

FW = hashlib.sha256(b"camera firmware 2.0").digest()
M1 = hashlib.sha256(b"bundle v1").digest()
M2 = hashlib.sha256(b"bundle v2").digest()
DID = DeviceId("cam-0")


def _verifier(ca: SwtpmCa) -> AttestationVerifier:
    return AttestationVerifier(
        manufacturer_roots=[ca.root_cert_pem],
        intermediates=[ca.issuer_cert_pem],
        reference=ReferenceValues().with_firmware("cams", "1", FW).with_models([M1, M2]),
        nonces=SystemNonceSource(),
    )


def _enrol_and_quote(v: AttestationVerifier, dev: AttestingDevice) -> None:
    now = time.time()
    ch = v.begin_enrolment(DID, "cams", dev.enrolment_request(), now)
    v.finish_enrolment(DID, dev.activate(ch), now, quote=dev.quote(ch.nonce))
    assert v.check_quote(DID, dev.quote(v.issue_nonce(DID, now)), now).ok


def test_agent_restart_keeps_attesting_refuses_foreign_extends_and_remeasures_after_reset(
    swtpm_ca: SwtpmCa, swtpm: SwtpmProcess, tmp_path: Path
) -> None:
    from ztfm.attestation.tpm import Tpm

    v = _verifier(swtpm_ca)
    with Tpm(swtpm.tcti) as tpm:  # agent run 1
        dev = open_measured_device(tpm, tmp_path, FW, "firmware:test")
        dev.measure_model(M1, "model:v1")
        _enrol_and_quote(v, dev)
        reset_count = tpm.boot_counts().reset_count
    with Tpm(swtpm.tcti) as tpm:  # run 2: same TPM, PCRs kept
        dev = open_measured_device(tpm, tmp_path, FW, "firmware:test")
        assert [m.digest for m in dev.log] == [FW, M1]
        dev.measure_model(M2, "model:v2")  # saved as it happens
        _enrol_and_quote(v, dev)
        tpm.extend_pcr(PCR_MODEL, hashlib.sha256(b"not ours").digest())  # a foreign extend
    with Tpm(swtpm.tcti) as tpm, pytest.raises(AttestationError) as err:  # run 3
        open_measured_device(tpm, tmp_path, FW, "firmware:test")
    assert "\n" not in str(err.value)
    assert "cannot account for" in str(err.value) and "reboot" in str(err.value)
    swtpm.stop()
    swtpm.start()  # TPM reset: PCRs zero, reset count up
    with Tpm(swtpm.tcti) as tpm:
        dev = open_measured_device(tpm, tmp_path, FW, "firmware:test")
        assert [m.digest for m in dev.log] == [FW]
        saved = json.loads((tmp_path / MEASUREMENT_LOG_FILE).read_text())
        assert saved["reset_count"] == tpm.boot_counts().reset_count > reset_count
        dev.measure_model(M2)
        _enrol_and_quote(v, dev)


def _children_with(ppid: int, needle: str) -> list[int]:
    """PIDs whose parent is ``ppid`` and whose command line contains ``needle``."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == ppid and needle in cmd:
            found.append(int(d.name))
    return found


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        status = Path(f"/proc/{pid}/status")
        if status.exists() and "\nState:\tZ" in status.read_text():
            return True  # dead, waiting for init to reap it
        time.sleep(0.05)
    return False


def test_sigkilled_device_leaves_no_swtpm_and_its_state_starts_again(
    swtpm_ca: SwtpmCa, tmp_path: Path
) -> None:
    """`ztfm device run --swtpm-state`, killed with SIGKILL once its swtpm runs."""
    from ztfm.attestation.swtpm import provision_swtpm
    from ztfm.crypto.signing import SigningKey
    from ztfm.identity.store import CERT_FILE, init_ca

    state = tmp_path / "tpm"
    provision_swtpm(state, swtpm_ca)
    init_ca(tmp_path / "ca", "fleet.local", time.time())
    key = SigningKey.generate().verify_key
    (tmp_path / "k.pub").write_text(key.raw.hex())
    (tmp_path / "token").write_text("unused")  # nothing listens: the device keeps retrying
    dev = subprocess.Popen(
        [sys.executable, "-m", "ztfm.cli.main", "device", "run",
         "--coordinator", "127.0.0.1:9", "--enroll", "127.0.0.1:9",
         "--token-file", str(tmp_path / "token"), "--ca-cert", str(tmp_path / "ca" / CERT_FILE),
         "--id", "skab-valve1-0", "--segment", "valve1", "--state-dir", str(tmp_path / "dev"),
         "--fleet-index", "0", "--release-key", str(tmp_path / "k.pub"),
         "--log-key", str(tmp_path / "k.pub"), "--swtpm-state", str(state),
         "--give-up-s", "60"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        tpms: list[int] = []
        while not tpms:
            assert dev.poll() is None, dev.stderr.read().decode() if dev.stderr else ""
            assert time.monotonic() < deadline, "the device never started its swtpm"
            time.sleep(0.1)
            tpms = _children_with(dev.pid, f"dir={state}")
        (swtpm_pid,) = tpms
        time.sleep(0.5)
        assert dev.poll() is None  # still running (retrying): its swtpm is not stopped by it
        dev.kill()
        dev.wait()
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
    assert _gone(swtpm_pid), f"swtpm {swtpm_pid} outlived its device"
    with SwtpmProcess(state, start_timeout_s=5):  # the state's lock was released
        pass


def test_up_teardown_kills_the_device_process_group(tmp_path: Path) -> None:
    """A child that ignores SIGTERM, with a grandchild that has no parent-death signal."""
    from ztfm.cli.up import Children

    children = Children(tmp_path)
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "p = subprocess.Popen(['sleep', '300'])\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    children.procs["dev"] = child
    assert child.stdout is not None
    grandchild = int(child.stdout.readline())
    children.terminate_all(grace_s=0.5)
    assert child.returncode == -signal.SIGKILL
    assert _gone(grandchild)


def test_tpm_states_and_ca_keys_are_private_in_a_reused_work_dir(tmp_path: Path) -> None:
    """`ztfm up --work DIR`: folders that already exist 0755 are tightened, files are 0600."""
    from ztfm.cli.up import _private_dir, _provision_tpms

    work = tmp_path / "work"
    for d in (work, work / "devices", work / "devices" / "d0", work / "tpm-ca"):
        d.mkdir(mode=0o755)
        d.chmod(0o755)
    _private_dir(work)
    _private_dir(work / "devices")
    _provision_tpms(work, ["d0"])
    for d in (work, work / "devices", work / "devices" / "d0", work / "tpm-ca"):
        assert d.stat().st_mode & 0o777 == 0o700, d
    secrets = [
        *(work / "devices" / "d0" / "tpm").iterdir(),
        work / "tpm-ca" / "signkey.pem",
        work / "tpm-ca" / "swtpm-localca-rootca-privkey.pem",
    ]
    for f in secrets:
        assert f.stat().st_mode & 0o077 == 0, f"{f} is {f.stat().st_mode & 0o777:o}"
    with SwtpmProcess(work / "devices" / "d0" / "tpm"):  # swtpm keeps writing it 0600
        pass
    for f in (work / "devices" / "d0" / "tpm").iterdir():
        assert f.stat().st_mode & 0o077 == 0, f"{f} is {f.stat().st_mode & 0o777:o}"


def _enrol_fresh(v: AttestationVerifier, swtpm: SwtpmProcess) -> None:
    """A new agent on the (just started) swtpm measures, enrols and quotes."""
    from ztfm.attestation.tpm import Tpm

    with Tpm(swtpm.tcti) as tpm:
        dev = AttestingDevice(tpm)
        dev.measure_firmware(FW)
        dev.measure_model(M1)
        _enrol_and_quote(v, dev)


def test_a_device_restarted_many_times_on_one_swtpm_state_still_enrols(
    swtpm_ca: SwtpmCa, swtpm: SwtpmProcess
) -> None:
    """stop() shuts the TPM down orderly: before, every stop was a non-orderly shutdown that
    counted a dictionary-attack failure at the next start, and from the fourth start on the EK
    was locked out (ActivateCredential: 'DA lockout mode')."""
    v = _verifier(swtpm_ca)
    for _ in range(5):
        swtpm.stop()
        swtpm.start()
        _enrol_fresh(v, swtpm)


def test_a_software_tpm_killed_without_shutdown_many_times_still_enrols(
    swtpm_ca: SwtpmCa, swtpm: SwtpmProcess
) -> None:
    """A device SIGKILLed (or stopped past a timeout) never sends TPM2_Shutdown: each such stop
    counts one dictionary-attack failure, and three used to lock the EK out for good. Every
    start now clears the counter (a software TPM's lockout auth is empty)."""
    v = _verifier(swtpm_ca)
    for _ in range(5):
        proc = swtpm._proc
        assert proc is not None
        proc.kill()  # no TPM2_Shutdown
        proc.wait(5)
        swtpm._proc = None
        swtpm.start()
        _enrol_fresh(v, swtpm)
