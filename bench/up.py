"""Benchmark ``ztfm up`` (real processes, mTLS) against ``ztfm simulate`` (one process).

For each fleet size: wall time of the whole run (CA, process start, enrolment, rounds,
teardown), without attestation and with one swtpm per device (provisioning, TPM enrolment, a
quote every round: ``ztfm up``'s default), wall time of the federated rounds alone (coordinator
side), audit records written, and whether the per-round global metrics equal the in-process
simulation exactly (both modes).
Prints a table and writes bench/results/up.json.

    python bench/up.py [--sizes 5,10,20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = "[rounds]\nlocal_epochs = 1\n"


def _run(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "ztfm.cli.main", *args],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="5,10,20")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        cfg = tmp / "c.toml"
        cfg.write_text(CONFIG)
        for n in [int(x) for x in a.sizes.split(",")]:
            common = ["--devices", str(n), "--rounds", str(a.rounds), "--seed", str(a.seed)]
            common += ["--config", str(cfg)]
            up_out, sim_out = tmp / f"up{n}", tmp / f"sim{n}"
            att_out = tmp / f"up-tpm{n}"
            t_up = _run(["up", *common, "--out", str(up_out), "--no-baselines",
                         "--attestation", "none"])  # fmt: skip
            t_att = _run(["up", *common, "--out", str(att_out), "--no-baselines",
                          "--attestation", "swtpm"])  # fmt: skip
            t_sim = _run(["simulate", *common, "--out", str(sim_out), "--threads", "1"])
            mu = json.loads((up_out / "metrics.json").read_text())
            ma = json.loads((att_out / "metrics.json").read_text())
            ms = json.loads((sim_out / "metrics.json").read_text())
            sim_rounds = [r["global"] for r in ms["rounds"]]
            equal = [r["global"] for r in mu["rounds"]] == sim_rounds
            equal_att = [r["global"] for r in ma["rounds"]] == sim_rounds
            audit = (up_out / "audit.log").read_text().count("\n")
            audit_att = (att_out / "audit.log").read_text()
            rows.append(
                {
                    "devices": n,
                    "rounds": a.rounds,
                    "up_total_s": round(t_up, 2),
                    "up_federated_s": round(mu["wall_s"]["federated"], 2),
                    "up_swtpm_total_s": round(t_att, 2),
                    "up_swtpm_federated_s": round(ma["wall_s"]["federated"], 2),
                    "equal_to_simulate_swtpm": equal_att,
                    "attest_verdicts": audit_att.count('"attest.verdict"'),
                    "simulate_total_s": round(t_sim, 2),
                    "simulate_federated_s": round(ms["wall_s"]["federated"], 2),
                    "equal_to_simulate": equal,
                    "audit_records": audit,
                    "bytes_up_per_device_round": round(
                        mu["bandwidth"]["mean_bytes_up_per_device_per_round"]
                    ),
                    "f1": round(mu["comparison"]["federated"]["f1"], 4),
                }
            )
            print(rows[-1], flush=True)
    head = (
        f"{'devices':>8}{'up s':>8}{'rounds s':>10}{'up+swtpm s':>12}{'rounds s':>10}"
        f"{'verdicts':>10}{'sim s':>8}{'equal':>7}{'equal tpm':>10}{'audit':>7}"
    )
    print(head)
    for r in rows:
        print(
            f"{r['devices']:>8}{r['up_total_s']:>8.1f}{r['up_federated_s']:>10.1f}"
            f"{r['up_swtpm_total_s']:>12.1f}{r['up_swtpm_federated_s']:>10.1f}"
            f"{r['attest_verdicts']:>10}{r['simulate_total_s']:>8.1f}"
            f"{r['equal_to_simulate']!s:>7}{r['equal_to_simulate_swtpm']!s:>10}"
            f"{r['audit_records']:>7}"
        )
    out = Path(__file__).parent / "results" / "up.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": f"{os.cpu_count()} cpu", "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
