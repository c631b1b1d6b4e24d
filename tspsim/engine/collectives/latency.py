"""Start-up latencies and wire factors of collectives: NCCL's cost model (hardware.md §5, [S21], [S22]).

Per protocol p ∈ {LL, LL128, Simple} a collective pays one base latency and per-step latencies by
fabric and algorithm; NCCL combines them as

* ring: base + (s − s_net) · intra + s_net · net, s = 2(n−1) steps for all-reduce and n−1 for the
  others, s_net = min(s, 2·nodes) (all-reduce) or min(s, nodes − 1) network steps; once several
  nodes take part the intra-node step is floored at the network post overhead (×3 for Simple);
* tree: base + 2 · ((ranks per node − 1) · intra_tree + ⌈log2 nodes⌉ · net_tree) for all-reduce
  (half of it for broadcast / reduce);
* hierarchical (tspsim's pipelined RS → per-rail ring → AG): base + 2 intra steps + 2(nodes − 1)
  network steps (all-reduce), one intra step + (nodes − 1) network steps otherwise;
* NVLS: its own latency (NCCL: 25 µs on NVLink); NVLS tree across nodes: 2 · (NVLS NVLink step +
  ⌈log2 nodes⌉ · NVLS network step), NCCL's ``NCCL_ALGO_NVLS_TREE`` latency with base 0.

A protocol's bandwidth factor (payload / wire bytes) and the fabric's collective efficiency make the
wire factor of each link class: a collective flow puts 1 / (efficiency · factor) wire bytes on a link
per payload byte (:func:`wire_factors`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tspsim.core.errors import TspsimError
from tspsim.engine.collectives.plan import GroupInfo
from tspsim.spec.topology import Protocol, Topology


@dataclass(frozen=True)
class Steps:
    """Latency constants of one protocol on a topology, µs."""

    base_us: float
    """Base latency of a collective."""
    intra_ring_us: float
    """Node-fabric ring step."""
    intra_tree_us: float
    """Node-fabric tree step."""
    net_ring_us: float
    """Network ring step (0 on a single node)."""
    net_tree_us: float
    """Network tree step (0 on a single node)."""
    net_overhead_us: float
    """Network post overhead (floor of the intra-node ring step across nodes)."""
    multi_base_us: float
    """Extra base of a multi-node collective (``inter.base_us``)."""


def _proto(section: object, protocol: str) -> Protocol | None:
    return getattr(section, protocol.lower(), None)


def available_protocols(topo: Topology, multi_node: bool) -> tuple[str, ...]:
    """Protocols offered on the fabrics a collective uses (Simple always; LL/LL128 where configured)."""
    out = []
    for name in ("LL", "LL128"):
        if _proto(topo.intra, name) is not None and (not multi_node or (
                topo.inter is not None and _proto(topo.inter, name) is not None)):
            out.append(name)
    out.append("Simple")
    return tuple(out)


def steps(topo: Topology, protocol: str) -> Steps:
    """The latency constants of ``protocol``.

    Raises:
        TspsimError: if the topology does not offer the protocol.
    """
    inter = topo.inter
    if protocol == "Simple":
        return Steps(topo.intra.ring_base_us, topo.intra.ring_step_us, topo.intra.tree_step_us,
                     inter.ring_step_us if inter else 0.0, inter.tree_step_us if inter else 0.0,
                     inter.net_overhead_us * 3 if inter else 0.0, inter.base_us if inter else 0.0)
    intra_p = _proto(topo.intra, protocol)
    net_p = _proto(inter, protocol) if inter is not None else None
    if intra_p is None:
        raise TspsimError(f"topology {topo.name} does not offer the {protocol} protocol "
                          f"(intra.{protocol.lower()}); choose one of {', '.join(available_protocols(topo, False))}")
    return Steps(intra_p.base_us, intra_p.ring_step_us, intra_p.tree_step_us,
                 net_p.ring_step_us if net_p else 0.0, net_p.tree_step_us if net_p else 0.0,
                 inter.net_overhead_us if inter else 0.0, inter.base_us if inter else 0.0)


def wire_factors(topo: Topology, protocol: str) -> tuple[float, float, float]:
    """Wire bytes per payload byte on (node-fabric, network, NVLS-engine) links for ``protocol``."""
    fi = fn = 1.0
    if protocol != "Simple":
        ip = _proto(topo.intra, protocol)
        fi = ip.bandwidth_factor if ip is not None else 1.0
        np_ = _proto(topo.inter, protocol) if topo.inter is not None else None
        fn = np_.bandwidth_factor if np_ is not None else 1.0
    net_eff = topo.inter.collective_efficiency if topo.inter is not None else 1.0
    return 1.0 / (topo.intra.collective_efficiency * fi), 1.0 / (net_eff * fn), 1.0


def _base(st: Steps, info: GroupInfo) -> float:
    return st.base_us + (st.multi_base_us if info.k > 1 else 0.0)


def ring_latency_s(kind: str, info: GroupInfo, topo: Topology, protocol: str) -> float:
    """NCCL's ring latency (module docstring); broadcast and reduce count n−1 steps."""
    st = steps(topo, protocol)
    p, k = info.p, info.k
    s = 2 * (p - 1) if kind == "all_reduce" else p - 1
    s_net = 0 if k == 1 else min(s, 2 * k if kind == "all_reduce" else k - 1)
    intra = st.intra_ring_us if k == 1 else max(st.intra_ring_us, st.net_overhead_us)
    return (_base(st, info) + (s - s_net) * intra + s_net * st.net_ring_us) * 1e-6


