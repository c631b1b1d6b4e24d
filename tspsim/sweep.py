"""Sweeps (design.md §7): grid expansion, a per-point cache, parallel executors and CSV/JSON output.

A sweep is a list of :class:`~tspsim.simulate.Point` in *grid order*. :func:`prepare` validates every
point (degrees that do not fit the model or topology become ``invalid`` outcomes with a reason, not
errors) and looks each valid one up in the cache; :func:`execute` simulates the rest on a
:class:`Runner` — in this process (``--jobs 1``), on a local process pool, or on a Dask
``distributed`` cluster — and stores each finished point in the cache as soon as it arrives, so an
interrupted sweep resumes where it stopped.

**Determinism.** Every point is simulated by the same pure function (:func:`run_point`) whatever the
runner, and results are written in grid order, so ``results.json`` and ``results.csv`` are
byte-identical between ``--jobs 1``, ``--jobs N`` and Dask. The only non-deterministic field of a run
entry, the wall-clock measurement ``sim_wall_s`` (every top-level key ending in ``wall_s``), is written
as ``null`` in ``results.json``, left out of ``results.csv``, and never enters a cache comparison
(cache files keep the point's wall time *outside* the entry, under ``wall_s``).

**Cache.** One small JSON file per point, ``DIR/cache/<key>.json``, written atomically
(:mod:`tspsim.atomic`). The key is the SHA-256 of the point's fields, the SHA-256 of the model and
topology definitions and the tspsim version, so editing a model/topology YAML file invalidates the
points that use it. A cache file is trusted only if it parses, names the same key and point, and its
entry matches the checksum stored with it; anything else is ignored and the point is recomputed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tspsim import __version__
from tspsim.errors import TspsimError
from tspsim.report import degrees_label
from tspsim.simulate import Point

CACHE_FORMAT = 1
"""Version of the cache file layout (part of every key)."""

SIMULATED_MODES = ("train", "forward", "prefill", "decode", "generate")
"""Workload modes a sweep simulates (every mode of :data:`tspsim.plan.MODES`)."""

INFERENCE_MODES = ("prefill", "decode", "generate")
"""Modes with serving metrics (:mod:`tspsim.serving`): ttft_s, tpot_s, decode_tokens_per_s, max_batch, …"""

DECODE_MODES = ("decode", "generate")
"""Modes that generate tokens (``--tokens``)."""

DEGREE_SCHEDULES = ("tsp", "tp", "sp", "satp-seq", "satp-batch")
"""Schedules that take ``--degree`` (every registered schedule except ``tp+sp``)."""

DEFAULT_SCHEDULES = ("tsp", "tp", "tp+sp")
"""Schedules swept when ``--schedule`` is not given (the same comparison as ``tspsim run``)."""


Entry = dict[str, Any]


# ---------------------------------------------------------------------------------- grid
@dataclass(frozen=True)
class Grid:
    """The axes of a sweep; every combination is one point (see :func:`expand_grid`)."""

    topologies: tuple[str, ...]
    """Topology preset names or YAML paths."""
    models: tuple[str, ...] = ("zyphra-7b",)
    """Model preset names or YAML paths."""
    schedules: tuple[str, ...] = DEFAULT_SCHEDULES
    """Registered schedule names."""
    degrees: tuple[int, ...] | None = None
    """D of the one-axis schedules (None: the schedule's default, GPUs per node)."""
    tps: tuple[int, ...] | None = None
    """T of tp+sp (None: GPUs per node, or half a node on a single-node topology)."""
    sps: tuple[int, ...] | None = None
    """Σ of tp+sp (None: 2)."""
    seqs: tuple[int, ...] | None = None
    """Sequence lengths (None: each model's default)."""
    batches: tuple[int, ...] = (1,)
    """Micro-batch sizes per replica."""
    modes: tuple[str, ...] = ("train",)
    """Workload modes."""
    gpus: int | None = None
    """Use only this many GPUs of each topology."""
    options: tuple[tuple[str, Any], ...] = ()
    """Assumption overrides, sorted (key, value) pairs."""
    contexts: tuple[int, ...] | None = None
    """``decode`` points: tokens in the KV cache when decoding starts (None: the ``seqs`` values). Other
    modes use ``seqs``."""
    tokens: tuple[int, ...] | None = None
    """``decode`` / ``generate`` points: tokens generated per sequence (None: 128, the ``run`` default)."""
    max_batch: bool = False
    """Inference points: search the largest batch that fits in HBM (off by default in sweeps: every probe
    is a full simulation of the step, which multiplies the cost of each point)."""


def _check_unique(values: Sequence[Any] | None, flag: str) -> None:
    if values is None:
        return
    seen: set[Any] = set()
    for v in values:
        if v in seen:
            raise TspsimError(f"{flag} lists {v} twice; give each value once")
        seen.add(v)


def check_grid(grid: Grid) -> None:
    """Whole-grid problems that are errors rather than invalid points (one line each).

    Raises:
        TspsimError: unknown schedule, model, topology or mode; a duplicated value; --tp/--sp without
            tp+sp, or --degree with tp+sp as the only schedule.
    """
    from tspsim.model import load_model
    from tspsim.plan import MODES
    from tspsim.schedules import SCHEDULES
    from tspsim.topology import load_topology

    for flag, values in (("--topology", grid.topologies), ("--model", grid.models), ("--schedule", grid.schedules),
                         ("--degree", grid.degrees), ("--tp", grid.tps), ("--sp", grid.sps), ("--seq", grid.seqs),
                         ("--batch", grid.batches), ("--mode", grid.modes), ("--context", grid.contexts),
                         ("--tokens", grid.tokens)):
        if values is not None and not values:
            raise TspsimError(f"empty {flag} list: give at least one value")
        _check_unique(values, flag)
    for name in grid.schedules:
        SCHEDULES.get(name)
    for mode in grid.modes:
        if mode not in MODES:
            raise TspsimError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    if grid.contexts is not None and "decode" not in grid.modes:
        raise TspsimError("--context sets the cached tokens of decode points, and --mode has no decode; "
                          "add --mode decode, or use --seq for the prompt length of prefill and generate")
    if grid.tokens is not None and not any(m in DECODE_MODES for m in grid.modes):
        raise TspsimError("--tokens sets the tokens generated by decode and generate points, and --mode has "
                          "neither; add --mode decode or --mode generate")
    if grid.max_batch and not any(m in INFERENCE_MODES for m in grid.modes):
        raise TspsimError("--max-batch searches the largest batch of inference points, and --mode has none; "
                          "add --mode prefill, decode or generate, or drop --max-batch")
    if (grid.tps or grid.sps) and "tp+sp" not in grid.schedules:
        raise TspsimError("--tp and --sp set the degrees of tp+sp, which is not in --schedule; "
                          "use --degree for the other schedules")
    if grid.degrees and not any(s != "tp+sp" for s in grid.schedules):
        raise TspsimError("tp+sp takes --tp T and --sp S (not --degree)")
    for name in grid.topologies:
        load_topology(name)
    for name in grid.models:
        load_model(name)
    if grid.gpus is not None and grid.gpus < 1:
        raise TspsimError("--gpus must be ≥ 1")


def default_tp_sp(gpus_per_node: int, world: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Default (T values, Σ values) of tp+sp: T = GPUs per node and Σ = 2, as ``tspsim run`` does.

    On a single node (fewer than two nodes' worth of GPUs) T is half a node so that T×Σ fits.
    """
    per_node = min(gpus_per_node, world)
    t = per_node if world >= 2 * per_node else max(1, per_node // 2)
    return (t,), (2,)


def expand_grid(grid: Grid) -> list[Point]:
    """All points of ``grid`` in grid order.

    Order: topology, model, mode, schedule (as given), degree (or T, then Σ, for tp+sp), batch, tokens
    generated, and sequence length innermost. Schedules that take a degree use ``grid.degrees``; tp+sp
    uses ``grid.tps`` × ``grid.sps`` (defaults from :func:`default_tp_sp`). ``decode`` points take their
    context from ``grid.contexts`` (else the sequence lengths); ``decode`` and ``generate`` points take
    every ``grid.tokens`` value (default :data:`~tspsim.serving.DEFAULT_DECODE_TOKENS`); other modes
    generate none. Points are not validated here.
    """
    from tspsim.model import load_model
    from tspsim.serving import DEFAULT_DECODE_TOKENS
    from tspsim.topology import load_topology

    check_grid(grid)
    points: list[Point] = []
    for topo_name in grid.topologies:
        topo = load_topology(topo_name)
        world = grid.gpus or topo.world_size
        d_tps, d_sps = default_tp_sp(topo.gpus_per_node, world)
        for model_name in grid.models:
            model_seqs = grid.seqs or (load_model(model_name).default_seq,)
            for mode in grid.modes:
                seqs = grid.contexts if mode == "decode" and grid.contexts else model_seqs
                tokens = (grid.tokens or (DEFAULT_DECODE_TOKENS,)) if mode in DECODE_MODES else (0,)
                search = grid.max_batch and mode in INFERENCE_MODES
                for schedule in grid.schedules:
                    if schedule == "tp+sp":
                        shapes = [(None, t, s) for t in (grid.tps or d_tps) for s in (grid.sps or d_sps)]
                    else:
                        shapes = [(d, None, None) for d in (grid.degrees or (None,))]
                    for degree, tp, sp in shapes:
                        for batch in grid.batches:
                            for n_tokens in tokens:
                                for seq in seqs:
                                    points.append(Point(schedule, topo_name, model_name, mode, seq, batch, degree,
                                                        tp, sp, grid.gpus, decode_tokens=n_tokens,
                                                        options=grid.options, search_max_batch=search))
    return points


# ---------------------------------------------------------------------------------- labels
def requested_degrees(point: Point) -> dict[str, int]:
    """The degrees a point asks for (before defaults are resolved)."""
    if point.schedule == "tp+sp":
        return {k: v for k, v in (("T", point.tp), ("SP", point.sp)) if v is not None}
    return {"D": point.degree} if point.degree is not None else {}


def point_label(point: Point, degrees: dict[str, Any] | None = None) -> str:
    """``tsp D=8 · seq 16k · batch 1`` (resolved degrees when given, else the requested ones).

    Inference points name their mode and tokens: ``tp D=8 · decode · context 4k · batch 1 · 128 tokens``.
    """
    from tspsim.units import format_tokens

    label = degrees_label(point.schedule, degrees if degrees is not None else requested_degrees(point))
    if point.mode not in INFERENCE_MODES:
        return f"{label} · seq {format_tokens(point.seq_len)} · batch {point.batch}"
    what = "context" if point.mode == "decode" else "seq"
    tokens = f" · {point.decode_tokens} tokens" if point.mode in DECODE_MODES else ""
    return f"{label} · {point.mode} · {what} {format_tokens(point.seq_len)} · batch {point.batch}{tokens}"


def entry_label(entry: Entry) -> str:
    """Schedule and degrees of a run entry: ``tsp D=8``."""
    return degrees_label(entry.get("schedule") or "?", entry.get("degrees"))


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


# ---------------------------------------------------------------------------------- entries
def wall_clock_keys(entry: Entry) -> list[str]:
    """Top-level keys holding wall-clock measurements (``sim_wall_s`` and any other ``*wall_s``)."""
    return sorted(k for k in entry if k.endswith("wall_s"))


def canonical_json(obj: Any) -> str:
    """Compact JSON with sorted keys (for hashes and checksums)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def normalize_entry(entry: Entry) -> Entry:
    """The entry as stored: JSON round-tripped (plain types) with wall-clock fields set to ``None``."""
    out = json.loads(canonical_json(entry))
    for key in wall_clock_keys(out):
        out[key] = None
    return out


# ---------------------------------------------------------------------------------- assumptions
# ---------------------------------------------------------------------------------- validation
class _Loader:
    """Memoized model / topology loading and content hashes for one sweep."""

    def __init__(self) -> None:
        self._topos: dict[str, Any] = {}
        self._models: dict[str, Any] = {}

    def topology(self, name: str) -> Any:
        """Loaded topology."""
        from tspsim.topology import load_topology

        if name not in self._topos:
            self._topos[name] = load_topology(name)
        return self._topos[name]

    def model(self, name: str) -> Any:
        """Loaded model."""
        from tspsim.model import load_model

        if name not in self._models:
            self._models[name] = load_model(name)
        return self._models[name]


def resolve_point(point: Point, loader: _Loader | None = None) -> dict[str, int]:
    """Resolved degrees of ``point`` (the plan's ``degrees``), without building its graph.

    Raises:
        TspsimError: if the schedule, mode, degrees, sequence or batch do not fit.
    """
    from tspsim.plan import Assumptions, Workload, make_plan
    from tspsim.schedules import SCHEDULES

    loader = loader or _Loader()
    SCHEDULES.get(point.schedule)
    if point.mode not in SIMULATED_MODES:
        raise TspsimError(f"unknown mode {point.mode!r}: choose one of {', '.join(SIMULATED_MODES)}")
    if point.schedule == "tp+sp" and point.degree is not None and point.tp is None and point.sp is None:
        raise TspsimError("tp+sp takes --tp T and --sp S (not --degree)")
    topo, model = loader.topology(point.topology), loader.model(point.model)
    workload = Workload(point.mode, point.seq_len, point.batch, point.decode_tokens)  # type: ignore[arg-type]
    Assumptions.from_overrides(dict(point.options))
    plan = make_plan(point.schedule, topo, model, workload, degree=point.degree, tp=point.tp, sp=point.sp,
                     gpus=point.gpus)
    return dict(plan.degrees)


def point_record(point: Point) -> dict[str, Any]:
    """The point's fields as stored in a cache file and hashed into its key.

    Every field, except ``search_max_batch`` for ``train`` and ``forward`` points (it changes nothing
    there), so the keys of training points are those of tspsim versions before the field existed.
    """
    record = asdict(point)
    if point.mode not in INFERENCE_MODES:
        record.pop("search_max_batch", None)
    return record


def point_key(point: Point, loader: _Loader | None = None) -> str:
    """Stable SHA-256 of the point (:func:`point_record`), its model and topology definitions, tspsim's version."""
    loader = loader or _Loader()
    payload = {"cache_format": CACHE_FORMAT, "tspsim_version": __version__, "point": point_record(point),
               "model_sha256": loader.model(point.model).sha256,
               "topology_sha256": loader.topology(point.topology).source_sha256}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


# ---------------------------------------------------------------------------------- cache
class PointCache:
    """Finished points, one JSON file each in ``directory`` (None: no cache, nothing is stored)."""

    def __init__(self, directory: str | Path | None, fresh: bool = False) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.fresh = fresh
        """Ignore existing files (they are overwritten as points finish)."""
        self.ignored: list[tuple[Path, str]] = []
        """Cache files that could not be trusted, with the reason (each point is recomputed)."""

    def path(self, key: str) -> Path | None:
        """File of ``key`` (None without a directory)."""
        return self.directory / f"{key}.json" if self.directory is not None else None

    def load(self, key: str, point: Point) -> tuple[Entry, float | None] | None:
        """(entry, wall seconds) of a finished point, or None if absent or not trustworthy."""
        path = self.path(key)
        if path is None or self.fresh or not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            if data.get("key") != key or data.get("point") != json.loads(canonical_json(point_record(point))):
                raise ValueError("written for another point")
            entry = data.get("entry")
            if not isinstance(entry, dict) or data.get("entry_sha256") != _checksum(entry):
                raise ValueError("entry does not match its checksum")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            self.ignored.append((path, str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__))
            return None
        wall = data.get("wall_s")
        return entry, float(wall) if isinstance(wall, (int, float)) else None

    def store(self, key: str, point: Point, entry: Entry, wall_s: float | None) -> None:
        """Write one finished point atomically (no-op without a directory)."""
        from tspsim.atomic import write_text_atomic

        path = self.path(key)
        if path is None:
            return
        data = {"cache_format": CACHE_FORMAT, "key": key, "point": point_record(point), "entry": entry,
                "entry_sha256": _checksum(entry), "wall_s": wall_s}
        write_text_atomic(path, json.dumps(data, sort_keys=True, default=str) + "\n")

    def count(self) -> int:
        """Number of cache files present."""
        if self.directory is None or not self.directory.is_dir():
            return 0
        return sum(1 for _ in self.directory.glob("*.json"))


def _checksum(entry: Entry) -> str:
    return hashlib.sha256(canonical_json(entry).encode()).hexdigest()


# ---------------------------------------------------------------------------------- one point
def run_point(point: Point) -> dict[str, Any]:
    """Simulate one point (the function every runner executes; picklable, never raises ``Exception``).

    Returns ``{"status": "ok", "entry": <normalized entry>, "wall_s": s}``, or ``{"status":
    "invalid" | "error", "reason": one line, "wall_s": s}`` for a point the simulator rejects
    (:class:`~tspsim.errors.TspsimError`) or that fails unexpectedly.
    """
    from tspsim.simulate import simulate

    t0 = time.perf_counter()
    try:
        entry = simulate(point).entry
    except TspsimError as exc:
        return {"status": "invalid", "reason": str(exc), "wall_s": time.perf_counter() - t0}
    except Exception as exc:  # noqa: BLE001 - one failed point must not lose the others
        return {"status": "error", "reason": f"{type(exc).__name__}: {exc}".splitlines()[0],
                "wall_s": time.perf_counter() - t0}
    return {"status": "ok", "entry": normalize_entry(entry), "wall_s": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------- runners
class Runner(Protocol):
    """Runs :func:`run_point` over points, yielding (position, result) as each finishes."""

    description: str

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc: Any) -> None: ...

    def run(self, points: Sequence[Point]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield (index in ``points``, :func:`run_point` result) in completion order."""
        ...


class SerialRunner:
    """Points one after the other in this process (``--jobs 1``)."""

    description = "in this process"

    def __enter__(self) -> SerialRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def run(self, points: Sequence[Point]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Simulate in order."""
        for i, point in enumerate(points):
            yield i, run_point(point)


def _pool_context() -> Any:
    """``forkserver`` where available (safe with threads, modules preloaded once), else ``spawn``."""
    import multiprocessing as mp

    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["tspsim.sweep", "tspsim.simulate", "tspsim.metrics"])
        return ctx
    return mp.get_context("spawn")


def _result_of(fut: Any) -> dict[str, Any]:
    """A future's :func:`run_point` result; a lost worker (killed, out of memory) is an ``error`` result."""
    try:
        return fut.result()  # type: ignore[no-any-return]
    except Exception as exc:  # noqa: BLE001 - the point failed, the sweep goes on
        text = str(exc).splitlines()[0] if str(exc) else ""
        return {"status": "error", "reason": f"worker failed: {type(exc).__name__}: {text}".rstrip(": "),
                "wall_s": None}


def _ignore_sigint() -> None:
    """Pool workers leave Ctrl-C to the parent, which stops them (no traceback per worker)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


class PoolRunner:
    """A local process pool of ``jobs`` workers (the default)."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.description = f"on {jobs} local processes"
        self._executor: Any = None

    def __enter__(self) -> PoolRunner:
        from concurrent.futures import ProcessPoolExecutor

        self._executor = ProcessPoolExecutor(max_workers=self.jobs, mp_context=_pool_context(),
                                             initializer=_ignore_sigint)
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        ex, self._executor = self._executor, None
        if ex is None:
            return
        if exc_type is None:
            ex.shutdown(wait=True)
            return
        # Interrupted or failed: drop queued points and stop the workers now (finished points are cached).
        procs = list((getattr(ex, "_processes", None) or {}).values())
        ex.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout=5)

    def run(self, points: Sequence[Point]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Submit every point, yield results as they complete."""
        from concurrent.futures import as_completed

        futures = {self._executor.submit(run_point, p): i for i, p in enumerate(points)}
        for fut in as_completed(futures):
            yield futures[fut], _result_of(fut)


class DaskRunner:
    """An existing Dask ``distributed`` cluster (``--scheduler tcp://HOST:PORT``).

    Workers need the same tspsim installed; model and topology YAML paths must be readable by them
    (presets always are). Finished points come back to this process, which writes the cache.
    """

    def __init__(self, address: str, timeout_s: float = 10.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.description = f"on the Dask cluster at {address}"
        self._client: Any = None
        self._futures: list[Any] = []

    def __enter__(self) -> DaskRunner:
        import re

        if not re.match(r"^((tcp|tls|ucx|ws|wss)://)?(\[[0-9A-Fa-f:.]+\]|[^:/\s\[\]]+):\d+$", self.address):
            raise TspsimError(f"--scheduler {self.address!r}: expected a scheduler address like tcp://HOST:PORT "
                              "(e.g. tcp://127.0.0.1:8786)")
        try:
            import distributed
        except ImportError:
            raise TspsimError("--scheduler needs the Dask 'distributed' package: pip install distributed "
                              "(or pip install 'tspsim[dask]')") from None
        try:
            self._client = distributed.Client(self.address, timeout=self.timeout_s, set_as_default=False)
        except Exception as exc:  # noqa: BLE001 - any failure to connect is one user-facing line
            raise TspsimError(f"cannot connect to the Dask scheduler at {self.address}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if exc_type is not None and self._futures:
            try:
                client.cancel(self._futures)
            except Exception:  # noqa: BLE001 - best effort while shutting down
                pass
        client.close()

    def run(self, points: Sequence[Point]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Submit every point to the cluster, yield results as they complete."""
        import distributed

        self._futures = [self._client.submit(run_point, p, pure=False) for p in points]
        index = {f.key: i for i, f in enumerate(self._futures)}
        with self._client.as_current():
            for fut in distributed.as_completed(self._futures):
                yield index[fut.key], _result_of(fut)


def make_runner(jobs: int | None, scheduler: str | None, n_points: int) -> Runner:
    """The runner for a sweep of ``n_points`` points still to run.

    Dask when ``scheduler`` names one; else a pool of ``jobs`` (default: CPU count) processes, or
    this process when one job (or one point) is enough.
    """
    if scheduler and n_points > 0:
        return DaskRunner(scheduler)
    jobs = jobs or os.cpu_count() or 1
    jobs = min(jobs, max(n_points, 1))
    return SerialRunner() if jobs <= 1 else PoolRunner(jobs)


# ---------------------------------------------------------------------------------- the sweep
@dataclass
class Outcome:
    """What happened to one grid point."""

    index: int
    """Position in grid order."""
    point: Point
    """The point."""
    label: str
    """``tsp D=8 · seq 16k · batch 1``."""
    status: str = "pending"
    """``ok``, ``invalid`` (does not fit: skipped), ``error`` (unexpected failure) or ``pending``."""
    entry: Entry | None = None
    """Normalized run entry when ``ok``."""
    reason: str = ""
    """Why the point is invalid / failed."""
    cached: bool = False
    """Taken from the cache."""
    wall_s: float | None = None
    """Wall time of the simulation (kept out of the results)."""
    key: str = ""
    """Cache key."""
    names: tuple[str, str] = ("", "")
    """(topology name, model name) as loaded (not the path given)."""


@dataclass
class SweepState:
    """A prepared sweep: every outcome, and the positions still to run."""

    outcomes: list[Outcome]
    todo: list[int] = field(default_factory=list)
    expected: dict[int, tuple[str, str]] = field(default_factory=dict)
    """Per position to run: (model sha256, topology sha256) the result must report."""

    @property
    def cached(self) -> int:
        """Points taken from the cache."""
        return sum(o.cached for o in self.outcomes)

    @property
    def invalid(self) -> list[Outcome]:
        """Points skipped because they do not fit."""
        return [o for o in self.outcomes if o.status == "invalid"]

    @property
    def errors(self) -> list[Outcome]:
        """Points that failed unexpectedly."""
        return [o for o in self.outcomes if o.status == "error"]

    @property
    def ok(self) -> list[Outcome]:
        """Points with a result."""
        return [o for o in self.outcomes if o.status == "ok"]


def prepare(points: Sequence[Point], cache: PointCache) -> SweepState:
    """Validate every point and look the valid ones up in ``cache``."""
    loader = _Loader()
    state = SweepState([])
    for i, point in enumerate(points):
        names = (loader.topology(point.topology).name, loader.model(point.model).name)
        try:
            degrees = resolve_point(point, loader)
        except TspsimError as exc:
            state.outcomes.append(Outcome(i, point, point_label(point), "invalid", reason=str(exc), names=names))
            continue
        out = Outcome(i, point, point_label(point, degrees), key=point_key(point, loader), names=names)
        state.outcomes.append(out)
        hit = cache.load(out.key, point)
        if hit is not None:
            out.entry, out.wall_s = hit
            out.status, out.cached = "ok", True
        else:
            state.todo.append(i)
            state.expected[i] = (loader.model(point.model).sha256, loader.topology(point.topology).source_sha256)
    return state


def _check_result(result: dict[str, Any], expected: tuple[str, str]) -> dict[str, Any]:
    """Reject a result computed by a different tspsim or from different model/topology files."""
    if result.get("status") != "ok":
        return result
    entry = result["entry"]
    problems = []
    if entry.get("tspsim_version") not in (None, __version__):
        problems.append(f"the worker runs tspsim {entry['tspsim_version']}, this is {__version__}")
    if entry.get("model_sha256") not in (None, expected[0]):
        problems.append("the worker read a different model file")
    if entry.get("topology_sha256") not in (None, expected[1]):
        problems.append("the worker read a different topology file")
    if problems:
        return {"status": "error", "reason": "; ".join(problems), "wall_s": result.get("wall_s")}
    return result


def execute(state: SweepState, runner: Runner, cache: PointCache,
            on_result: Callable[[Outcome], None] | None = None) -> None:
    """Run the points still to do on ``runner``; cache each finished one as it arrives.

    ``runner`` must already be entered. ``on_result`` is called once per finished point (progress).
    A ``KeyboardInterrupt`` propagates; the points finished before it stay cached.
    """
    todo = [state.outcomes[i] for i in state.todo]
    for j, result in runner.run([o.point for o in todo]):
        out = todo[j]
        result = _check_result(result, state.expected[out.index])
        out.status, out.wall_s = result["status"], result.get("wall_s")
        if out.status == "ok":
            out.entry = result["entry"]
            cache.store(out.key, out.point, out.entry, out.wall_s)
        else:
            out.reason = result.get("reason", "")
        if on_result is not None:
            on_result(out)
    state.todo = [o.index for o in todo if o.status == "pending"]


# ---------------------------------------------------------------------------------- results
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
``degrees.*``, ``memory_breakdown_gb.*``, ``comm_bytes_per_rank.*`` and ``decode_time_breakdown_s.*``
follow. Wall-clock fields are never written."""

INFERENCE_CSV_COLUMNS = ("context_tokens", "decode_tokens", "ttft_s", "tpot_s", "decode_tokens_per_s",
                         "decode_tokens_per_s_per_gpu", "max_batch", "decode_step_first_s", "decode_step_last_s",
                         "decode_sim", "decode_check_rel_err")
"""Serving columns, written only when some entry is a prefill, decode or generate point (so the CSV of a
training sweep is unchanged)."""

_FLAT = ("degrees", "memory_breakdown_gb", "comm_bytes_per_rank", "decode_time_breakdown_s")


def results_csv(entries: Sequence[Entry]) -> str:
    """One row per entry; missing values are empty cells; floats as Python's shortest repr."""
    extra: list[str] = []
    for group in _FLAT:
        keys = sorted({k for e in entries for k in (e.get(group) or {})})
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


def write_results(out_dir: str | Path, state: SweepState, title: str = "tspsim sweep") -> list[Path]:
    """Write results.json, results.csv and sweep.html atomically; return their paths."""
    from tspsim.atomic import write_text_atomic
    from tspsim.sweep_plots import sweep_page

    out = Path(out_dir)
    entries = [result_entry(o) for o in state.outcomes]
    paths = [out / "results.json", out / "results.csv", out / "sweep.html"]
    write_text_atomic(paths[0], results_json(entries))
    write_text_atomic(paths[1], results_csv(entries))
    write_text_atomic(paths[2], sweep_page(entries, title=title))
    return paths


def skipped_summary(outcomes: Sequence[Outcome]) -> str:
    """``2 invalid points skipped: 2 × "degree D=3 does not divide …"`` — reasons grouped, most frequent first."""
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.reason] = counts.get(o.reason, 0) + 1
    groups = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    why = ", ".join(f'{n} × "{reason}"' for reason, n in groups[:3])
    more = f", and {len(groups) - 3} other reasons" if len(groups) > 3 else ""
    n = len(outcomes)
    return f"{n} invalid point{'s' if n != 1 else ''} skipped: {why}{more}"


def stderr_is_tty() -> bool:
    """True when progress bars make sense."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def execute_with_progress(state: SweepState, runner: Runner, cache: PointCache, label: str = "simulating",
                          on_result: Callable[[Outcome], None] | None = None) -> None:
    """:func:`execute` with a progress bar and ETA on stderr when it is a terminal (silent otherwise)."""
    import click

    if not state.todo or not stderr_is_tty():
        execute(state, runner, cache, on_result)
        return
    with click.progressbar(length=len(state.todo), label=label, show_eta=True, show_pos=True, file=sys.stderr,
                           item_show_func=lambda o: o.label if o is not None else None) as bar:
        def step(out: Outcome) -> None:
            bar.update(1, out)
            if on_result is not None:
                on_result(out)

        execute(state, runner, cache, step)
