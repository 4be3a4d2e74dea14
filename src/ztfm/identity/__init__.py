"""Zero-trust identity (layer 2): fleet CA, SPIFFE identities, validation, revocation, renewal,
key stores and signed request binding."""

from ztfm.identity.binding import (
    Envelope,
    InMemoryKeyRegistry,
    KeyRegistry,
    NonceCache,
    RegisteredKey,
    RequestVerifier,
    sign_request,
)
from ztfm.identity.ca import FleetCA
from ztfm.identity.endorse import (
    endorse_secagg_key,
    secagg_endorsement_message,
    verify_secagg_endorsement,
)
from ztfm.identity.keystore import FileKeyStore, KeyStore, MemoryKeyStore
from ztfm.identity.renewal import Renewer
from ztfm.identity.revocation import RevocationChecker, RevocationList, SignedRevocationList
from ztfm.identity.spiffe import Identity
from ztfm.identity.validate import CertValidator, UnsafeNoRevocation, needs_renewal

__all__ = [
    "CertValidator",
    "Envelope",
    "FileKeyStore",
    "FleetCA",
    "Identity",
    "InMemoryKeyRegistry",
    "KeyRegistry",
    "KeyStore",
    "MemoryKeyStore",
    "NonceCache",
    "RegisteredKey",
    "Renewer",
    "RequestVerifier",
    "RevocationChecker",
    "RevocationList",
    "SignedRevocationList",
    "UnsafeNoRevocation",
    "endorse_secagg_key",
    "needs_renewal",
    "secagg_endorsement_message",
    "sign_request",
    "verify_secagg_endorsement",
]
