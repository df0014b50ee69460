"""The layer contract holds at import time too: each layer, imported alone, loads nothing from a layer above it.

`lint-imports` (pyproject.toml, run by `make lint` and .ci/run) checks the same contract statically, including
function-local imports; this test checks what really happens when a layer is imported in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONTRACT = next(
    c
    for c in tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    if c["name"].startswith("Layers:")
)
LAYERS = [[p.strip() for p in layer.split("|")] for layer in CONTRACT["layers"]]  # top first; '|': independent

PROBE = """
import importlib, json, pkgutil, sys
for name in sys.argv[1:]:
    package = importlib.import_module(name)
    for info in pkgutil.walk_packages(getattr(package, "__path__", []), prefix=name + "."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("components", "flows"))))
"""


def _owner(module: str) -> str | None:
    return next((p for layer in LAYERS for p in layer if module == p or module.startswith(p + ".")), None)


def test_the_contract_names_every_package():
    covered = {p for layer in LAYERS for p in layer}
    packages = {f"components.{p.name}" for p in (REPO / "components").iterdir() if (p / "__init__.py").is_file()}
    assert packages | {"flows"} == covered


PACKAGES = [(p, i) for i, layer in enumerate(LAYERS) for p in layer]


@pytest.mark.parametrize(("package", "index"), PACKAGES, ids=[p for p, _ in PACKAGES])
def test_a_package_imported_alone_loads_no_higher_layer_and_no_sibling(package, index):
    out = subprocess.run(
        [sys.executable, "-c", PROBE, package], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert sum(_owner(m) == package for m in loaded) > 1, f"{package} has no module besides its __init__"
    forbidden = {p for higher in LAYERS[:index] for p in higher} | (set(LAYERS[index]) - {package})
    wrong = sorted(m for m in loaded if _owner(m) in forbidden)
    assert not wrong, f"importing {package} loaded modules of a higher layer or an independent sibling: {wrong}"
