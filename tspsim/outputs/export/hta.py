r"""Per-rank Kineto-style traces that Holistic Trace Analysis reads (conventions.md (b)).

One JSON file per rank, ``rank<R>.pt.trace.json``, in one folder (HTA's ``TraceAnalysis(trace_dir=…)``
reads every ``.json`` there). Each file:

* starts with ``"distributedInfo": {"backend": "nccl", "rank": R, "world_size": W}`` — written first and with
  ``": "`` separators, because HTA finds the rank with the regex ``"rank":\s+(\d+)`` on the raw text;
* holds one ``X`` event per GPU kernel with ``cat: "kernel"``, ``pid`` = device 0, ``tid`` = stream id and
  ``args.stream`` (compute stream 7, communication streams 20, 21, … in lane order), ``args.correlation``
  = op id;
* names communication kernels ``ncclDevKernel_<Kind>`` (``AllReduce``, ``ReduceScatter``, ``AllGather``,
  ``Broadcast``, ``Reduce``, ``AllToAll``, ``Send``, ``Recv``) so HTA's regex ``^nccl.*Kernel`` classifies
  them as communication, and keeps compute kernels' names unless HTA's regexes would misclassify them
  (a name containing ``Memcpy``/``Memset``/``Sync`` or starting ``nccl…Kernel``/``dma`` becomes
  ``tspsim_<kind>``; the original name is in ``args.tspsim_name``);
* uses **integer µs** ``ts``/``dur``: start and end are each rounded to the nearest µs. (HTA would otherwise
  ceil every float start and floor every end, shrinking each kernel by up to 2 µs — a bias; nearest
  rounding is unbiased and keeps a stream's kernels disjoint.)

With these, HTA's ``get_comm_comp_overlap()`` (time computing while communicating ÷ time communicating,
per rank, interval unions) reproduces tspsim's overlap on the same timeline.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tspsim import __version__
from tspsim.core.files import write_text_atomic
from tspsim.engine.timeline import Timeline
from tspsim.opgraph import Op
from tspsim.outputs.export import gpu_name, gpus_per_node, rank_streams, select_ranks, span_category

COMM_KERNEL_NAMES = {
    "all_reduce": "ncclDevKernel_AllReduce", "reduce_scatter": "ncclDevKernel_ReduceScatter",
    "all_gather": "ncclDevKernel_AllGather", "broadcast": "ncclDevKernel_Broadcast",
    "reduce": "ncclDevKernel_Reduce", "all_to_all": "ncclDevKernel_AllToAll",
    "send": "ncclDevKernel_Send", "recv": "ncclDevKernel_Recv",
}
"""Kernel name of each communication kind (HTA classifies ``^nccl.*Kernel`` as communication)."""

COMPUTE_STREAM_ID = 7
"""Stream id of the compute stream (Kineto's default stream)."""
FIRST_COMM_STREAM_ID = 20
"""Stream id of the first communication stream."""

# HTA 0.5 hta/utils/utils.py: names these regexes match are not counted as computation.
_NOT_COMPUTE = re.compile(r"(^nccl.*Kernel)|(.*(Memcpy)|(Memset))|(.*Sync)|(^dma)")


def kernel_name(op: Op) -> str:
    """Name of ``op``'s kernel in the HTA trace (see the module docstring)."""
    if op.is_comm:
        return COMM_KERNEL_NAMES.get(op.kind, f"ncclDevKernel_{op.kind.title().replace('_', '')}")
    if _NOT_COMPUTE.match(op.name) or op.name.startswith("nccl"):
        return f"tspsim_{op.kind}"
    return op.name


def rank_trace(entry: dict[str, Any], tl: Timeline, rank: int) -> dict[str, Any]:
    """The Kineto-style trace document of one rank."""
    per_node = gpus_per_node(tl)
    streams = rank_streams(tl).get(rank, ["compute"])
    stream_id = {s: (COMPUTE_STREAM_ID if s == "compute" else FIRST_COMM_STREAM_ID + i)
                 for i, s in enumerate(streams)}
    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": 0, "tid": 0, "ts": 0,
         "args": {"name": f"{gpu_name(rank, per_node)} (rank {rank})"}},
    ]
    for s, sid in stream_id.items():
        events.append({"ph": "M", "name": "thread_name", "pid": 0, "tid": sid, "ts": 0,
                       "args": {"name": f"stream {sid} {s}"}})
    ops = tl.ops
    for op_id, start, end in sorted(tl.spans, key=lambda s: (s[1], s[0])):
        op = ops[op_id]
        if op.rank != rank or span_category(op) is None:
            continue
        a, b = round(start * 1e6), round(end * 1e6)
        sid = stream_id[op.stream]
        name = kernel_name(op)
        args: dict[str, Any] = {"device": 0, "stream": sid, "correlation": op.id, "external id": op.id,
                                "layer": op.layer, "phase": op.phase}
        if name != op.name:
            args["tspsim_name"] = op.name
        if op.is_comm:
            args.update({"Collective name": op.kind, "In msg nelems": op.nbytes, "Group size": len(op.group)})
        events.append({"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": sid, "ts": a,
                       "dur": max(b - a, 0), "args": args})
    world = entry.get("world_size")
    return {
        "distributedInfo": {"backend": "nccl", "rank": rank,
                            "world_size": int(world) if isinstance(world, int) else len(tl.graph.ranks)},
        "schemaVersion": 1,
        "deviceProperties": [{"id": 0, "name": str(entry.get("topology", tl.topology_name)),
                              "totalGlobalMem": int(float(entry.get("hbm_gb") or 0) * 1e9)}],
        "traceName": f"tspsim {__version__} {entry.get('schedule', '')} rank {rank}",
        "displayTimeUnit": "ms",
        "traceEvents": events,
    }


def write_traces(entry: dict[str, Any], timeline: Timeline, out_dir: str | Path,
                 ranks: Sequence[int] | None = None) -> list[Path]:
    """Write one trace per rank into ``out_dir`` (created if needed); returns the files written.

    Raises:
        TspsimError: a requested rank was not simulated.
    """
    out = Path(out_dir)
    paths = []
    for r in select_ranks(timeline, ranks):
        p = out / f"rank{r}.pt.trace.json"
        # Default separators (", ", ": ") on purpose: HTA's rank regex needs the space after the colon.
        write_text_atomic(p, json.dumps(rank_trace(entry, timeline, r)))
        paths.append(p)
    return paths
