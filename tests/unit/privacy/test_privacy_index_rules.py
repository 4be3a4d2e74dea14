"""Shared-coordinate rules beyond rand-k: cyclic blocks and top-k of the public global update."""

from __future__ import annotations

import numpy as np
import pytest

from ztfm.errors import PrivacyError
from ztfm.privacy.compress import (
    ErrorFeedback,
    cyclic_indices,
    public_topk_indices,
    shared_indices,
)


def test_cyclic_blocks_cover_the_vector_once_per_cycle() -> None:
    d, k = 1000, 70
    cycle = -(-d // k)  # 15 rounds
    blocks = [cyclic_indices(d, k, r, b"seed") for r in range(cycle)]
    assert all(b.size == k and np.all(np.diff(b) > 0) for b in blocks)
    assert len(np.unique(np.concatenate(blocks))) == d  # everything sent in one cycle
    assert len(np.unique(np.concatenate(blocks[:-1]))) == (cycle - 1) * k  # no repeats before
    assert np.array_equal(blocks[0], cyclic_indices(d, k, 0, b"seed"))  # same on every device
    assert not np.array_equal(blocks[0], cyclic_indices(d, k, 0, b"other"))
    rand = [shared_indices(d, k, f"r{r}".encode()) for r in range(cycle)]
    assert len(np.unique(np.concatenate(rand))) < d  # rand-k misses some (1 - 0.93^15 ~ 66%)


def test_cyclic_with_error_feedback_delivers_every_coordinate() -> None:
    d, k = 200, 40
    fb = ErrorFeedback(d)
    update = np.linspace(-1, 1, d)
    sent = np.zeros(d)
    for r in range(5):
        idx = cyclic_indices(d, k, r, b"s")
        sent[idx] += fb.compress_shared(update if r == 0 else np.zeros(d), idx)
    np.testing.assert_allclose(sent, update)
    np.testing.assert_allclose(fb.residual, 0.0)


def test_public_topk_keeps_the_largest_and_explores() -> None:
    d, k = 500, 40
    prev = np.zeros(d)
    big = np.arange(0, 400, 10)  # 40 non-zero coordinates, the previous round's set
    prev[big] = np.linspace(1, 40, big.size)
    idx = public_topk_indices(prev, k, b"round-7", explore=0.5)
    assert idx.size == k and np.all(np.diff(idx) > 0)
    top20 = big[-20:]
    assert set(top20) <= set(idx)  # the 20 largest |previous update| coordinates
    assert len(set(idx) - set(big)) == 20  # 20 fresh coordinates, not last round's
    assert np.array_equal(idx, public_topk_indices(prev, k, b"round-7", explore=0.5))
    assert not np.array_equal(idx, public_topk_indices(prev, k, b"round-8", explore=0.5))
    # pure top-k of a sparse previous update would repeat the same set
    assert set(public_topk_indices(prev, k, b"x", explore=0.0)) == set(big)
    # fewer non-zero coordinates than k_top: the rest is random
    only3 = np.zeros(d)
    only3[[1, 2, 3]] = 1.0
    got = public_topk_indices(only3, 10, b"x", explore=0.0)
    assert got.size == 10 and {1, 2, 3} <= set(got)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: cyclic_indices(0, 1, 0, b"s"), "length"),
        (lambda: cyclic_indices(10, 11, 0, b"s"), "k="),
        (lambda: cyclic_indices(10, 2, -1, b"s"), "round_index"),
        (lambda: cyclic_indices(10, 2, 0, b""), "seed"),
        (lambda: public_topk_indices(np.ones(10), 2, b"s", explore=1.5), "explore"),
        (lambda: public_topk_indices(np.ones(10), 0, b"s"), "k="),
        (lambda: public_topk_indices([np.nan, 1.0], 1, b"s"), "NaN"),
    ],
)
def test_index_rules_refuse_bad_input(call: object, match: str) -> None:
    with pytest.raises(PrivacyError, match=match):
        call()  # type: ignore[operator]
