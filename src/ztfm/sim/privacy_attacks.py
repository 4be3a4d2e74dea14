"""Privacy attacks on federated rounds: membership inference and gradient inversion.

What a curious party can learn about a device's telemetry rows from what ztfm releases:

* the released global model (anyone who receives a bundle), and
* a single device's update (the aggregator's view when secure aggregation is off), or the sum of
  a group's updates (its view with SecAgg).

Attacks (all pure numpy / torch, randomness from the caller's ``np.random.Generator``):

* ``loss_scores`` / ``update_loss_scores``: loss-threshold membership inference. A member row is
  reconstructed better by the model, or gains more from the device's update
  (``loss(before) - loss(before + delta)``).
* ``lira_scores``: LiRA-style likelihood ratio (Carlini et al. 2022, online variant): the
  statistic of each candidate row under shadow models trained with and without it, a Gaussian
  per row and side, score = log N(s; in) - log N(s; out).
* ``invert_update``: gradient inversion. Dummy rows are optimised so that the update they would
  produce under the device's known local recipe (unrolled SGD or Adam steps, torch autograd)
  matches the observed update in cosine distance.

Defences are applied by ``observe`` exactly where ztfm applies them: L2 clip + Gaussian noise on
the device (``ztfm.privacy``), sparsification of the update (top-k or a shared random mask,
``ztfm.privacy.compress``), and secure aggregation (``ztfm.secagg.driver.run_secagg``: the
attacker sees only the sum).

The experiment drivers at the end (``mi_update_experiment``, ``mi_global_experiment``,
``inversion_experiment``) run the attacks on SKAB devices; ``bench/privacy.py`` tabulates them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from ztfm.detect.autoencoder import Autoencoder
from ztfm.detect.evaluate import roc_auc
from ztfm.errors import DataError, PrivacyError
from ztfm.privacy.clip import clip_update
from ztfm.privacy.compress import k_for_ratio, shared_indices, topk_indices

Params = list[np.ndarray]
Sparsify = Literal["none", "topk", "shared"]
Optimizer = Literal["sgd", "adam"]

MAX_ROWS = 1_000_000
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


# --- checks --------------------------------------------------------------------------------------
def _rows(x: object, n_features: int | None = None, *, what: str = "rows") -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise DataError(f"{what} must be a numpy array, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[0] > MAX_ROWS:
        raise DataError(f"{what} must be a non-empty (n, d) matrix, got shape {x.shape}")
    if n_features is not None and x.shape[1] != n_features:
        raise DataError(f"{what} must have {n_features} columns, got {x.shape[1]}")
    if x.dtype.kind not in "fiu" or not np.isfinite(x).all():
        raise DataError(f"{what} must be finite real numbers")
    return np.asarray(x, dtype=np.float32)


def _params(params: object) -> Params:
    if not isinstance(params, (list, tuple)) or len(params) < 2 or len(params) % 2:
        raise DataError("params must be a list [W1, b1, W2, b2, ...] of an autoencoder")
    out: Params = []
    for i, p in enumerate(params):
        if not isinstance(p, np.ndarray) or p.ndim != (2 if i % 2 == 0 else 1):
            raise DataError(f"param {i} has the wrong type or rank")
        if not np.isfinite(p).all():
            raise DataError(f"param {i} contains NaN or infinite values")
        out.append(np.asarray(p, dtype=np.float32))
    for i in range(0, len(out), 2):
        w, b = out[i], out[i + 1]
        if w.shape[1] != b.shape[0] or (i > 0 and w.shape[0] != out[i - 2].shape[1]):
            raise DataError(f"param {i} does not chain with its neighbours")
    if out[0].shape[0] != out[-1].shape[0]:
        raise DataError("not an autoencoder: input and output widths differ")
    return out


def _rng(rng: object) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise PrivacyError("rng must be a numpy.random.Generator")
    return rng


def flatten(params: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in params])


def unflatten(vec: np.ndarray, like: Sequence[np.ndarray]) -> Params:
    size = sum(int(p.size) for p in like)
    if vec.ndim != 1 or vec.size != size:
        raise DataError(f"update has {vec.size} values, the model has {size}")
    out: Params = []
    at = 0
    for p in like:
        out.append(vec[at : at + p.size].reshape(p.shape).astype(np.float32))
        at += p.size
    return out


# --- the model (numpy forward, torch training) --------------------------------------------------
def ae_losses(params: Sequence[np.ndarray], xs: np.ndarray) -> np.ndarray:
    """Per-row mean squared reconstruction error of rows already in the model's scaled space."""
    p = _params(list(params))
    x = _rows(xs, p[0].shape[0])
    out = x
    for i in range(0, len(p), 2):
        out = out @ p[i] + p[i + 1]
        if i < len(p) - 2:
            out = np.maximum(out, 0.0)
    err = out - x
    loss: np.ndarray = np.einsum("ij,ij->i", err, err) / np.float32(x.shape[1])
    return loss.astype(np.float64)


