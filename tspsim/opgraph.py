"""The op graph: per-rank operations with dependencies, the engine's only input besides a topology.

Vocabulary (design.md §1):

* **compute ops** (``gemm``, ``attention_fwd``, ``attention_bwd``, ``elementwise``, ``optimizer``) carry
  FLOPs, HBM bytes and a shape; the engine turns them into time with the topology's roofline.
* **collective ops** (``all_reduce``, ``reduce_scatter``, ``all_gather``, ``broadcast``, ``reduce``,
  ``all_to_all``): one op per participating rank, sharing a ``coll`` id, with the group, the payload
  ``nbytes`` (N·s of reference/tensor-parallelism-analysis.md: the full buffer, i.e. the gathered size
  for all-gather and the input size for reduce-scatter, as nccl-tests counts it) and an optional root.
* **point-to-point** ``send``/``recv`` pairs sharing a ``coll`` id.
* **memory events**: each op carries ``mem`` entries ``(when, category, delta_bytes)`` applied when it
  starts (``"start"``) or ends (``"end"``); a zero-duration compute op of kind ``memory`` carries pure
  allocations and frees.

Every op has a rank, a stream, a layer (−1 outside the decoder blocks), a phase (``fwd``, ``bwd``,
``opt``) and a readable name. Ops on one (rank, stream) run in **issue order** (the order they were
added), like HIP/CUDA streams; cross-stream and cross-rank ordering is expressed by dependency edges.

Graphs are stored as a networkx ``DiGraph`` (node = op id, attribute ``op``) plus the per-stream issue
lists, and saved as versioned JSON (``tspsim generate``/``tspsim replay``).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from tspsim.errors import TraceError

FORMAT = "tspsim-opgraph"
FORMAT_VERSION = 1

COMPUTE_KINDS = ("gemm", "attention_fwd", "attention_bwd", "elementwise", "optimizer", "memory")
COLLECTIVE_KINDS = ("all_reduce", "reduce_scatter", "all_gather", "broadcast", "reduce", "all_to_all")
P2P_KINDS = ("send", "recv")
MEMORY_CATEGORIES = (
    "parameters", "gradients", "optimizer_state", "activations", "temporary", "comm_buffers", "kv_cache",
    "reserved",
)


@dataclass(slots=True)
class Op:
    """One operation on one rank's stream."""

    id: int
    """Unique id inside the graph (also the networkx node)."""
    rank: int
    """Global rank that executes the op."""
    stream: str
    """Stream name: ``compute`` or a communication stream such as ``comm``, ``kv``, ``ring``, ``dp``."""
    kind: str
    """One of COMPUTE_KINDS, COLLECTIVE_KINDS or P2P_KINDS."""
    name: str
    """Readable name, e.g. ``L3.attn.qkv[r=2]``."""
    layer: int = -1
    """Decoder block index, or −1 for embeddings, head, loss and optimizer."""
    phase: str = "fwd"
    """``fwd``, ``bwd`` or ``opt``."""
    flops: float = 0.0
    """Floating-point operations (compute ops)."""
    hbm_bytes: float = 0.0
    """Bytes read and written from HBM (compute ops)."""
    shape: tuple[int, ...] = ()
    """GEMM (m, n, k) or attention (batch, q_tokens, kv_tokens, heads, head_dim); informational."""
    nbytes: int = 0
    """Payload N·s of a collective or the bytes of a send/recv."""
    group: tuple[int, ...] = ()
    """Participating global ranks of a collective (for p2p: (src, dst))."""
    coll: str = ""
    """Id shared by all participants of one collective or p2p transfer."""
    root: int = -1
    """Root rank of broadcast/reduce, −1 otherwise."""
    algorithm: str = ""
    """Forced collective algorithm, or empty for the topology's policy."""
    mem: tuple[tuple[str, str, int], ...] = ()
    """Memory events (``start``/``end``, category, signed bytes)."""
    deps: list[int] = field(default_factory=list)
    """Ops (any rank, any stream) that must finish before this op starts."""

    @property
    def is_compute(self) -> bool:
        """True for ops that run on the compute stream's roofline."""
        return self.kind in COMPUTE_KINDS

    @property
    def is_comm(self) -> bool:
        """True for collectives and point-to-point transfers."""
        return not self.is_compute

    def to_json(self) -> dict[str, Any]:
        """Compact JSON form (defaults omitted)."""
        out: dict[str, Any] = {"id": self.id, "rank": self.rank, "stream": self.stream, "kind": self.kind,
                               "name": self.name, "layer": self.layer, "phase": self.phase}
        if self.flops:
            out["flops"] = self.flops
        if self.hbm_bytes:
            out["hbm_bytes"] = self.hbm_bytes
        if self.shape:
            out["shape"] = list(self.shape)
        if self.is_comm:
            out.update(nbytes=self.nbytes, group=list(self.group), coll=self.coll)
            if self.root >= 0:
                out["root"] = self.root
            if self.algorithm:
                out["algorithm"] = self.algorithm
        if self.mem:
            out["mem"] = [list(m) for m in self.mem]
        if self.deps:
            out["deps"] = list(self.deps)
        return out


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
        for op in self.ops:
            out.setdefault((op.rank, op.stream), []).append(op)
        return out

    # ------------------------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        """Versioned JSON document."""
        return {"format": FORMAT, "version": FORMAT_VERSION, "meta": self.meta, "ranks": list(self.ranks),
                "replica_nodes": self.replica_nodes, "ops": [op.to_json() for op in self.ops]}

    def save(self, path: str | Path) -> None:
        """Write the graph (gzip if the name ends in .gz) atomically."""
        from tspsim.atomic import write_text_atomic

        text = json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)
        write_text_atomic(Path(path), text)

    @classmethod
    def load(cls, path: str | Path) -> OpGraph:
        """Read and validate a saved graph."""
        p = Path(path)
        try:
            raw = gzip.decompress(p.read_bytes()).decode() if p.suffix == ".gz" else p.read_text()
        except FileNotFoundError:
            raise TraceError(f"{p}: trace file not found") from None
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise TraceError(f"{p}: cannot read trace ({exc})") from None
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{p}: not valid JSON (line {exc.lineno}: {exc.msg}); the file may be truncated") from None
        return cls.from_json(doc, str(p))

    @classmethod
    def from_json(cls, doc: Any, where: str = "trace") -> OpGraph:
        """Build a graph from its JSON form, validating structure (see :func:`validate`)."""
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise TraceError(f"{where}: not a tspsim op graph (missing \"format\": \"{FORMAT}\")")
        if doc.get("version") != FORMAT_VERSION:
            raise TraceError(f"{where}: op-graph version {doc.get('version')!r} is not supported "
                             f"(this tspsim reads version {FORMAT_VERSION}); regenerate it with tspsim generate")
        ops_raw = doc.get("ops")
        if not isinstance(ops_raw, list):
            raise TraceError(f"{where}: key 'ops' must be a list")
        ops = []
        for i, o in enumerate(ops_raw):
            try:
                ops.append(_op_from_json(o))
            except (KeyError, TypeError, ValueError) as exc:
                raise TraceError(f"{where}: ops[{i}] is malformed ({exc}); "
                                 "expected the fields of tspsim.opgraph.Op") from None
        graph = cls(ops=ops, meta=doc.get("meta") or {}, ranks=tuple(doc.get("ranks") or sorted({o.rank for o in ops})),
                    replica_nodes=int(doc.get("replica_nodes") or 0))
        validate(graph, where)
        return graph


