"""File-backed fleet CA state: ``ca.key`` (0600), ``ca.crt``, ``state.json`` (0600).

``init_ca`` builds the directory under a temporary name and renames it into place, so a crash
leaves either no CA or a complete one. Every later state change is written with temp + fsync +
rename (``atomic_write``), so ``state.json`` is always the old or the new version, never torn.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ztfm.crypto.pki import Certificate, PrivateKey
from ztfm.errors import CryptoError, IdentityError
from ztfm.identity._fs import atomic_write
from ztfm.identity.ca import EnrollmentToken, FleetCA, IssuedCert
from ztfm.identity.spiffe import Identity

KEY_FILE = "ca.key"
CERT_FILE = "ca.crt"
STATE_FILE = "state.json"
LOCK_FILE = ".lock"


def _state(ca: FleetCA) -> dict[str, Any]:
    return {
        "fleet": ca.fleet,
        "crl_version": ca.crl_version,
        "issued": [
            {
                "serial": str(r.serial),
                "identity": r.identity.uri,
                "not_after": r.not_after,
                "key": r.key_fingerprint,
            }
            for r in sorted(ca.issued.values(), key=lambda r: r.serial)
        ],
        "revoked_serials": [str(s) for s in sorted(ca.revoked_serials)],
        "revoked_identities": sorted(ca.revoked_identities),
        "tokens": [
            {"sha256": t.token_sha256, "identity": t.identity.uri, "expires_at": t.expires_at}
            for t in sorted(ca.tokens.values(), key=lambda t: t.token_sha256)
        ],
    }


def _dump(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=1) + "\n").encode()


def init_ca(directory: Path, fleet: str, now: float, ttl_s: float | None = None) -> FleetCA:
    """Create a new CA in ``directory`` (which must not exist or be empty)."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise IdentityError(f"{directory} already exists and is not empty")
    ca = FleetCA.create(fleet, now) if ttl_s is None else FleetCA.create(fleet, now, ttl_s)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.init.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    try:
        atomic_write(tmp / KEY_FILE, ca.key.to_pem(), 0o600)
        atomic_write(tmp / CERT_FILE, ca.cert.to_pem(), 0o644)
        atomic_write(tmp / STATE_FILE, _dump(_state(ca)), 0o600)
        if directory.exists():
            directory.rmdir()
        os.replace(tmp, directory)
        dfd = os.open(directory.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ca


def load_ca(directory: Path) -> FleetCA:
    """Load a CA; refuse group/world-readable keys and inconsistent state."""
    directory = Path(directory)
    key_path, cert_path, state_path = (directory / f for f in (KEY_FILE, CERT_FILE, STATE_FILE))
    for p in (key_path, cert_path, state_path):
        if not p.is_file():
            raise IdentityError(f"{p} is missing: not a ztfm CA directory")
    if key_path.stat().st_mode & 0o077:
        raise IdentityError(f"{key_path} is readable by group/others (chmod 600)")
    try:
        key = PrivateKey.from_pem(key_path.read_bytes())
        cert = Certificate.from_pem(cert_path.read_bytes())
    except CryptoError as exc:
        raise IdentityError(f"CA key or certificate is unreadable: {exc}") from exc
    try:
        st = json.loads(state_path.read_text())
        ca = FleetCA(key, cert, st["fleet"])
        ca.crl_version = int(st["crl_version"])
        for r in st["issued"]:
            serial = int(r["serial"])
            ca.issued[serial] = IssuedCert(
                serial, Identity.from_uri(r["identity"]), float(r["not_after"]), str(r["key"])
            )
        ca.revoked_serials = {int(s) for s in st["revoked_serials"]}
        ca.revoked_identities = {str(Identity.from_uri(u)) for u in st["revoked_identities"]}
        for t in st["tokens"]:
            ca.tokens[t["sha256"]] = EnrollmentToken(
                str(t["sha256"]), Identity.from_uri(t["identity"]), float(t["expires_at"])
            )
    except (ValueError, KeyError, TypeError) as exc:
        raise IdentityError(f"{state_path} is corrupt: {exc}") from exc
    return ca


def save_ca(directory: Path, ca: FleetCA) -> None:
    """Persist the CA's mutable state (issued certs, revocations, tokens, list version)."""
    atomic_write(Path(directory) / STATE_FILE, _dump(_state(ca)), 0o600)


def _merge_state(ca: FleetCA, fresh: FleetCA) -> None:
    if fresh.cert != ca.cert or fresh.key.public_key != ca.key.public_key:
        raise IdentityError("the CA directory now holds a different CA")
    ca.issued = fresh.issued
    ca.revoked_serials = fresh.revoked_serials
    ca.revoked_identities = fresh.revoked_identities
    ca.crl_version = fresh.crl_version
    ca.tokens = fresh.tokens


class CaDirectoryLock:
    """A lock for a CA held in memory by a long-running process and also changed by the CLI.

    Entering takes a thread lock and an exclusive ``flock`` on ``<dir>/.lock``, then reloads the
    state from disk into the in-memory CA (so a revocation made with ``ztfm ca revoke`` is not
    lost); leaving saves the state atomically and releases both locks. Use it wherever a
    ``ca_lock`` is accepted.
    """

    def __init__(self, ca: FleetCA, directory: Path) -> None:
        self.ca = ca
        self.directory = Path(directory)
        self._thread_lock = threading.Lock()
        self._fd = -1

    def __enter__(self) -> FleetCA:
        self._thread_lock.acquire()
        try:
            self._fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            _merge_state(self.ca, load_ca(self.directory))
        except BaseException:
            self._release()
            raise
        return self.ca

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            save_ca(self.directory, self.ca)
        finally:
            self._release()

    def _release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
        self._thread_lock.release()


@contextmanager
def ca_transaction(directory: Path) -> Iterator[FleetCA]:
    """Load, change and save a CA directory under an exclusive file lock (CLI commands)."""
    directory = Path(directory)
    if not (directory / STATE_FILE).is_file():
        load_ca(directory)  # raises the clear "not a ztfm CA directory" error
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        ca = load_ca(directory)
        yield ca
        save_ca(directory, ca)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
