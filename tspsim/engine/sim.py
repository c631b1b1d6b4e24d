"""Replay an op graph on a topology with simpy (design.md §1 "Engine", §2).

* Every (rank, stream) is a simpy process that runs its ops **in issue order**, like a HIP/CUDA
  stream; an op starts when the previous op on its stream and all its dependencies have finished.
* A compute op is a fluid job on its GPU: it progresses at full speed, or at 1/(1+s) while a
  communication kernel is active on that GPU (s = the fabric's ``compute_slowdown``; rule 5).
* A collective starts when every simulated participant has reached it (a late rank delays the
  others); its communication kernel counts as active on each rank from that rank's arrival. Its
  phases (:mod:`tspsim.engine.collectives`) run as flows on the shared :class:`~tspsim.engine.network.Network`.
* A ``host`` op (stream ``host``) is CPU time: the rank's CPU lane runs its ops in order, each for its
  ``host_us``, without touching the GPU; the kernels it launches depend on it, so a GPU whose CPU falls
  behind waits (:mod:`tspsim.spec.stack`). Compute ops are costed on the GPU as the graph's stack runs it
  (:func:`tspsim.engine.costs.kernel_gpu`).
* Memory events of an op are applied when it starts and ends.
* **Folding**: when the graph holds one replica (``graph.replica_nodes > 0``), collective members
  outside it are mirrors. Hops sent by simulated ranks are routed over the real topology and each link
  is mapped to its twin inside the replica; hops sent by mirrors are dropped (their simulated twin
  carries the identical traffic). Exact when replicas are identical, which tests/test_folding.py checks.

**Mechanics** (the order of events is simpy's; :mod:`tspsim.engine.clock`): each stream is a small
state machine (:class:`_Stream`: its position and the dependency it waits on) advanced by callbacks,
not a generator process; an op's completion is an event due now only if another stream may wait on it
(the op has dependents); a compute op is one timer on its GPU (re-armed when the rate changes); a
collective is a state machine over its phases (latency timer, then one flow). Timed events are simpy
timeouts in simpy's queue; events due at the current instant are processed first in first out, as
simpy processes its ``URGENT`` events, so same-instant order and every float are as with one simpy
process per stream.

A replay that ends with ops still waiting is a deadlock and raises :class:`DeadlockError` naming the
blocked ranks and ops; event and wall-time limits raise :class:`SimulationLimitError`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import simpy
from simpy.events import NORMAL

from tspsim.core.errors import DeadlockError, SimulationLimitError, TraceError
from tspsim.engine.clock import Clock, Timer
from tspsim.engine.comm import CommResolver, ResolvedComm
from tspsim.engine.costs import compute_seconds, kernel_gpu
from tspsim.engine.network import Network
from tspsim.engine.periodic import Periodicity
from tspsim.engine.replay_parts import LinkRecorder, fold_nodes
from tspsim.engine.replay_records import PROCESSED, TRIGGERED, account_comm, blocked_streams
from tspsim.engine.replay_setup import ReplaySetup
from tspsim.engine.timeline import Timeline
from tspsim.opgraph import COMPUTE_KINDS, Op, OpGraph
from tspsim.spec.topology import Topology

_COMPUTE = frozenset(COMPUTE_KINDS)


@dataclass(frozen=True)
class ReplayOptions:
    """Knobs of one replay."""

    record_links: bool = False
    """Record per-link rate steps for the viewer (costs time and memory)."""
    max_events: int = 50_000_000
    """Stop with an error after this many events."""
    max_wall_s: float = 3600.0
    """Stop with an error after this many wall-clock seconds."""
    overlap_slowdown: bool = True
    """Apply the topology's compute slowdown while communication kernels run."""
    protocol: str = ""
    """Force one wire protocol (LL, LL128, Simple) on every collective, like NCCL_PROTO; empty: the policy's."""
    fingerprint: bool = False
    """Hash the sequence of events into ``Timeline.sim_fingerprint`` (costs ~10% more time)."""
    accounting: bool = True
    """Record memory events and communication bytes; False leaves ``memory``, the byte counts and
    ``collective_algorithms`` of the timeline empty (for callers that read only times: no op waits on either)."""
    periodic: bool = True
    """Skip repeating units (layers, micro-batches) when the state provably repeats (:mod:`tspsim.engine.periodic`);
    False simulates every op (the reference the periodic path is tested against)."""


