"""Metrics computed from a Timeline (design.md §5): the stable ``run`` entry of design.md §4.

Definitions (units in the names; GB = 1e9 bytes):

* **step_time_s** — time the last op of the step finished (the Timeline's end).
* **tokens per step** — ``batch · seq_len · micro_batches · replicas`` = ``global_batch · seq_len`` (train and
  forward; ``batch`` is the micro-batch, ``micro_batches`` per replica per step); ``tokens_per_s`` divides
  it by the step time, ``tokens_per_s_per_gpu`` further by ``world_size`` and ``layer_tokens_per_s``
  multiplies by the model's layers (throughput of one decoder layer, the paper's apparent unit,
  reference/tsp.md §7).
* **mfu** — model FLOPs per step ÷ (step time · world size · the GPU's dense BF16 MFU peak). Model FLOPs
  = (3 for train, 1 for forward) × [L · block forward FLOPs + 2 · tokens · H · vocab (LM head)] per
  replica, times the replicas. Recomputation is NOT counted (the MFU convention: useful work only).
* **overlap_pct** — HTA's communication–computation overlap (reference/conventions.md (b)): per rank,
  (time computing while communicating) ÷ (time communicating) × 100, where compute time is the union of
  the spans of compute kernels (``op.is_compute``, kind not ``memory`` or ``host``, positive duration) and
  communication time the union of the spans of collectives and send/recv. Averaged over the simulated
  ranks that communicate; 0 when no rank communicates.
* **exposed_comm_s** — mean over simulated ranks of |comm union − compute union|: communication time
  not hidden behind compute.
* **compute_s** / **comm_s** — mean over simulated ranks of the compute / communication union length.
* **comm_bytes_per_rank** — bytes each simulated rank sent, by op kind (p2p traffic under ``send``),
  averaged over the simulated ranks. The input all-gathers of sharded-activation TP (ops named
  ``…input_all_gather``) are reported separately under ``all_gather_input`` (design.md §3).
  ``layer_comm_bytes_per_rank`` counts only decoder block 0's forward (``layer == 0``, phase ``fwd``, not
  recomputation, micro-batch 0) averaged over the ranks that run it: one block's forward traffic, comparable
  with reference/tsp.md §5.
* **pipeline** — with pipeline stages, the bubble and each stage's time and memory
  (:mod:`tspsim.analysis.pipeline_metrics`); ``bubble_pct`` repeats its bubble (null without a pipeline).
* **sp_attention** — on a layout with a sequence-sharded axis (``sp``, the Σ axis of ``tp+sp``), the SP
  algorithm (``assumptions.sp_attention``) and HTA's metrics restricted to its streams ``kv`` and ``kv_tx``
  (:mod:`tspsim.schedules.sp_attention`): ``comm_s``, ``overlap_pct``, ``exposed_s``, ``bytes_per_rank`` and
  ``layer_bytes_per_rank`` (block 0's forward); null otherwise. In decode steps those streams carry the
  partial-attention combine.
* **peak_memory_gb** — max over ranks and time of the tracked memory (Timeline.peak_memory), with the
  per-category breakdown at that peak (first rank, first time reaching it); ``oom`` when it exceeds HBM.
* **inference modes** (``prefill``, ``decode``, ``generate``): :mod:`tspsim.simulate.inference` adds ttft_s, tpot_s,
  decode_tokens_per_s(_per_gpu), max_batch and decode_time_breakdown_s, and redefines step_time_s,
  tokens_per_s and mfu for those modes (prompt tokens/s for prefill, generated tokens/s for decode).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from tspsim import __version__
from tspsim.analysis.pipeline_metrics import pipeline_metrics
from tspsim.engine.timeline import Timeline
from tspsim.opgraph import MEMORY_CATEGORIES
from tspsim.spec.assumptions import Assumptions
from tspsim.spec.layout import SEQUENCE_SHARDED, Layout
from tspsim.spec.model import ModelConfig
from tspsim.spec.topology import Topology
from tspsim.spec.workload import Workload

GB = 1e9
"""Bytes per GB in every ``*_gb`` key."""

NOT_KERNELS = ("memory", "host")
"""Compute-stream op kinds that are not GPU kernels: memory bookkeeping and the CPU lane's host ops."""

