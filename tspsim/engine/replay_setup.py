"""What a replay derives from an op graph's structure alone, computed once for replays of one graph.

A replay first derives, from the graph's *structure* (each op's id, rank, stream, kind, dependencies,
group and layer label), the ops of every stream in issue order, which ops other ops wait on, the
ranks it simulates and the range of ranks the groups name, and (for :mod:`tspsim.engine.periodic`)
each op's stream and position and the unit boundaries of the longest stream. None of that depends on
an op's costs (FLOPs, bytes, shape, host time), so a caller that replays one graph many times,
re-costed in between (:class:`tspsim.simulate.decode_timer.DecodeTimer`: one decode step per context
length), computes it once (:meth:`ReplaySetup.of`) and passes it to every replay. A setup belongs to
its graph object (a replay of another graph refuses it) and stays valid while the graph's structure
is unchanged; re-costing does not change it. tests/test_replay_setup.py checks that replays with and
without a shared setup are identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np

from tspsim.opgraph import COMPUTE_KINDS, Op, OpGraph
from tspsim.spec.topology import GpuSpec

_COMPUTE = frozenset(COMPUTE_KINDS)


@dataclass(frozen=True)
class ReplaySetup:
    """The structure-only parts of a replay of :attr:`graph` (read-only: replays share them)."""

    graph: OpGraph
    """The graph this setup was derived from (a replay checks it is handed the same object)."""
    n_ops: int
    """Ops in the graph when the setup was made (a replay of a graph that has since grown is refused)."""
    sim_ranks: frozenset[int]
    """Ranks the graph simulates (``graph.ranks``, else the ranks of its ops)."""
    streams: tuple[tuple[tuple[int, str], list[Op]], ...]
    """((rank, stream), its ops in issue order) for every stream, in :meth:`OpGraph.streams` order."""
    dependents: bytearray
    """1 for an op that some other op lists as a dependency."""
    group_range: tuple[int, int] | None
    """(lowest, highest) rank named by the group of a communication op; None if there is none."""
    op_stream: list[int]
    """Index (in :attr:`streams`) of each op's stream, by op id."""
    op_pos: list[int]
    """Position of each op in its stream, by op id."""
    marker: int
    """Index of the stream whose unit boundaries trigger the periodic check (the longest, first of equals); -1
    if there is no stream."""
    boundaries: frozenset[int]
    """Positions on the marker stream where a new layer label starts (:class:`tspsim.engine.periodic.Periodicity`)."""
    volatile: tuple[int, ...] | None = None
    """Ops whose costs (FLOPs, bytes, shape) may change between replays, e.g. re-costed attention; None: any op.
    The compute durations of the other ops are kept across replays (:meth:`durations`)."""
    _durations: list[Any] = field(default_factory=list, compare=False, repr=False)
    """[GPU, durations by op id, durations by cost] of the last :meth:`durations` call."""
    _keys: list[Any] = field(default_factory=list, compare=False, repr=False)
    """Repeat keys by op id (:meth:`repeat_keys`)."""
    _participants: dict[int, int] = field(default_factory=dict, compare=False, repr=False)
    """Simulated ranks of each group tuple, by the tuple's id (:meth:`participants`)."""
    _canon: dict[tuple[Any, ...], tuple[Any, ...]] = field(default_factory=dict, compare=False, repr=False)
    """One object per distinct repeat key (:meth:`repeat_keys`)."""
    _group_tokens: dict[int, int] = field(default_factory=dict, compare=False, repr=False)
    """A small int per distinct group, by the id of each group tuple of the graph's ops (:meth:`group_token`)."""
    _token_of: dict[tuple[int, ...], int] = field(default_factory=dict, compare=False, repr=False)
    """The token of each distinct group, by value (:meth:`group_token`)."""

    @classmethod
    def of(cls, graph: OpGraph, volatile: Iterable[int] | None = None) -> ReplaySetup:
        """Derive the setup of ``graph`` (one pass over its ops, plus one over each stream).

        ``volatile``: the ops the caller may re-cost between replays (None: any op).
        """
        ops = graph.ops
        n = len(ops)
        flags = np.zeros(n, dtype=np.uint8)
        flags[np.fromiter(chain.from_iterable([op.deps for op in ops]), dtype=np.int64)] = 1
        dependents = bytearray(flags.tobytes())
        # the groups of communication ops (participants share one tuple: no 2,048-rank hashes)
        groups = {id(op.group): op.group for op in ops if op.group and op.kind not in _COMPUTE}
        lo = min(min(g) for g in groups.values()) if groups else None
        hi = max(max(g) for g in groups.values()) if groups else None
        streams = tuple(graph.streams().items())
        stream_of = np.zeros(n, dtype=np.int64)
        pos_of = np.zeros(n, dtype=np.int64)
        for si, (_, stream_ops) in enumerate(streams):
            ids = np.fromiter([op.id for op in stream_ops], dtype=np.int64, count=len(stream_ops))
            stream_of[ids] = si
            pos_of[ids] = np.arange(len(stream_ops))
        op_stream, op_pos = stream_of.tolist(), pos_of.tolist()
        marker = max(range(len(streams)), key=lambda i: len(streams[i][1]), default=-1)
        boundaries: frozenset[int] = frozenset()
        if marker >= 0:
            m_ops = streams[marker][1]
            boundaries = frozenset(q for q in range(1, len(m_ops))
                                   if m_ops[q].layer >= 0 and m_ops[q].layer != m_ops[q - 1].layer)
        sim_ranks = frozenset(graph.ranks) or frozenset(op.rank for op in ops)
        return cls(graph, len(ops), sim_ranks, streams, dependents,
                   None if lo is None or hi is None else (lo, hi), op_stream, op_pos, marker, boundaries,
                   None if volatile is None else tuple(sorted(set(volatile))))

    def durations(self, gpu: GpuSpec) -> tuple[list[float | None], dict[tuple[Any, ...], float]]:
        """(per op id: its compute duration on ``gpu`` if known, else None; durations by (kind, FLOPs, bytes, shape)).

        The replay computes a missing duration (:func:`~tspsim.engine.costs.compute_seconds`, a function of those
        four and the GPU only, so ops of equal costs share it) and stores it. With :attr:`volatile` given, the list
        is kept for the next replay on the same GPU and only the volatile ops are forgotten; otherwise every replay
        starts from an empty list. The by-cost table is kept for the GPU.
        """
        cache = self._durations
        if not cache or cache[0] != gpu:
            cache[:] = [gpu, [None] * self.n_ops, {}]
        if self.volatile is None:
            return [None] * self.n_ops, cache[2]
        seconds: list[float | None] = cache[1]
        for i in self.volatile:
            seconds[i] = None
        return seconds, cache[2]

    def repeat_keys(self) -> tuple[list[tuple[Any, ...] | None], dict[tuple[Any, ...], tuple[Any, ...]]]:
        """(per op id: its :func:`repeat_key` if known, else None; the canonical object of each key).

        The periodic check computes a missing key, stores its canonical object (``canon.setdefault(key, key)``:
        equal keys are then one object, compared by identity) and keeps it. Kept across replays like
        :meth:`durations` (the volatile ops' keys are forgotten at every call).
        """
        if self.volatile is None or not self._keys:
            self._keys[:] = [None] * self.n_ops
            self._canon.clear()
        keys: list[tuple[Any, ...] | None] = self._keys
        for i in self.volatile or ():
            keys[i] = None
        return keys, self._canon

    def group_token(self, group: tuple[int, ...]) -> int:
        """A small int equal for equal groups (``group``: a group tuple of one of the graph's ops).

        Each tuple object is hashed once (the graph keeps it alive, so its id is not reused): a 16,384-rank
        group costs ~45 µs to hash, and a repeat key holding the tuple would hash it for every op.
        """
        token = self._group_tokens.get(id(group))
        if token is None:
            token = self._group_tokens[id(group)] = self._token_of.setdefault(group, len(self._token_of))
        return token

    def participants(self, group: tuple[int, ...]) -> int:
        """How many distinct ranks of ``group`` (a group tuple of one of the graph's ops) are simulated."""
        count = self._participants.get(id(group))
        if count is None:
            count = self._participants[id(group)] = sum(1 for r in set(group) if r in self.sim_ranks)
        return count

    def first_outside(self, world_size: int) -> Op | None:
        """The first communication op (in graph order) whose group names a rank outside [0, ``world_size``)."""
        if self.group_range is None or (self.group_range[0] >= 0 and self.group_range[1] < world_size):
            return None
        seen: set[int] = set()
        for op in self.graph.ops:
            group = op.group
            if group and id(group) not in seen and op.kind not in _COMPUTE:
                seen.add(id(group))
                if min(group) < 0 or max(group) >= world_size:
                    return op
        return None  # pragma: no cover - group_range says there is one


def repeat_key(op: Op, group_token: Callable[[tuple[int, ...]], int]) -> tuple[Any, ...]:
    """What must be equal for ``op`` to repeat another op one unit later (``Periodicity._repeats``).

    Kind, rank, costs, shape, payload, group (as ``group_token`` of it, e.g. :meth:`ReplaySetup.group_token`:
    equal for equal groups), memory events, host time, root, algorithm and the number of dependencies.
    """
    return (op.kind, op.rank, op.flops, op.hbm_bytes, op.nbytes, op.mem, op.shape, op.host_us, op.root,
            op.algorithm, len(op.deps), group_token(op.group))
