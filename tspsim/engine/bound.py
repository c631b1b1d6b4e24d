"""A lower bound on a graph's replayed step time, without replaying it: :func:`step_time_lower_bound`.

The replay (:mod:`tspsim.engine.sim`) runs the ops of every (rank, stream) in issue order; an op starts once
the previous op of its stream and all its dependencies have finished; a collective or send/recv starts its
phases when the last of its simulated participants reaches it; a compute op lasts at least its duration on
an idle GPU (:func:`~tspsim.engine.costs.compute_seconds`: its rate is 1 or 1/(1+s) < 1 while communication
runs, and it may also wait for the GPU's compute slot), a host op exactly its ``host_us``. A communication
op's phases run one after the other, each its latency then one flow of ``progress`` bytes, and a flow's
max-min fair rate is at most its rate alone on the network (min over its links of capacity / load,
:func:`~tspsim.engine.network.max_min_rates`), while the network may call it complete with up to
max(1 B, 10⁻⁹ of it) left (``_DONE_REL``); so a phase takes at least latency + (progress·(1 − 10⁻⁶) − 1 B) /
solo rate (the network's other completion test, a remainder below the clock's resolution at time t, is
~10⁻¹⁵·t per flow: the 10⁻⁹ margin of the playbook search absorbs it). The same rules with every op taking
exactly its minimum give, op by op, times ≤ the replay's (induction over the order in which the replay starts
ops), so the last end is ≤ the replayed step time. Collectives over more than :data:`FLOOR_GROUP_RANKS` ranks
are taken as free (not resolved). The playbook search (:mod:`tspsim.commands.playbook_columns`) uses the bound
to skip candidates that cannot beat the best already simulated; ``tests/test_step_bound.py`` checks bound ≤
replay on every schedule.
"""

from __future__ import annotations

from typing import Any

from tspsim.engine.costs import compute_seconds, kernel_gpu
from tspsim.engine.replay_setup import ReplaySetup
from tspsim.engine.sim import Replay
from tspsim.opgraph import COMPUTE_KINDS, Op, OpGraph
from tspsim.spec.topology import Topology

_COMPUTE = frozenset(COMPUTE_KINDS)

FLOOR_GROUP_RANKS = 64
"""Largest group whose collectives get a floor above 0 s: resolving a 2,048-rank data-parallel group's plan costs
more than the bound saves (its floor would be 0.3 s of a 2,048-node run's bounds). 0 is still a lower bound."""


def comm_floor_s(op: Op, replay: Replay) -> float:
    """The least time communication op ``op`` can take from its last arrival in ``replay`` (see the module doc).

    0 for a group of more than :data:`FLOOR_GROUP_RANKS` ranks (not resolved).
    """
    if len(op.group) > FLOOR_GROUP_RANKS:
        return 0.0
    capacity = replay.net.capacity
    total = 0.0
    for latency, links, weights, progress in replay.plan_of(op).phases:
        total += max(latency, 0.0)
        if links and progress > 0:
            load: dict[int, float] = {}
            for link, w in zip(links, weights):
                load[link] = load.get(link, 0.0) + w
            rate = min((capacity[link] / w for link, w in load.items() if w > 0.0), default=float("inf"))
            total += max(progress * (1 - 1e-6) - 1.0, 0.0) / rate
    return total


def step_time_lower_bound(graph: OpGraph, topo: Topology, comm: bool = True, plans: Any = None,
                          setup: ReplaySetup | None = None) -> float:
    """The step time of ``graph`` with every op at its least duration (≤ the replayed step time, s).

    ``comm`` False: communication takes no time (a weaker bound that resolves no collective). ``plans``: a dict
    the resolved communication is kept in, for a later ``replay(graph, topo, plans=plans)`` (default options).
    ``setup``: the graph's :class:`~tspsim.engine.replay_setup.ReplaySetup` (streams and group participants),
    shared with the graph's other bounds and replays (derived here if None).
    Returns 0.0 (a trivially valid bound) if the ops cannot all run (a graph the replay would find deadlocked).
    """
    gpu = kernel_gpu(topo.gpu, graph.meta or {})
    if setup is None:
        setup = ReplaySetup.of(graph)
    resolver = Replay(graph, topo, plans=plans, setup=setup) if comm else None
    floors: dict[int, float] = {}
    ops = graph.ops
    end: list[float | None] = [None] * len(ops)
    streams = [stream_ops for _, stream_ops in setup.streams]
    pos = [0] * len(streams)
    free = [0.0] * len(streams)                       # end of the previous op of each stream
    waiting: dict[int, list[int]] = {}                # op id → streams blocked on it
    rendezvous: dict[str, list[tuple[int, int, float]]] = {}  # collective → (stream, op id, arrival)
    participants = setup.participants               # a group tuple → its simulated members
    ready = list(range(len(streams)))

    def finish(j: int, op_id: int, t: float) -> None:
        end[op_id] = free[j] = t
        pos[j] += 1
        ready.extend(waiting.pop(op_id, ()))

    durations: dict[tuple[Any, ...], float] = {}   # blocks repeat: one roofline per cost (and GEMM shape, with waves)
    waves = gpu.gemm_wave_tile is not None            # the duration then depends on the output shape too
    while ready:
        i = ready.pop()
        ops_i = streams[i]
        n_i = len(ops_i)
        p, t_free = pos[i], free[i]
        while p < n_i:
            op = ops_i[p]
            t = t_free
            blocker = None
            for d in op.deps:
                e = end[d]
                if e is None:
                    blocker = d
                    break
                if e > t:
                    t = e
            if blocker is not None:
                waiting.setdefault(blocker, []).append(i)
                break
            kind = op.kind
            if kind in _COMPUTE:
                key = (kind, op.flops, op.hbm_bytes, op.host_us, op.shape if waves else None)
                dt = durations.get(key)
                if dt is None:
                    dt = durations[key] = op.host_us * 1e-6 if kind == "host" else compute_seconds(op, gpu)
                t_free = end[op.id] = t + dt
                p += 1
                w = waiting.pop(op.id, None)
                if w:
                    ready.extend(w)
                continue
            pos[i], free[i] = p, t_free
            n = participants(op.group)
            here = rendezvous.setdefault(op.coll, [])
            here.append((i, op.id, t))
            if len(here) < n:
                break                                 # the last arrival moves this stream on
            done = max(a for _, _, a in here)
            if resolver is not None and len(op.group) <= FLOOR_GROUP_RANKS:
                plan = resolver.plan_of(op)
                f = floors.get(id(plan))       # plans are cached per (kind, group, size, root, algorithm)
                if f is None:
                    f = floors[id(plan)] = comm_floor_s(op, resolver)
                done += f
            del rendezvous[op.coll]
            for j, oid, _ in here:
                finish(j, oid, done)
                if j != i:
                    ready.append(j)
            p, t_free = pos[i], free[i]
        pos[i], free[i] = p, t_free
    if None in end:
        return 0.0
    return max(end, default=0.0)   # type: ignore[type-var]  # no None left