def _op_from_json(o: dict[str, Any]) -> Op:
    kind = str(o["kind"])
    if kind not in COMPUTE_KINDS + COLLECTIVE_KINDS + P2P_KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    mem = tuple((str(w), str(c), int(b)) for w, c, b in o.get("mem", ()))
    for when, cat, _ in mem:
        if when not in ("start", "end") or cat not in MEMORY_CATEGORIES:
            raise ValueError(f"bad memory event ({when!r}, {cat!r})")
    return Op(id=int(o["id"]), rank=int(o["rank"]), stream=str(o["stream"]), kind=kind, name=str(o["name"]),
              layer=int(o.get("layer", -1)), phase=str(o.get("phase", "fwd")), flops=float(o.get("flops", 0.0)),
              hbm_bytes=float(o.get("hbm_bytes", 0.0)), shape=tuple(int(x) for x in o.get("shape", ())),
              nbytes=int(o.get("nbytes", 0)), group=tuple(int(x) for x in o.get("group", ())),
              coll=str(o.get("coll", "")), root=int(o.get("root", -1)), algorithm=str(o.get("algorithm", "")),
              mem=mem, deps=[int(d) for d in o.get("deps", ())])


def validate(graph: OpGraph, where: str = "op graph") -> None:
    """Check ids, dependencies, acyclicity and collective consistency.

    Raises:
        TraceError: on dangling dependencies, cycles, or collectives whose participants disagree on
            kind, size, group or root.
    """
    for i, op in enumerate(graph.ops):
        if op.id != i:
            raise TraceError(f"{where}: op ids must be 0..n-1 in order; op at position {i} has id {op.id}")
    n = len(graph.ops)
    for op in graph.ops:
        for d in op.deps:
            if not 0 <= d < n:
                raise TraceError(f"{where}: op {op.id} ({op.name}) depends on missing op {d}")
            if d == op.id:
                raise TraceError(f"{where}: op {op.id} ({op.name}) depends on itself")
    g = graph.graph
    # Issue order on a stream is an implicit dependency: add it before looking for cycles.
    for ops in graph.streams().values():
        for a, b in zip(ops, ops[1:]):
            g.add_edge(a.id, b.id)
    if not nx.is_directed_acyclic_graph(g):
        cycle = nx.find_cycle(g)
        names = " -> ".join(graph.ops[u].name for u, _ in cycle[:6])
        raise TraceError(f"{where}: dependency cycle: {names}")
    seen: dict[str, Op] = {}
    members: dict[str, set[int]] = {}
    for op in graph.ops:
        if not op.is_comm:
            continue
        if not op.coll:
            raise TraceError(f"{where}: communication op {op.id} ({op.name}) has no 'coll' id")
        first = seen.setdefault(op.coll, op)
        if op.kind in P2P_KINDS:
            if len(op.group) != 2:
                raise TraceError(f"{where}: {op.kind} op {op.id} needs group [src, dst]")
            continue
        if (first.kind, first.nbytes, first.group, first.root) != (op.kind, op.nbytes, op.group, op.root):
            raise TraceError(
                f"{where}: collective {op.coll!r}: rank {op.rank} issues {op.kind} of {op.nbytes} B on "
                f"{list(op.group)} but rank {first.rank} issues {first.kind} of {first.nbytes} B on "
                f"{list(first.group)}")
        if op.rank not in op.group:
            raise TraceError(f"{where}: rank {op.rank} issues collective {op.coll!r} but is not in its group")
        ranks = members.setdefault(op.coll, set())
        if op.rank in ranks:
            raise TraceError(f"{where}: rank {op.rank} issues collective {op.coll!r} twice")
        ranks.add(op.rank)


