"""Agent restart without a TPM reset: the measurement log saved in the state folder is continued
only if it accounts for the TPM's PCRs exactly (``open_measured_device``, SoftTpm).

A hardware TPM keeps PCRs 8/9 across agent restarts; an agent that starts an empty log and
measures its firmware again can never produce a quote that replays (``pcr_log``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ztfm.attestation import (
    PCR_FIRMWARE,
    PCR_MODEL,
    QUOTE_PCRS,
    AttestationVerifier,
    AttestingDevice,
    Measurement,
    ReferenceValues,
    SoftManufacturer,
    SoftTpm,
    UnsafeRngNonceSource,
)
from ztfm.device.attest import (
    MEASUREMENT_LOG_FILE,
    FileMeasurementJournal,
    _hold_agent_lock,
    open_measured_device,
)
from ztfm.errors import AttestationError
from ztfm.types import DeviceId

T0 = 1_800_000_000.0
FW = hashlib.sha256(b"firmware 1").digest()
FW_2 = hashlib.sha256(b"firmware 2").digest()
M1 = hashlib.sha256(b"bundle v1").digest()
M2 = hashlib.sha256(b"bundle v2").digest()
FOREIGN = hashlib.sha256(b"something else").digest()
DID = DeviceId("cam-0")


@pytest.fixture
def maker() -> SoftManufacturer:
    return SoftManufacturer(np.random.default_rng(1), T0)


@pytest.fixture
def tpm(maker: SoftManufacturer) -> SoftTpm:
    return SoftTpm(maker, np.random.default_rng(2), T0, "cam-0")


def _verifier(maker: SoftManufacturer) -> AttestationVerifier:
    ref = ReferenceValues().with_firmware("cams", "1", FW).with_models([M1, M2])
    return AttestationVerifier(
        manufacturer_roots=[],
        soft_roots=[maker.root_certificate],
        reference=ref,
        nonces=UnsafeRngNonceSource(np.random.default_rng(3)),
    )


def _enrol_and_quote(verifier: AttestationVerifier, dev: AttestingDevice, now: float) -> None:
    """What the agent does at every start: enrol (with a first quote), then a round's quote."""
    ch = verifier.begin_enrolment(DID, "cams", dev.enrolment_request(), now)
    verifier.finish_enrolment(DID, dev.activate(ch), now, quote=dev.quote(ch.nonce))
    verdict = verifier.check_quote(DID, dev.quote(verifier.issue_nonce(DID, now + 1)), now + 1)
    assert verdict.ok


def _saved(state: Path) -> list[tuple[int, bytes]]:
    body = json.loads((state / MEASUREMENT_LOG_FILE).read_text())
    return [(m["pcr"], bytes.fromhex(m["digest"])) for m in body["log"]]


def test_fresh_tpm_measures_firmware_and_saves_each_measurement_as_it_happens(
    tpm: SoftTpm, tmp_path: Path
) -> None:
    dev = open_measured_device(tpm, tmp_path, FW, "firmware:t")
    assert _saved(tmp_path) == [(PCR_FIRMWARE, FW)]
    dev.measure_model(M1, "model:v1")  # what the install hook / runner call
    assert _saved(tmp_path) == [(PCR_FIRMWARE, FW), (PCR_MODEL, M1)]
    assert (tmp_path / MEASUREMENT_LOG_FILE).stat().st_mode & 0o777 == 0o600


def test_restart_with_intact_pcrs_continues_the_saved_log_and_attests(
    tpm: SoftTpm, maker: SoftManufacturer, tmp_path: Path
) -> None:
    verifier = _verifier(maker)
    first = open_measured_device(tpm, tmp_path, FW, "firmware:t")
    first.measure_model(M1)
    _enrol_and_quote(verifier, first, T0)
    pcrs = tpm.read_pcrs(QUOTE_PCRS)
    # the agent process restarts; the TPM (same object) keeps its PCRs
    second = open_measured_device(tpm, tmp_path, FW, "firmware:t")
    assert tpm.read_pcrs(QUOTE_PCRS) == pcrs  # firmware not extended again
    assert second.log == first.log
    _enrol_and_quote(verifier, second, T0 + 10)
    second.measure_model(M2)  # keeps measuring (and saving) after the restart
    assert _saved(tmp_path)[-1] == (PCR_MODEL, M2)
    third = open_measured_device(tpm, tmp_path, FW, "firmware:t")
    _enrol_and_quote(verifier, third, T0 + 20)


def test_the_old_behaviour_fails_pcr_log(tpm: SoftTpm, maker: SoftManufacturer) -> None:
    """Regression vector: a fresh log over PCRs a previous run extended is refused."""
    verifier = _verifier(maker)
    first = AttestingDevice(tpm)
    first.measure_firmware(FW)
    first.measure_model(M1)
    _enrol_and_quote(verifier, first, T0)
    second = AttestingDevice(tpm)
    second.measure_firmware(FW)
    second.measure_model(M1)
    with pytest.raises(AttestationError, match="measurement log"):
        _enrol_and_quote(verifier, second, T0 + 10)


