"""Hostile bytes never crash the parsers; a SIGKILLed writer leaves a verifiable ledger."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztfm.crypto.signing import SigningKey
from ztfm.errors import LedgerError
from ztfm.ledger import (
    ConsistencyProof,
    Entry,
    EntryKind,
    InclusionProof,
    Ledger,
    SignedTreeHead,
    SqliteLedgerStore,
)
from ztfm.ledger.entry import parse_canonical_json

GOOD = Entry.create(EntryKind.REVOCATION, {"device_id": "d", "reason": "r"}, now=1).to_bytes()
STH = SignedTreeHead.sign(SigningKey.from_seed(b"\x01" * 32), 3, b"\x00" * 32, now=1).to_bytes()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_are_refused_cleanly(data: bytes) -> None:
    for parse in (Entry.from_bytes, SignedTreeHead.from_bytes):
        with contextlib.suppress(LedgerError):
            parse(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_entries_and_heads_are_refused_or_reparse(data: st.DataObject) -> None:
    for good, parse in ((GOOD, Entry.from_bytes), (STH, SignedTreeHead.from_bytes)):
        i = data.draw(st.integers(0, len(good) - 1))
        b = data.draw(st.integers(0, 255))
        mutated = good[:i] + bytes([b]) + good[i + 1 :]
        try:
            parsed = parse(mutated)
        except LedgerError:
            continue
        assert parsed.to_bytes() == mutated  # accepted only if it is itself canonical


@settings(max_examples=80, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                        max_size=3)))  # fmt: skip
def test_arbitrary_json_shapes_are_refused_as_proofs(obj: object) -> None:
    for parse in (InclusionProof.from_json, ConsistencyProof.from_json, SignedTreeHead.from_json):
        with contextlib.suppress(LedgerError):
            parse(obj)


def test_deeply_nested_json_is_refused_not_recursionerror() -> None:
    with pytest.raises(LedgerError):
        parse_canonical_json(b"[" * 50_000 + b"]" * 50_000, what="x", limit=200_000)


_WRITER = textwrap.dedent(
    """
    from ztfm.crypto.signing import SigningKey
    from ztfm.ledger import Entry, EntryKind, Ledger, SqliteLedgerStore
    led = Ledger(SqliteLedgerStore({db!r}), SigningKey.from_seed(b"\\x07" * 32))
    print("ready", flush=True)
    b = 0
    while True:
        led.append_many([Entry.create(EntryKind.REVOCATION,
                                      {{"device_id": f"d{{b}}-{{i}}", "reason": "r"}}, now=b)
                         for i in range(97)])
        led.sign_tree_head(now=b)
        b += 1
    """
)


@pytest.mark.parametrize("spin", [50_000, 500_000])
def test_sigkill_during_batch_appends_leaves_whole_batches(tmp_path: Path, spin: int) -> None:
    db = tmp_path / "l.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER.format(db=str(db))], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    for _ in range(spin):
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ledger = Ledger(SqliteLedgerStore(db, create=False))
    assert ledger.size % 97 == 0  # a batch is all or nothing
    report = ledger.verify_all(SigningKey.from_seed(b"\x07" * 32).verify_key)
    assert report.entries == ledger.size
    # and the log is still appendable after the crash
    Ledger(SqliteLedgerStore(db), SigningKey.from_seed(b"\x07" * 32)).append(Entry.from_bytes(GOOD))
