"""A device process's main loop: enrol if needed, pull tasks, train, push replies, renew, stop.

``DeviceRunner.run()``:

1. without a certificate, enrols over server-authenticated TLS pinned to the fleet CA with a
   one-time token carried in the CSR (``transport.grpc_client.enroll``);
2. fetches the CA-signed revocation list and opens its mTLS client with a server validator, so
   it talks only to a valid, unrevoked coordinator (or gateway) of its fleet;
3. polls ``GetRound``; an empty answer means "wait": it sleeps with exponential backoff and full
   jitter (seeded ``rng``) and resets to the shortest delay after each task; a task goes through
   the ``Endpoint`` (the ``DeviceAgent``) and the reply goes back with ``SubmitUpdate``;
4. renews its certificate (same key) in the last part of its lifetime, and fetches the signed
   revocation list again once half of its validity has passed;
5. stops on ``done``, on ``stop`` being set, or after ``give_up_s`` without reaching the
   coordinator (a clear ``TransportError``).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from ztfm.attestation import PCR_MODEL, AttestingDevice
from ztfm.bundle import Bundle, BundleRejected, InstalledModel, Reason
from ztfm.crypto.pki import Certificate
from ztfm.crypto.signing import VerifyKey
from ztfm.device.attest import AttestingEndpoint, enrol_tpm
from ztfm.device.secure import CertCredentials, SecureEndpoint
from ztfm.errors import IdentityError, LedgerError, RoundError, TransportError, ZtfmError
from ztfm.identity import (
    CertValidator,
    Identity,
    MemoryKeyStore,
    RevocationChecker,
    needs_renewal,
)
from ztfm.ledger import ConsistencyProof, SignedTreeHead
from ztfm.transport.grpc_client import FleetClient, RetryPolicy, RpcFailed, enroll
from ztfm.transport.grpc_roles import DeviceLoop, PollResult, decode_model_update
from ztfm.transport.inproc import Endpoint
from ztfm.types import Clock, SystemClock

log = logging.getLogger(__name__)

REVOCATION_RETRY_S = 30.0  # fewest seconds between two fetches of the revocation list
_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True, slots=True)
class PollBackoff:
    """Wait k (after k empty polls in a row) is U(0, min(max_s, initial_s * factor^k))."""

    initial_s: float = 0.05
    factor: float = 2.0
    max_s: float = 1.0

    def __post_init__(self) -> None:
        if not (self.initial_s > 0 and self.factor >= 1 and self.max_s >= self.initial_s):
            raise ZtfmError("poll backoff needs initial_s > 0, factor >= 1, max_s >= initial_s")

    def delay_s(self, empty_polls: int, rng: np.random.Generator) -> float:
        cap = min(self.max_s, self.initial_s * self.factor ** min(empty_polls, 60))
        return float(rng.uniform(cap / 2, cap))


class ModelInstaller:
    """Fetches the coordinator's newest signed model bundle and installs it only if it verifies.

    The device pins the release key and the ledger's log key. Each fetch moves the device's
    trusted tree head forward with a consistency proof (a forked or rolled-back log is refused),
    then ``InstalledModel.install`` checks the release signature, the weights hash, ledger
    inclusion under that head and that the version is newer (rollback protection). The trusted
    head and the installed bundle persist in ``directory``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        model_id: str,
        release_key: VerifyKey,
        log_key: VerifyKey,
        on_install: Callable[[Bundle], None] | None = None,
    ) -> None:
        """``on_install(bundle)`` runs after each successful install (e.g. to measure the
        bundle into the TPM's model PCR)."""
        self.model = InstalledModel(directory, model_id=model_id, release_key=release_key)
        self.witness = self.model.load_witness(log_key)
        self.on_install = on_install

    def fetch(self, client: FleetClient) -> Bundle | None:
        """Install the newest bundle; None if it is the one already installed."""
        size = self.witness.head.tree_size if self.witness.has_head else 0
        bundle_b, head_b, proof_b = decode_model_update(
            client.call("GetModel", size.to_bytes(8, "big"))
        )
        try:
            head = SignedTreeHead.from_bytes(head_b)
            proof = ConsistencyProof.from_json(json.loads(proof_b)) if proof_b else None
        except (ValueError, TypeError, KeyError, LedgerError) as exc:
            raise RoundError(f"model update carries a malformed tree head or proof: {exc}") from exc
        # every head goes through the witness, even at an unchanged size: a second root for
        # the same size is a fork, and only update() compares the roots
        before = self.witness.head if self.witness.has_head else None
        self.witness.update(head, proof)
        if self.witness.head != before:
            self.model.save_witness(self.witness)
        bundle = Bundle.from_bytes(bundle_b)
        if bundle.version == self.model.installed_version:
            return None
        installed = self.model.install(bundle_b, ledger=self.witness)
        if self.on_install is not None:
            self.on_install(installed)
        return installed

    def matches(self, params: Sequence[np.ndarray[Any, Any]]) -> bool:
        """Are ``params`` exactly the weights of the installed (verified) bundle?"""
        cur = self.model.current
        if cur is None or len(cur.weights) != len(params):
            return False
        for i, p in enumerate(params):
            w = cur.weights.get(f"param.{i}")
            if w is None or w.shape != p.shape or w.dtype != p.dtype or not np.array_equal(w, p):
                return False
        return True

    def check_task(self, client: FleetClient, params: Sequence[np.ndarray[Any, Any]]) -> bool:
        """True if ``params`` are the newest verified bundle's weights (fetching it if needed)."""
        if self.matches(params):
            return True
        self.fetch(client)
        return self.matches(params)


