"""Shared click option types: sizes like ``128k``, comma lists, topology names or paths."""

from __future__ import annotations

from typing import Any

import click

from tspsim.core.errors import TspsimError
from tspsim.core.units import parse_int_list, parse_size, parse_size_list


class SizeType(click.ParamType):
    """A size with a binary suffix: ``128k`` → 131072."""

    name = "size"

    def __init__(self, what: str = "size") -> None:
        self.what = what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        """Parse or fail with a usage error."""
        if isinstance(value, int):
            return value
        try:
            return parse_size(value, self.what)
        except TspsimError as exc:
            self.fail(str(exc), param, ctx)


class SizeListType(click.ParamType):
    """Comma list of sizes: ``16k,32k,64k``."""

    name = "sizes"

    def __init__(self, what: str = "size") -> None:
        self.what = what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        """Parse or fail with a usage error."""
        if isinstance(value, list):
            return value
        try:
            return parse_size_list(value, self.what)
        except TspsimError as exc:
            self.fail(str(exc), param, ctx)


class IntListType(click.ParamType):
    """Comma list of positive integers: ``2,4,8``."""

    name = "ints"

    def __init__(self, what: str = "value", minimum: int = 1) -> None:
        self.what = what
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        """Parse or fail with a usage error."""
        if isinstance(value, list):
            return value
        try:
            return parse_int_list(value, self.what, self.minimum)
        except TspsimError as exc:
            self.fail(str(exc), param, ctx)


class WholeNumberType(click.ParamType):
    """A whole number ≥ ``minimum`` (clearer messages than click's "not a valid integer range")."""

    name = "integer"

    def __init__(self, minimum: int = 1) -> None:
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        """Parse or fail with a usage error naming what is expected."""
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            text = str(value).strip()
            shown = text if len(text) <= 20 else text[:17] + "..."
            if not (text.isascii() and text.isdigit()):
                self.fail(f"{shown!r} is not a whole number ≥ {self.minimum}", param, ctx)
            if len(text) > 18:
                self.fail(f"{shown!r} is too large", param, ctx)
            number = int(text)
        if number < self.minimum:
            self.fail(f"{number} is too small: expected a whole number ≥ {self.minimum}", param, ctx)
        return number


class NameListType(click.ParamType):
    """Comma list of names: ``tsp,tp,tp+sp``."""

    name = "names"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[str]:
        """Split on commas; an empty list is an error."""
        if isinstance(value, list):
            return value
        items = [v.strip() for v in str(value).split(",") if v.strip()]
        if not items:
            self.fail(f"empty list {value!r}: give at least one name", param, ctx)
        return items


def emit_json(obj: Any) -> None:
    """Print exactly one JSON object on stdout (deterministic key order)."""
    import json

    click.echo(json.dumps(obj, indent=2, sort_keys=True))
