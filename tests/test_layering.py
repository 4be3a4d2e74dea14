"""Dependencies point down only: walk every import in src/ztfm with ast and check the layers.

A module may import ztfm modules of a strictly lower layer, or of its own top-level package.
Keep LAYERS in step with docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ztfm"

LAYERS: dict[str, int] = {
    "errors": 0,
    "types": 0,
    "process": 0,
    "__init__": 0,
    "crypto": 1,
    "data": 1,
    "identity": 2,
    "attestation": 2,
    "ledger": 2,
    "detect": 2,
    "privacy": 2,
    "audit": 2,
    "secagg": 3,
    "robust": 3,
    "policy": 3,
    "trust": 3,
    "bundle": 3,
    "fl": 3,
    "wire": 4,
    "transport": 5,
    "device": 6,
    "gateway": 6,
    "coordinator": 6,
    "sim": 7,
    "report": 7,
    "dashboard": 7,
    "lab": 7,
    "cli": 8,
}

# Third-party imports that belong to exactly one concern.
EXCLUSIVE = {"cryptography": {"crypto"}}


def _top(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg_parts = list(path.relative_to(SRC).with_suffix("").parts)
    pkg_parts = pkg_parts[:-1]  # the package a module (or an __init__) belongs to
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["ztfm", *pkg_parts[: len(pkg_parts) - node.level + 1]]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((name, node.lineno))
    return out


FILES = sorted(p for p in SRC.rglob("*.py") if "_gen" not in p.parts)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path: Path) -> None:
    top = _top(path)
    assert top in LAYERS, f"{top} has no layer: add it to LAYERS and docs/architecture.md"
    mine = LAYERS[top]
    for name, lineno in _imports(path):
        parts = name.split(".")
        if parts[0] == "ztfm" and len(parts) > 1:
            other = parts[1]
            assert other in LAYERS, f"{path.name}:{lineno} imports unknown package ztfm.{other}"
            if other != top:
                assert LAYERS[other] < mine, (
                    f"{path.relative_to(SRC)}:{lineno}: layer {mine} ({top}) imports "
                    f"layer {LAYERS[other]} ({other})"
                )
        allowed = EXCLUSIVE.get(parts[0])
        if allowed is not None:
            assert top in allowed, f"{path.relative_to(SRC)}:{lineno} imports {parts[0]}"


def test_layer_table_matches_packages() -> None:
    present = {_top(p) for p in FILES}
    assert present <= set(LAYERS)
