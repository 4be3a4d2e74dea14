"""The server's fast paths and the checks they keep: ``shamir.combine_many`` against
``reconstruct``, messages the server builds without re-checking, duplicates in every phase, and
shares that are not field elements (the holder is rejected, its shares before the bad one still
count)."""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from ztfm.errors import SecAggError
from ztfm.secagg import ShareInbox, UnmaskRequest, UnmaskResponse, shamir
from ztfm.types import DeviceId

MakeRound = Callable[..., Any]
BAD_SHARE = shamir.PRIME.to_bytes(shamir.SHARE_BYTES, "big")  # 33 bytes, not below the prime


# ---- shamir.combine_many -----------------------------------------------------------------------
@pytest.mark.parametrize("t", [1, 2, 3, 5, 9, 17, 60])
def test_combine_many_matches_reconstruct(rng: np.random.Generator, t: int) -> None:
    for trial in range(4):
        # x = 1..t + 3 (the server's case) or scattered; subsets in and out of order
        pool = range(1, t + 4) if trial % 2 else [int(x) + 1 for x in rng.choice(500, t + 3)]
        holders = sorted(set(pool))
        if len(holders) < t:
            continue
        secrets = [rng.bytes(32) for _ in range(5)]
        shares = [shamir.split(s, t, holders, rng) for s in secrets]
        for xs in itertools.islice(itertools.permutations(holders, t), 3):
            rows = [[shamir.share_to_bytes(sh[x]) for x in xs] for sh in shares]
            assert shamir.combine_many(xs, rows) == secrets
            assert [shamir.reconstruct({x: sh[x] for x in xs}, t) for sh in shares] == secrets


def test_combine_many_on_arbitrary_field_elements(rng: np.random.Generator) -> None:
    # rows of any field elements (no dealer): the same values as reconstruct, None where
    # reconstruct refuses the result (x = 1: the secret is the share, here >= 2^256)
    for t in (1, 3, 9):
        xs = tuple(range(1, t + 1))
        ys = [[int.from_bytes(rng.bytes(33)) % shamir.PRIME for _ in xs] for _ in range(50)]
        if t == 1:
            ys += [[(1 << 256) + 5], [shamir.PRIME - 1]]
        want: list[bytes | None] = []
        for row in ys:
            try:
                want.append(shamir.reconstruct(dict(zip(xs, row, strict=True)), t))
            except SecAggError:
                want.append(None)
        rows = [[shamir.share_to_bytes(y) for y in row] for row in ys]
        assert shamir.combine_many(xs, rows) == want
        assert t > 1 or want[-2:] == [None, None]
    assert shamir.combine_many((1, 2), []) == []


def test_combine_many_basis_for_first_positions_is_binomial() -> None:
    coeffs, inv = shamir._basis_at_zero((1, 2, 3, 4, 5))
    assert coeffs == (5, -10, 10, -5, 1) and inv == 1


def test_all_shares_accepts_exactly_what_share_from_bytes_does(rng: np.random.Generator) -> None:
    good = [shamir.share_to_bytes(int.from_bytes(rng.bytes(33)) % shamir.PRIME) for _ in range(9)]
    top = shamir.share_to_bytes(shamir.PRIME - 1)
    assert shamir.all_shares([*good, top, bytearray(top)]) and shamir.all_shares([])
    shamir.share_from_bytes(bytearray(top))
    for bad in (BAD_SHARE, b"\xff" * 33, top[1:], top + b"\x00", "x" * 33):
        assert not shamir.all_shares([*good, bad])  # type: ignore[list-item]
        with pytest.raises((SecAggError, TypeError)):
            shamir.share_from_bytes(bad)  # type: ignore[arg-type]


