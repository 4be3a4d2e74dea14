"""``ztfm trust``: inspect per-device trust scores and why they are what they are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

STORE_HELP = "Trust store (.json, or .sqlite/.db). Env: ZTFM_TRUST_STORE."


KEY_HELP = (
    "File with the store's MAC key (>= 32 bytes): verify records. Env: ZTFM_TRUST_MAC_KEY_FILE."
)


def _open(path: Path, key_file: Path | None = None) -> Any:
    from ztfm.errors import TrustError
    from ztfm.trust import open_store

    if not path.is_file():
        raise TrustError(f"no trust store at {path}")
    key = None
    if key_file is not None:
        try:
            key = key_file.read_bytes()
        except OSError as exc:
            raise TrustError(f"cannot read MAC key file {key_file}: {exc}") from exc
    return open_store(path, mac_key=key)


@click.group("trust")
def trust() -> None:
    """Per-device trust: score (beta reputation over attestation, update behaviour, rejections
    and alerts), state (active / suspicious / quarantined) and the explained history of changes.
    """


@trust.command("show")
@click.argument("device")
@click.option(
    "--store",
    "store_path",
    envvar="ZTFM_TRUST_STORE",
    required=True,
    type=click.Path(path_type=Path),
    help=STORE_HELP,
)
@click.option(
    "-n",
    "count",
    type=click.IntRange(min=0, max=1000),
    default=10,
    show_default=True,
    help="How many recent changes to explain.",
)
@click.option(
    "--mac-key-file",
    envvar="ZTFM_TRUST_MAC_KEY_FILE",
    type=click.Path(path_type=Path),
    help=KEY_HELP,
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(
    device: str, store_path: Path, mac_key_file: Path | None, count: int, as_json: bool
) -> None:
    """Explain DEVICE's trust score: evidence, state, gates and the last N changes."""
    from ztfm.errors import TrustError
    from ztfm.trust import TrustConfig
    from ztfm.types import DeviceId

    store = _open(store_path, mac_key_file)
    dev = DeviceId(device)
    rec = store.load(dev)
    if rec is None:
        raise TrustError(f"no trust record for {device!r} in {store_path}")
    history = store.history(dev, limit=count)
    cfg = TrustConfig()
    if as_json:
        out = {
            "record": rec.to_dict(),
            "history": [c.to_dict() for c in history],
            "gate": cfg.gate,
            "quarantine_below": cfg.quarantine_below,
        }
        click.echo(json.dumps(out, indent=2, sort_keys=True))
        return
    click.echo(f"device      {rec.device}")
    click.echo(
        f"score       {rec.score:.3f}  (good evidence {rec.alpha:.2f} vs bad {rec.beta:.2f})"
    )
    click.echo(f"state       {rec.state.value}")
    gate = "passes" if rec.score >= cfg.gate else "BELOW"
    click.echo(f"gate        {gate} the default participation gate {cfg.gate}")
    click.echo(f"attested    {'yes' if rec.attested_ok else 'NO (no passing quote on record)'}")
    if rec.state.value == "quarantined":
        click.echo(
            f"quarantine  since round {rec.quarantined_round}; "
            f"{rec.good_replays} good canary replays in a row"
        )
    click.echo(f"quarantined {rec.quarantine_count} time(s); last round {rec.last_round}")
    if history:
        click.echo("recent changes (oldest first):")
    for c in history:
        rnd = "-" if c.round_id is None else str(c.round_id)
        detail = ", ".join(f"{k}={v}" for k, v in c.inputs.items() if v != "")
        click.echo(
            f"  round {rnd:>4}  {c.reason:<24} {c.old_score:.3f} -> {c.new_score:.3f}"
            f"  {c.new_state.value:<11} {detail}"
        )


@trust.command("list")
@click.option(
    "--store",
    "store_path",
    envvar="ZTFM_TRUST_STORE",
    required=True,
    type=click.Path(path_type=Path),
    help=STORE_HELP,
)
@click.option(
    "--state",
    type=click.Choice(["active", "suspicious", "quarantined"]),
    help="Only devices in this state.",
)
@click.option(
    "--mac-key-file",
    envvar="ZTFM_TRUST_MAC_KEY_FILE",
    type=click.Path(path_type=Path),
    help=KEY_HELP,
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_devices(
    store_path: Path, mac_key_file: Path | None, state: str | None, as_json: bool
) -> None:
    """List every device with its score and state, lowest trust first."""
    store = _open(store_path, mac_key_file)
    recs = [store.load(d) for d in store.devices()]
    rows = sorted(
        (r for r in recs if r is not None and (state is None or r.state.value == state)),
        key=lambda r: (r.score, r.device),
    )
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], indent=2, sort_keys=True))
        return
    for r in rows:
        click.echo(f"{r.score:.3f}  {r.state.value:<11}  {r.device}")