INPUT_ALL_GATHER_KEY = "all_gather_input"
"""comm_bytes_per_rank key of the sharded-activation TP input all-gathers (design.md §3)."""

Interval = tuple[float, float]


class Periodic(Protocol):
    """One period of a replay's steady state (:class:`tspsim.simulate.pipeline_timer.Window`)."""

    start_s: float
    end_s: float
    periods: int
    ops: Any
    probe_micro_batches: int


# ---------------------------------------------------------------------------------- intervals
def interval_union(intervals: Iterable[Interval]) -> list[Interval]:
    """Merge intervals into disjoint, sorted ones; empty and negative-length intervals are dropped.

    Touching intervals (``[0, 1]`` and ``[1, 2]``) merge into one.
    """
    out: list[Interval] = []
    for a, b in sorted((a, b) for a, b in intervals if b > a):
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def total_length(union: Iterable[Interval]) -> float:
    """Summed length of (disjoint) intervals, s."""
    return sum(b - a for a, b in union)


def intersection_length(a: list[Interval], b: list[Interval]) -> float:
    """Length of the intersection of two disjoint sorted interval lists (a two-pointer sweep), s."""
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        lo = max(a[i][0], b[j][0])
        hi = min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] <= b[j][1]:
            i += 1
        else:
            j += 1
    return total


def rank_intervals(tl: Timeline) -> dict[int, tuple[list[Interval], list[Interval]]]:
    """Per simulated rank: (compute union, communication union) of its spans.

    Compute spans are ops with ``is_compute`` and kind not ``memory`` or ``host``; communication spans are
    collectives and send/recv. Zero-length spans count for neither.
    """
    ops = tl.ops
    raw: dict[int, tuple[list[Interval], list[Interval]]] = {r: ([], []) for r in _sim_ranks(tl)}
    for op_id, start, end in tl.spans:
        if end <= start:
            continue
        op = ops[op_id]
        comp, comm = raw.setdefault(op.rank, ([], []))
        if op.is_comm:
            comm.append((start, end))
        elif op.kind not in NOT_KERNELS:
            comp.append((start, end))
    return {r: (interval_union(c), interval_union(m)) for r, (c, m) in sorted(raw.items())}


def overlap_stats(tl: Timeline, rank: int) -> tuple[float, float, float]:
    """(compute s, communication s, overlapped s) of ``rank``: union lengths and their intersection."""
    comp, comm = rank_intervals_of(tl, rank)
    return total_length(comp), total_length(comm), intersection_length(comp, comm)


def rank_intervals_of(tl: Timeline, rank: int) -> tuple[list[Interval], list[Interval]]:
    """(compute union, communication union) of one rank (see :func:`rank_intervals`)."""
    comp: list[Interval] = []
    comm: list[Interval] = []
    ops = tl.ops
    for op_id, start, end in tl.spans:
        op = ops[op_id]
        if op.rank != rank or end <= start:
            continue
        if op.is_comm:
            comm.append((start, end))
        elif op.kind not in NOT_KERNELS:
            comp.append((start, end))
    return interval_union(comp), interval_union(comm)


def _sim_ranks(tl: Timeline) -> tuple[int, ...]:
    """Ranks the graph simulates (all ranks of its ops when the graph does not list them)."""
    return tuple(tl.graph.ranks) or tuple(sorted({op.rank for op in tl.ops}))


# ---------------------------------------------------------------------------------- time metrics
def clip(union: list[Interval], lo: float, hi: float) -> list[Interval]:
    """The parts of disjoint sorted intervals inside [lo, hi]."""
    return [(max(a, lo), min(b, hi)) for a, b in union if b > lo and a < hi]