class GraphBuilder:
    """Appends ops in issue order; schedules use it to build an :class:`OpGraph`.

    Each call returns op ids so later ops can depend on them. Collectives and p2p transfers get
    fresh ids shared by all participants.
    """

    def __init__(self, ranks: Sequence[int], meta: dict[str, Any] | None = None, replica_nodes: int = 0) -> None:
        self.graph = OpGraph(meta=dict(meta or {}), ranks=tuple(ranks), replica_nodes=replica_nodes)
        self._next_coll = 0

    def _add(self, op: Op) -> int:
        op.id = len(self.graph.ops)
        self.graph.ops.append(op)
        return op.id

    def compute(self, rank: int, kind: str, name: str, *, flops: float = 0.0, hbm_bytes: float = 0.0,
                shape: Iterable[int] = (), layer: int = -1, phase: str = "fwd", deps: Iterable[int] = (),
                mem: Iterable[tuple[str, str, int]] = (), stream: str = "compute") -> int:
        """Add a compute op on ``rank``'s compute stream; returns its id."""
        return self._add(Op(0, rank, stream, kind, name, layer, phase, float(flops), float(hbm_bytes),
                            tuple(int(s) for s in shape), mem=tuple(mem), deps=[d for d in deps if d is not None]))

    def memory(self, rank: int, name: str, mem: Iterable[tuple[str, int]], *, layer: int = -1,
               phase: str = "fwd", deps: Iterable[int] = (), stream: str = "compute") -> int:
        """Add a zero-cost op that only allocates (+bytes) or frees (−bytes) memory."""
        return self.compute(rank, "memory", name, layer=layer, phase=phase, deps=deps, stream=stream,
                            mem=[("start", cat, int(b)) for cat, b in mem])

    def new_coll_id(self, prefix: str) -> str:
        """A fresh collective id."""
        self._next_coll += 1
        return f"{prefix}#{self._next_coll}"

    def collective(self, kind: str, group: Sequence[int], nbytes: int, name: str, *, stream: str = "comm",
                   layer: int = -1, phase: str = "fwd", deps: dict[int, Iterable[int]] | None = None,
                   root: int = -1, algorithm: str = "", mem: dict[int, Iterable[tuple[str, str, int]]] | None = None,
                   issuers: Iterable[int] | None = None) -> dict[int, int]:
        """Add one op per issuing rank for a collective on ``group``; returns {rank: op id}.

        ``issuers`` defaults to the members of ``group`` that this graph simulates (a folded graph holds
        one replica; the other members are mirrors the engine treats as symmetric copies).
        """
        coll = self.new_coll_id(kind)
        group_t = tuple(group)
        sim = set(self.graph.ranks)
        who = [r for r in (issuers if issuers is not None else group_t) if r in sim]
        out = {}
        for r in who:
            out[r] = self._add(Op(0, r, stream, kind, f"{name}", layer, phase, nbytes=int(nbytes), group=group_t,
                                  coll=coll, root=root, algorithm=algorithm, mem=tuple((mem or {}).get(r, ())),
                                  deps=[d for d in (deps or {}).get(r, ()) if d is not None]))
        return out

    def p2p(self, src: int, dst: int, nbytes: int, name: str, *, send_stream: str = "comm",
            recv_stream: str = "comm", layer: int = -1, phase: str = "fwd", send_deps: Iterable[int] = (),
            recv_deps: Iterable[int] = (), recv_mem: Iterable[tuple[str, str, int]] = (),
            send_mem: Iterable[tuple[str, str, int]] = ()) -> tuple[int | None, int | None]:
        """Add a send on ``src`` and a recv on ``dst`` (each only if simulated); returns their ids."""
        coll = self.new_coll_id("p2p")
        sim = set(self.graph.ranks)
        s = r = None
        if src in sim:
            s = self._add(Op(0, src, send_stream, "send", f"{name}", layer, phase, nbytes=int(nbytes),
                             group=(src, dst), coll=coll, mem=tuple(send_mem),
                             deps=[d for d in send_deps if d is not None]))
        if dst in sim:
            r = self._add(Op(0, dst, recv_stream, "recv", f"{name}", layer, phase, nbytes=int(nbytes),
                             group=(src, dst), coll=coll, mem=tuple(recv_mem),
                             deps=[d for d in recv_deps if d is not None]))
        return s, r
