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

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tspsim import __version__
from tspsim.atomic import write_text_atomic
from tspsim.errors import TraceError
from tspsim.opgraph import OpGraph
from tspsim.timeline import Timeline

FORMAT = "tspsim-result"
VERSION = 1


@dataclass
class SavedRun:
    """One run read back from a result file."""

    entry: dict[str, Any]
    """The stable run entry."""
    timeline: Timeline
    """The timeline, with its op graph."""


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


def timeline_from_json(doc: dict[str, Any], graph: OpGraph) -> Timeline:
    """Inverse of :func:`timeline_to_json`."""
    n = len(graph.ops)
    spans = []
    for item in doc["spans"]:
        op, a, b = int(item[0]), float(item[1]), float(item[2])
        if not 0 <= op < n:
            raise ValueError(f"span for missing op {op}")
        spans.append((op, a, b))
    return Timeline(
        graph=graph, topology_name=str(doc.get("topology", "")), spans=spans,
        memory={int(r): [(float(t), str(c), int(d)) for t, c, d in ev] for r, ev in doc.get("memory", {}).items()},
        links={int(k): [(float(t), float(v)) for t, v in s] for k, s in doc.get("links", {}).items()},
        link_meta={int(k): v for k, v in doc.get("link_meta", {}).items()},
        sent_bytes={int(r): v for r, v in doc.get("sent_bytes", {}).items()},
        recv_bytes={int(r): v for r, v in doc.get("recv_bytes", {}).items()},
        collective_algorithms=dict(doc.get("collective_algorithms", {})),
        op_sent_bytes={int(k): float(v) for k, v in doc.get("op_sent_bytes", {}).items()},
        sim_events=int(doc.get("sim_events", 0)), sim_wall_s=float(doc.get("sim_wall_s", 0.0)),
    )


def save_results(path: str | Path, runs: list[tuple[dict[str, Any], Timeline]]) -> None:
    """Write runs (entry, timeline) atomically."""
    doc = {"format": FORMAT, "version": VERSION, "tspsim_version": __version__,
           "runs": [{"entry": entry, "graph": tl.graph.to_json(), "timeline": timeline_to_json(tl)}
                    for entry, tl in runs]}
    write_text_atomic(Path(path), json.dumps(doc, separators=(",", ":"), sort_keys=True))


def load_results(path: str | Path) -> list[SavedRun]:
    """Read a result file.

    Raises:
        TraceError: one line for a missing, truncated, foreign or differently versioned file.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
        text = gzip.decompress(data).decode() if data[:2] == b"\x1f\x8b" else data.decode()
    except FileNotFoundError:
        raise TraceError(f"{p}: result file not found; create one with tspsim run ... --save {p}") from None
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as exc:
        raise TraceError(f"{p}: cannot read result file ({exc}); it may be truncated") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceError(f"{p}: not valid JSON (line {exc.lineno}: {exc.msg}); the file may be truncated — "
                         "rerun tspsim run --save") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise TraceError(f"{p}: not a tspsim result file (expected \"format\": \"{FORMAT}\"); "
                         "create one with tspsim run --save")
    if doc.get("version") != VERSION:
        raise TraceError(f"{p}: result format version {doc.get('version')!r} is not supported by tspsim "
                         f"{__version__} (reads version {VERSION}); rerun tspsim run --save with this version")
    runs = []
    try:
        for i, run in enumerate(doc["runs"]):
            graph = OpGraph.from_json(run["graph"], f"{p} runs[{i}].graph")
            runs.append(SavedRun(dict(run["entry"]), timeline_from_json(run["timeline"], graph)))
    except TraceError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise TraceError(f"{p}: malformed result file ({exc}); rerun tspsim run --save") from None
    if not runs:
        raise TraceError(f"{p}: result file holds no runs")
    return runs
