"""Ledger benchmark: append throughput, proof generation and verification at 10k and 1M entries.

Also times signed model bundles (publish, parse, verify, atomic install) at 100k and 10M params.

Run ``python bench/ledger.py [--sizes 10000 1000000] [--out bench/results/ledger.json]``; prints a
table and writes JSON. ``measure(n_entries)`` is importable (bench/attest.py uses it).

Appends go through ``Ledger.append_many`` on a real SQLite file (WAL, synchronous=FULL) in
batches of ``batch`` entries per transaction; proof timings are means over ``n_proofs`` random
leaves/sizes, read from the database (interior nodes are stored, so proofs are O(log n)).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ztfm.crypto.signing import SigningKey
from ztfm.ledger import Entry, EntryKind, Ledger, SqliteLedgerStore

RESULTS = Path(__file__).resolve().parent / "results" / "ledger.json"


def _entries(start: int, count: int, now: float) -> list[Entry]:
    return [
        Entry.create(
            EntryKind.ATTESTATION_VERDICT,
            {"device_id": f"dev-{i:08d}", "verdict": "pass", "pcr_digest": f"{i:064x}"},
            now=now,
        )
        for i in range(start, start + count)
    ]


def measure(
    n_entries: int,
    *,
    batch: int = 10_000,
    n_proofs: int = 200,
    seed: int = 7,
    workdir: str | None = None,
    full_verify: bool | None = None,
) -> dict[str, float]:
    """Build a ledger of ``n_entries`` in a temporary SQLite file and time its operations.

    Returns seconds/rates: ``append_entries_per_s`` (entry encoding + hashing + SQLite insert),
    ``append_total_s``, ``sign_head_ms``, ``inclusion_proof_ms`` / ``inclusion_verify_ms``,
    ``consistency_proof_ms`` / ``consistency_verify_ms``, ``history_ms`` (subject lookup; means),
    ``db_bytes`` and
    ``verify_all_s`` (full recomputation of every leaf, node and signed head; by default only up
    to 100k entries, as it is linear: pass ``full_verify=True`` to force it).
    """
    rng = np.random.default_rng(seed)
    key = SigningKey.from_seed(bytes(range(32)))
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        db = Path(tmp) / "ledger.db"
        store = SqliteLedgerStore(db)
        ledger = Ledger(store, key)
        now = 1_700_000_000.0
        t_append = 0.0
        done = 0
        while done < n_entries:
            count = min(batch, n_entries - done)
            entries = _entries(done, count, now)
            t0 = time.perf_counter()
            ledger.append_many(entries)
            t_append += time.perf_counter() - t0
            done += count
        t0 = time.perf_counter()
        sth = ledger.sign_tree_head(now=now + 1)
        sign_s = time.perf_counter() - t0

        idx = rng.integers(0, n_entries, size=n_proofs)
        t_gen = t_ver = 0.0
        for i in idx:
            data = ledger.entry_bytes(int(i))
            t0 = time.perf_counter()
            proof = ledger.inclusion_proof(int(i))
            t1 = time.perf_counter()
            proof.verify_against(data, sth)
            t_ver += time.perf_counter() - t1
            t_gen += t1 - t0

        olds = rng.integers(1, n_entries + 1, size=n_proofs)
        c_gen = c_ver = 0.0
        for m in olds:
            old_root = ledger.root(int(m))
            t0 = time.perf_counter()
            cproof = ledger.consistency_proof(int(m))
            t1 = time.perf_counter()
            cproof.verify(old_root, sth.root_hash)
            c_ver += time.perf_counter() - t1
            c_gen += t1 - t0

        h_t = 0.0
        for i in rng.integers(0, n_entries, size=n_proofs):
            t0 = time.perf_counter()
            found = ledger.history(f"dev-{int(i):08d}")
            h_t += time.perf_counter() - t0
            assert [ix for ix, _e in found] == [int(i)]

        out: dict[str, float] = {
            "n_entries": float(n_entries),
            "append_total_s": t_append,
            "append_entries_per_s": n_entries / t_append,
            "sign_head_ms": sign_s * 1e3,
            "inclusion_proof_ms": t_gen / n_proofs * 1e3,
            "inclusion_verify_ms": t_ver / n_proofs * 1e3,
            "consistency_proof_ms": c_gen / n_proofs * 1e3,
            "consistency_verify_ms": c_ver / n_proofs * 1e3,
            "history_ms": h_t / n_proofs * 1e3,
            "db_bytes": float(sum(p.stat().st_size for p in Path(tmp).iterdir() if p.is_file())),
        }
        if full_verify if full_verify is not None else n_entries <= 100_000:
            t0 = time.perf_counter()
            ledger.verify_all(key.verify_key)
            out["verify_all_s"] = time.perf_counter() - t0
        store.close()
    return out


def measure_bundle(n_params: int, *, repeats: int = 5, seed: int = 7) -> dict[str, float]:
    """Publish, parse+verify and atomically install a bundle of ``n_params`` float32 weights."""
    from ztfm.bundle import Bundle, InstalledModel, publish_bundle, verify_bundle
    from ztfm.ledger import LedgerClient, MemoryLedgerStore

    rng = np.random.default_rng(seed)
    log_key = SigningKey.from_seed(bytes(range(32)))
    rel_key = SigningKey.from_seed(bytes(range(1, 33)))
    ledger = Ledger(MemoryLedgerStore(), log_key)
    client = LedgerClient(log_key.verify_key)
    half = n_params // 2
    weights = {
        "enc.weight": rng.normal(size=half).astype(np.float32),
        "dec.weight": rng.normal(size=n_params - half).astype(np.float32),
    }
    t_pub = t_parse = t_verify = t_install = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        device = InstalledModel(tmp, model_id="bench", release_key=rel_key.verify_key)
        for v in range(1, repeats + 1):
            t0 = time.perf_counter()
            b = publish_bundle(
                ledger, rel_key, model_id="bench", version=v, parent_version=None,
                architecture="bench", quantisation="none", training_round=v, weights=weights,
                now=1000.0 + v,
            )  # fmt: skip
            data = b.to_bytes()
            t1 = time.perf_counter()
            head = ledger.latest_tree_head()
            assert head is not None
            old = client.head.tree_size if client.has_head else 0
            client.update(head, ledger.consistency_proof(old) if old else None)
            t2 = time.perf_counter()
            parsed = Bundle.from_bytes(data)
            t3 = time.perf_counter()
            verify_bundle(
                parsed, release_key=rel_key.verify_key, ledger=client,
                installed_version=v - 1, model_id="bench",
            )  # fmt: skip
            t4 = time.perf_counter()
            device.install(data, ledger=client)
            t5 = time.perf_counter()
            t_pub += t1 - t0
            t_parse += t3 - t2
            t_verify += t4 - t3
            t_install += t5 - t4
    return {
        "n_params": float(n_params),
        "bundle_bytes": float(len(data)),
        "publish_ms": t_pub / repeats * 1e3,
        "parse_ms": t_parse / repeats * 1e3,
        "verify_ms": t_verify / repeats * 1e3,
        "install_ms": t_install / repeats * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--proofs", type=int, default=200)
    ap.add_argument("--bundle-params", type=int, nargs="*", default=[100_000, 10_000_000])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    rows = []
    for n in args.sizes:
        print(f"measuring {n} entries ...", file=sys.stderr, flush=True)
        rows.append(measure(n, batch=args.batch, n_proofs=args.proofs, full_verify=True))
    cols = [
        ("n_entries", "entries", "{:.0f}"),
        ("append_entries_per_s", "append/s", "{:.0f}"),
        ("append_total_s", "append s", "{:.1f}"),
        ("inclusion_proof_ms", "incl gen ms", "{:.3f}"),
        ("inclusion_verify_ms", "incl ver ms", "{:.3f}"),
        ("consistency_proof_ms", "cons gen ms", "{:.3f}"),
        ("consistency_verify_ms", "cons ver ms", "{:.3f}"),
        ("history_ms", "history ms", "{:.3f}"),
        ("sign_head_ms", "sign ms", "{:.2f}"),
        ("verify_all_s", "verify all s", "{:.1f}"),
        ("db_bytes", "db MB", "{:.0f}"),
    ]
    print(" | ".join(f"{title:>12}" for _k, title, _f in cols))
    for r in rows:
        cells = []
        for k, _title, fmt in cols:
            v = r[k] / 1e6 if k == "db_bytes" else r[k]
            cells.append(f"{fmt.format(v):>12}")
        print(" | ".join(cells))
    bundles = [measure_bundle(n) for n in args.bundle_params]
    if bundles:
        print()
        print(" | ".join(f"{t:>12}" for t in ("params", "bundle MB", "publish ms", "parse ms",
                                                "verify ms", "install ms")))  # fmt: skip
        for r in bundles:
            print(
                f"{r['n_params']:>12.0f} | {r['bundle_bytes'] / 1e6:>12.2f} | "
                f"{r['publish_ms']:>12.1f} | {r['parse_ms']:>12.1f} | {r['verify_ms']:>12.2f} | "
                f"{r['install_ms']:>12.1f}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "ledger",
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "results": rows,
        "bundles": bundles,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
