"""Cluster topologies: GPU spec, node fabric, scale-out fabric, and the graph of directed links.

A topology is data (``topologies/*.yaml``, numbers and sources from reference/hardware.md). This
module validates it strictly and builds a networkx ``DiGraph`` of GPUs, NICs and switches joined by
**directed links** with capacity and latency (design.md §1, fidelity rules 1 and 3):

* ``full_mesh`` node fabric (AMD xGMI): one directed link per ordered GPU pair, so a group smaller
  than the node only owns the links between its members.
* ``switch`` node fabric (NVSwitch): one up-port and one down-port per GPU into a non-blocking switch;
  contention is at the GPU ports.
* scale-out: one NIC per GPU (rail), attached over PCIe; ``rails_only`` has one switch per rail and
  forwards cross-rail traffic over the node fabric first (PXN); ``rail_optimized_fat_tree`` adds a
  spine tier above per-rail leaf switches, with oversubscription on the leaf up-links.

Files are read and validated by :mod:`tspsim.spec.topology_file`. Routes are computed by rule (not by
a generic shortest-path search) so they are deterministic and cheap; ``tests/test_topology.py`` checks
them against the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

if TYPE_CHECKING:  # imported where a graph is built: keeps `tspsim --help` and `list` fast
    import networkx as nx



@dataclass(frozen=True)
class GpuSpec:
    """One accelerator: peak rates, memory and measured efficiencies (hardware.md §1, §4, §9)."""

    name: str
    """Short GPU name, e.g. ``mi300x``."""
    peak_bf16_TFLOPS: float
    """Dense BF16 peak in TFLOP/s (no sparsity)."""
    peak_fp8_TFLOPS: float
    """Dense FP8 peak in TFLOP/s."""
    mfu_peak_TFLOPS: float
    """MFU denominator in TFLOP/s; torchtitan's hard-coded values so MFU stays comparable."""
    hbm_GB: float
    """HBM capacity in GB (1e9 bytes)."""
    hbm_TBps: float
    """HBM peak bandwidth in TB/s."""
    runtime_reserve_GB: float
    """Memory the runtime holds before the model allocates anything (context, allocator, comm)."""
    kernel_launch_us: float
    """Fixed overhead added to every compute kernel, in microseconds."""
    gemm_efficiency: float
    """Fraction of BF16 peak a large GEMM reaches (MAMF / peak)."""
    gemm_half_GFLOP: float
    """GEMM size in GFLOP at which efficiency is half of ``gemm_efficiency`` (small-GEMM roll-off)."""
    attn_fwd_efficiency: float
    """Fraction of BF16 peak reached by the flash-attention forward kernel."""
    attn_bwd_efficiency: float
    """Fraction of BF16 peak reached by the flash-attention backward kernel."""
    hbm_efficiency: float
    """Fraction of HBM peak bandwidth a streaming kernel reaches."""
    sm_count: int = 0
    """Streaming multiprocessors (NVIDIA) or compute units (AMD): the width of one wave of GEMM tiles
    (hardware.md §1, appendix). 0: not given, no wave quantisation (:func:`tspsim.engine.costs.wave_efficiency`)."""
    gemm_wave_tile: tuple[int, int] | None = None
    """(rows, columns) of the output tile one SM computes when the software stack's GEMM library schedules
    tiles in waves of ``sm_count`` (set from the stack by :func:`tspsim.engine.costs.kernel_gpu`, never read
    from a topology file). None: the stack's library is not modelled tile by tile; the smooth roll-off stands."""
    gemm_operand_bytes: int = 0
    """Bytes per GEMM operand element of the graph being replayed, set from the graph with ``gemm_wave_tile``
    (never read from a topology file): it tells a tiled GEMM's output bytes, which its epilogues store, from
    the inputs in its HBM bytes (:func:`tspsim.engine.costs.epilogue_seconds`). 0: not given, no epilogue term."""


