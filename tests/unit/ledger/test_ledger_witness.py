"""LedgerClient: a witness never accepts a forked, rewritten, truncated or forged log."""

from __future__ import annotations

import pytest

from ztfm.crypto.signing import SigningKey
from ztfm.errors import LedgerError
from ztfm.ledger import (
    ConsistencyProof,
    Entry,
    EntryKind,
    InclusionProof,
    Ledger,
    LedgerClient,
    MemoryLedgerStore,
    SignedTreeHead,
)

LOG_KEY = SigningKey.from_seed(b"\x11" * 32)
OTHER_KEY = SigningKey.from_seed(b"\x22" * 32)


def entry(i: int, tag: str = "") -> Entry:
    return Entry.create(EntryKind.REVOCATION, {"device_id": f"d{i}{tag}", "reason": "r"}, now=i)


def make_ledger(n: int) -> Ledger:
    ledger = Ledger(MemoryLedgerStore(), LOG_KEY)
    ledger.append_many([entry(i) for i in range(n)])
    return ledger


def test_client_follows_a_growing_log() -> None:
    ledger = make_ledger(5)
    client = LedgerClient(LOG_KEY.verify_key)
    client.update(ledger.sign_tree_head(now=1))
    for step in range(3):
        old = client.head.tree_size
        ledger.append_many([entry(100 + step * 10 + i) for i in range(step + 1)])
        client.update(ledger.sign_tree_head(now=2 + step), ledger.consistency_proof(old))
        assert client.head.tree_size == ledger.size
    p = ledger.inclusion_proof(3)
    client.check_inclusion(ledger.entry_bytes(3), p)


def test_fork_at_same_size_is_detected() -> None:
    a = make_ledger(8)
    b = Ledger(MemoryLedgerStore(), LOG_KEY)  # the operator keeps a second, different history
    b.append_many([entry(i, "fork" if i == 5 else "") for i in range(8)])
    client = LedgerClient(LOG_KEY.verify_key)
    client.update(a.sign_tree_head(now=1))
    with pytest.raises(LedgerError, match="forked"):
        client.update(b.sign_tree_head(now=2))
    assert client.head.root_hash == a.root()


def test_forked_history_that_grew_is_detected() -> None:
    a = make_ledger(8)
    b = Ledger(MemoryLedgerStore(), LOG_KEY)
    b.append_many([entry(i, "fork" if i == 5 else "") for i in range(12)])
    client = LedgerClient(LOG_KEY.verify_key)
    client.update(a.sign_tree_head(now=1))
    with pytest.raises(LedgerError, match="not consistent"):
        client.update(b.sign_tree_head(now=2), b.consistency_proof(8))
    assert client.head.tree_size == 8


def test_rewritten_middle_entry_breaks_consistency() -> None:
    ledger = make_ledger(16)
    client = LedgerClient(LOG_KEY.verify_key, ledger.sign_tree_head(now=1))
    rewritten = Ledger(MemoryLedgerStore(), LOG_KEY)
    rewritten.append_many([entry(i, "evil" if i == 9 else "") for i in range(20)])
    for old in (16,):
        with pytest.raises(LedgerError):
            client.update(rewritten.sign_tree_head(now=2), rewritten.consistency_proof(old))
    # even a proof cut from the honest log does not make the rewritten head acceptable
    ledger.append_many([entry(i) for i in range(16, 20)])
    with pytest.raises(LedgerError):
        client.update(rewritten.sign_tree_head(now=3), ledger.consistency_proof(16))


def test_truncated_log_is_refused() -> None:
    ledger = make_ledger(10)
    client = LedgerClient(LOG_KEY.verify_key, ledger.sign_tree_head(now=5))
    shorter = make_ledger(7)
    with pytest.raises(LedgerError, match="truncated"):
        client.update(shorter.sign_tree_head(now=6))


def test_forged_signature_and_foreign_log_are_refused() -> None:
    ledger = make_ledger(3)
    client = LedgerClient(LOG_KEY.verify_key)
    sth = ledger.sign_tree_head(now=1)
    forged = SignedTreeHead(sth.head, bytes(64))
    with pytest.raises(LedgerError, match="signature"):
        client.update(forged)
    foreign = SignedTreeHead.sign(OTHER_KEY, sth.tree_size, sth.root_hash, now=1)
    with pytest.raises(LedgerError, match="different log"):
        client.update(foreign)
    with pytest.raises(LedgerError):
        LedgerClient(OTHER_KEY.verify_key, sth)
    assert not client.has_head
    with pytest.raises(LedgerError, match="not accepted"):
        _ = client.head


def test_older_timestamp_is_refused() -> None:
    ledger = make_ledger(3)
    client = LedgerClient(LOG_KEY.verify_key, ledger.sign_tree_head(now=10))
    ledger.append(entry(50))
    with pytest.raises(LedgerError, match="older"):
        client.update(ledger.sign_tree_head(now=9.9), ledger.consistency_proof(3))


