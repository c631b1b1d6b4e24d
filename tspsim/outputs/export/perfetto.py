"""Chrome trace-event JSON that Perfetto and chrome://tracing open (conventions.md (a)).

Mapping (object form ``{"traceEvents": [...], "otherData": {...}}``):

* **one pid per GPU** — pid = global rank; ``process_name`` ``"node00/gpu3 (rank 3)"``, ``process_sort_index``
  = rank. With several runs in one file each run gets its own pid block (run *i*: pid ``i·10⁷ + rank``) and
  the names are prefixed with ``[schedule]``.
* **one tid per stream** — ``thread_name`` = stream, ``thread_sort_index`` with ``compute`` first
  (:data:`tspsim.outputs.export.STREAM_ORDER`). Spans of one stream run in issue order, so slices on a (pid, tid)
  are disjoint — the nesting rule holds.
* **X events** for every compute kernel, collective and send/recv: ``ts``/``dur`` in µs at ns resolution
  (start and end rounded to whole ns; a span that ends exactly when the next one on its stream starts ends
  1 ns early, so no parser's rounding makes neighbours overlap); ``cat`` = span category; ``args`` carry
  kind, layer, phase, FLOPs / HBM bytes or payload / sent bytes, group, algorithm.
* **memory** as ``C`` counter events on the GPU's pid, name ``"memory (bytes)"``, one event per instant the
  memory changes, ``args`` = every category (numeric bytes, never empty).
* **links** (when recorded) as one extra pid per link (``"link g0→g1 (xgmi)"``, pid ``i·10⁷ + 5·10⁶ + link``,
  sorted after the GPUs) with a ``"bandwidth (GB/s)"`` counter at every rate change.
* **P2P** send→recv pairs as v2 flow arrows: ``bind_id`` plus ``flow_out`` on the send's X event and
  ``flow_in`` on the recv's (both share ``cat`` and ``name``, so v1-style keying also pairs them).

A path ending in ``.gz`` is written gzip-compressed; writes are atomic
(:func:`tspsim.core.files.write_text_atomic`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tspsim import __version__
from tspsim.core.errors import TspsimError
from tspsim.core.files import write_text_atomic
from tspsim.engine.timeline import Timeline
from tspsim.opgraph import MEMORY_CATEGORIES, Op
from tspsim.outputs.export import gpu_name, gpus_per_node, in_run, rank_streams, select_ranks, span_category

RUN_PID_STRIDE = 10_000_000
"""pid block of each run in a multi-run trace."""
LINK_PID_OFFSET = 5_000_000
"""Offset of link pids inside a run's block."""
MEMORY_COUNTER = "memory (bytes)"
"""Name of the per-GPU memory counter."""
LINK_COUNTER = "bandwidth (GB/s)"
"""Name of the per-link bandwidth counter."""


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _us(ns: int) -> float:
    """µs value of an integer ns count (prints with at most 3 decimals)."""
    return ns / 1000 if ns % 1000 else ns // 1000


def _op_args(op: Op, tl: Timeline) -> dict[str, Any]:
    args: dict[str, Any] = {"op": op.id, "kind": op.kind, "layer": op.layer, "phase": op.phase}
    if op.is_compute:
        if op.flops:
            args["flops"] = op.flops
        if op.hbm_bytes:
            args["hbm_bytes"] = op.hbm_bytes
        if op.shape:
            args["shape"] = list(op.shape)
    else:
        args["bytes"] = op.nbytes
        if op.id in tl.op_sent_bytes:
            args["sent_bytes"] = tl.op_sent_bytes[op.id]
        args["group"] = list(op.group)
        args["coll"] = op.coll
        if op.root >= 0:
            args["root"] = op.root
        if op.algorithm:
            args["algorithm"] = op.algorithm
    return args


