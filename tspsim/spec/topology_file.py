"""Topology files: presets by name or a user's YAML (with ``inherit``), validated key by key.

Every number is checked against its unit's plausible range; messages read
``FILE: .key.path: problem`` (jq-style paths). A valid mapping becomes a :class:`~tspsim.spec.topology.Topology`.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import yaml

from tspsim.core.errors import ConfigError
from tspsim.core.presets import MAX_INHERIT_DEPTH, PresetFiles  # noqa: F401 (MAX_INHERIT_DEPTH re-exported)
from tspsim.core.yamlfile import describe_value, number_hint
from tspsim.spec.topology import GpuSpec, InterFabric, IntraFabric, Nvls, Protocol, Topology

PRESET_DIR = Path(__file__).resolve().parent.parent / "data" / "topologies"
_FILES = PresetFiles("topology", PRESET_DIR)
"""The topology presets and how a topology file is read."""

MAX_GPUS = 65536
"""Largest cluster (nodes × gpus_per_node) a topology may describe."""
MAX_LINKS = 1_000_000
"""Largest number of directed links (one Python object each) a topology may build."""
MAX_NUMBER = 1e15
"""Largest magnitude of any number in a topology file (larger values are unit mistakes)."""

# Plausible ranges by unit suffix (inclusive). Far wider than any real hardware; a value outside is almost
# always a unit mistake (B/s written as GB/s) and would drive the simulation into float-resolution trouble.
RANGES: dict[str, tuple[float, float]] = {
    "_TFLOPS": (1e-3, 1e6), "_GBps": (1e-3, 1e5), "_TBps": (1e-3, 1e3), "_GB": (0.0, 1e6), "_us": (0.0, 1e6),
    "_GFLOP": (1e-6, 1e6), "_bytes": (0, 2**50), "oversubscription": (1e-3, 1e3), "compute_slowdown": (0.0, 100.0),
    "nodes_per_leaf": (1, MAX_GPUS), "nodes": (1, MAX_GPUS), "gpus_per_node": (1, 4096),
}
"""(min, max) of numeric keys by name suffix, inclusive; a rule of ``float`` also excludes 0 (``hbm_GB``);
efficiencies are in [:data:`MIN_EFFICIENCY`, 1] by their own rule.

