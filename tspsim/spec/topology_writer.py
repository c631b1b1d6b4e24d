"""Writing a topology that inherits another and overrides a few keys (``tspsim calibrate -o``).

The text is a ``#`` comment block followed by ``yaml.safe_dump`` of ``name``, ``description``, ``inherit``
and the overridden sections, so :func:`tspsim.spec.topology_file.load_topology` reads it back through
the same validation as any user file (``inherit`` resolves a preset name, or a path relative to the
written file).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml


def inherit_reference(base: str, output: str | Path) -> str:
    """What ``inherit:`` should say in ``output`` for the topology the user named ``base``.

    A preset name stays a name; a file becomes a path relative to the folder ``output`` is written to.
    """
    if not (base.endswith((".yaml", ".yml")) or "/" in base or os.sep in base):
        return base
    out_dir = Path(output).resolve().parent
    return os.path.relpath(Path(base).resolve(), out_dir)


def inheriting_yaml(name: str, description: str, inherit: str, overrides: dict[str, Any],
                    comments: list[str]) -> str:
    """A topology file: ``comments`` as ``#`` lines, then name, description, inherit and ``overrides``."""
    head = "".join(f"# {line}".rstrip() + "\n" for line in comments)
    doc: dict[str, Any] = {"name": name, "description": description, "inherit": inherit, **overrides}
    return head + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100)
