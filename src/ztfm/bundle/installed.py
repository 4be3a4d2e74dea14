"""``InstalledModel``: the device's current bundle on disk, replaced atomically or not at all.

A new bundle is verified completely first (``verify_bundle``), then written to a temporary file
in the same directory, fsynced, renamed over ``current.ztb`` (atomic on POSIX) and the directory
is fsynced (``identity._fs.atomic_write``). A crash at any point leaves either the old or the new
bundle, never a mix; stray temporary files are removed on the next open. A refused bundle leaves
the current one untouched.

It also keeps the device's ledger witness state (the last trusted tree head) in the same way.
This is a file-backed storage adapter behind a small interface (``current``/``install``).
Rollback protection holds against the network; an attacker who can delete files on the device can
reset it, which a TPM NV monotonic counter (attestation) would close.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection
from pathlib import Path

from ztfm.bundle.bundle import Bundle, BundleRejected, LedgerReceipt, Reason
from ztfm.bundle.tensors import DEFAULT_LIMITS, TensorLimits
from ztfm.bundle.verify import trusted_key, verify_bundle
from ztfm.crypto.signing import VerifyKey
from ztfm.errors import BundleError, CryptoError, LedgerError
from ztfm.identity._fs import atomic_write
from ztfm.ledger import LedgerClient

CURRENT = "current.ztb"
WITNESS = "ledger-head.json"
_LEGACY_TMP_PREFIX = ".ztfm.tmp-"


class InstalledModel:
    """The installed bundle of one model, in ``directory``, trusted from ``release_key``."""

    def __init__(
        self,
        directory: str | Path,
        *,
        model_id: str,
        release_key: VerifyKey | Collection[VerifyKey],
        limits: TensorLimits = DEFAULT_LIMITS,
    ) -> None:
        self._dir = Path(directory)
        self._model_id = model_id
        self._key = release_key
        self._limits = limits
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            for stray in _temp_files(self._dir):
                stray.unlink()
        except OSError as exc:
            raise BundleError(f"cannot use model directory {self._dir}: {exc}") from exc
        self._current = self._load()

    @property
    def path(self) -> Path:
        return self._dir / CURRENT

    def _load(self) -> Bundle | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BundleError(f"cannot read the installed bundle: {exc}") from exc
        bundle = Bundle.from_bytes(data, limits=self._limits)
        # What we installed was verified; a file that no longer verifies was tampered with.
        if bundle.manifest.model_id != self._model_id:
            raise BundleRejected(Reason.WRONG_MODEL, "installed bundle is for another model")
        try:
            key = trusted_key(self._key, bundle.manifest.release_key)
        except BundleRejected as exc:
            msg = "installed bundle has another signer"
            raise BundleRejected(Reason.UNKNOWN_SIGNER, msg) from exc
        try:
            key.verify(bundle.signature, bundle.manifest.signing_bytes())
        except CryptoError as exc:
            raise BundleRejected(Reason.BAD_SIGNATURE, f"installed bundle: {exc}") from exc
        return bundle

    @property
    def current(self) -> Bundle | None:
        return self._current

    @property
    def installed_version(self) -> int | None:
        return None if self._current is None else self._current.manifest.version

    def install(
        self, data: bytes, *, ledger: LedgerClient, receipt: LedgerReceipt | None = None
    ) -> Bundle:
        """Verify ``data`` and make it the current bundle; raise ``BundleRejected`` (and keep the
        current bundle) if any check fails."""
        bundle = Bundle.from_bytes(data, limits=self._limits)
        verify_bundle(
            bundle,
            release_key=self._key,
            ledger=ledger,
            installed_version=self.installed_version,
            model_id=self._model_id,
            receipt=receipt,
        )
        if receipt is not None:
            bundle = bundle.with_receipt(receipt)
        self._write_atomic(bundle.to_bytes())
        self._current = bundle
        return bundle

    # --- the device's ledger witness state, kept beside the model --------------------------
    def load_witness(self, log_key: VerifyKey) -> LedgerClient:
        """The ``LedgerClient`` saved by ``save_witness`` (or a fresh one on first boot).

        Keeping the trusted head across restarts is what makes a fork or rollback of the log
        detectable after a reboot; a corrupt state file is an error, not a fresh start.
        """
        try:
            data = (self._dir / WITNESS).read_bytes()
        except FileNotFoundError:
            return LedgerClient(log_key)
        except OSError as exc:
            raise BundleError(f"cannot read the ledger witness state: {exc}") from exc
        try:
            return LedgerClient.from_state(log_key, data)
        except LedgerError as exc:
            raise BundleError(f"ledger witness state is invalid: {exc}") from exc

    def save_witness(self, client: LedgerClient) -> None:
        """Persist the client's trusted head atomically."""
        self._write_atomic(client.state_bytes(), WITNESS)

    def _write_atomic(self, data: bytes, name: str = CURRENT) -> None:
        write_state(self._dir / name, data)


def _temp_files(directory: Path) -> list[Path]:
    """Temporary files a crashed or failed write left: ``atomic_write``'s ``.<name>.tmp.<pid>``
    and the ``.ztfm.tmp-*`` ones of earlier versions."""
    found = list(directory.glob(_LEGACY_TMP_PREFIX + "*"))
    for name in (CURRENT, WITNESS):
        found.extend(directory.glob(f".{name}.tmp.*"))
    return found


def write_state(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` durably (``identity._fs.atomic_write``: temp file, fsync,
    rename, fsync of the directory), so a crash leaves the old or the new file. A failed write
    raises ``BundleError`` and leaves no temporary file."""
    path = Path(path)
    try:
        atomic_write(path, data, mode=0o600)
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.with_name(f".{path.name}.tmp.{os.getpid()}").unlink()
        raise BundleError(f"cannot write {path}: {exc.strerror or exc}") from exc
