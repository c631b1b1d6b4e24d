"""What a replay reports besides its spans: the bytes of finished communication, and the deadlock report.

Kept out of the event loop's module (:mod:`tspsim.engine.sim`); both read the replay's state only.
"""

from __future__ import annotations

from typing import Any

from tspsim.engine.timeline import Timeline
from tspsim.opgraph import P2P_KINDS, OpGraph

PENDING, TRIGGERED, PROCESSED = 0, 1, 2
"""Op completion states of a replay (``Replay.state``): not finished; finished (its completion event due now);
completion processed."""


def account_comm(tl: Timeline, graph: OpGraph, sim_ranks: set[int], op_ids: dict[int, int], plan: Any) -> None:
    """Add a finished communication op's bytes (per rank, per kind, per op) and algorithm to the timeline.

    ``op_ids``: the op of each participating simulated rank; ``plan``: its
    :class:`~tspsim.engine.comm.ResolvedComm` (bytes sent and received per rank, algorithm).
    """
    op = graph.ops[next(iter(op_ids.values()))]
    kind = "send" if op.kind in P2P_KINDS else op.kind
    for r, b in plan.sent.items():
        per = tl.sent_bytes.setdefault(r, {})
        per[kind] = per.get(kind, 0.0) + b
    for r, b in plan.recv.items():
        if r in sim_ranks:
            per = tl.recv_bytes.setdefault(r, {})
            per[kind] = per.get(kind, 0.0) + b
    for r, op_id in op_ids.items():
        tl.op_sent_bytes[op_id] = plan.sent.get(r, 0.0)
    tl.collective_algorithms[plan.algorithm] = tl.collective_algorithms.get(plan.algorithm, 0) + 1


def blocked_streams(replay: Any) -> list[str]:
    """One line per stream of a finished replay that still has ops to run (none: no deadlock).

    Each says where the stream stopped and what it waits for (peers of a collective, or a dependency);
    ``replay`` is a :class:`tspsim.engine.sim.Replay`.
    """
    blocked = []
    for s in replay.streams:
        if s.pos < len(s.ops):
            op = s.ops[s.pos]
            waiting = ""
            if op.is_comm and op.coll in replay.rdv and op.rank in replay.rdv[op.coll].ranks:
                st = replay.rdv[op.coll]
                missing = sorted(set(r for r in op.group if r in replay.sim_ranks) - set(st.ranks))
                waiting = f" waiting for ranks {missing[:8]}"
            elif op.deps:
                pending = [d for d in op.deps if replay.state[d] == PENDING]
                if pending:
                    dep = replay.graph.ops[pending[0]]
                    waiting = f" waiting for {dep.name} (rank {dep.rank})"
            blocked.append(f"rank {s.key[0]} stream {s.key[1]} at op {op.id} {op.name}{waiting}")
    return blocked
