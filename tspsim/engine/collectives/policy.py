"""The algorithm × protocol policy: predict each candidate's time and pick the fastest, like NCCL's tuner.

NCCL (``src/graph/tuning.cc``, hardware.md §5, §8) estimates time = latency + size / bandwidth for
every algorithm × protocol and takes the fastest; there are no size thresholds. Here the prediction
is the candidate's exact time **in isolation** on the simulated network: for each phase,
latency + N_eff(N) / rate, the rate being the phase flow's rate alone on the links
(:mod:`tspsim.engine.collectives.resolve`). Because flow-level dynamics scale with N, this is exactly
what a replay of the lone collective gives, and every candidate's time is non-decreasing in N, so the
fastest of them is too: no cliff, t(1.01·N) ≥ t(N) (tests/test_collective_policy.py).

Candidates the policy considers are those NCCL/RCCL run:

* one node: ring (LL / LL128 / Simple); all-reduce also NVLS (switch nodes with ``intra.nvls``) and
  one-shot / two-shot; reduce-scatter, all-gather, broadcast, reduce also direct — direct kernels only
  up to ``intra.direct_max_bytes`` (RCCL's MSCCL++ size limit, a library property);
* several nodes: ring; all-reduce also the double binary tree and, on switch nodes with NVLS, NCCL's
  NVLS tree (:mod:`.nvls`), except where the replay folds replicas and the group reaches beyond one
  replica (trees are not node-symmetric, so folding would not be exact): there only ring;
* all-to-all: pairwise exchanges (``direct``).

``hier`` (pipelined hierarchical) and ``rd`` (recursive doubling) run only when forced. Every forced
algorithm still gets the fastest protocol it supports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from tspsim.core.errors import TspsimError
from tspsim.engine.collectives.direct import all_to_all_shape, direct_shape, rd_shape
from tspsim.engine.collectives.hierarchical import check_hier, hier_shape
from tspsim.engine.collectives.latency import available_protocols
from tspsim.engine.collectives.nvls import check_nvls_tree, nvls_shape, nvls_tree_problem, nvls_tree_shape
from tspsim.engine.collectives.plan import PROTOCOLS, CollectivePlan, GroupInfo, Shape, group_info
from tspsim.engine.collectives.resolve import base_loads, protocol_weights, solo_rate
from tspsim.engine.collectives.ring import ring_shape
from tspsim.engine.collectives.tree import tree_shape
from tspsim.opgraph.op import ALGORITHMS
from tspsim.spec.topology import Topology

ORDER = ("one_shot", "two_shot", "direct", "nvls", "ring", "tree", "nvls_tree", "hier", "rd")
"""Tie-break order among equally fast candidates."""
ROOTED = ("broadcast", "reduce")
EXPLAIN_DIRECT_MAX = 64
"""``--explain`` leaves out forced-only one-shot / two-shot all-reduce over more ranks than this."""
_CACHE_LIMIT = 4096


@dataclass(frozen=True)
class Candidate:
    """One algorithm × protocol the policy weighed, with its predicted time."""

    algorithm: str
    """Algorithm name."""
    protocol: str
    """Wire protocol."""
    channels: int
    """Parallel channels."""
    time_s: float
    """Predicted time in isolation, seconds."""
    considered: bool
    """True if the policy may pick it."""
    note: str = ""
    """Why the policy may not pick it (empty when considered)."""

    def to_json(self) -> dict:
        """JSON form for ``tspsim collective --json``."""
        return {"algorithm": self.algorithm, "protocol": self.protocol, "channels": self.channels,
                "time_s": self.time_s, "considered": self.considered, "note": self.note}


def _cache(topo: Topology) -> dict:
    cache = topo.__dict__.setdefault("_collective_cache", {})
    if len(cache) > _CACHE_LIMIT:
        cache.clear()
    return cache


def _group_info(group: Sequence[int], topo: Topology) -> GroupInfo:
    """:func:`group_info`, kept in the topology's collective cache.

    The policy splits the same large group by node for every size and algorithm it prices (16,384-rank
    data-parallel groups on 2,048 nodes).
    """
    key = ("group", tuple(group))
    cache = _cache(topo)
    info = cache.get(key)
    if info is None:
        info = cache[key] = group_info(group, topo)
    return info


def _applicable(kind: str, info: GroupInfo, topo: Topology) -> list[str]:
    """Algorithms that implement ``kind`` on the group (forced or chosen)."""
    if kind == "all_to_all":
        return ["direct"]
    algs = ["ring"]
    if kind == "all_reduce":
        algs += ["one_shot", "two_shot", "tree"]
        if info.p & (info.p - 1) == 0:
            algs.append("rd")
        if info.k == 1 and topo.intra.kind == "switch" and topo.intra.nvls is not None:
            algs.append("nvls")
        if not nvls_tree_problem(info, topo):
            algs.append("nvls_tree")
    else:
        algs.append("direct")
        if kind in ROOTED:
            algs.append("tree")
    if info.k > 1 and info.regular:
        algs.append("hier")
    return algs


def _protocols(alg: str, info: GroupInfo, topo: Topology) -> tuple[str, ...]:
    if alg in ("ring", "tree", "hier") or (alg == "direct" and info.k > 1):
        return available_protocols(topo, info.k > 1)
    return ("Simple",)


def shape(kind: str, group: Sequence[int], topo: Topology, root: int, alg: str, protocol: str) -> Shape:
    """The (cached) size-free shape of ``alg`` with ``protocol`` for the group."""
    key = ("shape", kind, tuple(group), root if kind in ROOTED else -1, alg, protocol)
    cache = _cache(topo)
    found = cache.get(key)
    if found is None:
        info = _group_info(group, topo)
        if alg == "ring":
            found = ring_shape(kind, info, topo, root, protocol)
        elif alg == "tree":
            found = tree_shape(kind, info, topo, root, protocol)
        elif alg == "hier":
            found = hier_shape(kind, info, topo, root, protocol)
        elif alg == "nvls":
            found = nvls_shape(info, topo)
        elif alg == "nvls_tree":
            found = nvls_tree_shape(info, topo)
        elif alg == "rd":
            found = rd_shape(info, topo)
        elif kind == "all_to_all":
            found = all_to_all_shape(info, topo, protocol)
        else:
            found = direct_shape(kind, info, topo, root, alg)
        found = dataclasses.replace(found, hops_key=key[1:5])
        cache[key] = found
    return found


def phase_rates(topo: Topology, shp: Shape) -> tuple[float, ...]:
    """Rate of each phase's flow alone on the network (cached per shape)."""
    cache = _cache(topo)
    key = ("rates", id(shp))
    found = cache.get(key)
    if found is None or found[0] is not shp:
        rates = []
        for i, ph in enumerate(shp.phases):
            base_key = ("loads", shp.hops_key, i)
            loads = cache.get(base_key) if shp.hops_key else None
            if loads is None:
                loads = base_loads(topo, ph.flow)
                if shp.hops_key:
                    cache[base_key] = loads
            links, base = loads
            rates.append(solo_rate(topo, links, protocol_weights(topo, links, base, shp.protocol)))
        found = cache[key] = (shp, tuple(rates))
    return found[1]