def time_metrics(tl: Timeline, window: Periodic | None = None) -> dict[str, float]:
    """compute_s, comm_s, exposed_comm_s (means over simulated ranks) and overlap_pct (HTA).

    overlap_pct averages the per-rank ratios of the ranks that communicate; 0.0 if none does. With a periodic
    ``window`` (a pipeline step timed from a shorter probe, :mod:`tspsim.simulate.pipeline_timer`) each rank's
    times add ``periods`` times their part inside [start, end).
    """
    per = rank_intervals(tl)
    n = max(len(per), 1)
    comp_sum = comm_sum = exposed_sum = 0.0
    ratios = []
    for comp, comm in per.values():
        c, m = total_length(comp), total_length(comm)
        both = intersection_length(comp, comm)
        if window is not None:
            wc, wm = clip(comp, window.start_s, window.end_s), clip(comm, window.start_s, window.end_s)
            c += window.periods * total_length(wc)
            m += window.periods * total_length(wm)
            both += window.periods * intersection_length(wc, wm)
        comp_sum += c
        comm_sum += m
        exposed_sum += m - both
        if m > 0:
            ratios.append(100.0 * both / m)
    return {"compute_s": comp_sum / n, "comm_s": comm_sum / n, "exposed_comm_s": exposed_sum / n,
            "overlap_pct": sum(ratios) / len(ratios) if ratios else 0.0}


# ---------------------------------------------------------------------------------- bytes
def comm_bytes(tl: Timeline, layer_only: bool = False, window: Periodic | None = None) -> dict[str, float]:
    """Mean bytes sent per simulated rank, by op kind (see the module docstring for the keys).

    ``layer_only`` keeps decoder block 0's forward (layer 0, phase ``fwd``, no recomputation).
    ``recv`` ops are skipped: a transfer's bytes count on the sending side, under ``send``. A periodic ``window``
    adds ``periods`` times the bytes of its ops (one period of the steady state).
    """
    ops = tl.ops
    totals: dict[str, float] = {}
    ranks: set[int] = set()
    extra = {} if window is None or layer_only else dict.fromkeys(window.ops.tolist(), window.periods)
    for op_id, sent in tl.op_sent_bytes.items():
        op = ops[op_id]
        if op.kind == "recv":
            continue
        if layer_only and not first_block_forward(op.layer, op.phase, op.name):
            continue
        ranks.add(op.rank)
        key = INPUT_ALL_GATHER_KEY if "input_all_gather" in op.name else op.kind
        totals[key] = totals.get(key, 0.0) + sent * (1 + extra.get(op_id, 0))
    n = max(len(ranks) if layer_only else len(_sim_ranks(tl)), 1)
    return {k: v / n for k, v in sorted(totals.items())}


def first_block_forward(layer: int, phase: str, name: str) -> bool:
    """True for an op of decoder block 0's forward of micro-batch 0 (not a recomputation)."""
    return layer == 0 and phase == "fwd" and "recompute" not in name and (".mb" not in name or ".mb0." in name)


# ---------------------------------------------------------------------------------- SP attention
SP_STREAMS = ("kv", "kv_tx")
"""Streams of the SP attention's communication (the all-gathers, all-to-alls and ring transfers)."""


def sp_attention_metrics(tl: Timeline, layout: Layout, opts: Assumptions,
                         window: Periodic | None = None) -> dict[str, Any] | None:
    """``{"algorithm", "comm_s", "overlap_pct", "exposed_s", "bytes_per_rank", "layer_bytes_per_rank"}``.

    None for layouts without a sequence-sharded axis (Σ < 2 or another schedule).
    """
    if layout.schedule not in SEQUENCE_SHARDED or layout.sp < 2:
        return None
    ops = tl.ops
    ranks = tuple(tl.graph.ranks) or tuple(sorted({op.rank for op in ops}))
    comp: dict[int, list[Interval]] = {r: [] for r in ranks}
    comm: dict[int, list[Interval]] = {r: [] for r in ranks}
    for op_id, start, end in tl.spans:
        op = ops[op_id]
        if end <= start or op.rank not in comp:
            continue
        if op.is_comm:
            if op.stream in SP_STREAMS:
                comm[op.rank].append((start, end))
        elif op.kind not in NOT_KERNELS:
            comp[op.rank].append((start, end))
    comm_sum = exposed_sum = 0.0
    ratios = []
    for r in ranks:
        m_u = interval_union(comm[r])
        c_u = interval_union(comp[r])
        m = total_length(m_u)
        both = intersection_length(c_u, m_u)
        if window is not None:
            wm, wc = clip(m_u, window.start_s, window.end_s), clip(c_u, window.start_s, window.end_s)
            m += window.periods * total_length(wm)
            both += window.periods * intersection_length(wc, wm)
        comm_sum += m
        exposed_sum += m - both
        if m > 0:
            ratios.append(100.0 * both / m)
    total = layer = 0.0
    layer_ranks: set[int] = set()
    extra = {} if window is None else dict.fromkeys(window.ops.tolist(), window.periods)
    for op_id, sent in tl.op_sent_bytes.items():
        op = ops[op_id]
        if op.kind == "recv" or op.stream not in SP_STREAMS:
            continue
        total += sent * (1 + extra.get(op_id, 0))
        if first_block_forward(op.layer, op.phase, op.name):
            layer += sent
            layer_ranks.add(op.rank)
    n = max(len(ranks), 1)
    n_layer = max(len(layer_ranks), 1)
    return {"algorithm": opts.sp_attention, "comm_s": comm_sum / n,
            "overlap_pct": sum(ratios) / len(ratios) if ratios else 0.0, "exposed_s": exposed_sum / n,
            "bytes_per_rank": total / n, "layer_bytes_per_rank": layer / n_layer}


