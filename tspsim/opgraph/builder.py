"""The :class:`GraphBuilder` schedules append ops to, in issue order."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tspsim.core.errors import ConfigError
from tspsim.opgraph.graph import OpGraph
from tspsim.opgraph.op import Op


class GraphBuilder:
    """Appends ops in issue order; schedules use it to build an :class:`OpGraph`.

    Each call returns op ids so later ops can depend on them. Collectives and p2p transfers get
    fresh ids shared by all participants.
    """

    def __init__(self, ranks: Sequence[int], meta: dict[str, Any] | None = None, replica_nodes: int = 0, *,
                 max_ops: int = 0, over_limit: str = "") -> None:
        """Start an empty graph of ``ranks``.

        ``max_ops`` > 0 stops the build with one :class:`~tspsim.core.errors.ConfigError` line once the
        graph holds that many ops; ``over_limit`` is the way out the message names.
        """
        self.graph = OpGraph(meta=dict(meta or {}), ranks=tuple(ranks), replica_nodes=replica_nodes)
        self._next_coll = 0
        self._sim = frozenset(self.graph.ranks)
        """The simulated ranks, as a set (the graph's ranks are fixed when it is started)."""
        self.max_ops = max_ops
        self.over_limit = over_limit

    def _add(self, op: Op) -> int:
        ops = self.graph.ops
        op.id = n = len(ops)
        if self.max_ops and n >= self.max_ops:
            raise ConfigError(f"the op graph passed {self.max_ops:,} ops on {len(self.graph.ranks):,} simulated GPUs "
                              f"while being built (the limit; ~1–3 KB of memory each); {self.over_limit}")
        ops.append(op)
        return n

    def add(self, op: Op) -> int:
        """Append ``op`` (built by the caller; its id is assigned here) and return its id.

        The fast path for callers that build many ops with known field types; :meth:`compute` is the general one.
        """
        return self._add(op)

    def compute(self, rank: int, kind: str, name: str, *, flops: float = 0.0, hbm_bytes: float = 0.0,
                shape: Iterable[int] = (), layer: int = -1, phase: str = "fwd", deps: Iterable[int] = (),
                mem: Iterable[tuple[str, str, int]] = (), stream: str = "compute") -> int:
        """Add a compute op on ``rank``'s compute stream; returns its id."""
        # positional fields (id … deps, see Op): the hot path of graph building
        return self._add(Op(0, rank, stream, kind, name, layer, phase, float(flops), float(hbm_bytes),
                            tuple(map(int, shape)) if shape else (), 0, (), "", -1, "", tuple(mem) if mem else (),
                            [d for d in deps if d is not None]))

    def memory(self, rank: int, name: str, mem: Iterable[tuple[str, int]], *, layer: int = -1,
               phase: str = "fwd", deps: Iterable[int] = (), stream: str = "compute") -> int:
        """Add a zero-cost op that only allocates (+bytes) or frees (−bytes) memory."""
        return self.compute(rank, "memory", name, layer=layer, phase=phase, deps=deps, stream=stream,
                            mem=[("start", cat, int(b)) for cat, b in mem])

    def new_coll_id(self, prefix: str) -> str:
        """A fresh collective id."""
        self._next_coll += 1
        return f"{prefix}#{self._next_coll}"

    def collective(self, kind: str, group: Sequence[int], nbytes: int, name: str, *, stream: str = "comm",
                   layer: int = -1, phase: str = "fwd", deps: dict[int, Iterable[int]] | None = None,
                   root: int = -1, algorithm: str = "", mem: dict[int, Iterable[tuple[str, str, int]]] | None = None,
                   issuers: Iterable[int] | None = None) -> dict[int, int]:
        """Add one op per issuing rank for a collective on ``group``; returns {rank: op id}.

        ``issuers`` defaults to the members of ``group`` that this graph simulates (a folded graph holds
        one replica; the other members are mirrors the engine treats as symmetric copies).
        """
        coll = self.new_coll_id(kind)
        group_t = tuple(group)
        sim = self._sim
        who = [r for r in (issuers if issuers is not None else group_t) if r in sim]
        nbytes = int(nbytes)
        deps = deps or {}
        mem = mem or {}
        out = {}
        for r in who:   # positional fields (id … deps, see Op)
            out[r] = self._add(Op(0, r, stream, kind, name, layer, phase, 0.0, 0.0, (), nbytes, group_t, coll, root,
                                  algorithm, tuple(mem.get(r, ())), [d for d in deps.get(r, ()) if d is not None]))
        return out

    def p2p(self, src: int, dst: int, nbytes: int, name: str, *, send_stream: str = "comm",
            recv_stream: str = "comm", layer: int = -1, phase: str = "fwd", send_deps: Iterable[int] = (),
            recv_deps: Iterable[int] = (), recv_mem: Iterable[tuple[str, str, int]] = (),
            send_mem: Iterable[tuple[str, str, int]] = ()) -> tuple[int | None, int | None]:
        """Add a send on ``src`` and a recv on ``dst`` (each only if simulated); returns their ids."""
        coll = self.new_coll_id("p2p")
        sim = self._sim
        s = r = None
        if src in sim:
            s = self._add(Op(0, src, send_stream, "send", f"{name}", layer, phase, nbytes=int(nbytes),
                             group=(src, dst), coll=coll, mem=tuple(send_mem),
                             deps=[d for d in send_deps if d is not None]))
        if dst in sim:
            r = self._add(Op(0, dst, recv_stream, "recv", f"{name}", layer, phase, nbytes=int(nbytes),
                             group=(src, dst), coll=coll, mem=tuple(recv_mem),
                             deps=[d for d in recv_deps if d is not None]))
        return s, r

