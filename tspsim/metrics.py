"""Metrics computed from a Timeline (design.md §5). MINIMAL PLACEHOLDER — being completed."""

from __future__ import annotations

from typing import Any

from tspsim.model import ModelConfig
from tspsim.plan import Assumptions, Plan, Workload
from tspsim.timeline import Timeline
from tspsim.topology import Topology


def run_entry(tl: Timeline, topo: Topology, model: ModelConfig, plan: Plan, workload: Workload,
              opts: Assumptions) -> dict[str, Any]:
    """The stable run entry of design.md §4."""
    peak, at = max((tl.peak_memory(r) for r in tl.graph.ranks), key=lambda x: x[0])
    step = tl.end_s
    tokens = workload.batch * workload.seq_len * plan.replicas
    return {"schedule": plan.schedule, "model": model.name, "topology": topo.name, "mode": workload.mode,
            "seq_len": workload.seq_len, "batch": workload.batch, "degrees": dict(plan.degrees),
            "world_size": plan.world_size, "replicas": plan.replicas, "step_time_s": step,
            "tokens_per_s": tokens / step if step else 0.0, "peak_memory_gb": peak / 1e9,
            "hbm_gb": topo.gpu.hbm_GB, "oom": peak > topo.gpu.hbm_GB * 1e9,
            "memory_breakdown_gb": {k: v / 1e9 for k, v in at.items()}, "assumptions": opts.to_json(),
            "sim_events": tl.sim_events, "sim_wall_s": tl.sim_wall_s}
