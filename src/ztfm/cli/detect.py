"""``ztfm detect``: evaluate the on-device detectors on real data by each dataset's protocol."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click
import numpy as np

from ztfm.errors import DataError

log = logging.getLogger(__name__)

FORMATS = ("skab", "nbaiot", "ton_iot", "iot23", "mqttset", "pcap", "lab")
TON_IOT_WARNING = (
    "TON_IoT telemetry carries no attack signal (attack rows look like normal readings); "
    "these figures test the plumbing only and say nothing about detection quality"
)


def _load(path: Path, fmt: str) -> list[Any]:
    from ztfm.data import registry

    featurize = None
    if registry.get_format(fmt).packets:
        from ztfm.detect.netfeatures import packet_featurizer

        featurize = packet_featurizer()
    return registry.load(path, fmt, featurize=featurize)


def _split(fmt: str, series: list[Any]) -> list[Any]:
    from ztfm.data import registry

    return registry.standard_split(fmt, series)


def _guess_format(path: Path) -> str:
    from ztfm.data import registry

    return registry.detect_format(path)


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def _table(fmt: str, res: dict[str, Any]) -> str:
    lines = [
        f"detector {res['detector']} on {fmt}: {res['units']} unit(s), {res['rows']} rows, "
        f"{res['attack_rows']} attack/anomaly rows",
        f"{'scored rows':<22}{'F1':>7}{'FAR':>9}{'MAR':>9}{'prec':>8}{'recall':>8}",
    ]

    def row(label: str, d: dict[str, Any]) -> str:
        return (
            f"{label:<22}{_fmt(d.get('f1')):>7}{_fmt(d.get('far'), True):>9}"
            f"{_fmt(d.get('mar'), True):>9}{_fmt(d.get('precision')):>8}"
            f"{_fmt(d.get('recall')):>8}"
        )

    lines.append(row("all", res))
    lines.append(row("  flag everything", res["flag_everything"]))
    if "rest" in res:
        lines.append(row("rest (after training)", res["rest"]))
        lines.append(row("  flag everything", res["rest"]["flag_everything"]))
    lines.append(f"ROC-AUC {_fmt(res['roc_auc'])}   PR-AUC {_fmt(res['pr_auc'])}")
    if "detection_rate" in res:
        lines.append(f"detection rate {_fmt(res['detection_rate'], True)} (no benign rows)")
    if res["per_type_recall"] and len(res["per_type_recall"]) > 1:
        lines.append("recall per attack type:")
        for k, v in res["per_type_recall"].items():
            lines.append(f"  {k:<20}{_fmt(v, True):>8}")
    return "\n".join(lines)


@click.group(name="detect")
def detect() -> None:
    """On-device anomaly detectors: evaluate them on real IoT data.

    Detectors: pca (T2+Q), ae (autoencoder), iforest (IsolationForest baseline). Each dataset is
    scored by its standard protocol (docs/detect.md); F1 is always shown with the false alarm
    rate (FAR), the missed alarm rate (MAR) and the "flag everything" reference.
    """


@detect.command("evaluate")
@click.option(
    "--data",
    "data",
    required=True,
    type=click.Path(path_type=Path),
    help="A file or folder in one of the supported formats.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="Data format (guessed for SKAB when omitted).",
)
@click.option("--detector", default="pca", show_default=True, help="Detector name.")
@click.option(
    "--train",
    "train",
    type=click.Path(path_type=Path),
    default=None,
    help="Fit on the benign rows of this file/folder (same format) instead.",
)
@click.option(
    "--target-far",
    type=float,
    default=None,
    help="False alarm rate to calibrate the threshold to on the benign training rows.",
)
@click.option(
    "--smooth", type=click.IntRange(1, 10_000), default=None, help="Score smoothing window (rows)."
)
@click.option("--int8", is_flag=True, help="Score with the int8 autoencoder (detector ae).")
@click.option(
    "--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True, help="Random seed."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def evaluate(
    data: Path,
    fmt: str | None,
    detector: str,
    train: Path | None,
    target_far: float | None,
    smooth: int | None,
    int8: bool,
    seed: int,
    as_json: bool,
) -> None:
    """Train on the benign part by the dataset's protocol, score the rest, print the metrics."""
    from ztfm.detect import available_detectors
    from ztfm.detect.evaluate import evaluate_units
    from ztfm.detect.presets import preset

    if detector not in available_detectors():
        raise click.BadParameter(
            f"unknown detector {detector!r}; choose from {', '.join(available_detectors())}",
            param_hint="--detector",
        )
    if target_far is not None and not 0.0 <= target_far < 1.0:
        raise click.BadParameter("must be in [0, 1)", param_hint="--target-far")
    fmt = fmt or _guess_format(data)
    config = preset(fmt, detector)
    if target_far is not None:
        config = config.with_(target_far=float(target_far))
    if smooth is not None:
        config = config.with_(smooth=smooth)
    if int8:
        config = config.with_(int8=True)
    series = _load(data, fmt)
    train_series = _load(train, fmt) if train is not None else None
    if train_series is not None:
        # every test row is scored; the protocol's own training rows are not used
        from ztfm.data.series import EvalUnit

        units = [
            EvalUnit(name=s.name, train=s.rows(slice(0, 0)), test=s)
            for s in series
            if s.y is not None
        ]
        if not units:
            raise DataError(f"{data}: no labelled series to evaluate")
    else:
        units = _split(fmt, series)
    warnings: list[str] = []
    if fmt == "ton_iot":
        warnings.append(TON_IOT_WARNING)
        click.echo(f"warning: {TON_IOT_WARNING}", err=True)
    result = evaluate_units(units, config, rng=np.random.default_rng(seed), train=train_series)
    out = result.to_dict()
    out["format"] = fmt
    out["warnings"] = warnings + out["warnings"]
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    if as_json:
        click.echo(json.dumps(out, sort_keys=True))
    else:
        click.echo(_table(fmt, out))
