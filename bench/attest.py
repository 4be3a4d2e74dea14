"""Attestation benchmark: enrolment, quote and verify with real swtpm and with SoftTpm; ledger.

Run ``python bench/attest.py [--swtpm 5] [--soft 5000] [--ledger-sizes 10000 1000000]``.
Prints a table and writes bench/results/attest.json.

* swtpm: provisioning (swtpm_setup with swtpm-localca), opening a ``Tpm`` (EK read + AK
  create), enrolment (EK chain check + MakeCredential + ActivateCredential + finish), quote,
  verify. Each swtpm runs on 127.0.0.1 and is stopped by PID.
* SoftTpm: device creation (two P-256 keys + an EK certificate), enrolment, quote, verify.
* Ledger: ``bench/ledger.py: measure(n)`` (append, inclusion/consistency proof and verify).

Times are medians (ms) unless named otherwise; the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ztfm.attestation import (
    AttestationVerifier,
    AttestingDevice,
    ReferenceValues,
    SoftManufacturer,
    SoftTpm,
    SystemNonceSource,
    UnsafeRngNonceSource,
)
from ztfm.types import DeviceId

OUT = Path(__file__).resolve().parent / "results" / "attest.json"
FW = hashlib.sha256(b"bench firmware").digest()
MODEL = hashlib.sha256(b"bench model").digest()
REF = ReferenceValues().with_firmware("bench", "1", FW).with_models([MODEL])


def _ms(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "median_ms": 1000 * statistics.median(s),
        "p95_ms": 1000 * s[min(len(s) - 1, int(0.95 * len(s)))],
        "n": float(len(s)),
    }


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench_swtpm(n_devices: int, rounds: int) -> dict[str, Any]:
    from ztfm.attestation.swtpm import SwtpmCa, SwtpmProcess, provision_swtpm
    from ztfm.attestation.tpm import Tpm

    times: dict[str, list[float]] = {
        k: [] for k in ("provision", "open", "enrol", "quote", "verify", "certify", "sign")
    }
    with tempfile.TemporaryDirectory() as tmp:
        ca = SwtpmCa.create(Path(tmp) / "ca")
        _, ca_first = _timed(lambda: provision_swtpm(Path(tmp) / "tpm0", ca))
        verifier = AttestationVerifier(
            manufacturer_roots=[ca.root_cert_pem],
            intermediates=[ca.issuer_cert_pem],
            reference=REF,
            nonces=SystemNonceSource(),
        )
        for i in range(n_devices):
            state = Path(tmp) / f"tpm{i}"
            if i:
                _, dt = _timed(lambda state=state: provision_swtpm(state, ca))  # type: ignore[misc]
                times["provision"].append(dt)
            with SwtpmProcess(state) as proc:
                tpm, dt = _timed(lambda proc=proc: Tpm(proc.tcti))  # type: ignore[misc]
                times["open"].append(dt)
                with tpm:
                    dev = AttestingDevice(tpm)
                    dev.measure_firmware(FW)
                    dev.measure_model(MODEL)
                    did = DeviceId(f"sw-{i}")
                    now = time.time()

                    def enrol(
                        dev: AttestingDevice = dev, did: DeviceId = did, now: float = now
                    ) -> None:
                        ch = verifier.begin_enrolment(did, "bench", dev.enrolment_request(), now)
                        verifier.finish_enrolment(did, dev.activate(ch), now)

                    times["enrol"].append(_timed(enrol)[1])
                    cert, dt = _timed(
                        lambda dev=dev, did=did, now=now: dev.certify_request_key(  # type: ignore[misc]
                            verifier.issue_nonce(did, now)
                        )
                    )
                    times["certify"].append(dt)
                    key = verifier.certify_request_key(did, cert, now)
                    for _ in range(rounds):
                        sig, dt = _timed(lambda dev=dev: dev.sign_request(b"request"))  # type: ignore[misc]
                        times["sign"].append(dt)
                        key.verify(sig, b"request")
                    for _ in range(rounds):
                        nonce = verifier.issue_nonce(did, now)
                        ev, dt = _timed(lambda dev=dev, nonce=nonce: dev.quote(nonce))  # type: ignore[misc]
                        times["quote"].append(dt)
                        verdict, dt = _timed(
                            lambda did=did, ev=ev, now=now: verifier.check_quote(did, ev, now)  # type: ignore[misc]
                        )
                        assert verdict.ok
                        times["verify"].append(dt)
    out: dict[str, Any] = {k: _ms(v) for k, v in times.items() if v}
    out["first_provision_with_ca_creation_s"] = ca_first
    return out


def bench_soft(n_devices: int, rounds: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    now = 1_800_000_000.0
    maker = SoftManufacturer(rng, now)
    verifier = AttestationVerifier(
        manufacturer_roots=[],
        soft_roots=[maker.root_certificate],
        reference=REF,
        nonces=UnsafeRngNonceSource(np.random.default_rng(1)),
    )
    times: dict[str, list[float]] = {k: [] for k in ("create", "enrol", "quote", "verify")}
    devices: list[tuple[DeviceId, AttestingDevice]] = []
    t_fleet, c_fleet = time.perf_counter(), time.process_time()
    for i in range(n_devices):
        t = time.perf_counter()
        dev = AttestingDevice(SoftTpm(maker, rng, now, f"soft-{i}"))
        dev.measure_firmware(FW)
        dev.measure_model(MODEL)
        times["create"].append(time.perf_counter() - t)
        did = DeviceId(f"soft-{i}")
        t = time.perf_counter()
        ch = verifier.begin_enrolment(did, "bench", dev.enrolment_request(), now)
        verifier.finish_enrolment(did, dev.activate(ch), now)
        times["enrol"].append(time.perf_counter() - t)
        devices.append((did, dev))
    fleet_s, fleet_cpu_s = time.perf_counter() - t_fleet, time.process_time() - c_fleet
    t_rounds, c_rounds = time.perf_counter(), time.process_time()
    for r in range(rounds):
        at = now + 10 * (r + 1)
        for did, dev in devices:
            nonce = verifier.issue_nonce(did, at)
            t = time.perf_counter()
            ev = dev.quote(nonce)
            times["quote"].append(time.perf_counter() - t)
            t = time.perf_counter()
            assert verifier.check_quote(did, ev, at).ok
            times["verify"].append(time.perf_counter() - t)
    round_s = (time.perf_counter() - t_rounds) / max(rounds, 1)
    round_cpu_s = (time.process_time() - c_rounds) / max(rounds, 1)
    out: dict[str, Any] = {k: _ms(v) for k, v in times.items()}
    out["fleet_build_and_enrol_s"] = fleet_s
    out["round_quote_and_verify_all_s"] = round_s
    out["fleet_build_and_enrol_cpu_s"] = fleet_cpu_s
    out["round_quote_and_verify_all_cpu_s"] = round_cpu_s
    out["n_devices"] = n_devices
    return out


def bench_ledger(sizes: list[int]) -> list[dict[str, float]] | str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from ledger import measure  # bench/ledger.py
    except ImportError as exc:
        return f"TODO: bench/ledger.py not importable ({exc})"
    return [dict(measure(n), n_entries=float(n)) for n in sizes]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--swtpm", type=int, default=5, help="swtpm devices (0 to skip)")
    ap.add_argument("--soft", type=int, default=5000, help="SoftTpm devices")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ledger-sizes", type=int, nargs="*", default=[10_000, 1_000_000])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    results: dict[str, Any] = {
        "benchmark": "attest",
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }
    if args.swtpm:
        results["swtpm"] = bench_swtpm(args.swtpm, args.rounds)
    results["soft"] = bench_soft(args.soft, args.rounds)
    results["ledger"] = bench_ledger(args.ledger_sizes) if args.ledger_sizes else "skipped"

    print(f"{'backend':8} {'operation':10} {'median ms':>10} {'p95 ms':>10} {'n':>7}")
    for backend in ("swtpm", "soft"):
        for op, row in results.get(backend, {}).items():
            if isinstance(row, dict):
                print(
                    f"{backend:8} {op:10} {row['median_ms']:10.3f} {row['p95_ms']:10.3f} "
                    f"{int(row['n']):7d}"
                )
    soft = results["soft"]
    print(
        f"SoftTpm fleet of {soft['n_devices']}: build+enrol "
        f"{soft['fleet_build_and_enrol_s']:.2f} s "
        f"(CPU {soft['fleet_build_and_enrol_cpu_s']:.2f} s),"
        f" one attestation round {soft['round_quote_and_verify_all_s']:.2f} s "
        f"(CPU {soft['round_quote_and_verify_all_cpu_s']:.2f} s)"
    )
    if "swtpm" in results:
        print(
            "first swtpm provision incl. CA creation: "
            f"{results['swtpm']['first_provision_with_ca_creation_s']:.2f} s"
        )
    ledger = results["ledger"]
    if isinstance(ledger, list):
        print(f"{'ledger n':>10} {'append/s':>10} {'incl.proof ms':>14} {'incl.verify ms':>15} "
              f"{'cons.proof ms':>14} {'cons.verify ms':>15}")  # fmt: skip
        for row in ledger:
            print(
                f"{int(row['n_entries']):10d} {row['append_entries_per_s']:10.0f} "
                f"{row['inclusion_proof_ms']:14.3f} {row['inclusion_verify_ms']:15.3f} "
                f"{row['consistency_proof_ms']:14.3f} {row['consistency_verify_ms']:15.3f}"
            )
    else:
        print(f"ledger: {ledger}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
