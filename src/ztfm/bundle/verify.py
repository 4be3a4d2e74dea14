"""Release a bundle (sign + record on the ledger) and verify one before loading it."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from ztfm.bundle.bundle import (
    Bundle,
    BundleRejected,
    LedgerReceipt,
    Manifest,
    Reason,
    encode_bundle,
)
from ztfm.bundle.tensors import DEFAULT_LIMITS, TensorLimits, encode_tensors
from ztfm.crypto.signing import SigningKey, VerifyKey
from ztfm.errors import CryptoError, LedgerError
from ztfm.ledger import Entry, EntryKind, Ledger, LedgerClient
from ztfm.ledger.entry import to_time_ms

# Manifest fields the ledger entry of a release repeats; the device checks they agree.
_ENTRY_FIELDS = ("model_id", "version", "weights_sha256", "release_key")


def release_entry(
    *,
    model_id: str,
    version: int,
    weights_sha256: str,
    release_key: VerifyKey,
    now: float,
    extra: Mapping[str, Any] | None = None,
) -> Entry:
    """The ``model_release`` ledger entry announcing a bundle."""
    body: dict[str, Any] = dict(extra or {})
    body.update(
        model_id=model_id,
        version=version,
        weights_sha256=weights_sha256,
        release_key=release_key.fingerprint(),
    )
    try:
        return Entry.create(EntryKind.MODEL_RELEASE, body, now=now)
    except LedgerError as exc:
        raise BundleRejected(Reason.MALFORMED, f"release entry: {exc}") from exc


def publish_bundle(
    ledger: Ledger,
    release_key: SigningKey,
    *,
    model_id: str,
    version: int,
    parent_version: int | None,
    architecture: str,
    quantisation: str,
    training_round: int,
    weights: Mapping[str, np.ndarray[Any, Any]],
    now: float,
    limits: TensorLimits = DEFAULT_LIMITS,
) -> Bundle:
    """Encode weights, record the release on ``ledger``, sign the manifest, sign a new tree head
    and attach a receipt for it. ``ledger`` must be opened with the log signing key."""
    try:
        created_ms = to_time_ms(now)
    except LedgerError as exc:
        raise BundleRejected(Reason.MALFORMED, str(exc)) from exc
    blob = encode_tensors(weights, limits=limits)
    digest = hashlib.sha256(blob).hexdigest()
    entry = release_entry(
        model_id=model_id,
        version=version,
        weights_sha256=digest,
        release_key=release_key.verify_key,
        now=now,
        extra={"architecture": architecture, "training_round": training_round},
    )
    # Validate the manifest before touching the ledger, so bad input logs nothing.
    draft = Manifest(
        model_id=model_id,
        version=version,
        parent_version=parent_version,
        architecture=architecture,
        quantisation=quantisation,
        training_round=training_round,
        weights_sha256=digest,
        weights_bytes=len(blob),
        ledger_index=0,
        release_key=release_key.verify_key.fingerprint(),
        created_ms=created_ms,
    )
    latest = ledger.latest_tree_head()
    if latest is not None and created_ms < latest.head.timestamp_ms:
        raise BundleRejected(Reason.MALFORMED, "release time is older than the latest tree head")
    for _i, prior in ledger.history(model_id):
        body = prior.body
        released = body.get("version") if prior.kind is EntryKind.MODEL_RELEASE else None
        if isinstance(released, int) and body.get("model_id") == model_id and released >= version:
            raise BundleRejected(
                Reason.ROLLBACK,
                f"{model_id} version {released} is already released; "
                f"version {version} must be higher",
            )
    index = ledger.append(entry)
    manifest = dataclasses.replace(draft, ledger_index=index)
    signature = release_key.sign(manifest.signing_bytes())
    head = ledger.sign_tree_head(now=now)
    receipt = LedgerReceipt(entry.to_bytes(), ledger.inclusion_proof(index, head.tree_size))
    data = encode_bundle(manifest.to_bytes(), blob, signature, receipt)
    return Bundle.from_bytes(data, limits=limits)


def receipt_for(ledger: Ledger, bundle: Bundle, tree_size: int) -> LedgerReceipt:
    """A fresh receipt proving ``bundle``'s release entry is in the tree of ``tree_size``."""
    index = bundle.manifest.ledger_index
    try:
        return LedgerReceipt(ledger.entry_bytes(index), ledger.inclusion_proof(index, tree_size))
    except LedgerError as exc:
        raise BundleRejected(Reason.NOT_IN_LEDGER, str(exc)) from exc


