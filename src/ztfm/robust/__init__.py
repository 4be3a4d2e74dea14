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
from ztfm.robust.combine import RobustCombine
from ztfm.robust.groups import (
    GroupedAggregate,
    GroupPlan,
    aggregate_group_sums,
    assign_groups,
    robust_over_groups,
)
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
    "GroupPlan",
    "GroupedAggregate",
    "Krum",
    "Mean",
    "NormBounding",
    "RobustCombine",
    "TrimmedMean",
    "aggregate_group_sums",
    "assign_groups",
    "check_updates",
    "krum_scores",
    "make_aggregator",
    "robust_over_groups",
    "weighted_coordinate_median",
]
