"""The planner behind ``tspsim plan``: the fastest schedule, degrees and micro-batch that fit.

:func:`candidate_points` enumerates configurations for one topology, model and sequence length:

* every registered schedule that takes a degree, with D ∈ divisors of the GPUs per node (D = 1 — pure
  data parallelism — once, as ``tp D=1``, since every schedule degenerates to it);
* ``tp+sp`` with T ∈ divisors of the GPUs per node (T ≥ 2) and Σ ≥ 2 such that the T×Σ replica fills
  whole nodes (T·Σ a multiple of the GPUs per node that divides the GPUs used);
* micro-batch sizes 1, 2, 4, … up to ``batch_max``;
* for layouts with a sequence-sharded axis (``sp``, ``tp+sp``), every SP attention algorithm
  (``sp_attention``: allgather, ring, ulysses — :func:`sp_variants`), unless ``--option sp_attention=…``
  fixes one; ring is left out under a stack whose attention kernel is not flash.

They run through the sweep machinery (:mod:`tspsim.explore.sweep`: same validation, cache and runners);
:func:`rank_results` drops invalid points and those that do not fit in HBM (``oom``), ranks the rest
by an :class:`Objective` (tokens/s by default), and :func:`limiter` / :func:`best_reason` explain in one
line what limits a configuration: memory, exposed communication or compute — and, for decode steps,
HBM bandwidth (streaming weights and KV cache) or per-kernel overheads.

**Inference modes** (issue 6). ``prefill``, ``decode`` and ``generate`` candidates are the same
shapes and batches (``decode``: ``seq`` is the cached context), with ``decode_tokens`` generated and no
max-batch search (the planner tries the batches itself). The default objective per mode
(:data:`DEFAULT_OBJECTIVES`): ``prefill`` — lowest ``ttft_s`` (latency of the prompt); ``decode`` —
highest ``decode_tokens_per_s``; ``generate`` — highest ``tokens_per_s``, generated tokens per second
of the whole request, prefill included (``decode_tokens_per_s`` would ignore the prefill).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from tspsim.analysis.entries import entry_label, is_oom, throughput
from tspsim.explore.sweep import Outcome
from tspsim.simulate import Point
from tspsim.spec.layout import SEQUENCE_SHARDED

Entry = dict[str, Any]

DEGREELESS = ("fsdp",)
"""Schedules without a degree to search (``fsdp`` is D = 1; :mod:`tspsim.explore.playbooks` generates it)."""

COMM_LIMIT = 0.20
"""A configuration is limited by exposed communication when it is at least this fraction of the step."""
MEMORY_LIMIT = 0.90
"""A configuration is limited by memory when its peak is at least this fraction of HBM."""
HBM_LIMIT = 0.50
"""A decode step is limited by HBM bandwidth when streaming weights and KV cache is at least this fraction."""
OVERHEAD_LIMIT = 0.50
"""A decode step is limited by overheads when launch overhead, elementwise kernels and idle time are at
least this fraction."""


@dataclass(frozen=True)
class Objective:
    """What the planner ranks configurations by: one numeric key of the run entry."""

    key: str
    """Run-entry key (``tokens_per_s``, ``decode_tokens_per_s``, ``ttft_s``, ``tpot_s``)."""
    maximize: bool
    """True: higher is better (throughputs); False: lower is better (latencies)."""
    label: str
    """Short name for tables and messages (``decode tokens/s``, ``TTFT``)."""
    description: str
    """One line saying what the value measures."""

    @property
    def goal(self) -> str:
        """``maximize`` or ``minimize``."""
        return "maximize" if self.maximize else "minimize"

    def value(self, entry: Entry) -> float | None:
        """The entry's value (``tokens_per_s`` derived from the step time when absent), None if missing."""
        if self.key == "tokens_per_s":
            return throughput(entry)
        v = entry.get(self.key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    def format(self, value: float | None) -> str:
        """``12,345 decode tokens/s`` / ``TTFT 6.52 ms``."""
        if value is None:
            return f"{self.label} n/a"
        if self.maximize:
            return f"{value:,.0f} {self.label}"
        return f"{self.label} {value * 1e3:.4g} ms"

    def text(self) -> str:
        """``highest decode tokens/s (…)`` / ``lowest TTFT (…)``."""
        return f"{'highest' if self.maximize else 'lowest'} {self.label} ({self.description})"


OBJECTIVES: Mapping[str, Objective] = MappingProxyType({
    "tokens_per_s": Objective("tokens_per_s", True, "tokens/s",
                              "tokens per second over all GPUs: train and forward the tokens processed, prefill "
                              "the prompt tokens, decode the generated tokens, generate the generated tokens "
                              "over the whole request, prefill included"),
    "decode_tokens_per_s": Objective("decode_tokens_per_s", True, "decode tokens/s",
                                     "tokens generated per second by the decode steps over all replicas, "
                                     "batch · replicas / TPOT"),
    "ttft_s": Objective("ttft_s", False, "TTFT", "time to first token: the prefill step"),
    "tpot_s": Objective("tpot_s", False, "TPOT", "time per output token: the mean decode step"),
})
"""Objectives by name (``tspsim plan --objective``)."""

MODE_OBJECTIVES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "train": ("tokens_per_s",), "forward": ("tokens_per_s",), "prefill": ("ttft_s", "tokens_per_s"),
    "decode": ("decode_tokens_per_s", "tpot_s", "tokens_per_s"),
    "generate": ("tokens_per_s", "decode_tokens_per_s", "ttft_s", "tpot_s"),
})
"""Objectives that make sense per mode, the default first."""

