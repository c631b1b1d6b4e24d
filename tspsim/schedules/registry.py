"""The schedule registry: stable names (design.md §3) → generators."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tspsim.core.registry import Registry
from tspsim.opgraph import OpGraph
from tspsim.schedules.context import BuildContext


@dataclass(frozen=True)
class Schedule:
    """A registered schedule generator."""

    name: str
    """Stable name used by ``--schedule``."""
    description: str
    """One line for ``tspsim list schedules``."""
    reference: str
    """Where the schedule is specified."""
    build: Callable[[BuildContext], OpGraph]
    """Generate the op graph of one step."""


SCHEDULES: Registry[Schedule] = Registry("schedule")