def trace_events(entry: dict[str, Any], tl: Timeline, *, ranks: Sequence[int] | None = None,
                 pid_base: int = 0, label: str = "", links: bool = True) -> list[dict[str, Any]]:
    """Trace events of one run (metadata, X slices with flows, memory and link counters).

    Args:
        entry: the run's stable entry (unused for events; kept for symmetry with the other exporters).
        tl: the run's timeline.
        ranks: simulated ranks to export (default: all simulated ranks).
        pid_base: added to every pid (multi-run traces).
        label: prefix of process names (multi-run traces), e.g. ``"[tp] "``.
        links: also export recorded link-bandwidth counters.
    """
    per_node = gpus_per_node(tl)
    chosen = select_ranks(tl, ranks)
    chosen_set = set(chosen)
    streams = rank_streams(tl)
    events: list[dict[str, Any]] = []
    tid_of: dict[tuple[int, str], int] = {}
    for r in chosen:
        pid = pid_base + r
        events.append({"ph": "M", "name": "process_name", "pid": pid,
                       "args": {"name": f"{label}{gpu_name(r, per_node)} (rank {r})"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}})
        for i, s in enumerate(streams.get(r, ["compute"])):
            tid_of[(r, s)] = i + 1
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": i + 1, "args": {"name": s}})
            events.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": i + 1,
                           "args": {"sort_index": i}})

    # P2P flows: bind ids for transfers whose both ends are exported.
    ends: dict[str, dict[str, int]] = {}
    for op in tl.ops:
        if op.kind in ("send", "recv") and op.rank in chosen_set:
            ends.setdefault(op.coll, {})[op.kind] = op.id
    flow_id: dict[int, tuple[str, str]] = {}
    n_flows = 0
    for coll in sorted(ends):
        pair = ends[coll]
        if "send" in pair and "recv" in pair:
            n_flows += 1
            bind = f"0x{pid_base // RUN_PID_STRIDE:x}{n_flows:08x}"
            flow_id[pair["send"]] = (bind, "flow_out")
            flow_id[pair["recv"]] = (bind, "flow_in")

    ops = tl.ops
    shown = sorted(((_ns(start), _ns(end), op_id) for op_id, start, end in tl.spans
                    if ops[op_id].rank in chosen_set and span_category(ops[op_id]) is not None))
    # A stream runs its ops one after another, so its spans are disjoint; where one ends exactly when the
    # next starts, end it 1 ns early: parsers that truncate ts·1000 to integer ns (or add floats) then
    # still see disjoint slices on the (pid, tid).
    next_start: dict[int, int] = {}
    last: dict[tuple[int, str], int] = {}
    for a, _, op_id in shown:
        key = (ops[op_id].rank, ops[op_id].stream)
        if key in last:
            next_start[last[key]] = a
        last[key] = op_id
    for a, b, op_id in shown:
        op = ops[op_id]
        nxt = next_start.get(op_id)
        if nxt is not None and b >= nxt:
            b = max(a, nxt - 1)
        ev: dict[str, Any] = {"ph": "X", "name": op.name, "cat": span_category(op), "pid": pid_base + op.rank,
                              "tid": tid_of[(op.rank, op.stream)], "ts": _us(a), "dur": _us(max(b - a, 0)),
                              "args": _op_args(op, tl)}
        if op.id in flow_id:
            bind, direction = flow_id[op.id]
            ev["bind_id"] = bind
            ev[direction] = True
        events.append(ev)

    for r in chosen:
        cur = dict.fromkeys(MEMORY_CATEGORIES, 0)
        pending: int | None = None
        for t, cat, delta in tl.memory.get(r, []):
            ns = _ns(t)
            if pending is not None and ns != pending:
                events.append({"ph": "C", "name": MEMORY_COUNTER, "pid": pid_base + r, "ts": _us(pending),
                               "args": dict(cur)})
            cur[cat] += delta
            pending = ns
        if pending is not None:
            events.append({"ph": "C", "name": MEMORY_COUNTER, "pid": pid_base + r, "ts": _us(pending),
                           "args": dict(cur)})

    if links:
        for idx, series in sorted(tl.links.items()):
            meta = tl.link_meta.get(idx, {})
            pid = pid_base + LINK_PID_OFFSET + idx
            name = f"{label}link {meta.get('src', '?')}→{meta.get('dst', '?')} ({meta.get('kind', '?')})"
            events.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}})
            events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}})
            for t, bps in series:
                events.append({"ph": "C", "name": LINK_COUNTER, "pid": pid, "ts": _us(_ns(t)),
                               "args": {"GBps": round(bps / 1e9, 6)}})
    return events


def build_trace(runs: Sequence[tuple[dict[str, Any], Timeline]], *, ranks: Sequence[int] | None = None,
                links: bool = True) -> dict[str, Any]:
    """The trace document for one or more runs (see the module docstring)."""
    events: list[dict[str, Any]] = []
    many = len(runs) > 1
    for i, (entry, tl) in enumerate(runs):
        label = f"[{entry.get('schedule', i)}] " if many else ""
        try:
            events.extend(trace_events(entry, tl, ranks=ranks, pid_base=i * RUN_PID_STRIDE, label=label,
                                       links=links))
        except TspsimError as exc:
            raise TspsimError(f"{in_run(len(runs), i, entry)}{exc}") from None
    summary_keys = ("schedule", "model", "topology", "mode", "seq_len", "batch", "degrees", "world_size",
                    "step_time_s", "peak_memory_gb", "overlap_pct")
    other = {"generator": f"tspsim {__version__}", "time_unit": "us",
             "runs": [{k: e[k] for k in summary_keys if k in e} for e, _ in runs]}
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}


def write_trace(runs: Sequence[tuple[dict[str, Any], Timeline]], path: str | Path, *,
                ranks: Sequence[int] | None = None, links: bool = True) -> None:
    """Write the Perfetto trace of ``runs`` — a list of (entry, Timeline) — to ``path`` (``.gz`` → gzip).

    This is the entry point of ``tspsim run --trace`` and ``tspsim export --format perfetto``.
    """
    doc = build_trace(runs, ranks=ranks, links=links)
    write_text_atomic(Path(path), json.dumps(doc, separators=(",", ":")))
