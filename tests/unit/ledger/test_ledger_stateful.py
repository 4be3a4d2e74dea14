"""Stateful property test: an honest log and a witness, with forks and rollbacks thrown in.

Invariants: the witness follows every honest head; it never accepts a head from a log whose
history differs from what it already trusts; every entry it trusts has a verifying inclusion
proof and every wrong (entry, index) pair fails.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from ledger_ref import mth

from ztfm.crypto.signing import SigningKey
from ztfm.errors import LedgerError
from ztfm.ledger import Entry, EntryKind, Ledger, LedgerClient, MemoryLedgerStore

KEY = SigningKey.from_seed(b"\x44" * 32)


def entry(tag: str, now: float) -> Entry:
    return Entry.create(EntryKind.REVOCATION, {"device_id": tag, "reason": "r"}, now=now)


class LogAndWitness(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.ledger = Ledger(MemoryLedgerStore(), KEY)
        self.client = LedgerClient(KEY.verify_key)
        self.datas: list[bytes] = []
        self.now = 1000.0

    def _tick(self) -> float:
        self.now += 1.0
        return self.now

    @rule(n=st.integers(1, 9))
    def append(self, n: int) -> None:
        es = [entry(f"d{len(self.datas) + i}", self._tick()) for i in range(n)]
        self.ledger.append_many(es)
        self.datas.extend(e.to_bytes() for e in es)

    @rule()
    def sign_and_sync(self) -> None:
        sth = self.ledger.sign_tree_head(now=self._tick())
        old = self.client.head.tree_size if self.client.has_head else 0
        proof = self.ledger.consistency_proof(old) if 0 < old < sth.tree_size else None
        self.client.update(sth, proof)
        assert self.client.head == sth

    @precondition(lambda self: self.client.has_head and self.client.head.tree_size > 0)
    @rule(data=st.data())
    def fork_is_refused(self, data: st.DataObject) -> None:
        trusted = self.client.head
        victim = data.draw(st.integers(0, trusted.tree_size - 1))
        extra = data.draw(st.integers(0, 5))
        fork = Ledger(MemoryLedgerStore(), KEY)
        forged = list(self.datas[: trusted.tree_size])
        forged[victim] = entry(f"forged-{victim}", self.now).to_bytes()
        fork.append_raw(forged)
        fork.append_many([entry(f"x{i}", self.now) for i in range(extra)])
        sth = fork.sign_tree_head(now=self._tick())
        proof = fork.consistency_proof(trusted.tree_size) if extra else None
        with pytest.raises(LedgerError):
            self.client.update(sth, proof)
        assert self.client.head == trusted

    @precondition(lambda self: self.client.has_head and self.client.head.tree_size > 1)
    @rule(data=st.data())
    def rollback_is_refused(self, data: st.DataObject) -> None:
        trusted = self.client.head
        size = data.draw(st.integers(1, trusted.tree_size - 1))
        short = Ledger(MemoryLedgerStore(), KEY)
        short.append_raw(self.datas[:size])
        with pytest.raises(LedgerError):
            self.client.update(short.sign_tree_head(now=self._tick()))
        assert self.client.head == trusted

    @precondition(lambda self: self.client.has_head and self.client.head.tree_size > 0)
    @rule(data=st.data())
    def inclusion_against_trusted_head(self, data: st.DataObject) -> None:
        n = self.client.head.tree_size
        i = data.draw(st.integers(0, n - 1))
        proof = self.ledger.inclusion_proof(i, n)
        self.client.check_inclusion(self.datas[i], proof)
        j = data.draw(st.integers(0, n - 1))
        if self.datas[j] != self.datas[i]:
            with pytest.raises(LedgerError):
                self.client.check_inclusion(self.datas[j], proof)

    @invariant()
    def roots_match_reference(self) -> None:
        assert self.ledger.root() == mth(self.datas)
        if self.client.has_head:
            h = self.client.head
            assert h.root_hash == mth(self.datas[: h.tree_size])


LogAndWitness.TestCase.settings = settings(max_examples=40, stateful_step_count=20, deadline=None)
test_log_and_witness = LogAndWitness.TestCase
