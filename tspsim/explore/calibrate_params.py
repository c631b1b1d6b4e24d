"""The communication parameters ``tspsim calibrate`` may fit, their plausible ranges and their sources.

Each :class:`FitParameter` is one physical quantity of a fabric: an efficiency (absolute value), or a
family of latency constants that move together (a scale applied to BASE's values: NCCL's cost model
gives one number per protocol and algorithm [S21]; a log cannot tell them apart, so the ratios between
them stay NCCL's and one factor is fitted). The bounds are the plausible range, not a convenience: a fit
that ends at one names a mechanism the model lacks or a cluster that is not healthy.

Sources (reference/hardware.md): [S10] H100 p2p 380 of 450 GB/s; [S11] 46–48 GB/s per 400G NIC;
[S21] NCCL tuning.cc (LL: 4 data bytes per 8-byte line, the tuner takes 1/4–1/3 of Simple's bandwidth;
LL128: 120 of 128 bytes, the tuner 0.7–0.92); §5 measured small-message plateaus 0.6–1.7× NCCL's model;
[S7] NVLS busbw 476–482 GB/s on H100/H200.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from tspsim.spec.topology import Topology


@dataclass(frozen=True)
class FitParameter:
    """One fitted quantity: a key (or a family of keys) of a fabric section, with its plausible range."""

    name: str
    """Name shown in tables: the YAML key, or the family's representative key with ``×`` for a scale."""
    fabric: str
    """``intra``, ``inter`` or ``gpu``."""
    keys: tuple[str, ...]
    """Key paths inside the fabric section (``ll.base_us``); a scale moves them all, a value sets the first."""
    scale: bool
    """True: the parameter multiplies BASE's value of every key; False: it is the value of ``keys[0]``."""
    lo: float
    """Lowest plausible value (a scale factor for scales)."""
    hi: float
    """Highest plausible value."""
    source: str
    """Why the range is what it is."""


_STEP_RANGE = ("a factor 4 around NCCL's cost-model constants [S21]; measured small-message plateaus differ from "
               "that model by 0.6-1.7x (hardware.md s5)")
PARAMETERS: tuple[FitParameter, ...] = (
    FitParameter("inter.nic_efficiency", "inter", ("nic_efficiency",), False, 0.60, 0.99,
                 "46-48 GB/s per 400G NIC = 0.92-0.96 [S11]; 0.99: IB/RoCE headers take >= 26 B of a 4 KiB packet; "
                 "below 0.6 is a fault, not a calibration"),
    FitParameter("inter.collective_efficiency", "inter", ("collective_efficiency",), False, 0.60, 1.0,
                 "payload fraction of a collective on the NIC (1.0 = RDMA, no kernel on the wire); separable "
                 "from nic_efficiency only with a sendrecv log"),
    FitParameter("inter.ll128.bandwidth_factor", "inter", ("ll128.bandwidth_factor",), False, 0.30, 0.9375,
                 "LL128 carries 120 of 128 bytes (0.9375); NCCL's tuner takes 0.7-0.92 of Simple [S21]"),
    FitParameter("inter.ll.bandwidth_factor", "inter", ("ll.bandwidth_factor",), False, 0.05, 0.50,
                 "LL carries 4 data bytes per 8-byte line (0.5); NCCL's tuner takes 1/4 across nodes [S21]"),
    FitParameter("inter.ring_step_us ×", "inter",
                 ("ring_step_us", "tree_step_us", "net_overhead_us", "ll.ring_step_us", "ll.tree_step_us",
                  "ll128.ring_step_us", "ll128.tree_step_us"), True, 0.25, 4.0, _STEP_RANGE),
    FitParameter("intra.collective_efficiency", "intra", ("collective_efficiency",), False, 0.60, 1.0,
                 "0.962 = H200 ring 368 of 382.5 GB/s [S3b]; hardware.md s8 suggests ~0.7 on the MI300X mesh"),
    FitParameter("intra.link_efficiency", "intra", ("link_efficiency",), False, 0.60, 1.0,
                 "H100 p2p 380 of 450 GB/s = 0.85 [S10]; separable from collective_efficiency only with a "
                 "sendrecv log"),
    FitParameter("intra.ll128.bandwidth_factor", "intra", ("ll128.bandwidth_factor",), False, 0.30, 0.9375,
                 "LL128 carries 120 of 128 bytes (0.9375); NCCL's tuner takes 0.7-0.92 of Simple [S21]"),
    FitParameter("intra.ll.bandwidth_factor", "intra", ("ll.bandwidth_factor",), False, 0.05, 0.50,
                 "LL carries 4 data bytes per 8-byte line (0.5); NCCL's tuner takes 1/4-1/3 [S21]"),
    FitParameter("intra.ring_base_us ×", "intra", ("ring_base_us", "ll.base_us", "ll128.base_us"), True, 0.25, 4.0,
                 _STEP_RANGE),
    FitParameter("intra.ring_step_us ×", "intra",
                 ("ring_step_us", "tree_step_us", "ll.ring_step_us", "ll.tree_step_us", "ll128.ring_step_us",
                  "ll128.tree_step_us"), True, 0.25, 4.0, _STEP_RANGE),
    FitParameter("intra.direct_alpha_us ×", "intra", ("direct_alpha_us",), True, 0.25, 4.0,
                 "start-up of a direct (one-shot / two-shot) kernel: measured 14-26 us for 1 KB on 8 GPUs "
                 "(hardware.md s5); a factor 4 either way"),
    FitParameter("intra.nvls.busbw_GBps ×", "intra", ("nvls.busbw_GBps",), True, 0.5, 1.1,
                 "measured whole-node NVLS busbw 476-482 GB/s on H100/H200 [S7][S11]: +10% covers them; half "
                 "is a fault"),
    FitParameter("inter.base_us", "inter", ("base_us",), False, 0.0, 100.0,
                 "extra start-up of a multi-node collective: NCCL's model has none [S21]; up to 100 us covers "
                 "proxy and connection set-up seen in 2-8 node logs (25-110 us plateaus)"),
)
"""Every parameter a calibration may fit, in priority order (an earlier one wins when two are degenerate):
efficiencies, then NCCL's latency constants, and last the extra multi-node start-up NCCL's model does not have."""


