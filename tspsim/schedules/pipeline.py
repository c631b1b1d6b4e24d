"""A training or forward step as micro-batches flowing through pipeline stages (PTD-P, Narayanan et al. 2021).

A schedule's *program* (:class:`Program`: the standard block's in :mod:`tspsim.schedules.standard`, TSP's in
:mod:`tspsim.schedules.tsp_step`) emits one forward or backward pass of one model chunk for one micro-batch on
the ranks of one stage. :func:`run_step` runs the passes in the order of the pipeline schedule
(:mod:`tspsim.schedules.pipeline_order`: GPipe, 1F1B, interleaved 1F1B) on each stage's compute stream and
joins the stages by point-to-point transfers over the real links, so the bubble is not a formula: it is
where a stage waits for a transfer.

* **Transfers.** A forward pass of virtual stage v sends its output activation to v + 1 (stage
  (s + 1) mod P), a backward pass its input gradient to v − 1, on per-direction streams (``pp_send_fwd``,
  ``pp_send_bwd``; receives on ``pp_recv_fwd``, ``pp_recv_bwd``). Each rank sends its own slice: a
  sequence-sharded residual (``satp-seq``, TSP) is already split; a residual replicated over the TP group is
  sent as 1/T slices and all-gathered by the receiving stage over the node fabric (``pp_scatter_gather``,
  Narayanan et al. 2021 §4.1). With ``pp_overlap_p2p`` (Megatron-Core's ``overlap_p2p_comm``) a stage posts
  the receive of a pass's input when it starts the pass before, and its sends run beside compute. Without it
  (Megatron-LM 2022: batched isend/irecv, then wait) a stage posts the receive when it finishes the pass before
  (1F1B's ``send_forward_recv_backward`` / ``send_backward_recv_forward``) — with interleaving, when it finishes
  its previous pass of the same kind, so that whenever it waits its next forward and next backward inputs are
  posted, as the batched ``send_forward_backward_recv_forward_backward`` does (no cycle of sends can then
  block) — and waits for its sends before it starts the next pass.
  A posted receive is a communication kernel like any other: it is active (and slows the GPU's compute by the
  fabric's ``compute_slowdown``) from when it is posted.
* **Memory.** A received activation is kept until the backward pass of that micro-batch and chunk (the first
  block's saved input), a received gradient until the end of its pass; activations saved by the blocks are kept
  per micro-batch, so a stage holds as many micro-batches as its schedule has in flight (1F1B: P − s on stage
  s; GPipe: m).
* **Gradients.** Without ZeRO ≥ 2 they accumulate over the micro-batches and are reduced during each chunk's
  last backward pass (Megatron-Core's overlapped reduction); with ZeRO ≥ 2 every backward pass reduce-scatters
  each layer. With tied embeddings, the first and last stage each hold the word embedding and all-reduce its
  gradient between them before the optimizer (Megatron's embedding group).

Without a pipeline and with one micro-batch the step is the program's single forward and backward, op for op
what the schedules emitted before pipelines existed.
"""

from __future__ import annotations

from typing import Any, Protocol

from tspsim.opgraph import OpGraph
from tspsim.schedules.context import BuildContext
from tspsim.schedules.pipeline_order import Pass, pass_order
from tspsim.schedules.rank_groups import distinct_groups


class Program(Protocol):
    """What a schedule emits for the pipeline driver (one pass at a time, on ``ctx.ranks``)."""

    name: str
    """Schedule name recorded in results."""

    def local_params(self, rank: int) -> float:  # noqa: D102
        ...

    def set_micro_batch(self, mb: int, tagged: bool) -> None:  # noqa: D102
        ...

    def forward(self, stage: int, chunk: int) -> None:  # noqa: D102
        ...

    def backward(self, stage: int, chunk: int) -> None:  # noqa: D102
        ...

    def boundary(self) -> tuple[float, bool]:  # noqa: D102
        ...

    def tp_group(self, rank: int) -> tuple[int, ...]:  # noqa: D102
        ...

    def word_embedding_grads(self) -> float:  # noqa: D102
        ...

    def meta(self) -> dict[str, Any]:  # noqa: D102
        ...


