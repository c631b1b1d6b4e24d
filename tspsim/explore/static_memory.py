"""What the planner knows before simulating: static memory over HBM is OOM, a graph over the op limit invalid.

Static memory — parameters, gradients, optimizer state and the runtime reserve — is allocated when a
step starts and held throughout (:meth:`tspsim.schedules.context.BuildContext.init_static`), so a
configuration whose static memory alone exceeds HBM is out of memory whatever its activations. It is
read from the ``static memory`` ops of the point's graph built with 1 and 2 blocks (milliseconds,
no replay) and extended linearly to the model's L blocks: every per-rank parameter count is an
embedding/head part plus L identical blocks, so static(L) = static(1) + (L − 1)·(static(2) − static(1))
per category, up to the integer rounding of each category (a few bytes): a configuration is only
declared OOM when the bound exceeds HBM by more than :data:`MARGIN_BYTES`, otherwise it is simulated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from tspsim.analysis.metrics import tokens_per_step
from tspsim.core.errors import ConfigError, TspsimError
from tspsim.engine.costs import compute_seconds, kernel_gpu
from tspsim.explore.ring_floor import ring_over_limit
from tspsim.opgraph import COMPUTE_KINDS, MEMORY_CATEGORIES, OpGraph
from tspsim.schedules import SCHEDULES
from tspsim.schedules.context import BuildContext, graph_ops_limit
from tspsim.simulate import Point
from tspsim.simulate.graph import build_graph
from tspsim.simulate.point import resolve
from tspsim.spec.layout import SEQUENCE_SHARDED
from tspsim.spec.loader import SpecLoader
from tspsim.spec.model import load_model
from tspsim.spec.topology import Topology

MARGIN_BYTES = 1 << 20
"""Static memory must exceed HBM by more than this to be called OOM without a simulation (1 MiB ≫ rounding)."""
GB = 1e9


def static_bytes(graph: OpGraph) -> dict[int, dict[str, int]]:
    """Per rank, per category: the bytes the graph's ``static memory`` ops allocate."""
    out: dict[int, dict[str, int]] = {}
    for op in graph.ops:
        if op.kind == "memory" and op.name == "static memory":
            per = out.setdefault(op.rank, dict.fromkeys(MEMORY_CATEGORIES, 0))
            for _when, cat, delta in op.mem:
                per[cat] += delta
    return out


def probe_point(point: Point) -> Point:
    """The point whose small graphs give ``point``'s static memory cheaply.

    Batch 1 and, for a sequence-sharded layout, the all-gather SP attention: static memory depends on
    neither (parameters, gradients and optimizer state follow the weight sharding, the reserve is per GPU).
    Options are sorted, as the planner writes them, so the probe of an all-gather point is that point at batch 1
    (:func:`count_point`) and one pair of small graphs serves both questions.
    """
    options = {k: v for k, v in point.options if k != "sp_attention"}
    if point.schedule in SEQUENCE_SHARDED or any(k == "sp_attention" for k, _ in point.options):
        options["sp_attention"] = "allgather"
    batch = point.batch if point.schedule == "satp-batch" else 1  # satp-batch needs its batch to divide
    return replace(point, batch=batch, options=tuple(sorted(options.items())), search_max_batch=False)


def count_point(point: Point) -> Point:
    """The point whose small graphs count ``point``'s ops: the same configuration at batch 1 (satp-batch: its own)."""
    return own_point(replace(point, batch=point.batch if point.schedule == "satp-batch" else 1))


def own_point(point: Point) -> Point:
    """``point`` as a key of the small-graph memo (options sorted, no max-batch search): its own small graphs."""
    return replace(point, options=tuple(sorted(point.options)), search_max_batch=False)


