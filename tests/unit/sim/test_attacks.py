"""Poisoning attack profiles: what each one sends, determinism, config and input checks."""

from __future__ import annotations

import numpy as np
import pytest

from ztfm.errors import ConfigError, DataError
from ztfm.sim.attacks import (
    ALIE,
    ATTACKS,
    IPM,
    Backdoor,
    DataAttack,
    FreeRider,
    GaussianNoise,
    LabelFlip,
    MinMax,
    MinSum,
    ModelReplacement,
    Scaling,
    SignFlip,
    Sybil,
    UpdateAttack,
    alie_z,
    make_attack,
)

UPDATE_ATTACKS = [n for n in sorted(ATTACKS) if n not in {"label_flip", "backdoor"}]


def _round(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    benign = 1.0 + 0.2 * rng.normal(size=(20, 6))
    own = 1.0 + 0.2 * rng.normal(size=(4, 6))
    return own, benign


@pytest.mark.parametrize("name", UPDATE_ATTACKS)
def test_update_attacks_shape_finite_deterministic(name: str) -> None:
    own, benign = _round()
    atk = make_attack(name)
    assert isinstance(atk, UpdateAttack) and atk.name
    a = atk.craft(own, benign, np.random.default_rng(1))
    b = atk.craft(own, benign, np.random.default_rng(1))
    assert a.shape == own.shape and np.isfinite(a).all()
    assert np.array_equal(a, b)
    assert not np.allclose(a, own)  # the attack changes what is sent
    c = atk.craft(own, None, np.random.default_rng(1))  # non-omniscient fallback
    assert c.shape == own.shape and np.isfinite(c).all()


# Attacks that never read the benign updates, so bad benign input cannot reach them.
IGNORE_BENIGN = {"sign_flip", "scaling", "gaussian", "free_rider", "sybil"}
OWN_CASES = ["nan_own", "1d_own", "empty_own", "int_own"]
BENIGN_CASES = ["nan_benign", "mismatched_d"]
BAD_INPUT_COMBOS = [
    (name, case)
    for name in UPDATE_ATTACKS
    for case in OWN_CASES + ([] if name in IGNORE_BENIGN else BENIGN_CASES)
]


@pytest.mark.parametrize(("name", "case"), BAD_INPUT_COMBOS)
def test_update_attacks_reject_bad_input(name: str, case: str) -> None:
    own, benign = _round()
    b: np.ndarray | None = benign
    if case == "nan_own":
        own[0, 0] = np.nan
    elif case == "1d_own":
        own = own[0]
    elif case == "empty_own":
        own = own[:0]
    elif case == "int_own":
        own = own.astype(int)
    elif case == "nan_benign":
        benign[1, 1] = np.inf
    elif case == "mismatched_d":
        b = benign[:, :3]
    atk = make_attack(name)
    assert isinstance(atk, UpdateAttack)
    with pytest.raises(DataError):
        atk.craft(own, b, np.random.default_rng(0))


def test_sign_flip_scaling_ipm_values() -> None:
    own, benign = _round()
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(SignFlip(scale=2.0).craft(own, None, rng), -2.0 * own)
    np.testing.assert_allclose(Scaling(factor=5.0).craft(own, None, rng), 5.0 * own)
    ipm = IPM(epsilon=0.3).craft(own, benign, rng)
    np.testing.assert_allclose(ipm, np.tile(-0.3 * benign.mean(axis=0), (4, 1)))


def test_alie_z_and_vector() -> None:
    assert alie_z(50, 10) == pytest.approx(0.4677, abs=1e-3)
    own, benign = _round()
    mal = ALIE(z=1.5).craft(own, benign, np.random.default_rng(0))
    np.testing.assert_allclose(mal[0], benign.mean(0) - 1.5 * benign.std(0))
    assert np.ptp(mal, axis=0).max() == 0.0  # all attackers send the same vector
    noisy = ALIE(z=1.5, noise=0.5).craft(own, benign, np.random.default_rng(0))
    assert np.ptp(noisy, axis=0).min() > 0  # no longer clones
    np.testing.assert_allclose(noisy.mean(axis=0), mal[0], atol=0.5)
    for n, f in ((1, 1), (10, 0), (10, 10)):
        with pytest.raises(ConfigError):
            alie_z(n, f)


@pytest.mark.parametrize("perturbation", ["std", "unit", "sign"])
def test_min_max_is_the_largest_step_inside_the_benign_spread(perturbation: str) -> None:
    own, benign = _round()
    mal = MinMax(perturbation=perturbation).craft(own, benign, np.random.default_rng(0))[0]
    pd = np.linalg.norm(benign[:, None] - benign[None], axis=2)
    d = np.linalg.norm(benign - mal, axis=1)
    assert d.max() <= pd.max() * (1 + 1e-6)
    assert d.max() >= pd.max() * 0.99  # binary search pushed it to the edge
    assert np.linalg.norm(mal - benign.mean(0)) > 0.1


def test_min_sum_constraint() -> None:
    own, benign = _round()
    mal = MinSum().craft(own, benign, np.random.default_rng(0))[0]
    pd = np.linalg.norm(benign[:, None] - benign[None], axis=2)
    s = (np.linalg.norm(benign - mal, axis=1) ** 2).sum()
    assert s <= (pd**2).sum(axis=1).max() * (1 + 1e-6)
    assert s >= (pd**2).sum(axis=1).max() * 0.99


def test_sybil_clones() -> None:
    own, benign = _round()
    out = Sybil().craft(own, benign, np.random.default_rng(0))
    assert (out == own[0]).all()
    inner = make_attack("sybil", inner="sign_flip", inner_params={"scale": 3.0})
    out = inner.craft(own, benign, np.random.default_rng(0))  # type: ignore[union-attr]
    np.testing.assert_allclose(out, np.tile(-3.0 * own[0], (4, 1)))


def test_free_rider_and_gaussian() -> None:
    own, _ = _round()
    rng = np.random.default_rng(0)
    assert (FreeRider().craft(own, None, rng) == 0).all()
    noisy = FreeRider(sigma=1e-3).craft(own, None, rng)
    assert 0 < np.abs(noisy).max() < 0.01
    g = GaussianNoise(sigma=2.0).craft(np.zeros((500, 4)), None, rng)
    assert 1.8 < g.std() < 2.2
    add = GaussianNoise(sigma=1e-9, additive=True).craft(own, None, rng)
    np.testing.assert_allclose(add, own, atol=1e-6)


def test_label_flip_mixes_attack_rows_in_as_benign() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(300, 5)).astype(np.float32)
    attack = (100.0 + rng.normal(size=(40, 5))).astype(np.float32)
    atk = make_attack("label_flip", fraction=0.25)
    assert isinstance(atk, DataAttack)
    out = atk.poison(train, attack, np.random.default_rng(1))
    assert out.dtype == np.float32 and out.shape == (400, 5)
    assert int((out[:, 0] > 50).sum()) == 100
    assert np.array_equal(out, atk.poison(train, attack, np.random.default_rng(1)))


