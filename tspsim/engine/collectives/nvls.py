"""NVLink SHARP collectives: NVLS inside a switch node, and NCCL's NVLS tree across nodes (hardware.md §6.4).

========== ===================================================================================
nvls       all-reduce inside one switch node: each GPU's up-port carries its buffer to the switch,
           which reduces (the node's ``nvls`` engine link, at the measured whole-node rate) and
           multicasts the result back: (1 + 1/m)·N through every port each way.
nvls_tree  all-reduce across switch nodes, NCCL's ``NVLSTree`` (NCCL ≥ 2.18; the default multi-node
           all-reduce on DGX H100, NVIDIA's maintainer in nccl-tests issue 309, collective-logs 06):
           inside every node the switch reduces as for ``nvls`` and leaves 1/m of the result on each
           of the m GPUs (the NVLS heads); head j of every node runs the inter-node double binary
           tree of NCCL (:func:`~tspsim.engine.collectives.tree.dtree_parents`, half the data per
           tree) over its own NIC on its N/m share, up (reduce) and down (broadcast); the switch then
           multicasts every head's share to the node. All of it is pipelined in chunks (one flow).
========== ===================================================================================

Per byte of payload: every GPU port carries (1 + 1/m) each way and every node's engine 1, as for
``nvls`` on one node; each NIC carries N/(2m) per tree edge and direction. With two nodes each NIC
moves N/m each way (the tree's "two-node aberration": a ring moves 2(p−1)/p·N/m), so the node's
NVLS engine sets the rate; from four nodes an inner tree node's NIC carries 2N/m each way and the
NICs set it, as for a ring. Latency: :func:`~tspsim.engine.collectives.latency.nvls_tree_latency_s`.
Not node-symmetric (tree positions differ), so the policy leaves it out where a replay folds.
"""

from __future__ import annotations

from tspsim.core.errors import TspsimError
from tspsim.engine.collectives.latency import nvls_tree_latency_s
from tspsim.engine.collectives.plan import FlowSpec, GroupInfo, Phase, Pipeline, Shape
from tspsim.engine.collectives.tree import dtree_parents, tree_depth
from tspsim.spec.topology import Topology


def _check_switch(topo: Topology) -> None:
    if topo.intra.kind != "switch" or topo.intra.nvls is None:
        raise TspsimError(f"topology {topo.name} has no NVLink SHARP (intra.nvls); use ring or direct")


def _node_hops(info: GroupInfo) -> tuple[list[tuple[int, int]], list[float]]:
    """Every node's NVLS reduce + multicast: ports (1 + 1/m) each way, the node's engine 1."""
    hops: list[tuple[int, int]] = []
    fracs: list[float] = []
    for node, members in zip(info.nodes, info.members):
        m = len(members)
        engine = -1 - node
        share = 1.0 + 1.0 / m
        hops += [(r, engine) for r in members] + [(engine, r) for r in members] + [(engine, engine)]
        fracs += [share] * (2 * m) + [1.0]
    return hops, fracs


def nvls_shape(info: GroupInfo, topo: Topology) -> Shape:
    """NVLS all-reduce inside one switch node (module docstring)."""
    _check_switch(topo)
    if info.k != 1:
        raise TspsimError("algorithm 'nvls' runs inside one node; across nodes use nvls_tree (NCCL's NVLSTree), "
                          "ring or tree")
    hops, fracs = _node_hops(info)
    return Shape("nvls", "Simple", 1, (Phase(topo.intra.nvls.step_us * 1e-6, FlowSpec.of(hops, fracs)),))


def offers_nvls_tree(topo: Topology) -> bool:
    """Whether the topology's nodes run NCCL's NVLS tree: switch nodes with NVLS and its network step."""
    nvls = topo.intra.nvls
    return topo.intra.kind == "switch" and nvls is not None and nvls.net_step_us is not None


def nvls_tree_problem(info: GroupInfo, topo: Topology) -> str:
    """Why NCCL's NVLS tree does not apply to the group ("" if it does).

    It needs switch nodes with NVLS and its network step, and the same GPUs (at least two) of each of
    several nodes.
    """
    if topo.intra.kind != "switch" or topo.intra.nvls is None:
        return f"topology {topo.name} has no NVLink SHARP (intra.nvls); use ring or direct"
    if not offers_nvls_tree(topo):
        return (f"topology {topo.name} has no multi-node NVLS tree (set intra.nvls.net_step_us, NCCL's NVLS network "
                "latency); use ring or tree")
    if info.k == 1:
        return "algorithm 'nvls_tree' runs across nodes; inside one node use nvls"
    if not info.regular or info.m < 2:
        return "algorithm 'nvls_tree' needs the same GPUs (at least two) of every node; use ring or tree for this group"
    return ""


def check_nvls_tree(info: GroupInfo, topo: Topology) -> None:
    """Raise :func:`nvls_tree_problem`'s reason, if any."""
    problem = nvls_tree_problem(info, topo)
    if problem:
        raise TspsimError(problem)


def nvls_tree_shape(info: GroupInfo, topo: Topology) -> Shape:
    """NCCL's NVLS-tree all-reduce across switch nodes (module docstring)."""
    check_nvls_tree(info, topo)
    k, m = info.k, info.m
    hops, fracs = _node_hops(info)
    trees = dtree_parents(k)
    share = 1.0 / (2 * m)
    for j in range(m):
        for parents in trees:
            for n, parent in enumerate(parents):
                if parent != -1:
                    head, up = info.members[n][j], info.members[parent][j]
                    hops += [(head, up), (up, head)]
                    fracs += [share, share]
    depth = 2 + 2 * max(tree_depth(t) for t in trees)  # into the switch, up the tree, down, multicast
    pipeline = Pipeline(depth - 1, 2 * m, depth, topo.intra.chunk_bytes)
    latency = nvls_tree_latency_s(info, topo)
    return Shape("nvls_tree", "Simple", 2 * m, (Phase(latency, FlowSpec.of(hops, fracs), pipeline),))
