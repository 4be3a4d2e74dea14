"""Shamir reconstruction on the SecAgg+ server: the cost the session-6 changes claim to cut.

Side by side in one run, for thresholds t the server meets (t = k/2 + 1 for k from 12 to 118):
* Lagrange basis at 0 for the holders a server has after dropouts (most of 1..k, a few gone):
  the current ``shamir._lagrange`` against the previous version (pairwise products, one
  modular inversion; kept below as ``lagrange_before``), cache bypassed;
* a round's n secrets with every first-t holder present: ``shamir.combine_many`` (one batch)
  against ``shamir.reconstruct`` per secret with a warm basis cache (what the server did).

Usage: python bench/shamir.py [--reps N]; prints a table, writes bench/results/shamir.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ztfm.secagg import shamir

RESULTS = Path(__file__).resolve().parent / "results"


def lagrange_before(xs: tuple[int, ...], at: int) -> tuple[int, ...]:
    """``shamir._lagrange`` as it was before session 6 (for the side-by-side only)."""
    p = shamir.PRIME
    nums, dens = [], []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num *= at - xj
                den *= xi - xj
        nums.append(num % p)
        dens.append(den % p)
    prefix = [1]
    for d in dens:
        prefix.append(prefix[-1] * d % p)
    inv = pow(prefix[-1], -1, p)
    invs = [0] * len(dens)
    for i in range(len(dens) - 1, -1, -1):
        invs[i] = inv * prefix[i] % p
        inv = inv * dens[i] % p
    return tuple(n * v % p for n, v in zip(nums, invs, strict=True))


def median_s(fn: Callable[[], Any], reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--secrets", type=int, default=200)
    ap.add_argument("--out", type=Path, default=RESULTS / "shamir.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    new = shamir._lagrange.__wrapped__  # type: ignore[attr-defined]
    rows = []
    for k in (12, 20, 49, 99, 118):
        t = k // 2 + 1
        gone = max(1, (k - t) // 3)  # some holders dropped: the dropout path
        xs = tuple(sorted(int(x) + 1 for x in rng.choice(k, k - gone, replace=False)))[:t]
        assert new(xs, 0) == lagrange_before(xs, 0)
        lag_old = median_s(lambda xs=xs: lagrange_before(xs, 0), args.reps)
        lag_new = median_s(lambda xs=xs: new(xs, 0), args.reps)
        first = tuple(range(1, t + 1))
        secrets = [rng.bytes(32) for _ in range(args.secrets)]
        shares = [shamir.split(s, t, first, rng) for s in secrets]
        enc = [[shamir.share_to_bytes(sh[x]) for x in first] for sh in shares]

        def one_by_one(enc: list[list[bytes]] = enc, first: tuple[int, ...] = first) -> None:
            for row in enc:
                ys = {x: shamir.share_from_bytes(r) for x, r in zip(first, row, strict=True)}
                shamir.reconstruct(ys, len(first))

        assert shamir.combine_many(first, enc) == secrets
        rec_old = median_s(one_by_one, max(3, args.reps // 4))
        rec_new = median_s(
            lambda first=first, enc=enc: shamir.combine_many(first, enc), max(3, args.reps // 4)
        )
        rows.append(
            {
                "k": k,
                "t": t,
                "holders_gone": gone,
                "lagrange_before_us": 1e6 * lag_old,
                "lagrange_now_us": 1e6 * lag_new,
                "lagrange_speedup": lag_old / lag_new,
                "secrets": args.secrets,
                "reconstruct_each_ms": 1e3 * rec_old,
                "combine_many_ms": 1e3 * rec_new,
                "batch_speedup": rec_old / rec_new,
            }
        )
    print("| k | t | basis before us | now us | x | 200 secrets one by one ms | batch ms | x |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['k']} | {r['t']} | {r['lagrange_before_us']:.1f} | {r['lagrange_now_us']:.1f} | "
            f"{r['lagrange_speedup']:.1f} | {r['reconstruct_each_ms']:.2f} | "
            f"{r['combine_many_ms']:.2f} | {r['batch_speedup']:.1f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "reps": args.reps}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
