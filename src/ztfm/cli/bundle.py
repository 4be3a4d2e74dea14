"""``ztfm bundle``: publish, inspect and verify signed model bundles."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import click

from ztfm.cli._common import load_signing_key, open_ledger, parse_pubkey
from ztfm.errors import BundleError, ConfigError


@click.group("bundle")
def bundle() -> None:
    """Signed model bundles: manifest + safetensors weights + Ed25519 signature + ledger receipt.

    A device loads a bundle only if the release key signed it, the weights hash matches, the
    version is newer than the installed one, and the release is in the ledger under a tree head
    the device checked for consistency.
    """


_SYNC_DB_OPTION = click.option(
    "--db",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="ZTFM_LEDGER_DB",
    required=True,
    help="Ledger to fetch the signed head and proofs from.",
)


def _sync(client: Any, led: Any) -> Any:
    """Move ``client`` to the ledger's latest signed head (with a consistency proof)."""
    from ztfm.errors import LedgerError

    head = led.latest_tree_head()
    if head is None:
        raise LedgerError("the ledger has no signed tree head")
    old = client.head.tree_size if client.has_head else 0
    client.update(
        head, led.consistency_proof(old, head.tree_size) if 0 < old < head.tree_size else None
    )
    return head


def _read(path: Path) -> Any:
    from ztfm.bundle import Bundle

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc
    return Bundle.from_bytes(data)


@bundle.command("publish")
@click.option(
    "--db",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="ZTFM_LEDGER_DB",
    required=True,
    help="Ledger SQLite file.",
)
@click.option(
    "--log-key",
    "log_key_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="ZTFM_LEDGER_KEY",
    required=True,
    help="Log signing key (PEM).",
)
@click.option(
    "--release-key",
    "release_key_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="ZTFM_RELEASE_KEY",
    required=True,
    help="Release signing key (PEM).",
)
@click.option(
    "--weights",
    "weights_path",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    required=True,
    help=".npz (no pickle) or .safetensors weights.",
)
@click.option("--model-id", required=True)
@click.option("--version", "version", type=click.IntRange(min=1), required=True)
@click.option("--parent-version", type=click.IntRange(min=0), default=None)
@click.option("--architecture", required=True)
@click.option("--quantisation", type=click.Choice(["none", "float16", "int8"]), default="none")
@click.option("--round", "training_round", type=click.IntRange(min=0), default=0)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True)
def publish(
    db: Path,
    log_key_path: Path,
    release_key_path: Path,
    weights_path: Path,
    model_id: str,
    version: int,
    parent_version: int | None,
    architecture: str,
    quantisation: str,
    training_round: int,
    out: Path,
) -> None:
    """Record a release on the ledger, sign it, and write the bundle to OUT."""
    import numpy as np

    from ztfm.bundle import decode_tensors, publish_bundle
    from ztfm.types import SystemClock

    if weights_path.suffix == ".safetensors":
        weights = decode_tensors(weights_path.read_bytes())
    else:
        try:
            with np.load(weights_path, allow_pickle=False) as npz:
                weights = {k: npz[k] for k in npz.files}
        except (ValueError, OSError, EOFError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            raise BundleError(f"cannot read weights {weights_path}: {exc}") from exc
    led = open_ledger(db, log_key_path)
    b = publish_bundle(
        led,
        load_signing_key(release_key_path),
        model_id=model_id,
        version=version,
        parent_version=parent_version,
        architecture=architecture,
        quantisation=quantisation,
        training_round=training_round,
        weights=weights,
        now=SystemClock().now(),
    )
    out.write_bytes(b.to_bytes())
    click.echo(f"{out}: {model_id} v{version}, ledger entry {b.manifest.ledger_index}")


@bundle.command("show")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
def show(path: Path, as_json: bool) -> None:
    """Parse a bundle (format, limits, weights hash) and print its manifest and tensors."""
    b = _read(path)
    info = {
        "manifest": b.manifest.to_json(),
        "tensors": {
            k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in b.weights.items()
        },
        "receipt": None if b.receipt is None else b.receipt.proof.to_json(),
    }
    if as_json:
        click.echo(json.dumps(info))
        return
    for k, v in info["manifest"].items():
        click.echo(f"{k:>15}: {v}")
    for k, t in info["tensors"].items():
        click.echo(f"{'tensor':>15}: {k} {t['dtype']} {t['shape']}")
    click.echo(f"{'receipt':>15}: {'none' if b.receipt is None else b.receipt.proof.tree_size}")


@bundle.command("verify")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--release-key", required=True, help="Trusted release public key (hex).")
@click.option("--log-key", required=True, help="Trusted log public key (hex).")
@_SYNC_DB_OPTION
@click.option(
    "--state",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Witness state file: the last trusted head (checked for consistency, updated).",
)
@click.option("--installed-version", type=click.IntRange(min=0), default=None)
@click.option("--model-id", default=None)
def verify(
    path: Path,
    release_key: str,
    log_key: str,
    db: Path,
    state: Path | None,
    installed_version: int | None,
    model_id: str | None,
) -> None:
    """Check a bundle as a device would; exit 1 with the reason if it must be refused."""
    from ztfm.bundle import receipt_for, verify_bundle
    from ztfm.ledger import LedgerClient

    b = _read(path)
    lkey = parse_pubkey(log_key, "--log-key")
    client = LedgerClient(lkey)
    if state is not None and state.exists():
        try:
            raw = state.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read witness state {state}: {exc.strerror}") from exc
        client = LedgerClient.from_state(lkey, raw)
    led = open_ledger(db)
    head = _sync(client, led)
    if state is not None:
        from ztfm.bundle.installed import write_state

        write_state(state, client.state_bytes())
    receipt = receipt_for(led, b, head.tree_size)
    verify_bundle(
        b,
        release_key=parse_pubkey(release_key, "--release-key"),
        ledger=client,
        installed_version=installed_version,
        model_id=model_id,
        receipt=receipt,
    )
    click.echo(
        f"ok: {b.manifest.model_id} v{b.manifest.version} verified against ledger head "
        f"of {head.tree_size} entries"
    )


@bundle.command("install")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--dir",
    "model_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Device model directory (current bundle + witness state).",
)
@click.option("--model-id", required=True)
@click.option("--release-key", required=True, help="Trusted release public key (hex).")
@click.option("--log-key", required=True, help="Trusted log public key (hex).")
@_SYNC_DB_OPTION
def install(
    path: Path, model_dir: Path, model_id: str, release_key: str, log_key: str, db: Path
) -> None:
    """Install a bundle as a device does: sync the witness, verify, swap atomically."""
    from ztfm.bundle import InstalledModel, receipt_for

    b = _read(path)
    model = InstalledModel(
        model_dir, model_id=model_id, release_key=parse_pubkey(release_key, "--release-key")
    )
    client = model.load_witness(parse_pubkey(log_key, "--log-key"))
    led = open_ledger(db)
    head = _sync(client, led)
    model.save_witness(client)
    before = model.installed_version
    model.install(path.read_bytes(), ledger=client, receipt=receipt_for(led, b, head.tree_size))
    click.echo(f"installed {model_id} v{b.manifest.version} (was {before})")
