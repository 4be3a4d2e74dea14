"""Zero-trust policy (layer 3): Cedar micro-segmentation, continuous verification, audited."""

from ztfm.policy.engine import (
    ACTIONS,
    AccessRequest,
    AllOf,
    AnyOf,
    Decision,
    DenyAll,
    FailClosed,
    Policy,
    PolicyEngine,
    Resource,
    TrustContext,
    TrustSource,
    UnsafeAllowAll,
    default_policy_text,
)

__all__ = [
    "ACTIONS",
    "AccessRequest",
    "AllOf",
    "AnyOf",
    "Decision",
    "DenyAll",
    "FailClosed",
    "Policy",
    "PolicyEngine",
    "Resource",
    "TrustContext",
    "TrustSource",
    "UnsafeAllowAll",
    "default_policy_text",
]