def predict_s(topo: Topology, shp: Shape, nbytes: int) -> float:
    """Time of the collective alone on the network: Σ over phases of latency + N_eff / rate."""
    total = 0.0
    for ph, rate in zip(shp.phases, phase_rates(topo, shp)):
        total += ph.latency_s + ph.progress(nbytes) / rate
    return total


def _normalise(kind: str, group: Sequence[int], root: int) -> int:
    if kind in ROOTED:
        return root if root in group else group[0]
    return -1


def _forced(kind: str, info: GroupInfo, topo: Topology, algorithm: str) -> list[str]:
    """The algorithms a forced name stands for, or an error naming what applies."""
    if algorithm not in ALGORITHMS:
        raise TspsimError(f"unknown algorithm {algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
    if algorithm in ("one_shot", "two_shot") and kind != "all_reduce":
        algorithm = "direct"
    if algorithm == "direct" and kind == "all_reduce":
        return ["one_shot", "two_shot"]
    if algorithm == "hier":
        check_hier(kind, info)
    if algorithm == "rd" and (kind != "all_reduce" or info.p & (info.p - 1)):
        raise TspsimError("algorithm 'rd' (recursive doubling) implements all_reduce on a power-of-two number "
                          "of ranks; use ring for this group")
    if algorithm == "tree" and kind not in ("all_reduce", *ROOTED):
        raise TspsimError(f"algorithm 'tree' implements all_reduce, broadcast and reduce, not {kind}")
    if algorithm == "ring" and kind == "all_to_all":
        raise TspsimError("all_to_all has no ring algorithm here; use direct")
    if algorithm == "nvls":
        if kind != "all_reduce":
            raise TspsimError(f"algorithm 'nvls' implements all_reduce, not {kind}")
        nvls_shape(info, topo)  # raises with the reason
    if algorithm == "nvls_tree":
        if kind != "all_reduce":
            raise TspsimError(f"algorithm 'nvls_tree' implements all_reduce, not {kind}")
        check_nvls_tree(info, topo)
    return [algorithm]


def candidates(kind: str, group: Sequence[int], nbytes: int, topo: Topology, root: int = -1,
               algorithm: str = "", protocol: str = "", fold_safe_only: bool = False,
               everything: bool = False) -> list[Candidate]:
    """Algorithm × protocol candidates with their predicted times, fastest first.

    ``considered`` marks what the policy may pick (module docstring); with ``algorithm`` (forced) only
    that algorithm is considered, with ``protocol`` only that protocol. Only considered candidates are
    listed unless ``everything`` (``--explain``), which adds the forced-only ones, except all-pairs direct
    all-reduce over more than :data:`EXPLAIN_DIRECT_MAX` ranks (p² hops, never a sensible choice).
    """
    info = _group_info(group, topo)
    root = _normalise(kind, group, root)
    forced = _forced(kind, info, topo, algorithm) if algorithm else None
    if protocol and protocol not in PROTOCOLS:
        raise TspsimError(f"unknown protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    out = []
    for alg in _applicable(kind, info, topo):
        if forced is not None:
            note = "" if alg in forced else f"{algorithm!r} was forced"
        else:
            note = _tuner_note(kind, alg, info, topo, nbytes, fold_safe_only)
        if note and (not everything or (alg in ("one_shot", "two_shot") and info.p > EXPLAIN_DIRECT_MAX)):
            continue
        for proto in _protocols(alg, info, topo):
            why = note or (f"protocol {protocol} was forced" if protocol and proto != protocol else "")
            if why and not everything:
                continue
            shp = shape(kind, group, topo, root, alg, proto)
            out.append(Candidate(alg, proto, shp.channels, predict_s(topo, shp, nbytes), not why, why))
    out.sort(key=lambda c: (c.time_s, ORDER.index(c.algorithm), PROTOCOLS.index(c.protocol)))
    return out


def _tuner_note(kind: str, alg: str, info: GroupInfo, topo: Topology, nbytes: int, fold_safe_only: bool) -> str:
    """Why the policy may not pick ``alg`` here; empty if it may (module docstring)."""
    if alg in ("hier", "rd"):
        return "forced only (not an NCCL/RCCL algorithm)"
    if kind == "all_to_all":
        return ""
    if alg in ("one_shot", "two_shot", "direct"):
        if info.k > 1:
            return "forced only across nodes (direct kernels run inside one node)"
        if nbytes > topo.intra.direct_max_bytes:
            return f"above the direct kernels' limit (intra.direct_max_bytes = {topo.intra.direct_max_bytes})"
        return ""
    if alg == "nvls_tree" and fold_safe_only:
        return "not node-symmetric: left out where the replay folds replicas"
    if alg == "tree":
        if info.k == 1:
            return "forced only inside one node (NCCL's tuner uses trees across nodes)"
        if kind != "all_reduce":
            return "forced only for broadcast / reduce (NCCL's tree runs all-reduce)"
        if fold_safe_only:
            return "not node-symmetric: left out where the replay folds replicas"
    return ""


def choose(kind: str, group: Sequence[int], nbytes: int, topo: Topology, root: int = -1, algorithm: str = "",
           protocol: str = "", fold_safe_only: bool = False) -> Candidate:
    """The fastest candidate the policy (or the forced algorithm / protocol) allows.

    Raises:
        TspsimError: for an algorithm or protocol that does not apply to the group.
    """
    cands = candidates(kind, group, nbytes, topo, root, algorithm, protocol, fold_safe_only)
    if cands:
        return cands[0]
    info = _group_info(group, topo)
    names = _forced(kind, info, topo, algorithm) if algorithm else _applicable(kind, info, topo)
    offered = sorted({p for alg in names for p in _protocols(alg, info, topo)})
    what = f"algorithm {algorithm!r}" if algorithm else kind
    raise TspsimError(f"protocol {protocol!r} is not offered for {what} on {topo.name}; "
                      f"choose one of {', '.join(offered)}")


def choose_algorithm(kind: str, group: Sequence[int], nbytes: int, topo: Topology) -> str:
    """Name of the algorithm the policy picks."""
    return choose(kind, group, nbytes, topo).algorithm


def plan_collective(kind: str, group: Sequence[int], nbytes: int, topo: Topology, root: int = -1,
                    algorithm: str = "", protocol: str = "", fold_safe_only: bool = False) -> CollectivePlan:
    """The plan of one collective; ``algorithm`` / ``protocol`` force a choice (``--algorithm``).

    Raises:
        TspsimError: for an algorithm that does not apply to the group (e.g. ``hier`` on one node).
    """
    group = tuple(group)
    if len(group) < 2 or nbytes <= 0:
        return CollectivePlan(Shape(algorithm or "none", "Simple", 0, ()), nbytes)
    root = _normalise(kind, group, root)
    c = choose(kind, group, nbytes, topo, root, algorithm, protocol, fold_safe_only)
    return CollectivePlan(shape(kind, group, topo, root, c.algorithm, c.protocol), nbytes)
