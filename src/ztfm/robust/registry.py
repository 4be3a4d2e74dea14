"""Name -> aggregator, so that a TOML config can say ``aggregator = "bulyan"`` and ``f = 2``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ztfm.errors import ConfigError
from ztfm.robust.aggregators import (
    Bulyan,
    CenteredClipping,
    CoordinateMedian,
    FLTrust,
    GeometricMedian,
    Krum,
    Mean,
    NormBounding,
    TrimmedMean,
)
from ztfm.robust.base import Aggregator


def _multi_krum(**params: Any) -> Krum:
    params.setdefault("m", 2)
    return Krum(**params)


AGGREGATORS: dict[str, Callable[..., Aggregator]] = {
    "mean": Mean,
    "fedavg": Mean,
    "median": CoordinateMedian,
    "trimmed_mean": TrimmedMean,
    "krum": Krum,
    "multi_krum": _multi_krum,
    "bulyan": Bulyan,
    "geometric_median": GeometricMedian,
    "rfa": GeometricMedian,
    "norm_bounding": NormBounding,
    "centered_clipping": CenteredClipping,
    "fltrust": FLTrust,
}


def make_aggregator(name: str, /, **params: Any) -> Aggregator:
    """Build an aggregator by name; unknown names or parameters raise ``ConfigError``.
    ``fltrust`` needs ``server_update=`` (the coordinator's own update for this round)."""
    factory = AGGREGATORS.get(name)
    if factory is None:
        raise ConfigError(f"unknown aggregator {name!r}; choose from {sorted(AGGREGATORS)}")
    try:
        return factory(**params)
    except TypeError as exc:
        raise ConfigError(f"aggregator {name!r}: bad parameters {sorted(params)}: {exc}") from exc
