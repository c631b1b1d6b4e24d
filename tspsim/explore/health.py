"""``tspsim check``: is a measured cluster as fast as a healthy one of its kind? A verdict per size range.

Every row of the log is replayed on the topology (:mod:`tspsim.explore.measured`); the model also says
what bounds the collective at that size — its **regime**: *latency-bound* when the start-up latencies
are at least half of the model's time, else *bandwidth-bound* by the link whose capacity / load is the
smallest (NIC, node fabric — NVLink / xGMI —, PCIe to the NIC, or the NVLS switch engine), with the
protocol's throughput (*protocol-bound*) when that protocol is LL or LL128. Consecutive sizes with the
same regime, bottleneck, algorithm and protocol form a range; its verdict compares the median of
measured busbw / model busbw (= model time / measured time) with the regime's tolerance, which is the
model's own uncertainty there:

============== =========== ==========================================================================
regime         tolerance   why
============== =========== ==========================================================================
bandwidth      ±15 %       healthy network-bound logs reach 0.92–0.98 of 8 × 400G (07, 09, 10: 365.8–
                           392.7 GB/s), the preset sits at 0.92 [S11]: 7 % of spread, 15 % leaves margin
protocol       ×2          LL / LL128 throughput: NCCL's tuner caps it below the wire factor the model
                           uses (LL at ¼–⅓ of Simple, not ½ [S21])
latency        ×2          measured small-message times are 0.6–1.7× NCCL's cost model (hardware.md §5)
============== =========== ==========================================================================

A range is *healthy* inside its tolerance, *under-performing* below it (by how much, and what the model
says bounds it there: the NICs, the node fabric, the start-up), or *faster than the model* above it —
then the likely reason: an algorithm the model lacks (NVLSTree or NVLS on a topology without
``intra.nvls``, CollNet / SHARP) or a topology that understates the hardware (the NICs' or links'
efficiency). The log's verdict is the verdict of its largest-size range that is bandwidth-bound (else of
its largest range): nccl-tests health is judged on peak bus bandwidth (NVIDIA's replies in the threads of
shared/data/collective-logs), the other ranges are reported alongside.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from tspsim.engine.collectives import choose, shape
from tspsim.engine.collectives.nvls import offers_nvls_tree
from tspsim.engine.collectives.policy import ROOTED
from tspsim.engine.collectives.resolve import phase_links
from tspsim.explore.measured import UNMODELLED_ALGOS, Hosted, Observation, host, host_topology, replay
from tspsim.simulate.collective import sendrecv_pair
from tspsim.spec import routes
from tspsim.spec.collective_log import CollectiveLog
from tspsim.spec.topology import Topology

TOLERANCE = {"bandwidth": 0.15, "protocol": 1.0, "latency": 1.0}
"""Allowed |measured/model − 1| per regime (as a factor 1 + tol either way): module docstring."""
BOUND_BY = {"xgmi": "node fabric (xGMI)", "nvlink_up": "node fabric (NVLink)", "nvlink_down": "node fabric (NVLink)",
            "nic_up": "NIC", "nic_down": "NIC", "spine_up": "network spine", "spine_down": "network spine",
            "pcie": "PCIe to the NIC", "nvls": "NVLS switch engine"}
"""Link kind → what a bandwidth-bound collective is bound by."""
_CHECKS = {
    "NIC": "check the NIC link rate and switch ports, GPUDirect RDMA (nvidia_peermem / dma-buf), PCIe ACS and "
           "IOMMU (iommu=pt), NCCL_IB_HCA, NCCL_IB_QPS_PER_CONNECTION, NCCL_IB_SPLIT_DATA_ON_QPS=0",
    "network spine": "check the spine: oversubscription, adaptive routing, congestion",
    "PCIe to the NIC": "check the GPU-NIC PCIe links (lspci -vv width / speed) and ACS",
    "node fabric (NVLink)": "check NVLink (nvidia-smi nvlink -s), the fabric manager, NCCL_P2P_LEVEL / "
                            "NCCL_P2P_DISABLE",
    "node fabric (xGMI)": "check xGMI (rocm-smi --showtopo), NCCL_P2P / HSA settings",
    "NVLS switch engine": "check NVLS (NCCL_NVLS_ENABLE, fabric manager, IMEX)",
    "latency": "check CPU / NUMA affinity of the ranks and proxy threads, NCCL_PROTO / NCCL_ALGO forcing, "
               "kernel-launch overhead, network latency",
}


@dataclass(frozen=True)
class RowCheck:
    """One size: measured against the model."""

    nbytes: int
    """Message size."""
    measured_s: float
    """Measured time (faster column)."""
    model_s: float
    """Replayed model time."""
    measured_busbw_GBps: float
    """Measured bus bandwidth."""
    model_busbw_GBps: float
    """Model bus bandwidth."""
    choice: str
    """Algorithm / protocol of the model."""
    regime: str
    """``latency``, ``protocol`` or ``bandwidth``."""
    bound: str
    """What bounds the model at this size (``latency``, ``NIC``, ``node fabric (NVLink)``, …)."""

    @property
    def ratio(self) -> float:
        """Measured busbw / model busbw = model time / measured time (< 1: slower than the model)."""
        return self.model_s / self.measured_s


@dataclass(frozen=True)
class RangeCheck:
    """Consecutive sizes with the same regime, bottleneck and choice, and their verdict."""

    rows: tuple[RowCheck, ...]
    """The sizes."""
    verdict: str
    """``healthy``, ``under-performing`` or ``faster than the model``."""
    reason: str
    """By how much and why (one sentence)."""

    @property
    def ratio(self) -> float:
        """Median of measured / model busbw."""
        return statistics.median(r.ratio for r in self.rows)

    @property
    def sizes(self) -> tuple[int, int]:
        """(smallest, largest) size."""
        return self.rows[0].nbytes, self.rows[-1].nbytes


@dataclass(frozen=True)
class LogCheck:
    """A log's verdict."""

    hosted: Hosted
    """The log on the topology."""
    topology: str
    """Topology name."""
    ranges: tuple[RangeCheck, ...]
    """Per size range."""
    verdict: str
    """The log's verdict (module docstring)."""
    deciding: int
    """Index of the range that decides it."""


