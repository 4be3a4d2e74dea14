"""``ztfm ledger``: create, append to, verify and query the identity ledger (Merkle log)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ztfm.cli._common import open_ledger, parse_pubkey

if TYPE_CHECKING:
    from ztfm.ledger import Entry

DB_OPTION = click.option(
    "--db",
    "db",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="ZTFM_LEDGER_DB",
    default=Path("ledger.db"),
    show_default=True,
    help="Ledger SQLite file (env ZTFM_LEDGER_DB).",
)
KEY_OPTION = click.option(
    "--key",
    "key_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="ZTFM_LEDGER_KEY",
    required=True,
    help="Log signing key, Ed25519 PEM (env ZTFM_LEDGER_KEY).",
)


@click.group("ledger")
def ledger() -> None:
    """Identity ledger: an append-only RFC 6962 Merkle log with signed tree heads.

    Enrolments, key rotations, revocations, attestation verdicts, model releases, quarantine
    decisions and round contributors are appended as canonical JSON entries. The log operator
    signs tree heads; anyone can recompute the log, and get inclusion and consistency proofs.
    """


def _entry_rows(rows: list[tuple[int, Entry]]) -> list[dict[str, Any]]:
    return [
        {"index": i, "kind": e.kind.value, "time_ms": e.time_ms, "body": e.body} for i, e in rows
    ]


def _echo_entry_rows(out: list[dict[str, Any]]) -> None:
    for r in out:
        click.echo(f"{r['index']:>8} {r['time_ms']:>14} {r['kind']:<20} {json.dumps(r['body'])}")


@ledger.command("init")
@DB_OPTION
@KEY_OPTION
@click.option("--now", type=float, default=None, help="Timestamp for the first head (tests).")
def init(db: Path, key_path: Path, now: float | None) -> None:
    """Create the ledger (and the log key, 0600, if KEY is missing); sign the empty head."""
    from ztfm.crypto.signing import SigningKey
    from ztfm.types import SystemClock

    if not key_path.exists():
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(SigningKey.generate().to_pem())
    led = open_ledger(db, key_path, create=True)
    if led.latest_tree_head() is None:
        led.sign_tree_head(now=SystemClock().now() if now is None else now)
    click.echo(f"ledger {db}: {led.size} entries")
    click.echo(f"log public key: {led.log_key.raw.hex()}")


@ledger.command("append")
@DB_OPTION
@KEY_OPTION
@click.argument("kind")
@click.argument("body")
@click.option("--sign/--no-sign", default=True, show_default=True, help="Sign a new head after.")
def append(db: Path, key_path: Path, kind: str, body: str, sign: bool) -> None:
    """Append one entry of KIND with a JSON object BODY; print its index."""
    from ztfm.ledger import Entry
    from ztfm.types import SystemClock

    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise click.BadParameter(f"BODY is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise click.BadParameter("BODY must be a JSON object")
    now = SystemClock().now()
    led = open_ledger(db, key_path)
    index = led.append(Entry.create(kind, obj, now=now))
    if sign:
        led.sign_tree_head(now=now)
    click.echo(str(index))


@ledger.command("sign-head")
@DB_OPTION
@KEY_OPTION
def sign_head(db: Path, key_path: Path) -> None:
    """Sign a tree head over the current ledger."""
    from ztfm.types import SystemClock

    sth = open_ledger(db, key_path).sign_tree_head(now=SystemClock().now())
    click.echo(json.dumps(sth.to_json()))


@ledger.command("verify")
@DB_OPTION
@click.option("--log-key", help="Expected log public key (hex); else the stored key is used.")
@click.option("--json", "as_json", is_flag=True)
def verify(db: Path, log_key: str | None, as_json: bool) -> None:
    """Recompute every leaf, node and root; check every signed tree head."""
    from tqdm import tqdm

    led = open_ledger(db)
    expected = parse_pubkey(log_key) if log_key else None
    with tqdm(total=led.size, unit="entry", disable=as_json or led.size < 50_000) as bar:
        report = led.verify_all(expected, progress=bar.update)
    out = {
        "db": str(db),
        "entries": report.entries,
        "nodes": report.nodes,
        "tree_heads": report.tree_heads,
        "root_hash": report.root_hash.hex(),
        "log_key_pinned": expected is not None,
    }
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(
        f"ok: {report.entries} entries, {report.nodes} nodes, {report.tree_heads} signed heads, "
        f"root {report.root_hash.hex()}"
    )
    if expected is None:
        click.echo(
            "warning: checked against the key stored in the database; pass --log-key to pin it",
            err=True,
        )


@ledger.command("prove")
@DB_OPTION
@click.argument("entry", type=click.IntRange(min=0))
@click.option("--tree-size", type=click.IntRange(min=1), help="Default: latest signed head.")
@click.option("--json", "as_json", is_flag=True)
def prove(db: Path, entry: int, tree_size: int | None, as_json: bool) -> None:
    """Inclusion proof for ENTRY (an index) against the latest signed tree head."""
    from ztfm.errors import LedgerError
    from ztfm.ledger import leaf_hash

    led = open_ledger(db)
    if entry >= led.size:
        raise LedgerError(f"no entry {entry} (the ledger has {led.size})")
    head = led.latest_tree_head()
    if tree_size is None:
        if head is None or head.tree_size <= entry:
            raise LedgerError(f"no signed tree head covers entry {entry}; run `ledger sign-head`")
        tree_size = head.tree_size
    data = led.entry_bytes(entry)
    proof = led.inclusion_proof(entry, tree_size)
    root = led.root(tree_size)
    proof.verify(data, root)
    heads = [h for h in led.tree_heads() if h.tree_size == tree_size]
    out = {
        "entry": json.loads(data),
        "leaf_hash": leaf_hash(data).hex(),
        "proof": proof.to_json(),
        "root_hash": root.hex(),
        "tree_head": heads[-1].to_json() if heads else None,
    }
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(f"entry {entry} in tree of {tree_size}: root {root.hex()}")
    click.echo(f"leaf {out['leaf_hash']}")
    for i, node in enumerate(proof.path):
        click.echo(f"  {i:>2} {node.hex()}")
    if not heads:
        click.echo("warning: no signed head at this size", err=True)


@ledger.command("show")
@DB_OPTION
@click.option("--tail", "tail", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def show(db: Path, tail: int, as_json: bool) -> None:
    """Size, root, latest signed head and the last entries."""
    led = open_ledger(db)
    head = led.latest_tree_head()
    rows = led.tail(tail)
    key = led.log_key
    out = {
        "db": str(db),
        "size": led.size,
        "root_hash": led.root().hex(),
        "log_key": None if key is None else key.raw.hex(),
        "latest_tree_head": None if head is None else head.to_json(),
        "entries": _entry_rows(rows),
    }
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(f"{db}: {led.size} entries, root {out['root_hash']}")
    if head is None:
        click.echo("no signed tree head")
    else:
        click.echo(f"signed head: size {head.tree_size} at {head.head.timestamp_ms} ms")
    _echo_entry_rows(out["entries"])


@ledger.command("history")
@DB_OPTION
@click.argument("subject")
@click.option("--json", "as_json", is_flag=True)
def history(db: Path, subject: str, as_json: bool) -> None:
    """Every entry about SUBJECT (a device id, model id or round contributor), oldest first."""
    rows = open_ledger(db).history(subject)
    out = _entry_rows(rows)
    if as_json:
        click.echo(json.dumps(out))
        return
    if not out:
        click.echo(f"no entries about {subject!r}")
    _echo_entry_rows(out)
