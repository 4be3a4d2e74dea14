"""Poisoning attack profiles for simulations and benchmarks (pure; randomness via ``rng``).

Two kinds:

* ``UpdateAttack`` (model poisoning): the colluding attackers replace the updates they send.
  ``craft(own, benign, rng)`` gets the attackers' own honestly trained updates ``own`` (k, d) and,
  for omniscient attacks, the benign updates of the round ``benign`` (m, d) or None; it returns
  the k malicious updates. Attacks that need benign statistics fall back to ``own`` (the
  attackers' own honest updates estimate the benign distribution, as in ALIE's threat model).
* ``DataAttack`` (data poisoning): transforms the training rows of the attacker's device before
  it trains honestly. The on-device model is an autoencoder trained on benign rows only, so
  "label flipping" means feeding attack traffic in as if it were benign: the model learns to
  reconstruct it and scores it as normal.
* ``ModelReplacement`` is both: a data attack poisons the attacker's rows, it trains on them, and
  the update it sends is boosted so that the aggregate becomes the attacker's model. Callers apply
  every kind an attack has (``isinstance`` against both protocols, not one or the other).

``make_attack(name, **params)`` builds any of them by name (for TOML configs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from scipy.stats import norm as _normal

from ztfm.errors import ConfigError, DataError


@runtime_checkable
class UpdateAttack(Protocol):
    @property
    def name(self) -> str: ...

    def craft(
        self, own: np.ndarray, benign: np.ndarray | None, rng: np.random.Generator
    ) -> np.ndarray: ...


@runtime_checkable
class DataAttack(Protocol):
    @property
    def name(self) -> str: ...

    def poison(
        self,
        train: np.ndarray,
        attack_rows: np.ndarray,
        rng: np.random.Generator,
        attack_kinds: np.ndarray | None = None,
    ) -> np.ndarray: ...


Attack = UpdateAttack | DataAttack  # ModelReplacement is both


def _check_stack(x: object, what: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.dtype.kind != "f" or x.shape[0] == 0:
        raise DataError(f"{what} must be a non-empty float (n, d) array")
    if not np.isfinite(x).all():
        raise DataError(f"{what} contains NaN/Inf")
    return x.astype(np.float64)


def _reference(own: np.ndarray, benign: np.ndarray | None) -> np.ndarray:
    o = _check_stack(own, "own updates")
    if benign is None:
        return o
    b = _check_stack(benign, "benign updates")
    if b.shape[1] != o.shape[1]:
        raise DataError(f"benign updates have d={b.shape[1]}, own have d={o.shape[1]}")
    return b


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


# --- model poisoning ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SignFlip:
    """Send ``-scale * own``: pushes the model against the benign direction."""

    scale: float = 1.0
    name: str = field(default="sign_flip", init=False)

    def __post_init__(self) -> None:
        _positive("scale", self.scale)

    def craft(
        self, own: np.ndarray, benign: np.ndarray | None, rng: np.random.Generator
    ) -> np.ndarray:
        return -self.scale * _check_stack(own, "own updates")


@dataclass(frozen=True, slots=True)
class Scaling:
    """Boost the attacker's own (honestly trained) update by ``factor``: a pure boost, nothing
    poisoned. ``ModelReplacement`` (``"model_replacement"``) is the poisoned-then-boosted attack
    of Bagdasaryan et al. 2020."""

    factor: float = 10.0
    name: str = field(default="scaling", init=False)

    def __post_init__(self) -> None:
        _positive("factor", self.factor)

    def craft(
        self, own: np.ndarray, benign: np.ndarray | None, rng: np.random.Generator
    ) -> np.ndarray:
        return self.factor * _check_stack(own, "own updates")


@dataclass(frozen=True, slots=True)
class GaussianNoise:
    """Send N(0, sigma^2) noise instead of an update (or add it to ``own`` if ``additive``)."""

    sigma: float = 1.0
    additive: bool = False
    name: str = field(default="gaussian", init=False)

    def __post_init__(self) -> None:
        _positive("sigma", self.sigma)

    def craft(
        self, own: np.ndarray, benign: np.ndarray | None, rng: np.random.Generator
    ) -> np.ndarray:
        o = _check_stack(own, "own updates")
        noise = rng.normal(0.0, self.sigma, size=o.shape)
        return o + noise if self.additive else noise


def alie_z(n: int, f: int) -> float:
    """ALIE's z_max (Baruch et al. 2019): the largest shift (in benign standard deviations) that
    still keeps the attackers inside the majority seen by median-like rules."""
    if n < 2 or not 0 < f < n:
        raise ConfigError(f"ALIE needs n >= 2 and 0 < f < n, got n={n}, f={f}")
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    return float(_normal.ppf(min(max(p, 1e-6), 1 - 1e-6)))


@dataclass(frozen=True, slots=True)
class ALIE:
    """A Little Is Enough (Baruch et al. 2019): every attacker sends ``mu - z * sigma``
    (coordinate-wise mean and std of the benign or own updates). ``z=None`` uses ``alie_z(n, f)``
    with n = benign + attackers. ``noise > 0`` adds per-attacker Gaussian noise of ``noise``
    benign standard deviations so that the attackers are no longer exact clones."""

    z: float | None = None
    noise: float = 0.0
    name: str = field(default="alie", init=False)

    def __post_init__(self) -> None:
        if self.z is not None:
            _positive("z", self.z)
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ConfigError(f"noise must be >= 0, got {self.noise!r}")

    def craft(
        self, own: np.ndarray, benign: np.ndarray | None, rng: np.random.Generator
    ) -> np.ndarray:
        ref = _reference(own, benign)
        k = own.shape[0]
        n = k + (0 if benign is None else ref.shape[0])
        z = self.z if self.z is not None else max(alie_z(max(n, k + 1), k), 0.1)
        sigma = ref.std(axis=0)
        out = np.tile(ref.mean(axis=0) - z * sigma, (k, 1))
        if self.noise > 0:  # adaptive variant: dodge clone detection
            out = out + self.noise * sigma[None, :] * rng.normal(size=out.shape)
        return out


@dataclass(frozen=True, slots=True)
class IPM:
    """Inner Product Manipulation (Xie et al. 2019): send ``-epsilon * mean(benign)``; a small
    epsilon (0.1-0.5) evades distance checks, a large one (> n/f - 1) flips the mean."""

    epsilon: float = 0.5
    name: str = field(default="ipm", init=False)

    def __post_init__(self) -> None:
        _positive("epsilon", self.epsilon)

    def craft(
        self, own: np.ndarray, benign: np.ndarray | None, rng: np.random.Generator
    ) -> np.ndarray:
        ref = _reference(own, benign)
        return np.tile(-self.epsilon * ref.mean(axis=0), (own.shape[0], 1))


def _perturbation(ref: np.ndarray, kind: str) -> np.ndarray:
    mu: np.ndarray = ref.mean(axis=0)
    if kind == "std":
        return np.asarray(-ref.std(axis=0), dtype=np.float64)
    if kind == "unit":
        n = float(np.linalg.norm(mu))
        return -mu / n if n > 0 else np.zeros_like(mu)
    if kind == "sign":
        return np.asarray(-np.sign(mu), dtype=np.float64)
    raise ConfigError(f"perturbation must be std, unit or sign, got {kind!r}")


@dataclass(frozen=True, slots=True)
class _Shejwalkar:
    """Min-max / min-sum (Shejwalkar & Houmansadr 2021): ``mu + gamma * p`` with the largest
    gamma (binary search) that keeps the malicious update within the benign spread."""

    perturbation: str = "std"
    gamma_init: float = 10.0
    iters: int = 30
    name: str = "min_max"

    def __post_init__(self) -> None:
        _positive("gamma_init", self.gamma_init)
        if self.perturbation not in {"std", "unit", "sign"}:
            raise ConfigError(f"perturbation must be std, unit or sign, got {self.perturbation!r}")
        if not isinstance(self.iters, int) or isinstance(self.iters, bool) or self.iters < 1:
            raise ConfigError(f"iters must be an integer >= 1, got {self.iters!r}")

    def _ok(self, m: np.ndarray, ref: np.ndarray, pd: np.ndarray) -> bool:
        d = np.linalg.norm(ref - m[None, :], axis=1)
        if self.name == "min_max":
            return bool(d.max() <= pd.max())
        return bool((d**2).sum() <= (pd**2).sum(axis=1).max())

    def craft(
        self, own: np.ndarray, benign: np.ndarray | None, rng: np.random.Generator
    ) -> np.ndarray:
        ref = _reference(own, benign)
        mu = ref.mean(axis=0)
        p = _perturbation(ref, self.perturbation)
        pd = np.linalg.norm(ref[:, None, :] - ref[None, :, :], axis=2)
        lo, hi = 0.0, self.gamma_init
        while self._ok(mu + hi * p, ref, pd) and hi < 1e12:  # grow until it breaks
            lo, hi = hi, hi * 2
        for _ in range(self.iters):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if self._ok(mu + mid * p, ref, pd) else (lo, mid)
        return np.tile(mu + lo * p, (own.shape[0], 1))


def MinMax(perturbation: str = "std", gamma_init: float = 10.0, iters: int = 30) -> _Shejwalkar:
    """Min-max: the malicious update's largest distance to a benign one stays <= the largest
    benign pairwise distance."""
    return _Shejwalkar(perturbation, gamma_init, iters, "min_max")


def MinSum(perturbation: str = "std", gamma_init: float = 10.0, iters: int = 30) -> _Shejwalkar:
    """Min-sum: the malicious update's sum of squared distances to benign ones stays <= the
    largest such sum of a benign update."""
    return _Shejwalkar(perturbation, gamma_init, iters, "min_sum")


@dataclass(frozen=True, slots=True)
class Sybil:
    """Sybil clones: every attacker sends the same vector, the first attacker's update after
    ``inner`` (if any). Many identities, one voice."""

    inner: UpdateAttack | None = None
    name: str = field(default="sybil", init=False)

    def craft(
        self, own: np.ndarray, benign: np.ndarray | None, rng: np.random.Generator
    ) -> np.ndarray:
        o = _check_stack(own, "own updates")
        first = o if self.inner is None else self.inner.craft(o, benign, rng)
        return np.tile(first[0], (o.shape[0], 1))


@dataclass(frozen=True, slots=True)
class FreeRider:
    """Free riders take the model without training: send a zero update (``sigma=0``) or small
    noise that looks like an update (``sigma>0``, Lin et al. 2019 'disguised' free riders)."""

    sigma: float = 0.0
    name: str = field(default="free_rider", init=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ConfigError(f"sigma must be >= 0, got {self.sigma!r}")

    def craft(
        self, own: np.ndarray, benign: np.ndarray | None, rng: np.random.Generator
    ) -> np.ndarray:
        o = _check_stack(own, "own updates")
        if self.sigma == 0:
            return np.zeros_like(o)
        return rng.normal(0.0, self.sigma, size=o.shape)


# --- data poisoning ---------------------------------------------------------------------------
def _check_rows(train: object, attack_rows: object) -> tuple[np.ndarray, np.ndarray]:
    t = _check_stack(train, "training rows")
    a = _check_stack(attack_rows, "attack rows")
    if a.shape[1] != t.shape[1]:
        raise DataError(f"attack rows have {a.shape[1]} features, training rows {t.shape[1]}")
    return t, a


def _check_fraction(fraction: float) -> None:
    if not 0 < fraction < 1:
        raise ConfigError(f"fraction must be in (0, 1), got {fraction!r}")


def _mix_in(
    train: np.ndarray,
    t: np.ndarray,
    a: np.ndarray,
    fraction: float,
    rng: np.random.Generator,
    prepare: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Sample attack rows so they are ``fraction`` of the result, optionally ``prepare`` them,
    and shuffle them into the training rows (in ``train``'s dtype)."""
    k = max(1, round(fraction / (1 - fraction) * t.shape[0]))
    picked = a[rng.integers(0, a.shape[0], size=k)]
    if prepare is not None:
        picked = prepare(picked)
    out = np.vstack([t, picked])
    return out[rng.permutation(out.shape[0])].astype(train.dtype)


