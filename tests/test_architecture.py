"""Architecture (issue 11): layers call down only, no import cycles, no sprawling modules.

The layers contract lives in setup.cfg (``[importlinter]``) and is checked by ``lint-imports``; the
cycle check here is stricter than import-linter's: it follows every ``import`` statement in the package,
including imports inside functions and under ``if TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tspsim"

MAX_LINES = 500
"""Longest module, unless it is one cohesive thing listed in LONG_MODULES (README: Architecture)."""

LONG_MODULES: dict[str, str] = {}
"""Module path → why it may exceed MAX_LINES."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> nx.DiGraph:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    g = nx.DiGraph()
    g.add_nodes_from(modules)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t in modules and t != name:
                    g.add_edge(name, t)
    return g


def test_no_import_cycles_anywhere_in_the_package() -> None:
    g = _import_graph()
    cycles = list(nx.simple_cycles(g))
    assert not cycles, f"import cycles: {cycles[:5]}"
    assert g.number_of_edges() > 100  # the graph really was read


def test_layers_contract_holds() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        pytest.fail("lint-imports is missing: pip install -e '.[test]' installs import-linter")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # analyse this checkout, not whatever is installed
    result = subprocess.run([exe, "--config", str(ROOT / "setup.cfg")], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def test_a_climbing_import_is_caught(tmp_path: Path) -> None:
    """The contract can fail: a copy of the package where the engine imports a command breaks it."""
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    copy = tmp_path / "tspsim"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "data"))
    sim = copy / "engine" / "sim.py"
    sim.write_text(sim.read_text() + "\n\ndef _bad() -> None:\n    from tspsim.commands import run  # noqa: F401\n")
    (tmp_path / "setup.cfg").write_text((ROOT / "setup.cfg").read_text())
    result = subprocess.run([exe, "--config", str(tmp_path / "setup.cfg")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode != 0
    assert "tspsim.engine is not allowed to import tspsim.commands" in result.stdout


def test_modules_stay_small() -> None:
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    unexplained = {p: n for p, n in long.items() if p not in LONG_MODULES}
    assert not unexplained, f"modules over {MAX_LINES} lines (split them, or say why in LONG_MODULES): {unexplained}"
