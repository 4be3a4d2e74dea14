"""Helpers shared by the ``ztfm`` sub-commands: key files, public keys, the ledger database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ztfm.errors import ConfigError, CryptoError


def load_signing_key(path: Path, what: str = "key") -> Any:
    """The Ed25519 ``SigningKey`` in the PEM file ``path``; an unreadable file is a ConfigError."""
    from ztfm.crypto.signing import SigningKey

    try:
        return SigningKey.from_pem(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from exc


def parse_pubkey(hex_key: str, param_hint: str | None = None) -> Any:
    """A ``VerifyKey`` from 64 hex digits; anything else is a click usage error."""
    from ztfm.crypto.signing import VerifyKey

    try:
        return VerifyKey(bytes.fromhex(hex_key))
    except (ValueError, CryptoError) as exc:
        raise click.BadParameter(
            "expected 64 hex digits (raw Ed25519 public key)", param_hint=param_hint
        ) from exc


def open_ledger(db: Path, key_path: Path | None = None, *, create: bool = False) -> Any:
    """The ``Ledger`` in the SQLite file ``db``; it signs with the key at ``key_path`` if given."""
    from ztfm.ledger import Ledger, SqliteLedgerStore

    key = load_signing_key(key_path, "the log key") if key_path is not None else None
    return Ledger(SqliteLedgerStore(db, create=create), key)
