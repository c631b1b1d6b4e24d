"""Fewer garbage-collector passes while a command simulates: :func:`paced_gc`.

A replay allocates millions of short-lived objects (timers, spans, events) on top of a graph of 10⁴–10⁵ live
ops. CPython's collector runs a young-generation pass every 700 net allocations and a full pass every
700·10·10; each full pass walks every live op, so with the default thresholds the collector took 10–15% of
the CPU of ``tspsim run`` (measured: README "Speed"). Raising the young-generation threshold makes every
pass rarer by the same factor without changing what is collected: cyclic garbage is still freed, a few
passes later; memory grows by a few MB. Even rare passes walked every new op of every graph once or twice
(~0.35 s of the default run, 14% of its CPU): :func:`settle` freezes a graph once built, so no pass walks
it; built graphs and finished replays hold no reference cycles, so they are still freed as soon as unused.
The simulated results are unaffected (the collector never runs model code).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

YOUNG_THRESHOLD = 500_000
"""Net allocations between young-generation passes while simulating (CPython's default: 700). 50,000 cut the
default run's CPU by ~15% (4.5 → 3.8 s) and grew its RSS by 8 MB (219 → 228 MB); 10,000 gave about half that.
With built graphs frozen (:func:`settle`), 500,000 lets most graphs be built and frozen before any pass walks
them: the default run's collector time 0.16 → 0.02 s (measured with ``gc.callbacks``), RSS unchanged (183 MB);
the generate example's RSS 162 → 169 MB."""


def _paced(phase: str, info: dict[str, Any]) -> None:
    """Registered in ``gc.callbacks`` while :func:`paced_gc` runs: marks the collector as paced (does nothing)."""


@contextmanager
def paced_gc(young: int = YOUNG_THRESHOLD) -> Iterator[None]:
    """Run the body with the collector's young-generation threshold raised to ``young``, then restore it.

    A threshold already above ``young`` is kept. Objects frozen by :func:`settle` inside are unfrozen when the
    outermost pacing ends (so the collector may free them again).
    """
    before = gc.get_threshold()
    gc.set_threshold(max(young, before[0]), *before[1:])
    gc.callbacks.append(_paced)
    try:
        yield
    finally:
        gc.callbacks.remove(_paced)
        if _paced not in gc.callbacks:
            gc.unfreeze()
        gc.set_threshold(*before)


def settle() -> None:
    """Inside :func:`paced_gc`: freeze the objects alive now (``gc.freeze``) so no later pass walks them again.

    Called once an op graph is built: its 10⁴–10⁵ ops and their lists and tuples would otherwise be walked by
    the young and middle generations' passes (~0.35 s of the default run's CPU); frozen, they are walked by
    none, and they are still freed by reference counting when unused (graphs are not in reference cycles once
    built: :meth:`~tspsim.schedules.context.BuildContext.detach`). Cyclic garbage alive at that instant waits
    for the end of the pacing. Outside :func:`paced_gc` it does nothing.
    """
    if _paced in gc.callbacks:
        gc.freeze()