def _regime(topo: Topology, o: Observation, model_s: float) -> tuple[str, str, str]:
    """(regime, bound, algorithm/protocol) of the model at this size (``model_s``: its replayed time)."""
    if o.op == "sendrecv":  # one flow over the route between the measured pair
        links = topo.route(*sendrecv_pair(topo, o.ranks))
        cap = routes.capacities(topo)
        slowest = min(links, key=lambda i: cap[i])
        if model_s - o.nbytes / float(cap[slowest]) >= 0.5 * model_s:
            return "latency", "latency", "p2p/Simple"
        return "bandwidth", BOUND_BY.get(topo.links[slowest].kind, "network"), "p2p/Simple"
    c = choose(o.op, o.ranks, o.nbytes, topo, algorithm=o.algorithm, protocol=o.protocol)
    shp = shape(o.op, o.ranks, topo, o.ranks[0] if o.op in ROOTED else -1, c.algorithm, c.protocol)
    choice = f"{c.algorithm}/{c.protocol}"
    latency = sum(ph.latency_s for ph in shp.phases)
    if latency >= 0.5 * c.time_s:
        return "latency", "latency", choice
    cap = routes.capacities(topo)
    worst, bound = -1.0, "NIC"
    for ph in shp.phases:
        links, weights = phase_links(topo, ph.flow, c.protocol)
        if not len(links):
            continue
        per = cap[links] / weights
        i = int(np.argmin(per))
        t = ph.progress(o.nbytes) / float(per[i])
        if t > worst:
            worst, bound = t, BOUND_BY.get(topo.links[int(links[i])].kind, "network")
    return ("protocol" if c.protocol in ("LL", "LL128") else "bandwidth"), bound, choice


