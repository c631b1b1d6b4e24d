"""Strict YAML reading for user files: ``yaml.SafeLoader`` only, duplicate keys rejected.

PyYAML's ``safe_load`` keeps the last of two identical keys silently; a topology with two ``link_GBps``
lines would then run with whichever came last. :func:`load_yaml_text` refuses such files instead.
:func:`read_yaml_file` adds the file-level checks (size limit, UTF-8) and turns every problem into one
:class:`~tspsim.core.errors.ConfigError` line that names the file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from tspsim.core.errors import ConfigError
from tspsim.core.files import FileShapeError, read_regular

MAX_YAML_BYTES = 1 << 20
"""Largest topology or model file read (1 MiB; real ones are a few KB)."""


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


MAX_YAML_VALUES = 100_000
"""Most values (scalars, lists, mappings) a document may hold with every alias expanded; a topology or model
file has about a hundred. Aliases (``*a``) share one object, so a few hundred bytes of nested aliases can
stand for billions of values that anything walking the document (a message quoting it) would expand."""
MAX_YAML_DEPTH = 64
"""Deepest nesting of lists and mappings accepted."""


class NestingError(yaml.YAMLError):
    """Nested too deep, expanding too far through aliases, self-referring, or holding an unreadable number."""


def load_yaml_text(text: str) -> Any:
    """Parse YAML with the safe loader, rejecting duplicate keys and unbounded alias expansion.

    The document is composed into nodes first and measured (:func:`_check_expansion`, linear in the
    number of distinct nodes) before any Python object is built.

    Raises:
        yaml.YAMLError: malformed YAML, a duplicate key, nesting too deep, aliases expanding past
            :data:`MAX_YAML_VALUES` values, or an alias inside the value it names.
    """
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except RecursionError:
        raise NestingError("lists or mappings nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with thousands of digits (int_max_str_digits)
        raise NestingError(str(exc).split(";")[0]) from None
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Size and depth of ``root`` with aliases expanded, computed once per distinct node (iteratively).

    Raises:
        NestingError: more than :data:`MAX_YAML_VALUES` values, deeper than :data:`MAX_YAML_DEPTH`, or a
            node that contains itself through an alias.
    """
    done: dict[int, tuple[int, int]] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_.discard(key)
            kids = [done[id(k)] for k in _children(node)]
            size = 1 + sum(k[0] for k in kids)
            depth = 1 + max((k[1] for k in kids), default=0)
            if size > MAX_YAML_VALUES:
                raise NestingError(f"aliases expand to more than {MAX_YAML_VALUES:,} values")
            if depth > MAX_YAML_DEPTH:
                raise NestingError(f"lists or mappings nested more than {MAX_YAML_DEPTH} deep")
            done[key] = (size, depth)
        elif key in open_:
            raise NestingError("an alias refers to a list or mapping that contains it")
        elif key not in done:
            open_.add(key)
            stack.append((node, True))
            stack.extend((k, False) for k in _children(node) if id(k) not in done)


def describe_yaml_error(exc: yaml.YAMLError) -> str:
    """One-line description of a YAML error with its line number when known."""
    if isinstance(exc, DuplicateKeyError):
        return f"line {exc.line}: duplicate key {exc.key!r}; keep one"
    if isinstance(exc, NestingError):
        return f"malformed YAML ({exc}); a topology or model file is a small mapping of numbers and text"
    if isinstance(exc, yaml.reader.ReaderError):
        return (f"character {exc.position}: malformed YAML (control character {chr(exc.character)!r} "
                "is not allowed); remove it")
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"line {mark.line + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or "syntax error"
    context = getattr(exc, "context", None)
    detail = f"{context}, {problem}" if context and problem != "syntax error" else problem
    return f"{where}malformed YAML ({detail}); fix the syntax"


def read_yaml_file(path: Path, what: str) -> Any:
    """Read and parse a user's YAML file (``what``: "topology", "model").

    Raises:
        ConfigError: one line naming the file: unreadable, too large, not UTF-8 text, or malformed YAML.
    """
    try:
        data = read_regular(path, MAX_YAML_BYTES)
    except FileShapeError as exc:
        raise ConfigError(f"{path}: cannot read {what} file: {exc} (a {what} file is a few KB of YAML "
                          f"text, at most {MAX_YAML_BYTES:,} bytes) — is this the right file?") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} file ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: byte {exc.start} is not UTF-8 text; a {what} file must be a YAML text "
                          "file") from None
    try:
        return load_yaml_text(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {describe_yaml_error(exc)}") from None


def describe_value(value: Any) -> str:
    """A value as its YAML spelling for error messages (``.nan``, ``true``, ``null``, short lists)."""
    if value is None:
        return "null (an empty value)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, int):
        return str(value) if abs(value) < 10**30 else f"a number of about {int(value.bit_length() * 0.30103)} digits"
    if isinstance(value, str):
        text = repr(value[:100])
    elif isinstance(value, (list, tuple)):
        text = f"a list {_short_repr(value, 90)}"
    elif isinstance(value, dict):
        text = f"a mapping {_short_repr(value, 90)}"
    else:
        text = f"{value} ({type(value).__name__})"
    return text if len(text) <= 80 else text[:77] + "..."


def _short_repr(value: Any, limit: int) -> str:
    """``repr`` of nested lists and mappings, stopped after about ``limit`` characters.

    Work is bounded by ``limit`` whatever the value holds (a list whose aliases expand to billions of
    elements is quoted by its first few), unlike ``repr``.
    """
    out: list[str] = []
    size = 0
    stack: list[Any] = [value]
    while stack and size <= limit:
        item = stack.pop()
        if isinstance(item, _Text):
            piece = item.text
        elif isinstance(item, (list, tuple)):
            stack.append(_Text("]"))
            for i, v in enumerate(reversed(item[: limit // 2 + 1])):
                stack.append(v)
                if i < min(len(item), limit // 2 + 1) - 1:
                    stack.append(_Text(", "))
            piece = "["
        elif isinstance(item, dict):
            stack.append(_Text("}"))
            pairs = list(item.items())[: limit // 4 + 1]
            for i, (k, v) in enumerate(reversed(pairs)):
                stack += [v, _Text(": "), k]
                if i < len(pairs) - 1:
                    stack.append(_Text(", "))
            piece = "{"
        else:
            piece = repr(item)[: limit + 1]
        out.append(piece)
        size += len(piece)
    return "".join(out)


class _Text:
    """Literal text pushed on :func:`_short_repr`'s stack (punctuation), as opposed to a value to quote."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def number_hint(value: Any) -> str:
    """Why a number came out as text, when it did: ``'1e9'`` (YAML 1.1 needs ``1.0e+9``) or a quoted number."""
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    if "e" in value.lower() and "." not in value:
        return f" (YAML reads {value} as text: write exponents with a dot and a sign, e.g. 1.0e+9)"
    return " (remove the quotes to make it a number)"
