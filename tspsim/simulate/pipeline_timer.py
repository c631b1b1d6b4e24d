"""Long pipelines timed exactly from a shorter one: the 1F1B steady state repeats (issue 14, scale).

A 1F1B step of m micro-batches is, on every stage s, P − s − 1 warm-up forwards, m − (P − s − 1) pairs
(one forward, one backward) and the matching cool-down backwards; interleaved 1F1B the same in virtual
micro-batches, whose chunk pattern repeats every P micro-batches. Adding one period — a micro-batch (1F1B) or
P of them (interleaved) — inserts identical pairs into every stage's steady phase and changes nothing else
(the warm-up and cool-down depend on P, V and the stage only; the gradient reduction sits in the last pairs,
outside the repeating part).

So :func:`simulate_periodic` builds and replays the step with a probe of m′ < m micro-batches and looks for two
instants t′ < t″, one period apart, at which the replay is in the same state shifted by one period
(:func:`find_window`, the argument of :func:`tspsim.simulate.decode_timer.find_period` with an explicit
successor map: every op of a steady pair maps to the same op of the pair one period later on its rank). Then
the replay of the m′ + 1-period step is the m′ one with the segment [t′, t″) repeated once, and m micro-batches
take exactly ``T(m′) + k·(t″ − t′)``, k = (m − m′)/period. The peak memory is unchanged (a steady pair frees
what it allocates); bytes, compute and communication time add k times the period's. When no window is found the
caller simulates the whole step. ``tests/test_pipeline_periodic.py`` compares both on small pipelines.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from tspsim.engine.timeline import Timeline
from tspsim.opgraph import OpGraph

PROBE_EXTRA = 16
"""1F1B probe: P + this many micro-batches. With blocking transfers (Megatron-LM 2022) the steady state repeats from
the first pairs past stage 0's warm-up; with receives posted a pass ahead it may settle slowly (the receive
kernel slowing compute couples neighbouring stages), so a probe that finds no window is followed by one of
P + 2·(P + this) (:func:`probe_micro_batches` with ``attempt=1``) before the whole step is replayed."""
PROBE_PERIODS = 4
"""Interleaved probe: this many periods of P micro-batches."""
MIN_SAVING = 1.5
"""Use a probe only when the step has at least this many times its micro-batches."""
MAX_CYCLICITY = 4
"""Longest cycle of periods a steady state may repeat with (1F1B probes are sized so 1 … 4 divide what is added)."""
ALIGN = 12
"""A 1F1B probe is lengthened until the micro-batches it leaves out are a multiple of this (lcm of 1 … 4)."""


@dataclass(frozen=True)
class Window:
    """One period of a replay's steady state."""

    start_s: float
    """t′."""
    end_s: float
    """t″ = t′ + Δ."""
    periods: int
    """How many times the window repeats in the real step beyond the probe."""
    ops: np.ndarray
    """Ids of the ops of the window (the pairs of its periods, starting at the anchor's on every stage)."""
    probe_micro_batches: int
    """m′, the micro-batches the replayed graph has."""

    @property
    def period_s(self) -> float:
        """Δ = t″ − t′."""
        return self.end_s - self.start_s


def probe_micro_batches(m: int, stages: int, schedule: str, attempt: int = 0) -> int | None:
    """m′ for a step of ``m`` micro-batches, or None when a probe does not pay (or the schedule is GPipe).

    ``attempt`` 1 is the longer probe tried when the first finds no window.
    """
    if stages < 2 or schedule == "gpipe":
        return None
    if schedule == "interleaved":
        probe = PROBE_PERIODS * stages * (1 + 2 * attempt)
    else:
        probe = stages + (PROBE_EXTRA if attempt == 0 else 2 * (stages + PROBE_EXTRA))
        probe += (m - probe) % ALIGN
    if m < MIN_SAVING * probe:
        return None
    return probe


def period_micro_batches(stages: int, schedule: str) -> int:
    """Micro-batches of one period: 1 (1F1B), P (interleaved: the chunk pattern repeats every P)."""
    return stages if schedule == "interleaved" else 1


