"""ZeRO-3 / FSDP parameter gathering: each unit's parameters all-gathered before use, one unit ahead, freed after.

FSDP (Zhao et al. 2023; PyTorch FSDP2 as torchtitan runs it) wraps every decoder block as a unit and the
embedding, final norm and LM head as the root unit (unit −1). With ZeRO-3 a rank keeps 1/n of each unit's
parameters (n = the shard group, :mod:`tspsim.schedules.data_parallel`) and, per micro-batch:

* before a unit's forward, all-gathers it (stream ``fsdp``; (n−1)/n · unit bytes sent per rank) into a
  buffer of the whole unit (``comm_buffers``); the gather of the next unit may start as soon as this one
  starts computing (FSDP's one-unit prefetch), so it overlaps compute;
* frees the buffer after the forward (``reshard_after_forward``, FSDP's default) and gathers again before the
  backward — or keeps it until after the backward when ``reshard_after_forward`` is off;
* after the backward the unit's gradients are reduce-scattered (ZeRO ≥ 2: the data-parallel module) and the
  buffer freed.

Per rank and micro-batch that is 2 · params · (n−1)/n · s of parameter all-gathers (one with
``reshard_after_forward`` off) and params · (n−1)/n · s_grad of gradient reduce-scatter.
"""

from __future__ import annotations

from collections.abc import Callable

from tspsim.schedules.context import BuildContext
from tspsim.schedules.rank_groups import distinct_groups


class ParamGather:
    """The gathers of one build's FSDP units (see the module docstring)."""

    def __init__(self, ctx: BuildContext, unit_params: Callable[[int], float]) -> None:
        self.ctx = ctx
        self.unit_params = unit_params
        """Parameters of a unit on one rank before FSDP sharding (its TP shard): unit → elements."""
        self.held: dict[tuple[int, int], int] = {}
        """(rank, unit) → bytes of a gathered buffer still alive."""
        self.anchor: dict[int, int | None] = {}
        """Per rank: the op at which the previous unit started (the next gather may start there)."""
        self._positions: dict[int, tuple[tuple[int, ...], dict[int, int]]] = {}
        """id of a large shard group → (the group, each member's position in it)."""

    def before(self, unit: int, phase: str, tag: str = "") -> None:
        """Gather ``unit`` (unless still held) and make the rank's next compute wait for it."""
        c = self.ctx
        nbytes = int(self.unit_params(unit) * c.opts.param_bytes)
        need = [r for r in c.ranks if (r, unit) not in self.held]
        needed = set(need)      # membership in O(1): shard groups span every replica (2,048 ranks on 2,048 nodes)
        gathered: dict[int, int] = {}
        where = f"L{unit}." if unit >= 0 else ""
        name = f"{where}{tag}{'bwd.' if phase == 'bwd' else ''}fsdp.param_all_gather"
        for _, group, members in distinct_groups(need, c.dp.shard_group, lambda g: self._members(g, needed)):
            if len(group) < 2:
                continue
            deps = {x: [self.anchor.get(x) if self.anchor.get(x) is not None else c.last[x]] for x in members}
            gathered.update(c.builder.collective("all_gather", group, nbytes, name, stream="fsdp", layer=unit,
                                                 phase=phase, deps=deps, issuers=members,
                                                 mem={x: [("start", "comm_buffers", nbytes)] for x in members}))
        for r in c.ranks:
            if r in gathered:
                self.held[(r, unit)] = nbytes
            if r in gathered or unit >= 0:
                c.last[r] = c.builder.memory(r, name.replace("param_all_gather", "unit_ready"), [], layer=unit,
                                             phase=phase, deps=[gathered.get(r), c.last[r]])
            self.anchor[r] = c.last[r]

    def _members(self, group: tuple[int, ...], needed: set[int]) -> list[int]:
        """The ranks of ``group`` in ``needed``, in group order (without scanning a 2,048-rank group per unit)."""
        if len(group) <= 4 * len(needed):
            return [x for x in group if x in needed]
        cached = self._positions.get(id(group))
        if cached is None or cached[0] is not group:   # the group is kept alive: its id is not reused
            cached = self._positions[id(group)] = (group, {x: i for i, x in enumerate(group)})
        where = cached[1]
        return sorted((x for x in needed if x in where), key=where.__getitem__)

    def after(self, unit: int, phase: str) -> None:
        """The unit's pass is done: free its buffer (after a backward, or a forward that reshards)."""
        c = self.ctx
        if phase == "fwd" and not c.opts.reshard_after_forward:
            return
        for r in c.ranks:
            nbytes = self.held.pop((r, unit), 0)
            if nbytes:
                c.last[r] = c.builder.memory(r, f"fsdp.reshard[{unit}]", [("comm_buffers", -nbytes)], layer=unit,
                                             phase=phase, deps=[c.last[r]])
