"""A simulate config from a base overlay plus per-test sections (each section merged key by
key over the base's), on top of the shipped defaults; and the fleet it describes."""

from __future__ import annotations

from typing import Any

from ztfm.sim.config import SimConfig, from_mapping, load_config
from ztfm.sim.fleet import Fleet, build_fleet


def overlay(base: dict[str, dict[str, Any]], **sections: dict[str, Any]) -> SimConfig:
    data = {k: dict(v) for k, v in base.items()}
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return from_mapping(data, load_config())


def overlay_fleet(base: dict[str, dict[str, Any]]) -> Fleet:
    """The fleet the base overlay describes (for a module-scoped fixture)."""
    cfg = overlay(base)
    return build_fleet(cfg.fleet, cfg.detector)
