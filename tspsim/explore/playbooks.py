"""The default playbooks as candidates: FSDP and PTD-P layouts searched at a fixed global batch (issue 14).

A user choosing a layout compares TSP with what they run today: **FSDP** (ZeRO-3 on the data-parallel axis,
alone or over tensor or sequence parallelism, as PyTorch FSDP2 composes them) or **PTD-P** (Megatron-LM: tensor
parallelism with sequence parallelism inside the node, pipeline stages across nodes, data parallelism over the
rest; Narayanan et al. 2021). :func:`playbook_points` enumerates a family's layouts for one topology, model and
global batch — the planner's generator for ``tspsim plan`` and the search behind ``tspsim run``'s default
comparison (:func:`bounded_best`: simulate in the order of a lower bound on the step time and skip the candidates
whose bound already loses; the same choice as :func:`best_playbook`, which simulates each and keeps the fastest
that fits in HBM).

The global batch G is fixed (the same tokens per step as the other columns), so each layout's micro-batches
per replica are m = G / (b·DP); layouts where that is not a whole number are left out.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from tspsim.analysis.metrics import tokens_per_step
from tspsim.core.errors import TspsimError
from tspsim.engine.bound import step_time_lower_bound
from tspsim.engine.replay_setup import ReplaySetup
from tspsim.simulate import Point, RunResult, simulate
from tspsim.simulate.graph import build_graph
from tspsim.simulate.pipeline_timer import probe_micro_batches
from tspsim.simulate.point import resolve
from tspsim.simulate.training import simulate_training
from tspsim.spec.loader import SpecLoader
from tspsim.spec.pipeline_spec import PipelineSpec

PLAYBOOKS = ("fsdp", "ptd-p")
"""Playbook families."""
PTDP_SCHEDULES = ("satp-seq",)
"""PTD-P's model-parallel block: Megatron tensor parallelism with sequence parallelism (Korthikanti et al. 2022)."""
FSDP_SCHEDULES = ("fsdp", "tp", "sp", "satp-seq", "tp+sp")
"""FSDP alone (D = 1) or ZeRO-3 over TP, SP (FSDP + context parallelism), sequence-sharded TP, or the TP+SP grid."""
MAX_STAGES = 8
"""Most pipeline stages tried by the default comparison (the planner tries every divisor of the blocks)."""


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def playbook_points(family: str, topology: str, model: str, seq: int, global_batch: int,
                    options: tuple[tuple[str, Any], ...] = (), gpus: int | None = None, batch_max: int = 1,
                    max_stages: int = MAX_STAGES, virtual: tuple[int, ...] = (1, 2)) -> list[Point]:
    """The candidate layouts of one playbook (not yet validated: some may not fit the model or the batch).

    ``fsdp``: each schedule of :data:`FSDP_SCHEDULES` at the node's GPUs as its degree (T = a node × Σ = 2 for
    tp+sp), ZeRO-3. ``ptd-p``: :data:`PTDP_SCHEDULES` (with ``satp_seq_attention=gather-input``, Megatron's
    sequence parallelism, unless ``options`` set it) with D = the node's GPUs (on a single node: every smaller
    degree ≥ 2) × P stages (P ≥ 2 dividing the blocks and the GPUs, at most ``max_stages``) × V ∈ ``virtual``.
    Micro-batches 1, 2, 4, … ≤ ``batch_max``.
    """
    from tspsim.spec.model import load_model
    from tspsim.spec.topology_file import load_topology

    topo, cfg = load_topology(topology), load_model(model)
    world = gpus or topo.world_size
    g = min(topo.gpus_per_node, world)
    batches = [b for b in (1, 2, 4, 8, 16, 32) if b <= batch_max]
    zero = tuple(sorted({**dict(options), "zero": 3}.items()))
    out: list[Point] = []
    if family == "fsdp":
        for name in FSDP_SCHEDULES:
            kw: dict[str, Any] = {"degree": g} if name in ("tp", "sp", "satp-seq") else {}
            if name == "tp+sp":
                kw = {"tp": g, "sp": 2}
            if name in ("tp", "satp-seq") and world == g:
                continue     # no data parallelism to shard over: the same layout as without ZeRO
            opts = tuple(sorted(dict(options).items())) if name == "fsdp" else zero
            out += [Point(name, topology, model, "train", seq, b, gpus=gpus, options=opts,
                          pipeline=PipelineSpec(global_batch=global_batch), **kw) for b in batches]
        return out
    if family != "ptd-p":
        raise TspsimError(f"unknown playbook {family!r}: choose one of {', '.join(PLAYBOOKS)}")
    # PTD-P's block is Megatron sequence parallelism (the layer input all-gathered), unless asked otherwise
    options = tuple(sorted({"satp_seq_attention": "gather-input", **dict(options)}.items()))
    # TP fills a node and stages span nodes (Megatron's layout); on one node the stages share it
    degrees = [g] if world > g else [d for d in _divisors(g) if 2 <= d < g]
    for name in PTDP_SCHEDULES:
        for d in degrees:
            for p in _divisors(world // d):
                if not 2 <= p <= max_stages or cfg.layers % p:
                    continue
                for v in virtual:
                    if cfg.layers % (p * v):
                        continue
                    spec = PipelineSpec(stages=p, virtual_stages=v, global_batch=global_batch)
                    out += [Point(name, topology, model, "train", seq, b, degree=d, gpus=gpus, options=options,
                                  pipeline=spec) for b in batches]
    return out


def valid_points(points: list[Point], specs: SpecLoader | None = None) -> list[Point]:
    """The points whose layout resolves (degrees, batch and stages fit); ``specs`` reads each file once."""
    from tspsim.simulate.point import resolve_layout

    specs = specs or SpecLoader()
    kept = []
    for p in points:
        try:
            resolve_layout(p, specs.topology(p.topology), specs.model(p.model), specs)
        except TspsimError:
            continue
        kept.append(p)
    return kept


def best_playbook(points: list[Point], on_point: Callable[[Point, int, int], None] | None = None,
                  fold: bool = True, specs: SpecLoader | None = None) -> RunResult | None:
    """Simulate every valid point and return the fastest (tokens/s) that fits in HBM, or None.

    ``on_point(point, i, n)`` hears of each simulation before it starts (progress); ``specs`` reads each file
    once.
    """
    specs = specs or SpecLoader()
    kept = valid_points(points, specs)
    best: RunResult | None = None
    for i, p in enumerate(kept):
        if on_point is not None:
            on_point(p, i, len(kept))
        res = simulate(p, fold=fold, specs=specs)
        e = res.entry
        if e.get("oom"):
            continue
        if best is None or e["tokens_per_s"] > best.entry["tokens_per_s"]:
            best = res
    return best


KEEP_GRAPH_OPS = 1_000_000
"""Most ops of the bounded candidates' graphs kept between their bound and their replay (about 1–2 KB each);
beyond that a candidate's graph is built again when it is simulated."""


def bounded_best(points: list[Any], fold: bool = True, specs: Any = None) -> tuple[Any, int, int | None]:
    """(the result :func:`best_playbook` returns for ``points``, candidates skipped, its index in ``points``).

    The index is None when the result is.

    That is the fastest candidate (tokens/s) that fits in HBM, the first in ``points`` order among equals, or
    None. Each training candidate has its graph built and a lower bound on its step time computed
    (:func:`tspsim.engine.bound.step_time_lower_bound`), so an upper bound U = tokens per step / bound on its
    tokens/s: first with free communication (cheap), then, when the candidate is next, with every
    communication op at its least duration (tighter, and the plans it resolves are reused by the replay). The
    candidate of largest U goes next (tightened first if its bound is still the cheap one, else simulated);
    once the largest U left is below (1 − 10⁻⁹) × the best tokens/s simulated, the rest are skipped: their
    simulated tokens/s would be below their U, so none could be chosen (the margin covers the float noise of
    two differently summed times). A long pipeline timed from a shorter probe
    (:mod:`tspsim.simulate.pipeline_timer`; its full graph is never built) is simulated first, unbounded, and
    graphs beyond :data:`KEEP_GRAPH_OPS` ops in all are built again when simulated.
    ``tests/test_step_bound.py`` checks the choice against simulating everything.
    """
    specs = specs or SpecLoader()
    best: Any = None
    best_key: tuple[float, int] | None = None

    def consider(i: int, res: Any) -> None:
        nonlocal best, best_key
        e = res.entry
        if not e.get("oom") and (best_key is None or (e["tokens_per_s"], -i) > best_key):
            best, best_key = res, (e["tokens_per_s"], -i)

    heap: list[tuple[float, int, int]] = []      # (−U, index, level: 0 free comm, 1 comm at its least)
    kept: dict[int, Any] = {}                    # index → built graph (up to KEEP_GRAPH_OPS ops in all)
    plans: dict[int, dict[Any, Any]] = {}
    setups: dict[int, ReplaySetup] = {}          # index → its kept graph's replay setup (bounds and replay)
    tokens: dict[int, int] = {}
    kept_ops = 0
    for i, p in enumerate(points):
        if p.mode != "train" or _probed(p, specs):
            consider(i, simulate(p, fold=fold, specs=specs))
            continue
        built = build_graph(p, fold=fold, specs=specs)
        graph, topo, _model, layout, workload, _opts = built
        tokens[i] = tokens_per_step(workload, layout.replicas, layout.micro_batches)
        setup = ReplaySetup.of(graph)
        heapq.heappush(heap, (-_upper(tokens[i], step_time_lower_bound(graph, topo, comm=False, setup=setup)), i, 0))
        kept_ops += len(graph.ops)
        if kept_ops <= KEEP_GRAPH_OPS:
            kept[i] = built
            setups[i] = setup
    while heap:
        neg_u, i, level = heap[0]
        if best_key is not None and -neg_u < best_key[0] * (1 - 1e-9):
            break                                # this one and every one left cannot be chosen
        heapq.heappop(heap)
        p = points[i]
        built = kept.get(i) or build_graph(p, fold=fold, specs=specs)
        if level == 0:
            plans[i] = {}
            bound = step_time_lower_bound(built[0], built[1], plans=plans[i] if i in kept else None,
                                          setup=setups.get(i))
            heapq.heappush(heap, (-_upper(tokens[i], bound), i, 1))
            continue
        consider(i, simulate_training(p, fold=fold, specs=specs, built=built, plans=plans.get(i),
                                      setup=setups.get(i)))
        kept.pop(i, None)
        setups.pop(i, None)
    return best, len(heap), None if best_key is None else -best_key[1]


def _upper(tokens: int, bound_s: float) -> float:
    """Upper bound on tokens/s from a lower bound on the step time (unbounded for a bound of 0)."""
    return tokens / bound_s if bound_s > 0 else float("inf")


def _probed(point: Any, specs: Any) -> bool:
    """True if the training point's step is timed from a shorter pipeline probe (its full graph is not built)."""
    layout = resolve(point, specs)[2]
    return probe_micro_batches(layout.micro_batches, layout.pp, layout.pp_schedule, 0) is not None