# ---------------------------------------------------------------------------------- memory
def peak_memory(tl: Timeline) -> tuple[int, dict[str, int]]:
    """(peak bytes over ranks and time, category breakdown at it); the lowest rank wins ties."""
    best, at = 0, dict.fromkeys(MEMORY_CATEGORIES, 0)
    for r in _sim_ranks(tl):
        peak, breakdown = tl.peak_memory(r)
        if peak > best:
            best, at = peak, breakdown
    return best, at


def memory_metrics(tl: Timeline, hbm_gb: float) -> dict[str, Any]:
    """peak_memory_gb, hbm_gb, oom and memory_breakdown_gb (all stable categories)."""
    peak, at = peak_memory(tl)
    return {"peak_memory_gb": peak / GB, "hbm_gb": hbm_gb, "oom": peak > hbm_gb * GB,
            "memory_breakdown_gb": {cat: at.get(cat, 0) / GB for cat in MEMORY_CATEGORIES}}


# ---------------------------------------------------------------------------------- model metrics
def model_flops_per_step(model: ModelConfig, workload: Workload, replicas: int, micro_batches: int = 1) -> float:
    """Useful model FLOPs of one step: (3 train | 1 forward) × (L·block + LM head) × micro-batches × replicas."""
    mult = 3.0 if workload.mode == "train" else 1.0
    tokens = workload.batch * workload.seq_len
    per_replica = (model.layers * model.layer_fwd_flops(workload.batch, workload.seq_len)
                   + 2.0 * tokens * model.hidden * model.vocab)
    return mult * per_replica * replicas * micro_batches


def tokens_per_step(workload: Workload, replicas: int, micro_batches: int = 1) -> int:
    """Tokens processed by one step over all replicas: batch · seq_len · micro_batches · replicas."""
    return workload.batch * workload.seq_len * micro_batches * replicas


def timeline_entry(tl: Timeline, topo: Topology, window: Periodic | None = None) -> dict[str, Any]:
    """The model-independent keys of a run entry (step time, overlap, memory, bytes, sim stats).

    What ``tspsim replay`` reports for a graph without model metadata; :func:`run_entry` adds the rest. A periodic
    ``window`` extends the replayed step by ``periods`` copies of it (times and bytes; the peak is unchanged).
    """
    end = tl.end_s + (window.periods * (window.end_s - window.start_s) if window is not None else 0.0)
    out: dict[str, Any] = {"topology": topo.name, "step_time_s": end}
    out.update(memory_metrics(tl, topo.gpu.hbm_GB))
    out.update(time_metrics(tl, window))
    out.update({"comm_bytes_per_rank": comm_bytes(tl, window=window),
                "layer_comm_bytes_per_rank": comm_bytes(tl, True),
                "collective_algorithms": dict(sorted(tl.collective_algorithms.items())),
                "sim_events": tl.sim_events, "sim_path": tl.sim_path, "sim_wall_s": tl.sim_wall_s,
                "tspsim_version": __version__,
                "topology_sha256": topo.source_sha256})
    return out


MODEL_KEYS = ("schedule", "model", "mode", "seq_len", "batch", "degrees", "world_size", "replicas",
              "tokens_per_s", "tokens_per_s_per_gpu", "layer_tokens_per_s", "mfu", "assumptions",
              "model_sha256", "config", "stack", "sp_attention", "micro_batches", "global_batch", "bubble_pct",
              "pipeline")
