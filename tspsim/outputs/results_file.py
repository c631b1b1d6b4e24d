"""Result files: what ``tspsim run --save RESULT.json`` writes and ``view`` / ``export`` read.

Format (versioned; ``.gz`` names are gzip-compressed)::

    {"format": "tspsim-result", "version": 1, "tspsim_version": "...",
     "runs": [{"entry": {...stable run entry...},
               "graph": {...op graph, tspsim.opgraph format...},
               "timeline": {"topology": NAME, "spans": [[op, start_s, end_s], ...],
                            "memory": {"RANK": [[t_s, category, delta_bytes], ...]},
                            "links": {"LINK": [[t_s, Bps], ...]}, "link_meta": {"LINK": {...}},
                            "sent_bytes": {"RANK": {kind: bytes}}, "recv_bytes": {...},
                            "collective_algorithms": {...}, "sim_events": N, "sim_wall_s": s}}]}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tspsim import __version__
from tspsim.core.errors import TraceError
from tspsim.core.files import read_document, write_text_atomic
from tspsim.engine.timeline import Timeline
from tspsim.opgraph import MEMORY_CATEGORIES, OpGraph, parse_json

FORMAT = "tspsim-result"
VERSION = 1


@dataclass
class SavedRun:
    """One run read back from a result file."""

    entry: dict[str, Any]
    """The stable run entry."""
    timeline: Timeline
    """The timeline, with its op graph."""


def missing_parts(tl: Timeline) -> list[str]:
    """What a timeline does not hold that the viewer and the exports can show (one phrase each)."""
    out = []
    if not tl.links:
        out.append("link utilisation (no link rates were recorded: tspsim run --save, --html and --trace and "
                   "tspsim replay --save record them; files saved by older versions of tspsim run --save lack "
                   "them)")
    if not tl.memory:
        out.append("memory events (the op graph has no allocations)")
    return out


def timeline_to_json(tl: Timeline) -> dict[str, Any]:
    """JSON form of a timeline (without the graph)."""
    return {
        "topology": tl.topology_name,
        "spans": [[op, round(a, 12), round(b, 12)] for op, a, b in tl.spans],
        "memory": {str(r): [[round(t, 12), c, d] for t, c, d in ev] for r, ev in sorted(tl.memory.items())},
        "links": {str(k): [[round(t, 12), v] for t, v in s] for k, s in sorted(tl.links.items())},
        "link_meta": {str(k): v for k, v in sorted(tl.link_meta.items())},
        "sent_bytes": {str(r): v for r, v in sorted(tl.sent_bytes.items())},
        "recv_bytes": {str(r): v for r, v in sorted(tl.recv_bytes.items())},
        "collective_algorithms": dict(sorted(tl.collective_algorithms.items())),
        "op_sent_bytes": {str(k): v for k, v in sorted(tl.op_sent_bytes.items())},
        "sim_events": tl.sim_events,
        "sim_wall_s": tl.sim_wall_s,
    }


def timeline_from_json(doc: dict[str, Any], graph: OpGraph, where: str = "timeline") -> Timeline:
    """Inverse of :func:`timeline_to_json`, validating every field.

    Raises:
        TraceError: ``WHERE.key[i]: expected ..., got ...`` for anything :func:`timeline_to_json` would not
            have written.
    """
    if not isinstance(doc, dict):
        raise TraceError(f"{where}: expected a mapping, got {_show(doc)}")
    n = len(graph.ops)
    spans = []
    for i, item in enumerate(_seq(doc.get("spans"), f"{where}.spans")):
        w = f"{where}.spans[{i}]"
        if not isinstance(item, list) or len(item) != 3:
            raise TraceError(f"{w}: expected [op id, start s, end s], got {_show(item)}")
        op, a, b = _int(item[0], w), _num(item[1], w), _num(item[2], w)
        if not 0 <= op < n:
            raise TraceError(f"{w}: span for missing op {op} (the graph has ops 0..{n - 1})")
        if not 0 <= a <= b:
            raise TraceError(f"{w}: expected 0 ≤ start ≤ end, got [{a}, {b}]")
        spans.append((op, a, b))
    memory: dict[int, list[tuple[float, str, int]]] = {}
    for r, ev in _map(doc.get("memory", {}), f"{where}.memory").items():
        w = f"{where}.memory[{r!r}]"
        events = []
        for j, item in enumerate(_seq(ev, w)):
            if not isinstance(item, list) or len(item) != 3 or item[1] not in MEMORY_CATEGORIES:
                raise TraceError(f"{w}[{j}]: expected [time s, memory category, bytes], got {_show(item)}")
            events.append((_num(item[0], f"{w}[{j}]"), str(item[1]), _int(item[2], f"{w}[{j}]", signed=True)))
        memory[_key(r, w)] = events
    links: dict[int, list[tuple[float, float]]] = {}
    for k, series in _map(doc.get("links", {}), f"{where}.links").items():
        w = f"{where}.links[{k!r}]"
        steps = []
        for j, item in enumerate(_seq(series, w)):
            if not isinstance(item, list) or len(item) != 2:
                raise TraceError(f"{w}[{j}]: expected [time s, bytes/s], got {_show(item)}")
            steps.append((_num(item[0], f"{w}[{j}]"), _num(item[1], f"{w}[{j}]")))
        links[_key(k, w)] = steps
    link_meta: dict[int, dict[str, Any]] = {}
    for k, meta in _map(doc.get("link_meta", {}), f"{where}.link_meta").items():
        w = f"{where}.link_meta[{k!r}]"
        m = _map(meta, w)
        for field in ("src", "dst", "kind"):
            if not isinstance(m.get(field), str):
                raise TraceError(f"{w}.{field}: expected text, got {_show(m.get(field))}")
        _num(m.get("capacity_Bps"), f"{w}.capacity_Bps")
        link_meta[_key(k, w)] = m
    sent, recv = ({_key(r, f"{where}.{name}[{r!r}]"): {str(kind): _num(v, f"{where}.{name}[{r!r}][{kind!r}]")
                                                     for kind, v in _map(per, f"{where}.{name}[{r!r}]").items()}
                   for r, per in _map(doc.get(name, {}), f"{where}.{name}").items()}
                  for name in ("sent_bytes", "recv_bytes"))
    algorithms = {str(k): _int(v, f"{where}.collective_algorithms[{k!r}]")
                  for k, v in _map(doc.get("collective_algorithms", {}), f"{where}.collective_algorithms").items()}
    op_sent = {_key(k, f"{where}.op_sent_bytes"): _num(v, f"{where}.op_sent_bytes[{k!r}]")
               for k, v in _map(doc.get("op_sent_bytes", {}), f"{where}.op_sent_bytes").items()}
    topology = doc.get("topology", "")
    if not isinstance(topology, str):
        raise TraceError(f"{where}.topology: expected text, got {_show(topology)}")
    return Timeline(
        graph=graph, topology_name=topology, spans=spans, memory=memory, links=links, link_meta=link_meta,
        sent_bytes=sent, recv_bytes=recv, collective_algorithms=algorithms, op_sent_bytes=op_sent,
        sim_events=_int(doc.get("sim_events", 0), f"{where}.sim_events"),
        sim_wall_s=_num(doc.get("sim_wall_s", 0.0), f"{where}.sim_wall_s"),
    )


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "a huge number"
    return text if len(text) <= 60 else text[:57] + "..."


def _seq(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise TraceError(f"{where}: expected a list, got {_show(value)}")
    return value


def _map(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TraceError(f"{where}: expected a mapping, got {_show(value)}")
    return value


def _key(key: str, where: str) -> int:
    """A JSON object key that holds a rank or link index."""
    if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) < 12):
        raise TraceError(f"{where}: key {key!r} is not a rank or link index")
    return int(key)


def _int(value: Any, where: str, signed: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (value < 0 and not signed) or abs(value) > 10**18:
        kind = "a whole number" if signed else "a whole number ≥ 0"
        raise TraceError(f"{where}: expected {kind}, got {_show(value)}")
    return value


def _num(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= 1e30:
        raise TraceError(f"{where}: expected a finite number ≥ 0, got {_show(value)}")
    return float(value)


_ENTRY_NUMBERS = ("step_time_s", "tokens_per_s", "tokens_per_s_per_gpu", "layer_tokens_per_s", "mfu",
                  "peak_memory_gb", "hbm_gb", "overlap_pct", "exposed_comm_s", "world_size", "replicas",
                  "seq_len", "batch", "sim_events", "sim_wall_s")
_ENTRY_TEXT = ("schedule", "model", "topology", "mode")
_ENTRY_MAPS = ("degrees", "assumptions", "memory_breakdown_gb", "comm_bytes_per_rank", "layer_comm_bytes_per_rank")


def check_entry(entry: Any, where: str) -> dict[str, Any]:
    """Check the types of the keys of a run entry that the viewer and the exports read.

    Raises:
        TraceError: a key with the wrong type (null is accepted wherever the stable entry allows n/a).
    """
    if not isinstance(entry, dict):
        raise TraceError(f"{where}: expected a mapping (the run's JSON entry), got {_show(entry)}")
    for key in _ENTRY_NUMBERS:
        v = entry.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                              or abs(v) > 1e30):
            raise TraceError(f"{where}.{key}: expected a finite number or null, got {_show(v)}")
    for key in _ENTRY_TEXT:
        v = entry.get(key)
        if v is not None and not isinstance(v, str):
            raise TraceError(f"{where}.{key}: expected text or null, got {_show(v)}")
    for key in _ENTRY_MAPS:
        v = entry.get(key)
        if v is not None and not isinstance(v, dict):
            raise TraceError(f"{where}.{key}: expected a mapping or null, got {_show(v)}")
    if not isinstance(entry.get("oom", False), (bool, type(None))):
        raise TraceError(f"{where}.oom: expected true, false or null, got {_show(entry.get('oom'))}")
    return dict(entry)


def save_results(path: str | Path, runs: list[tuple[dict[str, Any], Timeline]]) -> None:
    """Write runs (entry, timeline) atomically."""
    doc = {"format": FORMAT, "version": VERSION, "tspsim_version": __version__,
           "runs": [{"entry": entry, "graph": tl.graph.to_json(), "timeline": timeline_to_json(tl)}
                    for entry, tl in runs]}
    write_text_atomic(Path(path), json.dumps(doc, separators=(",", ":"), sort_keys=True))


def load_results(path: str | Path) -> list[SavedRun]:
    """Read a result file (plain or gzip JSON), validating every run.

    Raises:
        TraceError: one line for a missing, truncated, foreign, differently versioned or malformed file,
            naming the key path of the first problem (``runs[0].timeline.spans[3]: ...``).
    """
    p = Path(path)
    hint = f"create it with tspsim run ... --save {p}"
    try:
        text = read_document(p, "result file")
    except TraceError as exc:
        if str(exc).endswith("result file not found"):
            raise TraceError(f"{exc}; {hint}") from None
        raise
    doc = parse_json(text, p, "result file", "rerun tspsim run --save")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise TraceError(f"{p}: not a tspsim result file (expected \"format\": \"{FORMAT}\"); "
                         "create one with tspsim run --save")
    if doc.get("version") != VERSION:
        raise TraceError(f"{p}: result format version {doc.get('version')!r} is not supported by tspsim "
                         f"{__version__} (reads version {VERSION}); rerun tspsim run --save with this version")
    runs_raw = doc.get("runs")
    if not isinstance(runs_raw, list):
        raise TraceError(f"{p}: key 'runs' must be a list of runs, got {_show(runs_raw)}")
    runs = []
    for i, run in enumerate(runs_raw):
        w = f"{p}: runs[{i}]"
        if not isinstance(run, dict) or not {"entry", "graph", "timeline"} <= set(run):
            raise TraceError(f"{w}: expected a mapping with keys entry, graph and timeline, got {_show(run)}")
        graph = OpGraph.from_json(run["graph"], f"{w}.graph")
        entry = check_entry(run["entry"], f"{w}.entry")
        runs.append(SavedRun(entry, timeline_from_json(run["timeline"], graph, f"{w}.timeline")))
    if not runs:
        raise TraceError(f"{p}: result file holds no runs; {hint}")
    return runs
