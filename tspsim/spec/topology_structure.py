"""The topology fields an op graph is built from, apart from those only its replay reads.

A schedule generator places ops on ranks and folds replicas (:mod:`tspsim.schedules.context`,
:func:`tspsim.spec.fold.plan_fold`); it never costs them — FLOPs, bytes and payloads become seconds in the
replay (design.md §1: "costs come at replay"). So two topologies that differ only in rates, efficiencies,
latencies or capacities give the same graph for the same point, and a hardware what-if sweep
(``sweep -t base.yaml,faster-links.yaml``) can build each graph once (:mod:`tspsim.simulate.graph_memo`).

Every field of the topology dataclasses is named here exactly once, as read by the build or by the replay
only; ``tests/test_graph_memo.py`` checks that the two sets cover every field (a new field must be
classified) and that perturbing every replay-only field leaves every schedule's graph unchanged. The
topology's ``name`` is recorded in the graph's metadata only; a reused graph gets its own.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from tspsim.spec.topology import GpuSpec, InterFabric, IntraFabric, Nvls, Protocol, Topology

BUILD_FIELDS: dict[type, tuple[str, ...]] = {
    Topology: ("nodes", "gpus_per_node"),
    GpuSpec: ("runtime_reserve_GB", "kernel_launch_us"),
    InterFabric: ("topology", "nodes_per_leaf", "oversubscription"),
    IntraFabric: (),
    Protocol: (),
    Nvls: (),
}
"""Fields the op-graph build reads: placement and folding (``nodes``, ``gpus_per_node``, the fat tree's leaf
groups and oversubscription, :func:`~tspsim.spec.fold.plan_fold`), the ``reserved`` memory event
(``runtime_reserve_GB``) and a CPU lane's launch time (``kernel_launch_us``, stacks with ``launch: host``)."""

REPLAY_FIELDS: dict[type, tuple[str, ...]] = {
    Topology: ("name", "description", "gpu", "intra", "inter", "source_sha256", "resolved"),
    GpuSpec: ("name", "peak_bf16_TFLOPS", "peak_fp8_TFLOPS", "mfu_peak_TFLOPS", "hbm_GB", "hbm_TBps",
              "gemm_efficiency", "gemm_half_GFLOP", "attn_fwd_efficiency", "attn_bwd_efficiency", "hbm_efficiency",
              "sm_count", "gemm_wave_tile", "gemm_operand_bytes"),
    InterFabric: ("nic_GBps", "nic_efficiency", "pcie_GBps", "hop_latency_us", "ring_step_us", "base_us",
                  "compute_slowdown", "collective_efficiency", "tree_step_us", "net_overhead_us", "p2p_concurrency",
                  "ll", "ll128"),
    IntraFabric: ("kind", "link_GBps", "link_efficiency", "collective_efficiency", "hop_latency_us", "direct_alpha_us",
                  "ring_base_us", "ring_step_us", "direct_max_bytes", "compute_slowdown", "tree_step_us", "ll", "ll128",
                  "nvls", "chunk_bytes"),
    Protocol: ("bandwidth_factor", "ring_step_us", "tree_step_us", "base_us"),
    Nvls: ("busbw_GBps", "step_us", "net_step_us"),
}
"""Fields only the replay (or the report) reads: rates, efficiencies, latencies, capacities, the fabric kind
(link graph and collective algorithms), the GPU's name (kernel tables looked up at replay) and the topology's
name and description. ``gpu``, ``intra`` and ``inter`` are containers: their own fields are classified above
(``inter`` being present or not is part of :func:`build_structure`)."""


def unclassified_fields() -> list[str]:
    """``Class.field`` for every topology dataclass field in neither or both of the two tables (should be none)."""
    out = []
    for cls in BUILD_FIELDS.keys() | REPLAY_FIELDS.keys():
        build, replay = set(BUILD_FIELDS.get(cls, ())), set(REPLAY_FIELDS.get(cls, ()))
        out += [f"{cls.__name__}.{f.name}" for f in fields(cls) if (f.name in build) == (f.name in replay)]
    return sorted(out)


def build_structure(topo: Topology) -> tuple[Any, ...]:
    """The values of :data:`BUILD_FIELDS` of ``topo``: equal for two topologies whose graphs are the same.

    ``(nodes, gpus_per_node, runtime_reserve_GB, kernel_launch_us, inter)`` where ``inter`` is None for a
    single-node topology, else the inter-node fabric's ``(topology, nodes_per_leaf, oversubscription)``.
    """
    inter = None if topo.inter is None else tuple(getattr(topo.inter, f) for f in BUILD_FIELDS[InterFabric])
    return (*(getattr(topo, f) for f in BUILD_FIELDS[Topology]),
            *(getattr(topo.gpu, f) for f in BUILD_FIELDS[GpuSpec]), inter)
