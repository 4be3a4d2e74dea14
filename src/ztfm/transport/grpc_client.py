"""gRPC client with mutual TLS, signed requests, deadlines and retry with jittered backoff.

``FleetClient.call(method, payload, round_id)`` signs a fresh envelope (new nonce, current time)
for every attempt, sends it over an mTLS channel pinned to the fleet CA, and retries only
transient failures (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED) with exponential backoff
and full jitter drawn from a seeded ``np.random.Generator``. Rejections are never retried.
"""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import grpc
import numpy as np

from ztfm.crypto.pki import Certificate, CertificateRequest
from ztfm.errors import CryptoError, IdentityError, RequestRejected, TransportError
from ztfm.identity import (
    CertValidator,
    Identity,
    KeyStore,
    RevocationChecker,
    SignedRevocationList,
    needs_renewal,
    sign_request,
)
from ztfm.transport.grpc_server import ENROLL_SERVICE, FLEET_SERVICE
from ztfm.types import Clock, SystemClock
from ztfm.wire.codec import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    ENVELOPE_OVERHEAD_BYTES,
    decode_enroll_reply,
    decode_reply,
    encode_enroll_request,
    encode_signed_request,
)

RETRYABLE: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


class RpcFailed(TransportError):
    """The server refused or the call failed; ``status`` is the gRPC status name."""

    code = "rpc_failed"

    def __init__(self, method: str, status: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{method}: {status.name}: {details}")
        self.status = status
        self.details = details


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt k waits U(0, min(cap, base * 2^k))."""

    max_attempts: int = 4
    base_delay_s: float = 0.1
    max_delay_s: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.base_delay_s < 0 or self.max_delay_s < 0:
            raise TransportError("retry policy needs max_attempts >= 1 and delays >= 0")

    def delay_s(self, attempt: int, rng: np.random.Generator) -> float:
        cap = min(self.max_delay_s, self.base_delay_s * (2.0**attempt))
        return float(rng.uniform(0.0, cap))


def _channel(
    target: str,
    root_pem: bytes,
    cert_pem: bytes | None,
    key_pem: bytes | None,
    server_name: str,
    max_bytes: int,
) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=root_pem, private_key=key_pem, certificate_chain=cert_pem
    )
    return grpc.secure_channel(
        target,
        creds,
        options=[
            ("grpc.ssl_target_name_override", server_name),
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            ("grpc.enable_retries", 0),
        ],
    )


def fetch_server_certificate(
    target: str,
    ca_cert_pem: bytes,
    cert_pem: bytes,
    key_pem: bytes,
    server_name: str,
    timeout_s: float = 10.0,
) -> bytes:
    """Handshake once with Python's ``ssl`` (same CA pin, same client cert, ALPN h2) and return
    the server's certificate (DER), so that the caller can check its identity and revocation
    *before* sending anything over gRPC (grpcio does not expose the server's certificate)."""
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise TransportError(f"target {target!r} is not host:port")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=ca_cert_pem.decode())
    ctx.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory() as d:  # ssl loads client keys from files only
        os.chmod(d, 0o700)
        cp, kp = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
        for path, data in ((cp, cert_pem), (kp, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        ctx.load_cert_chain(cp, kp)
    try:
        with (
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as raw,
            ctx.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(f"TLS pre-check of {target} failed: {exc}") from exc
    if not der:
        raise TransportError(f"{target} presented no certificate")
    return der


class FleetClient:
    """A device's (or gateway's) authenticated connection to the coordinator."""

    def __init__(
        self,
        target: str,
        identity: Identity,
        keystore: KeyStore,
        tls_key_pem: bytes,
        cert: Certificate,
        ca_cert: Certificate,
        rng: np.random.Generator,
        *,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        server_name: str = "localhost",
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        timeout_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        server_validator: CertValidator | None = None,
        server_roles: tuple[str, ...] = ("coordinator", "gateway"),
    ) -> None:
        """With ``server_validator``, the server's certificate is validated (fleet CA, window,
        revocation list, SPIFFE identity whose role is in ``server_roles``) before the first
        request, and again whenever the channel is reopened."""
        if cert.public_key != keystore.public_key:
            raise IdentityError("client certificate is not for this key store's key")
        self.target = target
        self.identity = identity
        self.keystore = keystore
        self.tls_key_pem = tls_key_pem
        self.cert = cert
        self.ca_cert = ca_cert
        self.rng = rng
        self.clock: Clock = clock or SystemClock()
        self.retry = retry or RetryPolicy()
        self.server_name = server_name
        self.max_payload_bytes = max_payload_bytes
        self.timeout_s = timeout_s
        self.sleep = sleep
        self.server_validator = server_validator
        self.server_roles = server_roles
        self.server_identity: Identity | None = None
        self.attempts = 0
        self._channel = self._open()

    def _check_server(self) -> None:
        if self.server_validator is None:
            return
        der = fetch_server_certificate(
            self.target,
            self.ca_cert.to_pem(),
            self.cert.to_pem(),
            self.tls_key_pem,
            self.server_name,
            self.timeout_s,
        )
        ident = self.server_validator.validate(der, self.clock.now())
        if ident.role not in self.server_roles:
            raise IdentityError(f"server {ident.uri} is not a {' or '.join(self.server_roles)}")
        self.server_identity = ident

    def _open(self) -> grpc.Channel:
        self._check_server()
        return _channel(
            self.target,
            self.ca_cert.to_pem(),
            self.cert.to_pem(),
            self.tls_key_pem,
            self.server_name,
            self.max_payload_bytes + ENVELOPE_OVERHEAD_BYTES,
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(
        self,
        method: str,
        payload: bytes,
        round_id: int = 0,
        resource: str = "",
        timeout_s: float | None = None,
    ) -> bytes:
        """Sign and send; retry transient failures; raise ``RpcFailed`` on refusal."""
        if len(payload) > self.max_payload_bytes:
            raise RequestRejected(f"payload is larger than {self.max_payload_bytes} bytes")
        stub = self._channel.unary_unary(f"/{FLEET_SERVICE}/{method}")
        last: grpc.RpcError | None = None
        for attempt in range(self.retry.max_attempts):
            env = sign_request(
                self.keystore,
                method,
                round_id,
                self.identity.device_id,
                payload,
                self.clock.now(),
                resource=resource,
            )
            self.attempts += 1
            try:
                raw = stub(
                    encode_signed_request(env, payload),
                    timeout=timeout_s if timeout_s is not None else self.timeout_s,
                )
                return decode_reply(raw, self.max_payload_bytes)
            except grpc.RpcError as exc:
                last = exc
                if exc.code() not in RETRYABLE or attempt + 1 == self.retry.max_attempts:
                    break
                self.sleep(self.retry.delay_s(attempt, self.rng))
        assert last is not None
        raise RpcFailed(method, last.code(), str(last.details()))

    # --- built-in calls -------------------------------------------------------------------------
    def get_revocations(self) -> SignedRevocationList:
        return SignedRevocationList.from_bytes(self.call("GetRevocations", b""))

    def fetch_validator(self, skew_s: float = 60.0) -> CertValidator:
        """A device-side ``CertValidator``: fleet CA + the signed revocation list fetched now.

        The list is verified against the pinned CA key, so it may come over a channel whose
        server was not yet checked; pass the result as ``server_validator`` (and to
        ``maybe_renew``), and call again before ``next_update`` to stay fresh.
        """
        checker = RevocationChecker(self.ca_cert.public_key, self.identity.fleet, skew_s)
        checker.update(self.get_revocations(), self.clock.now())
        return CertValidator(self.ca_cert, self.identity.fleet, checker, skew_s)

    def maybe_renew(self, validator: CertValidator, margin_s: float | None = None) -> Certificate:
        """Renew once the certificate is within ``margin_s`` of expiry (default: last third)."""
        if needs_renewal(self.cert, self.clock.now(), margin_s):
            return self.renew(validator)
        return self.cert

    def renew(self, validator: CertValidator) -> Certificate:
        """Renew this client's certificate (same key), validate it and reconnect with it."""
        csr = self.keystore.make_csr(self.identity)
        raw = self.call("RenewCert", csr.der)
        try:
            cert = Certificate(raw)
        except CryptoError as exc:
            raise IdentityError(f"renewal reply is not a certificate: {exc}") from exc
        if validator.validate(cert, self.clock.now()) != self.identity:
            raise IdentityError("renewed certificate names another identity")
        if cert.public_key != self.keystore.public_key:
            raise IdentityError("renewed certificate is for another key")
        self.cert = cert
        old, self._channel = self._channel, self._open()
        old.close()
        return cert


def enroll(
    target: str,
    ca_cert: Certificate,
    csr: CertificateRequest,
    *,
    server_name: str = "localhost",
    timeout_s: float = 10.0,
) -> Certificate:
    """First enrolment over server-authenticated TLS pinned to the fleet CA."""
    ch = _channel(target, ca_cert.to_pem(), None, None, server_name, 64 * 1024)
    try:
        stub = ch.unary_unary(f"/{ENROLL_SERVICE}/Enroll")
        try:
            raw = stub(encode_enroll_request(csr.der), timeout=timeout_s)
        except grpc.RpcError as exc:
            raise RpcFailed("Enroll", exc.code(), str(exc.details())) from exc
    finally:
        ch.close()
    cert_der, ca_der = decode_enroll_reply(raw)
    try:
        cert = Certificate(cert_der)
    except CryptoError as exc:
        raise IdentityError(f"enrolment reply is not a certificate: {exc}") from exc
    if ca_der != ca_cert.der:
        raise IdentityError("enrolment server answered with a different CA certificate")
    try:
        cert.verify_issued_by(ca_cert)
    except CryptoError as exc:
        raise IdentityError("enrolment certificate is not from the fleet CA") from exc
    if cert.public_key != csr.public_key or cert.uris != csr.uris:
        raise IdentityError("enrolment certificate does not match the CSR")
    return cert
