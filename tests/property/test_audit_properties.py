"""Hypothesis: any deletion, swap, or edit of an audit record is detected, at or before its line."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztfm.audit import AuditLog, verify_log
from ztfm.errors import AuditError

T0 = 1_800_000_000.0


def _make(n: int) -> tuple[Path, list[bytes]]:
    d = Path(tempfile.mkdtemp())
    p = d / "a.jsonl"
    with AuditLog(p, anchor=False) as log:
        for i in range(n):
            log.append("e", {"i": i, "v": "x" * (i % 3)}, T0 + i)
    return p, p.read_bytes().splitlines(keepends=True)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 12), st.data())
def test_mutations_are_detected(n: int, data: st.DataObject) -> None:
    p, lines = _make(n)
    kind = data.draw(st.sampled_from(["delete", "swap", "edit", "truncate-middle"]))
    i = data.draw(st.integers(0, n - 2))
    if kind == "delete":
        del lines[i]
    elif kind == "swap":
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
    elif kind == "edit":
        obj = json.loads(lines[i])
        obj["fields"]["i"] = -1
        lines[i] = (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode()
    else:
        lines[i] = lines[i][: len(lines[i]) // 2] + b"\n"
    p.write_bytes(b"".join(lines))
    with pytest.raises(AuditError) as ei:
        verify_log(p, use_anchor=False)
    line = int(str(ei.value).split()[1].rstrip(":"))
    assert line <= i + 2