@dataclass(frozen=True)
class SmallGraphs:
    """What a point's op graphs cut to 1 and 2 blocks say, without a replay."""

    static_one: dict[int, dict[str, int]]
    """Per rank, per category: static bytes of the 1-block graph (:func:`static_bytes`)."""
    static_two: dict[int, dict[str, int]]
    """The same for the 2-block graph."""
    ops_one: int
    """Ops of the 1-block graph."""
    ops_two: int
    """Ops of the 2-block graph."""
    layers: int
    """Blocks L of the model the point names."""
    compute_one: dict[int, float]
    """Per rank: compute seconds of the 1-block graph on an idle GPU (:func:`compute_per_rank`)."""
    compute_two: dict[int, float]
    """The same for the 2-block graph."""
    tokens_per_step: int
    """Tokens one step of the point processes over all replicas."""
    optimizer_one: dict[int, float] = field(default_factory=dict)
    """Per rank: the part of :attr:`compute_one` spent in ``optimizer`` ops (the only compute ZeRO shrinks)."""
    optimizer_two: dict[int, float] = field(default_factory=dict)
    """The same for the 2-block graph."""

    def static_peak(self) -> tuple[int, dict[str, int]]:
        """Bytes and per-category breakdown of the fullest rank at L blocks.

        Per category: static(1) + (L − 1)·(static(2) − static(1)) (module docstring).
        """
        return extrapolated_peak(self.static_one, self.static_two, self.layers)

    def compute_s(self, optimizer: bool = True) -> float | None:
        """The busiest rank's compute seconds at L blocks, c(1) + (L − 1)·(c(2) − c(1)) per rank (None: no ops).

        ``optimizer=False``: without the optimizer ops (what a ZeRO retry of the point computes at least).
        """
        c1, c2, L = self.compute_one, self.compute_two, self.layers
        if not c1 or c1.keys() != c2.keys():
            return None
        if optimizer:
            return max(c1[r] + (L - 1) * (c2[r] - c1[r]) for r in c1)
        o1, o2 = self.optimizer_one, self.optimizer_two
        b1 = {r: c1[r] - o1.get(r, 0.0) for r in c1}
        return max(b1[r] + (L - 1) * (c2[r] - o2.get(r, 0.0) - b1[r]) for r in c1)

    def op_count(self) -> tuple[int, int]:
        """Ops of the L-block graph and ops per block: n(1) + (L − 1)·(n(2) − n(1)) (:func:`graph_ops`)."""
        per = self.ops_two - self.ops_one
        return self.ops_one + (self.layers - 1) * per, per


def extrapolated_peak(s1: dict[int, dict[str, int]], s2: dict[int, dict[str, int]], layers: int
                      ) -> tuple[int, dict[str, int]]:
    """(bytes, breakdown) of the fullest rank at ``layers`` blocks from its static bytes at 1 and 2 blocks."""
    if not s1 or s1.keys() != s2.keys():
        return 0, {}
    best, at = -1, {}
    for rank in s1:
        per = {c: s1[rank][c] + (layers - 1) * (s2[rank][c] - s1[rank][c]) for c in MEMORY_CATEGORIES}
        total = sum(per.values())
        if total > best:
            best, at = total, per
    return best, at


@dataclass(frozen=True)
class StaticKey:
    """Memo key of a point's static-memory probe (:func:`static_probe`), beside the small graphs keyed by points."""

    point: Point
    """The probe point (:func:`probe_point`)."""


class _StaticAllocated(Exception):
    """Raised by a probe build right after its static memory is allocated: the rest is not needed."""


def static_prefix(point: Point, layers: int, specs: SpecLoader | None = None) -> dict[int, dict[str, int]]:
    """:func:`static_bytes` of ``point``'s graph cut to ``layers`` blocks, built only up to its static memory.

    A training or forward step (:func:`tspsim.schedules.pipeline.run_step`) allocates all of its static memory in
    one :meth:`~tspsim.schedules.context.BuildContext.init_static` call, the only emitter of ``static memory``
    ops, before any pass: the build stops when that call returns, so these are the bytes of the whole graph.
    """
    topo, model, layout, workload, opts = resolve(point, specs)
    ctx = BuildContext(replace(model, layers=layers), topo, layout, workload, opts)
    allocate = ctx.init_static

    def allocate_then_stop(local_params: dict[int, float]) -> None:
        allocate(local_params)
        raise _StaticAllocated

    ctx.init_static = allocate_then_stop  # type: ignore[method-assign]
    try:
        graph = SCHEDULES.get(point.schedule).build(ctx)
    except _StaticAllocated:
        graph = ctx.builder.graph
    return static_bytes(graph)