def trusted_key(release_key: VerifyKey | Collection[VerifyKey], fingerprint: str) -> VerifyKey:
    """The trusted key whose fingerprint the manifest names; ``UNKNOWN_SIGNER`` if none.

    A device may trust several release keys at once (old and new, during a rotation).
    """
    keys = [release_key] if isinstance(release_key, VerifyKey) else list(release_key)
    for key in keys:
        if key.fingerprint() == fingerprint:
            return key
    raise BundleRejected(Reason.UNKNOWN_SIGNER, "manifest names a release key we do not trust")


def verify_bundle(
    bundle: Bundle,
    *,
    release_key: VerifyKey | Collection[VerifyKey],
    ledger: LedgerClient,
    installed_version: int | None,
    model_id: str | None = None,
    receipt: LedgerReceipt | None = None,
) -> None:
    """Return None if ``bundle`` may be loaded; raise ``BundleRejected`` with a reason if not.

    Checks, in order: the manifest names ``release_key`` (or one of a collection of trusted release
    keys, e.g. old and new during a rotation; an unknown signer is refused before any
    signature maths), the signature, the weights hash, the model id, the version (strictly newer
    than ``installed_version``: rollback protection), and that the release is in the ledger: the
    receipt's entry repeats the manifest and its inclusion proof verifies against the head that
    ``ledger`` (a ``LedgerClient`` that checked consistency) trusts.
    """
    m = bundle.manifest
    key = trusted_key(release_key, m.release_key)
    try:
        key.verify(bundle.signature, m.signing_bytes())
    except CryptoError as exc:
        raise BundleRejected(Reason.BAD_SIGNATURE, str(exc)) from exc
    if bundle.manifest_bytes != m.to_bytes():
        raise BundleRejected(Reason.MALFORMED, "manifest bytes are not canonical")
    if hashlib.sha256(bundle.weights_blob).hexdigest() != m.weights_sha256:
        raise BundleRejected(Reason.HASH_MISMATCH, "weights hash does not match the manifest")
    if model_id is not None and m.model_id != model_id:
        raise BundleRejected(Reason.WRONG_MODEL, f"bundle is for model {m.model_id!r}")
    if installed_version is not None and m.version <= installed_version:
        raise BundleRejected(
            Reason.ROLLBACK,
            f"version {m.version} is not newer than the installed version {installed_version}",
        )
    rec = receipt if receipt is not None else bundle.receipt
    if rec is None:
        raise BundleRejected(Reason.NOT_IN_LEDGER, "no ledger receipt for this bundle")
    if rec.proof.index != m.ledger_index:
        raise BundleRejected(
            Reason.LEDGER_MISMATCH,
            f"receipt is for ledger entry {rec.proof.index}, manifest says {m.ledger_index}",
        )
    try:
        entry = Entry.from_bytes(rec.entry)
    except LedgerError as exc:
        raise BundleRejected(Reason.LEDGER_MISMATCH, f"receipt entry: {exc}") from exc
    if entry.kind is not EntryKind.MODEL_RELEASE:
        raise BundleRejected(Reason.LEDGER_MISMATCH, "receipt entry is not a model release")
    body = entry.body
    manifest_fields = m.to_json()
    for field in _ENTRY_FIELDS:
        if body.get(field) != manifest_fields[field]:
            raise BundleRejected(
                Reason.LEDGER_MISMATCH, f"ledger entry and manifest disagree on {field}"
            )
    try:
        head = ledger.head
    except LedgerError as exc:
        raise BundleRejected(Reason.UNTRUSTED_LEDGER, str(exc)) from exc
    try:
        rec.proof.verify_against(rec.entry, head)
    except LedgerError as exc:
        raise BundleRejected(Reason.NOT_IN_LEDGER, str(exc)) from exc
