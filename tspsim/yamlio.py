"""Strict YAML reading for user files: ``yaml.SafeLoader`` only, duplicate keys rejected.

PyYAML's ``safe_load`` keeps the last of two identical keys silently; a topology with two ``link_GBps``
lines would then run with whichever came last. :func:`load_yaml_text` refuses such files instead.
"""

from __future__ import annotations

from typing import Any

import yaml


class DuplicateKeyError(yaml.YAMLError):
    """A mapping lists the same key twice."""

    def __init__(self, key: object, line: int) -> None:
        super().__init__(f"duplicate key {key!r} at line {line}")
        self.key = key
        self.line = line


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (no Python objects are ever constructed)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable key: let the base constructor report it
            break
        if duplicate:
            raise DuplicateKeyError(key, key_node.start_mark.line + 1)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml_text(text: str) -> Any:
    """Parse YAML with the safe loader, rejecting duplicate keys."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader derives from SafeLoader


def describe_yaml_error(exc: yaml.YAMLError) -> str:
    """One-line description of a YAML error with its line number when known."""
    if isinstance(exc, DuplicateKeyError):
        return f"line {exc.line}: duplicate key {exc.key!r}; keep one"
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or "syntax error"
    return f"{where}malformed YAML ({problem}); fix the syntax"
