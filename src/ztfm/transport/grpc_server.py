"""gRPC server with mutual TLS: every call goes through the ``RequestGate`` before the handler.

``FleetServer`` serves ``ztfm.v1.Fleet`` on a port that *requires* a client certificate chaining
to the fleet CA (TLS handshake), then re-derives the caller's identity from that certificate and
runs the full zero-trust gate (revocation, request binding, policy, audit) on every request. The
application logic is a plug-in ``RpcHandler``: ``handler(identity, method, payload) -> bytes``.
Two methods can be served by the server itself: ``RenewCert`` (when given the fleet CA) and
``GetRevocations`` (when given a revocation-list provider).

``EnrollmentServer`` serves ``ztfm.v1.Enrollment`` on a separate, server-authenticated TLS port
(the device has no certificate yet); a one-time token inside the CSR gates it.

Errors that cross the wire are values: a gRPC status code plus an opaque reference; the detail
is in the audit log under that reference.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from concurrent import futures
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final

import grpc

from ztfm.audit import AuditSink
from ztfm.crypto.pki import Certificate, CertificateRequest
from ztfm.errors import CryptoError, IdentityError, RequestRejected, TransportError, ZtfmError
from ztfm.identity import FleetCA, Identity, InMemoryKeyRegistry, SignedRevocationList
from ztfm.transport.gate import (
    METHOD_KIND,
    Admitted,
    Rejected,
    RejectionBudget,
    RequestGate,
    RpcHandler,
)
from ztfm.types import Clock, SystemClock
from ztfm.wire.codec import (
    ENVELOPE_OVERHEAD_BYTES,
    decode_enroll_request,
    encode_enroll_reply,
    encode_reply,
)

log = logging.getLogger(__name__)

# (identity, new certificate, "enrolled" | "renewed", now): e.g. to record it on the ledger
OnIssued = Callable[[Identity, Certificate, str, float], None]

FLEET_SERVICE: Final = "ztfm.v1.Fleet"
ENROLL_SERVICE: Final = "ztfm.v1.Enrollment"

_STAGE_STATUS: Final = {
    "method": grpc.StatusCode.UNIMPLEMENTED,
    "identity": grpc.StatusCode.UNAUTHENTICATED,
    "parse": grpc.StatusCode.INVALID_ARGUMENT,
    "binding": grpc.StatusCode.PERMISSION_DENIED,
    "policy": grpc.StatusCode.PERMISSION_DENIED,
    "throttled": grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM material for one TLS endpoint."""

    cert_pem: bytes
    key_pem: bytes
    ca_cert_pem: bytes


def _cert_config(tls: TlsFiles) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(tls.key_pem, tls.cert_pem)], root_certificates=tls.ca_cert_pem
    )


def _peer_host(peer: str) -> str:
    """'ipv4:1.2.3.4:555' -> 'ipv4:1.2.3.4' (throttle per source address, not per port)."""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


def _peer_cert(context: grpc.ServicerContext) -> bytes | None:
    auth = context.auth_context()
    certs = auth.get("x509_pem_cert")
    if not certs:
        return None
    first = certs[0]
    return first if isinstance(first, bytes) else str(first).encode()


