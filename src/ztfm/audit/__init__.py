"""Audit (layer 2): append-only hash-chained log and bounded forensic snapshot store."""

from ztfm.audit.log import (
    AuditHead,
    AuditLog,
    AuditRecord,
    AuditSink,
    MemoryAuditSink,
    VerifyResult,
    repair_torn_tail,
    tail_log,
    verify_log,
)
from ztfm.audit.snapshots import Snapshot, SnapshotStore

__all__ = [
    "AuditHead",
    "AuditLog",
    "AuditRecord",
    "AuditSink",
    "MemoryAuditSink",
    "Snapshot",
    "SnapshotStore",
    "VerifyResult",
    "repair_torn_tail",
    "tail_log",
    "verify_log",
]
