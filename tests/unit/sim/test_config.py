"""Simulation config: documented defaults, strict overrides, one clear error per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztfm.errors import ConfigError
from ztfm.sim.config import SimConfig, load_config


def test_defaults_file_matches_dataclass_defaults() -> None:
    assert load_config() == SimConfig()


def test_user_file_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("seed = 7\n[rounds]\nrounds = 3\nprox_mu = 0.1\n[detector]\nhidden = [16, 4]\n")
    cfg = load_config(f)
    assert cfg.seed == 7 and cfg.rounds.rounds == 3 and cfg.rounds.prox_mu == 0.1
    assert cfg.detector.hidden == (16, 4)
    assert cfg.rounds.local_epochs == SimConfig().rounds.local_epochs


@pytest.mark.parametrize(
    "text, match",
    [
        ("[rounds]\nroundz = 3\n", "unknown option"),
        ("[roundz]\nrounds = 3\n", "unknown section"),
        ("[rounds]\nrounds = 'x'\n", "must be an integer"),
        ("[rounds]\nrounds = 0\n", "rounds must be >= 1"),
        ("[rounds]\nfraction = 1.5\n", "fraction"),
        ("[detector]\ntarget_far = 0.9\n", "target_far"),
        ("[detector]\nhidden = [1.5]\n", "list of int"),
        ("[compare]\nlocal_only = 1\n", "true or false"),
        ("[fleet]\ndataset = 'nope'\n", "dataset"),
        ("seed = true\n", "integer"),
        ("[rounds\n", "not valid TOML"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(f)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