class FleetServer:
    """mTLS gRPC server for the fleet service."""

    def __init__(
        self,
        gate: RequestGate,
        handler: RpcHandler,
        tls: TlsFiles,
        address: str = "127.0.0.1:0",
        *,
        tls_source: Callable[[], TlsFiles] | None = None,
        max_workers: int = 16,
        clock: Clock | None = None,
        ca: FleetCA | None = None,
        ca_lock: AbstractContextManager[Any] | None = None,
        on_ca_change: Callable[[FleetCA], None] | None = None,
        revocations: Callable[[], SignedRevocationList] | None = None,
        cert_ttl_s: float = 3600.0,
        max_concurrent_rpcs: int | None = None,
        on_issued: OnIssued | None = None,
    ) -> None:
        self.on_issued = on_issued
        self.gate = gate
        self.handler = handler
        self.clock: Clock = clock or SystemClock()
        if gate.verifier.not_before is None:
            # the nonce cache starts empty: refuse anything signed before this server started,
            # so that requests captured before a restart cannot be replayed after it
            gate.verifier.not_before = self.clock.now()
        self.ca = ca
        self.ca_lock: AbstractContextManager[Any] = ca_lock or threading.Lock()
        self.on_ca_change = on_ca_change
        self.revocations = revocations
        self.cert_ttl_s = cert_ttl_s
        limit = gate.max_payload_bytes + ENVELOPE_OVERHEAD_BYTES
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ztfm-rpc"),
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=max_concurrent_rpcs,
        )
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(self._make(name)) for name in METHOD_KIND
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(FLEET_SERVICE, handlers),)
        )
        self._tls_source = tls_source
        self._tls_current = tls
        creds = grpc.dynamic_ssl_server_credentials(
            _cert_config(tls), self._fetch_tls, require_client_authentication=True
        )
        self.port = self._server.add_secure_port(address, creds)
        if self.port == 0:
            raise TransportError(f"cannot bind {address}")
        self.host = address.rsplit(":", 1)[0]

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def _fetch_tls(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before every handshake: swap in a renewed server cert if any."""
        if self._tls_source is None:
            return None
        try:
            tls = self._tls_source()
        except Exception:  # keep serving with the current cert; the source logs its failure
            log.exception("server TLS source failed; keeping the current certificate")
            return None
        if tls == self._tls_current:
            return None
        self._tls_current = tls
        return _cert_config(tls)

    def start(self) -> FleetServer:
        self._server.start()
        return self

    def stop(self, grace_s: float | None = 1.0) -> None:
        self._server.stop(grace_s).wait()

    def __enter__(self) -> FleetServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- dispatch -------------------------------------------------------------------------------
    def _make(self, method: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        def call(raw: bytes, context: grpc.ServicerContext) -> bytes:
            return self._serve(method, raw, context)

        return call

    def _serve(self, method: str, raw: bytes, context: grpc.ServicerContext) -> bytes:
        now = self.clock.now()
        try:
            adm = self.gate.admit(_peer_cert(context), method, raw, now)
        except Rejected as rej:
            context.abort(
                _STAGE_STATUS.get(rej.stage, grpc.StatusCode.PERMISSION_DENIED), rej.public_message
            )
            raise AssertionError("unreachable") from rej  # abort raises
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before dispatch")
        try:
            reply = self._dispatch(adm, now)
        except ZtfmError as exc:
            ref = secrets.token_hex(6)
            self.gate.audit.record(
                "rpc.handler_error",
                {
                    "ref": ref,
                    "method": method,
                    "peer": adm.identity.uri,
                    "code": exc.code,
                    "detail": str(exc)[:500],
                },
                now,
            )
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{exc.code} (ref {ref})")
            raise AssertionError("unreachable") from exc
        except Exception as exc:
            ref = secrets.token_hex(6)
            log.exception("handler crashed on %s (ref %s)", method, ref)
            self.gate.audit.record(
                "rpc.handler_crash",
                {"ref": ref, "method": method, "peer": adm.identity.uri, "detail": repr(exc)[:500]},
                now,
            )
            context.abort(grpc.StatusCode.INTERNAL, f"internal error (ref {ref})")
            raise AssertionError("unreachable") from exc
        if len(reply) > self.gate.max_payload_bytes:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "reply too large")
        return encode_reply(reply)

    def _dispatch(self, adm: Admitted, now: float) -> bytes:
        if adm.envelope.method == "RenewCert" and self.ca is not None:
            try:
                csr = CertificateRequest(adm.payload)
            except CryptoError as exc:
                raise IdentityError(f"renewal CSR is malformed: {exc}") from exc
            with self.ca_lock:
                cert = self.ca.renew(csr, adm.identity, now, self.cert_ttl_s)
                if self.on_ca_change is not None:
                    self.on_ca_change(self.ca)
            if self.on_issued is not None:
                self.on_issued(adm.identity, cert, "renewed", now)
            self.gate.audit.record(
                "identity.renewed",
                {
                    "identity": adm.identity.uri,
                    "serial": f"{cert.serial:x}",
                    "not_after": cert.not_after,
                },
                now,
            )
            return cert.der
        if adm.envelope.method == "GetRevocations" and self.revocations is not None:
            return self.revocations().to_bytes()
        return self.handler(adm.identity, adm.envelope.method, adm.payload)


class EnrollmentServer:
    """Server-authenticated TLS endpoint for first enrolment (token inside the CSR)."""

    def __init__(
        self,
        ca: FleetCA,
        tls_cert_pem: bytes,
        tls_key_pem: bytes,
        audit: AuditSink,
        address: str = "127.0.0.1:0",
        *,
        clock: Clock | None = None,
        ca_lock: AbstractContextManager[Any] | None = None,
        on_ca_change: Callable[[FleetCA], None] | None = None,
        registry: InMemoryKeyRegistry | None = None,
        cert_ttl_s: float = 3600.0,
        budget: RejectionBudget | None = None,
        on_issued: OnIssued | None = None,
    ) -> None:
        self.on_issued = on_issued
        self.budget = budget if budget is not None else RejectionBudget(capacity=10)
        self.ca = ca
        self.audit = audit
        self.clock: Clock = clock or SystemClock()
        self.ca_lock: AbstractContextManager[Any] = ca_lock or threading.Lock()
        self.on_ca_change = on_ca_change
        self.registry = registry
        self.cert_ttl_s = cert_ttl_s
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="ztfm-enroll"),
            options=[("grpc.max_receive_message_length", 64 * 1024), ("grpc.so_reuseport", 0)],
        )
        handler = grpc.unary_unary_rpc_method_handler(self._enroll)
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(ENROLL_SERVICE, {"Enroll": handler}),)
        )
        creds = grpc.ssl_server_credentials([(tls_key_pem, tls_cert_pem)])
        self.port = self._server.add_secure_port(address, creds)
        if self.port == 0:
            raise TransportError(f"cannot bind {address}")
        self.host = address.rsplit(":", 1)[0]

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EnrollmentServer:
        self._server.start()
        return self

    def stop(self, grace_s: float | None = 1.0) -> None:
        self._server.stop(grace_s).wait()

    def __enter__(self) -> EnrollmentServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _enroll(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        now = self.clock.now()
        source = _peer_host(context.peer())
        throttled, to_log = self.budget.exhausted(source, now)
        if throttled:
            if to_log:
                self.audit.record("enroll.throttled", {"peer": source, "suppressed": to_log}, now)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many failed enrolments")
        try:
            csr = CertificateRequest(decode_enroll_request(raw))
            with self.ca_lock:
                identity, cert = self.ca.enroll(csr, now, self.cert_ttl_s)
                if self.on_ca_change is not None:
                    self.on_ca_change(self.ca)
        except (RequestRejected, CryptoError, IdentityError) as exc:
            ref = secrets.token_hex(6)
            self.audit.record(
                "enroll.rejected",
                {"ref": ref, "code": exc.code, "detail": str(exc)[:500], "peer": source},
                now,
            )
            self.budget.spend(source, now)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"enrolment rejected (ref {ref})")
            raise AssertionError("unreachable") from exc
        if self.registry is not None:
            try:
                self.registry.register(cert.public_key, identity)
            except RequestRejected as exc:  # the key is bound elsewhere: the new cert is unusable
                self.audit.record(
                    "enroll.key_conflict", {"identity": identity.uri, "detail": str(exc)}, now
                )
        if self.on_issued is not None:
            self.on_issued(identity, cert, "enrolled", now)
        self.audit.record(
            "enroll.issued",
            {"identity": identity.uri, "serial": f"{cert.serial:x}", "not_after": cert.not_after},
            now,
        )
        return encode_enroll_reply(cert.der, self.ca.cert.der)