class _Stream:
    """One (rank, stream): its ops in issue order, the current one, and the dependency it waits on."""

    __slots__ = ("key", "ops", "pos", "dep", "start", "last_end")

    def __init__(self, key: tuple[int, str], ops: list[Op]) -> None:
        self.key = key
        self.ops = ops
        self.pos = 0
        """Index of the current op (running or waiting); len(ops) when the stream is done."""
        self.dep = 0
        """Index in the current op's deps of the first dependency not yet seen processed."""
        self.start = 0.0
        """Start time of the current op."""
        self.last_end = 0.0
        """End time of the previous op."""


class _Gpu:
    """Compute state of one rank: the running job, the jobs waiting for the slot, the comm kernels.

    A GPU runs one compute job at a time (one compute slot); a compute op issued on another stream of
    the same rank while a job runs waits, first come first served, and starts when the slot frees.
    """

    __slots__ = ("active", "job_left", "job_rate", "job", "job_last", "version", "waiting")

    def __init__(self) -> None:
        self.active: list[float] = []
        self.job_left = 0.0
        self.job_rate = 1.0
        self.job: _Stream | None = None
        self.job_last = 0.0
        self.version = 0
        self.waiting: list[tuple[float, _Stream]] = []


class _Rendezvous:
    __slots__ = ("op", "expected", "arrived", "streams", "ranks", "op_ids", "plan", "phase", "waited")

    def __init__(self, op: Op, expected: int) -> None:
        self.op = op
        self.expected = expected
        self.arrived = 0
        self.streams: dict[int, _Stream] = {}
        self.ranks: list[int] = []
        self.op_ids: dict[int, int] = {}
        self.plan: ResolvedComm | None = None
        self.phase = 0
        """Index of the phase in progress."""
        self.waited = False
        """True once the current phase's latency has elapsed."""


