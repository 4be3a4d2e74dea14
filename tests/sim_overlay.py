"""A simulate config from a base overlay plus per-test sections (each section merged key by
key over the base's), on top of the shipped defaults."""

from __future__ import annotations

from typing import Any

from ztfm.sim.config import SimConfig, from_mapping, load_config


def overlay(base: dict[str, dict[str, Any]], **sections: dict[str, Any]) -> SimConfig:
    data = {k: dict(v) for k, v in base.items()}
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return from_mapping(data, load_config())
