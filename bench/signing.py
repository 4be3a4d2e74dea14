"""Ed25519 verification: ztfm's ``VerifyKey.verify`` (libsodium through PyNaCl) against OpenSSL
through ``cryptography``, as ztfm verified before (parse the raw key, then verify) and with the
parsed key kept. Message sizes: a SecAgg+ advert (~150 B) and a 4 KiB message.

Each of ``--rounds`` rounds times ``--reps`` verifications of every variant, interleaved, so all
see the same machine load; the table gives the median per-verification time over the rounds
and the ratio to ztfm's, measured side by side in one run.

Usage: python bench/signing.py [--rounds 15] [--reps 500]
Prints a table; writes bench/results/signing.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ztfm.crypto.signing import SigningKey

RESULTS = Path(__file__).resolve().parent / "results" / "signing.json"


def _per_call(fn: Callable[[], object], reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=500)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    key = SigningKey.from_seed(bytes(range(32)))
    vk = key.verify_key
    parsed = Ed25519PublicKey.from_public_bytes(vk.raw)
    rows = []
    print(f"{'message':>8} {'variant':<40} {'us / verify':>12} {'x ztfm':>7}")
    for size in (150, 4096):
        msg = bytes(size)
        sig = key.sign(msg)
        variants: dict[str, Callable[[], object]] = {
            "ztfm VerifyKey (libsodium)": lambda sig=sig, msg=msg: vk.verify(sig, msg),
            "cryptography, parse + verify (before)": lambda sig=sig, msg=msg: (
                Ed25519PublicKey.from_public_bytes(vk.raw).verify(sig, msg)
            ),
            "cryptography, parsed key kept": lambda sig=sig, msg=msg: parsed.verify(sig, msg),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                times[name].append(_per_call(fn, args.reps))
        base = statistics.median(times["ztfm VerifyKey (libsodium)"])
        for name, ts in times.items():
            med = statistics.median(ts)
            rows.append(
                {
                    "message_bytes": size,
                    "variant": name,
                    "median_s": med,
                    "ratio_to_ztfm": med / base,
                }
            )
            print(f"{size:>8} {name:<40} {1e6 * med:>12.1f} {med / base:>7.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"rounds": args.rounds, "reps": args.reps, "rows": rows}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
