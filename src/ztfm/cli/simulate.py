"""``ztfm simulate``: a whole federated fleet on one machine, on real data, with a report."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from ztfm.errors import ConfigError


def _table(m: dict[str, Any]) -> str:
    lines = [f"{'training':<16}{'F1':>7}{'FAR':>7}{'MAR':>7}{'ROC-AUC':>9}"]
    for name in ("federated", "local_only", "centralised", "flag_everything"):
        if name in m["comparison"]:
            c = m["comparison"][name]
            auc = "n/a" if c.get("roc_auc") is None else f"{c['roc_auc']:.3f}"
            lines.append(
                f"{name.replace('_', '-'):<16}{c['f1']:>7.3f}{c['far']:>7.3f}"
                f"{c['mar']:>7.3f}{auc:>9}"
            )
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML file overriding the documented defaults (see src/ztfm/sim/default.toml).",
)
@click.option(
    "--devices",
    type=click.IntRange(min=1),
    default=None,
    help="Use the first N devices of the fleet (default: every device).",
)
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=None,
    help="Number of federated rounds (default 10).",
)
@click.option("--seed", type=int, default=None, help="Seed for splits, sampling and training.")
@click.option(
    "--dataset",
    type=click.Choice(["skab", "lab", "ton_iot"]),
    default=None,
    help="Fleet data: skab (sensor telemetry, real signal), lab (network traffic of the "
    "bundled traffic-lab run, real signal) or ton_iot (plumbing only: no attack signal).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="runs/simulate",
    show_default=True,
    help="Folder for metrics.json and report.html.",
)
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json to stdout as well.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="CPU threads for local training (devices train one after another).",
)
def simulate(
    config_path: str | None,
    devices: int | None,
    rounds: int | None,
    seed: int | None,
    dataset: str | None,
    out: str,
    as_json: bool,
    threads: int,
) -> None:
    """Run a whole fleet in one process: federated training vs local-only vs centralised.

    Each device holds its own slice of real telemetry (by default the bundled SKAB benchmark,
    one device per experiment file), trains the shared autoencoder locally, and sends only
    parameter deltas. After every round the global model is evaluated on every device's own
    held-out data with a locally calibrated threshold. Writes OUT/metrics.json (per round:
    global and per-device F1, FAR, MAR, ROC-AUC; bytes up/down per device; wall time per
    phase), OUT/report.html and OUT/audit.log (every selection, exclusion, rejection and trust
    change, hash-chained: `ztfm audit verify OUT/audit.log`), and prints a summary table.

    Attacks, robust aggregation, trust and differential privacy are sections of the config
    file ([attacks], [robust], [trust], [privacy]); see src/ztfm/sim/default.toml.
    """
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch
    from tqdm import tqdm

    from ztfm.report.html import render_report
    from ztfm.sim.config import load_config
    from ztfm.sim.runner import run_simulation

    torch.set_num_threads(threads)
    cfg = load_config(config_path)
    if devices is not None:
        cfg = replace(cfg, fleet=replace(cfg.fleet, devices=devices))
    if rounds is not None:
        cfg = replace(cfg, rounds=replace(cfg.rounds, rounds=rounds))
    if seed is not None:
        cfg = replace(cfg, seed=seed)
    if dataset is not None:
        cfg = replace(cfg, fleet=replace(cfg.fleet, dataset=dataset))
    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output folder {out_dir}: {exc}") from exc

    bar = tqdm(total=cfg.rounds.rounds, desc="rounds", unit="round", disable=None)

    def on_round(rec: dict[str, Any]) -> None:
        g = rec["global"]
        bar.set_postfix(
            f1=f"{g['f1']:.3f}",
            far=f"{g['far']:.3f}",
            ok=len(rec["accepted"]),
            rej=len(rec["rejected"]),
        )
        bar.update(1)

    ledger_path = None
    if cfg.attestation.backend != "none":  # releases and verdicts go on OUT/ledger.db
        ledger_path = out_dir / "ledger.db"
        for suffix in ("", "-wal", "-shm"):  # a results folder: this run's ledger replaces it
            Path(f"{ledger_path}{suffix}").unlink(missing_ok=True)
    result = run_simulation(cfg, on_round=on_round, ledger_path=ledger_path)
    bar.close()
    m = result.metrics
    _write(out_dir / "metrics.json", json.dumps(m, indent=1, sort_keys=True))
    _write_audit(out_dir / "audit.log", result.events)
    _write(out_dir / "report.html", render_report(m))
    if as_json:
        click.echo(json.dumps(m, sort_keys=True))
        return
    if not m["has_signal"]:
        click.echo("note: this dataset has no attack signal; figures are plumbing checks only")
    click.echo(
        f"{m['dataset']}: {m['n_devices']} devices, {len(m['rounds'])} rounds, "
        f"{m['wall_s']['total']:.1f} s"
    )
    click.echo(_table(m))
    click.echo(
        f"wrote {out_dir / 'metrics.json'}, {out_dir / 'report.html'} and {out_dir / 'audit.log'}"
    )


def _write_audit(path: Path, events: list[dict[str, Any]]) -> None:
    """Every coordinator decision of the run (selections, exclusions with their reasons,
    accepted and rejected updates, trust changes) as a hash-chained audit log, checkable with
    ``ztfm audit verify``. A new run replaces the previous run's log in this folder."""
    import time

    from ztfm.audit.log import AuditLog, head_path_for

    for old in (path, head_path_for(path)):
        old.unlink(missing_ok=True)
    log = AuditLog(path)
    now = time.time()
    for e in events:
        fields = {k: v for k, v in e.items() if k != "event"}
        log.append(f"simulate.{e['event']}", fields, now)


def _write(path: Path, text: str) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    from ztfm.identity._fs import atomic_write

    atomic_write(path, text.encode(), mode=0o644)
