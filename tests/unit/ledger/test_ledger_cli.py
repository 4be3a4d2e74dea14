"""``ztfm ledger`` and ``ztfm bundle`` end to end on a real SQLite file, in process."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from ztfm.cli.main import cli
from ztfm.crypto.signing import SigningKey
from ztfm.errors import BundleError, LedgerError


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"ZTFM_LEDGER_DB": str(tmp_path / "l.db"), "ZTFM_LEDGER_KEY": str(tmp_path / "log.pem")}


def run(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


def ok(env: dict[str, str], *args: str) -> str:
    res = run(env, *args)
    assert res.exit_code == 0, (res.output, res.exception)
    return res.output


def test_init_append_prove_verify_show(env: dict[str, str], tmp_path: Path) -> None:
    out = ok(env, "ledger", "init")
    assert "log public key" in out
    assert (tmp_path / "log.pem").stat().st_mode & 0o777 == 0o600
    assert ok(env, "ledger", "append", "enrolment", '{"device_id":"a","public_key":"k"}') == "0\n"
    assert ok(env, "ledger", "append", "revocation", '{"device_id":"a","reason":"r"}') == "1\n"
    proof = json.loads(ok(env, "ledger", "prove", "1", "--json"))
    assert proof["proof"]["tree_size"] == 2 and proof["tree_head"]["tree_size"] == 2
    hist = json.loads(ok(env, "ledger", "history", "a", "--json"))
    assert [h["kind"] for h in hist] == ["enrolment", "revocation"]
    assert "no entries" in ok(env, "ledger", "history", "nobody")
    shown = json.loads(ok(env, "ledger", "show", "--json", "--tail", "1"))
    assert shown["size"] == 2 and [e["index"] for e in shown["entries"]] == [1]
    key = SigningKey.from_pem((tmp_path / "log.pem").read_bytes()).verify_key.raw.hex()
    verified = json.loads(ok(env, "ledger", "verify", "--json", "--log-key", key))
    assert verified["entries"] == 2 and verified["log_key_pinned"] is True


def test_cli_refusals(env: dict[str, str], tmp_path: Path) -> None:
    res = run(env, "ledger", "show", "--db", str(tmp_path / "missing.db"))
    assert res.exit_code == 1 and isinstance(res.exception, LedgerError)
    ok(env, "ledger", "init")
    for args in (
        ("ledger", "append", "nope", "{}"),
        ("ledger", "append", "revocation", '{"device_id":"a"}'),
        ("ledger", "prove", "5"),
        ("ledger", "verify", "--log-key", SigningKey.generate().verify_key.raw.hex()),
    ):
        res = run(env, *args)
        assert res.exit_code == 1 and isinstance(res.exception, LedgerError), args
    for args in (
        ("ledger", "append", "revocation", "not json"),
        ("ledger", "append", "revocation", "[1]"),
        ("ledger", "verify", "--log-key", "zz"),
        ("ledger", "prove", "-1"),
    ):
        assert run(env, *args).exit_code == 2, args


def test_cli_verify_catches_a_rewrite(env: dict[str, str], tmp_path: Path) -> None:
    ok(env, "ledger", "init")
    for i in range(5):
        ok(env, "ledger", "append", "revocation", json.dumps({"device_id": f"d{i}", "reason": "r"}))
    con = sqlite3.connect(tmp_path / "l.db")
    con.execute("DROP TRIGGER entries_no_update")
    con.execute("UPDATE entries SET data = replace(data, 'd3', 'd9') WHERE idx = 3")
    con.commit()
    con.close()
    res = run(env, "ledger", "verify")
    assert res.exit_code == 1 and isinstance(res.exception, LedgerError)


def test_bundle_publish_show_verify(env: dict[str, str], tmp_path: Path) -> None:
    ok(env, "ledger", "init")
    rel = SigningKey.from_seed(b"\x05" * 32)
    (tmp_path / "rel.pem").write_bytes(rel.to_pem())
    np.savez(tmp_path / "w.npz", w=np.ones((2, 3), np.float32))
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    out = tmp_path / "m.ztb"
    common = ["--log-key", env["ZTFM_LEDGER_KEY"], "--release-key", str(tmp_path / "rel.pem")]
    ok(env, "bundle", "publish", *common, "--weights", str(tmp_path / "w.npz"),
       "--model-id", "m", "--version", "2", "--architecture", "mlp", "--out", str(out))  # fmt: skip
    info = json.loads(ok(env, "bundle", "show", str(out), "--json"))
    assert info["manifest"]["version"] == 2 and info["tensors"]["w"]["shape"] == [2, 3]
    log_hex = SigningKey.from_pem((tmp_path / "log.pem").read_bytes()).verify_key.raw.hex()
    keys = ["--release-key", rel.verify_key.raw.hex(), "--log-key", log_hex]
    state = tmp_path / "state.json"
    ok(env, "bundle", "verify", str(out), *keys, "--state", str(state), "--installed-version", "1")
    assert state.read_bytes()
    res = run(env, "bundle", "verify", str(out), *keys, "--installed-version", "2")
    assert res.exit_code == 1 and isinstance(res.exception, BundleError)
    other = SigningKey.generate().verify_key.raw.hex()
    res = run(env, "bundle", "verify", str(out), "--release-key", other, "--log-key", log_hex)
    assert res.exit_code == 1 and isinstance(res.exception, BundleError)
    res = run(env, "bundle", "verify", str(out), "--release-key", rel.verify_key.raw.hex(),
              "--log-key", other)  # fmt: skip
    assert res.exit_code == 1 and isinstance(res.exception, LedgerError)
    bad = tmp_path / "bad.ztb"
    bad.write_bytes(out.read_bytes()[:-1])
    res = run(env, "bundle", "show", str(bad))
    assert res.exit_code == 1 and isinstance(res.exception, BundleError)
    meta = ["--model-id", "m", "--version", "3", "--architecture", "mlp", "--out", str(bad)]
    res = run(env, "bundle", "publish", *common, "--weights", str(tmp_path / "obj.npy"), *meta)
    assert res.exit_code == 1 and isinstance(res.exception, BundleError)


def test_bundle_install_like_a_device(env: dict[str, str], tmp_path: Path) -> None:
    ok(env, "ledger", "init")
    rel = SigningKey.from_seed(b"\x06" * 32)
    (tmp_path / "rel.pem").write_bytes(rel.to_pem())
    log_hex = SigningKey.from_pem((tmp_path / "log.pem").read_bytes()).verify_key.raw.hex()
    keys = ["--release-key", rel.verify_key.raw.hex(), "--log-key", log_hex]
    dev = ["--dir", str(tmp_path / "dev"), "--model-id", "m", *keys]
    for v in (1, 2):
        np.savez(tmp_path / f"w{v}.npz", w=np.full((2, 2), v, np.float32))
        ok(env, "bundle", "publish", "--log-key", env["ZTFM_LEDGER_KEY"],
           "--release-key", str(tmp_path / "rel.pem"), "--weights", str(tmp_path / f"w{v}.npz"),
           "--model-id", "m", "--version", str(v), "--architecture", "mlp",
           "--out", str(tmp_path / f"m{v}.ztb"))  # fmt: skip
    assert "was None" in ok(env, "bundle", "install", str(tmp_path / "m1.ztb"), *dev)
    assert "was 1" in ok(env, "bundle", "install", str(tmp_path / "m2.ztb"), *dev)
    res = run(env, "bundle", "install", str(tmp_path / "m1.ztb"), *dev)  # rollback
    assert res.exit_code == 1 and isinstance(res.exception, BundleError)
    assert "rollback" in str(res.exception)
    assert (tmp_path / "dev" / "ledger-head.json").read_bytes()