def test_foreign_extend_between_runs_is_refused_in_one_line(
    tpm: SoftTpm, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    open_measured_device(tpm, tmp_path, FW, "firmware:t").measure_model(M1)
    tpm.extend_pcr(PCR_MODEL, FOREIGN)  # something else extended PCR 9 after the agent stopped
    with caplog.at_level(logging.ERROR), pytest.raises(AttestationError) as err:
        open_measured_device(tpm, tmp_path, FW, "firmware:t")
    msg = str(err.value)
    assert "\n" not in msg
    assert "cannot account for" in msg and "reboot the device" in msg
    assert "does not replay" in msg
    assert any("cannot account for" in r.getMessage() for r in caplog.records)


def test_nonzero_pcrs_without_a_saved_log_are_refused(tpm: SoftTpm, tmp_path: Path) -> None:
    tpm.extend_pcr(PCR_FIRMWARE, FW)
    with pytest.raises(AttestationError, match="no saved measurement log"):
        open_measured_device(tpm, tmp_path, FW, "firmware:t")


def test_log_from_an_earlier_tpm_boot_is_refused(tpm: SoftTpm, tmp_path: Path) -> None:
    open_measured_device(tpm, tmp_path, FW, "firmware:t")
    tpm.reboot()
    tpm.extend_pcr(PCR_FIRMWARE, FW)  # the same extend again, by someone else, after the reset
    with pytest.raises(AttestationError, match="earlier TPM boot: reset count 0, the TPM is at 1"):
        open_measured_device(tpm, tmp_path, FW, "firmware:t")


def test_firmware_changed_without_reboot_is_refused(tpm: SoftTpm, tmp_path: Path) -> None:
    open_measured_device(tpm, tmp_path, FW, "firmware:t")
    with pytest.raises(AttestationError, match="firmware changed without a reboot") as err:
        open_measured_device(tpm, tmp_path, FW_2, "firmware:t")
    assert "\n" not in str(err.value)


def test_restart_after_tpm_reset_measures_afresh(
    tpm: SoftTpm, maker: SoftManufacturer, tmp_path: Path
) -> None:
    verifier = _verifier(maker)
    open_measured_device(tpm, tmp_path, FW, "firmware:t").measure_model(M1)
    tpm.reboot()  # power cycle: PCRs zero, reset count up
    dev = open_measured_device(tpm, tmp_path, FW, "firmware:t")
    assert [m.digest for m in dev.log] == [FW]
    assert json.loads((tmp_path / MEASUREMENT_LOG_FILE).read_text())["reset_count"] == 1
    dev.measure_model(M2)
    _enrol_and_quote(verifier, dev, T0)


def test_a_measurement_saved_but_never_extended_is_dropped(tpm: SoftTpm, tmp_path: Path) -> None:
    """Write-ahead: the agent stopped between saving the log and extending the PCR."""
    dev = open_measured_device(tpm, tmp_path, FW, "firmware:t")
    dev.measure_model(M1)
    journal = FileMeasurementJournal(tmp_path / MEASUREMENT_LOG_FILE, tpm.boot_counts())
    journal.save((*dev.log, Measurement(PCR_MODEL, M2, "model:v2")))
    resumed = open_measured_device(tpm, tmp_path, FW, "firmware:t")
    assert resumed.log == dev.log
    assert _saved(tmp_path) == [(PCR_FIRMWARE, FW), (PCR_MODEL, M1)]
    # but two unaccounted events are not "one written ahead"
    journal.save((*dev.log, *[Measurement(PCR_MODEL, d) for d in (M2, M1)]))
    with pytest.raises(AttestationError, match="does not replay"):
        open_measured_device(tpm, tmp_path, FW, "firmware:t")


@pytest.mark.parametrize(
    "content",
    [b"", b"{}", b"[1]", b'{"version": 2, "reset_count": 0, "restart_count": 0, "log": []}',
     b'{"version": 1, "reset_count": "0", "restart_count": 0, "log": []}',
     b'{"version": 1, "reset_count": 0, "restart_count": 0, "log": [{"pcr": 3}]}'],
)  # fmt: skip
def test_a_malformed_saved_log_is_refused(tpm: SoftTpm, tmp_path: Path, content: bytes) -> None:
    open_measured_device(tpm, tmp_path, FW, "firmware:t")
    (tmp_path / MEASUREMENT_LOG_FILE).write_bytes(content)
    with pytest.raises(AttestationError, match="cannot account for"):
        open_measured_device(tpm, tmp_path, FW, "firmware:t")


def test_a_hostile_saved_log_is_refused_in_one_line_without_hanging(
    tpm: SoftTpm, tmp_path: Path
) -> None:
    open_measured_device(tpm, tmp_path, FW, "firmware:t")
    path = tmp_path / MEASUREMENT_LOG_FILE
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000)  # deep nesting: RecursionError
    with pytest.raises(AttestationError, match="cannot account for"):
        open_measured_device(tpm, tmp_path, FW, "firmware:t")
    path.unlink()
    os.mkfifo(path)  # a reader would block forever on a FIFO
    with pytest.raises(AttestationError, match="not a regular file"):
        open_measured_device(tpm, tmp_path, FW, "firmware:t")


def test_a_second_agent_process_on_the_same_state_is_refused(tmp_path: Path) -> None:
    """Two agents on one TPM would both extend its PCRs and neither log would replay."""
    code = (
        "import sys; from pathlib import Path; from ztfm.device.attest import _hold_agent_lock;"
        "_hold_agent_lock(Path(sys.argv[1])); print('locked', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
        with pytest.raises(AttestationError, match="another device agent is running"):
            _hold_agent_lock(tmp_path)
    finally:
        holder.communicate(b"", timeout=10)
    _hold_agent_lock(tmp_path)  # free again once that process is gone
