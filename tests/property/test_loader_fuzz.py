"""Fuzz the table loaders: mutated real files load or fail with one DataError line, and a
loaded series always satisfies LabelledSeries' invariants (finite float32, aligned labels)."""

from __future__ import annotations

import gzip
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztfm.data.bundled import bundled_path
from ztfm.data.iot23 import load_iot23
from ztfm.data.nbaiot import load_nbaiot
from ztfm.data.series import LabelledSeries
from ztfm.data.ton_iot import load_ton_iot
from ztfm.errors import DataError


def _head(rel: str, lines: int) -> str:
    text = gzip.decompress(bundled_path(rel).read_bytes()).decode("utf-8-sig")
    return "\n".join(text.split("\n")[:lines]) + "\n"


CASES: dict[str, tuple[str, Callable[[Path], list[LabelledSeries]], str]] = {
    "nbaiot": (_head("nbaiot/Danmini_Doorbell.csv.gz", 12), load_nbaiot, "x.csv"),
    "ton_iot": (_head("ton_iot/Train_Test_IoT_Fridge.csv.gz", 30), load_ton_iot, "x.csv"),
    "iot23": (
        _head("iot23/CTU-IoT-Malware-Capture-42-1/conn.log.labeled.gz", 30),
        load_iot23,
        "conn.log.labeled",
    ),
}
ALPHABET = list(",;\t\n\r #-.0123456789eEnaNifIF abcxyz\x00\ufeff")


@pytest.mark.parametrize("case", sorted(CASES))
@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_mutated_tables_fail_cleanly(case: str, data: st.DataObject) -> None:
    text, loader, fname = CASES[case]
    chars = list(text)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(chars) - 1))
        if data.draw(st.booleans()):
            chars[pos] = data.draw(st.sampled_from(ALPHABET))
        else:
            del chars[pos]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cap" / fname
        path.parent.mkdir()
        path.write_text("".join(chars), encoding="utf-8")
        try:
            series = loader(path)
        except DataError as exc:
            assert "\n" not in str(exc)
            return
    for s in series:
        assert s.x.dtype == np.float32 and np.isfinite(s.x).all()
        assert s.y is not None and set(np.unique(s.y)) <= {0, 1}
