"""What a collective does on the network: phases of hops, as a size-free shape and as a sized plan.

A collective of N bytes on a group becomes phases run one after another; each phase is a start-up
latency and then **one flow**: every hop of the phase (src → dst carrying frac · N bytes) moves
together, pipelined, at one common rate set by the most loaded link (the channels of a collective
advance in lockstep, as a collective ends with its slowest channel). A :class:`Shape` holds the hops
as fractions of N, so one shape serves every size: flow-level dynamics scale with N, which makes the
isolated time of a shape exactly latency + N_eff(N) / rate (:mod:`tspsim.engine.collectives.policy`).

Chunked pipelines (trees, hierarchical collectives) fill before they stream: a :class:`Pipeline`
adds its fill as extra progress at the flow's own rate, N_eff = N + stages · min(N, pipes · chunk),
with NCCL's automatic chunk size (halve the chunk, down to 32 KiB, until every pipe carries at least
16 · depth chunks). The fill is time, not bytes: byte accounting uses the hops only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from tspsim.spec.topology import Topology

PROTOCOLS = ("LL", "LL128", "Simple")
"""NCCL/RCCL wire protocols (NCCL_PROTO)."""
MIN_CHUNK_BYTES = 32768
"""Smallest chunk NCCL's automatic chunk sizing goes down to (tree / CollNet chunk halving)."""


@dataclass(frozen=True, eq=False)
class FlowSpec:
    """The hops of one phase; hop i carries ``frac[i]`` · N bytes from ``src[i]`` to ``dst[i]``.

    A negative endpoint −1 − n is node n's NVLS engine (:mod:`tspsim.spec.routes`).
    """

    src: np.ndarray
    """Sending rank of each hop."""
    dst: np.ndarray
    """Receiving rank of each hop."""
    frac: np.ndarray
    """Bytes on each hop per byte of the collective's payload N."""

    @staticmethod
    def of(hops: Iterable[tuple[int, int]], frac: float | Sequence[float]) -> FlowSpec:
        """A flow from (src, dst) pairs and one fraction (or one per hop)."""
        pairs = np.array(list(hops), dtype=np.int64).reshape(-1, 2)
        fr = np.broadcast_to(np.asarray(frac, dtype=np.float64), (len(pairs),)).copy()
        return FlowSpec(pairs[:, 0].copy(), pairs[:, 1].copy(), fr)

    @staticmethod
    def concat(flows: Sequence[FlowSpec]) -> FlowSpec:
        """All hops of ``flows`` as one flow."""
        if not flows:
            return FlowSpec.of((), 0.0)
        return FlowSpec(np.concatenate([f.src for f in flows]), np.concatenate([f.dst for f in flows]),
                        np.concatenate([f.frac for f in flows]))

    @property
    def hops(self) -> list[tuple[int, int]]:
        """(src, dst) pairs."""
        return list(zip(self.src.tolist(), self.dst.tolist()))

    def __len__(self) -> int:
        return len(self.src)


@dataclass(frozen=True)
class Pipeline:
    """Fill of a chunked pipeline: N_eff(N) = N + stages · min(N, pipes · chunk(N))."""

    stages: int
    """Stages a chunk crosses before the last one streams (pipeline depth − 1)."""
    pipes: int
    """Pipelines side by side (channels or rails), each carrying N / pipes."""
    depth: int
    """Pipeline depth NCCL's automatic chunk sizing aims at (≥ 16 · depth chunks per pipe)."""
    max_chunk_bytes: int
    """Largest chunk (``intra.chunk_bytes``)."""

    def chunk_bytes(self, nbytes: float) -> int:
        """NCCL's automatic chunk: halve from the largest while a pipe would hold < 16 · depth chunks."""
        c = self.max_chunk_bytes
        while c > MIN_CHUNK_BYTES and nbytes / (self.pipes * c) < 16 * self.depth:
            c //= 2
        return c

    def effective_bytes(self, nbytes: float) -> float:
        """Progress the flow must make: the payload plus the fill (non-decreasing in ``nbytes``)."""
        return nbytes + self.stages * min(nbytes, self.pipes * self.chunk_bytes(nbytes))


@dataclass(frozen=True, eq=False)
class Phase:
    """A start-up latency, then one flow; the phase ends when the flow ends."""

    latency_s: float
    """Start-up latency of the phase in seconds."""
    flow: FlowSpec
    """The hops moving together."""
    pipeline: Pipeline | None = None
    """Fill of a chunked pipeline, or None (rings, direct steps)."""

    def progress(self, nbytes: float) -> float:
        """Progress (payload-equivalent bytes) the flow makes for a collective of ``nbytes``."""
        return self.pipeline.effective_bytes(nbytes) if self.pipeline is not None else float(nbytes)


