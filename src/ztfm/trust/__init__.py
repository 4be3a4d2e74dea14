"""Per-device trust (layer 3): beta-reputation scores, quarantine with canary replay, rate limits,
explained changes, crash-safe stores."""

from ztfm.trust.behaviour import (
    UpdateObservation,
    observe_groups,
    observe_updates,
    update_evidence,
)
from ztfm.trust.manager import CanaryEvaluator, CanaryResult, TrustManager
from ztfm.trust.model import (
    TrustChange,
    TrustConfig,
    TrustRecord,
    TrustState,
    quarantine_decisions,
)
from ztfm.trust.ratelimit import TokenBucket
from ztfm.trust.store import (
    JsonFileTrustStore,
    MemoryTrustStore,
    SqliteTrustStore,
    TrustStore,
    open_store,
)

__all__ = [
    "CanaryEvaluator",
    "CanaryResult",
    "JsonFileTrustStore",
    "MemoryTrustStore",
    "SqliteTrustStore",
    "TokenBucket",
    "TrustChange",
    "TrustConfig",
    "TrustManager",
    "TrustRecord",
    "TrustState",
    "TrustStore",
    "UpdateObservation",
    "observe_groups",
    "observe_updates",
    "open_store",
    "quarantine_decisions",
    "update_evidence",
]