def _faster_reason(h: Hosted, topo: Topology, bound: str, regime: str) -> str:
    log = h.log
    algo = h.nccl_algo.strip().lower()
    if algo in UNMODELLED_ALGOS:
        return f"the log forced {UNMODELLED_ALGOS[algo]}, which the model lacks"
    if regime == "latency":
        return ("the library starts faster than NCCL's cost model (direct / MSCCL++ kernels or a lighter protocol); "
                "calibrate the latencies: tspsim calibrate")
    multi_node_all_reduce = log.op == "all_reduce" and not algo and h.nodes > 1
    if multi_node_all_reduce and topo.intra.kind == "switch" and not offers_nvls_tree(topo):
        return (f"the library likely ran NVLSTree (NVLink SHARP inside each node + tree across nodes), which "
                f"{topo.name} does not offer (intra.nvls with net_step_us); NCCL_ALGO=Ring measures the network alone")
    if log.op == "all_reduce" and h.nodes == 1 and topo.intra.kind == "switch" and topo.intra.nvls is None:
        return f"the library likely ran NVLS (NVLink SHARP), which {topo.name} does not offer (no intra.nvls)"
    what = {"NIC": "the NICs' efficiency (inter.nic_efficiency)", "network spine": "the spine's oversubscription",
            "PCIe to the NIC": "the PCIe rate (inter.pcie_GBps)", "NVLS switch engine": "the NVLS rate "
            "(intra.nvls.busbw_GBps)"}.get(bound, "the node fabric (intra.link_GBps × link / collective efficiency)")
    return f"the topology understates the hardware: {what}; calibrate it: tspsim calibrate"


def _first_check(row: RowCheck) -> str:
    """What to check first for a slow range: ``latency`` or the bound of the model."""
    return "latency" if row.regime == "latency" else row.bound


def _slower_hint(h: Hosted, bound: str) -> str:
    """What to check for a slow range.

    The start-up for a latency-bound range; the network first for a multi-node log (the node fabric is best
    judged by a one-node run); the model's bound on one node.
    """
    if bound == "latency":
        return _CHECKS["latency"]
    if h.nodes > 1 and bound not in ("NIC", "network spine", "PCIe to the NIC"):
        return (f"{_CHECKS['NIC']}; the model is bound by the {bound} here, so also run all_reduce_perf on one node "
                "to rule the node fabric out")
    return _CHECKS.get(bound, _CHECKS["NIC"])


def _verdict(h: Hosted, topo: Topology, rows: tuple[RowCheck, ...]) -> RangeCheck:
    first = rows[0]
    ratio = statistics.median(r.ratio for r in rows)
    tol = TOLERANCE[first.regime]
    where = f"{first.bound}-bound" if first.regime != "latency" else "latency-bound"
    mech = f"model: {where}, {first.choice}"
    peak = max(rows, key=lambda r: r.nbytes)
    bw = f"busbw {peak.measured_busbw_GBps:.4g} vs {peak.model_busbw_GBps:.4g} GB/s at {_size(peak.nbytes)}"
    if ratio < 1 / (1 + tol):
        reason = f"{1 / ratio:.2f}x slower than the model ({bw}; {mech}): {_slower_hint(h, _first_check(first))}"
        return RangeCheck(rows, "under-performing", reason)
    if ratio > 1 + tol:
        reason = f"{ratio:.2f}x the model ({bw}; {mech}): {_faster_reason(h, topo, first.bound, first.regime)}"
        return RangeCheck(rows, "faster than the model", reason)
    within = f"±{tol:.0%}" if first.regime == "bandwidth" else f"×{1 + tol:.0f}"
    return RangeCheck(rows, "healthy", f"{ratio:.2f}x the model, within {within} ({bw}; {mech})")


def _size(n: int) -> str:
    for suffix, scale in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{suffix}"
    return f"{n}B" if n < 1024 else f"{n / 1024:.3g}K"


