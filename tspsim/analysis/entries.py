"""Reading a run entry: its label and the throughput and OOM verdict, also for entries that lack the keys.

Shared by the text report, the sweep files and plots and the planner, so every place labels and ranks a
configuration the same way.
"""

from __future__ import annotations

from typing import Any

Entry = dict[str, Any]

_DEGREE_LABEL: dict[str, str] = {}
"""Display names of degree keys (none: the labels use the JSON keys D, T, SP, DP — one name each)."""



def sp_degree(schedule: str, degrees: dict[str, Any] | None) -> int:
    """Σ of a layout whose sequence-sharded axis runs ``sp_attention`` (``sp`` D, ``tp+sp`` Σ); 1 for the others."""
    degrees = degrees or {}
    if schedule == "tp+sp":
        return int(degrees.get("SP") or 1)
    if schedule == "sp":
        return int(degrees.get("D") or 1)
    return 1


def degrees_label(schedule: str, degrees: dict[str, Any] | None, sp_attention: str | None = None,
                  zero: int | None = None) -> str:
    """``tsp D=8``, ``tp+sp T=4×SP=2 ring``, ``tp D=8×PP=4×V=2 ZeRO-1``, with `` DP=n`` when there are several replicas.

    ``sp_attention`` (the SP algorithm: allgather, ring, ulysses) is named after the degrees of a layout with a
    sequence-sharded axis (Σ > 1), so a TP+SP column says which SP it ran; a ZeRO stage ≥ 1 is named unless the
    schedule is ``fsdp`` (ZeRO-3 by definition).
    """
    degrees = dict(degrees or {})
    dp = degrees.pop("DP", 1)
    keys = ("D", "T", "SP", "PP", "V")
    order = sorted(degrees, key=lambda k: keys.index(k) if k in keys else 9)
    parts = "×".join(f"{_DEGREE_LABEL.get(k, k)}={degrees[k]}" for k in order)
    label = f"{schedule} {parts}".strip()
    if sp_attention and sp_degree(schedule, degrees) > 1:
        label = f"{label} {sp_attention}"
    if zero and schedule != "fsdp":
        label = f"{label} ZeRO-{zero}"
    return f"{label} DP={dp}" if dp and dp > 1 else label


def entry_zero(entry: Entry) -> int | None:
    """The ZeRO stage recorded in an entry's assumptions (``zero``, or the older ``zero1``); None when absent."""
    opts = entry.get("assumptions") or {}
    value = opts.get("zero", 1 if opts.get("zero1") is True else None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def entry_sp_attention(entry: Entry) -> str | None:
    """The SP attention algorithm recorded in an entry's assumptions (None when absent)."""
    value = (entry.get("assumptions") or {}).get("sp_attention")
    return value if isinstance(value, str) else None


def schedule_label(entry: Entry) -> str:
    """Label of a run entry (see :func:`degrees_label`)."""
    return degrees_label(entry.get("schedule") or "graph", entry.get("degrees"), entry_sp_attention(entry),
                         entry_zero(entry))


def entry_label(entry: Entry) -> str:
    """Schedule and degrees of a run entry: ``tsp D=8``, ``tp+sp T=8×Σ=2 ring DP=64``."""
    return degrees_label(entry.get("schedule") or "?", entry.get("degrees"), entry_sp_attention(entry),
                         entry_zero(entry))


def throughput(entry: Entry) -> float | None:
    """tokens_per_s of an entry, derived from step_time_s when the key is absent."""
    tps = entry.get("tokens_per_s")
    if tps is not None:
        return float(tps)
    step = entry.get("step_time_s")
    if not step:
        return None
    return entry.get("batch", 1) * entry.get("seq_len", 0) * (entry.get("replicas") or 1) / step


def is_oom(entry: Entry) -> bool:
    """``oom`` of an entry, derived from peak_memory_gb > hbm_gb when the key is absent."""
    if entry.get("oom") is not None:
        return bool(entry["oom"])
    peak, hbm = entry.get("peak_memory_gb"), entry.get("hbm_gb")
    return peak is not None and hbm is not None and peak > hbm
