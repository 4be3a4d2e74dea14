"""``Tpm``: a real TPM 2.0 (hardware or swtpm) through tpm2-pytss ESAPI, as a ``TpmBackend``.

The same class drives a hardware TPM (``device:/dev/tpmrm0``) and swtpm
(``swtpm:host=127.0.0.1,port=N``): only the TCTI string differs.

* EK: the RSA-2048 EK (TCG EK credential profile, template L-1). The persistent handle
  0x81010001 is used when present, otherwise the EK is re-created from the template; its
  certificate is read from NV index 0x01C00002.
* AK: a primary ECC P-256 restricted signing key (ECDSA-SHA256) in the endorsement hierarchy,
  re-created deterministically from the endorsement seed on every start (nothing stored).
* ActivateCredential authorises the EK with PolicySecret(TPM_RH_ENDORSEMENT).

tpm2-pytss is an optional dependency (``pip install ztfm[tpm]``); importing this module without
it raises ``TpmError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from types import TracebackType
from typing import Any

from ztfm.attestation.device import BootCounts
from ztfm.attestation.soft import AK_ATTRIBUTES, SIGNER_ATTRIBUTES
from ztfm.attestation.structures import PcrSelection, TpmPublic
from ztfm.errors import TpmError

try:
    from tpm2_pytss import ESAPI, TCTILdr, TSS2_Exception
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_RH, TPM2_SE, TPM2_ST, TPMA_OBJECT
    from tpm2_pytss.types import (
        TPM2B_ENCRYPTED_SECRET,
        TPM2B_ID_OBJECT,
        TPM2B_PUBLIC,
        TPML_DIGEST_VALUES,
        TPMS_SCHEME_HASH,
        TPMT_HA,
        TPMT_SIG_SCHEME,
        TPMT_SYM_DEF,
        TPMT_TK_HASHCHECK,
        TPMU_HA,
        TPMU_SIG_SCHEME,
    )
    from tpm2_pytss.utils import NoSuchIndex, NVReadEK, create_ek_template
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise TpmError("tpm2-pytss is not installed: pip install 'ztfm[tpm]'") from _exc

EK_RSA_PERSISTENT_HANDLE = 0x81010001
EK_RSA_CERT_INDEX = 0x01C00002
EK_ECC_CERT_INDEX = 0x01C0000A
_TCTI_RE = re.compile(r"^(device|swtpm|mssim|tabrmd):([A-Za-z0-9_./=,:-]*)$")


def parse_tcti(tcti: str) -> tuple[str, str]:
    """Split ``name:conf`` (``device:/dev/tpmrm0``, ``swtpm:host=127.0.0.1,port=2321``)."""
    if not isinstance(tcti, str):
        raise TpmError("TCTI must be a string")
    m = _TCTI_RE.match(tcti)
    if m is None:
        raise TpmError(f"unsupported TCTI {tcti!r} (use device:/dev/tpmrm0 or swtpm:host=,port=)")
    return m.group(1), m.group(2)


def _ecdsa_template(*, restricted: bool) -> Any:
    """ECC P-256 ECDSA-SHA256 signing key: the AK (restricted) or the request key."""
    attrs = 0
    bits = [
        TPMA_OBJECT.FIXEDTPM,
        TPMA_OBJECT.FIXEDPARENT,
        TPMA_OBJECT.SENSITIVEDATAORIGIN,
        TPMA_OBJECT.USERWITHAUTH,
        TPMA_OBJECT.SIGN_ENCRYPT,
    ]
    if restricted:
        bits.append(TPMA_OBJECT.RESTRICTED)
    for bit in bits:
        attrs |= int(bit)
    assert attrs == (AK_ATTRIBUTES if restricted else SIGNER_ATTRIBUTES)
    return TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=attrs)


def _ecdsa_scheme() -> Any:
    return TPMT_SIG_SCHEME(
        scheme=TPM2_ALG.ECDSA,
        details=TPMU_SIG_SCHEME(ecdsa=TPMS_SCHEME_HASH(hashAlg=TPM2_ALG.SHA256)),
    )


class Tpm:
    """A TPM reached through a TCTI; satisfies ``TpmBackend``. Use as a context manager."""

    def __init__(self, tcti: str, ek_kind: str = "rsa") -> None:
        """Open the TPM; ``ek_kind`` is ``"rsa"`` (RSA-2048, L-1) or ``"ecc"`` (P-256, L-2)."""
        name, conf = parse_tcti(tcti)
        if ek_kind not in ("rsa", "ecc"):
            raise TpmError(f"unknown EK kind {ek_kind!r} (rsa or ecc)")
        self.tcti = tcti
        self.ek_kind = ek_kind
        try:
            self._ctx = ESAPI(TCTILdr(name, conf or None))
        except TSS2_Exception as exc:
            raise TpmError(f"cannot open TPM at {tcti}: {exc}") from exc
        self._ek: Any = None
        self._ek_transient = False
        self._ak: Any = None
        self._signer: Any = None
        self._signer_pub: TpmPublic | None = None
        try:
            if ek_kind == "rsa":
                self._ek_cert, self._ek_pub = self._load_ek()
            else:
                self._ek_cert, self._ek_pub = self._load_ecc_ek()
            self._ak, ak_pub, _, _, _ = self._ctx.create_primary(
                None, _ecdsa_template(restricted=True), ESYS_TR.ENDORSEMENT
            )
            self._ak_pub = TpmPublic.from_bytes(bytes(ak_pub.publicArea.marshal()))
        except TSS2_Exception as exc:
            self.close()
            raise TpmError(f"TPM refused to set up EK/AK: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def _load_ek(self) -> tuple[bytes, TpmPublic]:
        reader = NVReadEK(self._ctx)
        try:
            handle = self._ctx.tr_from_tpmpublic(EK_RSA_PERSISTENT_HANDLE)
            pub, _, _ = self._ctx.read_public(handle)
            self._ek = handle
            cert = reader(EK_RSA_CERT_INDEX)
        except (TSS2_Exception, NoSuchIndex):
            # No persistent EK (usual on hardware): re-create it from the TCG template.
            try:
                cert, template = create_ek_template("EK-RSA2048", reader)
            except (NoSuchIndex, ValueError) as exc:
                raise TpmError("TPM has no RSA EK certificate in NV 0x01C00002") from exc
            self._ek, pub, _, _, _ = self._ctx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
            self._ek_transient = True
        if not cert:
            raise TpmError("TPM has no RSA EK certificate in NV 0x01C00002")
        ek = TpmPublic.from_bytes(bytes(pub.publicArea.marshal()))
        return bytes(cert), ek

    def _load_ecc_ek(self) -> tuple[bytes, TpmPublic]:
        try:
            cert, template = create_ek_template("EK-ECC256", NVReadEK(self._ctx))
        except (NoSuchIndex, ValueError) as exc:
            raise TpmError(f"cannot read the ECC EK template: {exc}") from exc
        if not cert:
            raise TpmError("TPM has no ECC P-256 EK certificate in NV 0x01C0000A")
        self._ek, pub, _, _, _ = self._ctx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
        self._ek_transient = True
        return bytes(cert), TpmPublic.from_bytes(bytes(pub.publicArea.marshal()))

    # --- TpmBackend -----------------------------------------------------------------------------
    @property
    def hardware_backed(self) -> bool:
        """True for a device TPM; swtpm reports False (it is software, not a secure element)."""
        return self.tcti.startswith("device:")

    def ek_certificate(self) -> bytes:
        return self._ek_cert

    def ek_public(self) -> bytes:
        return self._ek_pub.raw

    def ak_public(self) -> bytes:
        return self._ak_pub.raw

    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        session = None
        try:
            session = self._ctx.start_auth_session(
                ESYS_TR.NONE,
                ESYS_TR.NONE,
                TPM2_SE.POLICY,
                TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                TPM2_ALG.SHA256,
            )
            self._ctx.policy_secret(ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
            out = self._ctx.activate_credential(
                self._ak,
                self._ek,
                TPM2B_ID_OBJECT(credential=credential_blob),
                TPM2B_ENCRYPTED_SECRET(secret=encrypted_secret),
                session1=ESYS_TR.PASSWORD,
                session2=session,
            )
            return bytes(out)
        except (TSS2_Exception, TypeError, ValueError) as exc:
            raise TpmError(f"ActivateCredential failed: {exc}") from exc
        finally:
            if session is not None:
                with contextlib.suppress(TSS2_Exception):  # a failed session may be gone
                    self._ctx.flush_context(session)

    def extend_pcr(self, pcr: int, digest: bytes) -> None:
        if not 0 <= pcr <= 15 or len(digest) != 32:
            raise TpmError("extend needs PCR 0..15 and a 32-byte SHA-256 digest")
        values = TPML_DIGEST_VALUES(
            [TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=digest))]
        )
        try:
            self._ctx.pcr_extend(getattr(ESYS_TR, f"PCR{pcr}"), values)
        except TSS2_Exception as exc:
            raise TpmError(f"PCR_Extend failed: {exc}") from exc

    def read_pcrs(self, selection: PcrSelection) -> dict[int, bytes]:
        try:
            _, _, digests = self._ctx.pcr_read(str(selection))
        except TSS2_Exception as exc:
            raise TpmError(f"PCR_Read failed: {exc}") from exc
        values = [bytes(d) for d in digests]
        if len(values) != len(selection.pcrs):
            raise TpmError("PCR_Read returned a short list")
        return dict(zip(selection.pcrs, values, strict=True))

    def quote(self, nonce: bytes, selection: PcrSelection) -> tuple[bytes, bytes]:
        try:
            attest, sig = self._ctx.quote(self._ak, str(selection), nonce, _ecdsa_scheme())
        except TSS2_Exception as exc:
            raise TpmError(f"Quote failed: {exc}") from exc
        return bytes(attest), bytes(sig.marshal())

    def boot_counts(self) -> BootCounts:
        """TPM2_ReadClock's resetCount / restartCount."""
        try:
            info = self._ctx.read_clock().clockInfo
        except TSS2_Exception as exc:
            raise TpmError(f"ReadClock failed: {exc}") from exc
        return BootCounts(int(info.resetCount), int(info.restartCount))

    # --- request-signing key (TpmSigningBackend) ------------------------------------------------
    def _signing_key(self) -> Any:
        if self._signer is None:
            try:
                self._signer, pub, _, _, _ = self._ctx.create_primary(
                    None, _ecdsa_template(restricted=False), ESYS_TR.ENDORSEMENT
                )
            except TSS2_Exception as exc:
                raise TpmError(f"cannot create the request-signing key: {exc}") from exc
            self._signer_pub = TpmPublic.from_bytes(bytes(pub.publicArea.marshal()))
        return self._signer

    def signing_key_public(self) -> bytes:
        self._signing_key()
        assert self._signer_pub is not None
        return self._signer_pub.raw

    def certify_signing_key(self, nonce: bytes) -> tuple[bytes, bytes]:
        handle = self._signing_key()
        try:
            attest, sig = self._ctx.certify(handle, self._ak, nonce, _ecdsa_scheme())
        except TSS2_Exception as exc:
            raise TpmError(f"Certify failed: {exc}") from exc
        return bytes(attest), bytes(sig.marshal())

    def sign(self, message: bytes) -> bytes:
        handle = self._signing_key()
        ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)
        digest = hashlib.sha256(message).digest()
        try:
            sig = self._ctx.sign(handle, digest, _ecdsa_scheme(), ticket)
        except TSS2_Exception as exc:
            raise TpmError(f"Sign failed: {exc}") from exc
        return bytes(sig.marshal())

    # --- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        ctx = getattr(self, "_ctx", None)
        if ctx is None:
            return
        for handle in (self._ak, self._signer, self._ek if self._ek_transient else None):
            if handle is not None:
                with contextlib.suppress(TSS2_Exception):  # the TPM may be gone already
                    ctx.flush_context(handle)
        ctx.close()
        self._ctx = None

    def __enter__(self) -> Tpm:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