def successor_map(graph: OpGraph, pipe: object, pairs_per_period: int) -> tuple[np.ndarray, np.ndarray,
                                                                                 dict[int, list[np.ndarray]]]:
    """(succ, kind, pair_ops) of a pipelined graph.

    ``succ[o]``: the op one period after op o (−1: none); ``kind[o]``: 0 prologue (warm-up, static memory),
    1 body (a steady pair with an identical pair one period later), 2 tail (later pairs, cool-down, gradient
    reduction, optimizer); ``pair_ops[s][i]``: the op ids of steady pair i of stage s.
    """
    ops = graph.ops
    n = len(ops)
    pass_of = list(pipe.pass_of) + [-1] * (n - len(pipe.pass_of))   # type: ignore[attr-defined]
    keys = pipe.pass_keys                                             # type: ignore[attr-defined]
    orders = pipe.orders                                              # type: ignore[attr-defined]
    members: dict[int, list[int]] = {}
    for o in range(n):
        p = pass_of[o]
        if p >= 0:
            members.setdefault(p, []).append(o)
    by_pos = {key: idx for idx, key in enumerate(keys)}
    kind = np.full(n, 2, dtype=np.int8)
    first_pass = min((o for o in range(n) if pass_of[o] >= 0), default=n)
    kind[:first_pass] = 0
    succ = np.full(n, -1, dtype=np.int64)
    pair_ops: dict[int, list[np.ndarray]] = {}
    for s, order in orders.items():
        # warm-up forwards end one pass before the first backward (its pair's forward)
        warm = max(0, next((j for j, p in enumerate(order) if p.kind == "B"), len(order) + 1) - 1)
        f_after = sum(1 for p in order[warm:] if p.kind == "F")
        for j in range(warm):
            for o in members.get(by_pos.get((s, j), -1), []):
                kind[o] = 0
        passes = [[members.get(by_pos.get((s, warm + 2 * i + k), -1), []) for k in (0, 1)] for i in range(f_after)]
        pair_ops[s] = [np.array(sorted(a + b), dtype=np.int64) for a, b in passes]
        for i in range(len(passes) - pairs_per_period):
            maps = [_match(ops, passes[i][k], passes[i + pairs_per_period][k]) for k in (0, 1)]
            if maps[0] is None or maps[1] is None:
                break
            for x, y in maps[0] + maps[1]:
                succ[x] = y
                kind[x] = 1
    return succ, kind, pair_ops


