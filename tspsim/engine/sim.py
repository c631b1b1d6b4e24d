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

A replay that ends with ops still waiting is a deadlock and raises :class:`DeadlockError` naming the
blocked ranks and ops; event and wall-time limits raise :class:`SimulationLimitError`.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import simpy

from tspsim.core.errors import DeadlockError, SimulationLimitError
from tspsim.engine.comm import CommResolver, ResolvedComm
from tspsim.engine.costs import compute_seconds, kernel_gpu
from tspsim.engine.network import Flow, Network
from tspsim.engine.timeline import Timeline
from tspsim.opgraph import P2P_KINDS, Op, OpGraph
from tspsim.spec.topology import Topology


@dataclass(frozen=True)
class ReplayOptions:
    """Knobs of one replay."""

    record_links: bool = False
    """Record per-link rate steps for the viewer (costs time and memory)."""
    max_events: int = 50_000_000
    """Stop with an error after this many simpy events."""
    max_wall_s: float = 3600.0
    """Stop with an error after this many wall-clock seconds."""
    overlap_slowdown: bool = True
    """Apply the topology's compute slowdown while communication kernels run."""
    protocol: str = ""
    """Force one wire protocol (LL, LL128, Simple) on every collective, like NCCL_PROTO; empty: the policy's."""


class _Gpu:
    """Compute state of one rank: the running job, the jobs waiting for the slot, the comm kernels.

    A GPU runs one compute job at a time (one compute slot); a compute op issued on another stream of
    the same rank while a job runs waits, first come first served, and starts when the slot frees.
    """

    __slots__ = ("active", "job_left", "job_rate", "job_event", "job_last", "version", "waiting")

    def __init__(self) -> None:
        self.active: list[float] = []
        self.job_left = 0.0
        self.job_rate = 1.0
        self.job_event: simpy.Event | None = None
        self.job_last = 0.0
        self.version = 0
        self.waiting: list[tuple[float, simpy.Event]] = []


class _Rendezvous:
    __slots__ = ("op", "expected", "arrived", "events", "ranks", "op_ids")

    def __init__(self, op: Op, expected: int) -> None:
        self.op = op
        self.expected = expected
        self.arrived = 0
        self.events: dict[int, simpy.Event] = {}
        self.ranks: list[int] = []
        self.op_ids: dict[int, int] = {}


