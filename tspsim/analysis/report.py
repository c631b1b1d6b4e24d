"""Text reports built from run entries (design.md §4–§5): pure functions, no I/O.

* :func:`comparison_table` — schedules side by side (one column per schedule).
* :func:`verdict` — one line naming the winner and the reason (compute, exposed communication, memory).
* :func:`input_gather_note` — the note on sharded-activation TP's input all-gathers (design.md §3).
* :func:`assumptions_text` — the assumptions in force (fidelity rule 7).
* :func:`serving_table`, :func:`phase_table` — serving metrics; the prefill and decode phases of inference.

Entries are the dicts of :func:`tspsim.analysis.metrics.run_entry` (or :func:`~tspsim.analysis.metrics.generic_entry`,
whose model-specific keys are null and print as ``n/a``).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from tspsim.analysis.entries import schedule_label
from tspsim.analysis.metrics import INPUT_ALL_GATHER_KEY
from tspsim.core.errors import ConfigError
from tspsim.spec.stack import stack_from_mapping
from tspsim.spec.workload import INFERENCE_MODES

Entry = dict[str, Any]


def largest_memory_category(entry: Entry) -> str:
    """Name of the largest category in the memory breakdown at the peak (``-`` if empty)."""
    breakdown = entry.get("memory_breakdown_gb") or {}
    if not breakdown or max(breakdown.values()) <= 0:
        return "-"
    return max(breakdown.items(), key=lambda kv: (kv[1], kv[0]))[0]


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _gb(nbytes: float | None) -> str:
    """GB with two decimals; three significant digits below 0.1 GB (decode steps move KB, not GB)."""
    if nbytes is None:
        return "n/a"
    gb = nbytes / 1e9
    return f"{gb:.3g}" if 0 < gb < 0.1 else f"{gb:.2f}"


def _sum_bytes(by_kind: dict[str, float] | None, separate: bool) -> float | None:
    """Total bytes of the kinds other than the input all-gather (or only it when ``separate``)."""
    if by_kind is None:
        return None
    return sum(v for k, v in by_kind.items() if (k == INPUT_ALL_GATHER_KEY) == separate)


def _sp(entry: Entry, key: str, spec: str) -> str:
    """A number of the entry's SP attention (``-`` for layouts without a sequence-sharded axis)."""
    sp = entry.get("sp_attention")
    return "-" if not isinstance(sp, dict) or sp.get(key) is None else format(sp[key], spec)


_SP_ROWS = ("SP attention comm (s)", "SP attention overlap (%)")
"""Rows shown only when an entry has an SP axis (its algorithm is named in the column label)."""
_BATCH_ROWS = ("micro-batches", "pipeline bubble (%)")
"""Rows shown only when an entry accumulates micro-batches or runs a pipeline."""


def _micro(e: Entry) -> str:
    """``8 × 1 (G=128)``: micro-batches per replica × micro-batch, and the global batch."""
    m = e.get("micro_batches") or 1
    return f"{m} × {e.get('batch')} (G={e.get('global_batch')})"

_ROWS: tuple[tuple[str, Callable[[Entry], str]], ...] = (
    ("step time (s)", lambda e: _fmt(e.get("step_time_s"), ".4g")),
    ("tokens/s", lambda e: _fmt(e.get("tokens_per_s"), ",.0f")),
    ("tokens/s per GPU", lambda e: _fmt(e.get("tokens_per_s_per_gpu"), ",.0f")),
    ("tokens/s × layers", lambda e: _fmt(e.get("layer_tokens_per_s"), ",.0f")),
    ("MFU (%)", lambda e: _fmt(None if e.get("mfu") is None else 100 * e["mfu"], ".1f")),
    ("peak memory (GB)", lambda e: f"{e['peak_memory_gb']:.1f} / {e['hbm_gb']:g}"),
    ("largest memory", largest_memory_category),
    ("compute (s)", lambda e: _fmt(e.get("compute_s"), ".4g")),
    ("comm (s)", lambda e: _fmt(e.get("comm_s"), ".4g")),
    ("overlap (%)", lambda e: f"{e['overlap_pct']:.1f}"),
    ("exposed comm (s)", lambda e: f"{e['exposed_comm_s']:.4g}"),
    ("micro-batches", _micro),
    ("pipeline bubble (%)", lambda e: "-" if e.get("bubble_pct") is None else f"{e['bubble_pct']:.1f}"),
    ("SP attention comm (s)", lambda e: _sp(e, "comm_s", ".4g")),
    ("SP attention overlap (%)", lambda e: _sp(e, "overlap_pct", ".1f")),
    ("comm GB/rank/step", lambda e: _gb(_sum_bytes(e.get("comm_bytes_per_rank"), False))),
    ("  + input all-gather", lambda e: _gb(_sum_bytes(e.get("comm_bytes_per_rank"), True))),
    ("layer-0 fwd comm GB", lambda e: _gb(_sum_bytes(e.get("layer_comm_bytes_per_rank"), False))),
    ("OOM", lambda e: "OOM" if e.get("oom") else "no"),
)


