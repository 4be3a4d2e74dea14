"""The two trust thresholds are what docs/robustness.md says: the coordinator gate in
default.toml (0.4: sit rounds out) and the Cedar trust-gate (SubmitUpdate refused below 0.3)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import ztfm
from ztfm.policy.engine import default_policy_text
from ztfm.trust.model import TrustConfig

REPO = Path(__file__).resolve().parents[3]
DOC = (REPO / "docs" / "robustness.md").read_text(encoding="utf-8")


def _cedar_trust_gate() -> str:
    text = default_policy_text()
    found = re.search(r'@id\("trust-gate"\)\s*(forbid\s*\(.*?\)\s*when\s*\{.*?\});', text, re.S)
    assert found, "default.cedar has no trust-gate policy"
    return found.group(1)


def test_coordinator_gate_is_0_4_in_config_and_doc() -> None:
    toml = tomllib.loads((Path(ztfm.__file__).parent / "sim" / "default.toml").read_text())
    assert toml["trust"]["gate"] == 0.4
    assert TrustConfig().gate == 0.4
    assert "`[trust] gate = 0.4`" in DOC and "is < 0.4" in DOC


def test_cedar_gate_forbids_submit_below_300_milli_as_the_doc_says() -> None:
    gate = _cedar_trust_gate()
    assert gate.startswith("forbid")
    assert re.search(r'action\s*==\s*Ztfm::Action::"SubmitUpdate"', gate)
    limits = re.findall(r"context\.trust_milli\s*<\s*(\d+)", gate)
    assert limits == ["300"]
    assert "`context.trust_milli < 300`" in DOC and "at < 0.3" in DOC


def test_the_transport_gate_sits_below_the_coordinator_gate() -> None:
    milli = int(re.findall(r"context\.trust_milli\s*<\s*(\d+)", _cedar_trust_gate())[0])
    assert milli / 1000 < TrustConfig().gate