@dataclass(frozen=True, slots=True)
class LabelFlip:
    """Label flipping for a benign-only autoencoder: the attacker adds its own attack traffic to
    its training rows as if it were benign, ``fraction`` of the poisoned set (0 < fraction < 1).
    The rows are sampled with ``rng`` and shuffled into the benign ones."""

    fraction: float = 0.5
    name: str = field(default="label_flip", init=False)

    def __post_init__(self) -> None:
        _check_fraction(self.fraction)

    def poison(
        self,
        train: np.ndarray,
        attack_rows: np.ndarray,
        rng: np.random.Generator,
        attack_kinds: np.ndarray | None = None,
    ) -> np.ndarray:
        t, a = _check_rows(train, attack_rows)
        return _mix_in(train, t, a, self.fraction, rng)


@dataclass(frozen=True, slots=True)
class Backdoor:
    """Make one attack type look benign: train on rows of ``target_kind`` (all attack rows if
    ``None``) as benign. With ``trigger`` (feature index -> value), the trigger is stamped on the
    poisoned rows so that only attack traffic carrying the trigger is learned as normal."""

    target_kind: str | None = None
    fraction: float = 0.3
    trigger: tuple[tuple[int, float], ...] = ()
    name: str = field(default="backdoor", init=False)

    def __post_init__(self) -> None:
        _check_fraction(self.fraction)
        for idx, val in self.trigger:
            if not isinstance(idx, int) or idx < 0 or not math.isfinite(val):
                raise ConfigError(f"bad trigger entry ({idx!r}, {val!r})")

    def stamp(self, rows: np.ndarray) -> np.ndarray:
        """Put the trigger on ``rows`` (what the attacker does to its traffic at attack time)."""
        out = np.array(rows, copy=True)
        for idx, val in self.trigger:
            if idx >= out.shape[1]:
                raise DataError(f"trigger feature {idx} out of range ({out.shape[1]} features)")
            out[:, idx] = val
        return out

    def poison(
        self,
        train: np.ndarray,
        attack_rows: np.ndarray,
        rng: np.random.Generator,
        attack_kinds: np.ndarray | None = None,
    ) -> np.ndarray:
        t, a = _check_rows(train, attack_rows)
        if self.target_kind is not None:
            if attack_kinds is None or attack_kinds.shape != (a.shape[0],):
                raise DataError("a targeted backdoor needs attack_kinds, one per attack row")
            a = a[attack_kinds == self.target_kind]
            if a.shape[0] == 0:
                raise DataError(f"no attack rows of kind {self.target_kind!r}")
        return _mix_in(train, t, a, self.fraction, rng, self.stamp)


