"""``ztfm audit``: verify and inspect the hash-chained audit log."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group("audit")
def audit() -> None:
    """Tamper-evident audit log: verify the hash chain, repair a torn tail, show records.

    Every security decision (policy allow/deny, rejected request, enrolment, revocation) is one
    fsync'd JSON line carrying the SHA-256 of the previous record.
    """


@audit.command("verify")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--head", "head", help="Expected head SEQ:HASH from a trusted place.")
@click.option("--json", "as_json", is_flag=True)
def verify(path: Path, head: str | None, as_json: bool) -> None:
    """Check every record; name the first rewritten, deleted, reordered or torn line."""
    from ztfm.audit import AuditHead, verify_log

    expected = None
    if head is not None:
        seq, _, h = head.partition(":")
        if not seq.isdigit() or len(h) != 64:
            raise click.BadParameter("expected SEQ:HASH (64 hex chars)", param_hint="--head")
        expected = AuditHead(int(seq), h)
    res = verify_log(path, expected_head=expected)
    out = {
        "path": str(path),
        "records": res.records,
        "head": None if res.head is None else f"{res.head.seq}:{res.head.hash}",
    }
    click.echo(json.dumps(out) if as_json else f"ok: {res.records} records, head {out['head']}")


@audit.command("repair")
@click.argument("path", type=click.Path(path_type=Path, exists=True))
def repair(path: Path) -> None:
    """Remove a torn (unterminated) last record left by a crash, then verify."""
    from ztfm.audit import repair_torn_tail, verify_log

    n = repair_torn_tail(path)
    res = verify_log(path, use_anchor=False)
    click.echo(f"removed {n} bytes; {res.records} records verify")


@audit.command("show")
@click.argument("path", type=click.Path(path_type=Path, exists=True))
@click.option("-n", "count", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--event", help="Only records of this event type.")
def show(path: Path, count: int, event: str | None) -> None:
    """Print the last N records (after verifying the chain, in the same read of the log)."""
    from ztfm.audit import tail_log

    _, recs = tail_log(path, count, event=event or None)
    for r in recs:
        click.echo(f"{r.seq:>6} {r.ts:.3f} {r.event} {json.dumps(r.fields)}")


@audit.command("snapshots")
@click.argument("directory", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--show", "seq", type=int, help="Print one snapshot (context, digest, payload size).")
@click.option("--payload-out", type=click.Path(path_type=Path), help="Write its payload here.")
@click.option("--json", "as_json", is_flag=True)
def snapshots(directory: Path, seq: int | None, payload_out: Path | None, as_json: bool) -> None:
    """List forensic snapshots of rejected updates, or show one."""
    from ztfm.audit import SnapshotStore

    store = SnapshotStore(directory, max_total_bytes=1 << 62)
    if seq is None:
        rows = []
        for s in store.seqs():
            snap = store.load(s)
            rows.append(
                {
                    "seq": s,
                    "ts": snap.ts,
                    "kind": snap.kind,
                    "bytes": snap.payload_len,
                    "truncated": snap.truncated,
                    "context": dict(snap.context),
                }
            )
        if as_json:
            click.echo(json.dumps(rows))
        else:
            for r in rows:
                click.echo(
                    f"{r['seq']:>6} {r['ts']:.3f} {r['kind']} {r['bytes']} B "
                    f"{json.dumps(r['context'])}"
                )
            click.echo(f"{len(rows)} snapshots, {store.total_bytes} bytes on disk")
        return
    snap = store.load(seq)
    if payload_out is not None:
        payload_out.write_bytes(snap.payload)
    out = {
        "seq": snap.seq,
        "ts": snap.ts,
        "kind": snap.kind,
        "context": dict(snap.context),
        "payload_len": snap.payload_len,
        "payload_sha256": snap.payload_sha256,
        "truncated": snap.truncated,
    }
    click.echo(json.dumps(out, indent=None if as_json else 1))
