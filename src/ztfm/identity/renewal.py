"""Automatic certificate renewal before expiry (used by the device agent)."""

from __future__ import annotations

from typing import Protocol

from ztfm.crypto.pki import Certificate, CertificateRequest
from ztfm.errors import IdentityError
from ztfm.identity.keystore import KeyStore
from ztfm.identity.spiffe import Identity
from ztfm.identity.validate import CertValidator, needs_renewal


class RenewFn(Protocol):
    """Sends a renewal CSR to the CA (over the authenticated channel) and returns the new cert."""

    def __call__(self, csr: CertificateRequest) -> Certificate: ...


class Renewer:
    """Renews the device cert once it enters its renewal margin, and checks what comes back."""

    __slots__ = ("identity", "keystore", "margin_s", "renew_fn", "validator")

    def __init__(
        self,
        keystore: KeyStore,
        identity: Identity,
        validator: CertValidator,
        renew_fn: RenewFn,
        margin_s: float | None = None,
    ) -> None:
        self.keystore = keystore
        self.identity = identity
        self.validator = validator
        self.renew_fn = renew_fn
        self.margin_s = margin_s

    def maybe_renew(self, current: Certificate, now: float) -> Certificate:
        """Return ``current`` if it is not due, else a freshly issued and validated cert."""
        if not needs_renewal(current, now, self.margin_s):
            return current
        new = self.renew_fn(self.keystore.make_csr(self.identity))
        got = self.validator.validate(new, now)
        if got != self.identity:
            raise IdentityError(f"renewed certificate names {got.uri}, not {self.identity.uri}")
        if new.public_key != self.keystore.public_key:
            raise IdentityError("renewed certificate is for a different key")
        if new.not_after <= current.not_after:
            raise IdentityError("renewed certificate does not extend the validity")
        return new
