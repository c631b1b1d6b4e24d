"""What a sweep writes to ``--out DIR``: ``results.json``, ``results.csv`` and the ``sweep.html`` page.

Entries are written in grid order; ``results.json`` and ``results.csv`` are byte-identical whatever
runner computed the points (wall-clock fields are null in JSON and absent from CSV).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tspsim.analysis.entries import entry_label
from tspsim.explore.grid import requested_degrees
from tspsim.explore.sweep import Outcome, SweepState
from tspsim.spec.workload import INFERENCE_MODES

Entry = dict[str, Any]


def result_entry(outcome: Outcome) -> Entry:
    """The results.json entry of an outcome.

    The run entry plus ``status`` ("ok"); for skipped or failed points the point's inputs, ``status``
    ("invalid" or "error") and ``reason``.
    """
    if outcome.status == "ok" and outcome.entry is not None:
        return {**outcome.entry, "status": "ok"}
    p = outcome.point
    entry = {"status": outcome.status, "reason": outcome.reason, "schedule": p.schedule,
             "topology": outcome.names[0] or p.topology, "model": outcome.names[1] or p.model, "mode": p.mode,
             "seq_len": p.seq_len, "batch": p.batch, "degrees": requested_degrees(p)}
    if p.mode in INFERENCE_MODES:
        entry["decode_tokens"] = p.decode_tokens
    return entry


def results_json(entries: Sequence[Entry]) -> str:
    """``{"results": [...]}`` with sorted keys, two-space indent and a final newline."""
    return json.dumps({"results": list(entries)}, indent=2, sort_keys=True) + "\n"


CSV_COLUMNS = ("status", "reason", "label", "schedule", "topology", "model", "mode", "seq_len", "batch",
               "world_size", "replicas", "step_time_s", "tokens_per_s", "tokens_per_s_per_gpu",
               "layer_tokens_per_s", "mfu", "peak_memory_gb", "hbm_gb", "oom", "overlap_pct", "exposed_comm_s",
               "compute_s", "comm_s", "sim_events")
"""Leading CSV columns; :data:`INFERENCE_CSV_COLUMNS` (when the sweep has inference points), then flattened
``degrees.*``, ``memory_breakdown_gb.*``, ``comm_bytes_per_rank.*``, ``decode_time_breakdown_s.*`` and the
scalar keys of the inference phase blocks ``prefill.*`` and ``decode.*`` follow. Wall-clock fields are never
written."""

INFERENCE_CSV_COLUMNS = ("context_tokens", "decode_tokens", "ttft_s", "tpot_s", "decode_tokens_per_s",
                         "decode_tokens_per_s_per_gpu", "max_batch", "decode_step_first_s", "decode_step_last_s",
                         "decode_sim", "decode_check_rel_err")
"""Serving columns, written only when some entry is a prefill, decode or generate point (so the CSV of a
training sweep is unchanged)."""

_FLAT = ("degrees", "memory_breakdown_gb", "comm_bytes_per_rank", "decode_time_breakdown_s", "prefill", "decode")


def results_csv(entries: Sequence[Entry]) -> str:
    """One row per entry; missing values are empty cells; floats as Python's shortest repr."""
    extra: list[str] = []
    for group in _FLAT:
        keys = sorted({k for e in entries for k, v in (e.get(group) or {}).items() if not isinstance(v, dict)})
        extra += [f"{group}.{k}" for k in keys]
    serving = any(e.get("mode") in INFERENCE_MODES for e in entries)
    columns = list(CSV_COLUMNS) + (list(INFERENCE_CSV_COLUMNS) if serving else []) + extra
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for e in entries:
        row: list[Any] = []
        for col in columns:
            if col == "label":
                value: Any = entry_label(e)
            elif "." in col:
                group, key = col.split(".", 1)
                value = (e.get(group) or {}).get(key)
            else:
                value = e.get(col)
            row.append("" if value is None else value)
        writer.writerow(row)
    return buf.getvalue()


def _cell(value: Any, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def results_table(entries: Sequence[Entry]) -> str:
    """The sweep's results as a text table for stdout, one row per point in grid order.

    Columns: configuration, topology, model, mode, seq (context for decode), batch, status, step time,
    tokens/s, peak memory GB (OOM marked); with inference points also TTFT and TPOT (ms) and decode
    tokens/s. Skipped and failed points show their status and an empty row.
    """
    from tspsim.core.units import format_tokens

    serving = any(e.get("mode") in INFERENCE_MODES for e in entries)
    head = ["configuration", "topology", "model", "mode", "seq", "batch", "status", "step (s)", "tokens/s",
            "peak GB"]
    if serving:
        head += ["TTFT (ms)", "TPOT (ms)", "decode tok/s"]
    rows = [head]
    for e in entries:
        ok = e.get("status") == "ok"
        peak = _cell(e.get("peak_memory_gb"), ".1f") + (" OOM" if e.get("oom") else "")
        row = [entry_label(e), str(e.get("topology", "")), str(e.get("model", "")), str(e.get("mode", "")),
               format_tokens(int(e.get("seq_len") or 0)), str(e.get("batch", "")), str(e.get("status", "")),
               _cell(e.get("step_time_s"), ".4g") if ok else "", _cell(e.get("tokens_per_s"), ",.0f") if ok else "",
               peak if ok else ""]
        if serving:
            ttft, tpot = e.get("ttft_s"), e.get("tpot_s")
            row += [_cell(None if ttft is None else ttft * 1e3, ".4g"),
                    _cell(None if tpot is None else tpot * 1e3, ".4g"), _cell(e.get("decode_tokens_per_s"), ",.0f")]
        rows.append(row)
    numeric = {head.index(c) for c in ("seq", "batch", "step (s)", "tokens/s", "peak GB", "TTFT (ms)", "TPOT (ms)",
                                       "decode tok/s") if c in head}
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     .rstrip() for r in rows)


def write_results(out_dir: str | Path, state: SweepState, title: str = "tspsim sweep") -> list[Path]:
    """Write results.json, results.csv and sweep.html atomically; return their paths."""
    from tspsim.core.files import write_text_atomic
    from tspsim.explore.plots import sweep_page

    out = Path(out_dir)
    entries = [result_entry(o) for o in state.outcomes]
    paths = [out / "results.json", out / "results.csv", out / "sweep.html"]
    write_text_atomic(paths[0], results_json(entries))
    write_text_atomic(paths[1], results_csv(entries))
    write_text_atomic(paths[2], sweep_page(entries, title=title))
    return paths