def run_step(ctx: BuildContext, prog: Program) -> OpGraph:
    """The whole step of ``prog`` on ``ctx``'s layout: static memory, passes, gradient sync, optimizer."""
    lay = ctx.layout
    params = {r: prog.local_params(r) for r in ctx.ranks}
    ctx.init_static(params)
    if lay.pp == 1 and lay.micro_batches == 1:
        prog.set_micro_batch(0, False)
        prog.forward(0, 0)
        if ctx.training:
            prog.backward(0, 0)
        ctx.optimizer_step(params)
        return ctx.finish(prog.name, prog.meta())
    pipe = Pipeline(ctx, prog)
    ctx.pipeline = pipe
    pipe.run()
    pipe.embedding_sync()
    ctx.optimizer_step(params)
    meta = prog.meta()
    meta["pipeline"] = pipe.record()
    return ctx.finish(prog.name, meta)


class Pipeline:
    """Emits the passes of every stage in a dependency-respecting order, with their transfers."""

    def __init__(self, ctx: BuildContext, prog: Program) -> None:
        self.ctx = ctx
        self.prog = prog
        lay = ctx.layout
        self.P, self.V, self.m = lay.pp, lay.virtual_stages, lay.micro_batches
        self.last_v = self.P * self.V - 1
        self.stage_ranks = {s: tuple(r for r in ctx.all_ranks if lay.stage_of(r) == s) for s in range(self.P)}
        self.orders = {s: self._order(s) for s in range(self.P)}
        self.last_backward = {}
        for s, order in self.orders.items():
            for p in order:
                if p.kind == "B":
                    self.last_backward[(s, p.chunk)] = p.micro_batch
        self.pending: dict[tuple[str, int, int], dict[int, int]] = {}
        self.sends: dict[int, list[int]] = {}
        self.ends: dict[int, dict[str, dict[int, int | None]]] = {}
        """Per stage: the begin and end of its latest pass and the end of its latest forward and backward pass,
        where the receives of later passes are posted."""
        self.held: dict[tuple[str, int, int, int], int] = {}
        self.passes: list[list[Any]] = []
        self.pass_keys: list[tuple[int, int]] = []
        """(stage, position in the stage's order) of every emitted pass, in emission order."""
        self.pass_of: list[int] = []
        """Op id → index of its pass in :attr:`pass_keys` (−1: not part of a pass); a receive belongs to the pass
        that consumes it."""

    def _order(self, stage: int) -> list[Pass]:
        lay = self.ctx.layout
        if self.ctx.training:
            return pass_order(lay.pp_schedule, self.P, stage, self.m, self.V)
        return [p for p in pass_order(lay.pp_schedule if self.V > 1 else "gpipe", self.P, stage, self.m, self.V)
                if p.kind == "F"]

    # ------------------------------------------------------------------------------ order
    def run(self) -> None:
        """Emit every stage's passes, a pass only once the pass it receives from has been emitted."""
        pos = dict.fromkeys(range(self.P), 0)
        done: set[tuple[str, int, int]] = set()
        while any(pos[s] < len(self.orders[s]) for s in range(self.P)):
            progress = False
            for s in range(self.P):
                order = self.orders[s]
                while pos[s] < len(order):
                    p = order[pos[s]]
                    v = self.ctx.layout.virtual_stage(s, p.chunk)
                    if p.kind == "F":
                        need = ("F", p.micro_batch, v - 1) if v > 0 else None
                    else:
                        need = ("B", p.micro_batch, v + 1) if v < self.last_v else None
                    if need is not None and need not in done:
                        break
                    self._emit(s, p, v, pos[s])
                    done.add((p.kind, p.micro_batch, v))
                    pos[s] += 1
                    progress = True
            if not progress:  # the orders are deadlock-free (tests/test_pipeline_order.py); a bug if reached
                raise RuntimeError("pipeline pass orders deadlock")

    # ------------------------------------------------------------------------------ one pass
    def _emit(self, stage: int, p: Pass, v: int, position: int) -> None:
        c, prog = self.ctx, self.prog
        ranks = self.stage_ranks[stage]
        if not ranks:
            return
        b = c.builder
        index = len(self.pass_keys)
        self.pass_keys.append((stage, position))
        self.pass_of.extend([-1] * (len(b.graph.ops) - len(self.pass_of)))
        self.current = index
        overlap = c.opts.pp_overlap_p2p
        tag = f"{p.kind}{p.micro_batch}" + (f".c{p.chunk}" if self.V > 1 else "")
        with c.on(ranks):
            prog.set_micro_batch(p.micro_batch, True)
            c.dp.sync = p.kind == "B" and (c.opts.zero >= 2 or self.last_backward[(stage, p.chunk)] == p.micro_batch)
            marks = self.ends.setdefault(stage, {})
            if overlap:
                post = marks.get("begin", {})
            elif self.V > 1:
                post = marks.get(p.kind, marks.get("first", {}))
            else:
                post = marks.get("end", {})
            begin = {}
            for r in ranks:
                waits = [] if overlap else self.sends.pop(r, [])
                begin[r] = b.memory(r, f"pp.{tag}.begin", [], phase="fwd" if p.kind == "F" else "bwd",
                                    deps=[c.last[r], *waits])
                c.last[r] = begin[r]
            self._receive(p, v, post, ranks)
            start = c.last[ranks[0]]
            if p.kind == "F":
                prog.forward(stage, p.chunk)
            else:
                prog.backward(stage, p.chunk)
            self._release(p, v, ranks)
            self._send(p, v, ranks)
            done: dict[int, int | None] = {r: c.last[r] for r in ranks}
            marks["end"] = marks[p.kind] = done
            marks.setdefault("first", done)
            marks["begin"] = dict(begin)
            r0 = ranks[0]
            self.passes.append([stage, p.kind, p.micro_batch, p.chunk, start, c.last[r0]])
        self.pass_of.extend([index] * (len(b.graph.ops) - len(self.pass_of)))

    def _boundary(self) -> tuple[float, float, bool]:
        """(bytes each rank sends, bytes of the whole tensor on a rank, all-gathered by the receiver?)."""
        full, replicated = self.prog.boundary()
        lay = self.ctx.layout
        if replicated and lay.tp > 1 and self.ctx.opts.pp_scatter_gather:
            return full / lay.tp, full, True
        return full, full, False

    def _receive(self, p: Pass, v: int, post: dict[int, int | None], ranks: tuple[int, ...]) -> None:
        """Join the pass to the transfer that brings its input (posted at ``post``), gathered over TP if sliced."""
        c = self.ctx
        recvs = self.pending.pop((p.kind, p.micro_batch, v), None)
        if recvs is None:
            return
        ops = c.builder.graph.ops
        for r, op in recvs.items():
            if post.get(r) is not None:
                ops[op].deps.append(post[r])
            self.pass_of[op] = self.current
        part, full, gather = self._boundary()
        cat = "activations" if p.kind == "F" else "temporary"
        ready: dict[int, int | None] = dict(recvs)
        what = "activation" if p.kind == "F" else "grad"
        if gather:
            ready = {}
            for _, group, members in distinct_groups(ranks, self.prog.tp_group, lambda g: [x for x in g if x in ranks]):
                ready.update(c.builder.collective(
                    "all_gather", group, int(full), f"pp.{what}_all_gather", stream="comm",
                    phase="fwd" if p.kind == "F" else "bwd", deps={x: [recvs.get(x)] for x in members},
                    issuers=members, mem={x: [("start", cat, int(full)), ("end", "comm_buffers", -int(part))]
                                          for x in members}))
        for r in ranks:
            c.last[r] = c.builder.memory(r, f"pp.{what}_received", [], phase="fwd" if p.kind == "F" else "bwd",
                                         deps=[ready.get(r), c.last[r]])
            self.held[(p.kind, p.micro_batch, v, r)] = int(full)

    def _release(self, p: Pass, v: int, ranks: tuple[int, ...]) -> None:
        """Free a received gradient after its pass, a received activation after its backward (or forward)."""
        c = self.ctx
        if p.kind == "F" and c.training:
            return
        for r in ranks:
            frees = [("temporary", -self.held.pop(("B", p.micro_batch, v, r), 0)),
                     ("activations", -self.held.pop(("F", p.micro_batch, v, r), 0))]
            frees = [(cat, b) for cat, b in frees if b]
            if frees:
                c.last[r] = c.builder.memory(r, "pp.received_free", frees, phase="bwd" if p.kind == "B" else "fwd",
                                             deps=[c.last[r]])

    def _send(self, p: Pass, v: int, ranks: tuple[int, ...]) -> None:
        """Post the transfer of the pass's output to the next (forward) or previous (backward) virtual stage."""
        c = self.ctx
        lay = c.layout
        target = v + 1 if p.kind == "F" else v - 1
        if not 0 <= target <= self.last_v:
            return
        dst_stage = target % self.P
        part, _full, gather = self._boundary()
        cat = "comm_buffers" if gather else ("activations" if p.kind == "F" else "temporary")
        what = "activation" if p.kind == "F" else "grad"
        direction = "fwd" if p.kind == "F" else "bwd"
        out: dict[int, int] = {}
        for r in ranks:
            mp, dp, _ = lay.coords(r)
            dst = lay.rank_of(mp, dp, dst_stage)
            s_op, r_op = c.builder.p2p(r, dst, int(part), f"pp.{what}[{p.kind}{p.micro_batch}]",
                                       send_stream=f"pp_send_{direction}", recv_stream=f"pp_recv_{direction}",
                                       phase="fwd" if p.kind == "F" else "bwd", send_deps=[c.last[r]],
                                       recv_mem=[("start", cat, int(part))])
            if s_op is not None:
                self.sends.setdefault(r, []).append(s_op)
            if r_op is not None:
                out[dst] = r_op
        self.pending[(p.kind, p.micro_batch, target)] = out

    # ------------------------------------------------------------------------------ after the passes
    def embedding_sync(self) -> None:
        """Tied embeddings: all-reduce the word-embedding gradient between the first and last stage."""
        c = self.ctx
        lay = c.layout
        if not c.training or self.P < 2 or not c.model.tied_embeddings:
            return
        nbytes = self.prog.word_embedding_grads() * c.opts.grad_bytes
        for r in self.stage_ranks[0]:
            mp, dp, _ = lay.coords(r)
            peer = lay.rank_of(mp, dp, self.P - 1)
            group = (r, peer)
            members = [x for x in group if x in c.last]
            ids = c.builder.collective("all_reduce", group, int(nbytes), "pp.embedding_grad_all_reduce",
                                       stream="dp", layer=-1, phase="bwd",
                                       deps={x: [c.last[x], *c.dp.ops.get(x, [])[-1:]] for x in members},
                                       issuers=members)
            for x, op in ids.items():
                c.dp.ops.setdefault(x, []).append(op)

    def record(self) -> dict[str, Any]:
        """``meta["pipeline"]``: degrees, schedule and the passes.

        One entry per pass of each stage's first simulated rank: [stage, kind, micro-batch, chunk, begin op, last op].
        """
        lay = self.ctx.layout
        return {"stages": self.P, "virtual_stages": self.V, "micro_batches": self.m, "schedule": lay.pp_schedule,
                "placement": lay.placement, "stage_layers": list(lay.stage_layers), "passes": self.passes}
