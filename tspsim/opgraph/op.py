"""The vocabulary of an op graph: one :class:`Op` and the kinds, memory categories and limits it uses.

Vocabulary (design.md §1):

* **compute ops** (``gemm``, ``attention_fwd``, ``attention_bwd``, ``elementwise``, ``optimizer``) carry
  FLOPs, HBM bytes and a shape; the engine turns them into time with the topology's roofline.
* **collective ops** (``all_reduce``, ``reduce_scatter``, ``all_gather``, ``broadcast``, ``reduce``,
  ``all_to_all``): one op per participating rank, sharing a ``coll`` id, with the group, the payload
  ``nbytes`` (N·s of reference/tensor-parallelism-analysis.md: the full buffer, i.e. the gathered size
  for all-gather and the input size for reduce-scatter, as nccl-tests counts it) and an optional root.
* **point-to-point** ``send``/``recv`` pairs sharing a ``coll`` id.
* **memory events**: each op carries ``mem`` entries ``(when, category, delta_bytes)`` applied when it
  starts (``"start"``) or ends (``"end"``); a zero-duration compute op of kind ``memory`` carries pure
  allocations and frees.
* **host ops** (kind ``host``, stream ``host``): CPU time (``host_us``) spent launching the next kernel or
  on per-step work, for stacks whose CPU is simulated (:mod:`tspsim.spec.stack`); they occupy the rank's
  CPU lane, not its GPU.

Every op has a rank, a stream, a layer (−1 outside the decoder blocks), a phase (``fwd``, ``bwd``,
``opt``) and a readable name. Ops on one (rank, stream) run in **issue order** (the order they were
added), like HIP/CUDA streams; cross-stream and cross-rank ordering is expressed by dependency edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FORMAT = "tspsim-opgraph"
FORMAT_VERSION = 1

COMPUTE_KINDS = ("gemm", "attention_fwd", "attention_bwd", "elementwise", "optimizer", "memory", "host")
COLLECTIVE_KINDS = ("all_reduce", "reduce_scatter", "all_gather", "broadcast", "reduce", "all_to_all")
P2P_KINDS = ("send", "recv")
_COMPUTE_SET = frozenset(COMPUTE_KINDS)
MAX_INT = 10**18
"""Largest magnitude of any whole number in a saved op graph (ids, bytes, shapes)."""
MAX_FLOAT = 1e30
"""Largest FLOP or HBM-byte count of one op in a saved op graph."""
MAX_RANK = 1 << 20
"""Ranks in a saved op graph are below this."""
MEMORY_CATEGORIES = (
    "parameters", "gradients", "optimizer_state", "activations", "temporary", "comm_buffers", "kv_cache",
    "reserved",
)


@dataclass(slots=True)
class Op:
    """One operation on one rank's stream."""

    id: int
    """Unique id inside the graph (also the networkx node)."""
    rank: int
    """Global rank that executes the op."""
    stream: str
    """Stream name: ``compute`` or a communication stream such as ``comm``, ``kv``, ``ring``, ``dp``."""
    kind: str
    """One of COMPUTE_KINDS, COLLECTIVE_KINDS or P2P_KINDS."""
    name: str
    """Readable name, e.g. ``L3.attn.qkv[r=2]``."""
    layer: int = -1
    """Decoder block index, or −1 for embeddings, head, loss and optimizer."""
    phase: str = "fwd"
    """``fwd``, ``bwd`` or ``opt``."""
    flops: float = 0.0
    """Floating-point operations (compute ops)."""
    hbm_bytes: float = 0.0
    """Bytes read and written from HBM (compute ops)."""
    shape: tuple[int, ...] = ()
    """GEMM (m, n, k), batched GEMM (m, n, k, batch) or attention (batch, q_tokens, kv_tokens, heads, head_dim).

    Informational, except where the stack tiles GEMMs in waves (:func:`tspsim.engine.costs.gemm_wave_factor`)."""
    nbytes: int = 0
    """Payload N·s of a collective or the bytes of a send/recv."""
    group: tuple[int, ...] = ()
    """Participating global ranks of a collective (for p2p: (src, dst))."""
    coll: str = ""
    """Id shared by all participants of one collective or p2p transfer."""
    root: int = -1
    """Root rank of broadcast/reduce, −1 otherwise."""
    algorithm: str = ""
    """Forced collective algorithm, or empty for the topology's policy."""
    mem: tuple[tuple[str, str, int], ...] = ()
    """Memory events (``start``/``end``, category, signed bytes)."""
    deps: list[int] = field(default_factory=list)
    """Ops (any rank, any stream) that must finish before this op starts."""
    host_us: float = 0.0
    """CPU time of a ``host`` op, µs (0 for every other kind)."""

    @property
    def is_compute(self) -> bool:
        """True for ops that run on the compute stream's roofline."""
        return self.kind in _COMPUTE_SET

    @property
    def is_comm(self) -> bool:
        """True for collectives and point-to-point transfers."""
        return self.kind not in _COMPUTE_SET

    def to_json(self) -> dict[str, Any]:
        """Compact JSON form (defaults omitted)."""
        out: dict[str, Any] = {"id": self.id, "rank": self.rank, "stream": self.stream, "kind": self.kind,
                               "name": self.name, "layer": self.layer, "phase": self.phase}
        if self.flops:
            out["flops"] = self.flops
        if self.hbm_bytes:
            out["hbm_bytes"] = self.hbm_bytes
        if self.shape:
            out["shape"] = list(self.shape)
        if self.is_comm:
            out.update(nbytes=self.nbytes, group=list(self.group), coll=self.coll)
            if self.root >= 0:
                out["root"] = self.root
            if self.algorithm:
                out["algorithm"] = self.algorithm
        if self.mem:
            out["mem"] = [list(m) for m in self.mem]
        if self.deps:
            out["deps"] = list(self.deps)
        if self.host_us:
            out["host_us"] = self.host_us
        return out



ALGORITHMS = ("ring", "direct", "one_shot", "two_shot", "tree", "rd", "hier", "nvls", "nvls_tree")
"""Collective algorithm names an op may force (``Op.algorithm``); :mod:`tspsim.engine.collectives` implements them."""