def test_combine_many_checks_like_reconstruct(rng: np.random.Generator) -> None:
    shares = shamir.split(rng.bytes(32), 3, [1, 2, 3], rng)
    enc = [shamir.share_to_bytes(shares[x]) for x in (1, 2, 3)]
    with pytest.raises(SecAggError, match="positive"):
        shamir.combine_many((), [[]])
    with pytest.raises(SecAggError, match="as many"):
        shamir.combine_many((1, 2, 3), [enc, enc[:2]])
    with pytest.raises(SecAggError, match="33 bytes"):
        shamir.combine_many((1, 2, 3), [enc, [enc[0], enc[1], enc[2][1:]]])
    with pytest.raises(SecAggError, match="outside the field"):
        shamir.combine_many((1, 2, 3), [enc, [enc[0], enc[1], BAD_SHARE]])
    with pytest.raises(SecAggError, match="distinct"):
        shamir.combine_many((1, 2, 2), [enc])
    for bad_x in (0, shamir.MAX_X):
        with pytest.raises(SecAggError, match="x-coordinate"):
            shamir.combine_many((1, 2, bad_x), [enc])


def _lagrange_reference(xs: tuple[int, ...], at: int) -> tuple[int, ...]:
    """The textbook basis, one modular inversion per node."""
    out = []
    for i, xi in enumerate(xs):
        num = den = 1
        for j, xj in enumerate(xs):
            if i != j:
                num, den = num * (at - xj), den * (xi - xj)
        out.append(num * pow(den, -1, shamir.PRIME) % shamir.PRIME)
    return tuple(out)


@pytest.mark.parametrize(
    ("t", "k"), [(1, 1), (1, 6), (2, 2), (2, 9), (9, 9), (9, 16), (50, 70), (60, 118), (30, 400)]
)
def test_lagrange_basis_matches_the_textbook(rng: np.random.Generator, t: int, k: int) -> None:
    # dense nodes (most of 1..k: the factorial form) and sparse ones (pairwise products)
    for _ in range(5):
        xs = tuple(int(x) + 1 for x in rng.choice(k, t, replace=False))
        for at in (0, int(rng.integers(0, k + 5)), xs[0]):
            assert shamir._lagrange.__wrapped__(xs, at) == _lagrange_reference(xs, at)


def test_inverse_factorial_table_grows() -> None:
    from math import factorial

    table = shamir._inverse_factorials(300)
    assert len(table) > 300
    assert all(table[m] * factorial(m) % shamir.PRIME == 1 for m in range(301))


# ---- messages the server builds ----------------------------------------------------------------
def test_prechecked_messages_equal_checked_ones() -> None:
    a, b = DeviceId("a"), DeviceId("b")
    sealed = {b: bytes(82)}
    assert ShareInbox.prechecked(a, sealed) == ShareInbox(a, sealed)
    assert UnmaskRequest.prechecked(a, (a, b), {b: bytes(16)}) == UnmaskRequest(
        a, (a, b), {b: bytes(16)}
    )
    with pytest.raises(SecAggError, match="sealed share length"):
        ShareInbox(a, {b: bytes(81)})
    with pytest.raises(SecAggError, match="confirmation tag length"):
        UnmaskRequest(a, (a, b), {b: bytes(15)})
    with pytest.raises(SecAggError, match="share length"):
        UnmaskResponse(a, {b: bytes(33)}, {a: bytes(32)}, bytes(16))
    with pytest.raises(SecAggError, match="both share kinds"):
        UnmaskResponse(a, {b: bytes(33)}, {b: bytes(33)}, bytes(16))


def test_server_output_messages_are_well_formed(make_round: MakeRound) -> None:
    h = make_round(n=10)
    h.run()
    for box in h.log["inbox"].values():
        assert box == ShareInbox(box.recipient, box.sealed)  # the checks would pass
    for req in h.log["unmask_req"].values():
        assert req == UnmaskRequest(req.recipient, req.survivors, req.confirmations)


# ---- admission: duplicates in every phase ------------------------------------------------------
@pytest.mark.parametrize("phase", ["adverts", "shares", "masked", "confirm", "unmask"])
def test_duplicate_message_rejected_in_every_phase(make_round: MakeRound, phase: str) -> None:
    h = make_round(n=10)
    dup: list[DeviceId] = []

    def twice(msgs: list[Any]) -> list[Any]:
        dup.append(msgs[3].device)
        return [*msgs, msgs[3]]

    total = h.run(tamper={phase: twice})
    assert h.server.rejected == {dup[0]: "duplicate message"}
    h.assert_exact(total)


