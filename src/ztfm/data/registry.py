"""One entry point for every dataset format: ``load``, ``standard_split``, ``register_format``.

Known formats: ``skab``, ``nbaiot``, ``ton_iot``, ``iot23``, ``iot23_packets``, ``pcap``,
``mqttset`` and ``lab``. Built-in formats are imported lazily, by name, the first time they
are used (like the CLI's command table), so importing the registry is cheap and a missing optional
module only breaks its own format.

Packet formats (``pcap``, ``mqttset``, and any format registered with ``packets=True``) need a
``featurize`` callable that turns packets into feature rows. The data layer (L1) cannot import the
detectors' layer, so the caller passes it::

    from ztfm.detect.netfeatures import packet_featurizer
    series = load("capture.pcapng", featurize=packet_featurizer())

``featurize`` is ignored by the other formats, so callers may always pass it.

Auto-detection (``fmt=None``) looks at content, never at extensions: pcap/pcapng magic bytes
(after gunzip), a Zeek ``#fields`` header, or the CSV header's column names; a folder is detected
file by file (files that match no format, e.g. READMEs, are ignored) and must be of one format; a
folder of captures in MQTTset label folders is ``mqttset``; a folder with both labelled Zeek logs
and captures (an IoT-23 scenario) is ``iot23``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ztfm.data.pcap import Featurizer, read_head, sniff_format
from ztfm.data.series import EvalUnit, LabelledSeries
from ztfm.errors import DataError

Loader = Callable[..., list[LabelledSeries]]
Splitter = Callable[[Sequence[LabelledSeries]], list[EvalUnit]]

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_HEAD_BYTES = 65536
_MAX_FILES = 100_000


@dataclass(frozen=True, slots=True)
class Format:
    """A dataset format: how to load a path and how to cut the standard evaluation units."""

    name: str
    loader: Loader
    splitter: Splitter
    description: str = ""
    packets: bool = False


# name -> (module, loader attribute, splitter attribute, description, needs a featurizer)
_BUILTIN: dict[str, tuple[str, str, str, str, bool]] = {
    "skab": ("ztfm.data.skab", "load_skab", "skab_split", "SKAB sensor CSVs", False),
    "nbaiot": ("ztfm.data.nbaiot", "load_nbaiot", "nbaiot_split", "N-BaIoT 115-feature CSVs",
               False),
    "ton_iot": ("ztfm.data.ton_iot", "load_ton_iot", "ton_iot_split",
                "TON_IoT telemetry per device (plumbing only)", False),
    "iot23": ("ztfm.data.iot23", "load_iot23", "iot23_split", "IoT-23 labelled Zeek conn logs",
              False),
    "iot23_packets": ("ztfm.data.iot23_packets", "load_iot23_packets", "iot23_packets_split",
                      "IoT-23 capture + conn log: per-packet features, conn-log labels", True),
    "pcap": ("ztfm.data.pcap", "load_pcap", "pcap_split", "pcap/pcapng captures, per packet",
             True),
    "mqttset": ("ztfm.data.mqttset", "load_mqttset", "mqttset_split",
                "MQTTset captures, label = folder", True),
    "lab": ("ztfm.data.lab", "load_lab", "lab_split", "traffic lab captures", True),
}  # fmt: skip

_REGISTERED: dict[str, Format] = {}


def register_format(
    name: str,
    loader: Loader,
    splitter: Splitter,
    *,
    description: str = "",
    packets: bool = False,
    replace: bool = False,
) -> None:
    """Add (or with ``replace=True`` override) a format. ``loader(path)`` returns the series
    (``loader(path, featurize=...)`` when ``packets``); ``splitter(series)`` the eval units."""
    if not _NAME.match(name):
        raise DataError(f"bad format name {name!r} (lower-case letters, digits, _)")
    if not callable(loader) or not callable(splitter):
        raise DataError(f"format {name!r}: loader and splitter must be callable")
    if not replace and (name in _REGISTERED or name in _BUILTIN):
        raise DataError(f"format {name!r} is already registered (pass replace=True)")
    _REGISTERED[name] = Format(name, loader, splitter, description, packets)


def formats() -> list[str]:
    """Every known format name."""
    return sorted({*_BUILTIN, *_REGISTERED})


def describe_formats() -> dict[str, str]:
    """Format name -> one-line description (imports nothing)."""
    out = {name: spec[3] for name, spec in _BUILTIN.items()}
    out.update({name: f.description for name, f in _REGISTERED.items()})
    return dict(sorted(out.items()))


def get_format(name: str) -> Format:
    """The format called ``name``, importing a built-in one on first use."""
    if not isinstance(name, str) or (name not in _REGISTERED and name not in _BUILTIN):
        raise DataError(f"unknown data format {name!r}; known: {', '.join(formats())}")
    if name not in _REGISTERED:
        module_name, load_attr, split_attr, desc, packets = _BUILTIN[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise DataError(f"format {name!r} is not available ({exc})") from exc
        loader: Any = getattr(module, load_attr, None)
        splitter: Any = getattr(module, split_attr, None)
        if loader is None or splitter is None:
            raise DataError(
                f"format {name!r} is not available ({module_name} lacks {load_attr}/{split_attr})"
            )
        _REGISTERED[name] = Format(name, loader, splitter, desc, packets)
    return _REGISTERED[name]


def _detect_file(path: Path) -> str | None:
    head = read_head(path, _HEAD_BYTES)
    if not head:
        return None
    if sniff_format(head) is not None:
        return "pcap"
    text = head.decode("utf-8-sig", errors="replace")
    lines = text.replace("\r", "").split("\n")
    if lines[0].startswith("#"):
        fields = next((ln for ln in lines if ln.startswith("#fields")), None)
        if fields is not None and "label" in fields.split():
            return "iot23"
        return None
    cells = {c.strip().strip('"') for c in re.split(r"[;,]", lines[0])}
    if {"datetime", "Accelerometer1RMS"} <= cells:
        return "skab"
    if "MI_dir_L5_weight" in cells:
        return "nbaiot"
    if {"ts", "label", "type"} <= cells:
        return "ton_iot"
    return None


def detect_format(path: str | Path) -> str:
    """The format of a file or folder, from content (see the module docstring)."""
    p = Path(path)
    if p.is_file():
        fmt = _detect_file(p)
        if fmt is None:
            raise DataError(f"{p}: cannot tell the data format; pass fmt= ({', '.join(formats())})")
        return fmt
    if not p.is_dir():
        raise DataError(f"{p}: no such file or folder")
    found: dict[str, Path] = {}
    capture_dirs: set[str] = set()
    for i, f in enumerate(sorted(p.rglob("*"))):
        if i >= _MAX_FILES:
            raise DataError(f"{p}: more than {_MAX_FILES} files; pass fmt=")
        if not f.is_file():
            continue
        try:
            fmt = _detect_file(f)
        except DataError:
            fmt = None
        if fmt is None:
            continue
        found.setdefault(fmt, f)
        if fmt == "pcap":
            capture_dirs.add(f.parent.name.lower())
    if not found:
        raise DataError(f"{p}: no file of a known format; pass fmt= ({', '.join(formats())})")
    if set(found) == {"iot23", "pcap"}:  # an IoT-23 scenario folder: the labels are in the logs
        return "iot23"
    if len(found) > 1:
        desc = ", ".join(f"{k} ({v.name})" for k, v in sorted(found.items()))
        raise DataError(f"{p}: mixed data formats: {desc}; load the sub-folders one by one")
    fmt = next(iter(found))
    mqtt_attacks = {"bruteforce", "flood", "malariados", "malformed"}
    if fmt == "pcap" and capture_dirs & mqtt_attacks:
        return "mqttset"
    return fmt


def load(
    path: str | Path, fmt: str | None = None, *, featurize: Featurizer | None = None
) -> list[LabelledSeries]:
    """Load a dataset file or folder as labelled series; ``fmt=None`` auto-detects the format.

    Packet formats need ``featurize`` (e.g. ``ztfm.detect.netfeatures.packet_featurizer()``).
    """
    name = detect_format(path) if fmt is None else fmt
    spec = get_format(name)
    if spec.packets:
        if featurize is None:
            raise DataError(
                f"format {name!r} holds packets: pass featurize= "
                f"(e.g. ztfm.detect.netfeatures.packet_featurizer())"
            )
        series = spec.loader(Path(path), featurize=featurize)
    else:
        series = spec.loader(Path(path))
    if not series:
        raise DataError(f"{path}: no data found for format {name!r}")
    return list(series)


def standard_split(fmt: str, series: Sequence[LabelledSeries]) -> list[EvalUnit]:
    """The format's standard evaluation protocol (see each ``<fmt>_split`` and docs/data.md)."""
    if not series:
        raise DataError(f"{fmt}: no series to split")
    return get_format(fmt).splitter(list(series))