class Replay:
    """One replay of ``graph`` on ``topo``; call :meth:`run` once.

    ``plans``: resolved communication shared with other replays; ``setup``: the graph's
    :class:`~tspsim.engine.replay_setup.ReplaySetup`, shared with other replays of the same graph object.
    """

    def __init__(self, graph: OpGraph, topo: Topology, options: ReplayOptions | None = None,
                 plans: dict[tuple[Any, ...], ResolvedComm] | None = None, setup: ReplaySetup | None = None) -> None:
        self.graph = graph
        self.topo = topo
        self.options = options or ReplayOptions()
        self.env = simpy.Environment()
        self.clock = Clock(self.env)
        if setup is None:
            setup = ReplaySetup.of(graph)
        elif setup.graph is not graph or setup.n_ops != len(graph.ops):
            raise ValueError("this ReplaySetup was derived from another graph (or the graph has changed since)")
        self.setup = setup
        """Structure-only parts of the replay (:mod:`tspsim.engine.replay_setup`), shared with other replays."""
        self.sim_ranks = set(setup.sim_ranks)
        bad = [r for r in self.sim_ranks if not 0 <= r < topo.world_size]
        if bad:
            raise TraceError(f"op graph uses rank {bad[0]} but topology {topo.name} has {topo.world_size} GPUs; "
                             "replay it on a larger topology")
        outside = setup.first_outside(topo.world_size)
        if outside is not None:
            raise TraceError(f"op {outside.id} ({outside.name}) names a rank outside topology {topo.name} "
                             f"({topo.world_size} GPUs)")
        self.dependents = setup.dependents
        """1 for an op that some other op lists as a dependency."""
        self.fold, self.fold_plan = fold_nodes(graph, topo, self.sim_ranks) if graph.replica_nodes else (0, None)
        self.gpu = kernel_gpu(topo.gpu, graph.meta or {})
        self.seconds, self.by_cost = setup.durations(self.gpu)
        """Duration of each compute op on this GPU by id (None until computed), and by (kind, FLOPs, bytes, shape)."""
        self.accounting = self.options.accounting
        """Record memory events and communication bytes (:attr:`ReplayOptions.accounting`)."""
        self.slowdown = self.options.overlap_slowdown
        self.timeline = Timeline(graph=graph, topology_name=topo.name)
        self.links = LinkRecorder(topo, self.sim_ranks, self.timeline) if self.options.record_links else None
        self.net = Network(self.env, topo.link_capacities, on_rates=self.links.record if self.links else None,
                           timers=self.clock)
        self.state = bytearray(len(graph.ops))
        """Completion state of every op (PENDING, TRIGGERED, PROCESSED)."""
        self.waiters: dict[int, list[_Stream]] = {}
        self.gpus = {r: _Gpu() for r in self.sim_ranks}
        self.rdv: dict[str, _Rendezvous] = {}
        self.plans = plans if plans is not None else {}  # same graph, topology and protocol: same plans
        self._plan_by_id: dict[tuple[Any, ...], ResolvedComm] = {}
        """:attr:`plans` by (kind, group token, size, root, algorithm), for this replay's graph only."""
        replica_size = graph.meta.get("replica_size") if isinstance(graph.meta, dict) else None
        replica_map = graph.meta.get("replica_map") if isinstance(graph.meta, dict) else None
        self.comm = CommResolver(topo, self.sim_ranks, self.fold,
                                 replica_size if isinstance(replica_size, int) and replica_size > 0 else 0,
                                 self.options.protocol, plan=self.fold_plan,
                                 replica_map=replica_map if isinstance(replica_map, dict) else None)
        self.memory: dict[int, list[tuple[float, str, int]]] = {r: [] for r in self.sim_ranks}
        self.mem_now = {r: 0 for r in self.sim_ranks}
        self.streams: list[_Stream] = []
        self.periodic: Periodicity | None = None
        self._marker: _Stream | None = None

    # ------------------------------------------------------------------------------ running
    def run(self) -> Timeline:
        """Run to completion and return the timeline."""
        t0 = time.perf_counter()
        self.streams = [_Stream(key, ops) for key, ops in self.setup.streams]
        for s in self.streams:
            self.clock.soon(self._advance, s)
        if self.options.periodic and self.streams:
            self.periodic = Periodicity(self)
            self._marker = self.periodic.marker
        events = self._loop(t0)
        self._check_finished()
        tl = self.timeline
        tl.memory = self.memory
        tl.sim_events = events
        if self.periodic is not None and self.periodic.jumps:
            tl.sim_path = "periodic"
            tl.sim_units_skipped = self.periodic.units
        if self.periodic is not None:
            self.periodic.r = None   # no replay ↔ periodicity cycle: the graph is freed by reference counting
        tl.sim_wall_s = time.perf_counter() - t0
        return tl

    def _loop(self, t0: float) -> int:
        """Process events until none is left; return how many were processed.

        With ``options.fingerprint`` every event (what it runs, on which stream, op or collective) is
        folded into :attr:`Timeline.sim_fingerprint`: two replays with equal fingerprints processed the
        same events in the same order (used by :mod:`tspsim.simulate.decode_timer`).
        """
        env = self.env
        due = self.clock.due
        popleft = due.popleft
        step = env.step
        queue = env._queue  # noqa: SLF001 - emptiness test of simpy's own queue
        limit = self.options.max_events
        wall_limit = self.options.max_wall_s
        events = 0
        check = min(100_000, limit)
        periodic = self.periodic
        fingerprint = self.options.fingerprint
        h = 0
        while True:
            while due:
                fn, arg = popleft()
                if fingerprint:
                    h = hash((h, fn.__name__, _event_key(arg)))
                fn(arg)
                events += 1
            if periodic is not None and periodic.requested:
                periodic.check()
            if not queue:
                self.timeline.sim_fingerprint = hash((h, tuple(periodic.log) if periodic is not None else ()))
                return events
            if fingerprint:
                timer = queue[0][3]
                h = hash((h, timer.fn.__name__, _event_key(timer.arg)))
            step()
            events += 1
            if events >= check:
                check += 100_000
                if events >= limit:
                    raise SimulationLimitError(
                        f"replay stopped after {limit:,} simulated events (the limit); raise it "
                        "(tspsim replay --max-events N, ReplayOptions.max_events) or simulate a smaller workload")
                if time.perf_counter() - t0 > wall_limit:
                    raise SimulationLimitError(f"replay stopped after {wall_limit:.0f} s of wall time (limit)")

    def _check_finished(self) -> None:
        blocked = blocked_streams(self)
        if blocked:
            more = f" (+{len(blocked) - 4} more)" if len(blocked) > 4 else ""
            raise DeadlockError("deadlock: " + "; ".join(blocked[:4]) + more)

    # ------------------------------------------------------------------------------ streams
    def _advance(self, s: _Stream) -> None:
        """Run stream ``s`` from its current op until an op must wait (dependency, timer, GPU, peers)."""
        ops = s.ops
        state = self.state
        n = len(ops)
        while s.pos < n:
            op = ops[s.pos]
            deps = op.deps
            if deps:
                j = s.dep
                nd = len(deps)
                while j < nd:
                    d = deps[j]
                    if state[d] != PROCESSED:
                        s.dep = j
                        w = self.waiters.get(d)
                        if w is None:
                            self.waiters[d] = [s]
                        else:
                            w.append(s)
                        return
                    j += 1
            s.start = self.env._now  # noqa: SLF001 - Environment.now without the property call
            if s is self._marker:
                self._boundary(s)
            if op.mem and self.accounting:
                self._apply_mem(op, "start")
            kind = op.kind
            if kind not in _COMPUTE:
                self._arrive(op, s)
                return
            if kind == "host":
                if op.host_us > 0:
                    self.clock.after(op.host_us * 1e-6, self._op_done, s)
                    return
            else:
                seconds = self.seconds[op.id]
                if seconds is None:
                    key = (kind, op.flops, op.hbm_bytes, op.shape)  # all compute_seconds reads of the op
                    seconds = self.by_cost.get(key)
                    if seconds is None:
                        seconds = self.by_cost[key] = compute_seconds(op, self.gpu)
                    self.seconds[op.id] = seconds
                if seconds > 0:
                    g = self.gpus[op.rank]
                    if g.job is not None:  # the compute slot is busy (an op of another compute stream): queue
                        g.waiting.append((seconds, s))
                    else:
                        self._start_job(g, seconds, s)
                    return
            self._finish(s, op)

    def _boundary(self, s: _Stream) -> None:
        """The marker stream starts an op: at a unit boundary, compare states once this instant is done."""
        periodic = self.periodic
        if periodic is not None and s.pos in periodic.boundaries:
            periodic.requested = True

    def _op_done(self, s: _Stream) -> None:
        """The current op of ``s`` has completed: record it and go on."""
        self._finish(s, s.ops[s.pos])
        self._advance(s)

    def _finish(self, s: _Stream, op: Op) -> None:
        if op.mem and self.accounting:
            self._apply_mem(op, "end")
        now = self.env._now  # noqa: SLF001
        op_id = op.id
        self.timeline.spans.append((op_id, s.start, now))
        s.last_end = now
        if self.dependents[op_id]:
            self.state[op_id] = TRIGGERED
            self.clock.due.append((self._completed, op_id))  # Clock.soon
        else:
            self.state[op_id] = PROCESSED
        s.pos += 1
        s.dep = 0

    def _completed(self, op_id: int) -> None:
        """The completion of ``op_id`` is processed: release the streams waiting for it, in order."""
        self.state[op_id] = PROCESSED
        waiting = self.waiters.pop(op_id, None)
        if waiting:
            for s in waiting:
                self._advance(s)

    # ------------------------------------------------------------------------------ memory
    def _apply_mem(self, op: Op, when: str) -> None:
        events = self.memory[op.rank]
        now = self.env.now
        for w, cat, delta in op.mem:
            if w == when:
                events.append((now, cat, delta))
                self.mem_now[op.rank] += delta

    # ------------------------------------------------------------------------------ compute
    def _start_job(self, g: _Gpu, seconds: float, s: _Stream) -> None:
        g.job_left = seconds
        g.job_last = self.env._now  # noqa: SLF001
        g.job_rate = rate = 1.0 / (1.0 + max(g.active)) if g.active and self.slowdown else 1.0  # _rate(g)
        g.job = s
        g.version += 1  # _schedule_job(g), with Clock.after inlined
        self.env.schedule(Timer(self._job_timer, (g, g.version)), NORMAL, seconds / rate)  # type: ignore[arg-type]

    def _rate(self, g: _Gpu) -> float:
        if not g.active or not self.slowdown:
            return 1.0
        return 1.0 / (1.0 + max(g.active))

    def _schedule_job(self, g: _Gpu) -> None:
        g.version += 1
        self.clock.after(g.job_left / g.job_rate, self._job_timer, (g, g.version))

    def _job_timer(self, arg: tuple[_Gpu, int]) -> None:
        g, version = arg
        if version != g.version or g.job is None:
            return  # superseded: the rate changed and a new timer was armed
        s, g.job = g.job, None
        g.job_left = 0.0
        self.clock.due.append((self._op_done, s))  # Clock.soon
        if g.waiting:
            self._start_job(g, *g.waiting.pop(0))

    def _comm_change(self, rank: int, factor: float, start: bool) -> None:
        g = self.gpus.get(rank)
        if g is None:
            return
        if g.job is not None:
            now = self.env.now
            g.job_left -= (now - g.job_last) * g.job_rate
            g.job_last = now
        if start:
            g.active.append(factor)
        else:
            g.active.remove(factor)
        if g.job is not None:
            rate = self._rate(g)
            if rate != g.job_rate:
                g.job_rate = rate
                self._schedule_job(g)

    # ------------------------------------------------------------------------------ communication
    def _arrive(self, op: Op, s: _Stream) -> None:
        """Rank ``op.rank`` reaches the collective (or send/recv) ``op``; the last arrival starts it."""
        st = self.rdv.get(op.coll)
        if st is None:
            st = self.rdv[op.coll] = _Rendezvous(op, self.setup.participants(op.group))
        st.streams[op.rank] = s
        st.ranks.append(op.rank)
        st.op_ids[op.rank] = op.id
        st.arrived += 1
        plan = self.plan_of(op)
        self._comm_change(op.rank, plan.slowdown, True)
        if st.arrived == st.expected:
            st.plan = plan
            self.clock.soon(self._comm_step, st)

    def plan_of(self, op: Op) -> ResolvedComm:
        """The resolved phases of communication op ``op`` (cached per kind, group, size, root, algorithm).

        Looked up first by the group's token (:meth:`ReplaySetup.group_token`: each tuple object hashed once), so a
        16,384-rank group is hashed and compared once per distinct group, not once per op, in the shared
        content-keyed :attr:`plans`.
        """
        key = (op.kind, self.setup.group_token(op.group), op.nbytes, op.root, op.algorithm)
        plan = self._plan_by_id.get(key)
        if plan is None:
            full = (op.kind, op.group, op.nbytes, op.root, op.algorithm)
            plan = self.plans.get(full)
            if plan is None:
                plan = self.plans[full] = self._resolve(op)
            self._plan_by_id[key] = plan
        return plan

    def _resolve(self, op: Op) -> ResolvedComm:
        return self.comm.resolve(op)

    def _comm_step(self, st: _Rendezvous) -> None:
        """Run the collective's phases: each its latency (a timer), then its flow on the network."""
        plan = st.plan
        assert plan is not None
        phases = plan.phases
        while st.phase < len(phases):
            latency, links, weights, progress = phases[st.phase]
            if latency > 0 and not st.waited:
                st.waited = True
                self.clock.after(latency, self._comm_step, st)
                return
            st.waited = False
            st.phase += 1
            if links and progress > 0:
                self.net.start(links, progress, self._flow_done, st, tag=st.op.coll, weights=weights)
                return
        self._comm_end(st, plan)

    def _flow_done(self, st: _Rendezvous) -> None:
        self.clock.soon(self._comm_step, st)

    def _comm_end(self, st: _Rendezvous, plan: ResolvedComm) -> None:
        if self.accounting:
            self.account_comm(st.op_ids, plan)
            if self.periodic is not None:
                self.periodic.comm_log.append((st.op_ids, plan))
        for r in st.ranks:
            self._comm_change(r, plan.slowdown, False)
        for r in st.ranks:
            self.clock.soon(self._op_done, st.streams[r])
        del self.rdv[st.op.coll]

    def account_comm(self, op_ids: dict[int, int], plan: ResolvedComm) -> None:
        """Add a finished communication op's bytes and algorithm to the timeline (see ``replay_records``)."""
        account_comm(self.timeline, self.graph, self.sim_ranks, op_ids, plan)

def _event_key(arg: Any) -> Any:
    """What an event acts on, comparable across replays: a stream and its position, an op, a version."""
    if isinstance(arg, _Stream):
        return arg.key, arg.pos
    if isinstance(arg, _Rendezvous):
        return arg.op.id, arg.phase
    if isinstance(arg, tuple):  # (GPU, version) of a compute timer
        return arg[1]
    return arg


def replay(graph: OpGraph, topo: Topology, options: ReplayOptions | None = None, plans: Any = None,
           setup: ReplaySetup | None = None) -> Timeline:
    """Replay ``graph`` on ``topo`` and return its Timeline (``plans``, ``setup``: see :class:`Replay`)."""
    return Replay(graph, topo, options, plans, setup).run()
