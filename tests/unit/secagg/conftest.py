"""The ``make_round`` fixture: a step-by-step SecAgg+ round (see tests/secagg_harness.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from secagg_harness import Harness, build_round


@pytest.fixture
def make_round() -> Callable[..., Harness]:
    return build_round