# ---- unmasking: shares outside the field -------------------------------------------------------
def _replace_shares(
    h: Any, holder: DeviceId, edit: Callable[[dict[DeviceId, bytes]], dict[DeviceId, bytes]]
) -> Callable[[list[UnmaskResponse]], list[UnmaskResponse]]:
    def tamper(msgs: list[UnmaskResponse]) -> list[UnmaskResponse]:
        return [
            dataclasses.replace(m, seed_shares=edit(dict(m.seed_shares)))
            if m.device == holder
            else m
            for m in msgs
        ]

    return tamper


def _scenario(h: Any) -> tuple[DeviceId, DeviceId, DeviceId, set[DeviceId]]:
    """An owner d, a holder H of d's seed, another owner e that H holds a share of, and devices
    to silence at unmasking so that d keeps exactly t holders (H among them) and e keeps more."""
    p = h.params
    t = p.threshold
    for d in p.roster:
        for holder in p.neighbours[d]:
            others = [o for o in p.neighbours[d] if o != holder]
            for quiet in itertools.combinations(others, len(others) + 1 - t):
                silent = set(quiet)
                for e in p.neighbours[holder]:
                    if e in (d, *silent):
                        continue
                    left = [o for o in p.neighbours[e] if o not in silent and o != holder]
                    if len(left) >= t and all(
                        len([o for o in p.neighbours[s] if o not in silent]) >= t for s in silent
                    ):
                        return d, holder, e, silent
    raise AssertionError("no scenario in this graph")


@pytest.mark.parametrize("bad_first", [False, True])
def test_out_of_field_share_rejects_holder_but_keeps_its_earlier_shares(
    make_round: MakeRound, bad_first: bool
) -> None:
    h = make_round(n=10)
    h.with_server(trust_transport=True)  # no MAC: the relay itself can write the bad share
    d, holder, e, silent = _scenario(h)

    def edit(seeds: dict[DeviceId, bytes]) -> dict[DeviceId, bytes]:
        rest = {k: v for k, v in seeds.items() if k != e}
        bad = {e: BAD_SHARE}
        return {**bad, **rest} if bad_first else {**rest, **bad}

    tamper = {"unmask": _replace_shares(h, holder, edit)}
    if bad_first:  # parsing stopped before d's share: d is left with t - 1 shares
        need = f"cannot unmask: {h.params.threshold - 1} shares of the self-mask seed of {d!r}"
        with pytest.raises(SecAggError, match=re.escape(need)):
            h.run(skip={"unmask": silent}, tamper=tamper)
        return
    total = h.run(skip={"unmask": silent}, tamper=tamper)
    assert h.server.rejected == {holder: "unmask response has a malformed share"}
    h.assert_exact(total, tuple(h.ids))


def test_out_of_field_share_nobody_needs_is_ignored(make_round: MakeRound) -> None:
    h = make_round(n=10)
    h.with_server(trust_transport=True)
    holder = h.ids[2]
    stranger = next(o for o in h.ids if o != holder and o not in h.params.neighbours[holder])

    total = h.run(
        tamper={"unmask": _replace_shares(h, holder, lambda s: {**s, stranger: BAD_SHARE})}
    )
    assert h.server.rejected == {}
    h.assert_exact(total, tuple(h.ids))


def test_wrong_share_at_a_low_position_is_outvoted(make_round: MakeRound) -> None:
    # a holder among the first t of an owner lies in-field: the fast combination fails the
    # commitment and the search over the other shares finds the seed
    h = make_round(n=10)
    h.with_server(trust_transport=True)
    owner = h.ids[0]
    first = sorted(h.params.neighbours[owner])[0]
    y = (shamir.share_from_bytes(b"\0" * 32 + b"\x07") + 1) % shamir.PRIME

    def edit(seeds: dict[DeviceId, bytes]) -> dict[DeviceId, bytes]:
        old = shamir.share_from_bytes(seeds[owner])
        return {**seeds, owner: shamir.share_to_bytes((old + y) % shamir.PRIME)}

    total = h.run(tamper={"unmask": _replace_shares(h, first, edit)})
    h.assert_exact(total, tuple(h.ids))
