"""Topology, model and stack files read once per run, plan or sweep: a memo owned by its caller.

A plan reads the same topology and stack files for every point it simulates, and every point resolves
them several times (validation, cache key, static-memory check, the simulation, each max-batch probe):
hundreds of YAML parses of a few files. A :class:`SpecLoader` parses each name once and hands out the
same frozen value; the caller that owns it (``tspsim run``, :func:`tspsim.explore.runners.run_point`, a
sweep's preparation) decides how long it lives. No module-level state: two loaders never share anything.
Sharing one :class:`~tspsim.spec.topology.Topology` also shares its lazily built tables (link
capacities, routes), so a run of several schedules on 2,048 nodes builds them once.
"""

from __future__ import annotations

from typing import Any

from tspsim.spec.assumptions import Assumptions
from tspsim.spec.model import ModelConfig, load_model
from tspsim.spec.stack import Stack, load_stack
from tspsim.spec.topology import Topology
from tspsim.spec.topology_file import load_topology


class SpecLoader:
    """Memoized :func:`load_topology`, :func:`load_model`, :func:`load_stack` and assumptions, by name or path."""

    def __init__(self) -> None:
        self._topologies: dict[str, Topology] = {}
        self._models: dict[str, ModelConfig] = {}
        self._stacks: dict[str, Stack] = {}

    def topology(self, name: str) -> Topology:
        """The topology preset or file ``name`` (read on first use)."""
        if name not in self._topologies:
            self._topologies[name] = load_topology(name)
        return self._topologies[name]

    def model(self, name: str) -> ModelConfig:
        """The model preset or file ``name`` (read on first use)."""
        if name not in self._models:
            self._models[name] = load_model(name)
        return self._models[name]

    def stack(self, name: str) -> Stack:
        """The stack preset or file ``name`` (read on first use)."""
        if name not in self._stacks:
            self._stacks[name] = load_stack(name)
        return self._stacks[name]

    def assumptions(self, pairs: dict[str, Any]) -> Assumptions:
        """:meth:`Assumptions.from_overrides` with stacks read through this loader."""
        return Assumptions.from_overrides(pairs, stacks=self.stack)
