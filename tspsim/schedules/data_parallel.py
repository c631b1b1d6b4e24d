"""Gradient synchronisation and the optimizer step over the data-parallel axis, with ZeRO stages and HSDP.

The gradient group of a rank is every rank holding the same weights (:meth:`tspsim.spec.layout.Layout.grad_group`):
its data-parallel replicas and, for ``sp`` and ``tp+sp``, the Σ sequence shards across which the weights are
replicated. ZeRO (Rajbhandari et al. 2020) shards over that group (``zero``; with ``hsdp`` = h, over groups of h
consecutive members, the shard then replicated across the groups):

* **0** — gradients accumulate locally over the micro-batches; during the last micro-batch's backward they
  fill 25 MB buckets (``dp_bucket_MB``) that are all-reduced on the ``dp`` stream as they fill (PyTorch DDP,
  Megatron-Core's overlapped gradient reduction): 2(n−1)/n · grad bytes per rank;
* **1** — the same buckets reduce-scattered ((n−1)/n), the optimizer updates its 1/n shard, the parameters
  are all-gathered after it ((n−1)/n · param bytes); optimizer state and master weights 1/n per rank;
* **2** — each layer's gradient is reduce-scattered right after that layer's backward in *every* micro-batch
  (DeepSpeed ZeRO-2, FSDP): (n−1)/n · grad bytes per layer and micro-batch; gradients 1/n per rank (the
  layer's full gradient lives until its reduce-scatter ends); parameters all-gathered after the optimizer;
* **3** — as 2, and the parameters are sharded too: :mod:`tspsim.schedules.fsdp` gathers each layer before
  its forward and backward.

With HSDP (h < n) a reduce-scatter runs inside the shard group and the 1/h shard is then all-reduced across
the n/h groups (2(n/h − 1)/(n/h) · bytes/h), as FSDP2's hybrid mesh does.
"""

from __future__ import annotations

from typing import Any

from tspsim.schedules.rank_groups import distinct_groups


