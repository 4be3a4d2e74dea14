"""SecAgg+ protocol: correct sums with dropouts at every phase, and every tampering rejected."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from ztfm.crypto.kex import KexPrivateKey
from ztfm.errors import SecAggError
from ztfm.secagg import (
    AdvertiseKeys,
    ClientPhase,
    KeyDirectory,
    MaskedInput,
    SecAggServer,
    ShareInbox,
    SurvivorsConfirmation,
    SurvivorsRequest,
    UnmaskRequest,
    UnmaskResponse,
)

MakeRound = Callable[..., Any]


def _flip(b: bytes, i: int = 0) -> bytes:
    return b[:i] + bytes([b[i] ^ 1]) + b[i + 1 :]


# ---- positive paths --------------------------------------------------------------------------
def test_sum_without_dropouts_is_exact_within_quantisation(make_round: MakeRound) -> None:
    h = make_round()
    total = h.run()
    assert h.log["result"].included == tuple(h.ids)
    h.assert_exact(total, tuple(h.ids))


@pytest.mark.parametrize("phase", ["shares", "masked", "confirm", "unmask"])
def test_dropout_at_each_phase(make_round: MakeRound, phase: str) -> None:
    h = make_round(n=10)
    drop = {h.ids[2], h.ids[7]}
    total = h.run(skip={phase: drop})
    res = h.log["result"]
    if phase in ("shares", "masked"):
        assert drop.isdisjoint(res.included)  # dropped before sending an input: left out
    else:
        assert drop <= set(res.included)  # input sent: unmasked with neighbours' shares
    h.assert_exact(total)


def test_dropped_after_sharing_are_listed(make_round: MakeRound) -> None:
    h = make_round(n=10)
    h.run(skip={"masked": {h.ids[1]}})
    assert h.log["result"].dropped == (h.ids[1],)


def test_below_threshold_in_a_neighbourhood_aborts(make_round: MakeRound) -> None:
    h = make_round(n=12, degree=6)
    victim = h.ids[0]
    nbrs = list(h.params.neighbours[victim])
    # all but t-1 neighbours vanish after the victim's input is in: its seed cannot be rebuilt.
    silent = set(nbrs[: len(nbrs) - (h.params.threshold - 1)])
    with pytest.raises(SecAggError, match=r"threshold|left"):
        h.run(skip={"unmask": silent})


def test_too_few_devices_overall_aborts(make_round: MakeRound) -> None:
    h = make_round(n=8)
    with pytest.raises(SecAggError):
        h.run(skip={"masked": set(h.ids[:6])})


def test_both_secret_kinds_never_revealed_for_one_device(make_round: MakeRound) -> None:
    h = make_round(n=10)
    h.run(skip={"masked": {h.ids[4]}})
    for r in h.log["unmask"]:
        assert not set(r.seed_shares) & set(r.key_shares)
        assert h.ids[4] not in r.seed_shares


# ---- phase order and plumbing ------------------------------------------------------------------
def test_client_phase_order_enforced(make_round: MakeRound) -> None:
    h = make_round()
    c = h.clients[h.ids[0]]
    with pytest.raises(SecAggError, match="phase"):
        c.share_keys(KeyDirectory(h.ids[0], ()))
    c.advertise()
    with pytest.raises(SecAggError, match="phase"):
        c.advertise()


def test_server_phase_order_enforced(make_round: MakeRound) -> None:
    h = make_round()
    with pytest.raises(SecAggError, match="phase"):
        h.server.finalize([])
    with pytest.raises(SecAggError, match="phase"):
        h.server.receive_masked([])


def test_server_key_must_match_params(make_round: MakeRound) -> None:
    h = make_round()
    other = KexPrivateKey.generate(np.random.default_rng(0))
    with pytest.raises(SecAggError, match="server key"):
        SecAggServer(h.params, h.identities, other)


def test_missing_identity_rejected(make_round: MakeRound) -> None:
    h = make_round()
    ids = dict(h.identities)
    del ids[h.ids[3]]
    with pytest.raises(SecAggError, match="identity"):
        SecAggServer(h.params, ids, h.server_key)


def test_input_of_wrong_shape_or_dtype_rejected_by_client(make_round: MakeRound) -> None:
    h = make_round()
    dirs = h.server.receive_adverts([c.advertise() for c in h.clients.values()])
    inbox = h.server.receive_shares([h.clients[d].share_keys(k) for d, k in dirs.items()])
    d0 = h.ids[0]
    with pytest.raises(SecAggError, match="array"):
        h.clients[d0].mask_input(inbox[d0], np.zeros(h.params.length, dtype=np.float64))
    d1 = h.ids[1]
    with pytest.raises(SecAggError, match="shape"):
        h.clients[d1].mask_input(inbox[d1], np.zeros(3, dtype=h.params.dtype))


# ---- advertised keys ---------------------------------------------------------------------------
def test_forged_advert_rejected_by_server(make_round: MakeRound) -> None:
    # eager checks exclude the forgery before any neighbour sees it (the default, lazy, lets
    # the neighbours abort and then attributes it: test_lazy_advert_checks_...)
    h = make_round(n=10)
    h.with_server(advert_checks="eager")
    bad = h.ids[5]

    def forge(ads: list[AdvertiseKeys]) -> list[AdvertiseKeys]:
        return [
            dataclasses.replace(a, mask_key=_flip(a.mask_key)) if a.device == bad else a
            for a in ads
        ]

    h.run(tamper={"adverts": forge})
    assert "advertised keys" in h.server.rejected[bad]
    assert bad not in h.log["result"].included


def test_trusted_transport_forged_key_still_caught_by_neighbours(make_round: MakeRound) -> None:
    h = make_round(n=10)
    h.with_server(trust_transport=True)
    bad = h.ids[5]

    def forge(ads: list[AdvertiseKeys]) -> list[AdvertiseKeys]:
        fake = KexPrivateKey.generate(np.random.default_rng(3)).public.raw
        return [dataclasses.replace(a, channel_key=fake) if a.device == bad else a for a in ads]

    with pytest.raises(SecAggError, match="signature"):
        h.run(tamper={"adverts": forge})


def test_trusted_transport_round_is_exact_and_still_checks_commitments(
    make_round: MakeRound,
) -> None:
    h = make_round(n=10)
    h.with_server(trust_transport=True)
    total = h.run(skip={"masked": {h.ids[2]}})
    h.assert_exact(total)
    h2 = make_round(n=6)
    h2.with_server(trust_transport=True)
    h2.lie_in_unmask(h2.ids[:4], np.random.default_rng(5))
    with pytest.raises(SecAggError, match="tampered"):
        h2.run()


def test_key_substituted_by_server_detected_by_client(make_round: MakeRound) -> None:
    h = make_round()
    victim, swapped = h.ids[0], None

    def mitm(dirs: dict[Any, KeyDirectory]) -> dict[Any, KeyDirectory]:
        nonlocal swapped
        kd = dirs[victim]
        a = kd.adverts[0]
        swapped = a.device
        fake = KexPrivateKey.generate(np.random.default_rng(9)).public.raw
        dirs[victim] = KeyDirectory(
            victim, (dataclasses.replace(a, channel_key=fake), *kd.adverts[1:])
        )
        return dirs

    with pytest.raises(SecAggError, match="signature"):
        h.run(tamper={"dirs": mitm})
    assert h.clients[victim].phase is ClientPhase.ABORTED


def test_advert_signed_for_another_round_rejected(make_round: MakeRound) -> None:
    h = make_round(seed=7)
    h.with_server(advert_checks="eager")  # lazy: the neighbours catch it (their own check)
    other = make_round(seed=8)  # different session nonce -> different round digest
    foreign = other.clients[other.ids[2]].advertise()
    ads = [c.advertise() for d, c in h.clients.items() if d != h.ids[2]]
    h.server.receive_adverts([*ads, foreign])
    assert "advertised keys" in h.server.rejected[h.ids[2]]


def test_directory_with_non_neighbour_rejected(make_round: MakeRound) -> None:
    h = make_round(n=12, degree=4)
    victim = h.ids[0]
    outsider = next(d for d in h.ids if d != victim and d not in h.params.neighbours[victim])

    def add(dirs: dict[Any, KeyDirectory]) -> dict[Any, KeyDirectory]:
        extra = h.log["adverts"][h.ids.index(outsider)]
        dirs[victim] = KeyDirectory(victim, (*dirs[victim].adverts, extra))
        return dirs

    with pytest.raises(SecAggError, match="non-neighbour"):
        h.run(tamper={"dirs": add})


def test_directory_duplicate_entry_rejected(make_round: MakeRound) -> None:
    h = make_round()
    victim = h.ids[0]

    def dup(dirs: dict[Any, KeyDirectory]) -> dict[Any, KeyDirectory]:
        a = dirs[victim].adverts
        dirs[victim] = KeyDirectory(victim, (*a, a[0]))
        return dirs

    with pytest.raises(SecAggError, match="twice"):
        h.run(tamper={"dirs": dup})


def test_directory_for_someone_else_rejected(make_round: MakeRound) -> None:
    h = make_round()
    a, b = h.ids[0], h.ids[1]

    def swap(dirs: dict[Any, KeyDirectory]) -> dict[Any, KeyDirectory]:
        dirs[a] = dirs[b]
        return dirs

    with pytest.raises(SecAggError, match="another device"):
        h.run(tamper={"dirs": swap})


def test_directory_below_threshold_rejected(make_round: MakeRound) -> None:
    h = make_round()
    victim = h.ids[0]

    def shrink(dirs: dict[Any, KeyDirectory]) -> dict[Any, KeyDirectory]:
        dirs[victim] = KeyDirectory(victim, dirs[victim].adverts[: h.params.threshold - 1])
        return dirs

    with pytest.raises(SecAggError, match="threshold"):
        h.run(tamper={"dirs": shrink})


# ---- shares -------------------------------------------------------------------------------------
def test_tampered_sealed_share_detected(make_round: MakeRound) -> None:
    h = make_round()
    victim = h.ids[3]

    def flip(inbox: dict[Any, ShareInbox]) -> dict[Any, ShareInbox]:
        box = dict(inbox[victim].sealed)
        s = next(iter(box))
        box[s] = _flip(box[s], 5)
        inbox[victim] = ShareInbox(victim, box)
        return inbox

    with pytest.raises(SecAggError, match="authentication"):
        h.run(tamper={"inbox": flip})


def test_share_redirected_to_another_recipient_detected(make_round: MakeRound) -> None:
    h = make_round()
    a = h.ids[0]
    nb = h.params.neighbours[a]

    def redirect(inbox: dict[Any, ShareInbox]) -> dict[Any, ShareInbox]:
        # give `a` a share that sender nb[0] sealed for nb[1], labelled as from nb[0]
        other = h.log["shares"]
        sender = next(m for m in other if m.device == nb[0])
        box = dict(inbox[a].sealed)
        box[nb[0]] = sender.sealed[nb[1]]
        inbox[a] = ShareInbox(a, box)
        return inbox

    with pytest.raises(SecAggError, match="authentication"):
        h.run(tamper={"inbox": redirect})


def test_share_from_unexpected_sender_rejected(make_round: MakeRound) -> None:
    h = make_round(n=12, degree=4)
    a = h.ids[0]
    outsider = next(d for d in h.ids if d != a and d not in h.params.neighbours[a])

    def inject(inbox: dict[Any, ShareInbox]) -> dict[Any, ShareInbox]:
        box = dict(inbox[a].sealed)
        box[outsider] = next(iter(box.values()))
        inbox[a] = ShareInbox(a, box)
        return inbox

    with pytest.raises(SecAggError, match="unexpected"):
        h.run(tamper={"inbox": inject})


def test_shares_addressed_outside_neighbourhood_rejected_by_server(make_round: MakeRound) -> None:
    h = make_round(n=12, degree=4)
    a = h.ids[0]
    outsider = next(d for d in h.ids if d != a and d not in h.params.neighbours[a])

    def widen(msgs: list[Any]) -> list[Any]:
        out = []
        for m in msgs:
            if m.device == a:
                sealed = dict(m.sealed)
                sealed[outsider] = next(iter(sealed.values()))
                m = dataclasses.replace(m, sealed=sealed)
            out.append(m)
        return out

    h.run(tamper={"shares": widen})
    assert "neighbourhood" in h.server.rejected[a]
    assert a not in h.log["result"].included


def test_withheld_share_gives_no_silent_wrong_sum(make_round: MakeRound) -> None:
    h = make_round(n=12, degree=6, length=256)
    a = h.ids[0]

    def withhold(inbox: dict[Any, ShareInbox]) -> dict[Any, ShareInbox]:
        box = dict(inbox[a].sealed)
        box.pop(next(iter(box)))
        inbox[a] = ShareInbox(a, box)
        return inbox

    with pytest.raises(SecAggError, match="out of range"):
        h.run(tamper={"inbox": withhold})


# ---- masked inputs ------------------------------------------------------------------------------
def test_tampered_masked_input_rejected_and_sum_stays_correct(make_round: MakeRound) -> None:
    h = make_round(n=10)
    bad = h.ids[4]

    def bump(msgs: list[MaskedInput]) -> list[MaskedInput]:
        out = []
        for m in msgs:
            if m.device == bad:
                y = m.masked.copy()
                y[0] += 1
                m = MaskedInput(m.device, y, m.tag)
            out.append(m)
        return out

    total = h.run(tamper={"masked": bump})
    res = h.log["result"]
    assert "authentication" in h.server.rejected[bad]
    assert bad not in res.included and bad in res.dropped
    h.assert_exact(total)


def test_masked_input_replayed_under_other_id_rejected(make_round: MakeRound) -> None:
    h = make_round(n=10)
    a, b = h.ids[1], h.ids[2]

    def replay(msgs: list[MaskedInput]) -> list[MaskedInput]:
        src = next(m for m in msgs if m.device == a)
        return [MaskedInput(b, src.masked, src.tag) if m.device == b else m for m in msgs]

    h.run(tamper={"masked": replay})
    assert "authentication" in h.server.rejected[b]


def test_masked_input_wrong_length_rejected(make_round: MakeRound) -> None:
    h = make_round(n=10)
    a = h.ids[1]

    def cut(msgs: list[MaskedInput]) -> list[MaskedInput]:
        return [MaskedInput(m.device, m.masked[:-1], m.tag) if m.device == a else m for m in msgs]

    h.run(tamper={"masked": cut})
    assert "wrong dtype or length" in h.server.rejected[a]


def test_duplicate_masked_input_rejected(make_round: MakeRound) -> None:
    h = make_round(n=10)

    def dup(msgs: list[MaskedInput]) -> list[MaskedInput]:
        return [*msgs, msgs[0]]

    h.run(tamper={"masked": dup})
    assert h.server.rejected[h.log["masked"][0].device] == "duplicate message"


def test_message_from_unknown_device_ignored(make_round: MakeRound) -> None:
    h = make_round(n=10)

    def stranger(msgs: list[MaskedInput]) -> list[MaskedInput]:
        m = msgs[0]
        return [*msgs, MaskedInput("intruder", m.masked, m.tag)]  # type: ignore[arg-type]

    total = h.run(tamper={"masked": stranger})
    assert "intruder" not in h.log["result"].included
    h.assert_exact(total, tuple(h.ids))


# ---- survivor list and consistency check --------------------------------------------------------
def test_inconsistent_survivor_lists_detected(make_round: MakeRound) -> None:
    h = make_round(n=10)
    victim = h.ids[0]

    def lie(reqs: dict[Any, UnmaskRequest]) -> dict[Any, UnmaskRequest]:
        r = reqs[victim]
        reqs[victim] = UnmaskRequest(victim, r.survivors[:-1], r.confirmations)
        return reqs

    with pytest.raises(SecAggError, match="two different survivor lists"):
        h.run(tamper={"unmask_req": lie})


def test_survivor_list_without_me_rejected(make_round: MakeRound) -> None:
    h = make_round(n=10)
    h.server.receive_adverts([c.advertise() for c in h.clients.values()])
    c = h.clients[h.ids[0]]
    c.phase = ClientPhase.SURVIVORS
    with pytest.raises(SecAggError, match="leaves out"):
        c.confirm_survivors(SurvivorsRequest(tuple(h.ids[1:])))


def test_survivor_list_unsorted_or_foreign_rejected(make_round: MakeRound) -> None:
    h = make_round(n=10)
    c = h.clients[h.ids[0]]
    c.phase = ClientPhase.SURVIVORS
    with pytest.raises(SecAggError, match="sorted"):
        c.confirm_survivors(SurvivorsRequest(tuple(reversed(h.ids))))
    c.phase = ClientPhase.SURVIVORS
    with pytest.raises(SecAggError, match="roster"):
        c.confirm_survivors(SurvivorsRequest((*h.ids, "zz-outsider")))  # type: ignore[arg-type]


def test_too_small_survivor_list_rejected(make_round: MakeRound) -> None:
    h = make_round(n=10, min_survivors=5)
    c = h.clients[h.ids[0]]
    c.phase = ClientPhase.SURVIVORS
    with pytest.raises(SecAggError, match="survivors"):
        c.confirm_survivors(SurvivorsRequest(tuple(h.ids[:3])))


def test_forged_confirmation_detected(make_round: MakeRound) -> None:
    h = make_round(n=10)
    victim = h.ids[0]

    def forge(reqs: dict[Any, UnmaskRequest]) -> dict[Any, UnmaskRequest]:
        r = reqs[victim]
        conf = dict(r.confirmations)
        k = next(iter(conf))
        conf[k] = _flip(conf[k])
        reqs[victim] = UnmaskRequest(victim, r.survivors, conf)
        return reqs

    with pytest.raises(SecAggError, match="does not verify"):
        h.run(tamper={"unmask_req": forge})


def test_missing_confirmations_abort(make_round: MakeRound) -> None:
    h = make_round(n=10)
    victim = h.ids[0]

    def strip(reqs: dict[Any, UnmaskRequest]) -> dict[Any, UnmaskRequest]:
        r = reqs[victim]
        keep = dict(list(r.confirmations.items())[: h.params.threshold - 2])
        reqs[victim] = UnmaskRequest(victim, r.survivors, keep)
        return reqs

    with pytest.raises(SecAggError, match="confirmed"):
        h.run(tamper={"unmask_req": strip})


def test_confirmation_outside_neighbourhood_rejected_by_server(make_round: MakeRound) -> None:
    h = make_round(n=12, degree=4)
    a = h.ids[0]
    outsider = next(d for d in h.ids if d != a and d not in h.params.neighbours[a])

    def widen(msgs: list[SurvivorsConfirmation]) -> list[SurvivorsConfirmation]:
        return [
            SurvivorsConfirmation(m.device, {**m.tags, outsider: bytes(16)}) if m.device == a else m
            for m in msgs
        ]

    h.run(tamper={"confirm": widen})
    assert "neighbourhood" in h.server.rejected[a]


# ---- unmasking --------------------------------------------------------------------------------
def test_tampered_unmask_response_rejected(make_round: MakeRound) -> None:
    h = make_round(n=10)
    bad = h.ids[6]

    def flip(msgs: list[UnmaskResponse]) -> list[UnmaskResponse]:
        out = []
        for m in msgs:
            if m.device == bad:
                seeds = dict(m.seed_shares)
                k = next(iter(seeds))
                seeds[k] = _flip(seeds[k], 32)
                m = dataclasses.replace(m, seed_shares=seeds)
            out.append(m)
        return out

    total = h.run(tamper={"unmask": flip})  # enough other holders: still correct
    assert "authentication" in h.server.rejected[bad]
    h.assert_exact(total)


def test_lying_share_holder_outvoted_by_commitment(make_round: MakeRound) -> None:
    h = make_round(n=10)
    liar = h.ids[3]
    c = h.clients[liar]
    # the holder itself lies (valid MAC, wrong share value): commitments catch it.
    orig = c.unmask

    def lie(req: UnmaskRequest) -> UnmaskResponse:
        c._held = {d: ((s + 1) % (2**256 + 297), k) for d, (s, k) in c._held.items()}
        return orig(req)

    c.unmask = lie  # type: ignore[method-assign]
    total = h.run()
    h.assert_exact(total, tuple(h.ids))


def test_lying_holders_without_honest_quorum_abort(make_round: MakeRound) -> None:
    h = make_round(n=6)  # complete graph, k=5, t=3
    h.lie_in_unmask(h.ids[:4], np.random.default_rng(5))  # independent random lies
    with pytest.raises(SecAggError, match=r"inconsistent|tampered"):
        h.run()


def test_unmask_request_for_other_device_rejected(make_round: MakeRound) -> None:
    h = make_round(n=10)
    a, b = h.ids[0], h.ids[1]

    def swap(reqs: dict[Any, UnmaskRequest]) -> dict[Any, UnmaskRequest]:
        reqs[a] = reqs[b]
        return reqs

    with pytest.raises(SecAggError, match="another device"):
        h.run(tamper={"unmask_req": swap})


def test_aborted_client_answers_nothing(make_round: MakeRound) -> None:
    h = make_round()
    c = h.clients[h.ids[0]]
    c.advertise()
    with pytest.raises(SecAggError):
        c.share_keys(KeyDirectory(h.ids[1], ()))
    with pytest.raises(SecAggError, match="phase"):
        c.share_keys(KeyDirectory(h.ids[0], ()))


def test_dealer_with_inconsistent_shares_aborts_and_is_named(make_round: MakeRound) -> None:
    from ztfm.secagg import shamir

    h = make_round(n=6)
    dealer = h.ids[1]
    c = h.clients[dealer]
    real_split = shamir.split

    def bad_split(secret: bytes, threshold: int, xs: Any, rng: Any) -> dict[int, int]:
        out = real_split(secret, threshold, xs, rng)
        # a degree-t term: no t shares agree with any degree t-1 polynomial through the secret
        return {x: (y + 7919 * x**threshold) % shamir.PRIME for x, y in out.items()}

    import ztfm.secagg.client as client_mod

    orig = c.share_keys

    def share(kd: KeyDirectory) -> Any:
        client_mod.shamir.split = bad_split  # type: ignore[assignment]
        try:
            return orig(kd)
        finally:
            client_mod.shamir.split = real_split  # type: ignore[assignment]

    c.share_keys = share  # type: ignore[method-assign]
    with pytest.raises(SecAggError, match=dealer):
        h.run()


@pytest.mark.parametrize("trust_transport", [False, True])
def test_lazy_advert_checks_attribute_a_forgery_after_neighbours_abort(
    make_round: MakeRound, trust_transport: bool
) -> None:
    # also when the server trusts the transport (no MACs): a forged advert is still named
    h = make_round(n=12, degree=4)
    h.with_server(advert_checks="lazy", trust_transport=trust_transport)
    bad = h.ids[5]
    fake = KexPrivateKey.generate(np.random.default_rng(3)).public.raw
    ads = [c.advertise() for c in h.clients.values()]
    ads = [dataclasses.replace(a, channel_key=fake) if a.device == bad else a for a in ads]
    dirs = h.server.receive_adverts(ads)
    assert bad not in h.server.rejected  # lazy: not checked yet
    shares, aborted = [], []
    for d, kd in dirs.items():
        try:
            shares.append(h.clients[d].share_keys(kd))
        except SecAggError:
            aborted.append(d)
    assert set(aborted) == set(h.params.neighbours[bad])
    inbox = h.server.receive_shares(shares)
    assert "advertised keys" in h.server.rejected[bad]
    assert bad not in inbox


def test_lazy_advert_checks_verify_nothing_without_dropouts(make_round: MakeRound) -> None:
    h = make_round(n=10)
    h.with_server(advert_checks="lazy")
    total = h.run()
    assert h.server._verified == set()
    h.assert_exact(total, tuple(h.ids))


def test_unknown_advert_check_mode_rejected(make_round: MakeRound) -> None:
    h = make_round()
    with pytest.raises(SecAggError, match="advert_checks"):
        SecAggServer(h.params, h.identities, h.server_key, advert_checks="never")  # type: ignore[arg-type]