def comparison_table(entries: Sequence[Entry]) -> str:
    """Schedules side by side: one row per metric, one column per schedule.

    Rows: step time, tokens/s (global, per GPU, and × layers: the TSP paper's per-decoder-layer unit),
    MFU (%; a fraction in JSON), peak memory against HBM and its largest category, compute and
    communication time, HTA overlap, exposed communication, micro-batches and the pipeline bubble (only when an
    entry accumulates micro-batches or runs a pipeline), the SP attention's communication time and
    overlap (only when a layout has a sequence-sharded axis; the column label names its algorithm), bytes
    sent per rank per step (input all-gathers of sharded-activation TP on their own row, only when
    present), one block's forward bytes, and the OOM flag. Inference entries (prefill, decode, generate)
    leave out tokens/s × layers. For ``generate`` entries every row is the whole request, and "step" reads
    "request".
    """
    if not entries:
        return "(no results)"
    has_input = any(_sum_bytes(e.get("comm_bytes_per_rank"), True) for e in entries)
    has_sp = any(isinstance(e.get("sp_attention"), dict) for e in entries)
    has_batches = any((e.get("micro_batches") or 1) > 1 or e.get("bubble_pct") is not None for e in entries)
    serving = all(e.get("mode") in INFERENCE_MODES for e in entries)
    request = all(e.get("mode") == "generate" and not e.get("inference_step") for e in entries)
    rows = [("", *[schedule_label(e) for e in entries])]
    for label, cell in _ROWS:
        if label.strip().startswith("+ input") and not has_input:
            continue
        if label in _SP_ROWS and not has_sp:
            continue
        if label in _BATCH_ROWS and not has_batches:
            continue
        if serving and label == "tokens/s × layers":
            continue
        shown = label.replace("step", "request") if request else label
        rows.append((shown, *[cell(e) for e in entries]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        first = row[0].ljust(widths[0])
        lines.append("  ".join([first, *(c.rjust(w) for c, w in zip(row[1:], widths[1:]))]).rstrip())
    return "\n".join(lines)


def input_gather_note(entries: Sequence[Entry]) -> str:
    """A note when any entry has sharded-activation TP input all-gathers ('' otherwise)."""
    gathered = [e for e in entries if _sum_bytes(e.get("comm_bytes_per_rank"), True)]
    megatron = [schedule_label(e) for e in gathered
                if (e.get("assumptions") or {}).get("satp_seq_attention") == "gather-input"]
    article = [schedule_label(e) for e in gathered if schedule_label(e) not in megatron]
    notes = []
    if article:
        notes.append(f"note: {', '.join(article)}: the all-gather of the sharded input before the column-parallel "
                     "projections (absent from the reference article's table, needed by a correct schedule) is "
                     f"counted separately as '{INPUT_ALL_GATHER_KEY}' (row '+ input all-gather').")
    if megatron:
        notes.append(f"note: {', '.join(megatron)}: Megatron sequence parallelism's all-gather of the layer input "
                     f"before the column-parallel projections is counted separately as '{INPUT_ALL_GATHER_KEY}' "
                     "(row '+ input all-gather').")
    return "\n".join(notes)


def assumptions_text(entry: Entry, width: int = 100) -> str:
    """The assumptions in force as wrapped ``key=value`` lines (the open questions of tsp.md §8).

    Options that cannot change the run are left out: inference-only ones from training and forward
    reports, training-only ones from prefill/decode/generate reports (the JSON keeps every option).
    """
    from tspsim.spec.assumptions import INFERENCE_ONLY_OPTIONS, TRAINING_ONLY_OPTIONS

    opts = entry.get("assumptions")
    head = "assumptions (change with --option KEY=VALUE; README: Assumptions and defaults):"
    if not opts:
        return head + " n/a (graph without metadata)"
    hidden = TRAINING_ONLY_OPTIONS if entry.get("mode") in INFERENCE_MODES else INFERENCE_ONLY_OPTIONS
    shown = {k: v for k, v in opts.items() if k not in hidden and k != "stack"}
    body = ", ".join(f"{k}={_value_text(v)}" for k, v in shown.items())
    out = head + "\n" + textwrap.fill(body, width=width, initial_indent="  ", subsequent_indent="  ")
    return out + stack_text(opts.get("stack"), width)


def stack_text(recorded: Any, width: int = 100) -> str:
    """``stack NAME: choices`` wrapped (after a newline), or '' when no stack is recorded."""
    if not isinstance(recorded, dict):
        return ""
    try:
        stack = stack_from_mapping(recorded, "recorded stack", "stack")
    except ConfigError:
        return ""
    line = f"stack {stack.name} (--stack NAME; README: Software stacks): {stack.summary()}"
    return "\n" + textwrap.fill(line, width=width, subsequent_indent="  ")


def _value_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return f"{v:g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------------------- verdict
def verdict(entries: Sequence[Entry]) -> str:
    """One line: which schedule wins and why.

    The winner is the highest tokens/s among the configurations that fit in HBM. The reason compares
    it with the runner-up: whichever of compute time or exposed communication accounts for more of
    the difference in step time is named; schedules that run out of memory are named as such.
    """
    if not entries:
        return "verdict: nothing was simulated"
    fits = [e for e in entries if not e.get("oom")]
    oom = [e for e in entries if e.get("oom")]
    if not fits:
        best = min(entries, key=lambda e: e["peak_memory_gb"])
        return (f"verdict: no schedule fits in {best['hbm_gb']:g} GB of HBM; the smallest peak is "
                f"{schedule_label(best)} at {best['peak_memory_gb']:.1f} GB{zero1_hint(entries)}")
    ranked = sorted(fits, key=_speed, reverse=True)
    win = ranked[0]
    oom_text = _oom_text(oom, win)
    if len(ranked) == 1:
        if oom:
            return f"verdict: {schedule_label(win)} wins: it is the only schedule that fits; {oom_text}"
        return f"verdict: {schedule_label(win)}: {_profile(win)}"
    second = ranked[1]
    ratio = _speed(win) / _speed(second) if _speed(second) > 0 else float("inf")
    text = (f"verdict: {schedule_label(win)} wins: {ratio:.2f}× the throughput of {schedule_label(second)}; "
            f"{_reason(win, second)}")
    return f"{text}; {oom_text}" if oom else text


def zero1_estimate_gb(entry: Entry) -> float | None:
    """Peak memory (GB) the entry would need with ZeRO-1 (optimizer state sharded over its DP replicas).

    The optimizer state is allocated once, before the step, so sharding it lowers the whole memory curve by
    (1 − 1/replicas) of it: peak − optimizer_state_at_peak · (1 − 1/replicas). None when it does not apply
    (not training, a ZeRO stage already on, one replica, no optimizer state).
    """
    opts = entry.get("assumptions") or {}
    replicas = entry.get("replicas") or 1
    opt_gb = (entry.get("memory_breakdown_gb") or {}).get("optimizer_state") or 0.0
    if entry.get("mode") != "train" or opts.get("zero1") or opts.get("zero") or replicas < 2 or opt_gb <= 0:
        return None
    return float(entry["peak_memory_gb"]) - opt_gb * (1.0 - 1.0 / replicas)


def zero1_hint(entries: Sequence[Entry]) -> str:
    """``; with --zero 1 … would fit`` for the entry that would need least, or ''."""
    fitting = [(need, e) for e in entries if (need := zero1_estimate_gb(e)) is not None and need <= e["hbm_gb"]]
    if not fitting:
        return ""
    need, e = min(fitting, key=lambda t: t[0])
    return (f"; with --zero 1 (optimizer state sharded over the {e['replicas']} data-parallel "
            f"replicas) {schedule_label(e)} would need about {need:.1f} GB and fit — rerun with it to check")


def _speed(e: Entry) -> float:
    """tokens/s, or 1/step time for entries without a model."""
    tps = e.get("tokens_per_s")
    if tps is not None:
        return float(tps)
    step = e.get("step_time_s") or 0.0
    return 1.0 / step if step > 0 else 0.0


def _traffic(e: Entry) -> str:
    return "its weight and K/V traffic" if e.get("schedule") == "tsp" else "its communication"


def _where(e: Entry) -> str:
    """`` over the NICs`` when the model-parallel group spans nodes."""
    cfg = e.get("config") or {}
    per_node = (cfg.get("topology") or {}).get("gpus_per_node")
    size = (cfg.get("plan") or {}).get("replica_size")
    return " over the NICs" if per_node and size and size > per_node else ""


def _reason(win: Entry, other: Entry) -> str:
    """Why ``win`` is faster than ``other``: exposed communication or compute time."""
    d_comm = other["exposed_comm_s"] - win["exposed_comm_s"]
    d_comp = (other.get("compute_s") or 0.0) - (win.get("compute_s") or 0.0)
    if d_comm >= d_comp:
        text = (f"{schedule_label(other)} exposes {other['exposed_comm_s']:.3g} s of communication"
                f"{_where(other)} against {win['exposed_comm_s']:.3g} s for {schedule_label(win)}")
        if win["overlap_pct"] >= 10.0:
            return f"{text}, which hides {win['overlap_pct']:.0f}% of {_traffic(win)} behind compute"
        w_bytes = _sum_bytes(win.get("comm_bytes_per_rank"), False) or 0.0
        o_bytes = _sum_bytes(other.get("comm_bytes_per_rank"), False) or 0.0
        if w_bytes < o_bytes:
            return (f"{text}, which sends {_bytes_text(w_bytes)} per rank per step instead of "
                    f"{_bytes_text(o_bytes)}")
        return text
    return (f"{schedule_label(other)} computes for {other.get('compute_s', 0.0):.3g} s per step against "
            f"{win.get('compute_s', 0.0):.3g} s (smaller or redundant kernels)")


def _profile(e: Entry) -> str:
    return (f"step {e['step_time_s']:.3g} s, compute {e.get('compute_s') or 0.0:.3g} s, exposed "
            f"communication {e['exposed_comm_s']:.3g} s ({e['overlap_pct']:.0f}% of communication hidden), "
            f"peak {e['peak_memory_gb']:.1f} GB of {e['hbm_gb']:g} GB")


def _oom_text(oom: Sequence[Entry], win: Entry) -> str:
    if not oom:
        return ""
    faster = [e for e in oom if _speed(e) > _speed(win)]
    parts = [f"{schedule_label(e)} needs {e['peak_memory_gb']:.1f} GB > {e['hbm_gb']:g} GB HBM (OOM"
             f"{', would be faster' if e in faster else ''})" for e in oom]
    return "; ".join(parts)


def _bytes_text(nbytes: float) -> str:
    """Bytes with a decimal unit that keeps three significant digits (GB = 1e9 bytes)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes:.0f} B"


# ---------------------------------------------------------------------------------- serving
def _ms(value: Any) -> str:
    return "n/a" if value is None else f"{value * 1e3:.4g}"


_SERVING_ROWS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("TTFT (ms)", lambda e: _ms(e.get("ttft_s"))),
    ("TPOT (ms)", lambda e: _ms(e.get("tpot_s"))),
    ("decode tokens/s", lambda e: "n/a" if e.get("decode_tokens_per_s") is None
     else f"{e['decode_tokens_per_s']:,.0f}"),
    ("decode tokens/s per GPU", lambda e: "n/a" if e.get("decode_tokens_per_s_per_gpu") is None
     else f"{e['decode_tokens_per_s_per_gpu']:,.1f}"),
    ("max batch (fits HBM)", lambda e: "not searched" if e.get("max_batch") is None else str(e["max_batch"])),
    ("TPOT: weights from HBM (ms)", lambda e: _ms((e.get("decode_time_breakdown_s") or {}).get("weights_hbm"))),
    ("      KV cache from HBM (ms)", lambda e: _ms((e.get("decode_time_breakdown_s") or {}).get("kv_hbm"))),
    ("      compute (ms)", lambda e: _ms((e.get("decode_time_breakdown_s") or {}).get("compute"))),
    ("      exposed comm (ms)", lambda e: _ms((e.get("decode_time_breakdown_s") or {}).get("communication"))),
    ("      other (ms)", lambda e: _ms((e.get("decode_time_breakdown_s") or {}).get("other"))),
    ("decode steps", lambda e: {"cut": "2-block unit", "window": "8-block probe", "full": "every step"}.get(
        e.get("decode_sim") or "", e.get("decode_sim") or "n/a")),
)


def serving_table(entries: list[dict[str, Any]]) -> str:
    """Serving metrics side by side (one column per schedule), like :func:`tspsim.analysis.report.comparison_table`.

    Rows: TTFT, TPOT, decode tokens/s (global and per GPU), max batch (``not searched`` when null:
    ``--no-max-batch``, sweeps without ``--max-batch``, replays), the TPOT breakdown and how the decode
    steps were simulated (``cut``/``window``: assembled exactly from a shorter graph; ``full``). Rows no
    entry has a value for are left out (decode rows of a prefill, TTFT of a single decode step).
    """
    def present(key: str) -> bool:
        return any(e.get(key) is not None for e in entries)

    skip: set[str] = set()
    if not present("ttft_s"):        # decode-step replay: no request, no time to first token
        skip.add("TTFT (ms)")
    if not present("tpot_s"):        # prefill only: no decode rows
        skip.update(label for label, _ in _SERVING_ROWS if label != "TTFT (ms)" and not label.startswith("max"))
    if not present("decode_sim"):
        skip.add("decode steps")
    rows = [("", *[schedule_label(e) for e in entries])]
    rows += [(label, *[cell(e) for e in entries]) for label, cell in _SERVING_ROWS if label not in skip]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:]))]).rstrip()
                     for r in rows)


# ---------------------------------------------------------------------------------- phases
_PHASE_ROWS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("time (s)", "time_s", lambda v: _fmt(v, ".4g")),
    ("compute (s)", "compute_s", lambda v: _fmt(v, ".4g")),
    ("comm (s)", "comm_s", lambda v: _fmt(v, ".4g")),
    ("overlap (%)", "overlap_pct", lambda v: _fmt(v, ".1f")),
    ("exposed comm (s)", "exposed_comm_s", lambda v: _fmt(v, ".4g")),
    ("tokens/s", "tokens_per_s", lambda v: _fmt(v, ",.0f")),
    ("peak memory (GB)", "peak_memory_gb", lambda v: _fmt(v, ".1f")),
    ("comm GB/rank", "comm_bytes_per_rank", lambda v: _gb(None if v is None else sum(v.values()))),
)


def phase_table(entries: Sequence[Entry]) -> str:
    """The ``prefill`` and ``decode`` blocks of inference entries side by side ('' when none has one).

    Prefill: the prefill step (tokens/s = prompt tokens/s). Decode: the N decode steps together (time =
    Σ steps, tokens/s = generated tokens/s). A ``generate`` entry's top-level keys are their sums
    (overlap: of the summed per-rank times), see :mod:`tspsim.analysis.serving`.
    """
    phases = [p for p in ("prefill", "decode") if any(isinstance(e.get(p), dict) for e in entries)]
    if not phases:
        return ""
    rows = [("", *[schedule_label(e) for e in entries])]
    for phase in phases:
        steps = {e[phase].get("steps") for e in entries if isinstance(e.get(phase), dict)}
        name = phase if phase == "prefill" else f"decode ({'/'.join(str(n) for n in sorted(steps))} steps)"
        for i, (label, key, fmt) in enumerate(_PHASE_ROWS):
            head = f"{name}: {label}" if i == 0 else f"  {label}"
            rows.append((head, *[fmt(e[phase].get(key)) if isinstance(e.get(phase), dict) else "n/a"
                                 for e in entries]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:]))]).rstrip()
                     for r in rows)
