"""Where a device keeps its private key: a ``KeyStore`` protocol and a software file store.

The private key is generated *on the device* and never leaves its key store; the CA only ever sees
a CSR. A TPM-backed store implements the same protocol (sign + public key + CSR).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ztfm.crypto.pki import CertificateRequest, PrivateKey, PublicKey, build_csr
from ztfm.errors import CryptoError, IdentityError
from ztfm.identity._fs import atomic_write
from ztfm.identity.spiffe import Identity


class KeyStore(Protocol):
    """A device's private key behind an interface (software file, TPM, HSM...)."""

    @property
    def public_key(self) -> PublicKey: ...

    def sign(self, message: bytes) -> bytes: ...

    def make_csr(self, identity: Identity, challenge: str = "") -> CertificateRequest: ...


class MemoryKeyStore:
    """A key held in process memory (tests and simulations)."""

    __slots__ = ("_key",)

    def __init__(self, key: PrivateKey | None = None) -> None:
        self._key = key if key is not None else PrivateKey.generate()

    @property
    def public_key(self) -> PublicKey:
        return self._key.public_key

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def make_csr(self, identity: Identity, challenge: str = "") -> CertificateRequest:
        return build_csr(self._key, identity.device_id, identity.uri, challenge)

    def tls_private_key_pem(self) -> bytes:
        """PEM of the key for the local TLS stack (software stores only)."""
        return self._key.to_pem()


class FileKeyStore(MemoryKeyStore):
    """A software key in a 0600 PEM file, created on first use (atomically) and reused after."""

    __slots__ = ("path",)

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if self.path.exists():
            st = self.path.stat()
            if st.st_mode & 0o077:
                raise IdentityError(f"key file {self.path} is readable by others (chmod 600)")
            try:
                key = PrivateKey.from_pem(self.path.read_bytes())
            except CryptoError as exc:
                raise IdentityError(f"key file {self.path} is not a valid key: {exc}") from exc
        else:
            key = PrivateKey.generate()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, key.to_pem(), mode=0o600)
        super().__init__(key)
