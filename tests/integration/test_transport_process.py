"""The coordinator's server in a real separate process (as `ztfm coordinator serve` will run it),
a device client in this one; the server's audit log on disk records the refusal."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from ztfm.audit import verify_log
from ztfm.identity import Identity, MemoryKeyStore, sign_request
from ztfm.identity.store import init_ca, load_ca, save_ca
from ztfm.transport.grpc_client import RpcFailed
from ztfm.transport.grpc_fleet import Credentials
from ztfm.wire.codec import encode_signed_request

SERVER = r"""
import sys, time
from pathlib import Path
from ztfm.audit import AuditLog
from ztfm.policy import TrustContext
from ztfm.transport.gate import StaticTrustSource
from ztfm.transport.grpc_fleet import LocalFleet

d = Path(sys.argv[1])
fleet = LocalFleet.from_directory(d / "ca", time.time())
log = AuditLog(d / "audit.jsonl")
gate = fleet.gate(log, StaticTrustSource(TrustContext(0.9, True, 10, False)))
srv = fleet.serve(lambda ident, method, payload: b"pong:" + ident.device_id.encode(), gate)
print(srv.target, flush=True)
sys.stdin.read()
srv.stop(0)
log.close()
"""


def test_server_in_another_process(tmp_path: Path) -> None:
    now = time.time()
    ca = init_ca(tmp_path / "ca", "acme.example", now - 60)
    ident = Identity("acme.example", "cams", "device", "cam-1")
    keys = MemoryKeyStore()
    creds = Credentials(ident, keys, ca.issue(keys.make_csr(ident), ident, now))
    save_ca(tmp_path / "ca", ca)
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        target = proc.stdout.readline().strip()
        assert target.startswith("127.0.0.1:"), target
        with creds.client(target, ca.cert, np.random.default_rng(0)) as c:
            assert c.call("GetModel", b"") == b"pong:cam-1"
        env = sign_request(keys, "GetModel", 0, "cam-1", b"", time.time())
        raw = encode_signed_request(env, b"")
        ch = grpc.secure_channel(
            target,
            grpc.ssl_channel_credentials(
                ca.cert.to_pem(), keys.tls_private_key_pem(), creds.cert.to_pem()
            ),
            options=[("grpc.ssl_target_name_override", "localhost")],
        )
        stub = ch.unary_unary("/ztfm.v1.Fleet/GetModel")
        assert stub(raw, timeout=10) == b"\n\npong:cam-1"  # Reply{payload} on the wire
        try:
            stub(raw, timeout=10)
            raise AssertionError("replay accepted")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
        ch.close()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)
    assert proc.returncode == 0
    state = load_ca(tmp_path / "ca")  # the server persisted the CA state it changed
    assert len(state.issued) == 2 and state.crl_version >= 1  # device + coordinator cert
    assert verify_log(tmp_path / "audit.jsonl").records == 3  # 2 admitted + 1 rejected
    records = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    (rej,) = [r["fields"] for r in records if r["event"] == "rpc.rejected"]
    assert rej["code"] == "replay" and rej["peer"] == ident.uri


def _ztfm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztfm.cli.main", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_enrolment_then_grpc(tmp_path: Path) -> None:
    """Operator and device use only the CLI and files; the certificate then works over mTLS."""
    from ztfm.audit import MemoryAuditSink
    from ztfm.crypto.pki import Certificate
    from ztfm.identity import FileKeyStore
    from ztfm.policy import TrustContext
    from ztfm.transport.gate import StaticTrustSource
    from ztfm.transport.grpc_fleet import LocalFleet

    ca_dir, dev = str(tmp_path / "ca"), tmp_path / "dev"
    assert _ztfm("ca", "init", "--dir", ca_dir, "--fleet", "acme.example").returncode == 0
    tok = _ztfm("ca", "token", "--dir", ca_dir, "--segment", "cams", "--id", "cam-9").stdout
    r = _ztfm(
        "ca",
        "csr",
        "--key",
        str(dev / "key.pem"),
        "--fleet",
        "acme.example",
        "--segment",
        "cams",
        "--id",
        "cam-9",
        "--token",
        tok.strip(),
        "--out",
        str(tmp_path / "csr.pem"),
    )
    assert r.returncode == 0, r.stderr
    r = _ztfm(
        "ca",
        "issue",
        "--dir",
        ca_dir,
        "--csr",
        str(tmp_path / "csr.pem"),
        "--out",
        str(tmp_path / "cert.pem"),
    )
    assert r.returncode == 0, r.stderr

    now = time.time()
    fleet = LocalFleet.from_directory(tmp_path / "ca", now)
    gate = fleet.gate(MemoryAuditSink(), StaticTrustSource(TrustContext(0.9, True, 10, False)))
    srv = fleet.serve(lambda ident, method, payload: ident.uri.encode(), gate, max_workers=2)
    try:
        keys = FileKeyStore(dev / "key.pem")
        cert = Certificate.from_pem((tmp_path / "cert.pem").read_bytes())
        ident = Identity("acme.example", "cams", "device", "cam-9")
        creds = Credentials(ident, keys, cert)
        with creds.client(
            srv.target, fleet.ca.cert, np.random.default_rng(0), server_validator=fleet.validator()
        ) as c:
            assert c.call("GetModel", b"") == ident.uri.encode()
        # revoke with the CLI while the server holds the CA: the server picks it up (shared
        # file lock + reload) instead of overwriting it, and the refreshed list refuses the device
        r = _ztfm("ca", "revoke", "--dir", ca_dir, "--identity", ident.uri)
        assert r.returncode == 0, r.stderr
        fleet.revocations.refresh(time.time())
        with pytest.raises(RpcFailed) as ei:
            creds.client(srv.target, fleet.ca.cert, np.random.default_rng(1)).call("GetModel", b"")
        assert ei.value.status == grpc.StatusCode.UNAUTHENTICATED
    finally:
        srv.stop(0)
    assert ident.uri in load_ca(tmp_path / "ca").revoked_identities
