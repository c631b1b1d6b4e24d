"""Measured collectives on a topology: where a log's GPUs sit, what the model predicts for each row.

Shared by ``tspsim calibrate`` (:mod:`tspsim.explore.calibrate`) and ``tspsim check``
(:mod:`tspsim.explore.health`). A log's GPUs are placed node-major like ``mpirun -N G``: node j of the log
is node j of the topology and its i-th GPU is local GPU i (so every node holds the same rails). A
topology that cannot host the layout — too few nodes, too few GPUs per node — is refused with one line.

Predictions are tspsim's own collective model: :func:`predict_s` asks the policy
(:func:`tspsim.engine.collectives.choose`, the algorithm × protocol NCCL's tuner would take, or the one the
log forced) for the time of the collective alone on the network, which equals the replay of that
collective exactly (tests/test_collective_policy.py); :func:`replay` replays each row with
:func:`tspsim.simulate.collective.simulate_collective`. Both run on :func:`host_topology`, the topology cut
to the nodes the log uses (whole leaf groups on a fat tree), which gives the same times as the full
cluster (tests/test_calibrate.py).

A fit evaluates thousands of parameter sets on the same rows; :class:`Predictor` gives the same numbers
as :func:`predict_s` without rebuilding the collectives' shapes each time. The shapes' hops, their link
loads and the candidates the policy weighs do not depend on efficiencies or latencies, so they are built
once on BASE; per parameter set only the parts that do are recomputed with the engine's own functions —
each phase's rate (:func:`~tspsim.engine.collectives.resolve.solo_rate` of the links' new capacities and
protocol weights) and start-up latency (:mod:`tspsim.engine.collectives.latency`) — and the fastest
candidate is taken with the policy's tie-break. tests/test_calibrate.py checks it equals
:func:`predict_s` on random parameter sets.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tspsim.core.errors import ConfigError
from tspsim.engine.collectives import PROTOCOLS, Shape, candidates, choose, group_info, shape
from tspsim.engine.collectives.latency import (
    available_protocols,
    direct_alpha_s,
    hier_latency_s,
    nvls_tree_latency_s,
    ring_latency_s,
    tree_latency_s,
)
from tspsim.engine.collectives.nvls import offers_nvls_tree
from tspsim.engine.collectives.policy import ORDER, ROOTED
from tspsim.engine.collectives.resolve import base_loads, protocol_weights, solo_rate
from tspsim.simulate.collective import simulate_collective
from tspsim.spec.collective_log import CollectiveLog
from tspsim.spec.topology import Topology

_PROTOCOLS = {"simple": "Simple", "ll": "LL", "ll128": "LL128"}
UNMODELLED_ALGOS = {"collnetdirect": "CollNetDirect (in-network reduction, SHARP)",
                    "collnetchain": "CollNetChain (in-network reduction, SHARP)",
                    "pat": "PAT (parallel aggregated trees)"}
"""NCCL algorithms tspsim does not model (a log that forced one is predicted with the policy, with a note)."""


@dataclass(frozen=True)
class Observation:
    """One row of a log as the model sees it."""

    log: str
    """Log file name."""
    op: str
    """Collective."""
    ranks: tuple[int, ...]
    """Ranks of the topology the log's GPUs sit on."""
    nbytes: int
    """Message size."""
    algorithm: str
    """Algorithm the log forced ('' = the policy's choice)."""
    protocol: str
    """Protocol the log forced ('' = the fastest)."""
    measured_s: float
    """Measured time (the faster of out-of-place and in-place), seconds."""
    busbw_GBps: float
    """Measured bus bandwidth of that column."""


@dataclass(frozen=True)
class Hosted:
    """A log placed on a topology."""

    log: CollectiveLog
    """The log."""
    ranks: tuple[int, ...]
    """Topology ranks of the log's GPUs, node-major."""
    nodes: int
    """Nodes used."""
    algorithm: str
    """Forced algorithm ('' = policy)."""
    protocol: str
    """Forced protocol ('' = fastest)."""
    notes: tuple[str, ...]
    """Assumptions made (layout guessed, an NCCL algorithm the model lacks, …)."""
    nccl_algo: str = ""
    """NCCL_ALGO the run used (the log's, else the one given for it), as written."""

    def observations(self) -> list[Observation]:
        """One :class:`Observation` per row with a payload (a 0-byte row measures no collective)."""
        return [Observation(self.log.name, self.log.op, self.ranks, r.size_bytes, self.algorithm, self.protocol,
                            r.time_us * 1e-6, r.busbw_GBps) for r in self.log.rows if r.size_bytes > 0]