Every value in these ranges keeps a step's arithmetic finite: the smallest rates (1e-3 TFLOP/s or GB/s at
1% efficiency) against the largest model and sequence still give finite times (< 1e30 s), and the README
table ("Errors and limits") lists exactly these ranges."""
MIN_EFFICIENCY = 0.01
"""Lowest efficiency accepted: 1% of a peak is already far below any measured kernel or link (hardware.md
§4, §9: 0.37–0.95), and denormal values such as 5e-324 would turn times into infinity."""
MFU_PEAK_RATIO = (0.5, 2.0)
"""``gpu.mfu_peak_TFLOPS`` within this factor of ``gpu.peak_bf16_TFLOPS``: the MFU denominator is the dense
BF16 peak (torchtitan's values sit within 1% of the datasheet), and compute runs at ``peak_bf16_TFLOPS``, so
a denominator far below it reports MFU far above 100%."""


_SCHEMA: dict[str, Any] = {
    "name": str,
    "description": str,
    "inherit": str,
    "nodes": int,
    "gpus_per_node": int,
    "gpu": {
        "name": str, "peak_bf16_TFLOPS": float, "peak_fp8_TFLOPS": float, "mfu_peak_TFLOPS": float,
        "hbm_GB": float, "hbm_TBps": float, "runtime_reserve_GB": "nonneg", "kernel_launch_us": "nonneg",
        "gemm_efficiency": "eff", "gemm_half_GFLOP": float, "attn_fwd_efficiency": "eff",
        "attn_bwd_efficiency": "eff", "hbm_efficiency": "eff", "sm_count": int,
    },
    "intra": {
        "kind": ("full_mesh", "switch"), "link_GBps": float, "link_efficiency": "eff",
        "collective_efficiency": "eff", "hop_latency_us": "nonneg", "direct_alpha_us": "nonneg",
        "ring_base_us": "nonneg", "ring_step_us": "nonneg", "direct_max_bytes": "nonneg_int",
        "compute_slowdown": "nonneg",
        # collective model (issue 12): optional, defaults in tspsim.spec.topology.IntraFabric
        "tree_step_us": "nonneg", "chunk_bytes": int,
        "ll": {"bandwidth_factor": "eff", "base_us": "nonneg", "ring_step_us": "nonneg", "tree_step_us": "nonneg"},
        "ll128": {"bandwidth_factor": "eff", "base_us": "nonneg", "ring_step_us": "nonneg",
                  "tree_step_us": "nonneg"},
        "nvls": {"busbw_GBps": float, "step_us": "nonneg", "net_step_us": "nonneg"},
    },
    "inter": {
        "topology": ("rails_only", "rail_optimized_fat_tree"), "nic_GBps": float, "nic_efficiency": "eff",
        "pcie_GBps": float, "nodes_per_leaf": int, "oversubscription": float,
        "hop_latency_us": "nonneg", "ring_step_us": "nonneg", "base_us": "nonneg",
        "compute_slowdown": "nonneg",
        # collective model (issue 12): optional, defaults in tspsim.spec.topology.InterFabric
        "collective_efficiency": "eff", "tree_step_us": "nonneg", "net_overhead_us": "nonneg",
        "p2p_concurrency": int,
        "ll": {"bandwidth_factor": "eff", "ring_step_us": "nonneg", "tree_step_us": "nonneg"},
        "ll128": {"bandwidth_factor": "eff", "ring_step_us": "nonneg", "tree_step_us": "nonneg"},
    },
}
_OPTIONAL = {"description", "inherit", "inter"}
_SECTION_OPTIONAL = {
    ".gpu": {"sm_count"},
    ".intra": {"tree_step_us", "chunk_bytes", "ll", "ll128", "nvls"},
    ".intra.nvls": {"net_step_us"},
    ".inter": {"collective_efficiency", "tree_step_us", "net_overhead_us", "p2p_concurrency", "ll", "ll128"},
}
"""Optional keys of nested sections, by key path (a missing one takes the dataclass default)."""


def preset_names() -> list[str]:
    """Names of the built-in topology presets."""
    return _FILES.names()


def load_topology(name_or_path: str) -> Topology:
    """Load a preset by name or a user's YAML file by path, validating every key.

    Raises:
        ConfigError: one line naming the file, the key path and what was expected.
    """
    raw, source = _FILES.read(name_or_path)
    return _build(raw, source)


def _expected(rule: Any) -> str:
    """What a schema rule accepts, for messages."""
    if isinstance(rule, dict):
        return "a mapping of keys to values"
    if isinstance(rule, tuple):
        return "one of " + ", ".join(rule)
    return {str: "text", int: "a whole number ≥ 1", "nonneg_int": "a whole number ≥ 0",
            float: "a positive number", "nonneg": "a number ≥ 0",
            "eff": f"an efficiency in [{MIN_EFFICIENCY:g}, 1]"}[rule]


def _check(value: Any, rule: Any, where: str) -> Any:
    if isinstance(rule, tuple):
        if not isinstance(value, str) or value not in rule:
            raise ConfigError(f"{where}: expected one of {', '.join(rule)}, got {describe_value(value)}")
        return value
    if rule is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected text, got {describe_value(value)}; quote it if it is a name")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected {_expected(rule)}, got {describe_value(value)}{number_hint(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: expected {_expected(rule)}, got {describe_value(value)} "
                          "(NaN and infinity are not allowed)")
    key = where.rsplit(".", 1)[-1]
    bounds = next((b for suffix, b in RANGES.items() if key.endswith(suffix)), None)
    if bounds is None and abs(value) > MAX_NUMBER:
        raise ConfigError(f"{where}: {describe_value(value)} is out of range (the limit is {MAX_NUMBER:.0e}); "
                          "check the units")
    original = value
    value = _check_kind(value, rule, where)
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        raise ConfigError(f"{where}: {describe_value(original)} is outside the plausible range "
                          f"[{bounds[0]:g}, {bounds[1]:g}]; check the units")
    return value


def _check_kind(value: int | float, rule: Any, where: str) -> int | float:
    if rule is int or rule == "nonneg_int":
        if value != int(value):
            raise ConfigError(f"{where}: expected a whole number, got {describe_value(value)}")
        value = int(value)
        if value < (0 if rule == "nonneg_int" else 1):
            raise ConfigError(f"{where}: must be {'≥ 0' if rule == 'nonneg_int' else '≥ 1'}, got {value}")
        return value
    value = float(value)
    if rule == "eff" and not MIN_EFFICIENCY <= value <= 1.0:
        raise ConfigError(f"{where}: an efficiency must be in [{MIN_EFFICIENCY:g}, 1] (a fraction of the peak), "
                          f"got {describe_value(value)}")
    if rule == "nonneg" and value < 0:
        raise ConfigError(f"{where}: must be ≥ 0, got {describe_value(value)}")
    if rule is float and value <= 0:
        raise ConfigError(f"{where}: must be positive, got {describe_value(value)}")
    return value


def _validate_section(data: Any, schema: dict[str, Any], source: str, keypath: str,
                      optional: set[str]) -> dict[str, Any]:
    """Check ``data`` against ``schema``; messages read ``FILE: .key.path: problem`` (jq-style paths)."""
    where = f"{source}: {keypath}" if keypath else source
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {describe_value(data)}")
    unknown = sorted((k for k in data if k not in schema), key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown key {describe_value(unknown[0])}; allowed keys: {', '.join(schema)}")
    missing = [k for k in schema if k not in data and k not in optional]
    if missing:
        raise ConfigError(f"{where}: missing key {missing[0]!r} ({_expected(schema[missing[0]])})")
    out = {}
    for key, value in data.items():
        rule = schema[key]
        sub = f"{keypath}.{key}"
        out[key] = (_validate_section(value, rule, source, sub, _SECTION_OPTIONAL.get(sub, set()))
                    if isinstance(rule, dict)
                    else _check(value, rule, f"{source}: {sub}"))
    return out


def _link_count(data: dict[str, Any]) -> int:
    """Directed links :func:`_build_links` will create for validated ``data``."""
    nodes, g = data["nodes"], data["gpus_per_node"]
    count = nodes * (g * (g - 1) if data["intra"]["kind"] == "full_mesh" else 2 * g)
    if "inter" in data:
        count += 4 * nodes * g + 2 * g * -(-nodes // data["inter"]["nodes_per_leaf"])
    if "nvls" in data["intra"]:
        count += nodes  # one NVLS reduction engine per node
    return count


def _fabric_fields(section: dict[str, Any]) -> dict[str, Any]:
    """A validated fabric section with its protocol and NVLS sub-mappings as dataclasses."""
    out = dict(section)
    for key in ("ll", "ll128"):
        if key in out:
            out[key] = Protocol(**out[key])
    if "nvls" in out:
        out["nvls"] = Nvls(**out["nvls"])
    return out


def _build(raw: dict[str, Any], source: Path) -> Topology:
    where = str(source)
    data = _validate_section(raw, _SCHEMA, where, "", _OPTIONAL)
    if data["nodes"] > 1 and "inter" not in data:
        raise ConfigError(f"{where}: {data['nodes']} nodes need an 'inter' section (the scale-out network)")
    if "nvls" in data["intra"] and data["intra"]["kind"] != "switch":
        raise ConfigError(f"{where}: .intra.nvls: NVLink SHARP is a switch feature; remove it or use "
                          "intra.kind: switch")
    gpu = data["gpu"]
    lo, hi = MFU_PEAK_RATIO
    if not lo * gpu["peak_bf16_TFLOPS"] <= gpu["mfu_peak_TFLOPS"] <= hi * gpu["peak_bf16_TFLOPS"]:
        raise ConfigError(f"{where}: .gpu.mfu_peak_TFLOPS: {gpu['mfu_peak_TFLOPS']:g} is not within {lo:g}–{hi:g}× "
                          f".gpu.peak_bf16_TFLOPS ({gpu['peak_bf16_TFLOPS']:g}); the MFU denominator is the dense "
                          "BF16 peak (else MFU is far from 0–100%)")
    world = data["nodes"] * data["gpus_per_node"]
    if world > MAX_GPUS:
        raise ConfigError(f"{where}: nodes × gpus_per_node = {world:,} GPUs; the limit is {MAX_GPUS:,}")
    links = _link_count(data)
    if links > MAX_LINKS:
        raise ConfigError(f"{where}: this cluster has {links:,} directed links; the limit is {MAX_LINKS:,} "
                          "(a full mesh grows as gpus_per_node²: use intra.kind: switch for large nodes)")
    inter = InterFabric(**_fabric_fields(data["inter"])) if "inter" in data else None
    digest = hashlib.sha256(yaml.safe_dump(raw, sort_keys=True).encode()).hexdigest()
    return Topology(
        name=data["name"],
        description=data.get("description", ""),
        gpu=GpuSpec(**data["gpu"]),
        nodes=data["nodes"],
        gpus_per_node=data["gpus_per_node"],
        intra=IntraFabric(**_fabric_fields(data["intra"])),
        inter=inter,
        source_sha256=digest,
        resolved=raw,
    )