@dataclass(frozen=True, eq=False)
class Shape:
    """A collective's algorithm on a group, independent of its size."""

    algorithm: str
    """Algorithm name (:data:`tspsim.opgraph.op.ALGORITHMS`)."""
    protocol: str
    """Wire protocol (:data:`PROTOCOLS`)."""
    channels: int
    """Parallel channels (rings, tree pairs, rails or concurrent peers)."""
    phases: tuple[Phase, ...]
    """Phases run one after another."""
    hops_key: tuple = ()
    """Identifies the hops (kind, group, root, algorithm): shapes that differ only by protocol share it."""


@dataclass(frozen=True, eq=False)
class CollectivePlan:
    """A shape at one size: what one collective does on the network."""

    shape: Shape
    """The algorithm's phases as fractions of the payload."""
    nbytes: int
    """Payload N of the collective."""

    @property
    def algorithm(self) -> str:
        """Name of the algorithm used."""
        return self.shape.algorithm

    @property
    def protocol(self) -> str:
        """Wire protocol used."""
        return self.shape.protocol

    @property
    def channels(self) -> int:
        """Parallel channels."""
        return self.shape.channels

    @property
    def phases(self) -> tuple[Phase, ...]:
        """Phases run one after another."""
        return self.shape.phases

    def bytes_per_rank(self) -> tuple[dict[int, float], dict[int, float]]:
        """(sent, received) bytes per rank, summed over phases and hops (NVLS engine hops excluded)."""
        sent: dict[int, float] = {}
        recv: dict[int, float] = {}
        for phase in self.phases:
            f = phase.flow
            for ranks, out in ((f.src, sent), (f.dst, recv)):
                ok = ranks >= 0
                if not ok.any():
                    continue
                uniq, inv = np.unique(ranks[ok], return_inverse=True)
                sums = np.bincount(inv, weights=f.frac[ok]) * self.nbytes
                for r, b in zip(uniq.tolist(), sums.tolist()):
                    out[r] = out.get(r, 0.0) + b
        return sent, recv


EMPTY = Shape("none", "Simple", 0, ())
"""The shape of a collective with nothing to move (one rank, or zero bytes)."""


@dataclass(frozen=True)
class GroupInfo:
    """A group's ranks by node."""

    nodes: tuple[int, ...]
    """Nodes the group spans, ascending."""
    members: tuple[tuple[int, ...], ...]
    """Ranks on each of ``nodes``, ascending."""
    gpus_per_node: int
    """GPUs per node of the topology."""

    @property
    def ranks(self) -> tuple[int, ...]:
        """All ranks, node-major ascending."""
        return tuple(r for node in self.members for r in node)

    @property
    def k(self) -> int:
        """Nodes spanned."""
        return len(self.nodes)

    @cached_property
    def p(self) -> int:
        """Ranks (cached, like :attr:`regular`)."""
        return sum(len(m) for m in self.members)

    @cached_property
    def m(self) -> int:
        """Most ranks on one node (cached)."""
        return max(len(m) for m in self.members)

    @cached_property
    def member_array(self) -> np.ndarray:
        """``members`` as a k × m array (every node holds m ranks: only asked of :attr:`regular` groups)."""
        return np.array(self.members, dtype=np.int64).reshape(self.k, self.m)

    @cached_property
    def regular(self) -> bool:
        """Every node holds the same local positions (same GPUs of each node): rail-aligned channels.

        Cached: the policy asks it of one group once per candidate algorithm (groups of up to 16,384 ranks).
        Nodes of different sizes cannot hold the same positions; equal sizes are compared row by row on the
        k × m :attr:`member_array` (which the ring construction reuses).
        """
        if self.p != self.k * self.m:
            return False
        local = self.member_array % self.gpus_per_node
        return bool((local == local[0]).all())


def group_info(group: Sequence[int], topo: Topology) -> GroupInfo:
    """Split ``group`` by node."""
    by_node: dict[int, list[int]] = {}
    g = topo.gpus_per_node                      # topo.node_of(r) = r // g, inlined (16,384-rank groups)
    for r in group:
        node = r // g
        if node in by_node:
            by_node[node].append(r)
        else:
            by_node[node] = [r]
    nodes = tuple(sorted(by_node))
    return GroupInfo(nodes, tuple(tuple(sorted(by_node[n])) for n in nodes), topo.gpus_per_node)
