"""The :class:`OpGraph`: ops of the simulated ranks in issue order, and its versioned JSON file.

Graphs are stored as a networkx ``DiGraph`` (node = op id, attribute ``op``) plus the per-stream issue
lists, and saved as versioned JSON (``tspsim generate``/``tspsim replay``); a graph read from a file is
validated by :mod:`tspsim.opgraph.checks`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tspsim.opgraph.checks import parse_graph_document, parse_json, validate
from tspsim.opgraph.op import FORMAT, FORMAT_VERSION, Op

if TYPE_CHECKING:  # imported where a graph is built: keeps `tspsim --help` and `list` fast
    import networkx as nx


@dataclass
class OpGraph:
    """Ops of the simulated ranks, their issue order per stream, and metadata."""

    ops: list[Op] = field(default_factory=list)
    """All ops, indexed by id."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Schedule, model, plan, workload and options that produced the graph (recorded in results)."""
    ranks: tuple[int, ...] = ()
    """Ranks whose ops are in the graph (one replica when the graph is folded)."""
    replica_nodes: int = 0
    """If > 0: the graph holds one replica of this many nodes; other replicas mirror it (folding)."""

    @property
    def graph(self) -> nx.DiGraph:
        """networkx view: node per op id (attribute ``op``), edge per dependency."""
        import networkx as nx

        g = nx.DiGraph()
        for op in self.ops:
            g.add_node(op.id, op=op)
        for op in self.ops:
            for dep in op.deps:
                g.add_edge(dep, op.id)
        return g

    def streams(self) -> dict[tuple[int, str], list[Op]]:
        """Ops of each (rank, stream) in issue order."""
        out: dict[tuple[int, str], list[Op]] = {}
        get = out.get
        for op in self.ops:
            key = (op.rank, op.stream)
            ops = get(key)
            if ops is None:
                out[key] = [op]
            else:
                ops.append(op)
        return out

    # ------------------------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        """Versioned JSON document."""
        return {"format": FORMAT, "version": FORMAT_VERSION, "meta": self.meta, "ranks": list(self.ranks),
                "replica_nodes": self.replica_nodes, "ops": [op.to_json() for op in self.ops]}

    def save(self, path: str | Path) -> None:
        """Write the graph (gzip if the name ends in .gz) atomically."""
        from tspsim.core.files import write_text_atomic

        text = json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)
        write_text_atomic(Path(path), text)

    @classmethod
    def load(cls, path: str | Path) -> OpGraph:
        """Read and validate a saved graph (plain or gzip JSON, recognised by its first bytes).

        Raises:
            TraceError: one line naming the file and the problem (missing, truncated, foreign, invalid).
        """
        from tspsim.core.files import read_document

        p = Path(path)
        doc = parse_json(read_document(p, "trace"), p, "trace",
                         "regenerate it with tspsim generate")
        return cls.from_json(doc, str(p))

    @classmethod
    def from_json(cls, doc: Any, where: str = "trace") -> OpGraph:
        """Build a graph from its JSON form, validating every field and the structure (see :func:`validate`).

        Raises:
            TraceError: ``WHERE: ops[3].rank: expected ..., got ...`` style messages.
        """
        ops, meta, ranks, replica_nodes = parse_graph_document(doc, where)
        graph = cls(ops=ops, meta=meta, ranks=ranks, replica_nodes=replica_nodes)
        validate(graph, where)
        return graph