"""Keys of a run entry that need the model, layout and workload (null in a generic replay entry)."""


def generic_entry(tl: Timeline, topo: Topology, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run entry for a graph without model metadata: model-specific keys are null.

    ``schedule`` and ``world_size`` are taken from ``meta`` when present (world size falls back to the
    number of simulated ranks).
    """
    meta = meta or {}
    out = dict.fromkeys(MODEL_KEYS)
    out.update(timeline_entry(tl, topo))
    out["schedule"] = meta.get("schedule")
    out["world_size"] = meta.get("world_size", len(_sim_ranks(tl)))
    return out


def run_entry(tl: Timeline, topo: Topology, model: ModelConfig, layout: Layout, workload: Workload,
              opts: Assumptions, window: Periodic | None = None) -> dict[str, Any]:
    """The stable run entry of design.md §4, plus extra keys.

    Extra keys: tspsim_version, compute_s, comm_s, topology_sha256, model_sha256, config (fully
    resolved inputs), collective_algorithms, stack (the software stack's name; its resolved choices are
    ``assumptions.stack``) and sp_attention (the SP algorithm's communication, overlap and bytes on a
    sequence-sharded axis, else null: :func:`sp_attention_metrics`). Definitions are in the module docstring.
    """
    out = timeline_entry(tl, topo, window)
    step = out["step_time_s"]
    m = layout.micro_batches
    tokens = tokens_per_step(workload, layout.replicas, m)
    tps = tokens / step if step > 0 else 0.0
    peak_flops = step * layout.world_size * topo.gpu.mfu_peak_TFLOPS * 1e12
    out.update({
        "schedule": layout.schedule, "model": model.name, "mode": workload.mode, "seq_len": workload.seq_len,
        "batch": workload.batch, "degrees": dict(layout.degrees), "world_size": layout.world_size,
        "replicas": layout.replicas, "tokens_per_s": tps, "tokens_per_s_per_gpu": tps / layout.world_size,
        "layer_tokens_per_s": tps * model.layers,
        "mfu": model_flops_per_step(model, workload, layout.replicas, m) / peak_flops if peak_flops > 0 else 0.0,
        "micro_batches": m, "global_batch": workload.batch * m * layout.replicas,
        "assumptions": opts.to_json(), "model_sha256": model.sha256, "stack": opts.stack.name,
        "config": resolved_config(topo, model, layout, workload, opts),
        "sp_attention": sp_attention_metrics(tl, layout, opts, window),
    })
    pipe = pipeline_metrics(tl, {r: layout.stage_of(r) for r in _sim_ranks(tl)}, window) if layout.pp > 1 else None
    if pipe:
        pipe["micro_batches"] = m   # the step's (a periodic probe's timeline holds simulated_micro_batches)
    out["pipeline"] = pipe
    out["bubble_pct"] = pipe["bubble_pct"] if pipe else None
    return dict(sorted(out.items()))


def resolved_config(topo: Topology, model: ModelConfig, layout: Layout, workload: Workload,
                    opts: Assumptions) -> dict[str, Any]:
    """Every input of the point, fully resolved (enough to rerun it)."""
    return {
        "model": model.to_json(),
        "topology": {"name": topo.name, "nodes": topo.nodes, "gpus_per_node": topo.gpus_per_node,
                     "gpu": topo.gpu.name},
        "plan": {"schedule": layout.schedule, "tp": layout.tp, "sp": layout.sp, "replica_size": layout.replica_size,
                 "world_size": layout.world_size, "replicas": layout.replicas, "degrees": dict(layout.degrees),
                 **({"pp": layout.pp, "virtual_stages": layout.virtual_stages, "pp_schedule": layout.pp_schedule,
                     "placement": layout.placement, "stage_layers": list(layout.stage_layers)}
                    if layout.pp > 1 else {})},
        "workload": {"mode": workload.mode, "seq_len": workload.seq_len, "batch": workload.batch,
                     "decode_tokens": workload.decode_tokens,
                     **({"micro_batches": layout.micro_batches} if layout.micro_batches > 1 else {})},
        "assumptions": opts.to_json(),
    }
