"""``ztfm lab``: run the IoT traffic lab (root), clean leftovers, score a device live."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click

from ztfm.errors import LabError

IN_NETNS_ENV = "ZTFM_LAB_IN_NETNS"


@click.group()
def lab() -> None:
    """IoT traffic lab: a real fleet in network namespaces, real attack tools, labelled pcaps.

    `run` needs root. The bundled lab set (see `ztfm lab bundled`) works without root.
    """


@lab.command()
@click.option(
    "--devices",
    type=int,
    default=4,
    show_default=True,
    help="Number of devices (types rotate: sensor, plug, camera, gateway).",
)
@click.option(
    "--duration",
    "duration_s",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds of traffic (the first ~30% is a benign warm-up).",
)
@click.option(
    "--attacks",
    default="portscan,syn_flood,cnc_beacon",
    show_default=True,
    help="Comma-separated attack names, 'all' or 'none'; NAME@devNN pins an attack to a device "
    "(its target, or the compromised source of an outbound attack).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of fleet and schedule.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Output folder (must be new or empty).",
)
@click.option(
    "--run-id", default=None, help="Namespace id (3-8 lowercase letters/digits); random by default."
)
@click.option(
    "--snaplen",
    type=int,
    default=192,
    show_default=True,
    help="Bytes kept per packet in the captures.",
)
@click.option(
    "--warmup",
    "warmup_s",
    type=float,
    default=None,
    help="Seconds of benign traffic before the first attack [default: max(10, 30% of the run)].",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def run(
    devices: int,
    duration_s: float,
    attacks: str,
    seed: int,
    out: Path,
    run_id: str | None,
    snaplen: int,
    warmup_s: float | None,
    as_json: bool,
) -> None:
    """Build the lab, run fleet and attacks, capture a pcap per device, tear everything down."""
    from ztfm.lab.runner import new_run_id, run_lab
    from ztfm.lab.spec import LabConfig, parse_attack_spec

    names, pins = parse_attack_spec(attacks)
    cfg = LabConfig(
        devices=devices,
        duration_s=duration_s,
        attacks=names,
        targets=pins,
        seed=seed,
        run_id=run_id or new_run_id(),
        snaplen=snaplen,
        warmup_s=warmup_s,
    )
    res = run_lab(cfg, out, progress=None if as_json else (lambda m: click.echo(m, err=True)))
    summary = {
        "out": str(res.out),
        "run_id": cfg.run_id,
        "devices": len(res.plan.devices),
        "duration_s": res.ended_at - res.started_at,
        "attacks": list(res.labels),
    }
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
        return
    click.echo(
        f"lab {cfg.run_id}: {len(res.plan.devices)} devices, "
        f"{len(res.labels)} attacks, output in {res.out}"
    )
    for lab_row in res.labels:
        click.echo(
            f"  {lab_row['attack']:<20} {lab_row['source']:>6} -> {lab_row['target']:<6} "
            f"{float(lab_row['end']) - float(lab_row['start']):6.1f} s"
        )


@lab.command()
@click.option("--run-id", default=None, help="Clean only this run.")
@click.option(
    "--all",
    "include_active",
    is_flag=True,
    help="Also remove runs whose owner process is still alive.",
)
def clean(run_id: str | None, include_active: bool) -> None:
    """Delete leftover lab namespaces and processes (of dead runs unless --all)."""
    from ztfm.lab.netns import clean as do_clean

    if os.geteuid() != 0:
        raise LabError("cleaning lab namespaces needs root")
    removed = do_clean(run_id, include_active=include_active)
    click.echo(
        f"removed {len(removed)} namespaces" + (f": {', '.join(removed)}" if removed else "")
    )


@lab.command()
def bundled() -> None:
    """Print the path of the bundled lab set (use with `ztfm detect evaluate --format lab`)."""
    from ztfm.data.bundled import bundled_path

    click.echo(str(bundled_path("lab")))


@lab.command()
@click.option(
    "--data",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Lab folder (default: the bundled lab set).",
)
@click.option("--detector", default="pca", show_default=True, help="Detector name.")
@click.option(
    "--window",
    "width_s",
    type=float,
    default=1.0,
    show_default=True,
    help="Window width in seconds.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def evaluate(data: Path | None, detector: str, width_s: float, seed: int, as_json: bool) -> None:
    """Per device and per attack: detection rate, false-alarm rate, time-to-detect (windows)."""
    from ztfm.data.bundled import bundled_path
    from ztfm.detect import available_detectors
    from ztfm.lab.evaluate import evaluate_lab, lab_windows, ztfm_scorer

    if detector not in available_detectors():
        raise click.BadParameter(
            f"unknown detector {detector!r}; choose from {', '.join(available_detectors())}",
            param_hint="--detector",
        )
    sets, labels = lab_windows(data or bundled_path("lab"), width_s=width_s)
    devs, atts = evaluate_lab(sets, labels, ztfm_scorer(detector, seed=seed))
    out = {
        "detector": detector, "window_s": width_s,
        "devices": [{"device": d.device, "type": d.type, "benign_windows": d.benign_windows,
                     "far": d.far} for d in devs],
        "attacks": [{"attack": a.attack, "device": a.device, "type": a.type,
                     "windows": a.windows, "dr": a.dr, "ttd_s": a.ttd_s} for a in atts],
    }  # fmt: skip
    if as_json:
        click.echo(json.dumps(out, sort_keys=True))
        return

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    click.echo(f"{'attack':<20}{'device':<8}{'type':<9}{'windows':>8}{'DR':>8}{'TTD':>8}")
    for a in atts:
        ttd = "-" if a.ttd_s is None else f"{a.ttd_s:.1f}s"
        click.echo(f"{a.attack:<20}{a.device:<8}{a.type:<9}{a.windows:>8}{pct(a.dr):>8}{ttd:>8}")
    click.echo(f"\n{'device':<8}{'type':<9}{'benign windows':>15}{'FAR':>8}")
    for d in devs:
        click.echo(f"{d.device:<8}{d.type:<9}{d.benign_windows:>15}{pct(d.far):>8}")


@lab.command()
@click.option("--netns", default=None, help="Enter this network namespace first (root).")
@click.option("--iface", default="eth0", show_default=True, help="Interface to listen on.")
@click.option(
    "--warmup",
    "warmup_s",
    type=float,
    default=20.0,
    show_default=True,
    help="Seconds of the device's own traffic to learn from before scoring.",
)
@click.option(
    "--seconds",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to score after the warm-up.",
)
@click.option(
    "--window",
    "width_s",
    type=float,
    default=1.0,
    show_default=True,
    help="Window width in seconds.",
)
@click.option("--detector", default="pca", show_default=True, help="Detector name.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per alarm, then a summary.")
def live(netns: str | None, iface: str, warmup_s: float, seconds: float, width_s: float,
         detector: str, seed: int, as_json: bool) -> None:  # fmt: skip
    """Learn a device's traffic live, then score it window by window (AF_PACKET, root).

    Inside a lab: `ztfm lab live --netns ztfm-<id>-dev03`. Same featurizer and detector code as
    the lab evaluation of capture files.
    """
    if netns is not None and os.environ.get(IN_NETNS_ENV) != netns:
        from ztfm.lab.netns import NETNS_DIR

        if os.geteuid() != 0:
            raise LabError("entering a network namespace needs root")
        if "/" in netns or netns in (".", "..") or not (NETNS_DIR / netns).exists():
            raise LabError(f"no network namespace {netns!r}")
        env = {**os.environ, IN_NETNS_ENV: netns}
        res = subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "ztfm.cli.main", *sys.argv[1:]],
            env=env, check=False, timeout=warmup_s + seconds + 120,
        )  # fmt: skip
        raise SystemExit(res.returncode)
    import numpy as np

    from ztfm.lab.live import live_session

    rep = live_session(iface, warmup_s=warmup_s, seconds=seconds, width_s=width_s,
                       detector=detector, rng=np.random.default_rng(seed))  # fmt: skip
    for w in rep.windows:
        if not w.alarm:
            continue
        if as_json:
            click.echo(json.dumps({"window_start": w.start, "score": w.score}))
        else:
            click.echo(f"ALARM window {w.start:.1f} score={w.score:.3g} (> {rep.threshold:.3g})")
    summary = {"ip": rep.ip, "warmup_windows": rep.warmup_windows, "windows": len(rep.windows),
               "alarms": rep.alarms, "threshold": rep.threshold}  # fmt: skip
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"{rep.ip}: {len(rep.windows)} windows scored, {rep.alarms} alarms "
                   f"(learnt on {rep.warmup_windows} windows)")  # fmt: skip
