"""Wiring for a fleet on gRPC: credentials, a CA-backed revocation source, a one-call server.

``LocalFleet`` holds a fleet CA in memory and hands out what the roles need: the coordinator's
server TLS material, enrolled device credentials, a ready ``RequestGate`` and a started
``FleetServer``. ``ztfm coordinator serve`` / ``ztfm up`` use it (or its parts) to put the
federated roles on the networked transport.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ztfm.audit import AuditSink, SnapshotStore
from ztfm.crypto.pki import Certificate
from ztfm.identity import (
    CertValidator,
    FleetCA,
    Identity,
    InMemoryKeyRegistry,
    MemoryKeyStore,
    RequestVerifier,
    RevocationChecker,
    SignedRevocationList,
    needs_renewal,
)
from ztfm.identity.ca import DEFAULT_CERT_TTL_S, DEFAULT_CRL_TTL_S
from ztfm.identity.store import CaDirectoryLock, load_ca
from ztfm.policy import Policy, PolicyEngine, TrustSource
from ztfm.transport.gate import RejectionObserver, RequestGate, RpcHandler
from ztfm.transport.grpc_client import FleetClient, RetryPolicy
from ztfm.transport.grpc_server import EnrollmentServer, FleetServer, OnIssued, TlsFiles
from ztfm.types import Clock, SystemClock
from ztfm.wire.codec import DEFAULT_MAX_PAYLOAD_BYTES


class CaBackedRevocations:
    """A revocation source for the process that holds the CA: republishes before staleness."""

    def __init__(
        self,
        ca: FleetCA,
        ca_lock: AbstractContextManager[Any] | None = None,
        ttl_s: float = DEFAULT_CRL_TTL_S,
        skew_s: float = 60.0,
    ) -> None:
        self.ca = ca
        self.ca_lock: AbstractContextManager[Any] = ca_lock or threading.Lock()
        self.ttl_s = ttl_s
        self.checker = RevocationChecker(ca.cert.public_key, ca.fleet, skew_s)
        self._signed: SignedRevocationList | None = None
        self._lock = threading.Lock()

    def current(self, now: float) -> SignedRevocationList:
        """The newest list, republished once half of its lifetime has passed."""
        with self._lock:
            s = self._signed
            if s is None or now >= s.body.issued_at + self.ttl_s / 2:
                with self.ca_lock:
                    s = self.ca.publish_revocations(now, self.ttl_s)
                self.checker.update(s, now)
                self._signed = s
            return s

    def refresh(self, now: float) -> SignedRevocationList:
        """Publish right now (after a revocation)."""
        with self._lock:
            self._signed = None
        return self.current(now)

    def check(self, serial: int, identity: Identity, now: float) -> None:
        self.current(now)
        self.checker.check(serial, identity, now)


@dataclass(slots=True)
class Credentials:
    """An enrolled workload: identity, its key store and its certificate."""

    identity: Identity
    keystore: MemoryKeyStore
    cert: Certificate

    def client(
        self,
        target: str,
        ca_cert: Certificate,
        rng: np.random.Generator,
        *,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        timeout_s: float = 10.0,
        server_validator: CertValidator | None = None,
    ) -> FleetClient:
        return FleetClient(
            target,
            self.identity,
            self.keystore,
            self.keystore.tls_private_key_pem(),
            self.cert,
            ca_cert,
            rng,
            clock=clock,
            retry=retry,
            max_payload_bytes=max_payload_bytes,
            timeout_s=timeout_s,
            server_validator=server_validator,
        )


class LocalFleet:
    """A fleet CA plus helpers to enrol workloads and serve the coordinator over mTLS."""

    def __init__(
        self,
        ca: FleetCA,
        now: float,
        *,
        coordinator_segment: str = "core",
        coordinator_id: str = "coordinator",
        server_names: tuple[str, ...] = ("localhost",),
        server_ips: tuple[str, ...] = ("127.0.0.1",),
        cert_ttl_s: float = DEFAULT_CERT_TTL_S,
        ca_lock: AbstractContextManager[Any] | None = None,
    ) -> None:
        """``ca_lock`` guards every change of CA state; for a CA kept in a directory use
        ``LocalFleet.from_directory``, whose lock reloads and saves the state on disk."""
        self.ca = ca
        self.ca_lock: AbstractContextManager[Any] = ca_lock or threading.Lock()
        self.cert_ttl_s = cert_ttl_s
        self.revocations = CaBackedRevocations(ca, self.ca_lock)
        self.server_names = server_names
        self.server_ips = server_ips
        ident = Identity(ca.fleet, coordinator_segment, "coordinator", coordinator_id)
        keys = MemoryKeyStore()
        with self.ca_lock:
            cert = ca.issue(keys.make_csr(ident), ident, now, cert_ttl_s, server_names, server_ips)
        self.coordinator = Credentials(ident, keys, cert)
        self.registry = InMemoryKeyRegistry()

    @classmethod
    def from_directory(cls, directory: Path, now: float, **kw: Any) -> LocalFleet:
        """A fleet over a CA directory made by ``ztfm ca init``: changes are saved, and changes
        made meanwhile by the ``ztfm ca`` CLI are picked up (shared file lock)."""
        ca = load_ca(directory)
        return cls(ca, now, ca_lock=CaDirectoryLock(ca, directory), **kw)

    @classmethod
    def create(cls, fleet: str, now: float, cert_ttl_s: float = DEFAULT_CERT_TTL_S) -> LocalFleet:
        return cls(FleetCA.create(fleet, now - 3600), now, cert_ttl_s=cert_ttl_s)

    @property
    def server_tls(self) -> TlsFiles:
        c = self.coordinator
        return TlsFiles(c.cert.to_pem(), c.keystore.tls_private_key_pem(), self.ca.cert.to_pem())

    def rotating_server_tls(self, clock: Clock, margin_s: float | None = None) -> TlsFiles:
        """The server TLS files, renewing the coordinator cert (same key) when it is due."""
        c = self.coordinator
        now = clock.now()
        if needs_renewal(c.cert, now, margin_s):
            with self.ca_lock:
                c.cert = self.ca.issue(
                    c.keystore.make_csr(c.identity),
                    c.identity,
                    now,
                    self.cert_ttl_s,
                    self.server_names,
                    self.server_ips,
                )
        return self.server_tls

    def enroll(
        self,
        segment: str,
        device_id: str,
        now: float,
        role: str = "device",
        ttl_s: float | None = None,
    ) -> Credentials:
        """Enrol a workload in-process (its key is generated here, standing in for the device)."""
        ident = Identity(self.ca.fleet, segment, role, device_id)
        keys = MemoryKeyStore()
        with self.ca_lock:
            cert = self.ca.issue(
                keys.make_csr(ident), ident, now, self.cert_ttl_s if ttl_s is None else ttl_s
            )
        self.registry.register(keys.public_key, ident)
        return Credentials(ident, keys, cert)

    def revoke(self, creds: Credentials, now: float) -> None:
        """Revoke one certificate and publish a new revocation list at once."""
        with self.ca_lock:
            self.ca.revoke_serial(creds.cert.serial)
        self.revocations.refresh(now)

    def revoke_identity(self, identity: Identity, now: float) -> None:
        """Revoke every certificate of ``identity`` and block its re-enrolment."""
        with self.ca_lock:
            self.ca.revoke_identity(identity)
        self.revocations.refresh(now)

    def validator(self, skew_s: float = 60.0) -> CertValidator:
        return CertValidator(self.ca.cert, self.ca.fleet, self.revocations, skew_s)

    def gate(
        self,
        audit: AuditSink,
        trust: TrustSource,
        *,
        policy: Policy | None = None,
        snapshots: SnapshotStore | None = None,
        max_age_s: float = 30.0,
        skew_s: float = 60.0,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        on_reject: RejectionObserver | None = None,
    ) -> RequestGate:
        return RequestGate(
            self.validator(skew_s),
            RequestVerifier(self.registry, max_age_s=max_age_s, skew_s=skew_s),
            self.registry,
            policy if policy is not None else PolicyEngine(audit, audit_allows=False),
            trust,
            audit,
            snapshots,
            max_payload_bytes,
            on_reject,
        )

    def serve(
        self,
        handler: RpcHandler,
        gate: RequestGate,
        address: str = "127.0.0.1:0",
        *,
        clock: Clock | None = None,
        max_workers: int = 16,
        rotate_tls: bool = True,
        on_issued: OnIssued | None = None,
    ) -> FleetServer:
        """A started mTLS server with RenewCert and GetRevocations served from this CA.

        With ``rotate_tls`` the server certificate is renewed (same key) before it expires and
        swapped in for new connections without a restart.
        """
        clk = clock or SystemClock()
        return FleetServer(
            gate,
            handler,
            self.server_tls,
            address,
            max_workers=max_workers,
            clock=clk,
            tls_source=(lambda: self.rotating_server_tls(clk)) if rotate_tls else None,
            ca=self.ca,
            ca_lock=self.ca_lock,
            cert_ttl_s=self.cert_ttl_s,
            revocations=lambda: self.revocations.current(clk.now()),
            on_issued=on_issued,
        ).start()

    def serve_enrollment(
        self,
        audit: AuditSink,
        address: str = "127.0.0.1:0",
        *,
        clock: Clock | None = None,
        on_issued: OnIssued | None = None,
    ) -> EnrollmentServer:
        c = self.coordinator
        return EnrollmentServer(
            self.ca,
            c.cert.to_pem(),
            c.keystore.tls_private_key_pem(),
            audit,
            address,
            clock=clock,
            ca_lock=self.ca_lock,
            registry=self.registry,
            cert_ttl_s=self.cert_ttl_s,
            on_issued=on_issued,
        ).start()