# --- data + model poisoning -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ModelReplacement:
    """Model replacement (Bagdasaryan et al. 2020): train on a poisoned objective, then boost
    the update so that the global model becomes the attacker's.

    Both a ``DataAttack`` and an ``UpdateAttack``: ``poison`` is the ``data`` attack (label flip
    by default, or a backdoor) on the attacker's own training rows; ``craft`` sends
    ``factor * own``. With ``factor=None`` the factor is ``n / (server_lr * k)`` for k attackers
    among n participants of the round (``own`` plus ``benign``; without ``benign``, n = k): under
    an equal-weight mean the k boosted updates then add the attackers' mean update in full, so
    the new global model is the attackers' mean model plus the honest updates' 1/n share."""

    data: DataAttack = field(default_factory=LabelFlip)
    factor: float | None = None
    server_lr: float = 1.0
    name: str = field(default="model_replacement", init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.data, DataAttack) or isinstance(self.data, UpdateAttack):
            raise ConfigError(f"model_replacement: data must be a data attack, got {self.data!r}")
        if self.factor is not None:
            _positive("factor", self.factor)
        _positive("server_lr", self.server_lr)

    def poison(
        self,
        train: np.ndarray,
        attack_rows: np.ndarray,
        rng: np.random.Generator,
        attack_kinds: np.ndarray | None = None,
    ) -> np.ndarray:
        return self.data.poison(train, attack_rows, rng, attack_kinds=attack_kinds)

    def boost(self, k: int, n: int) -> float:
        """The factor applied to each of ``k`` attackers' updates among ``n`` participants."""
        if self.factor is not None:
            return self.factor
        return n / (self.server_lr * k)

    def craft(
        self, own: np.ndarray, benign: np.ndarray | None, rng: np.random.Generator
    ) -> np.ndarray:
        o = _check_stack(own, "own updates")
        n = o.shape[0] + (0 if benign is None else _reference(o, benign).shape[0])
        return self.boost(o.shape[0], n) * o