def tree_latency_s(kind: str, info: GroupInfo, topo: Topology, protocol: str) -> float:
    """NCCL's tree latency (module docstring)."""
    st = steps(topo, protocol)
    one_way = (info.m - 1) * st.intra_tree_us + math.ceil(math.log2(info.k)) * st.net_tree_us
    return (_base(st, info) + (2 if kind == "all_reduce" else 1) * one_way) * 1e-6


def hier_latency_s(kind: str, info: GroupInfo, topo: Topology, protocol: str) -> float:
    """Pipelined hierarchical latency: one base plus its intra-node and network steps."""
    st = steps(topo, protocol)
    intra = max(st.intra_ring_us, st.net_overhead_us)
    both = 2 if kind == "all_reduce" else 1
    return (_base(st, info) + both * intra + both * (info.k - 1) * st.net_ring_us) * 1e-6


def nvls_tree_latency_s(info: GroupInfo, topo: Topology) -> float:
    """NCCL's NVLS-tree latency: 2 · (NVLS step + ⌈log2 nodes⌉ · NVLS network step) (module docstring)."""
    nvls = topo.intra.nvls
    if nvls is None or nvls.net_step_us is None:
        raise TspsimError(f"topology {topo.name} has no multi-node NVLS tree (intra.nvls.net_step_us)")
    intra = nvls.step_us if info.m > 1 else 0.0
    return 2 * (intra + math.ceil(math.log2(info.k)) * nvls.net_step_us) * 1e-6


def step_latency_s(topo: Topology, protocol: str, crosses_nodes: bool) -> float:
    """One ring step on the node fabric or across the network."""
    st = steps(topo, protocol)
    return (st.net_ring_us if crosses_nodes else st.intra_ring_us) * 1e-6


def direct_alpha_s(topo: Topology, info: GroupInfo) -> float:
    """Start-up of one direct (one-shot / two-shot / pairwise) step.

    Measured on one node (``direct_alpha_us``); across nodes plus one Simple network step and
    ``inter.base_us``.
    """
    alpha = topo.intra.direct_alpha_us
    if info.k > 1 and topo.inter is not None:
        alpha += topo.inter.base_us + topo.inter.ring_step_us
    return alpha * 1e-6
