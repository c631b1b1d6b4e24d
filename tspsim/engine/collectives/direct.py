"""Direct, pairwise and recursive-doubling collectives (hardware.md §6.3, §8).

========== ===================================================================================
one_shot   one step: every rank sends its whole N to every peer ((p−1)·N per rank; latency-optimal).
two_shot   direct reduce-scatter then direct all-gather: two steps of N/p to every peer (2(p−1)/p·N).
direct     direct reduce-scatter / all-gather ((p−1)/p·N), broadcast / reduce (root ↔ every peer,
           N each). On a full mesh every pair has its own link (MSCCL++'s kernels on MI300X).
           Each step pays the measured direct start-up ``direct_alpha_us``.
all_to_all pairwise exchanges, (p−1)/p·N per rank. Inside a node every peer at once. Across nodes as
           NCCL runs grouped send/recv: in round δ = 1..p−1 rank i sends N/p to rank i+δ (mod p);
           ``inter.p2p_concurrency`` rounds run at once (one phase each group of rounds), and every
           phase pays one step latency per peer group (network step if it reaches another node).
rd         recursive doubling all-reduce (Thakur, Rabenseifner & Gropp 2005; power-of-two groups):
           log2 p steps exchanging the whole N with the rank whose index differs in one bit
           (N·log2 p per rank). Forced only (NCCL/RCCL do not run it).
========== ===================================================================================
"""

from __future__ import annotations

import numpy as np

from tspsim.core.errors import TspsimError
from tspsim.engine.collectives.latency import direct_alpha_s, steps
from tspsim.engine.collectives.plan import FlowSpec, GroupInfo, Phase, Shape
from tspsim.spec.topology import Topology


def _pairs(ranks: tuple[int, ...]) -> list[tuple[int, int]]:
    return [(s, d) for s in ranks for d in ranks if s != d]


def direct_shape(kind: str, info: GroupInfo, topo: Topology, root: int, alg: str) -> Shape:
    """one_shot / two_shot all-reduce and direct reduce-scatter, all-gather, broadcast, reduce."""
    ranks = info.ranks
    p = info.p
    alpha = direct_alpha_s(topo, info)
    pairs = _pairs(ranks)
    if kind == "all_reduce" and alg == "one_shot":
        phases = (Phase(alpha, FlowSpec.of(pairs, 1.0)),)
    elif kind == "all_reduce":
        flow = FlowSpec.of(pairs, 1.0 / p)
        phases = (Phase(alpha, flow), Phase(alpha, flow))
    elif kind in ("reduce_scatter", "all_gather"):
        phases = (Phase(alpha, FlowSpec.of(pairs, 1.0 / p)),)
    elif kind == "broadcast":
        phases = (Phase(alpha, FlowSpec.of(((root, d) for d in ranks if d != root), 1.0)),)
    else:
        phases = (Phase(alpha, FlowSpec.of(((s, root) for s in ranks if s != root), 1.0)),)
    return Shape(alg, "Simple", 1, phases)


def all_to_all_shape(info: GroupInfo, topo: Topology, protocol: str) -> Shape:
    """Pairwise all-to-all (module docstring)."""
    ranks = np.array(info.ranks, dtype=np.int64)
    p = len(ranks)
    if info.k == 1:
        alpha = direct_alpha_s(topo, info)
        return Shape("direct", "Simple", p - 1, (Phase(alpha, FlowSpec.of(_pairs(info.ranks), 1.0 / p)),))
    q = max(1, topo.inter.p2p_concurrency if topo.inter is not None else p - 1)
    st = steps(topo, protocol)
    node_of = ranks // info.gpus_per_node
    idx = np.arange(p, dtype=np.int64)
    phases = []
    for first in range(1, p, q):
        deltas = np.arange(first, min(first + q, p), dtype=np.int64)
        dst_idx = (idx[None, :] + deltas[:, None]) % p
        src = np.broadcast_to(ranks[None, :], dst_idx.shape).ravel()
        dst = ranks[dst_idx].ravel()
        remote = bool((node_of[idx[None, :]] != node_of[dst_idx]).any())
        step = st.net_ring_us if remote else st.intra_ring_us
        base = st.base_us + st.multi_base_us if first == 1 else 0.0
        phases.append(Phase((base + step) * 1e-6, FlowSpec(src.copy(), dst.copy(), np.full(len(src), 1.0 / p))))
    return Shape("direct", protocol, min(q, p - 1), tuple(phases))


def rd_shape(info: GroupInfo, topo: Topology) -> Shape:
    """Recursive-doubling all-reduce (module docstring)."""
    ranks = info.ranks
    p = len(ranks)
    if p & (p - 1):
        raise TspsimError("algorithm 'rd' (recursive doubling) implements all_reduce on a power-of-two number of "
                          "ranks; use ring for this group")
    g = info.gpus_per_node
    phases = []
    bit = 1
    while bit < p:
        hops = [(ranks[i], ranks[i ^ bit]) for i in range(p)]
        crosses = any(a // g != b // g for a, b in hops)
        step = (topo.inter.ring_step_us if crosses and topo.inter is not None else topo.intra.ring_step_us) * 1e-6
        first = direct_alpha_s(topo, info) if bit == 1 else 0.0
        phases.append(Phase(first + step, FlowSpec.of(hops, 1.0)))
        bit <<= 1
    return Shape("rd", "Simple", 1, tuple(phases))