@dataclass(frozen=True, slots=True)
class LocalRecipe:
    """How a device trains in a round: what the attacker is assumed to know (public config).

    ``batch_size`` >= the device's row count means one full batch per epoch, which makes the
    attacker's unrolled simulation exact (row order inside a batch does not matter)."""

    epochs: int = 3
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 1e-5
    optimizer: Optimizer = "adam"

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or not 1 <= self.epochs <= 10_000:
            raise PrivacyError(f"epochs must be an int in [1, 10000], got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise PrivacyError(f"batch_size must be a positive int, got {self.batch_size!r}")
        for name, v in (("lr", self.lr), ("weight_decay", self.weight_decay)):
            if not math.isfinite(v) or v < 0:
                raise PrivacyError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.lr <= 0:
            raise PrivacyError("lr must be > 0")
        if self.optimizer not in ("sgd", "adam"):
            raise PrivacyError(f"optimizer must be sgd or adam, got {self.optimizer!r}")


def local_train(
    params: Sequence[np.ndarray], xs: np.ndarray, recipe: LocalRecipe, rng: np.random.Generator
) -> Params:
    """The device's real local training (``Autoencoder.train_epochs``) from ``params`` on rows
    already in its scaled space; returns the new parameters. SGD recipes and batches below the
    detector's minimum use the unrolled torch simulator (identical to the detector's Adam on one
    full batch: tested)."""
    p = _params(list(params))
    x = _rows(xs, p[0].shape[0])
    if recipe.optimizer == "sgd" or x.shape[0] < Autoencoder.min_train_rows:
        if x.shape[0] > recipe.batch_size:
            raise PrivacyError("the SGD recipe is simulated full-batch: rows must fit one batch")
        return [a + d for a, d in zip(p, simulate_update(p, x, recipe), strict=True)]
    hidden = tuple(int(p[i].shape[1]) for i in range(0, len(p) // 2, 2))
    model = Autoencoder(
        x.shape[1],
        hidden=hidden,
        lr=recipe.lr,
        batch_size=recipe.batch_size,
        epochs=recipe.epochs,
        weight_decay=recipe.weight_decay,
        whiten=False,
    )
    if [tuple(a.shape) for a in p] != model.param_shapes():
        raise DataError("params are not a symmetric autoencoder")
    model.set_identity_scaler()
    model.set_params(p)
    model.train_epochs(x, epochs=recipe.epochs, rng=_rng(rng))
    return model.get_params()


def _torch_update(ts: list[Any], x: Any, recipe: LocalRecipe) -> list[Any]:
    """Differentiable (w.r.t. ``x``) parameter change after ``recipe.epochs`` full-batch steps,
    replicating ``torch.optim.Adam`` / plain SGD with L2 weight decay."""
    import torch

    w = list(ts)
    m = [torch.zeros_like(t) for t in ts]
    v = [torch.zeros_like(t) for t in ts]
    b1, b2 = _ADAM_BETAS
    for step in range(1, recipe.epochs + 1):
        out = x
        for i in range(0, len(w), 2):
            out = out @ w[i] + w[i + 1]
            if i < len(w) - 2:
                out = torch.relu(out)
        loss = ((out - x) ** 2).mean()
        grads = torch.autograd.grad(loss, w, create_graph=True)
        new = []
        for j, (t, g) in enumerate(zip(w, grads, strict=True)):
            g = g + recipe.weight_decay * t
            if recipe.optimizer == "sgd":
                new.append(t - recipe.lr * g)
                continue
            m[j] = b1 * m[j] + (1 - b1) * g
            v[j] = b2 * v[j] + (1 - b2) * g * g
            m_hat = m[j] / (1 - b1**step)
            v_hat = v[j] / (1 - b2**step)
            # + 1e-30 inside the root: a zero gradient (dead ReLU) must not give 0 * inf = NaN
            new.append(t - recipe.lr * m_hat / (torch.sqrt(v_hat + 1e-30) + _ADAM_EPS))
        w = new
    return [a - b for a, b in zip(w, ts, strict=True)]


def simulate_update(params: Sequence[np.ndarray], xs: np.ndarray, recipe: LocalRecipe) -> Params:
    """The update (new - old parameters) full-batch local training on ``xs`` would produce."""
    import torch

    p = _params(list(params))
    x = _rows(xs, p[0].shape[0])
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in p]
    out = _torch_update(ts, torch.tensor(x, dtype=torch.float64), recipe)
    return [o.detach().numpy().astype(np.float32) for o in out]


# --- defences: what the attacker observes --------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Defence:
    """The protections between a device's update and the attacker.

    ``noise_std`` is the std of the Gaussian noise each device adds to its clipped update (with
    distributed DP, the device's share ``z * C / sqrt(m)``; with local DP ``z * C``).
    ``secagg_group`` > 1: the attacker sees only the sum of the target's group of updates."""

    name: str = "none"
    clip_norm: float = 0.0
    noise_std: float = 0.0
    sparsify: Sparsify = "none"
    keep: float = 1.0
    secagg_group: int = 1

    def __post_init__(self) -> None:
        if not math.isfinite(self.clip_norm) or self.clip_norm < 0:
            raise PrivacyError(f"clip_norm must be finite and >= 0, got {self.clip_norm!r}")
        if not math.isfinite(self.noise_std) or self.noise_std < 0:
            raise PrivacyError(f"noise_std must be finite and >= 0, got {self.noise_std!r}")
        if self.noise_std > 0 and self.clip_norm == 0:
            raise PrivacyError("DP noise without clipping bounds nothing: set clip_norm")
        if self.sparsify not in ("none", "topk", "shared"):
            raise PrivacyError(f"sparsify must be none, topk or shared, got {self.sparsify!r}")
        if not 0 < self.keep <= 1:
            raise PrivacyError(f"keep must be in (0, 1], got {self.keep!r}")
        if not isinstance(self.secagg_group, int) or not 1 <= self.secagg_group <= 10_000:
            raise PrivacyError(
                f"secagg_group must be an int in [1, 10000], got {self.secagg_group!r}"
            )


@dataclass(frozen=True, slots=True)
class Observation:
    """What the attacker sees: an update vector, the coordinates it carries, how many device
    updates it sums."""

    update: np.ndarray
    mask: np.ndarray  # bool, True where the coordinate was sent
    n_summed: int


def protect(
    update: np.ndarray, defence: Defence, rng: np.random.Generator, *, round_seed: bytes = b"r"
) -> tuple[np.ndarray, np.ndarray]:
    """One device's update after its on-device defences: sparsify, clip, add its noise share.
    Returns (vector, mask of sent coordinates)."""
    vec = np.asarray(update, dtype=np.float64)
    if vec.ndim != 1 or vec.size == 0 or not np.isfinite(vec).all():
        raise PrivacyError("update must be a finite non-empty vector")
    mask = np.ones(vec.size, dtype=bool)
    if defence.sparsify != "none" and defence.keep < 1:
        k = k_for_ratio(vec.size, defence.keep)
        idx = (
            topk_indices(vec, k)
            if defence.sparsify == "topk"
            else shared_indices(vec.size, k, round_seed)
        )
        mask = np.zeros(vec.size, dtype=bool)
        mask[idx] = True
        vec = np.where(mask, vec, 0.0)
    if defence.clip_norm > 0:
        vec = np.asarray(clip_update(vec, defence.clip_norm), dtype=np.float64)
    if defence.noise_std > 0:
        vec = vec + np.where(mask, _rng(rng).normal(0.0, defence.noise_std, vec.size), 0.0)
    return vec, mask


def observe(
    target: np.ndarray,
    others: Sequence[np.ndarray],
    defence: Defence,
    rng: np.random.Generator,
    *,
    round_seed: bytes = b"r",
    secure: bool = True,
) -> Observation:
    """The attacker's view of ``target``'s round: its protected update, or (SecAgg) the sum of
    the protected updates of ``target`` and ``defence.secagg_group - 1`` of ``others``, computed
    by the real protocol (``run_secagg``) unless ``secure`` is False (plain sum, for speed)."""
    r = _rng(rng)
    vec, mask = protect(target, defence, r, round_seed=round_seed)
    if defence.secagg_group == 1:
        return Observation(vec, mask, 1)
    if len(others) < defence.secagg_group - 1:
        raise PrivacyError(f"SecAgg group of {defence.secagg_group} needs more devices")
    vecs = [vec]
    for o in others[: defence.secagg_group - 1]:
        v, m = protect(o, defence, r, round_seed=round_seed)
        vecs.append(v)
        mask = mask | m
    if secure:
        from ztfm.secagg.driver import run_secagg

        bound = float(max(np.abs(v).max() for v in vecs)) * 1.01 + 1e-12
        total = np.asarray(run_secagg(vecs, clip=bound, rng=r), dtype=np.float64)
    else:
        total = np.sum(vecs, axis=0)
    return Observation(total, mask, len(vecs))


# --- membership-inference metrics ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MIMetrics:
    auc: float
    tpr: dict[float, float]  # FPR target -> TPR at the strictest threshold meeting it
    n_pos: int
    n_neg: int
    false_positives_allowed: dict[float, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "auc": self.auc,
            "tpr": {str(k): v for k, v in self.tpr.items()},
            "n_pos": self.n_pos,
            "n_neg": self.n_neg,
            "false_positives_allowed": {str(k): v for k, v in self.false_positives_allowed.items()},
        }


def mi_metrics(
    scores: np.ndarray, labels: np.ndarray, fprs: Sequence[float] = (0.001, 0.01)
) -> MIMetrics:
    """AUC and TPR at each FPR target. The threshold is the strictest one that lets at most
    floor(fpr * n_neg) non-members through: with fewer than 1/fpr non-members it allows none."""
    auc = roc_auc(scores, labels)
    if auc is None:
        raise DataError("need both members and non-members")
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    neg = np.sort(s[~y])[::-1]
    pos = s[y]
    tpr: dict[float, float] = {}
    allowed: dict[float, int] = {}
    for f in fprs:
        if not 0 < f < 1:
            raise DataError(f"FPR target must be in (0, 1), got {f!r}")
        k = math.floor(f * neg.size)
        thr = neg[k] if k < neg.size else -np.inf
        tpr[f] = float((pos > thr).mean())
        allowed[f] = k
    return MIMetrics(auc, tpr, int(y.sum()), int((~y).sum()), allowed)


# --- membership-inference attacks ------------------------------------------------------------
def loss_scores(params: Sequence[np.ndarray], xs: np.ndarray) -> np.ndarray:
    """Membership score under a released model: minus the reconstruction error."""
    out: np.ndarray = -ae_losses(params, xs)
    return out


def update_loss_scores(
    before: Sequence[np.ndarray], update: Sequence[np.ndarray], xs: np.ndarray
) -> np.ndarray:
    """Membership score from one update: how much the update lowered each row's loss."""
    b = _params(list(before))
    after = [a + np.asarray(d, dtype=np.float32) for a, d in zip(b, update, strict=True)]
    out: np.ndarray = ae_losses(b, xs) - ae_losses(_params(after), xs)
    return out


def lira_scores(
    target_stat: np.ndarray, shadow_stats: np.ndarray, shadow_in: np.ndarray
) -> np.ndarray:
    """Online LiRA: per candidate, Gaussians fitted to its statistic over shadows that trained
    on it (in) and that did not (out); score = log N(s; in) - log N(s; out). Higher statistic
    must mean "more member-like". Per-row variances are floored by the global ones (few shadows
    per side make per-row variances unreliable)."""
    t = np.asarray(target_stat, dtype=np.float64)
    st = np.asarray(shadow_stats, dtype=np.float64)
    mi = np.asarray(shadow_in, dtype=bool)
    if t.ndim != 1 or st.ndim != 2 or st.shape != mi.shape or st.shape[1] != t.size:
        raise DataError("shadow statistics must be (shadows, candidates) matching the target")
    if not (np.isfinite(t).all() and np.isfinite(st).all()):
        raise DataError("statistics must be finite")
    n_in, n_out = mi.sum(axis=0), (~mi).sum(axis=0)
    if (n_in < 2).any() or (n_out < 2).any():
        raise DataError("every candidate needs at least 2 in and 2 out shadows")
    mu_in = np.where(mi, st, 0).sum(axis=0) / n_in
    mu_out = np.where(~mi, st, 0).sum(axis=0) / n_out
    var_in = np.where(mi, (st - mu_in) ** 2, 0).sum(axis=0) / (n_in - 1)
    var_out = np.where(~mi, (st - mu_out) ** 2, 0).sum(axis=0) / (n_out - 1)
    floor = 0.25 * float(np.median(np.concatenate([var_in, var_out]))) + 1e-30
    var_in, var_out = np.maximum(var_in, floor), np.maximum(var_out, floor)

    def logpdf(x: np.ndarray, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
        out: np.ndarray = -0.5 * (np.log(2 * np.pi * var) + (x - mu) ** 2 / var)
        return out

    out: np.ndarray = logpdf(t, mu_in, var_in) - logpdf(t, mu_out, var_out)
    return out


# --- gradient inversion --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class InversionConfig:
    iters: int = 300
    lr: float = 0.05
    prior_weight: float = 1e-3  # pull towards N(0, I): benign rows in the scaled space
    restarts: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.iters <= 100_000 or not 1 <= self.restarts <= 100:
            raise PrivacyError("iters must be in [1, 100000] and restarts in [1, 100]")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise PrivacyError("lr must be a positive finite number")
        if not (math.isfinite(self.prior_weight) and self.prior_weight >= 0):
            raise PrivacyError("prior_weight must be a finite number >= 0")


def invert_update(
    params: Sequence[np.ndarray],
    obs: Observation,
    rows_per_device: int,
    recipe: LocalRecipe,
    rng: np.random.Generator,
    config: InversionConfig | None = None,
) -> np.ndarray:
    """Dummy rows whose simulated update best matches the observation (cosine distance on the
    sent coordinates). For a sum of n updates the attacker simulates n devices of
    ``rows_per_device`` rows each and returns all n * rows_per_device dummies."""
    import torch

    cfg = config or InversionConfig()
    p = _params(list(params))
    n_feat = p[0].shape[0]
    if not isinstance(rows_per_device, int) or not 1 <= rows_per_device <= 4096:
        raise PrivacyError(f"rows_per_device must be an int in [1, 4096], got {rows_per_device!r}")
    size = sum(a.size for a in p)
    if obs.update.shape != (size,) or obs.mask.shape != (size,):
        raise DataError(f"observation must have {size} coordinates")
    if not np.isfinite(obs.update).all():
        raise DataError("observation contains NaN or infinite values")
    r = _rng(rng)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in p]
        target = torch.tensor(obs.update[obs.mask], dtype=torch.float64)
        mask = torch.tensor(obs.mask)
        best, best_loss = None, math.inf
        for _ in range(cfg.restarts):
            init = r.normal(0.0, 1.0, (obs.n_summed, rows_per_device, n_feat))
            dummy = torch.tensor(init, dtype=torch.float64, requires_grad=True)
            opt = torch.optim.Adam([dummy], lr=cfg.lr)
            last = math.inf
            for _ in range(cfg.iters):
                opt.zero_grad()
                parts = [
                    torch.cat([d.reshape(-1) for d in _torch_update(ts, dummy[g], recipe)])
                    for g in range(obs.n_summed)
                ]
                sim = torch.stack(parts).sum(dim=0)[mask]
                cos = torch.dot(sim, target) / (sim.norm() * target.norm() + 1e-30)
                loss = 1 - cos + cfg.prior_weight * (dummy**2).mean()
                loss.backward()
                opt.step()
                last = float(loss.detach())
            if last < best_loss:
                best_loss, best = last, dummy.detach().numpy().reshape(-1, n_feat).copy()
    finally:
        torch.set_num_threads(threads)
    assert best is not None
    return best.astype(np.float32)


@dataclass(frozen=True, slots=True)
class ReconstructionQuality:
    error: float  # mean over true rows of the MSE to the nearest reconstructed row
    baseline: float  # the same with random benign rows of the population as "reconstruction"
    correlation: float  # mean Pearson correlation of each true row with its nearest match
    per_target: tuple[float, ...] = ()  # error / baseline of each attacked device

    @property
    def ratio(self) -> float:
        """error / baseline: < 1 means the update leaked more than the population prior."""
        return self.error / self.baseline if self.baseline > 0 else math.inf


def _nearest(true_rows: np.ndarray, recon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = ((true_rows[:, None, :] - recon[None, :, :]) ** 2).mean(axis=2)
    j = d.argmin(axis=1)
    return d[np.arange(len(true_rows)), j], recon[j]


def reconstruction_quality(
    true_rows: np.ndarray,
    recon: np.ndarray,
    population: np.ndarray,
    rng: np.random.Generator,
    *,
    baseline_draws: int = 20,
) -> ReconstructionQuality:
    """Nearest-neighbour error of ``recon`` to the device's true rows, against the baseline of
    as many random rows of ``population`` (the attacker's prior without the update)."""
    t = _rows(true_rows, what="true rows").astype(np.float64)
    rc = _rows(recon, t.shape[1], what="reconstruction").astype(np.float64)
    pop = _rows(population, t.shape[1], what="population").astype(np.float64)
    r = _rng(rng)
    err, match = _nearest(t, rc)
    base = []
    for _ in range(baseline_draws):
        pick = pop[r.choice(len(pop), size=min(len(rc), len(pop)), replace=False)]
        base.append(float(_nearest(t, pick)[0].mean()))
    tc = t - t.mean(axis=1, keepdims=True)
    mc = match - match.mean(axis=1, keepdims=True)
    denom = np.linalg.norm(tc, axis=1) * np.linalg.norm(mc, axis=1)
    corr = float(np.mean(np.where(denom > 0, (tc * mc).sum(axis=1) / np.maximum(denom, 1e-30), 0)))
    return ReconstructionQuality(float(err.mean()), float(np.mean(base)), corr)


# --- experiments on SKAB devices -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DevicePool:
    """One device's candidate rows (benign, scaled with its own scaler) and which it trains on."""

    device_id: str
    rows: np.ndarray
    member: np.ndarray  # bool per row


def skab_pools(
    rng: np.random.Generator,
    *,
    devices: int = 0,
    stride: int = 4,
    max_rows: int = 0,
    member_share: float = 0.5,
) -> tuple[list[DevicePool], np.ndarray]:
    """Per SKAB device: its benign rows (every ``stride``-th, so neighbours of overlapping
    windows are not near-copies), scaled with a scaler fitted on all of them, and a random
    ``member_share`` marked as its training rows (random membership: no time drift between
    members and non-members). Also the public anomaly-free file, scaled with its own scaler."""
    from ztfm.sim.config import load_config
    from ztfm.sim.fleet import build_fleet

    r = _rng(rng)
    if not isinstance(stride, int) or stride < 1:
        raise PrivacyError(f"stride must be a positive int, got {stride!r}")
    if not 0 < member_share < 1:
        raise PrivacyError("member_share must be in (0, 1)")
    cfg = load_config()
    cfg = replace(cfg, fleet=replace(cfg.fleet, devices=devices))
    fleet = build_fleet(cfg.fleet, cfg.detector)
    pools = []
    for d in fleet.devices:
        benign = d.data.test_x[d.data.test_y == 0][::stride]
        if max_rows:
            benign = benign[:max_rows]
        member = np.zeros(len(benign), dtype=bool)
        member[r.choice(len(benign), size=round(member_share * len(benign)), replace=False)] = True
        pools.append(DevicePool(d.device_id, _scale(benign), member))
    return pools, _public_rows(cfg, stride)


def _scale(x: np.ndarray) -> np.ndarray:
    x64 = np.asarray(x, dtype=np.float64)
    mu, sd = x64.mean(axis=0), x64.std(axis=0)
    sd = np.maximum(sd, np.maximum(1e-3 * np.abs(mu), 1e-6))
    out: np.ndarray = np.clip((x64 - mu) / sd, -50, 50).astype(np.float32)
    return out


def _public_rows(cfg: Any, stride: int) -> np.ndarray:
    from ztfm.data.bundled import bundled_path
    from ztfm.data.skab import load_skab
    from ztfm.detect.features import FeatureSpec, WindowFeatures

    series = load_skab(bundled_path("skab") / "anomaly-free")
    if not series:
        raise DataError("the SKAB anomaly-free file is missing")
    spec = FeatureSpec(
        windows=tuple(cfg.detector.windows), ewma_alphas=tuple(cfg.detector.ewma_alphas)
    )
    feats = WindowFeatures(series[0].x.shape[1], spec).transform(series[0].x)
    return _scale(feats[::stride])


def init_params(n_features: int, hidden: Sequence[int], rng: np.random.Generator) -> Params:
    """Glorot-uniform start of a symmetric autoencoder (the detector's own initialiser)."""
    ae = Autoencoder(n_features, hidden=tuple(hidden), whiten=False)
    ae._reset_params(_rng(rng))
    return ae.get_params()


def pretrain(
    public: np.ndarray, hidden: Sequence[int], epochs: int, rng: np.random.Generator
) -> Params:
    """A global model warmed up on public rows (the anomaly-free file): round r > 1 of a run."""
    p = init_params(public.shape[1], hidden, rng)
    return local_train(p, public, LocalRecipe(epochs=epochs), rng)


def mi_update_experiment(
    pools: Sequence[DevicePool],
    global_params: Sequence[np.ndarray],
    recipe: LocalRecipe,
    defence: Defence,
    rng: np.random.Generator,
    *,
    shadows: int = 0,
) -> dict[str, MIMetrics]:
    """The curious aggregator: each device trains one round on its members from
    ``global_params``; the attacker sees the (defended) update and scores every candidate row
    by its loss drop (``loss``) and, with ``shadows`` > 0, by LiRA on that statistic with
    shadow devices trained on random halves of the candidates (``lira``). Scores pooled over
    devices."""
    r = _rng(rng)
    if not isinstance(shadows, int) or shadows < 0 or shadows % 2 or shadows == 2:
        raise PrivacyError(f"shadows must be 0 or an even int >= 4, got {shadows!r}")
    g = _params(list(global_params))
    updates = [flatten(local_train(g, pl.rows[pl.member], recipe, r)) - flatten(g) for pl in pools]
    scores: dict[str, list[np.ndarray]] = {"loss": [], "lira": []}
    labels: list[np.ndarray] = []
    for i, pl in enumerate(pools):
        others = updates[i + 1 :] + updates[:i]
        obs = observe(updates[i], others, defence, r, secure=False)
        upd = unflatten(obs.update, g)
        stat = update_loss_scores(g, upd, pl.rows)
        scores["loss"].append(stat)
        labels.append(pl.member)
        if shadows:
            sh_stat = np.empty((shadows, len(pl.rows)))
            sh_in = np.zeros((shadows, len(pl.rows)), dtype=bool)
            for k in range(shadows):
                # balanced halves: every row is in exactly half of the shadows
                if k % 2 == 0:
                    half = r.permutation(len(pl.rows)) < len(pl.rows) // 2
                else:
                    half = ~sh_in[k - 1]
                sh_in[k] = half
                u = flatten(local_train(g, pl.rows[half], recipe, r)) - flatten(g)
                sh_others = [updates[j] for j in range(len(pools)) if j != i]
                sh_obs = observe(u, sh_others, defence, r, secure=False)
                sh_stat[k] = update_loss_scores(g, unflatten(sh_obs.update, g), pl.rows)
            scores["lira"].append(lira_scores(stat, sh_stat, sh_in))
    y = np.concatenate(labels)
    return {k: mi_metrics(np.concatenate(v), y) for k, v in scores.items() if v}


def fedavg_run(
    pools: Sequence[DevicePool],
    start: Sequence[np.ndarray],
    recipe: LocalRecipe,
    defence: Defence,
    rounds: int,
    rng: np.random.Generator,
    *,
    train_mask: Callable[[int], np.ndarray] | None = None,
) -> Params:
    """Plain FedAvg (mean of the defended updates) from ``start``; the released global model."""
    r = _rng(rng)
    g = _params(list(start))
    for _ in range(rounds):
        ups = []
        for i, pl in enumerate(pools):
            m = pl.member if train_mask is None else train_mask(i)
            u = flatten(local_train(g, pl.rows[m], recipe, r)) - flatten(g)
            ups.append(protect(u, replace(defence, secagg_group=1), r)[0])
        g = [a + d for a, d in zip(g, unflatten(np.mean(ups, axis=0), g), strict=True)]
    return g


def mi_global_experiment(
    pools: Sequence[DevicePool],
    start: Sequence[np.ndarray],
    recipe: LocalRecipe,
    defence: Defence,
    rounds: int,
    rng: np.random.Generator,
) -> dict[str, MIMetrics]:
    """Anyone holding the released model: the loss attack on the final global model, scored
    per device against the start model (loss drop, which removes per-row difficulty) and raw."""
    r = _rng(rng)
    final = fedavg_run(pools, start, recipe, defence, rounds, r)
    raw, drop, labels = [], [], []
    for pl in pools:
        raw.append(loss_scores(final, pl.rows))
        drop.append(ae_losses(start, pl.rows) - ae_losses(final, pl.rows))
        labels.append(pl.member)
    y = np.concatenate(labels)
    return {
        "loss": mi_metrics(np.concatenate(raw), y),
        "loss_drop": mi_metrics(np.concatenate(drop), y),
    }


def inversion_experiment(
    pools: Sequence[DevicePool],
    global_params: Sequence[np.ndarray],
    recipe: LocalRecipe,
    defence: Defence,
    rows_per_device: int,
    rng: np.random.Generator,
    *,
    targets: int = 1,
    config: InversionConfig | None = None,
    population: np.ndarray | None = None,
) -> ReconstructionQuality:
    """Gradient inversion against ``targets`` devices that each train one round on
    ``rows_per_device`` of their member rows; quality averaged over targets. Under SecAgg the
    attacker inverts the group sum with group * rows_per_device dummies (the real protocol
    computes the sum)."""
    r = _rng(rng)
    g = _params(list(global_params))
    batches = [pl.rows[pl.member][:rows_per_device] for pl in pools]
    if any(len(b) < rows_per_device for b in batches):
        raise PrivacyError("a device has fewer member rows than rows_per_device")
    updates = [flatten(local_train(g, b, recipe, r)) - flatten(g) for b in batches]
    errs, bases, corrs = [], [], []
    for t in range(targets):
        # the attacker's prior: benign rows of other devices (never the target's own)
        pop = (
            population
            if population is not None
            else np.concatenate([pl.rows for j, pl in enumerate(pools) if j != t])
        )
        others = updates[t + 1 :] + updates[:t]
        obs = observe(updates[t], others, defence, r)
        recon = invert_update(g, obs, rows_per_device, recipe, r, config)
        q = reconstruction_quality(batches[t], recon, pop, r)
        errs.append(q.error)
        bases.append(q.baseline)
        corrs.append(q.correlation)
    ratios = tuple(e / b if b > 0 else math.inf for e, b in zip(errs, bases, strict=True))
    return ReconstructionQuality(
        float(np.mean(errs)), float(np.mean(bases)), float(np.mean(corrs)), ratios
    )