def static_probe(point: Point, specs: SpecLoader | None = None) -> tuple[int, dict[str, int]]:
    """(bytes, breakdown) of the fullest rank's static memory at L blocks, from two :func:`static_prefix` builds.

    Milliseconds where :func:`small_graphs` builds every op of one and two blocks (seconds for a 1,024-rank
    replica). Training and forward steps without a pipeline only (one ``run_step`` with no pass before the static
    memory); other points (pipelines, micro-batches, inference) build their small graphs.
    """
    _topo, model, layout, workload, _opts = resolve(point, specs)
    if workload.mode not in ("train", "forward") or layout.pp > 1 or layout.micro_batches > 1:
        small = small_graphs(point, specs)
        assert small is not None   # no limit: always built
        return small.static_peak()
    return extrapolated_peak(static_prefix(point, 1, specs), static_prefix(point, 2, specs), model.layers)


def compute_per_rank(graph: OpGraph, topo: Topology, kinds: tuple[str, ...] = COMPUTE_KINDS) -> dict[int, float]:
    """Per simulated rank: Σ compute_seconds of its compute ops (of ``kinds``) on an idle GPU (the graph's costs)."""
    gpu = kernel_gpu(topo.gpu, graph.meta or {})
    out: dict[int, float] = {}
    for op in graph.ops:
        if op.kind in kinds:
            out[op.rank] = out.get(op.rank, 0.0) + compute_seconds(op, gpu)
    return out


