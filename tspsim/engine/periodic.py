"""Exact periodicity of a replay: when the engine's state repeats one unit later, skip ahead by a time shift.

A step is made of repeating units — the layers of a forward or backward pass, the layers of a decode
step, the micro-batches of a pipeline's steady state. The replay is a deterministic function of its
state and of the ops still to run, so if the state at an instant t″ is the state at an earlier instant
t′ *shifted* — every stream n_s ops further (n_s ≥ 0 per stream), every running kernel, flow, timer
and rendezvous the same up to the time shift Δ = t″ − t′ and the op shift — and the ops ahead of
every stream repeat with the same period (same kind, costs, group, memory events, and dependencies
that map under the same shift or are already satisfied), then the interval [t″, t″ + Δ) repeats
[t′, t″) exactly, and so do the next ones for as many units as the graph keeps repeating. The engine
then **jumps** m units: it appends the spans, memory events and bytes of those units (the window's,
shifted by kΔ and k units, for k = 1..m), moves every stream m·n_s ops on and every pending time mΔ
later, and simulates on from there; the last units and the epilogue run in full. Nothing is assumed
from the schedule: the units are found by comparing states at the starts of layers on one stream
(op ``layer`` labels only choose *when* to compare), and a state that does not repeat (or a graph
that does not) leaves the replay in full.

The state compared (:meth:`Periodicity.signature`): each stream's position relative to its previous
position and the dependency it waits on; each GPU's running job (remaining work, rate, last update),
its queue and its active communication kernels; each open rendezvous (arrivals, phase); each flow
(remaining bytes, rate, links); each pending timer (its time relative to now and what it fires).
Memory is not part of the dynamics (no op waits on memory): the memory events of skipped units are the
window's, shifted, so peaks come out as in the full replay. Times and bytes are compared to within
float noise (``_TOL`` ulps of the clock, 1e-12 of a flow's size); tests/test_periodic.py checks the
result against the full replay for every schedule and mode.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from tspsim.engine.replay_setup import repeat_key

Replay = Any
"""A :class:`tspsim.engine.sim.Replay` (not imported: the engine imports this module)."""

MAX_PERIOD = 4
"""A state is compared with the states of the last this many boundaries (a unit may span several layers:
TSP decode alternates two layer patterns, a pipeline's steady state repeats every few micro-batches)."""
_TOL = 64 * 2.0**-52
"""Relative tolerance on times (of the clock) and bytes (of a flow's size) when comparing two states."""

Sig = tuple[Any, ...]
Marks = tuple[int, dict[int, int], int, dict[int, int]]
"""Lengths of the timeline's lists at an instant: spans, memory events per rank, comm log, link steps per link."""


class Periodicity:
    """Finds repeating states during one replay and jumps over the units in between."""

    def __init__(self, replay: Replay) -> None:
        self.r = replay
        setup = replay.setup  # the structure-only parts (tspsim.engine.replay_setup), shared by replays of the graph
        self.op_stream: list[int] = setup.op_stream
        """Index (in ``replay.streams``) of each op's stream."""
        self.op_pos: list[int] = setup.op_pos
        """Position of each op in its stream."""
        self.marker: Any = replay.streams[setup.marker] if setup.marker >= 0 else None
        """The stream whose unit boundaries trigger a comparison (the longest)."""
        self.boundaries: frozenset[int] = setup.boundaries
        """Positions on the marker stream where a new layer label starts."""
        self.keys, self.canon = setup.repeat_keys()
        """:func:`~tspsim.engine.replay_setup.repeat_key` of each op by id (None until needed), and the one object
        of each distinct key (equal keys are identical)."""
        self.requested = False
        """A boundary was reached: compare the state once the current instant's events are done."""
        self.history: list[tuple[float, list[int], Sig, list[Any], Marks]] = []
        """States at the last :data:`MAX_PERIOD` boundaries (time, positions, signature, waiters, marks)."""
        self.comm_log: list[tuple[dict[int, int], Any]] = []
        """Every completed communication op: (op id per rank, resolved plan), for replaying skipped units."""
        self.jumps = 0
        """Jumps made."""
        self.log: list[tuple[int, int, tuple[int, ...]]] = []
        """(boundary index, units, per-stream shift) of every jump, part of the replay's fingerprint."""
        self.units = 0
        """Units skipped in all."""

    # ------------------------------------------------------------------------------ entry point
    def check(self) -> None:
        """Called at a clean instant (nothing due now) after a boundary: compare with earlier states, maybe jump."""
        self.requested = False
        r = self.r
        now = r.env.now
        pos = [s.pos for s in r.streams]
        sig = self.signature(pos)
        waiting = self.waiting()
        marks = self._marks()
        history = self.history
        for t1, pos1, sig1, waiting1, marks1 in reversed(history):  # the nearest earlier boundary first
            delta = now - t1
            if delta <= 0 or not _same(sig1, sig, now):
                continue
            shift = [b - a for a, b in zip(pos1, pos)]
            if not _same_waiting(waiting1, waiting, shift):
                continue
            m = self._verified_units(pos, shift)
            if m >= 1:
                self._jump(m, delta, shift, pos, marks1, marks)
                history.clear()
                return
        history.append((now, pos, sig, waiting, marks))
        if len(history) > MAX_PERIOD:
            del history[0]

    # ------------------------------------------------------------------------------ state
    def _rel(self, op_id: int, pos: list[int]) -> tuple[int, int]:
        si = self.op_stream[op_id]
        return si, self.op_pos[op_id] - pos[si]

    def signature(self, pos: list[int]) -> Sig:
        """The engine's state at this instant, with ops as (stream, offset from the stream's position)."""
        r = self.r
        now = r.env.now
        state = r.state
        streams = []
        for s in r.streams:
            if s.pos >= len(s.ops):
                streams.append(None)
                continue
            op = s.ops[s.pos]
            waiting = any(state[d] != 2 for d in op.deps)
            streams.append((s.dep, True) if waiting else (False, s.start - now))
        index = {id(s): i for i, s in enumerate(r.streams)}
        gpus = []
        for rank in sorted(r.gpus):
            g = r.gpus[rank]
            job = (index[id(g.job)], g.job_left, g.job_last - now, g.job_rate) if g.job is not None else None
            gpus.append((job, tuple(g.active), tuple((sec, index[id(w)]) for sec, w in g.waiting)))
        rdv = tuple((self._rel(st.op.id, pos), tuple(st.ranks), st.arrived, st.phase, st.waited, st.plan is None)
                    for st in r.rdv.values())
        net = r.net
        flows = tuple((self._rel(f.arg.op.id, pos), f.remaining, f.rate, f.nbytes, f.links, f.weights)
                      for f in net.flows)
        timers = []
        for t, _prio, _eid, ev in sorted(r.env._queue, key=lambda e: (e[0], e[2])):  # noqa: SLF001
            what = self._timer_sig(ev.fn, ev.arg, index, pos)
            if what is not None:
                timers.append((t - now, what))
        return (tuple(streams), tuple(gpus), rdv, flows, (net._last - now, net._pending),  # noqa: SLF001
                tuple(timers))

    def waiting(self) -> list[tuple[tuple[int, ...], int, int]]:
        """Streams blocked on each unfinished op: (their indices, the op's stream, the op's position)."""
        index = {id(s): i for i, s in enumerate(self.r.streams)}
        return sorted((tuple(index[id(s)] for s in w), self.op_stream[d], self.op_pos[d])
                      for d, w in self.r.waiters.items())

    def _timer_sig(self, fn: Callable[[Any], None], arg: Any, index: dict[int, int], pos: list[int]) -> Any:
        """What a pending timer will do (None for a superseded one, which does nothing)."""
        r = self.r
        name = fn.__name__
        if name == "_job_timer":
            g, version = arg
            return None if version != g.version or g.job is None else (name, index[id(g.job)])
        if name == "_on_timer":
            return None if arg != r.net._version else (name,)  # noqa: SLF001
        if name == "_comm_step":
            return name, self._rel(arg.op.id, pos)
        if name == "_op_done":
            return name, index[id(arg)]
        return (name,)

    def _marks(self) -> Marks:
        """Lengths of the timeline's lists now (spans, memory per rank, comm log, link series)."""
        tl = self.r.timeline
        return (len(tl.spans), {rank: len(ev) for rank, ev in self.r.memory.items()}, len(self.comm_log),
                {link: len(s) for link, s in tl.links.items()})

    # ------------------------------------------------------------------------------ graph
    def _verified_units(self, pos: list[int], shift: list[int]) -> int:
        """Units m ≥ 0 the graph repeats for beyond ``pos`` (ops and dependencies map under ``shift``)."""
        r = self.r
        streams = r.streams
        state = r.state
        moving = [i for i, n in enumerate(shift) if n > 0]
        if not moving:
            return 0
        limit = min((len(streams[i].ops) - 1 - pos[i]) // shift[i] for i in moving)
        for i, s in enumerate(streams):  # a parked stream must stay parked: its head waits on a dependency
            if shift[i] == 0 and s.pos < len(s.ops):
                op = s.ops[s.pos]
                blocking = [d for d in op.deps if state[d] != 2]
                if not blocking:
                    return 0
                d = op.deps[s.dep]
                ds = self.op_stream[d]
                if shift[ds] > 0:
                    limit = min(limit, (self.op_pos[d] - pos[ds]) // shift[ds])
        colls: dict[str, str] = {}
        back: dict[str, str] = {}
        units = 0
        while units < limit:
            for i in moving:
                ops = streams[i].ops
                n = shift[i]
                lo = pos[i] + units * n
                if not self._repeats(ops, lo, lo + n, n, shift, state, colls, back):
                    return max(units - 1, 0)
            units += 1
        # the ops at the streams' positions after the jump must repeat too (they are the new heads)
        for i in moving:
            ops = streams[i].ops
            q = pos[i] + units * shift[i]
            if q < len(ops) and not self._repeats(ops, q, q + 1, shift[i], shift, state, colls, back):
                return max(units - 1, 0)
        return units

    def _repeats(self, ops: list[Any], lo: int, hi: int, n: int, shift: list[int], state: bytearray,
                 colls: dict[str, str], back: dict[str, str]) -> bool:
        """True if each op of ``ops[lo:hi]`` is the op ``n`` earlier, one unit later.

        That is: the same costs and shape, dependencies shifted by ``shift`` or already satisfied, and
        collectives mapped one to one.
        """
        op_stream, op_pos, streams, keys, canon = self.op_stream, self.op_pos, self.r.streams, self.keys, self.canon
        token = self.r.setup.group_token
        for q in range(lo, hi):
            o = ops[q]
            p = ops[q - n]
            # what must repeat: kind, rank, costs, shape, payload, group, memory events, dependency count
            ko, kp = keys[o.id], keys[p.id]
            if ko is None:
                key = repeat_key(o, token)
                ko = keys[o.id] = canon.setdefault(key, key)
            if kp is None:
                key = repeat_key(p, token)
                kp = keys[p.id] = canon.setdefault(key, key)
            if ko is not kp:   # canonical objects: identical if and only if equal
                return False
            for e, d in zip(o.deps, p.deps):
                if e == d and state[d] == 2:
                    continue
                ds = op_stream[d]
                qd = op_pos[d] + shift[ds]
                dops = streams[ds].ops
                if qd >= len(dops) or dops[qd].id != e:
                    return False
            pc = p.coll
            if pc:
                oc = o.coll
                if colls.setdefault(pc, oc) != oc or back.setdefault(oc, pc) != pc:
                    return False
        return True

    # ------------------------------------------------------------------------------ jump
    def _image(self, op_id: int, k: int, shift: list[int]) -> int:
        si = self.op_stream[op_id]
        return self.r.streams[si].ops[self.op_pos[op_id] + k * shift[si]].id

    def _jump(self, m: int, delta: float, shift: list[int], pos: list[int],
              marks1: Marks, marks2: Marks) -> None:
        """Skip m units: replay the window [t′, t″)'s records m times shifted, then shift the engine state."""
        r = self.r
        tl = r.timeline
        span0, mem0, comm0, link0 = marks1
        span1, mem1, comm1, link1 = marks2
        window = tl.spans[span0:span1]
        mem_window = {rank: r.memory[rank][mem0.get(rank, 0):n] for rank, n in mem1.items()}
        comm_window = self.comm_log[comm0:comm1]
        link_window = {link: tl.links[link][link0.get(link, 0):n] for link, n in link1.items()}
        span = m * delta
        new_now = r.env.now + span
        last_end = [s.last_end for s in r.streams]
        op_stream, op_pos, streams = self.op_stream, self.op_pos, r.streams
        prepared = [(streams[si].ops, op_pos[op_id], shift[si], si, s0, e0)
                    for op_id, s0, e0 in window for si in (op_stream[op_id],)]
        append = tl.spans.append
        comm_members = [([(rank, streams[si].ops, op_pos[op_id], shift[si]) for rank, op_id in op_ids.items()
                          for si in (op_stream[op_id],)], plan) for op_ids, plan in comm_window]  # _image's parts
        mem_net = {rank: sum(d for _, _, d in events) for rank, events in mem_window.items()}  # whole bytes
        for k in range(1, m + 1):
            dt = k * delta
            for ops, q, n, si, s0, e0 in prepared:  # per stream, spans stay ordered despite the shift's float noise
                start = s0 + dt
                if start < last_end[si]:
                    start = last_end[si]
                end = e0 + dt
                if end > new_now:
                    end = new_now
                if end < start:
                    end = start
                last_end[si] = end
                append((ops[q + k * n].id, start, end))
            for rank, events in mem_window.items():
                if events:
                    r.memory[rank].extend([(t + dt, cat, d) for t, cat, d in events])
                    r.mem_now[rank] += mem_net[rank]
            for members, plan in comm_members:
                r.account_comm({rank: ops[q + k * n].id for rank, ops, q, n in members}, plan)
            for link, steps in link_window.items():
                tl.links[link].extend((t + dt, rate) for t, rate in steps)
        state = r.state
        for i, s in enumerate(r.streams):
            n = shift[i]
            if n:
                for op in s.ops[pos[i]:pos[i] + m * n]:
                    state[op.id] = 2
                s.pos += m * n
                s.start = max(s.start + span, last_end[i])
                s.last_end = last_end[i]
        index = {id(s): i for i, s in enumerate(r.streams)}
        r.waiters = {d if all(shift[index[id(s)]] == 0 for s in w) else self._image(d, m, shift): w
                     for d, w in r.waiters.items()}
        for g in r.gpus.values():
            g.job_last += span
        rdv = {}
        for st in r.rdv.values():
            st.op = r.graph.ops[self._image(st.op.id, m, shift)]
            st.op_ids = {rank: self._image(op_id, m, shift) for rank, op_id in st.op_ids.items()}
            rdv[st.op.coll] = st
        r.rdv = rdv
        net = r.net
        for f in net.flows:
            f.tag = f.arg.op.coll
        net._last += span  # noqa: SLF001
        env = r.env
        queue = [(t + span, prio, eid, ev) for t, prio, eid, ev in env._queue]  # noqa: SLF001
        heapq.heapify(queue)
        env._queue[:] = queue  # noqa: SLF001
        env._now += span  # noqa: SLF001
        self.jumps += 1
        self.units += m
        self.log.append((len(tl.spans), m, tuple(shift)))


def _same_waiting(a: list[tuple[tuple[int, ...], int, int]], b: list[tuple[tuple[int, ...], int, int]],
                  shift: list[int]) -> bool:
    """The same streams wait on the same op (streams that did not move) or on the op one unit later."""
    if len(a) != len(b):
        return False
    for (streams1, si1, q1), (streams2, si2, q2) in zip(a, b):
        if streams1 != streams2 or si1 != si2:
            return False
        parked = [shift[i] == 0 for i in streams1]
        if all(parked):
            if q1 != q2:
                return False
        elif any(parked) or q2 != q1 + shift[si1]:
            return False
    return True


def _same(a: Any, b: Any, now: float) -> bool:
    """Structural equality of two signatures, floats equal to within float noise of the clock / the value."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or abs(a - b) <= _TOL * max(abs(a), abs(b), now)
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y, now) for x, y in zip(a, b))
    return a == b
