"""The device side of TPM attestation over the network.

``enrol_tpm`` runs the two ``Attest`` calls of enrolment (EK certificate + AK -> MakeCredential
challenge; ActivateCredential secret + first quote over the challenge's nonce).
``AttestingEndpoint`` wraps the device agent: a round's ``AttestTask`` is answered with a TPM
quote over its nonce; every other task goes to the agent. Measurements (firmware at start,
every installed model bundle) are made by the owner of the ``AttestingDevice``
(``cli.device``, ``ModelInstaller``).

``open_measured_device`` starts the measuring agent on a TPM: it measures the firmware on a
freshly reset TPM, or continues the measurement log saved by an earlier run of the agent when
the TPM kept its PCRs (an agent restart without a reboot). ``FileMeasurementJournal`` keeps that
log in the device's state folder, written (atomically, fsync'd) before every extend.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from ztfm.attestation import (
    PCR_FIRMWARE,
    AttestingDevice,
    BootCounts,
    CredentialChallenge,
    Measurement,
    TpmBackend,
)
from ztfm.errors import AttestationError
from ztfm.fl import codec
from ztfm.fl.messages import AttestReply, AttestTask
from ztfm.identity._fs import atomic_write
from ztfm.transport.grpc_client import FleetClient, RpcFailed
from ztfm.transport.inproc import Endpoint

log = logging.getLogger(__name__)

#: The measurement log in the device's state folder.
MEASUREMENT_LOG_FILE = "measurements.json"
_JOURNAL_VERSION = 1
_MAX_JOURNAL_BYTES = 1 << 20


class FileMeasurementJournal:
    """The measurement log on disk with the TPM boot (reset/restart counts) it belongs to.

    Called by ``AttestingDevice`` with the log *including* the measurement about to be
    extended; every save replaces the file atomically (temp file, fsync, rename, fsync dir)."""

    def __init__(self, path: Path, boot: BootCounts) -> None:
        self.path = Path(path)
        self.boot = boot

    def __call__(self, events: tuple[Measurement, ...]) -> None:
        self.save(events)

    def save(self, events: Sequence[Measurement]) -> None:
        body = {
            "version": _JOURNAL_VERSION,
            "reset_count": self.boot.reset_count,
            "restart_count": self.boot.restart_count,
            "log": [m.to_dict() for m in events],
        }
        atomic_write(self.path, json.dumps(body, indent=1).encode(), mode=0o600)

    @staticmethod
    def load(path: Path) -> tuple[BootCounts, tuple[Measurement, ...]] | None:
        """The saved boot and log; None if there is no file. Raises ``AttestationError`` if
        it is unreadable or malformed."""
        try:  # a regular file only, read with a bound (not a FIFO, a device or a huge file)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AttestationError(f"cannot read {path}: {exc}") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise AttestationError(f"{path} is not a regular file")
            raw = os.read(fd, _MAX_JOURNAL_BYTES + 1)
        except OSError as exc:
            raise AttestationError(f"cannot read {path}: {exc}") from exc
        finally:
            os.close(fd)
        if len(raw) > _MAX_JOURNAL_BYTES:
            raise AttestationError(f"{path} is too large")
        try:
            body = json.loads(raw)
            if body["version"] != _JOURNAL_VERSION:
                raise ValueError(f"unknown version {body['version']!r}")
            counts = (body["reset_count"], body["restart_count"])
            if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
                raise ValueError("reset/restart counts must be integers")
            events = tuple(Measurement.from_dict(m) for m in body["log"])
        except (ValueError, KeyError, TypeError, RecursionError, AttestationError) as exc:
            raise AttestationError(f"{path} is not a measurement log: {exc}") from exc
        return BootCounts(*counts), events


_AGENT_LOCKS: dict[Path, int] = {}  # state dir -> fd holding its flock for this process


def _hold_agent_lock(state_dir: Path) -> None:
    """One measuring agent per state dir (and so per TPM): two would both extend the PCRs and
    neither log would replay. The lock is held until this process exits."""
    key = state_dir.resolve()
    if key in _AGENT_LOCKS:
        return
    fd = os.open(key / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise AttestationError(
            f"another device agent is running on {state_dir} (and its TPM): stop it first"
        ) from exc
    _AGENT_LOCKS[key] = fd


def _unaccounted(why: str) -> AttestationError:
    msg = (
        "TPM PCRs 8/9 were extended since the TPM's last reset by something this agent cannot "
        f"account for ({why}): reboot the device (or reset the TPM) to attest again"
    )
    log.error("attestation refused at start: %s", msg)
    return AttestationError(msg)


def open_measured_device(
    tpm: TpmBackend, state_dir: Path, firmware_digest: bytes, firmware_label: str
) -> AttestingDevice:
    """The measuring agent on ``tpm``, with its log saved in ``state_dir``.

    * PCRs 8/9 at their reset value: measure the firmware into PCR 8 (a new log).
    * Otherwise (the agent restarted, the TPM kept its PCRs): continue with the saved log, but
      only if it belongs to this TPM boot (same reset count), replays exactly to the PCRs read
      from the TPM and its firmware event is ``firmware_digest``. Anything else raises
      ``AttestationError`` (one line, also logged): the device must reboot to attest again.

    Every later measurement (each installed model bundle) is saved before it is extended.
    """
    _hold_agent_lock(Path(state_dir))
    journal = FileMeasurementJournal(Path(state_dir) / MEASUREMENT_LOG_FILE, tpm.boot_counts())
    if AttestingDevice.pcrs_at_reset(tpm):
        device = AttestingDevice(tpm, journal=journal)
        device.measure_firmware(firmware_digest, firmware_label)
        log.info("TPM PCRs at reset: firmware measured, new measurement log %s", journal.path)
        return device
    try:
        saved = FileMeasurementJournal.load(journal.path)
    except AttestationError as exc:
        raise _unaccounted(str(exc)) from exc
    if saved is None:
        raise _unaccounted(f"no saved measurement log in {journal.path}")
    boot, events = saved
    if boot.reset_count != journal.boot.reset_count:
        raise _unaccounted(
            f"the saved log is from an earlier TPM boot: reset count {boot.reset_count}, "
            f"the TPM is at {journal.boot.reset_count}"
        )
    try:
        device = AttestingDevice.resume(tpm, events, journal=journal)
    except AttestationError as exc:
        raise _unaccounted(str(exc)) from exc
    firmware = [m for m in device.log if m.pcr == PCR_FIRMWARE]
    if len(firmware) != 1:
        raise _unaccounted(f"the saved log has {len(firmware)} firmware events, not 1")
    if firmware[0].digest != firmware_digest:
        msg = (
            f"the firmware changed without a reboot (now {firmware_digest.hex()[:16]}..., "
            f"measured since the TPM's last reset: {firmware[0].digest.hex()[:16]}...): "
            "reboot the device (or reset the TPM) to attest again"
        )
        log.error("attestation refused at start: %s", msg)
        raise AttestationError(msg)
    journal.save(device.log)  # drops an event written ahead but never extended
    log.info(
        "agent restarted without a TPM reset: continuing the saved measurement log "
        "(%d events, reset count %d)",
        len(device.log),
        boot.reset_count,
    )
    return device


def enrol_tpm(client: FleetClient, device: AttestingDevice) -> bool:
    """Enrol this device's TPM with the coordinator; returns whether it is hardware-backed.

    Raises ``AttestationError`` with the coordinator's one-line reason if refused.
    """
    try:
        reply = client.call(
            "Attest",
            json.dumps({"op": "enrol", "request": device.enrolment_request().to_dict()}).encode(),
        )
        try:
            challenge = CredentialChallenge.from_dict(json.loads(reply)["challenge"])
        except (ValueError, KeyError, TypeError) as exc:
            raise AttestationError(f"malformed enrolment challenge: {exc}") from exc
        secret = device.activate(challenge)
        quote = device.quote(challenge.nonce)
        reply = client.call(
            "Attest",
            json.dumps(
                {"op": "activate", "secret": secret.hex(), "quote": quote.to_dict()}
            ).encode(),
        )
    except RpcFailed as exc:
        raise AttestationError(f"coordinator refused TPM enrolment: {exc.details}") from exc
    try:
        return bool(json.loads(reply)["hardware_backed"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AttestationError(f"malformed enrolment answer: {exc}") from exc


class AttestingEndpoint:
    """An ``Endpoint`` that answers ``AttestTask``s with TPM quotes and passes the rest on."""

    def __init__(self, inner: Endpoint, device: AttestingDevice, device_id: str) -> None:
        self.inner = inner
        self.device = device
        self.device_id = device_id
        self.quotes = 0

    def handle(self, data: bytes) -> bytes:
        if codec.kind_of(data) is not AttestTask:
            return self.inner.handle(data)
        task = codec.decode(data)
        assert isinstance(task, AttestTask)
        evidence = self.device.quote(task.nonce)
        self.quotes += 1
        reply = AttestReply(
            task.round_id, self.device_id, json.dumps(evidence.to_dict()), task.nonce
        )
        return codec.encode(reply)
