"""Byzantine-robust aggregation (layer 3, pure numpy): aggregators, robust-over-SecAgg groups."""

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
    krum_scores,
    weighted_coordinate_median,
)
from ztfm.robust.base import Aggregate, Aggregator, check_updates
from ztfm.robust.registry import AGGREGATORS, make_aggregator

__all__ = [
    "AGGREGATORS",
    "Aggregate",
    "Aggregator",
    "Bulyan",
    "CenteredClipping",
    "CoordinateMedian",
    "FLTrust",
    "GeometricMedian",
    "Krum",
    "Mean",
    "NormBounding",
    "TrimmedMean",
    "check_updates",
    "krum_scores",
    "make_aggregator",
    "weighted_coordinate_median",
]