def _topology_text(topo: Topology) -> str:
    return f"{topo.name} has {topo.nodes} node{'s' if topo.nodes > 1 else ''} of {topo.gpus_per_node} GPUs"


def host(log: CollectiveLog, topo: Topology, algo: str = "") -> Hosted:
    """Place ``log`` on ``topo`` and map its NCCL_ALGO / NCCL_PROTO.

    ``algo`` is the NCCL_ALGO of a log that does not say (``--algo``).

    Raises:
        ConfigError: the topology cannot host the log's GPUs (one line: what the log needs, what it has).
    """
    g = topo.gpus_per_node
    notes: list[str] = []
    if log.layout:
        layout = log.layout
    else:
        k = math.ceil(log.ranks / g)
        layout = tuple(min(g, log.ranks - j * g) for j in range(k))
        notes.append(f"{log.name}: the log does not give its nodes; assumed {k} node{'s' if k > 1 else ''} "
                     f"filled with {g} GPUs each (node-major, like mpirun -N {g})")
    k = len(layout)
    if k > topo.nodes or max(layout) > g:
        need = (f"{log.ranks} GPUs on {k} node{'s' if k > 1 else ''} of {max(layout)}" if log.layout
                else f"{log.ranks} GPUs")
        if max(layout) > g:
            hint = "use a topology whose nodes hold that many GPUs"
        elif topo.inter is None:
            hint = (f"use a topology with at least {k} nodes: a YAML with 'inherit: {topo.name}', 'nodes: {k}' and an "
                    "'inter' section (the scale-out network)")
        else:
            hint = f"use a topology with at least {k} nodes (a YAML with 'inherit: {topo.name}' and 'nodes: {k}')"
        raise ConfigError(f"{log.path}: the log ran {need}, but {_topology_text(topo)}; {hint}")
    if not any(r.size_bytes > 0 for r in log.rows):
        raise ConfigError(f"{log.path}: every row has 0 bytes; there is nothing to compare (run with -b 8 or more)")
    ranks = tuple(j * g + i for j, count in enumerate(layout) for i in range(count))
    nccl_algo = log.algo or algo
    algorithm, note = _algorithm(log, topo, k, nccl_algo)
    if note:
        notes.append(f"{log.name}: {note}")
    protocol = _PROTOCOLS.get(log.proto.lower(), "") if log.proto else ""
    if log.proto and (not protocol or protocol not in available_protocols(topo, k > 1)):
        notes.append(f"{log.name}: NCCL_PROTO={log.proto} is not offered by {topo.name}; predicted with the fastest "
                     "protocol")
        protocol = ""
    return Hosted(log, ranks, k, algorithm, protocol, tuple(notes), nccl_algo)


def _algorithm(log: CollectiveLog, topo: Topology, nodes: int, algo: str) -> tuple[str, str]:
    """(tspsim algorithm to force, note) for NCCL_ALGO ``algo``."""
    name = algo.strip().lower()
    if not name:
        return "", ""
    if name == "ring" and log.op not in ("all_to_all", "sendrecv"):
        return "ring", ""
    if name == "tree" and log.op in ("all_reduce", "broadcast", "reduce"):
        return "tree", ""
    if name == "nvls" and log.op == "all_reduce" and nodes == 1 and topo.intra.nvls is not None:
        return "nvls", ""
    if name == "nvlstree" and log.op == "all_reduce" and nodes > 1:
        if offers_nvls_tree(topo):
            return "nvls_tree", ""
        return "", (f"NVLSTree (NVLink SHARP inside each node + tree across nodes) needs intra.nvls with "
                    f"net_step_us, which {topo.name} does not set; predicted with tspsim's policy")
    what = UNMODELLED_ALGOS.get(name, f"NCCL_ALGO={algo}")
    return "", f"{what} is not modelled for this collective here; predicted with tspsim's policy"


