"""A lower bound on a graph's replayed step time, without replaying it: :func:`step_time_lower_bound`.

The replay (:mod:`tspsim.engine.sim`) runs the ops of every (rank, stream) in issue order; an op starts once
the previous op of its stream and all its dependencies have finished; a collective or send/recv finishes no
earlier than the last of its simulated participants reaches it; a compute op lasts at least its duration on
an idle GPU (:func:`~tspsim.engine.costs.compute_seconds`: its rate is 1 or 1/(1+s) < 1 while communication
runs, and it may also wait for the GPU's compute slot), a host op exactly its ``host_us``, and a
communication op a latency and a flow of ≥ 0 s. The same rules with every communication op taking zero time
after its last arrival, every compute op its idle-GPU duration and no slot contention give, op by op, times
that are ≤ the replay's (induction over the order in which the replay starts ops); so the last end is ≤ the
replayed step time. The playbook search (:mod:`tspsim.commands.playbook_columns`) uses it to skip candidates
that cannot beat the best already simulated; ``tests/test_step_bound.py`` checks bound ≤ replay on every
schedule.
"""

from __future__ import annotations

from tspsim.engine.costs import compute_seconds, kernel_gpu
from tspsim.opgraph import COMPUTE_KINDS, OpGraph
from tspsim.spec.topology import Topology


def step_time_lower_bound(graph: OpGraph, topo: Topology) -> float:
    """The step time of ``graph`` with free communication and uncontended compute (≤ the replayed one, s).

    Returns 0.0 (a trivially valid bound) if the ops cannot all run (a graph the replay would find deadlocked).
    """
    gpu = kernel_gpu(topo.gpu, graph.meta or {})
    ops = graph.ops
    sim = set(graph.ranks) or {op.rank for op in ops}
    end: list[float | None] = [None] * len(ops)
    streams = list(graph.streams().values())
    pos = [0] * len(streams)
    free = [0.0] * len(streams)                       # end of the previous op of each stream
    waiting: dict[int, list[int]] = {}                # op id → streams blocked on it
    rendezvous: dict[str, list[tuple[int, int, float]]] = {}  # collective → (stream, op id, arrival)
    expected: dict[tuple[int, ...], int] = {}
    ready = list(range(len(streams)))

    def finish(j: int, op_id: int, t: float) -> None:
        end[op_id] = free[j] = t
        pos[j] += 1
        ready.extend(waiting.pop(op_id, ()))

    while ready:
        i = ready.pop()
        ops_i = streams[i]
        while pos[i] < len(ops_i):
            op = ops_i[pos[i]]
            t = free[i]
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
            if op.kind in COMPUTE_KINDS:
                finish(i, op.id, t + (op.host_us * 1e-6 if op.kind == "host" else compute_seconds(op, gpu)))
                continue
            n = expected.get(op.group)
            if n is None:
                n = expected[op.group] = sum(1 for r in set(op.group) if r in sim)
            here = rendezvous.setdefault(op.coll, [])
            here.append((i, op.id, t))
            if len(here) < n:
                break                                 # the last arrival moves this stream on
            done = max(a for _, _, a in here)
            del rendezvous[op.coll]
            for j, oid, _ in here:
                finish(j, oid, done)
                if j != i:
                    ready.append(j)
    if any(e is None for e in end):
        return 0.0
    return max((e for e in end if e is not None), default=0.0)