@dataclass(frozen=True)
class Protocol:
    """One NCCL/RCCL wire protocol on one fabric (LL or LL128; Simple is the fabric's own numbers)."""

    bandwidth_factor: float
    """Payload fraction of the wire bytes (LL: 8-byte lines carry 4 bytes of data and 4 of flags = 0.5)."""
    ring_step_us: float
    """Per-step latency of a ring step on this fabric with this protocol, µs."""
    tree_step_us: float
    """Per-step latency of a tree step on this fabric with this protocol, µs."""
    base_us: float = 0.0
    """Base latency of a collective with this protocol, µs (``intra`` only: one per collective)."""


@dataclass(frozen=True)
class Nvls:
    """NVLink SHARP: the switch reduces and multicasts (hardware.md §2.2, §6.4)."""

    busbw_GBps: float
    """Measured all-reduce bus bandwidth of a whole node with NVLS; sets the switch's reduction rate."""
    step_us: float
    """Latency of an NVLS collective, µs (NCCL's NVLS NVLink latency [S21])."""
    net_step_us: float | None = None
    """Network step of NCCL's NVLS tree across nodes, µs (NCCL's NVLS network latency [S21]); None: the
    preset offers no multi-node NVLS tree."""


@dataclass(frozen=True)
class IntraFabric:
    """The node fabric: xGMI full mesh or NVSwitch."""

    kind: Literal["full_mesh", "switch"]
    """``full_mesh``: a link per ordered GPU pair; ``switch``: a port pair per GPU into a switch."""
    link_GBps: float
    """Peak per direction: per link for a mesh, per GPU port for a switch (GB/s, 1e9 B/s)."""
    link_efficiency: float
    """Fraction of ``link_GBps`` a single stream reaches on the wire; the simulated capacity."""
    collective_efficiency: float
    """Fraction of link capacity a collective kernel's payload reaches (Simple protocol, kernel overhead).

    A property of the link: a collective flow puts 1/efficiency wire bytes on the link per payload byte."""
    hop_latency_us: float
    """Wire latency per hop in microseconds (added to every transfer's first byte)."""
    direct_alpha_us: float
    """Start-up time of a direct (one-shot/two-shot) collective step in microseconds."""
    ring_base_us: float
    """Base latency of a ring collective in microseconds (NCCL/RCCL cost model, Simple protocol)."""
    ring_step_us: float
    """Per-step latency of a ring collective on this fabric in microseconds (Simple protocol)."""
    direct_max_bytes: int
    """Largest collective the direct (MSCCL++-style, single-node) kernels accept; a library limit, not a
    switching threshold: the policy picks direct only where it predicts it fastest."""
    compute_slowdown: float
    """Compute time is multiplied by ``1 + compute_slowdown`` while a collective runs on the GPU."""
    tree_step_us: float = 4.0
    """Per-step latency of a tree (chain) step on this fabric, Simple protocol, µs (NCCL NVLink tree [S21])."""
    ll: Protocol | None = None
    """The LL protocol on this fabric (absent: not offered); base latency and steps as NCCL/RCCL model them."""
    ll128: Protocol | None = None
    """The LL128 protocol on this fabric (absent: not offered)."""
    nvls: Nvls | None = None
    """NVLink SHARP in the switch (``switch`` fabrics only; absent: no NVLS)."""
    chunk_bytes: int = 524288
    """Largest pipeline chunk of tree and hierarchical collectives (NCCL: NCCL_BUFFSIZE 4 MiB / NCCL_STEPS 8)."""


