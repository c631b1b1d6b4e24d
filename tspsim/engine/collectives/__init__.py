"""Collective algorithms as phases of flows, and the policy that picks one (design.md §2 rule 2).

A collective on a group of ranks becomes a :class:`CollectivePlan`: phases run one after another,
each a start-up latency and one flow of hops moving together (:mod:`.plan`). Algorithms
(Thakur, Rabenseifner & Gropp, IJHPCA 2005; NCCL/RCCL; hardware.md §5, §6, §8):

============ ==============================================================================
ring         multi-channel rings: arc-disjoint Hamiltonian cycles on a full-mesh node, one channel
             per NIC across nodes with PXN (:mod:`.ring`; constructions in :mod:`.hamiltonian`)
tree         NCCL's double binary tree over nodes with a chain inside each node (:mod:`.tree`)
nvls         NVLink SHARP all-reduce inside a switch node (:mod:`.nvls`)
nvls_tree    NCCL's NVLS tree: NVLS inside each switch node, double binary tree across nodes (:mod:`.nvls`)
one_shot,    direct all-reduce (one step / reduce-scatter + all-gather), direct RS / AG /
two_shot,    broadcast / reduce, pairwise all-to-all with bounded concurrency across nodes
direct       (:mod:`.direct`)
hier         pipelined hierarchical RS → per-rail ring → AG (:mod:`.hierarchical`), forced only
rd           recursive doubling all-reduce, forced only
============ ==============================================================================

Latencies follow NCCL's cost model per protocol (LL / LL128 / Simple, :mod:`.latency`); a protocol's
bandwidth factor and the fabric's collective efficiency are wire overhead on the links
(:mod:`.resolve`). The policy (:mod:`.policy`) predicts every candidate's time and takes the fastest.
"""

from tspsim.engine.collectives.hamiltonian import hamiltonian_channels, walecki_cycles, walecki_paths
from tspsim.engine.collectives.plan import (
    PROTOCOLS,
    CollectivePlan,
    FlowSpec,
    GroupInfo,
    Phase,
    Pipeline,
    Shape,
    group_info,
)
from tspsim.engine.collectives.policy import (
    Candidate,
    candidates,
    choose,
    choose_algorithm,
    phase_rates,
    plan_collective,
    predict_s,
    shape,
)
from tspsim.engine.collectives.resolve import phase_links, solo_rate
from tspsim.engine.collectives.ring import ring_orders_for
from tspsim.opgraph.op import ALGORITHMS

__all__ = [
    "ALGORITHMS", "PROTOCOLS", "Candidate", "CollectivePlan", "FlowSpec", "GroupInfo", "Phase", "Pipeline", "Shape",
    "candidates", "choose", "choose_algorithm", "group_info", "hamiltonian_channels", "phase_links", "phase_rates",
    "plan_collective", "predict_s", "ring_orders_for", "shape", "solo_rate", "walecki_cycles", "walecki_paths",
]
