"""bench/transport.py: requests/s and latency of the mTLS gRPC transport on loopback.

N devices (each with its own certificate, key and TLS channel, driven by threads of this process)
call ``SubmitUpdate`` on a server in a separate process, with a signed payload through the full
zero-trust gate (certificate validation with revocation, request
binding, Cedar policy, audit log) to a trivial handler. Up to ``--inflight`` calls run at once
from a thread pool. Every loop is bounded: ``--requests`` calls in total per fleet size.

Prints a table and writes bench/results/transport.json. Latency is per call as the client sees
it (sign + send + server gate + handler + reply); the first call of each device includes its TLS
handshake and is reported separately.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from ztfm.audit import AuditLog, AuditSink, MemoryAuditSink
from ztfm.identity import Identity
from ztfm.policy import TrustContext
from ztfm.transport.gate import StaticTrustSource
from ztfm.transport.grpc_fleet import LocalFleet

OUT = Path(__file__).resolve().parent / "results" / "transport.json"


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


def _serve_in_child(
    fleet: LocalFleet, audit_kind: str, max_payload: int, workers: int, conn: Connection
) -> None:
    """Server process: builds the gate and serves until the parent closes the pipe."""
    tmp = tempfile.TemporaryDirectory()
    file_log = AuditLog(Path(tmp.name) / "audit.jsonl") if audit_kind == "file" else None
    audit: AuditSink = file_log if file_log is not None else MemoryAuditSink()
    gate = fleet.gate(
        audit, StaticTrustSource(TrustContext(0.9, True, 10, False)), max_payload_bytes=max_payload
    )

    def handler(identity: Identity, method: str, payload: bytes) -> bytes:
        return b"ok"

    server = fleet.serve(handler, gate, max_workers=workers)
    conn.send(server.target)
    conn.recv()  # blocks until the parent is done
    server.stop(0)
    if file_log is not None:
        file_log.close()
    tmp.cleanup()


def run(
    n_devices: int,
    total_requests: int,
    inflight: int,
    payload_bytes: int,
    audit_kind: str,
    server_workers: int,
) -> dict[str, object]:
    now = time.time()
    fleet = LocalFleet.create("bench.example", now)
    devices = [fleet.enroll(f"seg-{i % 4}", f"dev-{i}", now) for i in range(n_devices)]
    max_payload = max(payload_bytes * 2, 64 * 1024)
    ctx = mp.get_context("fork")  # before this process starts any gRPC machinery
    parent_end, child_end = ctx.Pipe()
    proc = ctx.Process(
        target=_serve_in_child, args=(fleet, audit_kind, max_payload, server_workers, child_end)
    )
    proc.start()
    child_end.close()
    try:
        target = parent_end.recv()
    except EOFError as exc:
        proc.join()
        raise SystemExit(f"server process failed (exit code {proc.exitcode})") from exc
    clients = [
        d.client(target, fleet.ca.cert, np.random.default_rng(i)) for i, d in enumerate(devices)
    ]
    per_device = max(1, total_requests // n_devices)
    payload = os.urandom(payload_bytes)
    first: list[float] = []
    warm: list[float] = []
    errors = 0
    lock = threading.Lock()

    def device_loop(idx: int) -> None:
        nonlocal errors
        c = clients[idx]
        for k in range(per_device):
            t = time.perf_counter()
            try:
                c.call("SubmitUpdate", payload, round_id=1)
            except Exception:
                with lock:
                    errors += 1
                continue
            dt = time.perf_counter() - t
            with lock:
                (first if k == 0 else warm).append(dt)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(inflight, n_devices)) as pool:
        list(pool.map(device_loop, range(n_devices)))
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    parent_end.send("stop")
    proc.join(timeout=30)
    if proc.is_alive():
        proc.kill()
    done = len(first) + len(warm)
    return {
        "devices": n_devices,
        "requests": done,
        "errors": errors,
        "inflight": min(inflight, n_devices),
        "payload_bytes": payload_bytes,
        "audit": audit_kind,
        "wall_s": wall,
        "req_per_s": done / wall if wall > 0 else float("nan"),
        "p50_ms": _pct(warm or first, 0.5) * 1e3,
        "p99_ms": _pct(warm or first, 0.99) * 1e3,
        "first_call_p50_ms": _pct(first, 0.5) * 1e3,
        "first_call_p99_ms": _pct(first, 0.99) * 1e3,
    }


def micro(n: int = 2000) -> dict[str, float]:
    """Per-operation rates of the gate's building blocks (ops/s on one core)."""
    from ztfm.audit import AuditLog
    from ztfm.identity import (
        CertValidator,
        FleetCA,
        InMemoryKeyRegistry,
        MemoryKeyStore,
        RequestVerifier,
        RevocationChecker,
        sign_request,
    )
    from ztfm.policy import AccessRequest, PolicyEngine, Resource

    t0 = 1_800_000_000.0
    ca = FleetCA.create("bench.example", t0 - 10)
    ident = Identity("bench.example", "cams", "device", "cam-1")
    ks = MemoryKeyStore()
    cert = ca.issue(ks.make_csr(ident), ident, t0)
    reg = InMemoryKeyRegistry()
    reg.register(ks.public_key, ident)
    ver = RequestVerifier(reg)
    payload = os.urandom(16 * 1024)
    out: dict[str, float] = {}

    def rate(name: str, fn: Callable[[int], object]) -> None:
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        out[name] = n / (time.perf_counter() - t)

    envs = [sign_request(ks, "SubmitUpdate", 1, "cam-1", payload, t0) for _ in range(n)]
    rate("sign_request_per_s", lambda i: sign_request(ks, "SubmitUpdate", 1, "cam-1", payload, t0))
    rate("verify_request_per_s", lambda i: ver.verify(envs[i], payload, ident, t0))
    chk = RevocationChecker(ca.cert.public_key, "bench.example")
    chk.update(ca.publish_revocations(t0), t0)
    cold = CertValidator(ca.cert, "bench.example", chk, cache_size=1)
    other = [ca.issue(MemoryKeyStore().make_csr(ident), ident, t0) for _ in range(2)]
    rate("validate_cert_uncached_per_s", lambda i: cold.validate(other[i % 2], t0))
    warm = CertValidator(ca.cert, "bench.example", chk)
    rate("validate_cert_cached_per_s", lambda i: warm.validate(cert, t0))
    eng = PolicyEngine(MemoryAuditSink())
    req = AccessRequest(
        ident,
        "SubmitUpdate",
        Resource("update", "bench.example", "cams"),
        TrustContext(0.9, True, 10, False),
    )
    rate("policy_decision_per_s", lambda i: eng.authorize(req, t0))
    with tempfile.TemporaryDirectory() as d:
        log = AuditLog(Path(d) / "a.jsonl")
        rate("audit_append_fsync_per_s", lambda i: log.append("e", {"i": i}, t0))
        log.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 10, 100, 500])
    ap.add_argument("--requests", type=int, default=2000, help="calls per fleet size")
    ap.add_argument("--inflight", type=int, default=32)
    ap.add_argument("--payload-bytes", type=int, default=16 * 1024)
    ap.add_argument("--audit", choices=["file", "memory"], nargs="+", default=["file", "memory"])
    ap.add_argument("--server-workers", type=int, default=16)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--micro-only", action="store_true")
    args = ap.parse_args()
    ops = micro()
    for k, v in ops.items():
        print(f"{k:>32}: {v:10.0f}", flush=True)
    if args.micro_only:
        return
    if max(args.devices) > 500 or args.requests > 20000:
        ap.error("bounded bench: at most 500 devices and 20000 requests")
    rows = []
    for audit_kind in args.audit:
        for n in args.devices:
            rows.append(
                run(
                    n,
                    args.requests,
                    args.inflight,
                    args.payload_bytes,
                    audit_kind,
                    args.server_workers,
                )
            )
            r = rows[-1]
            print(
                f"{r['audit']:>6} N={r['devices']:>4} reqs={r['requests']:>5} "
                f"err={r['errors']:>3} {r['req_per_s']:>8.1f} req/s  p50 {r['p50_ms']:7.2f} ms"
                f"  p99 {r['p99_ms']:7.2f} ms  first-call p50 {r['first_call_p50_ms']:7.2f} ms"
                f" p99 {r['first_call_p99_ms']:7.2f} ms",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "bench": "transport",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "settings": {
                    k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                },
                "rows": rows,
                "micro_ops_per_s": ops,
                "median_req_per_s": statistics.median(float(r["req_per_s"]) for r in rows),  # type: ignore[arg-type]
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
