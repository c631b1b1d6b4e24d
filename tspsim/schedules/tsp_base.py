"""Shared machinery of the TSP generators (:mod:`tspsim.schedules.tsp`).

Groups, owners, collectives over the TSP group, the point-to-point ring, activation bookkeeping and the
vocabulary ring. Rank p of a TSP group of degree D holds tokens X_p (B·S/D, zig-zag) and owns weight shard p
of every layer (tsp.md §1); the ring sends to p+1 and receives from p−1.
"""

from __future__ import annotations

from tspsim.core.errors import ConfigError
from tspsim.schedules.context import BuildContext

Mem = list[tuple[str, str, int]]


class TspBase:
    """Groups, collectives, the weight ring and saved-activation bookkeeping of one TSP step."""

    def __init__(self, ctx: BuildContext) -> None:
        self.c = ctx
        m, w = ctx.model, ctx.workload
        self.D = ctx.layout.tp
        self.B, self.S, self.H = w.batch, w.seq_len, m.hidden
        self.n = self.B * self.S // self.D                     # own tokens
        self.s = m.dtype_bytes
        self.q_l, self.kv_l = m.q_dim // self.D, m.kv_dim // self.D
        self.heads_l = m.q_heads // self.D
        self.i_l = m.ffn_hidden // self.D
        self.attn_shard = m.attn_params // self.D                # elements per attention shard
        self.mlp_shard = m.mlp_params // self.D
        self.vocab_shard = m.vocab * m.hidden // self.D
        if self.heads_l % ctx.opts.kv_buckets:
            raise ConfigError(f"option kv_buckets={ctx.opts.kv_buckets} does not divide the {self.heads_l} heads of a "
                              f"TSP head shard (D={self.D}); use a divisor of {self.heads_l}")
        self.saved: dict[tuple[int, int, int], dict[str, int]] = {}
        self.scores_saved: dict[tuple[int, int], bool] = {}
        self.orig: dict[tuple[int, int, int], dict[str, int]] = {}
        self.prev_attn_done: dict[int, int | None] = {}
        self.mb = 0
        """Micro-batch being emitted (saved activations are kept per micro-batch, layer and rank)."""
        self.tag = ""
        """Inserted after ``L<layer>.`` in op names (``mb<k>.`` when a step has several micro-batches)."""

    def key(self, layer: int, rank: int) -> tuple[int, int, int]:
        """Key of (micro-batch, layer, rank) in the saved-activation bookkeeping."""
        return self.mb, layer, rank

    # ------------------------------------------------------------------------------ helpers
    def group(self, rank: int) -> tuple[int, ...]:
        """The D ranks of ``rank``'s TSP group."""
        base = rank - rank % self.D
        return tuple(range(base, base + self.D))

    def owner(self, rank: int, r: int) -> int:
        """Global rank of weight owner ``r`` in ``rank``'s group."""
        return rank - rank % self.D + r

    def collective(self, kind: str, nbytes: float, name: str, *, stream: str, layer: int, phase: str,
                   deps: dict[int, list[int | None]], root_index: int = -1,
                   mem: dict[int, Mem] | None = None) -> dict[int, int]:
        """One collective per TSP group among the simulated ranks."""
        c = self.c
        out: dict[int, int] = {}
        for r0 in c.ranks:
            if r0 in out:
                continue
            g = self.group(r0)
            members = [x for x in g if x in c.last]
            root = g[root_index] if root_index >= 0 else -1
            out.update(c.builder.collective(kind, g, int(nbytes), name, stream=stream, layer=layer, phase=phase,
                                            deps={x: deps.get(x, []) for x in members}, root=root,
                                            issuers=members, mem={x: (mem or {}).get(x, []) for x in members}))
        return out

    def ring(self, step: int, nbytes: float, name: str, *, layer: int, phase: str,
             send_deps: dict[int, list[int | None]], recv_deps: dict[int, list[int | None]],
             recv_mem: dict[int, Mem] | None = None) -> dict[int, int]:
        """Every rank sends to p+1 and receives from p−1; returns {rank: recv op id}."""
        c = self.c
        recvs: dict[int, int] = {}
        for p in c.ranks:
            g = self.group(p)
            dst = g[(g.index(p) + 1) % self.D]
            if dst not in c.last:
                continue
            s_op, r_op = c.builder.p2p(p, dst, int(nbytes), f"{name}[step {step}]", send_stream="weights_tx",
                                       recv_stream="weights", layer=layer, phase=phase,
                                       send_deps=send_deps.get(p, []), recv_deps=recv_deps.get(dst, []),
                                       recv_mem=(recv_mem or {}).get(dst, []))
            if r_op is not None:
                recvs[dst] = r_op
        return recvs

    def move_shard(self, j: int, recv: dict[int, int], downs: dict[int, list[int]], start: dict[int, int | None],
                   shard_bytes: float, name: str, layer: int, phase: str) -> dict[int, int]:
        """Ring transfer of the MLP shard for step j+1 into the buffer step j+1−w freed; {rank: recv op}.

        The send waits for the shard to have arrived (step j's receive; ``start`` for j = 0); the receive
        waits for the buffer to be free (the down projection of step j+1−w, or ``start``).
        """
        if j >= self.D - 1:
            return {}
        c, w = self.c, self.c.opts.weight_buffers
        send_deps = {r: [recv.get(r)] if j > 0 else [start[r]] for r in c.ranks}
        recv_deps = {r: [downs[r][j + 1 - w]] if j + 1 - w >= 0 else [start[r]] for r in c.ranks}
        return self.ring(j, shard_bytes, name, layer=layer, phase=phase, send_deps=send_deps, recv_deps=recv_deps,
                         recv_mem={r: [("start", "comm_buffers", int(shard_bytes))] for r in c.ranks})

    def _save(self, layer: int, rank: int, item: str, nbytes: int) -> None:
        store = self.saved.setdefault(self.key(layer, rank), {})
        store[item] = store.get(item, 0) + int(nbytes)

    @staticmethod
    def _release(saved: dict[str, int], orig: dict[str, int], item: str, step: int, parts: int) -> Mem:
        """Release the part of a saved item used by backward step ``step`` of ``parts`` (last takes the rest)."""
        if saved.get(item, 0) <= 0:
            return []
        take = saved[item] if step == parts - 1 else min(saved[item], orig.get(item, 0) // parts)
        saved[item] -= take
        if saved[item] <= 0:
            saved.pop(item)
        return [("end", "activations", -int(take))] if take else []

    @staticmethod
    def _free_all(saved: dict[str, int], item: str) -> Mem:
        b = saved.pop(item, 0)
        return [("end", "activations", -int(b))] if b else []

    # ------------------------------------------------------------------------------ vocab ring
    def vocab_ring(self, name: str, phase: str, per_step_gemm: tuple[float, float, float], scale: float,
                   grad_ring: bool) -> None:
        """Embedding / LM head shards ride the ring like the MLP (D−1 transfers, + gradients if training)."""
        c, D = self.c, self.D
        shard_bytes = self.vocab_shard * self.s
        recv: dict[int, int] = {}
        start = {r: c.last[r] for r in c.ranks}
        for j in range(D):
            nxt = self.ring(j, shard_bytes, f"{name}.weights_ring", layer=-1, phase=phase,
                            send_deps={r: [recv.get(r)] if j > 0 else [start[r]] for r in c.ranks},
                            recv_deps={r: [start[r]] for r in c.ranks},
                            recv_mem={r: [("start", "comm_buffers", int(shard_bytes))] for r in c.ranks}) \
                if j < D - 1 else {}
            for r in c.ranks:
                m_, n_, k_ = per_step_gemm
                c.gemm(r, f"{name}[step {j}]", m_, n_, k_, layer=-1, phase=phase,
                       after=[c.last[r], recv.get(r) if j > 0 else None], scale=scale,
                       mem=[("end", "comm_buffers", -int(shard_bytes))] if j > 0 else [])
            if grad_ring and j >= 1:
                self.ring(j, self.vocab_shard * c.opts.grad_bytes, f"{name}.grad_ring", layer=-1, phase=phase,
                          send_deps={r: [c.last[r]] for r in c.ranks}, recv_deps={r: [c.last[r]] for r in c.ranks})
            recv = nxt