# --- registry -----------------------------------------------------------------------------------
def _sybil(**params: Any) -> Sybil:
    inner = params.pop("inner", None)
    if inner is not None and not isinstance(inner, str):
        raise ConfigError("sybil: inner must be the name of an update attack")
    inner_params = params.pop("inner_params", {}) or {}
    if params:
        raise ConfigError(f"sybil: unknown parameters {sorted(params)}")
    if inner is None:
        return Sybil()
    built = make_attack(inner, **inner_params)
    if not isinstance(built, UpdateAttack):
        raise ConfigError(f"sybil: {inner!r} is not an update attack")
    return Sybil(inner=built)


def _backdoor(**params: Any) -> Backdoor:
    trig = params.pop("trigger", {}) or {}
    if not isinstance(trig, dict):
        raise ConfigError("backdoor: trigger must be a table of feature index -> value")
    try:
        pairs = tuple(sorted((int(k), float(v)) for k, v in trig.items()))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"backdoor: bad trigger {trig!r}") from exc
    return Backdoor(trigger=pairs, **params)


DATA_ATTACKS: dict[str, Callable[..., DataAttack]] = {
    "label_flip": LabelFlip,
    "backdoor": _backdoor,
}


def _model_replacement(**params: Any) -> ModelReplacement:
    """``data`` names the data attack (``label_flip`` or ``backdoor``); its parameters go in
    ``data_params`` or, for flat TOML tables, next to ``factor`` and ``server_lr`` (every key
    other than those is the data attack's)."""
    data = params.pop("data", "label_flip")
    data_params = params.pop("data_params", {}) or {}
    if not isinstance(data, str) or data not in DATA_ATTACKS:
        raise ConfigError(
            f"model_replacement: data must be one of {sorted(DATA_ATTACKS)}, got {data!r}"
        )
    if not isinstance(data_params, dict):
        raise ConfigError("model_replacement: data_params must be a table of parameters")
    boost = {k: params.pop(k) for k in ("factor", "server_lr") if k in params}
    twice = set(params) & set(data_params)
    if twice:
        raise ConfigError(f"model_replacement: {sorted(twice)} given twice")
    built = make_attack(data, **data_params, **params)
    assert isinstance(built, DataAttack)
    return ModelReplacement(data=built, **boost)


ATTACKS: dict[str, Callable[..., Attack]] = {
    "sign_flip": SignFlip,
    "scaling": Scaling,
    "model_replacement": _model_replacement,
    "gaussian": GaussianNoise,
    "alie": ALIE,
    "ipm": IPM,
    "min_max": MinMax,
    "min_sum": MinSum,
    "sybil": _sybil,
    "free_rider": FreeRider,
    "label_flip": LabelFlip,
    "backdoor": _backdoor,
}


def make_attack(name: str, /, **params: Any) -> Attack:
    """Build an attack by name; unknown names or parameters raise ``ConfigError``."""
    factory = ATTACKS.get(name)
    if factory is None:
        raise ConfigError(f"unknown attack {name!r}; choose from {sorted(ATTACKS)}")
    if "name" in params:
        raise ConfigError("attack parameter 'name' is reserved")
    try:
        return factory(**params)
    except TypeError as exc:
        raise ConfigError(f"attack {name!r}: bad parameters {sorted(params)}: {exc}") from exc