def _match(ops: list, a: list[int], b: list[int]) -> list[tuple[int, int]] | None:
    """Pair the ops of two passes rank by rank in issue order if they are the same work, else None.

    A pass's receive is created when the sending stage's pass is emitted, so it is put first whatever its id.
    """
    def per_rank(ids: list[int]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for o in sorted(ids, key=lambda x: (ops[x].kind != "recv", x)):
            out.setdefault(ops[o].rank, []).append(o)
        return out

    ra, rb = per_rank(a), per_rank(b)
    if ra.keys() != rb.keys():
        return None
    out = []
    for r, xs in ra.items():
        ys = rb[r]
        if len(xs) != len(ys):
            return None
        for x, y in zip(xs, ys):
            ox, oy = ops[x], ops[y]
            if (ox.kind, ox.stream, ox.flops, ox.hbm_bytes, ox.shape, ox.nbytes, ox.mem, len(ox.group), ox.layer,
                    ox.phase) != (oy.kind, oy.stream, oy.flops, oy.hbm_bytes, oy.shape, oy.nbytes, oy.mem,
                                  len(oy.group), oy.layer, oy.phase):
                return None
            out.append((x, y))
    return out


def find_window(tl: Timeline, succ: np.ndarray, kind: np.ndarray, anchors: list[int],
                rel_tol: float = 1e-12) -> tuple[float, float, int] | None:
    """(t′, t″, anchor op) of the first anchor whose window passes the state check, or None.

    For an anchor op a (the first op of a steady pair on stage 0) t′ = start(a), t″ = start(succ(a)), Δ = t″ − t′,
    t0 the earliest start among ops running at t′. The states match when: every prologue op ended by t0 and every op
    of the first period (no op maps onto it) by t0 + Δ (none is alive in the shifted history); no tail
    op started before t″; every body op o that ended by t0 has succ(o) ended by t0 + Δ; every body op not started
    at t′ has succ(o) not started at t″; every body op running across t′ has succ(o) starting exactly Δ later and
    ending exactly Δ later (if o ended by t′) or still running at t″. Everything the engine holds at t′ (remaining
    work of kernels and flows, their rates, waiting rendezvous) is then the state at t″ with every pair index one
    period higher.
    """
    n = len(tl.ops)
    start = np.zeros(n)
    end = np.zeros(n)
    for op_id, s0, e0 in tl.spans:
        start[op_id], end[op_id] = s0, e0
    body = kind == 1
    idx = np.flatnonzero(body)
    sx = succ[idx]
    has_pred = np.zeros(n, dtype=bool)
    has_pred[sx] = True
    first = body & ~has_pred          # the first period (no op maps onto it): like the prologue
    for a in anchors:
        if succ[a] < 0:
            continue
        tp, tpp = start[a], start[succ[a]]
        delta = tpp - tp
        if delta <= 0:
            continue
        eps = rel_tol * max(tpp, 1e-9)
        running = (start < tp) & (end >= tp)
        t0 = min(float(start[running].min()) if running.any() else tp, tp)
        if (end[kind == 0] > t0 + eps).any() or (end[first] > t0 + delta + eps).any():
            continue
        if (start[kind == 2] < tpp - eps).any():
            continue
        so, eo, ss, es = start[idx], end[idx], start[sx], end[sx]
        done = eo <= t0
        later = (~done) & (so >= tp)
        window = ~(done | later)
        ok = np.all(es[done] <= t0 + delta + eps)
        ok = ok and np.all(ss[later] >= tpp - eps)
        w_end = eo[window] <= tp
        ok = ok and np.all(np.abs(ss[window] - so[window] - delta) <= eps)
        ok = ok and np.all(np.abs(es[window][w_end] - eo[window][w_end] - delta) <= eps)
        ok = ok and np.all(es[window][~w_end] > tpp - eps)
        if ok:
            return float(tp), float(tpp), a
    return None


def window_for(graph: OpGraph, tl: Timeline, pipe: object, m: int, probe: int, schedule: str) -> Window | None:
    """The steady-state window of a probe replay (see the module docstring), or None.

    The steady state may repeat only every c periods (its cyclicity: overlapping transfers and compute can settle
    into a cycle of a few pairs); windows of c = 1 … :data:`MAX_CYCLICITY` periods are tried, c dividing the
    periods to add.
    """
    stages = len(pipe.orders)                                         # type: ignore[attr-defined]
    per = period_micro_batches(stages, schedule)
    v = max(1, getattr(pipe, "V", 1))
    q = per * v if schedule == "interleaved" else 1
    if (m - probe) % per:
        return None
    k = (m - probe) // per
    succ, kind, pair_ops = successor_map(graph, pipe, q)
    ops = graph.ops
    anchors = [next(int(o) for o in p if ops[int(o)].kind != "recv") for p in pair_ops.get(0, []) if len(p)]
    for c in range(1, MAX_CYCLICITY + 1):
        if k % c:
            continue
        succ_c = succ.copy()
        for _ in range(c - 1):
            succ_c = np.where(succ_c >= 0, succ[np.maximum(succ_c, 0)], -1)
        kind_c = kind.copy()
        kind_c[(kind == 1) & (succ_c < 0)] = 2     # its c-th successor does not exist: part of the tail
        found = find_window(tl, succ_c, kind_c, anchors)
        if found is None:
            continue
        t0, t1, a = found
        i = next(j for j, p in enumerate(pair_ops[0]) if len(p) and a in p)
        # c periods: on every stage, the c·q pairs starting where stage 0's anchor pair is in the pair numbering
        period = [pair_ops[s][j] for s in pair_ops for j in range(i, i + c * q) if j < len(pair_ops[s])]
        chosen = np.concatenate(period) if period else np.zeros(0, dtype=np.int64)
        return Window(t0, t1, k // c, chosen, probe)
    return None


def probe_spec(pipeline: object, probe: int, batch: int, replicas: int) -> object:
    """The pipeline request of the probe: the same with ``probe`` micro-batches per replica."""
    return replace(pipeline, global_batch=probe * batch * replicas)  # type: ignore[type-var]
