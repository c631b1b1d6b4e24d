"""Preset-or-path YAML files with ``inherit:`` — shared by topology and stack files.

A name without a ``/`` or a ``.yaml``/``.yml`` suffix is a preset of ``preset_dir``; anything else is a
path (an ``inherit:`` path is first looked up next to the inheriting file). A file may ``inherit`` a
preset or another file; the chain is read parent first and each child merged over its parent with the
caller's ``merge``. Loops and chains deeper than :data:`MAX_INHERIT_DEPTH` files are one error naming
the whole chain; a parent's own error is reported through the child (``child.yaml: inherit: …``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tspsim.core.errors import ConfigError
from tspsim.core.yamlfile import describe_value, read_yaml_file

MAX_INHERIT_DEPTH = 16
"""Longest 'inherit' chain."""

Merge = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]
"""Merges a child mapping over its parent's (returns a new mapping)."""


class InheritChainError(ConfigError):
    """An 'inherit' loop or an over-long chain (its message already names the whole chain)."""


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``, mappings merged key by key at every depth."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class PresetFiles:
    """The preset folder of one kind of file and how to read a file of that kind."""

    what: str
    """Kind of file in messages (``topology``, ``stack``)."""
    preset_dir: Path
    """Folder of the built-in presets (``NAME.yaml``)."""

    def names(self) -> list[str]:
        """Names of the built-in presets."""
        return sorted(p.stem for p in self.preset_dir.glob("*.yaml"))

    def resolve(self, name_or_path: str, relative_to: Path | None = None) -> Path:
        """The file a preset name or path refers to (``relative_to``: the file that inherits it).

        Raises:
            ConfigError: a missing file, or an unknown preset (listing the known ones).
        """
        candidate = Path(name_or_path)
        if candidate.suffix in (".yaml", ".yml") or "/" in name_or_path:
            if relative_to is not None and not candidate.is_absolute():
                sibling = relative_to.parent / candidate
                if sibling.exists():
                    return sibling
            if candidate.exists():
                return candidate
            raise ConfigError(f"{self.what} file {name_or_path!r} not found; give an existing path or a preset name")
        preset = self.preset_dir / f"{name_or_path}.yaml"
        if name_or_path and preset.exists():
            return preset
        raise ConfigError(f"unknown {self.what} {name_or_path!r}: choose one of {', '.join(self.names())} or give "
                          "a YAML path")

    def read(self, name_or_path: str, merge: Merge = deep_merge) -> tuple[dict[str, Any], Path]:
        """(the mapping with its ``inherit`` chain merged in, the file named) — ``inherit`` removed.

        Raises:
            ConfigError: one line naming the file (and the chain for loops or over-long chains).
        """
        return self._read(name_or_path, (), None, merge)

    def _read(self, name_or_path: str, seen: tuple[str, ...], relative_to: Path | None,
              merge: Merge) -> tuple[dict[str, Any], Path]:
        path = self.resolve(name_or_path, relative_to)
        key = str(path.resolve())
        if key in seen:
            chain = " -> ".join(Path(k).name for k in (*seen, key))
            raise InheritChainError(f"{path}: 'inherit' chain loops back to itself ({chain}); remove one 'inherit'")
        if len(seen) >= MAX_INHERIT_DEPTH:
            raise InheritChainError(f"{path}: 'inherit' chain is deeper than {MAX_INHERIT_DEPTH} files; flatten it")
        data = read_yaml_file(path, self.what)
        if not isinstance(data, dict):
            got = "an empty file" if data is None else describe_value(data)
            raise ConfigError(f"{path}: a {self.what} file must be a YAML mapping of keys to values, got {got}")
        if "inherit" not in data:
            return data, path
        parent_name = data["inherit"]
        if not isinstance(parent_name, str) or not parent_name.strip():
            raise ConfigError(f"{path}: inherit: expected a preset name or a YAML path, got "
                              f"{describe_value(parent_name)}")
        try:
            parent, _ = self._read(parent_name, (*seen, key), path, merge)
        except InheritChainError:
            raise
        except ConfigError as exc:
            raise ConfigError(f"{path}: inherit: {exc}") from None
        merged = merge(parent, data)
        merged.pop("inherit", None)
        return merged, path
