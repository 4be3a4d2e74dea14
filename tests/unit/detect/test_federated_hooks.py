"""The federated-learning hooks end to end on real SKAB files: local scalers, FedAvg of params,
FedProx local training; the averaged model still detects on every device."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ztfm.data.bundled import bundled_path
from ztfm.data.skab import load_skab_file
from ztfm.detect import make_detector
from ztfm.detect.features import WindowFeatures
from ztfm.detect.presets import SENSOR_FEATURES

FILES = ("valve1/4.csv.gz", "other/9.csv.gz", "valve1/11.csv.gz")


@pytest.mark.parametrize("name", ["ae", "pca"])
def test_fedavg_rounds_keep_detecting(name: str) -> None:
    devices = []
    for f in FILES:
        s = load_skab_file(bundled_path(f"skab/{f}"))
        assert s.y is not None
        feats = WindowFeatures(8, SENSOR_FEATURES).transform(s.x)
        det = (
            make_detector(name, feats.shape[1], epochs=5)
            if name == "ae"
            else make_detector(name, feats.shape[1])
        )
        det.fit_scaler(feats[:400])  # local only
        devices.append((det, feats, s.y))
    rng = np.random.default_rng(7)
    global_params = devices[0][0].get_params()
    for _ in range(3):
        updates = []
        for det, feats, _y in devices:
            det.set_params(global_params)
            loss = det.train_epochs(
                feats[:400], epochs=2, rng=rng, prox_mu=0.01, anchor=global_params
            )
            assert np.isfinite(loss)
            updates.append(det.get_params())
        global_params = [
            np.mean(ps, axis=0).astype(np.float32) for ps in zip(*updates, strict=True)
        ]
    for det, feats, y in devices:
        det.set_params(global_params)
        det.calibrate(feats[:400], 0.01)
        assert roc_auc_score(y, det.score(feats)) > 0.7
        assert det.predict(feats[:400]).mean() <= 0.01