@dataclass(frozen=True)
class InterFabric:
    """Scale-out network: one NIC per GPU, arranged in rails."""

    topology: Literal["rails_only", "rail_optimized_fat_tree"]
    """``rails_only``: one switch per rail, no spine; ``rail_optimized_fat_tree``: leaves + spine."""
    nic_GBps: float
    """NIC peak per direction in GB/s (400 Gb/s = 50 GB/s)."""
    nic_efficiency: float
    """Fraction of ``nic_GBps`` reached by RDMA transfers; the simulated NIC capacity."""
    pcie_GBps: float
    """GPU↔NIC PCIe peak per direction in GB/s."""
    nodes_per_leaf: int
    """Nodes whose same-rail NICs share one leaf switch (fat tree); ignored for rails-only."""
    oversubscription: float
    """Leaf down/up bandwidth ratio of the fat tree (1.0 = non-blocking)."""
    hop_latency_us: float
    """Latency per network hop in microseconds."""
    ring_step_us: float
    """Per-step latency of a ring step that crosses the network, Simple protocol, in microseconds."""
    base_us: float
    """Extra base latency added once to a collective that spans nodes, in microseconds."""
    compute_slowdown: float
    """Compute slowdown factor while an inter-node collective runs on the GPU."""
    collective_efficiency: float = 1.0
    """Fraction of NIC capacity a collective's payload reaches (Simple protocol; NIC links and PCIe)."""
    tree_step_us: float = 14.0
    """Per-step latency of a tree step that crosses the network, Simple protocol, µs (NCCL [S21])."""
    net_overhead_us: float = 1.0
    """Network post overhead: floor of the intra-node ring step once several nodes take part (×3 for Simple)."""
    p2p_concurrency: int = 16
    """Peers a rank exchanges with at once in a multi-node all-to-all (NCCL p2p channels per peer)."""
    ll: Protocol | None = None
    """The LL protocol across the network (absent: not offered)."""
    ll128: Protocol | None = None
    """The LL128 protocol across the network (absent: not offered)."""


class Link(NamedTuple):
    """One directed, bandwidth-limited channel of the topology graph.

    An immutable named tuple rather than a frozen dataclass: a 2,048-node cluster has 180,000 links, and
    a tuple is built three times faster.
    """

    index: int
    """Position in ``Topology.links``; flows refer to links by this index."""
    src: str
    """Graph node the link leaves (``g<rank>``, ``nic<rank>``, ``sw...``)."""
    dst: str
    """Graph node the link enters."""
    kind: str
    """``xgmi``, ``nvlink_up``, ``nvlink_down``, ``pcie``, ``nic_up``, ``nic_down``, ``spine_up``, ``spine_down``,
    ``nvls`` (a switch's reduction engine)."""
    capacity_Bps: float
    """Usable capacity in bytes per second (peak × efficiency)."""
    latency_s: float
    """Propagation latency in seconds."""
    node: int
    """Node the link belongs to (for spine links: the leaf group's first node), used by folding."""