COMPUTE_PARAMETERS: tuple[FitParameter, ...] = (
    FitParameter("gpu.gemm_efficiency", "gpu", ("gemm_efficiency",), False, 0.30, 0.95,
                 "large-GEMM ceiling MAMF / peak: 51-80% across H100, B200, MI300X, MI355X (hardware.md s4.1)"),
    FitParameter("gpu.gemm_half_GFLOP ×", "gpu", ("gemm_half_GFLOP",), True, 0.1, 10.0,
                 "small-GEMM roll-off: 4.8 GFLOP (H100) and 29 (MI300X) from the Azure square-GEMM sweeps [S7]; "
                 "a factor 10 either way"),
    FitParameter("gpu.attn_fwd_efficiency", "gpu", ("attn_fwd_efficiency",), False, 0.15, 0.90,
                 "flash-attention forward: FA3 75% on H100 [S17], aiter 37-57% on MI300X / MI355X [S19]"),
    FitParameter("gpu.attn_bwd_efficiency", "gpu", ("attn_bwd_efficiency",), False, 0.10, 0.90,
                 "flash-attention backward: aiter 36-41% of peak on MI300X, 44-48% on MI355X [S19]"),
    FitParameter("gpu.hbm_efficiency", "gpu", ("hbm_efficiency",), False, 0.50, 1.0,
                 "STREAM-like HBM rate 78-95% of peak (H100, H200, MI300X) [S7]"),
    FitParameter("gpu.kernel_launch_us", "gpu", ("kernel_launch_us",), False, 0.0, 30.0,
                 "fixed per-kernel overhead; the presets assume 5-10 us (hardware.md s9, an assumption)"),
)
"""GPU parameters a compute calibration may fit, in priority order."""


def _section(topo: Topology, fabric: str) -> Any:
    return {"intra": topo.intra, "inter": topo.inter, "gpu": topo.gpu}[fabric]


def base_value(topo: Topology, fabric: str, key: str) -> float | None:
    """BASE's value of ``fabric.key`` (``ll.base_us`` style paths), None where the section or block is absent."""
    obj: Any = _section(topo, fabric)
    for part in key.split("."):
        if obj is None:
            return None
        obj = getattr(obj, part)
    return None if obj is None else float(obj)


def applicable(topo: Topology, p: FitParameter) -> bool:
    """The topology has what ``p`` moves (a network for ``inter``, the LL block for LL factors, …)."""
    return any(base_value(topo, p.fabric, k) is not None for k in p.keys)


def start_value(topo: Topology, p: FitParameter) -> float:
    """The parameter's value in BASE (1 for a scale), clamped into its range."""
    if p.scale:
        return 1.0
    v = base_value(topo, p.fabric, p.keys[0])
    return min(max(v if v is not None else p.lo, p.lo), p.hi)


def key_values(topo: Topology, params: tuple[FitParameter, ...], values: tuple[float, ...]) -> dict[str, float]:
    """``fabric.key`` → new value for every key the parameters move."""
    out: dict[str, float] = {}
    for p, v in zip(params, values):
        for k in (p.keys if p.scale else p.keys[:1]):
            b = base_value(topo, p.fabric, k)
            if b is None:
                continue
            out[f"{p.fabric}.{k}"] = b * v if p.scale else v
    return out


def shown_value(topo: Topology, p: FitParameter, value: float) -> tuple[float, float, float]:
    """(value, lo, hi) as tables show them: a scale as its first key's value (µs, GB/s)."""
    if not p.scale:
        return value, p.lo, p.hi
    b = next(base_value(topo, p.fabric, k) for k in p.keys if base_value(topo, p.fabric, k) is not None)
    assert b is not None
    return b * value, b * p.lo, b * p.hi


def with_values(topo: Topology, new: dict[str, float]) -> Topology:
    """``topo`` with the ``fabric.key`` values of ``new`` (a fresh object: no cached links or shapes)."""
    fabrics: dict[str, dict[str, Any]] = {"intra": {}, "inter": {}, "gpu": {}}
    for path, value in new.items():
        fabric, _, key = path.partition(".")
        head, _, tail = key.partition(".")
        if tail:
            fabrics[fabric].setdefault(head, {})[tail] = value
        else:
            fabrics[fabric][head] = value
    changes: dict[str, Any] = {}
    for fabric, fields in fabrics.items():
        if not fields:
            continue
        section = _section(topo, fabric)
        for head, sub in list(fields.items()):
            if isinstance(sub, dict):
                fields[head] = dataclasses.replace(getattr(section, head), **sub)
        changes[fabric] = dataclasses.replace(section, **fields)
    return dataclasses.replace(topo, **changes)


def overrides(new: dict[str, float], digits: int = 4) -> dict[str, Any]:
    """Nested YAML overrides ``{intra: {ll: {base_us: …}}}`` of ``new``, rounded to ``digits`` significant digits."""
    out: dict[str, Any] = {}
    for path, value in sorted(new.items()):
        node = out
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = round_sig(value, digits)
    return out


def round_sig(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits (0 stays 0)."""
    if value == 0:
        return 0.0
    return float(f"{value:.{digits}g}")