class Replay:
    """One replay of ``graph`` on ``topo``; call :meth:`run` once."""

    def __init__(self, graph: OpGraph, topo: Topology, options: ReplayOptions | None = None) -> None:
        self.graph = graph
        self.topo = topo
        self.options = options or ReplayOptions()
        self.env = simpy.Environment()
        self.sim_ranks = set(graph.ranks) or {op.rank for op in graph.ops}
        bad = [r for r in self.sim_ranks if not 0 <= r < topo.world_size]
        if bad:
            from tspsim.core.errors import TraceError
            raise TraceError(f"op graph uses rank {bad[0]} but topology {topo.name} has {topo.world_size} GPUs; "
                             "replay it on a larger topology")
        checked: set[tuple[int, ...]] = set()
        for op in graph.ops:
            if op.is_comm and op.group not in checked:
                checked.add(op.group)
                if min(op.group) < 0 or max(op.group) >= topo.world_size:
                    from tspsim.core.errors import TraceError
                    raise TraceError(f"op {op.id} ({op.name}) names a rank outside topology {topo.name} "
                                     f"({topo.world_size} GPUs)")
        self.fold_plan = None
        self.fold = self._fold_nodes() if graph.replica_nodes else 0
        self.gpu = kernel_gpu(topo.gpu, graph.meta or {})
        self.timeline = Timeline(graph=graph, topology_name=topo.name)
        self.net = Network(self.env, [link.capacity_Bps for link in topo.links],
                           on_rates=self._record_rates if self.options.record_links else None)
        self.done = [self.env.event() for _ in graph.ops]
        self.gpus = {r: _Gpu() for r in self.sim_ranks}
        self.rdv: dict[str, _Rendezvous] = {}
        self.plans: dict[tuple[Any, ...], ResolvedComm] = {}
        replica_size = graph.meta.get("replica_size") if isinstance(graph.meta, dict) else None
        replica_map = graph.meta.get("replica_map") if isinstance(graph.meta, dict) else None
        self.comm = CommResolver(topo, self.sim_ranks, self.fold,
                                 replica_size if isinstance(replica_size, int) and replica_size > 0 else 0,
                                 self.options.protocol, plan=self.fold_plan,
                                 replica_map=replica_map if isinstance(replica_map, dict) else None)
        self.memory = {r: [] for r in self.sim_ranks}
        self.mem_now = {r: 0 for r in self.sim_ranks}
        self.position: dict[tuple[int, str], int] = {}
        self._recorded_links: set[int] = set()
        if self.options.record_links:
            self._recorded_links = self._links_to_record()

    # ------------------------------------------------------------------------------ running
    def run(self) -> Timeline:
        """Run to completion and return the timeline."""
        t0 = time.perf_counter()
        streams = self.graph.streams()
        for key, ops in streams.items():
            self.position[key] = 0
            self.env.process(self._stream(key, ops))
        env = self.env
        events = 0
        limit = self.options.max_events
        wall_limit = self.options.max_wall_s
        step = env.step
        try:
            while True:
                step()
                events += 1
                if events >= limit:
                    raise SimulationLimitError(
                        f"replay stopped after {limit:,} simulated events (the limit); raise it "
                        "(tspsim replay --max-events N, ReplayOptions.max_events) or simulate a smaller workload")
                if events % 100_000 == 0 and time.perf_counter() - t0 > wall_limit:
                    raise SimulationLimitError(f"replay stopped after {wall_limit:.0f} s of wall time (limit)")
        except simpy.core.EmptySchedule:
            pass
        self._check_finished(streams)
        tl = self.timeline
        tl.memory = self.memory
        tl.sim_events = events
        tl.sim_wall_s = time.perf_counter() - t0
        return tl

    def _check_finished(self, streams: dict[tuple[int, str], list[Op]]) -> None:
        blocked = []
        for key, ops in streams.items():
            pos = self.position[key]
            if pos < len(ops):
                op = ops[pos]
                waiting = ""
                if op.is_comm and op.coll in self.rdv and op.rank in self.rdv[op.coll].ranks:
                    st = self.rdv[op.coll]
                    missing = sorted(set(r for r in op.group if r in self.sim_ranks) - set(st.ranks))
                    waiting = f" waiting for ranks {missing[:8]}"
                elif op.deps:
                    pending = [d for d in op.deps if not self.done[d].triggered]
                    if pending:
                        dep = self.graph.ops[pending[0]]
                        waiting = f" waiting for {dep.name} (rank {dep.rank})"
                blocked.append(f"rank {key[0]} stream {key[1]} at op {op.id} {op.name}{waiting}")
        if blocked:
            more = f" (+{len(blocked) - 4} more)" if len(blocked) > 4 else ""
            raise DeadlockError("deadlock: " + "; ".join(blocked[:4]) + more)

    def _stream(self, key: tuple[int, str], ops: list[Op]) -> Generator[simpy.Event, Any, None]:
        done = self.done
        env = self.env
        spans = self.timeline.spans
        gpu = self.gpu
        for i, op in enumerate(ops):
            self.position[key] = i
            for d in op.deps:
                ev = done[d]
                if not ev.processed:
                    yield ev
            start = env.now
            if op.mem:
                self._apply_mem(op, "start")
            if op.kind == "host":
                if op.host_us > 0:
                    yield env.timeout(op.host_us * 1e-6)
            elif op.is_compute:
                seconds = compute_seconds(op, gpu)
                if seconds > 0:
                    yield self._compute(op.rank, seconds)
            else:
                yield self._arrive(op)
            if op.mem:
                self._apply_mem(op, "end")
            spans.append((op.id, start, env.now))
            done[op.id].succeed()
        self.position[key] = len(ops)

    # ------------------------------------------------------------------------------ memory
    def _apply_mem(self, op: Op, when: str) -> None:
        events = self.memory[op.rank]
        now = self.env.now
        for w, cat, delta in op.mem:
            if w == when:
                events.append((now, cat, delta))
                self.mem_now[op.rank] += delta

    # ------------------------------------------------------------------------------ compute
    def _compute(self, rank: int, seconds: float) -> simpy.Event:
        g = self.gpus[rank]
        event = self.env.event()
        if g.job_event is not None:  # the compute slot is busy (an op of another compute stream): queue
            g.waiting.append((seconds, event))
            return event
        self._start_job(g, seconds, event)
        return event

    def _start_job(self, g: _Gpu, seconds: float, event: simpy.Event) -> None:
        g.job_left = seconds
        g.job_last = self.env.now
        g.job_rate = self._rate(g)
        g.job_event = event
        self._schedule_job(g)

    def _rate(self, g: _Gpu) -> float:
        if not g.active or not self.options.overlap_slowdown:
            return 1.0
        return 1.0 / (1.0 + max(g.active))

    def _schedule_job(self, g: _Gpu) -> None:
        g.version += 1
        version = g.version
        ev = self.env.timeout(g.job_left / g.job_rate)
        ev.callbacks.append(lambda _e: self._job_timer(g, version))

    def _job_timer(self, g: _Gpu, version: int) -> None:
        if version != g.version or g.job_event is None:
            return
        event, g.job_event = g.job_event, None
        g.job_left = 0.0
        event.succeed()
        if g.waiting:
            self._start_job(g, *g.waiting.pop(0))

    def _comm_change(self, rank: int, factor: float, start: bool) -> None:
        g = self.gpus.get(rank)
        if g is None:
            return
        if g.job_event is not None:
            now = self.env.now
            g.job_left -= (now - g.job_last) * g.job_rate
            g.job_last = now
        if start:
            g.active.append(factor)
        else:
            g.active.remove(factor)
        if g.job_event is not None:
            rate = self._rate(g)
            if rate != g.job_rate:
                g.job_rate = rate
                self._schedule_job(g)

    # ------------------------------------------------------------------------------ communication
    def _arrive(self, op: Op) -> simpy.Event:
        st = self.rdv.get(op.coll)
        if st is None:
            expected = sum(1 for r in set(op.group) if r in self.sim_ranks)
            st = self.rdv[op.coll] = _Rendezvous(op, expected)
        ev = self.env.event()
        st.events[op.rank] = ev
        st.ranks.append(op.rank)
        st.op_ids[op.rank] = op.id
        st.arrived += 1
        plan = self._plan(op)
        self._comm_change(op.rank, plan.slowdown, True)
        if st.arrived == st.expected:
            self.env.process(self._run_comm(st, plan))
        return ev

    def _plan(self, op: Op) -> ResolvedComm:
        key = (op.kind, op.group, op.nbytes, op.root, op.algorithm)
        plan = self.plans.get(key)
        if plan is None:
            plan = self.plans[key] = self._resolve(op)
        return plan

    def _resolve(self, op: Op) -> ResolvedComm:
        return self.comm.resolve(op)

    def _fold_nodes(self) -> int:
        """Nodes of the simulated unit of a folded graph on this topology (0: nothing is mirrored).

        The unit is the graph's simulated ranks ``[0, n)``; it need not be the unit the graph was made
        for (a graph folded on 2 × 8 GPUs holds 4 nodes of an 8 × 2 topology), but the fold must be exact
        here (:func:`tspsim.spec.layout.fold_fault`), else the replay is refused rather than wrong.
        """
        from tspsim.core.errors import TraceError
        from tspsim.spec.layout import fold_fault

        n = len(self.sim_ranks)
        world = 1 + max((max(op.group) for op in self.graph.ops if op.is_comm), default=0)
        if world <= n:
            return 0
        topo = self.topo
        meta = self.graph.meta if isinstance(self.graph.meta, dict) else {}
        if "fold" in meta:  # a general fold (stage slabs, tensor-parallel peers): tspsim.spec.fold
            from tspsim.spec.fold import FoldPlan

            plan = FoldPlan.from_meta(meta["fold"])
            recorded = meta.get("world_size")
            if isinstance(recorded, int) and not isinstance(recorded, bool) and world < recorded <= topo.world_size:
                world = recorded   # mirrors that exchange nothing with simulated ranks still count
            nodes = -(-world // topo.gpus_per_node)
            fault = plan.fault(nodes, topo.gpus_per_node) or (
                None if self.sim_ranks == set(plan.simulated(world)) else "its simulated ranks are not the plan's")
            if fault:
                raise TraceError(f"the graph is folded (it simulates {n} of {world} GPUs and mirrors the rest) and "
                                 f"the fold is not exact on {topo.name}: {fault}; generate it with --full, or on "
                                 "this topology")
            self.fold_plan = plan
            return plan.unit_nodes
        fault = None if self.sim_ranks == set(range(n)) else f"its simulated ranks are not 0..{n - 1}"
        fault = fault or fold_fault(topo, world, n)
        if fault:
            raise TraceError(f"the graph is folded (it simulates {n} of {world} GPUs and mirrors the rest) and the "
                             f"fold is not exact on {topo.name} ({topo.nodes} × {topo.gpus_per_node} GPUs): "
                             f"{fault}; generate it with --full, or on this topology")
        return n // topo.gpus_per_node

    def _run_comm(self, st: _Rendezvous, plan: ResolvedComm) -> Generator[simpy.Event, Any, None]:
        env = self.env
        net = self.net
        for latency, links, weights, progress in plan.phases:
            if latency > 0:
                yield env.timeout(latency)
            if links:
                event = net.transfer(links, progress, tag=st.op.coll, weights=weights)
                if not event.triggered:
                    yield event
        kind = "send" if st.op.kind in P2P_KINDS else st.op.kind
        tl = self.timeline
        for r, b in plan.sent.items():
            per = tl.sent_bytes.setdefault(r, {})
            per[kind] = per.get(kind, 0.0) + b
        for r, b in plan.recv.items():
            if r in self.sim_ranks:
                per = tl.recv_bytes.setdefault(r, {})
                per[kind] = per.get(kind, 0.0) + b
        for r, op_id in st.op_ids.items():
            tl.op_sent_bytes[op_id] = plan.sent.get(r, 0.0)
        tl.collective_algorithms[plan.algorithm] = tl.collective_algorithms.get(plan.algorithm, 0) + 1
        for r in st.ranks:
            self._comm_change(r, plan.slowdown, False)
        for r in st.ranks:
            st.events[r].succeed()
        del self.rdv[st.op.coll]

    # ------------------------------------------------------------------------------ links
    def _links_to_record(self) -> set[int]:
        nodes = {self.topo.node_of(r) for r in self.sim_ranks}
        out = set()
        for link in self.topo.links:
            if link.node in nodes and link.kind != "pcie":
                out.add(link.index)
                self.timeline.link_meta[link.index] = {"src": link.src, "dst": link.dst, "kind": link.kind,
                                                       "capacity_Bps": link.capacity_Bps}
        return out

    def _record_rates(self, now: float, flows: list[Flow]) -> None:
        load: dict[int, float] = {}
        for f in flows:
            for link, w in zip(f.links, f.weights):
                if link in self._recorded_links:
                    load[link] = load.get(link, 0.0) + f.rate * w
        series = self.timeline.links
        for link in self._recorded_links:
            rate = load.get(link, 0.0)
            s = series.get(link)
            if s is None:
                if rate == 0.0:
                    continue
                s = series[link] = [(0.0, 0.0)]
            if s[-1][1] != rate:
                if s[-1][0] == now:
                    s[-1] = (now, rate)
                else:
                    s.append((now, rate))


def replay(graph: OpGraph, topo: Topology, options: ReplayOptions | None = None) -> Timeline:
    """Replay ``graph`` on ``topo`` and return its :class:`~tspsim.engine.timeline.Timeline`."""
    return Replay(graph, topo, options).run()