@dataclass(frozen=True)
class Topology:
    """A cluster: ``nodes`` × ``gpus_per_node`` GPUs, their fabrics and the link graph."""

    name: str
    """Preset name or file stem."""
    description: str
    """One line shown by ``tspsim list topologies``."""
    gpu: GpuSpec
    """The accelerator."""
    nodes: int
    """Number of nodes."""
    gpus_per_node: int
    """GPUs per node."""
    intra: IntraFabric
    """Node fabric."""
    inter: InterFabric | None
    """Scale-out fabric, or None for a single node."""
    source_sha256: str = ""
    """Hash of the resolved YAML, recorded with results (reproducibility)."""
    resolved: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """The fully merged YAML mapping this topology was built from."""

    # ----------------------------------------------------------------------------------- sizes
    @property
    def world_size(self) -> int:
        """Total GPUs."""
        return self.nodes * self.gpus_per_node

    def node_of(self, rank: int) -> int:
        """Node index of a global rank (ranks are node-major)."""
        return rank // self.gpus_per_node

    def local_of(self, rank: int) -> int:
        """Index of a rank inside its node (= its rail)."""
        return rank % self.gpus_per_node

    @property
    def fabric_summary(self) -> str:
        """Human description of the fabrics, e.g. ``xGMI full mesh + rails-only 400G``."""
        intra = "xGMI full mesh" if self.intra.kind == "full_mesh" else "NVSwitch"
        if self.inter is None:
            return intra
        gbit = round(self.inter.nic_GBps * 8)
        inter = "rails-only" if self.inter.topology == "rails_only" else "rail-optimized fat tree"
        return f"{intra} + {inter} {gbit}G"

    # ----------------------------------------------------------------------------------- graph
    @cached_property
    def links(self) -> tuple[Link, ...]:
        """All directed links, in a deterministic order."""
        return tuple(_build_links(self))

    @cached_property
    def link_capacities(self) -> list[float]:
        """Capacity of every link (bytes/s), indexed like :attr:`links`; built once per topology, read-only.

        Built from the link blocks (:func:`_link_blocks`) without building :attr:`links` (180,000 named tuples
        on 2,048 nodes); ``tests/test_link_arrays.py`` checks it equals ``[l.capacity_Bps for l in links]``.
        """
        return _expand(self, 0)

    @cached_property
    def link_latencies_s(self) -> list[float]:
        """Latency of every link (s), indexed like :attr:`links` (built like :attr:`link_capacities`)."""
        return _expand(self, 1)

    @property
    def link_count(self) -> int:
        """Number of directed links (``len(links)`` without building them)."""
        return len(self.link_capacities)

    @cached_property
    def _link_index(self) -> dict[tuple[str, str], int]:
        return {(link.src, link.dst): link.index for link in self.links}

    @cached_property
    def graph(self) -> nx.DiGraph:
        """networkx DiGraph of devices (``kind`` attribute) and directed links (``link`` attribute)."""
        import networkx as nx

        g = nx.DiGraph()
        for rank in range(self.world_size):
            g.add_node(f"g{rank}", kind="gpu", rank=rank, node=self.node_of(rank))
        for link in self.links:
            for end in (link.src, link.dst):
                if end not in g:
                    g.add_node(end, kind="nic" if end.startswith("nic") else "switch")
            g.add_edge(link.src, link.dst, link=link.index, capacity_Bps=link.capacity_Bps,
                       latency_s=link.latency_s, kind=link.kind)
        return g

    def link_between(self, src: str, dst: str) -> int:
        """Index of the directed link ``src → dst``."""
        return self._link_index[(src, dst)]

    def route(self, src: int, dst: int) -> tuple[int, ...]:
        """Link indices a transfer from GPU ``src`` to GPU ``dst`` crosses, in order."""
        if src == dst:
            return ()
        if self.node_of(src) == self.node_of(dst):
            return self._intra_route(src, dst)
        assert self.inter is not None, "cross-node route on a single-node topology"
        hops: list[int] = []
        via = src
        if self.local_of(src) != self.local_of(dst):
            # Cross-rail: forward over the node fabric to the GPU on the destination's rail (PXN).
            via = self.node_of(src) * self.gpus_per_node + self.local_of(dst)
            hops += self._intra_route(src, via)
        hops += self._rail_route(via, dst)
        return tuple(hops)

    def _intra_route(self, src: int, dst: int) -> list[int]:
        if self.intra.kind == "full_mesh":
            return [self.link_between(f"g{src}", f"g{dst}")]
        sw = f"nvsw{self.node_of(src)}"
        return [self.link_between(f"g{src}", sw), self.link_between(sw, f"g{dst}")]

    def _rail_route(self, src: int, dst: int) -> list[int]:
        """Route between same-rail GPUs on different nodes."""
        assert self.inter is not None
        rail = self.local_of(src)
        up = [self.link_between(f"g{src}", f"nic{src}")]
        down = [self.link_between(f"nic{dst}", f"g{dst}")]
        if self.inter.topology == "rails_only":
            sw = f"rail{rail}"
            return up + [self.link_between(f"nic{src}", sw), self.link_between(sw, f"nic{dst}")] + down
        leaf_s = f"leaf{rail}.{self.node_of(src) // self.inter.nodes_per_leaf}"
        leaf_d = f"leaf{rail}.{self.node_of(dst) // self.inter.nodes_per_leaf}"
        mid = [self.link_between(f"nic{src}", leaf_s)]
        if leaf_s != leaf_d:
            mid += [self.link_between(leaf_s, "spine"), self.link_between("spine", leaf_d)]
        mid.append(self.link_between(leaf_d, f"nic{dst}"))
        return up + mid + down

    # ----------------------------------------------------------------------------------- folding
    def fold_link(self, index: int, replica_nodes: int) -> int:
        """Map a link to its twin in the first ``replica_nodes`` nodes (exact under replica symmetry).

        When every replica of ``replica_nodes`` nodes runs the same ops at the same times, the flows on
        node ``n``'s links are a copy of those on node ``n mod replica_nodes``'s links; a simulation of
        one replica can therefore send its cross-replica traffic onto its own twin links.
        """
        link = self.links[index]
        twin_node = link.node % replica_nodes
        if twin_node == link.node:
            return index
        return self._fold_table(replica_nodes)[index]

    def _fold_table(self, replica_nodes: int) -> dict[int, int]:
        cache = self.__dict__.setdefault("_fold_cache", {})
        if replica_nodes not in cache:
            offset = {}
            for link in self.links:
                shift = (link.node - link.node % replica_nodes) * self.gpus_per_node
                twin = (_shift_name(link.src, shift, self), _shift_name(link.dst, shift, self))
                offset[link.index] = self._link_index[twin]
            cache[replica_nodes] = offset
        return cache[replica_nodes]