def check_log(log: CollectiveLog, topo: Topology, algo: str = "") -> LogCheck:
    """Compare ``log`` with what ``topo`` predicts (module docstring).

    Raises:
        ConfigError: the topology cannot host the log.
    """
    h = host(log, topo, algo)
    small = host_topology(topo, h.nodes)
    obs = sorted(h.observations(), key=lambda o: o.nbytes)
    entries = replay(small, obs)
    checks = []
    for o, e in zip(obs, entries):
        regime, bound, choice = _regime(small, o, e["time_s"])
        checks.append(RowCheck(o.nbytes, o.measured_s, e["time_s"], o.busbw_GBps, e["busbw_GBps"], choice, regime,
                               bound))
    groups: list[list[RowCheck]] = []
    for r in checks:
        if groups and (groups[-1][-1].regime, groups[-1][-1].bound, groups[-1][-1].choice) == (r.regime, r.bound,
                                                                                              r.choice):
            groups[-1].append(r)
        else:
            groups.append([r])
    ranges = tuple(_verdict(h, small, tuple(g)) for g in groups)
    deciding = max((i for i, rg in enumerate(ranges) if rg.rows[0].regime == "bandwidth"), default=len(ranges) - 1)
    return LogCheck(h, topo.name, ranges, ranges[deciding].verdict, deciding)


def _span(rg: RangeCheck) -> str:
    lo, hi = rg.sizes
    return _size(lo) if lo == hi else f"{_size(lo)}-{_size(hi)}"


def report(result: LogCheck) -> list[str]:
    """Text lines: header, one line per range, the verdict with its reason, the other ranges' findings."""
    log = result.hosted.log
    layout = f"{log.ranks} GPUs on {result.hosted.nodes} node{'s' if result.hosted.nodes > 1 else ''}"
    algo = f"NCCL_ALGO={result.hosted.nccl_algo}" if result.hosted.nccl_algo else "NCCL_ALGO default"
    out = [f"# check {log.name} against {result.topology}: {log.test}, {layout} ({algo}"
           f"{', NCCL_PROTO=' + log.proto if log.proto else ''}{', summary rows only' if log.summary_only else ''})",
           f"{'sizes':>15} {'rows':>4} {'meas/model':>10}  {'the model: bound by, algorithm':<44} verdict"]
    for i, rg in enumerate(result.ranges):
        first = rg.rows[0]
        bound = "start-up latency" if first.regime == "latency" else first.bound
        tol = TOLERANCE[first.regime]
        within = f"±{tol:.0%}" if first.regime == "bandwidth" else f"×{1 + tol:.0f}"
        mark = "  <- decides" if i == result.deciding else ""
        out.append(f"{_span(rg):>15} {len(rg.rows):>4} {rg.ratio:>9.2f}x  {bound + ', ' + first.choice:<44} "
                   f"{rg.verdict} ({within}){mark}")
    rg = result.ranges[result.deciding]
    out.append(f"verdict: {result.verdict}: at {_span(rg)} {rg.reason}")
    out += [f"also {_span(other)}: {other.verdict}: {other.reason}" for other in result.ranges
            if other is not rg and other.verdict != "healthy"]
    out += [f"note: {n}" for n in result.hosted.notes]
    return out


def to_json(result: LogCheck) -> dict:
    """JSON form for ``tspsim check --json``."""
    log = result.hosted.log
    return {
        "log": log.path, "test": log.test, "op": log.op, "ranks": log.ranks, "nodes": result.hosted.nodes,
        "algo": result.hosted.nccl_algo, "proto": log.proto, "topology": result.topology, "verdict": result.verdict,
        "notes": list(result.hosted.notes),
        "ranges": [{"min_bytes": rg.sizes[0], "max_bytes": rg.sizes[1], "regime": rg.rows[0].regime,
                    "bound": rg.rows[0].bound, "choice": rg.rows[0].choice, "ratio": rg.ratio, "verdict": rg.verdict,
                    "reason": rg.reason, "decides": i == result.deciding} for i, rg in enumerate(result.ranges)],
        "rows": [{"bytes": r.nbytes, "measured_s": r.measured_s, "model_s": r.model_s, "ratio": r.ratio,
                  "measured_busbw_GBps": r.measured_busbw_GBps, "model_busbw_GBps": r.model_busbw_GBps,
                  "choice": r.choice, "regime": r.regime, "bound": r.bound} for r in
                 (row for rg in result.ranges for row in rg.rows)],
    }
