"""Signed model bundles (layer 3): manifest, safetensors weights, Ed25519 signature, receipt.

Release side: ``publish_bundle`` records the release on the ledger and signs the manifest.
Device side: ``InstalledModel.install`` runs ``verify_bundle`` (signer, signature, weights hash,
model id, rollback, ledger inclusion against a consistency-checked head) and swaps atomically.
"""

from ztfm.bundle.bundle import Bundle, BundleRejected, LedgerReceipt, Manifest, Reason
from ztfm.bundle.installed import InstalledModel
from ztfm.bundle.tensors import TensorLimits, decode_tensors, encode_tensors
from ztfm.bundle.verify import publish_bundle, receipt_for, release_entry, verify_bundle

__all__ = [
    "Bundle",
    "BundleRejected",
    "InstalledModel",
    "LedgerReceipt",
    "Manifest",
    "Reason",
    "TensorLimits",
    "decode_tensors",
    "encode_tensors",
    "publish_bundle",
    "receipt_for",
    "release_entry",
    "verify_bundle",
]
