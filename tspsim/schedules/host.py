"""The CPU lane of an eager stack: a host op in front of every kernel (stacks with ``host.launch: host``).

In eager PyTorch the CPU runs the training script and launches every kernel (compute, NCCL/RCCL
collectives, copies) in program order, asynchronously: it runs ahead of the GPU as long as each launch
takes less CPU time than the kernel before it takes GPU time, and the GPU idles whenever it does not.
:class:`HostedBuilder` models exactly that: each rank gets a stream ``host`` whose ops (kind ``host``,
``host_us`` each) the engine runs one after the other on the rank's CPU, and every kernel depends on its
own launch. Issue order on the host stream is the order ops are added to the graph, which is each rank's
program order. Ops that are not kernels (``memory`` bookkeeping, other host ops) get no launch.

A step run as a captured graph (CUDA/HIP graphs, ``host.capture``) has one host op instead — the graph
launch plus the per-step overhead — gating the first kernel of each of the rank's streams; the kernels
then follow each other on the GPU with the graph's device-side gap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tspsim.opgraph import GraphBuilder, Op

HOST_STREAM = "host"
"""Stream name of a rank's CPU lane (a lane of its own in the viewer)."""


def is_kernel(op: Op) -> bool:
    """True for ops a CPU launches: collectives, transfers and compute kernels (not memory or host ops)."""
    return op.kind not in ("memory", "host")


class HostedBuilder(GraphBuilder):
    """A :class:`~tspsim.opgraph.GraphBuilder` that adds the CPU lane: a launch op per kernel, or one graph launch."""

    def __init__(self, ranks: Sequence[int], meta: dict[str, Any] | None = None, replica_nodes: int = 0, *,
                 launch_us: float, captured: bool, max_ops: int = 0, over_limit: str = "") -> None:
        """Start an empty graph with a CPU lane (``launch_us`` per launch; one launch when ``captured``)."""
        super().__init__(ranks, meta=meta, replica_nodes=replica_nodes, max_ops=max_ops, over_limit=over_limit)
        self.launch_us = launch_us
        """CPU time of one kernel launch (or one graph launch), µs."""
        self.captured = captured
        """The step runs as a captured graph (one launch) rather than kernel by kernel."""
        self._gate: dict[int, int] = {}
        self._started: set[tuple[int, str]] = set()

    def start_step(self, rank: int, overhead_us: float) -> None:
        """The CPU's work before the first kernel of ``rank``: the step overhead (and the graph launch if captured)."""
        if self.captured:
            self._gate[rank] = self._host(rank, "host.graph_launch", self.launch_us + overhead_us, "fwd", -1)
        elif overhead_us > 0:
            self._host(rank, "host.step_overhead", overhead_us, "fwd", -1)

    def _host(self, rank: int, name: str, us: float, phase: str, layer: int) -> int:
        return super()._add(Op(0, rank, HOST_STREAM, "host", name, layer, phase, host_us=us))

    def _add(self, op: Op) -> int:
        if is_kernel(op):
            if not self.captured:
                op.deps.append(self._host(op.rank, f"launch {op.name}", self.launch_us, op.phase, op.layer))
            elif (op.rank, op.stream) not in self._started and op.rank in self._gate:
                op.deps.append(self._gate[op.rank])
            self._started.add((op.rank, op.stream))
        return super()._add(op)
