"""The op graph: per-rank operations with dependencies, the engine's only input besides a topology.

:mod:`~tspsim.opgraph.op` is the vocabulary (an :class:`Op` and its kinds), :mod:`~tspsim.opgraph.graph`
the :class:`OpGraph` and its versioned JSON file, :mod:`~tspsim.opgraph.checks` the validation of a
graph read from a file, :mod:`~tspsim.opgraph.builder` the :class:`GraphBuilder` schedules append to.
"""

from tspsim.opgraph.builder import GraphBuilder
from tspsim.opgraph.checks import parse_json, validate
from tspsim.opgraph.graph import OpGraph
from tspsim.opgraph.op import (
    ALGORITHMS,
    COLLECTIVE_KINDS,
    COMPUTE_KINDS,
    MAX_FLOAT,
    MAX_INT,
    MAX_RANK,
    MEMORY_CATEGORIES,
    P2P_KINDS,
    Op,
)

__all__ = ["ALGORITHMS", "COLLECTIVE_KINDS", "COMPUTE_KINDS", "MAX_FLOAT", "MAX_INT", "MAX_RANK", "MEMORY_CATEGORIES",
           "P2P_KINDS", "GraphBuilder", "Op", "OpGraph", "parse_json", "validate"]