DEFAULT_OBJECTIVES: Mapping[str, str] = MappingProxyType({mode: names[0] for mode, names in MODE_OBJECTIVES.items()})
"""The default objective of each mode."""


def objective_for(mode: str, name: str | None = None) -> Objective:
    """The objective ``name`` (default: the mode's) after checking that it makes sense for ``mode``.

    Raises:
        TspsimError: for an unknown name or one the mode has no value for (one line, naming the choices).
    """
    from tspsim.core.errors import TspsimError

    allowed = MODE_OBJECTIVES.get(mode, ("tokens_per_s",))
    name = name or allowed[0]
    if name not in OBJECTIVES:
        raise TspsimError(f"unknown objective {name!r}: choose one of {', '.join(OBJECTIVES)}")
    if name not in allowed:
        why = {"ttft_s": "has no prefill step", "tpot_s": "has no decode steps",
               "decode_tokens_per_s": "has no decode steps"}.get(name, "does not report it")
        raise TspsimError(f"--objective {name}: --mode {mode} {why}; choose one of {', '.join(allowed)}")
    return OBJECTIVES[name]


def divisors(n: int) -> list[int]:
    """Divisors of ``n`` in increasing order."""
    return [d for d in range(1, n + 1) if n % d == 0]


def batch_sizes(batch_max: int) -> list[int]:
    """1, 2, 4, … up to ``batch_max`` (powers of two)."""
    out, b = [], 1
    while b <= batch_max:
        out.append(b)
        b *= 2
    return out


