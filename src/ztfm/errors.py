"""The whole ztfm exception hierarchy (layer 0: imports nothing from ztfm).

Every error a caller may want to catch separately has its own subclass. Each class carries a short
machine-readable ``code``; errors that cross the wire travel as (code, reason) values, and only
``ztfm.cli`` turns exceptions into exit codes.
"""

from __future__ import annotations


class ZtfmError(Exception):
    """Root of every error raised on purpose by ztfm."""

    code: str = "error"


# --- configuration and input data -------------------------------------------------------------
class ConfigError(ZtfmError):
    """A configuration file or option is invalid."""

    code = "config"


class DataError(ZtfmError):
    """Input data is missing, malformed, truncated or of the wrong schema."""

    code = "data"


# --- detection ---------------------------------------------------------------------------------
class DetectorError(ZtfmError):
    """A detector was used wrongly (not fitted, wrong shape, bad parameters)."""

    code = "detector"


# --- cryptography, identity, requests -----------------------------------------------------------
class CryptoError(ZtfmError):
    """A cryptographic operation failed (bad key, bad signature, bad ciphertext)."""

    code = "crypto"


class IdentityError(ZtfmError):
    """A certificate, CSR or enrolment is invalid, expired, revoked or from the wrong CA."""

    code = "identity"


class RequestRejected(ZtfmError):
    """A signed request failed verification (unknown key, replay, stale, forged, mismatched)."""

    code = "request"


class ReplayDetected(RequestRejected):
    code = "replay"


class StaleRequest(RequestRejected):
    code = "stale"


class UnknownKey(RequestRejected):
    code = "unknown_key"


class PolicyDenied(ZtfmError):
    """A policy decision denied the request (deny by default)."""

    code = "policy_denied"


class AuditError(ZtfmError):
    """The audit log is corrupt, truncated or could not be written."""

    code = "audit"


# --- attestation, ledger, bundles --------------------------------------------------------------
class AttestationError(ZtfmError):
    """Evidence (TPM quote, EK/AK binding, PCRs, nonce) failed verification."""

    code = "attestation"


class TpmError(AttestationError):
    """The TPM (hardware or swtpm) could not be reached or refused an operation."""

    code = "tpm"


class LedgerError(ZtfmError):
    """The ledger is inconsistent, truncated, forked, or a proof does not verify."""

    code = "ledger"


class BundleError(ZtfmError):
    """A model bundle failed a check (signature, hash, ledger inclusion, version)."""

    code = "bundle"


# --- aggregation, privacy, trust ---------------------------------------------------------------
class AggregationError(ZtfmError):
    """Updates could not be aggregated (precondition not met, wrong shapes, non-finite values)."""

    code = "aggregation"


class SecAggError(AggregationError):
    """Secure aggregation aborted (too few survivors, tampered share or masked input)."""

    code = "secagg"


class PrivacyError(ZtfmError):
    """Differential-privacy configuration or accounting failed."""

    code = "privacy"


class PrivacyBudgetExceeded(PrivacyError):
    """A device's (epsilon, delta) budget is spent; it must not take part any more."""

    code = "privacy_budget"


class TrustError(ZtfmError):
    """A trust decision blocked a device (quarantined, rate-limited, below the gate)."""

    code = "trust"


# --- federated rounds and transport ------------------------------------------------------------
class RoundError(ZtfmError):
    """A federated round could not complete (too few devices, all replies rejected)."""

    code = "round"


class UpdateRejected(RoundError):
    """One device's reply was rejected (wrong shape, NaN/Inf, late, unsigned)."""

    code = "update_rejected"


class TransportError(ZtfmError):
    """A network peer could not be reached, or replied with an error."""

    code = "transport"


# --- traffic lab ----------------------------------------------------------------------------------
class LabError(ZtfmError):
    """The traffic lab could not be built, run or torn down."""

    code = "lab"
