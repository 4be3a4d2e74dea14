"""The coordinator as a network service: round RPCs over mutual TLS plus first enrolment.

``CoordinatorServer`` glues three parts together and owns nothing else:

* a ``FleetServer`` (mTLS, zero-trust gate: identity from the peer certificate, signed and bound
  requests, Cedar policy, audit) whose handler is the thin ``RoundRpcHandler`` over a
  ``CoordinatorService`` (the round state machine);
* an ``EnrollmentServer`` (server-authenticated TLS, one-time token inside the CSR ->
  short-lived certificate from the fleet CA);
* a driver thread that calls ``service.step(clock.now())`` every ``tick_s`` until the configured
  rounds are done, and writes one audit record per closed round.

``stop()`` is idempotent and safe from a signal handler's thread: it stops the driver, stops both
servers, and appends a final ``coordinator.stopped`` record, so the audit log stays verifiable.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ztfm.audit import AuditSink, SnapshotStore
from ztfm.bundle import Bundle, publish_bundle, receipt_for
from ztfm.coordinator.attest import FleetAttestation
from ztfm.coordinator.service import CoordinatorService
from ztfm.crypto.pki import Certificate
from ztfm.crypto.signing import SigningKey
from ztfm.errors import RoundError, ZtfmError
from ztfm.identity import Identity
from ztfm.ledger import Entry, EntryKind, Ledger
from ztfm.policy import TrustContext, TrustSource
from ztfm.transport.grpc_fleet import LocalFleet
from ztfm.transport.grpc_roles import RoundRpcHandler, encode_model_update
from ztfm.transport.grpc_server import EnrollmentServer, FleetServer
from ztfm.trust import quarantine_decisions
from ztfm.types import Clock, SystemClock

log = logging.getLogger(__name__)


class UnsafeAssumeAttested:
    """A ``TrustSource`` that reports every authenticated caller as freshly attested.

    For fleets without TPMs (``--attestation none``): the certificate, request binding and
    policy checks still run, but the policy's attestation requirement is satisfied by fiat.
    Logs a warning for every identity it vouches for.
    """

    def __init__(self, trust_score: float = 1.0) -> None:
        self.trust_score = trust_score
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        log.warning("UnsafeAssumeAttested: attestation is NOT checked for this fleet")

    def context_for(self, identity: Identity, now: float) -> TrustContext:
        with self._lock:
            if identity.uri not in self._warned:
                self._warned.add(identity.uri)
                log.warning("UnsafeAssumeAttested: %s treated as attested", identity.uri)
        return TrustContext(self.trust_score, True, 0.0, False)


class ModelReleaser:
    """Publishes each new global model as a signed bundle in the ledger and serves it.

    ``release`` (coordinator model version v -> bundle version base + v + 1, where base is the
    newest earlier release of ``model_id`` in this ledger) appends a ``model_release`` entry,
    signs the manifest with the release key and a new tree head with the log key
    (``publish_bundle``). As a ``ModelProvider`` it answers
    ``GetModel(payload = the caller's trusted tree size, 8 bytes big-endian, 0 = none)`` with
    the newest bundle, a receipt for the newest head, that head, and a consistency proof from
    the caller's size, so a device can verify signature, ledger inclusion and version.
    """

    def __init__(
        self, ledger: Ledger, release_key: SigningKey, *, model_id: str, architecture: str
    ) -> None:
        self.ledger = ledger
        self.release_key = release_key
        self.model_id = model_id
        self.architecture = architecture
        self.latest: Bundle | None = None
        self.served: dict[str, int] = {}  # device id -> newest bundle version sent to it
        self._lock = threading.Lock()
        # a restarted coordinator on the same ledger continues the version sequence (devices
        # refuse any version not above what they run)
        self.base_version = max(
            (
                int(ledger.entry(i).body.get("version", 0))
                for i in ledger.find(
                    lambda e: (
                        e.kind == EntryKind.MODEL_RELEASE and e.body.get("model_id") == model_id
                    )
                )
            ),
            default=0,
        )

    def release(
        self, params: Sequence[np.ndarray[Any, Any]], version: int, round_id: int, now: float
    ) -> Bundle:
        with self._lock:
            now = self._not_before_latest_head(now)
            parent = self.latest.version if self.latest is not None else None
            bundle = publish_bundle(
                self.ledger,
                self.release_key,
                model_id=self.model_id,
                version=self.base_version + version + 1,
                parent_version=parent,
                architecture=self.architecture,
                quantisation="none",
                training_round=round_id,
                weights={f"param.{i}": np.asarray(p) for i, p in enumerate(params)},
                now=now,
            )
            self.latest = bundle
            return bundle

    def _not_before_latest_head(self, now: float) -> float:
        """``now``, or the latest head's time if the wall clock stepped back since: a head
        older than the previous one is refused, and that must not end the run."""
        latest = self.ledger.latest_tree_head()
        if latest is not None and now * 1000 < latest.head.timestamp_ms:
            log.warning("wall clock is behind the latest signed tree head; using the head's time")
            return latest.head.timestamp_ms / 1000
        return now

    def behind(self, device_ids: Iterable[str]) -> set[str]:
        """Devices among ``device_ids`` that fetch bundles but were not yet sent the latest."""
        with self._lock:
            if self.latest is None:
                return set()
            v = self.latest.version
            return {d for d in device_ids if d in self.served and self.served[d] < v}

    def seal(self, now: float) -> None:
        """Sign a tree head over entries appended since the last one (revocations, enrolments,
        verdicts, quarantine decisions), so none of them stays outside every signed head."""
        with self._lock:
            latest = self.ledger.latest_tree_head()
            if latest is None or latest.tree_size != self.ledger.size:
                self.ledger.sign_tree_head(now=self._not_before_latest_head(now))

    def __call__(self, identity: Identity, payload: bytes) -> bytes:
        if len(payload) != 8:
            raise RoundError("GetModel takes the caller's trusted tree size (8 bytes)")
        old = int.from_bytes(payload, "big")
        with self._lock:
            bundle = self.latest
            head = self.ledger.latest_tree_head()
            if bundle is None or head is None:
                raise RoundError("no model has been released yet")
            if old > head.tree_size:
                raise RoundError("caller's tree head is ahead of this log")
            receipt = receipt_for(self.ledger, bundle, head.tree_size)
            proof = b""
            if 0 < old < head.tree_size:
                cp = self.ledger.consistency_proof(old, head.tree_size)
                proof = json.dumps(cp.to_json()).encode()
            self.served[identity.device_id] = bundle.version
        return encode_model_update(bundle.with_receipt(receipt).to_bytes(), head.to_bytes(), proof)


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where a started coordinator listens (``host:port`` each)."""

    fleet: str
    enroll: str

    def to_json(self) -> str:
        return json.dumps({"fleet": self.fleet, "enroll": self.enroll})

    @classmethod
    def from_json(cls, text: str) -> Endpoints:
        try:
            d = json.loads(text)
            return cls(str(d["fleet"]), str(d["enroll"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ZtfmError(f"endpoints file is not valid: {exc}") from exc


class CoordinatorServer:
    """Serves one ``CoordinatorService`` to the fleet until its rounds are done."""

    def __init__(
        self,
        fleet: LocalFleet,
        service: CoordinatorService,
        audit: AuditSink,
        trust: TrustSource,
        *,
        listen: str = "127.0.0.1:0",
        enroll_listen: str = "127.0.0.1:0",
        clock: Clock | None = None,
        tick_s: float = 0.1,
        snapshots: SnapshotStore | None = None,
        max_workers: int = 16,
        enrol_timeout_s: float | None = None,
        releaser: ModelReleaser | None = None,
        attestation: FleetAttestation | None = None,
        trust_log: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        """``enrol_timeout_s``: if fewer than the expected devices registered by then, start
        with those that did (at least one), recorded as ``enrol.timeout``; None waits forever.
        ``attestation`` serves the ``Attest`` RPC and learns every released bundle's measurement
        (the service's per-round attestation phase and the coordinator's gate use the same
        object). ``trust_log`` (trust changes as ``TrustChange.to_dict``): each move into or
        out of quarantine becomes a ``quarantine_decision`` ledger entry at round close."""
        if tick_s <= 0:
            raise ZtfmError("tick_s must be positive")
        if enrol_timeout_s is not None and enrol_timeout_s <= 0:
            raise ZtfmError("enrol_timeout_s must be positive")
        self.enrol_timeout_s = enrol_timeout_s
        self.fleet = fleet
        self.service = service
        self.audit = audit
        self.trust = trust
        self.listen = listen
        self.enroll_listen = enroll_listen
        self.clock: Clock = clock or SystemClock()
        self.tick_s = tick_s
        self.snapshots = snapshots
        self.max_workers = max_workers
        self.error: BaseException | None = None
        self.releaser = releaser
        self.attestation = attestation
        self.trust_log = trust_log
        self._trust_seen = 0
        self._keys: dict[str, str] = {}  # identity URI -> key fingerprint on the ledger
        self._keys_lock = threading.Lock()
        if service.secure is not None and service.endorsements is None:
            # early refusal of a SecAgg key its sender's certificate does not endorse (devices
            # check their neighbours' endorsements themselves; this only fails them sooner)
            service.endorsements = fleet.validator()
        self.handler = RoundRpcHandler(
            service, clock=self.clock, model=releaser, attest=attestation
        )
        self._fleet_server: FleetServer | None = None
        self._enroll_server: EnrollmentServer | None = None
        self._driver: threading.Thread | None = None
        self._stop = threading.Event()
        self._stopped = False
        self._stop_lock = threading.Lock()

    def start(self) -> Endpoints:
        """Start both servers and the driver; return where they listen."""
        now = self.clock.now()
        if self.releaser is not None:  # the initial model too, before any device can ask for it
            coord = self.service.coordinator
            self._released(self.releaser.release(coord.params, coord.model_version, 0, now))
        gate = self.fleet.gate(self.audit, self.trust, snapshots=self.snapshots)
        on_issued = self._issued if self.releaser is not None else None
        self._fleet_server = self.fleet.serve(
            self.handler,
            gate,
            self.listen,
            clock=self.clock,
            max_workers=self.max_workers,
            on_issued=on_issued,
        )
        try:
            self._enroll_server = self.fleet.serve_enrollment(
                self.audit, self.enroll_listen, clock=self.clock, on_issued=on_issued
            )
        except BaseException:
            self._fleet_server.stop(0)
            raise
        ends = Endpoints(self._fleet_server.target, self._enroll_server.target)
        self.audit.record(
            "coordinator.started",
            {
                "fleet": ends.fleet,
                "enroll": ends.enroll,
                "rounds": self.service.rounds,
                "expected_devices": self.service.expected_devices,
                "identity": self.fleet.coordinator.identity.uri,
            },
            now,
        )
        self._driver = threading.Thread(target=self._drive, name="ztfm-driver", daemon=True)
        self._driver.start()
        return ends

    def revoke(self, identity: Identity, reason: str) -> None:
        """Revoke every certificate of ``identity`` now (a fresh signed revocation list is
        served at once), forget its TPM enrolment, and record it in the audit log and, with a
        releaser, as a ``revocation`` ledger entry."""
        if not reason.strip():
            raise ZtfmError("a revocation needs a reason")
        now = self.clock.now()
        self.fleet.revoke_identity(identity, now)
        if self.attestation is not None:
            self.attestation.revoke(identity.device_id)
        fields = {"device_id": identity.device_id, "identity": identity.uri, "reason": reason}
        self.audit.record("identity.revoked", fields, now)
        if self.releaser is not None:
            self.releaser.ledger.append(Entry.create(EntryKind.REVOCATION, fields, now=now))
            self.releaser.seal(now)  # provable to devices at once, not at the next release

    def _issued(self, identity: Identity, cert: Certificate, how: str, now: float) -> None:
        """A certificate was issued: a first key is an ``enrolment`` on the ledger, a device
        that comes back with another key a ``key_rotation`` (same-key renewals are audited
        only)."""
        assert self.releaser is not None
        key = cert.public_key.fingerprint()
        with self._keys_lock:
            old = self._keys.get(identity.uri)
            self._keys[identity.uri] = key
        if old == key:
            return
        kind = EntryKind.ENROLMENT if old is None else EntryKind.KEY_ROTATION
        body = {
            "device_id": identity.device_id,
            "identity": identity.uri,
            "public_key": key,
            "key_kind": "x509-spki-sha256",
            "serial": f"{cert.serial:x}",
            "how": how,
        }
        if old is not None:
            body["previous_key"] = old
        self.releaser.ledger.append(Entry.create(kind, body, now=now))

    def _ledger_quarantine(self, round_id: int) -> None:
        if self.trust_log is None or self.releaser is None:
            return
        changes = list(self.trust_log[self._trust_seen :])
        self._trust_seen += len(changes)
        for body in quarantine_decisions(changes, round_id):
            entry = Entry.create(EntryKind.QUARANTINE_DECISION, body, now=self.clock.now())
            self.releaser.ledger.append(entry)

    def _released(self, bundle: Bundle) -> None:
        if self.attestation is not None:  # devices that load it must still attest
            self.attestation.allow_model(bundle.measurement())

    def _check_enrolment(self, started: float, now: float) -> None:
        svc = self.service
        if (
            self.enrol_timeout_s is None
            or svc.phase != "enrol"
            or now - started <= self.enrol_timeout_s
        ):
            return
        registered = len(svc.coordinator.devices)
        if registered == 0 or registered >= svc.expected_devices:
            return
        self.audit.record(
            "enrol.timeout",
            {"expected": svc.expected_devices, "registered": registered},
            now,
        )
        log.warning("only %d of %d devices enrolled; starting", registered, svc.expected_devices)
        svc.expected_devices = registered

    def _drive(self) -> None:
        seen = 0
        failed_seen: set[int] = set()
        started = self.clock.now()
        try:
            while not self._stop.is_set():
                self._check_enrolment(started, self.clock.now())
                self.service.step(self.clock.now())
                log_ = self.service.log
                closed = log_.summaries
                while seen < len(closed):
                    s = closed[seen]
                    self.audit.record(
                        "round.closed",
                        {
                            "round": s.round_id,
                            "version": s.model_version,
                            "accepted": list(s.accepted),
                            "rejected": dict(s.rejected),
                        },
                        self.clock.now(),
                    )
                    if self.releaser is not None:
                        self._ledger_quarantine(s.round_id)
                        # who contributed to this round, on the ledger before the release
                        # whose signed tree head then covers it
                        self.releaser.ledger.append(
                            Entry.create(
                                EntryKind.ROUND_CONTRIBUTORS,
                                {
                                    "round": s.round_id,
                                    "contributors": sorted(s.accepted),
                                    "rejected": dict(sorted(s.rejected.items())),
                                    "version": s.model_version,
                                },
                                now=self.clock.now(),
                            )
                        )
                        b = self.releaser.release(
                            self.service.coordinator.params,
                            s.model_version,
                            s.round_id,
                            self.clock.now(),
                        )
                        self._released(b)
                        self.audit.record(
                            "model.released",
                            {
                                "version": b.version,
                                "ledger_index": b.manifest.ledger_index,
                                "measurement": b.measurement().hex(),
                            },
                            self.clock.now(),
                        )
                    seen += 1
                for round_no in sorted(set(log_.failed) - failed_seen):
                    # a failed round (no eligible device, SecAgg abort, refused aggregation):
                    # the run goes on with the kept model, and the audit log says why
                    self.audit.record(
                        "round.failed",
                        {"round": round_no, "reason": log_.failed[round_no]},
                        self.clock.now(),
                    )
                    failed_seen.add(round_no)
                    if self.releaser is not None:  # no release follows: sign what it appended
                        self.releaser.seal(self.clock.now())
                if self.service.finished.is_set():
                    return
                self._stop.wait(self.tick_s)
        except BaseException as exc:  # a driver crash must end the run, not hang it
            log.exception("coordinator driver failed")
            self.error = exc
            self.service.log.failures.append(f"driver failed: {exc!r}")
            self.service.finished.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the rounds are done (True) or the timeout passes (False)."""
        return self.service.finished.wait(timeout_s)

    def linger(self, timeout_s: float, poll_s: float = 0.1) -> bool:
        """After the last round: keep serving until every registered device has been told
        ``done`` (True) or ``timeout_s`` passes (False), so devices exit instead of retrying.
        A device that fetches bundles must also have been sent the final one: it asks for it
        right after ``done``, and stopping first would cancel that call."""
        deadline = self.clock.now() + timeout_s
        while True:
            devices = set(self.service.coordinator.devices)
            if devices <= self.handler.told_done and (
                self.releaser is None or not self.releaser.behind(devices)
            ):
                return True
            if self.clock.now() >= deadline or self._stop.wait(poll_s):
                return False

    def stop(self, reason: str = "finished", grace_s: float = 1.0) -> None:
        """Stop the driver and both servers; idempotent."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self._stop.set()
        if self._driver is not None and self._driver is not threading.current_thread():
            self._driver.join(timeout=10.0)
        for srv in (self._fleet_server, self._enroll_server):
            if srv is not None:
                srv.stop(grace_s)
        if self.releaser is not None:
            try:  # entries after the last release (verdicts, quarantines) get a signed head
                self.releaser.seal(self.clock.now())
            except ZtfmError as exc:
                log.error("could not sign the final tree head: %s", exc)
        self.audit.record(
            "coordinator.stopped",
            {
                "reason": reason[:200],
                "rounds_done": len(self.service.log.evals),
                "failures": list(self.service.log.failures)[:20],
            },
            self.clock.now(),
        )