@dataclass(slots=True)
class RunStats:
    """What one device run did."""

    tasks: int = 0
    refused: int = 0
    aborted: int = 0  # secure rounds this device aborted (e.g. a neighbour key not endorsed)
    polls: int = 0
    renewals: int = 0
    enrolled: bool = False
    finished: bool = False
    model_version: int | None = None  # the verified, installed model after training
    tpm_enrolled: bool = False
    hardware_backed: bool = False
    quotes: int = 0  # per-round attestation quotes answered


class DeviceRunner:
    """Runs one device against a coordinator until training is done."""

    def __init__(
        self,
        identity: Identity,
        keystore: MemoryKeyStore,
        ca_cert: Certificate,
        endpoint: Endpoint,
        fleet_target: str,
        rng: np.random.Generator,
        *,
        cert: Certificate | None = None,
        enroll_target: str | None = None,
        token: str = "",
        on_cert: Callable[[Certificate], None] | None = None,
        clock: Clock | None = None,
        sleep: Callable[[float], None] = time.sleep,
        backoff: PollBackoff | None = None,
        retry: RetryPolicy | None = None,
        renew_margin_s: float | None = None,
        give_up_s: float = 60.0,
        timeout_s: float = 30.0,
        stop: threading.Event | None = None,
        installer: ModelInstaller | None = None,
        verify_timeout_s: float = 30.0,
        attestation: AttestingDevice | None = None,
    ) -> None:
        """With ``installer``, every task's parameters must be the weights of a verified model
        bundle (signature, ledger, version), else the task waits and, after
        ``verify_timeout_s``, the device stops with ``BundleRejected``; the final model is
        installed at ``done``. With ``attestation`` (a TPM that has measured the firmware),
        the device installs the current bundle, enrols its TPM (``Attest``) and answers each
        round's attestation challenge with a quote."""
        if cert is None and (enroll_target is None or not token):
            raise ZtfmError("a device without a certificate needs an enrolment endpoint and token")
        self.identity = identity
        self.keystore = keystore
        self.ca_cert = ca_cert
        self.endpoint = endpoint
        self.fleet_target = fleet_target
        self.rng = rng
        self.cert = cert
        self.enroll_target = enroll_target
        self.token = token
        self.on_cert = on_cert
        self.clock: Clock = clock or SystemClock()
        self.sleep = sleep
        self.backoff = backoff or PollBackoff()
        self.retry = retry or RetryPolicy(max_attempts=3, base_delay_s=0.1, max_delay_s=1.0)
        self.renew_margin_s = renew_margin_s
        self.give_up_s = give_up_s
        self.timeout_s = timeout_s
        self.stop = stop or threading.Event()
        self.stats = RunStats()
        self.installer = installer
        self.attestation = attestation
        self._measured_current = False
        self.verify_timeout_s = verify_timeout_s
        self._unverified_since: float | None = None
        self.client: FleetClient | None = None
        self.validator: CertValidator | None = None
        self._revocations_fetched = -math.inf
        if isinstance(endpoint, SecureEndpoint):
            # SecAgg rounds: the device certificate endorses the device's SecAgg identity key,
            # and neighbours' keys are checked against this device's own CA and revocation list
            endpoint.credentials = CertCredentials(
                identity, keystore, lambda: self.cert, lambda: self.validator, self.clock
            )

    # --- steps -------------------------------------------------------------------------------
    def enrol(self) -> Certificate:
        """First enrolment with the one-time token; the certificate must name our identity."""
        assert self.enroll_target is not None
        csr = self.keystore.make_csr(self.identity, self.token)
        cert = enroll(self.enroll_target, self.ca_cert, csr, timeout_s=self.timeout_s)
        self._set_cert(cert)
        self.stats.enrolled = True
        return cert

    def _set_cert(self, cert: Certificate) -> None:
        self.cert = cert
        if self.on_cert is not None:
            self.on_cert(cert)

    def _client(self, validator: CertValidator | None) -> FleetClient:
        assert self.cert is not None
        return FleetClient(
            self.fleet_target,
            self.identity,
            self.keystore,
            self.keystore.tls_private_key_pem(),
            self.cert,
            self.ca_cert,
            self.rng,
            clock=self.clock,
            retry=self.retry,
            timeout_s=self.timeout_s,
            server_validator=validator,
            sleep=self.sleep,
        )

    def connect(self) -> FleetClient:
        """Fetch the signed revocation list, then open a client that validates the server."""
        if self.cert is None or needs_renewal(self.cert, self.clock.now(), 0.0):
            if self.enroll_target is None or not self.token:
                raise ZtfmError("device certificate has expired and no enrolment token is given")
            self.enrol()
        with self._client(None) as boot:
            self.validator = boot.fetch_validator()
        self.client = self._client(self.validator)
        return self.client

    def maybe_renew(self) -> None:
        assert self.client is not None
        if needs_renewal(self.client.cert, self.clock.now(), self.renew_margin_s):
            self.validator = self.client.fetch_validator()
            cert = self.client.renew(self.validator)
            self._set_cert(cert)
            self.stats.renewals += 1
        self.maybe_refresh_revocations()

    def maybe_refresh_revocations(self) -> None:
        """Fetch the CA-signed revocation list again once three quarters of the held one's
        validity have passed (the coordinator republishes at half; a stale list fails every
        certificate check closed), at most every ``REVOCATION_RETRY_S``. The held checker
        takes it, so a list older than the one held is refused (no rollback)."""
        assert self.client is not None
        checker = self.validator.revocations if self.validator is not None else None
        if not isinstance(checker, RevocationChecker) or checker.current is None:
            return
        cur, now = checker.current, self.clock.now()
        due = cur.issued_at + 0.75 * (cur.next_update - cur.issued_at)
        if now >= due and now >= self._revocations_fetched + REVOCATION_RETRY_S:
            self._revocations_fetched = now
            try:
                checker.update(self.client.get_revocations(), now)
            except IdentityError as exc:
                # a rolled-back, forked or stale list from the coordinator: keep the held one
                # (checks fail closed once it is stale) instead of ending the device
                log.warning("revocation list refused, keeping the held one: %s", exc)

    def _accept(self, task: object) -> bool:
        """Train/evaluate only on parameters that are a verified, ledger-recorded bundle."""
        assert self.installer is not None and self.client is not None
        params = getattr(task, "params", None)
        if params is None:
            return True
        if self.installer.check_task(self.client, params):
            self._unverified_since = None
            return True
        now = self.clock.now()
        if self._unverified_since is None:
            self._unverified_since = now
        elif now - self._unverified_since > self.verify_timeout_s:
            raise BundleRejected(
                Reason.HASH_MISMATCH,
                "task parameters match no verified model bundle; refusing to train on them",
            )
        return False  # the release may not be published yet: poll again

    def _fetch_final(self) -> None:
        """After ``done``: install the final release. A coordinator that stopped meanwhile
        (the call cancelled or unreachable) leaves the verified bundle already installed."""
        assert self.installer is not None and self.client is not None
        try:
            self.installer.fetch(self.client)
        except RpcFailed as exc:
            if exc.status not in _UNREACHABLE | {grpc.StatusCode.CANCELLED}:
                raise
            log.warning("final model not fetched, keeping the installed one: %s", exc)
        self.stats.model_version = self.installer.model.installed_version

    # --- the loop ----------------------------------------------------------------------------
    def run(self, max_polls: int | None = None) -> RunStats:
        """Poll until done, stopped, ``max_polls`` reached, or the coordinator is unreachable."""
        started = self.clock.now()
        while True:
            try:
                self.connect()
                break
            except (RpcFailed, TransportError) as exc:
                if not _transient(exc) or self.clock.now() - started > self.give_up_s:
                    raise
                if self.stop.is_set():  # SIGTERM while the coordinator is unreachable
                    return self.stats
                self.sleep(self.backoff.delay_s(3, self.rng))
        assert self.client is not None
        endpoint = self.endpoint
        if self.attestation is not None:
            if self.installer is not None:
                # fetch first and measure only the bundle that will run: a newer one is measured
                # by the install hook; the one installed before this start only if it stays
                # (a restarted coordinator allows only what it released since its restart)
                fetched = self.installer.fetch(self.client)
                current = self.installer.model.current
                if fetched is None and current is not None and not self._measured_current:
                    # unless a resumed log (agent restart, TPM not reset) already ends with it:
                    # one more event per restart would overflow the log in a crash loop
                    models = [m.digest for m in self.attestation.log if m.pcr == PCR_MODEL]
                    if not models or models[-1] != current.measurement():
                        self.attestation.measure_model(current.measurement(), "model:installed")
                self._measured_current = True
            self.stats.hardware_backed = enrol_tpm(self.client, self.attestation)
            self.stats.tpm_enrolled = True
            endpoint = AttestingEndpoint(endpoint, self.attestation, self.identity.device_id)
        loop = DeviceLoop(self.client, endpoint, self._accept if self.installer else None)
        empty = 0
        last_contact = self.clock.now()
        try:
            while not self.stop.is_set():
                if max_polls is not None and self.stats.polls >= max_polls:
                    break
                self.stats.polls += 1
                try:
                    self.maybe_renew()
                    result = loop.poll()
                except RpcFailed as exc:
                    if exc.status not in _UNREACHABLE:
                        raise
                    if self.clock.now() - last_contact > self.give_up_s:
                        raise TransportError(
                            f"coordinator {self.fleet_target} unreachable for "
                            f"{self.give_up_s:.0f} s"
                        ) from exc
                    result = PollResult.WAIT
                else:
                    last_contact = self.clock.now()
                self.stats.tasks = loop.tasks_done
                if isinstance(endpoint, AttestingEndpoint):
                    self.stats.quotes = endpoint.quotes
                self.stats.refused = loop.refused
                self.stats.aborted = loop.aborted
                if result is PollResult.DONE:
                    self.stats.finished = True
                    if self.installer is not None:
                        self._fetch_final()
                    break
                if result is PollResult.WAIT:
                    self.stop.wait(self.backoff.delay_s(empty, self.rng))
                    empty += 1
                else:
                    empty = 0
        finally:
            self.client.close()
        return self.stats


def _transient(exc: ZtfmError) -> bool:
    if isinstance(exc, RpcFailed):
        return exc.status in _UNREACHABLE
    return isinstance(exc, TransportError)