def small_graphs(point: Point, specs: SpecLoader | None = None, limit: int = 0) -> SmallGraphs | None:
    """Build ``point`` with 1 and 2 blocks (milliseconds: no replay) and keep what the planner reads of them.

    ``limit`` > 0 (training points): None as soon as the L-block graph provably holds more ops than that — the
    2-block graph is stopped when it would pass ops(1) + ⌊(limit − ops(1))/(L − 1)⌋ ops, since a block of more ops
    than that brings ops(1) + (L − 1)·(ops(2) − ops(1)) over the limit (an over-limit ring is not built twice).
    """
    one, topo, _model, layout, workload, _opts = build_graph(point, layers=1, specs=specs)
    layers = (specs.model(point.model) if specs is not None else load_model(point.model)).layers
    if limit > 0 and point.mode in ("train", "forward") and layers > 1:
        if len(one.ops) > limit:
            return None
        two = _build_capped(point, 2, specs, len(one.ops) + (limit - len(one.ops)) // (layers - 1))
        if two is None:
            return None
    else:
        two = build_graph(point, layers=2, specs=specs)[0]
    return SmallGraphs(static_bytes(one), static_bytes(two), len(one.ops), len(two.ops), layers,
                       compute_per_rank(one, topo), compute_per_rank(two, topo),
                       tokens_per_step(workload, layout.replicas, layout.micro_batches),
                       compute_per_rank(one, topo, ("optimizer",)), compute_per_rank(two, topo, ("optimizer",)))


def _build_capped(point: Point, layers: int, specs: SpecLoader | None, max_ops: int) -> OpGraph | None:
    """The training graph of ``point`` cut to ``layers`` blocks, or None once it passes ``max_ops`` ops."""
    topo, model, layout, workload, opts = resolve(point, specs)
    ctx = BuildContext(replace(model, layers=layers), topo, layout, workload, opts)
    ctx.builder.max_ops = max_ops
    try:
        return SCHEDULES.get(point.schedule).build(ctx)
    except ConfigError:
        if len(ctx.builder.graph.ops) >= max_ops:
            return None
        raise


def probe_many(tasks: list[tuple[Point, int]]) -> list[SmallGraphs | None | str]:
    """:func:`small_graphs` of each (point, limit), one :class:`SpecLoader` for all; a failure is its message.

    Module level: the planner runs chunks of probes on its worker processes (:func:`warm`).
    """
    specs = SpecLoader()
    return [_or_message(lambda p=point, n=limit: small_graphs(p, specs, n)) for point, limit in tasks]


Mapper = Callable[[Callable[[Any], Any], list[Any]], list[Any]]
"""``mapper(fn, items)``: ``[fn(x) for x in items]``, maybe on worker processes (``runners.map_tasks``)."""


def static_many(points: list[Point]) -> list[tuple[int, dict[str, int]] | str]:
    """:func:`static_probe` of each point, one :class:`SpecLoader` for all; a failure is its message.

    Module level: the planner runs chunks of them on its worker processes (:func:`warm_static`).
    """
    specs = SpecLoader()
    return [_or_message(lambda p=point: static_probe(p, specs)) for point in points]


def _or_message(compute: Callable[[], Any]) -> Any:
    try:
        return compute()
    except TspsimError as exc:
        return str(exc) or "error"


def warm_static(known: dict[Any, Any], probes: list[Point], mapper: Mapper | None, chunks: int = 8) -> None:
    """Compute the static probes of ``probes`` (probe points) not yet answered in ``known``, in parallel.

    Stored under :class:`StaticKey` as :func:`static_oom_entry` would store them; a probe whose small graphs are
    already known, or that fails, is left to it (same values, same errors where they always were).
    """
    todo = [k for k in dict.fromkeys(probes) if known.get(k) is None and StaticKey(k) not in known]
    if mapper is None or len(todo) < 2:
        return
    parts = [todo[j::chunks] for j in range(min(chunks, len(todo)))]
    for part, results in zip(parts, mapper(static_many, parts)):
        for key, peak in zip(part, results):
            if not isinstance(peak, str):
                known[StaticKey(key)] = peak



def warm(known: dict[Point, SmallGraphs | None], keys: list[Point], mapper: Mapper | None, limit: int = 0,
         chunks: int = 8) -> None:
    """Compute the small graphs of ``keys`` not yet in ``known`` with ``mapper`` (in parallel), in ``chunks`` chunks.

    The values are those the sequential :func:`_memo` calls would compute (same function, same limit); a key whose
    probe fails is left out, so the sequential call raises its error where it always did.
    """
    todo = list(dict.fromkeys(k for k in keys if k not in known))
    if mapper is None or len(todo) < 2:
        return
    parts = [[(k, limit) for k in todo[j::chunks]] for j in range(min(chunks, len(todo)))]
    for part, results in zip(parts, mapper(probe_many, parts)):
        for (key, _limit), small in zip(part, results):
            if not isinstance(small, str):
                known[key] = small


def static_memory(point: Point, specs: SpecLoader | None = None) -> tuple[int, dict[str, int]]:
    """(bytes, per-category breakdown) of the rank with the most static memory, for the model's L blocks."""
    small = small_graphs(point, specs)
    assert small is not None   # no limit: always built
    return small.static_peak()


def _memo(known: dict[Point, Any] | None, key: Point, compute: Callable[[Point], Any]) -> Any:
    """``compute(key)``, remembered in ``known`` (when given) for the next point with the same key."""
    if known is None:
        return compute(key)
    if key not in known:
        known[key] = compute(key)
    return known[key]


def static_oom_entry(point: Point, known: dict[Any, Any] | None = None,
                     specs: SpecLoader | None = None) -> dict[str, Any] | None:
    """The run entry of ``point`` if its static memory alone exceeds HBM (no simulation), else None.

    The entry has ``oom`` true, ``sim_path`` ``static_oom``, ``peak_memory_gb`` the static memory of
    the fullest rank (a lower bound of the peak) and its breakdown; time keys are null. ``known``
    caches :func:`small_graphs` by :func:`probe_point` across the points of one plan.
    """
    topo, _model, layout, workload, opts = resolve(point, specs)
    key = probe_point(point)
    small = known.get(key) if known is not None else None
    if small is not None:   # its small graphs are built already
        best, at = small.static_peak()
    else:                   # the static memory alone (an op-count probe may have stopped at the limit)
        best, at = _memo(known, StaticKey(key), lambda k: static_probe(k.point, specs))
    hbm = topo.gpu.hbm_GB * GB
    if best <= hbm + MARGIN_BYTES:
        return None
    return {
        "schedule": point.schedule, "model": _model.name, "topology": topo.name, "mode": workload.mode,
        "seq_len": workload.seq_len, "batch": workload.batch, "degrees": dict(layout.degrees),
        "world_size": layout.world_size, "replicas": layout.replicas, "hbm_gb": topo.gpu.hbm_GB,
        "peak_memory_gb": best / GB, "oom": True,
        "memory_breakdown_gb": {c: at[c] / GB for c in MEMORY_CATEGORIES},
        "step_time_s": None, "tokens_per_s": None, "sim_events": 0, "sim_path": "static_oom",
        "sim_wall_s": None, "assumptions": opts.to_json(),
        "sp_attention": dict(point.options).get("sp_attention"),
    }


def graph_ops(point: Point, specs: SpecLoader | None = None) -> tuple[int, int]:
    """(ops of the L-block graph, ops per block) of ``point``, counted on its 1- and 2-block graphs.

    Every block adds the same ops, so the graph of L blocks holds ops(1) + (L − 1)·(ops(2) − ops(1)) — exactly,
    except for gradient-bucket collectives (``dp_bucket_MB``), which fill by bytes rather than per block: there
    the count is an estimate off by a few buckets (enough to compare with the op limit).
    """
    small = small_graphs(point, specs)
    assert small is not None   # no limit: always built
    return small.op_count()


def refused_up_front(point: Point, specs: SpecLoader | None = None) -> str | None:
    """The builder's own refusal of ``point``'s full graph before it builds any op, or None.

    :class:`~tspsim.schedules.context.BuildContext` refuses a graph whose lower-bound estimate (simulated ranks ×
    block passes × the fewest ops per rank and block) exceeds the op limit, in its constructor; the simulation
    would stop there with this message. The 1- and 2-block probes of :func:`graph_ops` pass that check (one block),
    so a 1,024-rank replica would otherwise be built block by block only to be refused.
    """
    topo, model, layout, workload, opts = resolve(point, specs)
    try:
        BuildContext(model, topo, layout, workload, opts)
    except ConfigError as exc:
        return str(exc)
    return None


def _over_limit(limit: int, layers: int) -> str:
    return (f"the op graph would hold more than {limit:,} ops ({layers} blocks of more than "
            f"{limit // layers:,}), over the limit (TSPSIM_MAX_GRAPH_OPS raises it)")


def graph_too_large(point: Point, known: dict[Point, SmallGraphs | None] | None = None,
                    specs: SpecLoader | None = None) -> str | None:
    """Why ``point``'s op graph would exceed the op limit, or None (:func:`graph_ops`).

    The full build would stop at the limit (:func:`tspsim.schedules.context.graph_ops_limit`) after
    building that many ops; the planner learns it from two small graphs instead. ``known`` caches the
    counts per configuration whatever its batch (the batch rarely changes the op count); a count within
    a factor 2 of the limit is recounted at the point's own batch.
    """
    refused = refused_up_front(point, specs)
    if refused is not None:
        return refused
    limit = graph_ops_limit()
    layers = load_model(point.model).layers
    if known is not None and count_point(point) not in known and ring_over_limit(count_point(point), specs, limit):
        known[count_point(point)] = None   # what its op-count probe would find: over the limit (ring_ops_floor)
    small = _memo(known, count_point(point), lambda key: small_graphs(key, specs, 0 if _whole(key) else limit))
    if small is not None and limit / 2 < small.op_count()[0] < 2 * limit and count_point(point) != own_point(point):
        small = _memo(known, own_point(point), lambda key: small_graphs(key, specs, limit))
    if small is None:
        return _over_limit(limit, layers)
    total, per = small.op_count()
    if total <= limit:
        return None
    return (f"the op graph would hold {total:,} ops ({layers} blocks of {per:,}), over the limit of {limit:,} "
            "(TSPSIM_MAX_GRAPH_OPS raises it)")


def estimated_ops(point: Point, known: dict[Point, SmallGraphs | None]) -> int:
    """Ops of ``point``'s graph as its small graphs in ``known`` count them (0 when not probed): the order to run in."""
    small = known.get(count_point(point))
    return small.op_count()[0] if small is not None else 0


def prune_known(state: Any, known: dict[Point, SmallGraphs | None] | None = None,
                mapper: Mapper | None = None) -> tuple[int, int]:
    """Settle the points of a prepared sweep that need no simulation; return (static OOM, too large).

    Every point still to simulate in ``state`` (:class:`~tspsim.explore.sweep.SweepState`) that
    :func:`static_oom_entry` proves OOM is marked done with that entry; one whose graph would exceed the
    op limit (:func:`graph_too_large`, or a small graph the builder already rejects) is marked invalid
    with the reason, as its simulation would have been. For the planner, which drops OOM configurations
    anyway (a sweep reports every point's step time, so it simulates them all). ``known`` keeps the small
    graphs for the caller (:func:`estimated_ops`) and for the next call; ``mapper`` builds them in parallel first
    (:func:`warm`: the static probes, then the op-count probes of the points left; same values, same decisions).
    """
    oom = large = 0
    settled = set()
    known = {} if known is None else known   # one pair of small graphs per probe, for all questions
    specs = SpecLoader()
    warm_static(known, [probe_point(state.outcomes[i].point) for i in state.todo], mapper)
    for i in state.todo:
        out = state.outcomes[i]
        try:
            entry = static_oom_entry(out.point, known, specs)
        except TspsimError:
            entry = None
        if entry is not None:
            out.status, out.entry, out.wall_s = "ok", entry, 0.0
            oom += 1
            settled.add(i)
    left = [state.outcomes[i].point for i in state.todo if i not in settled]
    limit = graph_ops_limit()
    counted = [count_point(p) for p in left if _not_refused(p, specs, limit)]
    warm(known, [k for k in counted if _whole(k)], mapper)   # (whole: the static probe of the point's algorithm)
    warm(known, [k for k in counted if not _whole(k)], mapper, limit)
    warm(known, [own_point(p) for p in left if _borderline(known.get(count_point(p)), limit)], mapper, limit)
    for i in state.todo:
        if i in settled:
            continue
        out = state.outcomes[i]
        try:
            reason = graph_too_large(out.point, known, specs)
        except TspsimError as exc:
            reason = str(exc)
        if reason is not None:
            out.status, out.reason, out.wall_s = "invalid", reason, 0.0
            large += 1
            settled.add(i)
    state.todo = [i for i in state.todo if i not in settled]
    return oom, large


def _whole(count_key: Point) -> bool:
    """True when an op-count probe is also the point's static-memory probe (:func:`probe_point`): built whole.

    The static memory of a point comes from :func:`static_probe` (no block graph); an op-count probe that is the
    point's own probe point is built without the op limit, as the static question used to build it, so its count
    (and the reason a graph is too large) is the one of the whole small graphs.
    """
    return probe_point(count_key) == count_key


def _not_refused(point: Point, specs: SpecLoader, limit: int) -> bool:
    """False when the builder refuses ``point`` up front or its ring alone is over ``limit``: nothing to probe."""
    try:
        return refused_up_front(point, specs) is None and not ring_over_limit(count_point(point), specs, limit)
    except TspsimError:
        return False


def _borderline(small: SmallGraphs | None, limit: int) -> bool:
    """True when the batch-1 count is within a factor 2 of the limit (:func:`graph_too_large` recounts)."""
    return small is not None and limit / 2 < small.op_count()[0] < 2 * limit