def test_backdoor_targets_one_kind_with_trigger() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(100, 4))
    attack = np.vstack([np.full((10, 4), 50.0), np.full((10, 4), -50.0)])
    kinds = np.array(["ddos"] * 10 + ["scan"] * 10)
    bd = Backdoor(target_kind="scan", fraction=0.5, trigger=((2, 7.0),))
    out = bd.poison(train, attack, rng, kinds)
    poisoned = out[np.abs(out[:, 0]) > 10]
    assert (
        len(poisoned) == 100 and (poisoned[:, 0] == -50.0).all() and (poisoned[:, 2] == 7.0).all()
    )
    with pytest.raises(DataError, match="attack_kinds"):
        bd.poison(train, attack, rng)
    with pytest.raises(DataError, match="no attack rows"):
        Backdoor(target_kind="mirai").poison(train, attack, rng, kinds)
    with pytest.raises(DataError, match="trigger feature"):
        Backdoor(trigger=((9, 1.0),)).poison(train, attack, rng)
    built = make_attack("backdoor", target_kind="scan", trigger={"2": 7.0})
    assert isinstance(built, Backdoor) and built.trigger == ((2, 7.0),)


@pytest.mark.parametrize("name", ["label_flip", "backdoor"])
def test_data_attacks_reject_bad_rows(name: str) -> None:
    atk = make_attack(name)
    assert isinstance(atk, DataAttack)
    train = np.zeros((10, 3))
    for t, a in [
        (train, np.zeros((5, 4))),
        (train, np.zeros((0, 3))),
        (np.full((10, 3), np.nan), np.zeros((5, 3))),
        (train, np.zeros(3)),
        (train.astype(int), np.zeros((5, 3))),
    ]:
        with pytest.raises(DataError):
            atk.poison(t, a, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("nonexistent", {}),
        ("sign_flip", {"scale": 0.0}),
        ("sign_flip", {"scale": float("nan")}),
        ("scaling", {"factor": -1.0}),
        ("gaussian", {"sigma": 0.0}),
        ("alie", {"z": -1.0}),
        ("alie", {"noise": -0.1}),
        ("ipm", {"epsilon": float("inf")}),
        ("min_max", {"perturbation": "cosine"}),
        ("min_sum", {"iters": 0}),
        ("free_rider", {"sigma": -1.0}),
        ("label_flip", {"fraction": 1.0}),
        ("label_flip", {"fraction": 0.0}),
        ("backdoor", {"trigger": [1, 2]}),
        ("backdoor", {"trigger": {"x": 1.0}}),
        ("backdoor", {"trigger": {"1": float("nan")}}),
        ("sybil", {"inner": "label_flip"}),
        ("sybil", {"inner": 3}),
        ("sybil", {"clones": 3}),
        ("scaling", {"boost": 3}),
        ("scaling", {"name": "x"}),
        ("model_replacement", {"factor": 0.0}),
        ("model_replacement", {"factor": float("nan")}),
        ("model_replacement", {"factor": "10"}),
        ("model_replacement", {"server_lr": -1.0}),
        ("model_replacement", {"data": "alie"}),
        ("model_replacement", {"data": "model_replacement"}),
        ("model_replacement", {"data": 3}),
        ("model_replacement", {"data_params": [0.5]}),
        ("model_replacement", {"data_params": {"fraction": 1.0}}),
        ("model_replacement", {"data": "backdoor", "data_params": {"trigger": [1]}}),
        ("model_replacement", {"boost": 3}),
        ("model_replacement", {"fraction": 0.2, "data_params": {"fraction": 0.3}}),
        ("model_replacement", {"fraction": 1.5}),
    ],
)
def test_make_attack_rejects(name: str, params: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        make_attack(name, **params)


def test_minmax_minsum_names() -> None:
    assert MinMax().name == "min_max" and MinSum().name == "min_sum"
    assert LabelFlip().name == "label_flip"


def test_model_replacement_poisons_the_rows_then_boosts_the_update() -> None:
    """Bagdasaryan et al.: the attacker trains on poisoned rows and boosts what it sends so that
    the mean of the round becomes its model."""
    atk = make_attack("model_replacement")
    assert isinstance(atk, ModelReplacement) and atk.name == "model_replacement"
    assert isinstance(atk, DataAttack) and isinstance(atk, UpdateAttack)  # both halves
    # data half: exactly the label flip (50% default) on the attacker's own rows
    rng = np.random.default_rng(0)
    train = rng.normal(size=(300, 5)).astype(np.float32)
    attack = (100.0 + rng.normal(size=(40, 5))).astype(np.float32)
    poisoned = atk.poison(train, attack, np.random.default_rng(1))
    assert poisoned.shape == (600, 5) and int((poisoned[:, 0] > 50).sum()) == 300
    np.testing.assert_array_equal(
        poisoned, LabelFlip(fraction=0.5).poison(train, attack, np.random.default_rng(1))
    )
    # update half: 4 attackers among 24 participants, boost n / k = 6
    own, benign = _round()
    sent = atk.craft(own, benign, np.random.default_rng(0))
    np.testing.assert_allclose(sent, 6.0 * own)
    # the mean the server applies (lr 1) is the attackers' mean update plus the honest 1/n share
    applied = np.vstack([sent, benign]).mean(axis=0)
    np.testing.assert_allclose(applied, own.mean(axis=0) + benign.sum(axis=0) / 24)
    # a server learning rate of 0.5 doubles the boost; alone (no benign updates) n = k
    half = make_attack("model_replacement", server_lr=0.5)
    np.testing.assert_allclose(half.craft(own, benign, rng), 12.0 * own)  # type: ignore[union-attr]
    np.testing.assert_allclose(atk.craft(own, None, rng), own)
    # flat parameters (a TOML [attacks] params table) go to the data attack
    flat = make_attack("model_replacement", fraction=0.3, factor=4.0)
    assert isinstance(flat, ModelReplacement) and flat.data == LabelFlip(fraction=0.3)
    assert flat.factor == 4.0
    # the former alias's key still works: a fixed factor
    fixed = make_attack("model_replacement", factor=10.0)
    np.testing.assert_allclose(fixed.craft(own, benign, rng), 10.0 * own)  # type: ignore[union-attr]


def test_model_replacement_with_a_backdoor() -> None:
    atk = make_attack(
        "model_replacement",
        data="backdoor",
        data_params={"target_kind": "scan", "fraction": 0.5, "trigger": {"2": 7.0}},
        factor=3.0,
    )
    assert isinstance(atk, ModelReplacement) and isinstance(atk.data, Backdoor)
    train = np.zeros((100, 4))
    attack = np.vstack([np.full((10, 4), 50.0), np.full((10, 4), -50.0)])
    kinds = np.array(["ddos"] * 10 + ["scan"] * 10)
    out = atk.poison(train, attack, np.random.default_rng(0), attack_kinds=kinds)
    poisoned = out[np.abs(out[:, 0]) > 10]
    assert len(poisoned) == 100 and (poisoned[:, 0] == -50.0).all()
    assert (poisoned[:, 2] == 7.0).all()
    with pytest.raises(DataError, match="attack_kinds"):
        atk.poison(train, attack, np.random.default_rng(0))
    with pytest.raises(ConfigError):
        ModelReplacement(data=Scaling())  # type: ignore[arg-type]
