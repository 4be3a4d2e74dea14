"""Several federated rounds end to end: Poisson sampling, budget gating, error feedback,
shared sparsity, distributed noise, SecAgg+ with dropouts, and accounting of the realised noise."""

from __future__ import annotations

import numpy as np

from ztfm.errors import SecAggError
from ztfm.privacy import DistributedGaussian, FleetAccountant
from ztfm.privacy.compress import ErrorFeedback
from ztfm.secagg import Dropouts, UpdateCodec, simulate_round
from ztfm.secagg.driver import device_ids
from ztfm.types import DeviceId


def test_rounds_until_budgets_run_out() -> None:
    rng = np.random.default_rng(11)
    population = [DeviceId(f"p{i:02d}") for i in range(30)]
    d, keep, clip, z, q = 400, 40, 1.0, 1.2, 0.5
    fleet = FleetAccountant(target_epsilon=4.0, target_delta=1e-5)
    feedback = {p: ErrorFeedback(d) for p in population}
    truth = rng.normal(0, 0.02, d)  # every device's update is the same direction plus noise
    rounds_run = 0
    for r in range(40):
        eligible = fleet.eligible(population, z, q)
        if len(eligible) < 6:
            break
        chosen = [p for p in eligible if rng.random() < q]
        if len(chosen) < 6:
            fleet.record_round(eligible, z, q)
            continue
        n = len(chosen)
        noise = DistributedGaussian(z, clip, min_survivors=n - 2)
        codec = UpdateCodec(length=d, clip_norm=clip, max_inputs=n, keep=keep, noise=noise)
        seed = f"round-{r}".encode()
        enc = [
            codec.encode(
                truth + rng.normal(0, 0.01, d), round_seed=seed, rng=rng, feedback=feedback[p]
            )
            for p in chosen
        ]
        drops = Dropouts.of(before_input=[int(rng.integers(0, n))]) if r % 2 else None
        try:
            run = simulate_round(
                [np.zeros(keep)] * n,
                clip=codec.fixed_point.clip,
                rng=rng,
                encoded=enc,
                dropouts=drops,
                min_survivors=n - 2,  # SecAgg aborts below the noise's min_survivors
            )
        except SecAggError:
            fleet.record_round(eligible, z, q)  # sampled or not, the chance to be sampled counts
            continue
        m = len(run.result.included)
        total = codec.decode(run.result.total, m, round_seed=seed)
        idx = codec.indices(seed)
        assert idx is not None and np.count_nonzero(total) <= keep
        # the realised noise is at least the target (dropouts only add noise)
        z_eff = noise.effective_noise_multiplier(m)
        assert z_eff >= z
        fleet.record_round(eligible, z_eff, q)
        rounds_run += 1
    assert rounds_run >= 2
    spent = fleet.epsilon_spent()
    assert all(e <= 4.0 for e in spent.values())
    assert fleet.eligible(population, z, q) == [] or len(fleet.eligible(population, z, q)) < 6
    assert set(device_ids(2)).isdisjoint(spent)