class DataParallel:
    """Gradient buckets, per-layer reduce-scatters and the optimizer step of one build."""

    def __init__(self, ctx: Any) -> None:
        """``ctx``: the :class:`tspsim.schedules.context.BuildContext` being built (which owns this object)."""
        self.ctx = ctx
        self._groups: dict[int, tuple[int, ...]] = {}
        self._members: dict[int, tuple[tuple[int, ...], list[int]]] = {}
        """id(group) → (group, its simulated members): keyed by identity, as a 16,384-rank tuple takes ~45 µs to
        hash (the group is kept in the entry, so its id is not reused while cached)."""
        self.buckets: dict[int, tuple[tuple[int, ...], list]] = {}
        """id(group) → (group, [bytes pending, {rank: op the reduction waits for}]), in first-filled order; the
        groups are :meth:`group`'s tuples (one object per group)."""
        self.ops: dict[int, list[int]] = {}
        """Per rank: the gradient collectives issued (the optimizer waits for the last)."""
        self.sync = True
        """Whether gradients of the backward being emitted are reduced now (the last micro-batch's backward,
        or every backward with ZeRO ≥ 2)."""

    # ------------------------------------------------------------------------------ groups
    def group(self, rank: int) -> tuple[int, ...]:
        """The ranks holding the same weights as ``rank`` (its gradient group; computed once per group).

        Every member of the group holds those weights too, so the group is theirs as well (the same tuple:
        :meth:`~tspsim.spec.layout.Layout.grad_group` lists a set in a fixed order): a 1,024-rank replica computes
        its few groups once, not 1,024 times.
        """
        group = self._groups.get(rank)
        if group is None:
            group = self.ctx.layout.grad_group(rank)
            self._groups.update(dict.fromkeys(group, group))
        return group

    def simulated(self, group: tuple[int, ...]) -> list[int]:
        """The simulated members of ``group``, in group order (computed once per group: a group may span the world)."""
        found = self._members.get(id(group))
        if found is not None and found[0] is group:
            return found[1]
        members = [r for r in group if r in self.ctx.last]
        self._members[id(group)] = (group, members)
        return members

    def shard_size(self, rank: int = 0) -> int:
        """Ranks one ZeRO shard is spread over: the HSDP shard group, or the whole gradient group."""
        n = len(self.group(rank))
        h = self.ctx.opts.hsdp
        return h if h and h < n else n

    def shard_group(self, rank: int) -> tuple[int, ...]:
        """The HSDP shard group of ``rank`` (h consecutive members of its gradient group)."""
        group = self.group(rank)
        h = self.shard_size(rank)
        i = group.index(rank) // h * h
        return group[i:i + h]

    def cross_group(self, rank: int) -> tuple[int, ...]:
        """HSDP: the members at ``rank``'s position in every shard group (its shard's replicas)."""
        group = self.group(rank)
        h = self.shard_size(rank)
        pos = group.index(rank) % h
        return group[pos::h]

    def factors(self, rank: int = 0) -> tuple[int, int, int]:
        """(parameter, gradient, optimizer-state) divisors of a rank's static memory under the ZeRO stage."""
        z, n = self.ctx.opts.zero, self.shard_size(rank)
        return (n if z >= 3 else 1, n if z >= 2 else 1, n if z >= 1 else 1)

    # ------------------------------------------------------------------------------ gradient reduction
    def add(self, grads: dict[int, float], after: dict[int, int | None], *, layer: int, final: bool = False) -> None:
        """Add gradient elements per rank; reduce them as the ZeRO stage says (see the module docstring).

        ZeRO 0 and 1 fill buckets (launched when one fills, or on ``final``); ZeRO ≥ 2 collects one layer's
        gradients until :meth:`end_layer`. Nothing happens outside the gradient-reducing backward (``sync``)
        except the final flush.
        """
        c = self.ctx
        if not c.training or (not self.sync and not final):
            return
        zero = c.opts.zero
        for rank, group, members in distinct_groups(c.ranks, self.group, self.simulated):
            if len(group) < 2:
                continue
            state = self.buckets.setdefault(id(group), (group, [0.0, {}]))[1]
            added = grads.get(rank, 0.0) * c.opts.grad_bytes
            state[0] += added
            for r in members:
                if after.get(r) is not None:
                    state[1][r] = after[r]
                    if zero >= 2 and added > 0:   # the layer's whole gradient lives until its reduce-scatter
                        op = c.builder.graph.ops[after[r]]
                        op.mem = (*op.mem, ("end", "temporary", int(added)))
            full = zero < 2 and state[0] >= c.opts.dp_bucket_MB * 1e6
            if full or (final and state[0] > 0):
                self._reduce(group, members, state, layer, "reduce_scatter" if zero >= 1 else "all_reduce")

    def end_layer(self, layer: int) -> None:
        """ZeRO ≥ 2: reduce-scatter the gradients the layer's backward produced (every micro-batch)."""
        c = self.ctx
        if c.opts.zero < 2 or not c.training:
            return
        for group, state in list(self.buckets.values()):
            members = [r for r in self.simulated(group) if r in c.ranks]
            if state[0] > 0 and members:
                self._reduce(group, members, state, layer, "reduce_scatter")

    def _reduce(self, group: tuple[int, ...], members: list[int], state: list, layer: int, kind: str) -> None:
        c = self.ctx
        nbytes = state[0]
        deps = {r: [state[1][r]] for r in members if r in state[1]}
        h = self.shard_size(members[0])
        name = f"dp.grad_{kind}"
        free = {r: [("end", "temporary", -int(nbytes))] for r in members} if c.opts.zero >= 2 else None
        if kind == "reduce_scatter" and h < len(group):      # HSDP: inside the shard group, then across groups
            ids = {}
            for sub in {self.shard_group(r) for r in members}:
                sub_members = self.simulated(sub)
                ids.update(c.builder.collective(kind, sub, int(nbytes), name, stream="dp", layer=layer, phase="bwd",
                                                deps={r: deps.get(r, []) for r in sub_members}, issuers=sub_members,
                                                mem=free))
            for cross in {self.cross_group(r) for r in members}:
                cm = self.simulated(cross)
                out = c.builder.collective("all_reduce", cross, int(nbytes / h), "dp.grad_hsdp_all_reduce",
                                           stream="dp", layer=layer, phase="bwd", deps={r: [ids[r]] for r in cm},
                                           issuers=cm)
                ids.update(out)
        else:
            ids = c.builder.collective(kind, group, int(nbytes), name, stream="dp", layer=layer, phase="bwd",
                                       deps=deps, issuers=members, mem=free)
        for r, op in ids.items():
            self.ops.setdefault(r, []).append(op)
        self.buckets[id(group)] = (group, [0.0, {}])

    # ------------------------------------------------------------------------------ optimizer
    def optimizer_step(self, local_params: dict[int, float]) -> None:
        """Flush the buckets, then the stack's optimizer passes over each rank's shard (HBM-bound).

        Per parameter of the rank's optimizer shard (1/n with ZeRO ≥ 1), with p, g, M, O the bytes of a
        parameter, gradient, master weight and Adam state (assumptions): ``grad_unscale`` (fp16 loss scaling)
        reads and writes g; ``grad_norm`` reads g; ``adam`` reads g, M, O and writes M, O, plus reads and writes p
        when the 16-bit weights are updated in the same kernel (``param_copy: fused``, or no master weights);
        ``param_copy: separate`` then reads M and writes p; ``zero_grad`` writes every local gradient (the
        whole buffer, not the shard). ZeRO 1 and 2 all-gather the updated parameters afterwards.
        """
        c = self.ctx
        if not c.training:
            return
        o = c.opts
        st = c.stack.optimizer
        self.add({}, dict(c.last), layer=-1, final=True)
        separate = st.param_copy == "separate" and o.master_bytes > 0
        steps = {}
        for r in c.ranks:
            shard = self.factors(r)[2]
            p = local_params[r] / shard
            passes = [("optimizer.grad_unscale", 2 * p * o.grad_bytes, st.unscale),
                      ("optimizer.grad_norm", p * o.grad_bytes, st.grad_norm),
                      ("optimizer.adam", p * (o.grad_bytes + 2 * (o.master_bytes + o.optimizer_bytes)
                                              + (0 if separate else 2 * o.param_bytes)), True),
                      ("optimizer.param_copy", p * (o.master_bytes + o.param_bytes), separate)]
            after = [c.last[r], *self.ops.get(r, [])[-1:]]
            for name, traffic, on in passes:
                if on:
                    steps[r] = c.compute(r, "optimizer", name, hbm_bytes=traffic, layer=-1, phase="opt", after=after)
                    after = [steps[r]]
        if o.zero in (1, 2):
            for r, group, members in distinct_groups(c.ranks, self.shard_group, self.simulated):
                if len(group) < 2:
                    continue
                c.builder.collective("all_gather", group, int(local_params[r] * o.param_bytes),
                                     "dp.param_all_gather", stream="dp", layer=-1, phase="opt",
                                     deps={m: [steps[m]] for m in members}, issuers=members)
        if st.zero_grad:
            for r in c.ranks:
                grads = local_params[r] / self.factors(r)[1]
                c.compute(r, "optimizer", "optimizer.zero_grad", hbm_bytes=grads * o.grad_bytes, layer=-1,
                          phase="opt", after=[c.last[r]])