def host_topology(topo: Topology, nodes: int) -> Topology:
    """``topo`` cut to its first ``nodes`` nodes (whole leaf groups on a fat tree; same links for the log's ranks)."""
    keep = nodes
    inter = topo.inter
    if inter is not None and inter.topology == "rail_optimized_fat_tree" and nodes > inter.nodes_per_leaf:
        keep = min(topo.nodes, -(-nodes // inter.nodes_per_leaf) * inter.nodes_per_leaf)
    if keep >= topo.nodes:
        return topo
    return dataclasses.replace(topo, nodes=max(keep, 1))


def predict_s(topo: Topology, obs: Sequence[Observation]) -> np.ndarray:
    """Model time of every observation alone on the network (policy prediction; replays for sendrecv)."""
    out = np.empty(len(obs))
    for i, o in enumerate(obs):
        if o.op == "sendrecv":
            out[i] = simulate_collective(topo, o.op, o.ranks, o.nbytes)["time_s"]
        else:
            out[i] = choose(o.op, o.ranks, o.nbytes, topo, algorithm=o.algorithm, protocol=o.protocol).time_s
    return out


def replay(topo: Topology, obs: Sequence[Observation]) -> list[dict]:
    """The :func:`~tspsim.simulate.collective.simulate_collective` entry of every observation."""
    return [simulate_collective(topo, o.op, o.ranks, o.nbytes, o.algorithm, o.protocol) for o in obs]


class Predictor:
    """:func:`predict_s` for many parameter sets of one topology's nodes (module docstring)."""

    def __init__(self, topo: Topology, obs: Sequence[Observation]) -> None:
        """Build every candidate's shape and link loads once on ``topo`` (BASE cut to the log's nodes)."""
        self.obs = list(obs)
        self.shapes: list[tuple[str, tuple[int, ...], int, Shape, list[tuple[np.ndarray, np.ndarray]]]] = []
        index: dict[tuple, int] = {}
        self.choices: list[list[tuple[int, int, int]]] = []  # per obs: (shape index, order, protocol order)
        self.slow: list[int] = []  # observations predicted with predict_s (sendrecv)
        for i, o in enumerate(self.obs):
            if o.op == "sendrecv":
                self.slow.append(i)
                self.choices.append([])
                continue
            root = o.ranks[0] if o.op in ROOTED else -1
            row = []
            for c in candidates(o.op, o.ranks, o.nbytes, topo, root, o.algorithm, o.protocol):
                key = (o.op, o.ranks, root, c.algorithm, c.protocol)
                if key not in index:
                    shp = shape(o.op, o.ranks, topo, root, c.algorithm, c.protocol)
                    loads = [base_loads(topo, ph.flow) for ph in shp.phases]
                    index[key] = len(self.shapes)
                    self.shapes.append((o.op, o.ranks, root, shp, loads))
                row.append((index[key], ORDER.index(c.algorithm), PROTOCOLS.index(c.protocol)))
            self.choices.append(row)

    def _latencies(self, topo: Topology, kind: str, ranks: tuple[int, ...], root: int, shp: Shape) -> list[float]:
        info = group_info(ranks, topo)
        alg, proto = shp.algorithm, shp.protocol
        if alg == "ring":
            return [ring_latency_s(kind, info, topo, proto)]
        if alg == "tree":
            return [tree_latency_s(kind, info, topo, proto)]
        if alg == "hier":
            return [hier_latency_s(kind, info, topo, proto)]
        if alg == "nvls" and topo.intra.nvls is not None:
            return [topo.intra.nvls.step_us * 1e-6]
        if alg == "nvls_tree":
            return [nvls_tree_latency_s(info, topo)]
        if alg in ("one_shot", "two_shot") or (alg == "direct" and kind != "all_to_all"):
            return [direct_alpha_s(topo, info)] * len(shp.phases)
        return [ph.latency_s for ph in shape(kind, ranks, topo, root, alg, proto).phases]

    def predict_s(self, topo: Topology) -> np.ndarray:
        """Model time of every observation on ``topo`` (same nodes as at construction, other parameters)."""
        timing = []
        for kind, ranks, root, shp, loads in self.shapes:
            lat = self._latencies(topo, kind, ranks, root, shp)
            rates = [solo_rate(topo, links, protocol_weights(topo, links, base, shp.protocol)) if len(links) else
                     float("inf") for links, base in loads]
            timing.append((shp, lat, rates))
        out = np.empty(len(self.obs))
        for i, o in enumerate(self.obs):
            best = None
            for s, order, porder in self.choices[i]:
                shp, lat, rates = timing[s]
                t = sum(la + ph.progress(o.nbytes) / r for la, ph, r in zip(lat, shp.phases, rates))
                key = (t, order, porder)
                if best is None or key < best:
                    best = key
            out[i] = best[0] if best is not None else 0.0
        if self.slow:
            out[self.slow] = predict_s(topo, [self.obs[i] for i in self.slow])
        return out
