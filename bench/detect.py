"""Benchmark the on-device detectors: detection quality per dataset, latency, size, int8 agreement.

Run: ``python bench/detect.py`` (add ``--quick`` for a smaller run). Prints tables and writes
``bench/results/detect.json``. Everything runs on one core (BLAS/OpenMP/torch threads = 1).

Quality follows each dataset's standard protocol (``ztfm.detect.evaluate``): SKAB valve1 + other
(30 files, per file fit on rows 0-399, every row scored = "all", rows 400+ = "rest"), the N-BaIoT
sample, IoT-23 conn logs and MQTTset captures. Rows: ztfm pipelines (window features + detector +
causal smoothing + calibrated threshold), the baselines as the dataset READMEs define them
(IsolationForest and PCA T2+Q on raw values, threshold at the 99th percentile of training scores)
and "flag everything".
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ztfm.data import registry  # noqa: E402
from ztfm.data.bundled import bundled_path  # noqa: E402
from ztfm.detect.evaluate import evaluate_units  # noqa: E402
from ztfm.detect.features import FeatureSpec, WindowFeatures  # noqa: E402
from ztfm.detect.presets import preset  # noqa: E402
from ztfm.detect.stream import PipelineConfig, StreamingDetector  # noqa: E402

torch.set_num_threads(1)
OUT = Path(__file__).resolve().parent / "results" / "detect.json"
RAW = FeatureSpec(windows=(), ewma_alphas=(), raw=True, delta=False)


def methods(fmt: str) -> dict[str, PipelineConfig]:
    base = {
        "ztfm pca (T2+Q, window features)": preset(fmt, "pca"),
        "ztfm ae": preset(fmt, "ae"),
        "ztfm ae int8": preset(fmt, "ae").with_(int8=True),
        "baseline IsolationForest (raw, p99)": PipelineConfig(
            detector="iforest", features=RAW, smooth=1, target_far=0.01
        ),
        "baseline PCA T2+Q (raw, p99)": PipelineConfig(
            detector="pca", features=RAW, smooth=1, target_far=0.01, hparams=(("var_frac", 0.95),)
        ),
    }
    return base


def load_units(name: str) -> tuple[str, list[Any]]:
    if name == "skab":
        series = registry.load(bundled_path("skab/valve1"), "skab") + registry.load(
            bundled_path("skab/other"), "skab"
        )
        return "skab", registry.standard_split("skab", series)
    from ztfm.detect.netfeatures import packet_featurizer

    path = bundled_path(name)
    fmt = name
    series = registry.load(path, fmt, featurize=packet_featurizer())
    return fmt, registry.standard_split(fmt, series)


def quality(datasets: list[str], seed: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for ds in datasets:
        try:
            fmt, units = load_units(ds)
        except Exception as exc:  # a missing loader only drops its dataset
            print(f"skip {ds}: {exc}", file=sys.stderr)
            continue
        flag_done = False
        for label, cfg in methods(fmt).items():
            t0 = time.perf_counter()
            res = evaluate_units(units, cfg, rng=np.random.default_rng(seed))
            d = res.to_dict()
            row = {
                "dataset": ds,
                "method": label,
                "f1": d["f1"],
                "far": d["far"],
                "mar": d["mar"],
                "roc_auc": d["roc_auc"],
                "rest": {k: d["rest"][k] for k in ("f1", "far", "mar")} if "rest" in d else None,
                "fit_and_score_s": time.perf_counter() - t0,
                "units": d["units"],
                "rows": d["rows"],
            }
            rows.append(row)
            if not flag_done:
                rows.append(
                    {
                        "dataset": ds,
                        "method": "flag everything",
                        **d["flag_everything"],
                        "roc_auc": 0.5,
                        "rest": d["rest"]["flag_everything"] if "rest" in d else None,
                        "units": d["units"],
                        "rows": d["rows"],
                    }
                )
                flag_done = True
            print(
                f"  {ds:<8} {label:<38} F1 {d['f1']:.3f}  FAR {d['far']:.3f}  MAR {d['mar']:.3f}",
                file=sys.stderr,
            )
    return rows


def int8_agreement(seed: int) -> dict[str, Any]:
    """Decision agreement of the int8 and float AE pipelines on every SKAB row (30 files)."""
    _, units = load_units("skab")
    cfg = preset("skab", "ae")
    agree_smoothed = agree_window = total = 0
    rel_err: list[float] = []
    for u in units:
        rng = np.random.default_rng(seed)
        pf = StreamingDetector(8, cfg)
        pf.fit(u.train.x, rng=rng)
        pq = StreamingDetector(8, cfg.with_(int8=True))
        pq.detector = pf.detector  # the same trained float model, quantised
        f_train = pq.features.transform(u.train.x)
        from ztfm.detect.autoencoder import Autoencoder
        from ztfm.detect.quant import QuantizedAutoencoder

        assert isinstance(pf.detector, Autoencoder)
        pq.quantized = QuantizedAutoencoder.from_float(pf.detector, f_train)
        pq.calibrate(u.train.x)
        feats = pf.features.transform(u.test.x)
        sf, sq = pf.detector.score(feats), pq.quantized.score(feats)
        rel_err += list(np.abs(sq - sf) / np.maximum(sf, 1e-9))
        thr_raw = pf.detector.threshold
        assert thr_raw is not None
        agree_window += int(((sf > thr_raw) == (sq > thr_raw)).sum())
        agree_smoothed += int((pf.predict_stream(u.test.x) == pq.predict_stream(u.test.x)).sum())
        total += len(u.test)
    return {
        "rows": total,
        "agreement_pipeline": agree_smoothed / total,
        "agreement_window_same_threshold": agree_window / total,
        "median_rel_score_error": float(np.median(rel_err)),
        "p99_rel_score_error": float(np.percentile(rel_err, 99)),
    }


def latency(seed: int, n_single: int, n_batch: int) -> list[dict[str, Any]]:
    """Single-window and batched scoring of SKAB window features on one core."""
    _, units = load_units("skab")
    wf = WindowFeatures(8, preset("skab", "ae").features)
    feats = np.concatenate([wf.transform(u.test.x) for u in units])
    rng = np.random.default_rng(seed)
    batch = feats[rng.integers(0, feats.shape[0], n_batch)]
    out = []
    for name in ("ae", "ae int8", "pca", "iforest"):
        det_name = name.split()[0]
        cfg = preset("skab", det_name).with_(int8=name == "ae int8")
        pipe = StreamingDetector(8, cfg)
        pipe.fit(units[0].train.x, rng=np.random.default_rng(seed))
        score = pipe.score_features
        rows = feats[:n_single]
        for r in rows[:200]:  # warm-up
            score(r[None, :])
        n_calls = n_single if name != "iforest" else min(n_single, 300)  # ~20 ms a call
        ts = np.empty(n_calls)
        for i in range(n_calls):
            x = rows[i % rows.shape[0]][None, :]
            t_ns = time.perf_counter_ns()
            score(x)
            ts[i] = time.perf_counter_ns() - t_ns
        t0 = time.perf_counter()
        reps = 0
        while True:
            score(batch)
            reps += 1
            if time.perf_counter() - t0 > 1.0:
                break
        per_s = reps * batch.shape[0] / (time.perf_counter() - t0)
        # end-to-end live path: features.update + score + smoothing, one row at a time
        pipe.reset()
        raw_rows = units[1].test.x
        t1 = time.perf_counter_ns()
        for r in raw_rows:
            pipe.update(r)
        e2e = (time.perf_counter_ns() - t1) / raw_rows.shape[0] / 1000
        size = (
            pipe.quantized.size_bytes()
            if pipe.quantized is not None
            else (pipe.detector.size_bytes())
        )
        out.append(
            {
                "detector": name,
                "n_features": int(feats.shape[1]),
                "single_p50_us": float(np.percentile(ts, 50) / 1000),
                "single_p99_us": float(np.percentile(ts, 99) / 1000),
                "batched_windows_per_s": per_s,
                "batch_size": int(batch.shape[0]),
                "live_row_end_to_end_us": e2e,
                "model_bytes": int(size),
            }
        )
    return out


def _f(v: Any, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:5.1f}%" if pct else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="SKAB only, fewer latency samples")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    datasets = ["skab"] if args.quick else ["skab", "nbaiot", "iot23", "mqttset"]
    t0 = time.time()
    print("quality ...", file=sys.stderr)
    q = quality(datasets, args.seed)
    print("int8 agreement ...", file=sys.stderr)
    agree = int8_agreement(args.seed)
    print("latency ...", file=sys.stderr)
    lat = latency(args.seed, 2000 if args.quick else 20000, 4096)

    print("\nDetection quality (F1 / FAR / MAR pooled over units; SKAB 'all' = every row)")
    print(
        f"{'dataset':<8} {'method':<38} {'F1':>6} {'FAR':>7} {'MAR':>7} {'AUC':>6}"
        f" | {'rest F1':>7} {'FAR':>7} {'MAR':>7}"
    )
    for r in q:
        rest = r.get("rest") or {}
        print(
            f"{r['dataset']:<8} {r['method']:<38} {_f(r['f1']):>6} {_f(r['far'], True):>7} "
            f"{_f(r['mar'], True):>7} {_f(r.get('roc_auc')):>6} | {_f(rest.get('f1')):>7} "
            f"{_f(rest.get('far'), True):>7} {_f(rest.get('mar'), True):>7}"
        )
    print("\nint8 vs float (SKAB, 30 files, AE pipeline)")
    for k, v in agree.items():
        print(f"  {k:<34} {v}")
    print("\nScoring on one core (SKAB window features)")
    print(
        f"{'detector':<10} {'feat':>5} {'p50 us':>8} {'p99 us':>8} {'windows/s':>12}"
        f" {'live row us':>12} {'bytes':>8}"
    )
    for r in lat:
        print(
            f"{r['detector']:<10} {r['n_features']:>5} {r['single_p50_us']:>8.1f} "
            f"{r['single_p99_us']:>8.1f} {r['batched_windows_per_s']:>12,.0f} "
            f"{r['live_row_end_to_end_us']:>12.1f} {r['model_bytes']:>8}"
        )
    result = {
        "bench": "detect",
        "when_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor(),
            "threads": 1,
            "load_avg": os.getloadavg(),
        },
        "seed": args.seed,
        "quality": q,
        "int8": agree,
        "latency": lat,
        "seconds": time.time() - t0,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {OUT}")


if __name__ == "__main__":
    main()