def candidate_points(topology: str, model: str = "zyphra-7b", seq: int | None = None, mode: str = "train",
                     gpus: int | None = None, batch_max: int = 8,
                     options: tuple[tuple[str, Any], ...] = (), decode_tokens: int | None = None) -> list[Point]:
    """Every configuration the planner considers (see the module docstring), not yet validated.

    ``seq`` is the prompt (the cached context for ``decode``); ``decode`` and ``generate`` points generate
    ``decode_tokens`` (default :data:`~tspsim.spec.workload.DEFAULT_DECODE_TOKENS`) and skip the max-batch search.

    Raises:
        TspsimError: unknown topology or model, or ``gpus`` larger than the topology.
    """
    from tspsim.core.errors import TspsimError
    from tspsim.schedules import SCHEDULES
    from tspsim.spec.model import load_model
    from tspsim.spec.topology_file import load_topology

    topo = load_topology(topology)
    cfg = load_model(model)
    world = gpus or topo.world_size
    if world > topo.world_size:
        raise TspsimError(f"--gpus {world} exceeds {topo.name} ({topo.world_size} GPUs)")
    seq_len = seq if seq is not None else cfg.default_seq
    g = min(topo.gpus_per_node, world)
    names = SCHEDULES.names()
    dp_only = "tp" if "tp" in names else (names[0] if names else "")
    shapes: list[tuple[str, int | None, int | None, int | None]] = []
    for name in names:
        if name in DEGREELESS:
            continue
        if name == "tp+sp":
            replicas = [r for r in range(g, world + 1, g) if world % r == 0]
            for t in divisors(g):
                for r in replicas:
                    if t >= 2 and r % t == 0 and r // t >= 2:
                        shapes.append((name, None, t, r // t))
        else:
            shapes += [(name, d, None, None) for d in divisors(g) if d > 1 or name == dp_only]
    tokens = 0
    if mode in ("decode", "generate"):
        from tspsim.spec.workload import DEFAULT_DECODE_TOKENS

        tokens = decode_tokens or DEFAULT_DECODE_TOKENS
    variants = sp_variants(options, mode)
    return [Point(name, topology, model, mode, seq_len, batch, d, t, s, gpus, decode_tokens=tokens, options=opts,
                  search_max_batch=False)
            for name, d, t, s in shapes
            for opts in (variants if name in SEQUENCE_SHARDED else (options,))
            for batch in batch_sizes(batch_max)]


def zero_variants(point: Point) -> list[Point]:
    """A training point retried with ZeRO-1 and, where it composes, ZeRO-3 (for layouts that do not fit).

    ZeRO changes memory and data-parallel traffic only, so the planner tries it on the configurations that run out
    of memory without it (:func:`tspsim.commands.plan` runs them as a second round).
    """
    from dataclasses import replace

    from tspsim.spec.layout import ZERO_THREE_SCHEDULES

    given = dict(point.options)
    if point.mode != "train" or given.get("zero") not in (None, 0, "0") or point.schedule == "fsdp":
        return []
    stages = (1, 3) if point.schedule in ZERO_THREE_SCHEDULES else (1, 2)
    return [replace(point, options=tuple(sorted({**given, "zero": z}.items()))) for z in stages]


ZERO_SHARDED = {1: ("optimizer_state",), 2: ("optimizer_state", "gradients"),
                3: ("optimizer_state", "gradients", "parameters")}
"""Memory categories each ZeRO stage shards over the gradient group (Rajbhandari et al. 2020, §5)."""


def zero_cannot_fit(entry: dict[str, Any], zero: int) -> bool:
    """True when ZeRO stage ``zero`` provably cannot bring an out-of-memory training entry under HBM.

    At the instant of the entry's peak, ZeRO-z leaves each category it shards at no less than 1/N of itself
    (N ≤ the world size; ZeRO-3's gathered units and ZeRO-2's per-layer gradients only add to that) and
    changes nothing else, so the new peak is at least
    peak − Σ_sharded breakdown[c] · (1 − 1/world). Above HBM, simulating the variant is pointless.
    """
    breakdown = entry.get("memory_breakdown_gb") or {}
    peak, hbm = entry.get("peak_memory_gb"), entry.get("hbm_gb")
    world = entry.get("world_size") or 1
    if peak is None or hbm is None:
        return False
    saved = sum(float(breakdown.get(c) or 0.0) for c in ZERO_SHARDED[zero]) * (1.0 - 1.0 / world)
    return peak - saved > hbm


def sp_variants(options: tuple[tuple[str, Any], ...], mode: str = "train") -> tuple[tuple[tuple[str, Any], ...], ...]:
    """The option sets a sequence-sharded layout is tried with: one per SP attention algorithm.

    Only ``options`` when they fix ``sp_attention`` (or for decode, whose steps are the same for every algorithm);
    ring is skipped when the stack's attention kernel is not flash (ring attention needs one).
    """
    from tspsim.spec.assumptions import SP_ATTENTION, Assumptions

    given = dict(options)
    if "sp_attention" in given or mode == "decode":
        return (options,)
    flash = Assumptions.from_overrides(given).stack.attention.kernel == "flash"
    return tuple(tuple(sorted({**given, "sp_attention": v}.items())) for v in SP_ATTENTION if flash or v != "ring")


# ---------------------------------------------------------------------------------- explanations
def _frac(num: float | None, den: float | None) -> float | None:
    if num is None or not den:
        return None
    return num / den


def limiter(entry: Entry, objective: Objective | None = None) -> tuple[str, str]:
    """(kind, one-line explanation ``"<kind>: <facts>"``) of what limits a configuration.

    ``exposed communication`` when communication not hidden behind compute is ≥ 20 % of the step,
    else ``memory`` when the peak is ≥ 90 % of HBM, else ``compute``. Uses exposed_comm_s,
    step_time_s, peak_memory_gb and hbm_gb (kind ``unknown`` when they are missing).

    Entries with decode steps (``decode_time_breakdown_s``; not when ranked by TTFT) are judged on the
    mean decode step instead: exposed communication ≥ 20 % of TPOT, then memory, then ``HBM bandwidth``
    (weights and KV cache streamed from HBM ≥ 50 % of TPOT), then ``overheads`` (launch overhead,
    elementwise kernels and idle time ≥ 50 %), else ``compute``. Prefill entries (and TTFT rankings)
    use the prefill step (``ttft_s``).
    """
    if (entry.get("decode_time_breakdown_s") and entry.get("tpot_s")
            and (objective is None or objective.key != "ttft_s")):
        kind, facts = _decode_limit(entry)
    else:
        kind, facts = _limit(entry)
    return kind, f"{kind}: {facts}"


def _decode_limit(entry: Entry) -> tuple[str, str]:
    parts = entry["decode_time_breakdown_s"]
    tpot = entry["tpot_s"]
    ms = tpot * 1e3
    peak, hbm = entry.get("peak_memory_gb"), entry.get("hbm_gb")
    mem = _frac(peak, hbm)
    comm = parts.get("communication", 0.0) / tpot
    weights, kv = parts.get("weights_hbm", 0.0) / tpot, parts.get("kv_hbm", 0.0) / tpot
    other = parts.get("other", 0.0) / tpot
    if comm >= COMM_LIMIT:
        return "exposed communication", (f"{comm:.0%} of the {ms:.3g} ms decode step is communication not "
                                         "hidden behind compute")
    if mem is not None and mem >= MEMORY_LIMIT:
        return "memory", (f"peak {peak:.1f} GB of {hbm:g} GB HBM ({mem:.0%}) leaves no room for a larger "
                          "batch or a longer context")
    if weights + kv >= HBM_LIMIT:
        return "HBM bandwidth", (f"streaming weights ({weights:.0%}) and KV cache ({kv:.0%}) from HBM takes "
                                 f"{weights + kv:.0%} of the {ms:.3g} ms decode step")
    if other >= OVERHEAD_LIMIT:
        return "overheads", (f"kernel launches, elementwise kernels and idle time take {other:.0%} of the "
                             f"{ms:.3g} ms decode step")
    return "compute", (f"compute is {parts.get('compute', 0.0) / tpot:.0%} of the {ms:.3g} ms decode step, "
                       f"exposed communication {comm:.0%}")


def _limit(entry: Entry) -> tuple[str, str]:
    step, exposed = entry.get("step_time_s"), entry.get("exposed_comm_s")
    if entry.get("mode") in ("prefill", "decode", "generate") and entry.get("ttft_s"):
        step = entry["ttft_s"]  # the per-step keys describe the prefill step (generate: not the whole request)
    peak, hbm = entry.get("peak_memory_gb"), entry.get("hbm_gb")
    comm = _frac(exposed, step)
    mem = _frac(peak, hbm)
    if comm is None and mem is None:
        return "unknown", "no communication or memory metrics in this entry"
    if comm is not None and comm >= COMM_LIMIT:
        return ("exposed communication", f"{exposed:.3g} s of the {step:.3g} s step ({comm:.0%}) is "
                                         "communication not hidden behind compute")
    if mem is not None and mem >= MEMORY_LIMIT:
        return "memory", (f"peak {peak:.1f} GB of {hbm:g} GB HBM ({mem:.0%}) leaves no room for a larger "
                          "micro-batch or a smaller degree")
    parts = []
    if comm is not None:
        parts.append(f"exposed communication is only {comm:.0%} of the {step:.3g} s step")
    if mem is not None:
        parts.append(f"memory {peak:.1f} of {hbm:g} GB")
    return "compute", ", ".join(parts)


def best_reason(best: Entry, oom: Sequence[Entry], objective: Objective | None = None) -> str:
    """Why ``best`` wins and what limits it, in one line.

    When a better configuration (by ``objective``, default tokens/s) exists but does not fit in HBM,
    memory is what limits the choice; otherwise the best configuration's own :func:`limiter`.
    """
    obj = objective or OBJECTIVES["tokens_per_s"]
    mine = obj.value(best)
    kind, facts = limiter(best, objective)[1].split(": ", 1)
    better = [e for e in oom if _score(obj, e) < _score(obj, best)]
    if better and mine:
        f = min(better, key=lambda e: (_score(obj, e), e.get("peak_memory_gb") or 0.0))
        theirs = obj.value(f) or 0.0
        if obj.maximize:
            gain = f"+{theirs / mine - 1:.0%} {obj.label}"
        else:
            gain = f"{obj.label} −{1 - theirs / mine:.0%}"
        return (f"limited by memory: the {'faster' if obj.maximize else 'quicker'} {entry_label(f)} at batch "
                f"{f.get('batch')} ({gain}) needs {f.get('peak_memory_gb', 0):.1f} GB of {f.get('hbm_gb', 0):g} GB "
                f"HBM; this choice is {kind}-bound ({facts})")
    return f"limited by {kind}: {facts}"


def _score(obj: Objective, e: Entry) -> float:
    """Sort key: lower is better (missing values last)."""
    v = obj.value(e)
    if v is None:
        return float("inf")
    return -v if obj.maximize else v


# ---------------------------------------------------------------------------------- ranking
@dataclass
class PlanResult:
    """The planner's answer."""

    ranked: list[Entry] = field(default_factory=list)
    """Configurations that fit, fastest first, each with ``rank`` (1 = best) and ``reason``."""
    oom: list[Entry] = field(default_factory=list)
    """Configurations that do not fit in HBM, fastest first."""
    invalid: list[Outcome] = field(default_factory=list)
    """Points whose degrees do not fit the model, sequence or topology."""
    errors: list[Outcome] = field(default_factory=list)
    """Points that failed unexpectedly."""
    dominated: list[Outcome] = field(default_factory=list)
    """Points not simulated because their tokens/s bound is below the best's (:mod:`tspsim.explore.branch_bound`)."""
    reason: str = ""
    """One line: why the best configuration wins and what limits it."""
    objective: Objective = field(default_factory=lambda: OBJECTIVES["tokens_per_s"])
    """What the configurations are ranked by."""

    @property
    def best(self) -> Entry | None:
        """The fastest configuration that fits (None if nothing fits)."""
        return self.ranked[0] if self.ranked else None


def rank_results(outcomes: Sequence[Outcome], objective: Objective | None = None) -> PlanResult:
    """Drop invalid, OOM and dominated points; rank the rest by ``objective`` (default tokens/s; ties: less memory)."""
    obj = objective or OBJECTIVES["tokens_per_s"]

    def _order(e: Entry) -> tuple[Any, ...]:
        return (_score(obj, e), e.get("peak_memory_gb") or 0.0, entry_label(e), e.get("batch") or 0)

    res = PlanResult(objective=obj)
    fits: list[Entry] = []
    for o in outcomes:
        if o.status == "invalid":
            res.invalid.append(o)
        elif o.status == "error":
            res.errors.append(o)
        elif o.status == "dominated":
            res.dominated.append(o)
        elif o.status == "ok" and o.entry is not None:
            (res.oom if is_oom(o.entry) else fits).append(dict(o.entry))
    fits.sort(key=_order)
    res.oom.sort(key=_order)
    for rank, e in enumerate(fits, 1):
        e["rank"] = rank
        e["reason"] = limiter(e, objective)[1]
    res.ranked = fits
    if fits:
        res.reason = best_reason(fits[0], res.oom, objective)
    return res
