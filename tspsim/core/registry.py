"""A small name → object registry (style.md practice 3): schedules and topologies are found by name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from tspsim.core.errors import TspsimError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps stable names to objects; duplicate registration is a programming error."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        """Register ``item`` under ``name`` and return it (usable as a decorator helper)."""
        if name in self._items:
            raise ValueError(f"{self._what} {name!r} registered twice")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        """Return the item named ``name``, or fail with the list of known names."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise TspsimError(f"unknown {self._what} {name!r}: choose one of {known}") from None

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