def _shift_name(name: str, shift_ranks: int, topo: Topology) -> str:
    """Rename a device of node n to the same device of node n − shift/gpus_per_node."""
    for prefix in ("nic", "g"):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            return f"{prefix}{int(name[len(prefix):]) - shift_ranks}"
    for prefix in ("nvsw", "nvls"):
        if name.startswith(prefix):
            return f"{prefix}{int(name[4:]) - shift_ranks // topo.gpus_per_node}"
    if name.startswith("leaf") and topo.inter is not None:
        rail, group = name[4:].split(".")
        shift_nodes = shift_ranks // topo.gpus_per_node
        return f"leaf{rail}.{int(group) - shift_nodes // topo.inter.nodes_per_leaf}"
    return name


def _capacity_Bps(gbps: float, eff: float) -> float:
    """Usable capacity of a link: peak GB/s × 1e9 × efficiency (one expression for every link array)."""
    return gbps * 1e9 * eff


def _latency_s(lat_us: float) -> float:
    """Latency of a link in seconds."""
    return lat_us * 1e-6


def _link_blocks(topo: Topology) -> list[tuple[int, list[tuple[float, float]]]]:
    """The links of :func:`_build_links` as runs: (repeats, [(capacity B/s, latency s) of each link of the run]).

    The same order and the same arithmetic as :func:`_build_links`, one entry per run of identical links
    (a node's fabric, a rank's four network links, a rail's spine links, the NVLS engines).
    """
    intra, inter, g = topo.intra, topo.inter, topo.gpus_per_node
    blocks: list[tuple[int, list[tuple[float, float]]]] = []
    cap = _capacity_Bps(intra.link_GBps, intra.link_efficiency)
    if intra.kind == "full_mesh":
        blocks.append((topo.nodes * g * (g - 1), [(cap, _latency_s(intra.hop_latency_us))]))
    else:
        blocks.append((topo.nodes * 2 * g, [(cap, _latency_s(intra.hop_latency_us / 2))]))
    if inter is not None:
        pcie = (_capacity_Bps(inter.pcie_GBps, 1.0), _latency_s(0.0))
        nic = (_capacity_Bps(inter.nic_GBps, inter.nic_efficiency), _latency_s(inter.hop_latency_us))
        blocks.append((topo.world_size, [pcie, pcie, nic, nic]))
        groups = -(-topo.nodes // inter.nodes_per_leaf)
        if inter.topology == "rail_optimized_fat_tree" and groups > 1:
            run = []
            for grp in range(groups):
                members = min(inter.nodes_per_leaf, topo.nodes - grp * inter.nodes_per_leaf)
                spine = (_capacity_Bps(inter.nic_GBps * members / inter.oversubscription, inter.nic_efficiency),
                         _latency_s(inter.hop_latency_us))
                run += [spine, spine]
            blocks.append((g, run))
    if intra.kind == "switch" and intra.nvls is not None and g > 1:
        algbw = intra.nvls.busbw_GBps * g / (2 * (g - 1))
        blocks.append((topo.nodes, [(_capacity_Bps(algbw, 1.0), _latency_s(0.0))]))
    return blocks


def _expand(topo: Topology, field_index: int) -> list[float]:
    """One field (0 capacity, 1 latency) of every link, from :func:`_link_blocks` by list repetition."""
    out: list[float] = []
    for repeats, run in _link_blocks(topo):
        out += [link[field_index] for link in run] * repeats
    return out


def _build_links(topo: Topology) -> list[Link]:
    links: list[Link] = []

    def add(src: str, dst: str, kind: str, gbps: float, eff: float, lat_us: float, node: int) -> None:
        links.append(Link(len(links), src, dst, kind, _capacity_Bps(gbps, eff), _latency_s(lat_us), node))

    intra = topo.intra
    g = topo.gpus_per_node
    for node in range(topo.nodes):
        base = node * g
        if intra.kind == "full_mesh":
            for a in range(g):
                for b in range(g):
                    if a != b:
                        add(f"g{base + a}", f"g{base + b}", "xgmi", intra.link_GBps,
                            intra.link_efficiency, intra.hop_latency_us, node)
        else:
            for a in range(g):
                add(f"g{base + a}", f"nvsw{node}", "nvlink_up", intra.link_GBps, intra.link_efficiency,
                    intra.hop_latency_us / 2, node)
                add(f"nvsw{node}", f"g{base + a}", "nvlink_down", intra.link_GBps, intra.link_efficiency,
                    intra.hop_latency_us / 2, node)
    inter = topo.inter
    if inter is not None:
        _build_network_links(topo, inter, add)
    if intra.kind == "switch" and intra.nvls is not None and g > 1:
        # The switch's reduction engine (NVLS): one resource per node whose capacity is the measured
        # whole-node NVLS all-reduce algbw = busbw · g / (2(g−1)) (nccl-tests busbw definition [S28]).
        algbw = intra.nvls.busbw_GBps * g / (2 * (g - 1))
        for node in range(topo.nodes):
            add(f"nvsw{node}", f"nvls{node}", "nvls", algbw, 1.0, 0.0, node)
    return links


def _build_network_links(topo: Topology, inter: InterFabric, add: Callable[..., None]) -> None:
    g = topo.gpus_per_node
    for rank in range(topo.world_size):
        node, rail = topo.node_of(rank), topo.local_of(rank)
        add(f"g{rank}", f"nic{rank}", "pcie", inter.pcie_GBps, 1.0, 0.0, node)
        add(f"nic{rank}", f"g{rank}", "pcie", inter.pcie_GBps, 1.0, 0.0, node)
        sw = f"rail{rail}" if inter.topology == "rails_only" else f"leaf{rail}.{node // inter.nodes_per_leaf}"
        add(f"nic{rank}", sw, "nic_up", inter.nic_GBps, inter.nic_efficiency, inter.hop_latency_us, node)
        add(sw, f"nic{rank}", "nic_down", inter.nic_GBps, inter.nic_efficiency, inter.hop_latency_us, node)
    if inter.topology == "rail_optimized_fat_tree":
        groups = -(-topo.nodes // inter.nodes_per_leaf)
        if groups > 1:
            for rail in range(g):
                for grp in range(groups):
                    members = min(inter.nodes_per_leaf, topo.nodes - grp * inter.nodes_per_leaf)
                    gbps = inter.nic_GBps * members / inter.oversubscription
                    leaf = f"leaf{rail}.{grp}"
                    first = grp * inter.nodes_per_leaf
                    add(leaf, "spine", "spine_up", gbps, inter.nic_efficiency, inter.hop_latency_us, first)
                    add("spine", leaf, "spine_down", gbps, inter.nic_efficiency, inter.hop_latency_us, first)
