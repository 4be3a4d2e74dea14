"""Trust changes -> ledger quarantine decisions: only entering or leaving quarantine counts."""

from __future__ import annotations

from ztfm.trust import quarantine_decisions


def _change(device: str, old: str, new: str, reason: str = "poisoning") -> dict[str, object]:
    return {"device": device, "old_state": old, "new_state": new, "reason": reason}


def test_only_entering_and_leaving_quarantine_are_decisions() -> None:
    changes = [
        _change("a", "active", "quarantined"),
        _change("b", "active", "suspicious"),  # not a decision
        _change("c", "quarantined", "quarantined"),  # still in: not a decision
        _change("d", "quarantined", "suspicious", "canary_pass"),
        _change("e", "suspicious", "quarantined", ""),  # empty reason -> "trust"
    ]
    assert quarantine_decisions(changes, 7) == [
        {"device_id": "a", "action": "quarantine", "reason": "poisoning", "round": 7},
        {"device_id": "d", "action": "release", "reason": "canary_pass", "round": 7},
        {"device_id": "e", "action": "quarantine", "reason": "trust", "round": 7},
    ]
    assert quarantine_decisions([], 1) == []
