"""On-device anomaly detection (layer 2): streaming window features, detectors, int8 inference.

Call ``make_detector(name, n_features, **hparams)`` for a detector; ``available_detectors()``
lists the names. Every detector follows the ``Detector`` protocol in ``ztfm.detect.base``.
"""

from __future__ import annotations

from typing import Any

from ztfm.detect.autoencoder import Autoencoder
from ztfm.detect.base import BaseDetector, Detector, read_state
from ztfm.detect.iforest import IForest
from ztfm.detect.pca import PcaT2Q
from ztfm.errors import DetectorError

_DETECTORS: dict[str, type[BaseDetector]] = {
    Autoencoder.name: Autoencoder,
    PcaT2Q.name: PcaT2Q,
    IForest.name: IForest,
}
# detectors whose parameters can be averaged across devices
FEDERATED: frozenset[str] = frozenset({Autoencoder.name, PcaT2Q.name})


def available_detectors() -> list[str]:
    """Names accepted by ``make_detector``."""
    return sorted(_DETECTORS)


def make_detector(name: str, n_features: int, **hparams: Any) -> BaseDetector:
    """A fresh, untrained detector; ``DetectorError`` on an unknown name or bad hparams."""
    cls = _DETECTORS.get(name)
    if cls is None:
        raise DetectorError(
            f"unknown detector {name!r}; choose from {', '.join(available_detectors())}"
        )
    try:
        return cls(n_features, **hparams)
    except TypeError as exc:
        raise DetectorError(f"bad hyper-parameters for {name}: {exc}") from exc


def detector_from_bytes(data: bytes) -> BaseDetector:
    """Rebuild a detector exported with ``to_bytes`` (no pickle; every field validated)."""
    header, arrays = read_state(data)
    name = header.get("name")
    n_features = header.get("n_features")
    hparams = header.get("hparams")
    n_params = header.get("n_params")
    if (
        not isinstance(name, str)
        or not isinstance(n_features, int)
        or not isinstance(hparams, dict)
        or not isinstance(n_params, int)
    ):
        raise DetectorError("detector state header is malformed")
    if "hidden" in hparams and isinstance(hparams["hidden"], list):
        hparams["hidden"] = tuple(hparams["hidden"])
    det = make_detector(name, n_features, **hparams)
    expected = {"scaler_mean", "scaler_std", *(f"param_{i}" for i in range(n_params))}
    if det.whiten:
        expected.add("scaler_white")
    if set(arrays) != expected or n_params != len(det.param_shapes()):
        raise DetectorError("detector state does not match its header")
    det.set_scaler(arrays["scaler_mean"], arrays["scaler_std"], arrays.get("scaler_white"))
    det.set_params([arrays[f"param_{i}"] for i in range(n_params)])
    thr = header.get("threshold")
    if thr is not None:
        if not isinstance(thr, (int, float)):
            raise DetectorError("detector state threshold is not a number")
        det.set_threshold(float(thr))
    return det


__all__ = ["FEDERATED", "Detector", "available_detectors", "detector_from_bytes", "make_detector"]
