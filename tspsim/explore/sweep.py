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

The grid is :mod:`tspsim.explore.grid`, the runners :mod:`tspsim.explore.runners`, the files
:mod:`tspsim.explore.sweep_files`.

**Cache.** One small JSON file per point, ``DIR/cache/<key>.json``, written atomically
(:mod:`tspsim.core.files`). The key is the SHA-256 of the point's fields, the SHA-256 of the model and
topology definitions and the tspsim version, so editing a model/topology YAML file invalidates the
points that use it. A cache file is trusted only if it parses, names the same key and point, and its
entry matches the checksum stored with it; anything else is ignored and the point is recomputed.
"""


from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tspsim import __version__
from tspsim.core.errors import TspsimError
from tspsim.explore.cache import Loader, PointCache, point_key, resolve_point
from tspsim.explore.grid import point_label
from tspsim.explore.runners import Runner
from tspsim.simulate import Point

Entry = dict[str, Any]


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


def prepare(points: Sequence[Point], cache: PointCache,
            progress: Callable[[int, int], None] | None = None) -> SweepState:
    """Validate every point and look the valid ones up in ``cache``.

    ``progress(done, total)`` is called after each point (see :func:`preparing_progress`).
    """
    loader = Loader()
    state = SweepState([])
    for i, point in enumerate(points):
        if progress is not None:
            progress(i, len(points))
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


def extend_state(state: SweepState, more: SweepState) -> None:
    """Append ``more``'s outcomes to ``state`` (renumbered after it) and its points still to run, to run as one."""
    offset = len(state.outcomes)
    for out in more.outcomes:
        out.index += offset
    state.outcomes.extend(more.outcomes)
    state.todo += [i + offset for i in more.todo]
    state.expected.update({i + offset: v for i, v in more.expected.items()})


PREPARE_NOTE_POINTS = 2_000
"""Grids at least this large print progress while they are validated and looked up in the cache."""
PREPARE_NOTE_EVERY_S = 2.0
"""Seconds between two progress lines while a large grid is prepared."""


def preparing_progress(label: str = "sweep") -> Callable[[int, int], None]:
    """A ``progress`` callback for :func:`prepare`: a line on stderr every few seconds for large grids.

    Validating a point and hashing its cache key take about a millisecond, so a grid of hundreds of
    thousands of points takes minutes before the first point runs; the lines say so (``sweep: preparing
    270,000 points: 12% …``) instead of leaving the terminal silent.
    """
    import time

    import click

    last = [time.monotonic()]

    def step(done: int, total: int) -> None:
        if total < PREPARE_NOTE_POINTS:
            return
        now = time.monotonic()
        if done == 0:
            click.echo(f"{label}: preparing {total:,} points (validating, cache lookup) ...", err=True)
        elif now - last[0] >= PREPARE_NOTE_EVERY_S:
            last[0] = now
            click.echo(f"{label}: preparing {total:,} points: {100 * done // total}% ({done:,} done)", err=True)

    return step


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
                          on_result: Callable[[Outcome], None] | None = None,
                          run: Callable[..., Any] | None = None) -> None:
    """:func:`execute` with a progress bar and ETA on stderr when it is a terminal (silent otherwise).

    ``run`` replaces :func:`execute` (same arguments), e.g. the planner's branch and bound.
    """
    import click

    run = run or execute
    if not state.todo or not stderr_is_tty():
        run(state, runner, cache, on_result)
        return
    with click.progressbar(length=len(state.todo), label=label, show_eta=True, show_pos=True, file=sys.stderr,
                           item_show_func=lambda o: o.label if o is not None else None) as bar:
        def step(out: Outcome) -> None:
            bar.update(1, out)
            if on_result is not None:
                on_result(out)

        run(state, runner, cache, step)