def test_growth_without_or_with_mismatched_proof_is_refused() -> None:
    ledger = make_ledger(5)
    client = LedgerClient(LOG_KEY.verify_key, ledger.sign_tree_head(now=1))
    ledger.append_many([entry(i) for i in range(5, 9)])
    new = ledger.sign_tree_head(now=2)
    with pytest.raises(LedgerError, match="required"):
        client.update(new)
    with pytest.raises(LedgerError, match="sizes"):
        client.update(new, ledger.consistency_proof(4))
    good = ledger.consistency_proof(5)
    with pytest.raises(LedgerError, match="sizes"):
        client.update(new, ConsistencyProof(5, 10, good.path))
    with pytest.raises(LedgerError):
        client.update(new, ConsistencyProof(5, 9, good.path[:-1]))
    assert client.head.tree_size == 5
    client.update(new, good)
    assert client.head.tree_size == 9


def test_inclusion_against_trusted_head_only() -> None:
    ledger = make_ledger(6)
    client = LedgerClient(LOG_KEY.verify_key, ledger.sign_tree_head(now=1))
    ledger.append(entry(6))
    p_new = ledger.inclusion_proof(2)  # for size 7, which the client has not accepted
    with pytest.raises(LedgerError, match="trusted head"):
        client.check_inclusion(ledger.entry_bytes(2), p_new)
    p = ledger.inclusion_proof(2, 6)
    client.check_inclusion(ledger.entry_bytes(2), p)
    with pytest.raises(LedgerError):
        client.check_inclusion(ledger.entry_bytes(3), p)
    with pytest.raises(LedgerError):
        client.check_inclusion(ledger.entry_bytes(2), InclusionProof(3, 6, p.path))


def test_state_round_trip() -> None:
    ledger = make_ledger(4)
    client = LedgerClient(LOG_KEY.verify_key, ledger.sign_tree_head(now=1))
    again = LedgerClient.from_state(LOG_KEY.verify_key, client.state_bytes())
    assert again.head == client.head
    assert not LedgerClient.from_state(LOG_KEY.verify_key, b"").has_head
    with pytest.raises(LedgerError):
        LedgerClient.from_state(OTHER_KEY.verify_key, client.state_bytes())
    with pytest.raises(LedgerError):
        LedgerClient.from_state(LOG_KEY.verify_key, client.state_bytes() + b" ")


def test_empty_head_with_nonempty_root_is_refused() -> None:
    client = LedgerClient(LOG_KEY.verify_key)
    with pytest.raises(LedgerError, match="empty tree"):
        client.update(SignedTreeHead.sign(LOG_KEY, 0, b"\x01" * 32, now=1))


def test_cross_check_detects_split_view_without_adopting() -> None:
    honest = make_ledger(10)
    a = LedgerClient(LOG_KEY.verify_key, honest.sign_tree_head(now=1))
    honest.append_many([entry(i) for i in range(10, 14)])
    later = honest.sign_tree_head(now=2)
    a.cross_check(later, honest.consistency_proof(10))
    assert a.head.tree_size == 10  # not adopted
    # a device that was shown a forked log of the same operator
    fork = Ledger(MemoryLedgerStore(), LOG_KEY)
    fork.append_many([entry(i, "x" if i == 2 else "") for i in range(12)])
    b_head = fork.sign_tree_head(now=3)
    with pytest.raises(LedgerError, match="split view"):
        a.cross_check(b_head, fork.consistency_proof(10))
    with pytest.raises(LedgerError, match="split view"):
        a.cross_check(b_head, honest.consistency_proof(10, 12))
    with pytest.raises(LedgerError, match="required"):
        a.cross_check(b_head)
    same_size = Ledger(MemoryLedgerStore(), LOG_KEY)
    same_size.append_many([entry(i, "y" if i == 0 else "") for i in range(10)])
    with pytest.raises(LedgerError, match="split view"):
        a.cross_check(same_size.sign_tree_head(now=4))
    # the other party is behind us: the proof goes from their head to ours
    c = LedgerClient(LOG_KEY.verify_key, later)
    c.cross_check(a.head, honest.consistency_proof(10, 14))
    with pytest.raises(LedgerError):
        c.cross_check(SignedTreeHead.sign(OTHER_KEY, 3, b"\x00" * 32, now=1))


def test_freshness_of_the_trusted_head() -> None:
    ledger = make_ledger(2)
    client = LedgerClient(LOG_KEY.verify_key, ledger.sign_tree_head(now=1000.0))
    client.check_fresh(now=1000.0, max_age_s=60)
    client.check_fresh(now=1059.0, max_age_s=60)
    with pytest.raises(LedgerError, match="old"):
        client.check_fresh(now=1061.0, max_age_s=60)
    with pytest.raises(LedgerError, match="future"):
        client.check_fresh(now=600.0, max_age_s=60)
    with pytest.raises(LedgerError, match="not accepted"):
        LedgerClient(LOG_KEY.verify_key).check_fresh(now=0, max_age_s=1)
