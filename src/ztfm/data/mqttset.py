"""MQTTset (reduced) loader: MQTT sensor-network captures, label = folder name.

Layout: ``<root>/<label>/<label>-train.pcap`` and ``-test.pcap`` (some are really pcapng; the
format is told by magic bytes), optionally gzipped. Labels: ``benign`` and the attacks
``bruteforce``, ``flood``, ``malariados`` (MaliciousDoS) and ``malformed`` (also ``legitimate``
and ``slowite`` of the full MQTTset); any other folder name is refused rather than guessed.
``benign-5mb`` overlaps ``benign`` (both are heads of the same capture): it is skipped when
``benign`` is present, and used as the benign data only when it is not.

One series per file, per-packet features from the injected ``featurize`` (see
``ztfm.detect.netfeatures.packet_featurizer``); ``meta["part"]`` is ``train``/``test``/``all``.
MQTTset is CC BY-NC-SA 4.0 (non-commercial).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ztfm.data.pcap import (
    Featurizer,
    OnTruncated,
    capture_files,
    capture_series,
    concat_series,
    pcap_split,
)
from ztfm.data.series import EvalUnit, LabelledSeries
from ztfm.errors import DataError

log = logging.getLogger(__name__)

LABELS = ("benign", "bruteforce", "flood", "malariados", "malformed")
OVERLAPPING = "benign-5mb"
#: Folder names accepted: the reduced set's, plus the full MQTTset's ``legitimate`` (benign) and
#: ``slowite`` (attack).
BENIGN_NAMES = frozenset({"benign", OVERLAPPING, "legitimate"})
ATTACK_NAMES = frozenset({"bruteforce", "flood", "malariados", "malformed", "slowite"})


def _part(path: Path) -> str:
    stem = path.name.removesuffix(".gz").rsplit(".", 1)[0]
    if stem.endswith("-train"):
        return "train"
    if stem.endswith("-test"):
        return "test"
    return "all"


def load_mqttset(
    path: str | Path,
    *,
    featurize: Featurizer,
    on_truncated: OnTruncated = "raise",
    max_packets: int | None = None,
) -> list[LabelledSeries]:
    """Load MQTTset captures under ``path`` (the root with one folder per label, or one label
    folder, or one capture inside a label folder)."""
    files = capture_files(path)
    labels = {f.parent.name.lower() for f in files}
    if "benign" in labels and OVERLAPPING in labels:
        log.warning("MQTTset: skipping %s/ (it overlaps benign/)", OVERLAPPING)
        files = [f for f in files if f.parent.name.lower() != OVERLAPPING]
    out: list[LabelledSeries] = []
    for f in files:
        folder = f.parent.name.lower()
        if folder not in BENIGN_NAMES | ATTACK_NAMES:
            raise DataError(
                f"{f}: MQTTset captures must sit in a folder named after their label "
                f"({', '.join(sorted(BENIGN_NAMES | ATTACK_NAMES))}), not {folder!r}"
            )
        label = "benign" if folder in BENIGN_NAMES else folder
        part = _part(f)
        s = capture_series(
            f,
            featurize,
            label=label,
            on_truncated=on_truncated,
            name=f"mqttset/{folder}/{part}",
            segment="mqtt",
            fmt="mqttset",
            max_packets=max_packets,
        )
        s.meta["part"] = part
        s.meta["label"] = label
        out.append(s)
    return out


def mqttset_split(series: Sequence[LabelledSeries]) -> list[EvalUnit]:
    """The files' own split: ``train`` = benign ``*-train`` captures, ``test`` = every ``*-test``
    capture (benign and attacks). Attack ``*-train`` files are not used (unsupervised protocol).
    Without train/test files, falls back to ``pcap_split`` (first half of benign in time)."""
    parts = {s.meta.get("part", "all") for s in series}
    if not {"train", "test"} <= parts:
        return pcap_split(series)
    train = [s for s in series if s.meta.get("part") == "train" and s.meta.get("label") == "benign"]
    test = [s for s in series if s.meta.get("part") == "test"]
    if not train:
        raise DataError("MQTTset split: no benign *-train capture")
    return [
        EvalUnit(
            name="mqttset",
            train=concat_series("mqttset/train", train),
            test=concat_series("mqttset/test", test),
        )
    ]
