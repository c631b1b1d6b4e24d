"""The sweep cache: one small JSON file per finished point, trusted only when it checks out.

One small JSON file per point, ``DIR/cache/<key>.json``, written atomically
(:mod:`tspsim.core.files`). The key is the SHA-256 of the point's fields, the SHA-256 of the model and
topology definitions and the tspsim version, so editing a model/topology YAML file invalidates the
points that use it. A cache file is trusted only if it parses, names the same key and point, and its
entry matches the checksum stored with it; anything else is ignored and the point is recomputed.

A run entry is stored *normalized* (:func:`normalize_entry`): JSON round-tripped, wall-clock fields null.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tspsim import __version__
from tspsim.core.errors import TspsimError
from tspsim.core.files import FileShapeError, read_regular
from tspsim.explore.grid import SIMULATED_MODES
from tspsim.simulate import Point
from tspsim.spec.loader import SpecLoader
from tspsim.spec.workload import INFERENCE_MODES

CACHE_FORMAT = 1
"""Version of the cache-file layout."""
MAX_CACHE_FILE_BYTES = 64 << 20
"""Largest cache file read (an entry is a few KB); a larger one is ignored and its point recomputed."""

Entry = dict[str, Any]


# ---------------------------------------------------------------------------------- entries
def wall_clock_keys(entry: Entry) -> list[str]:
    """Top-level keys holding wall-clock measurements (``sim_wall_s`` and any other ``*wall_s``)."""
    return sorted(k for k in entry if k.endswith("wall_s"))


def canonical_json(obj: Any) -> str:
    """Compact JSON with sorted keys (for hashes and checksums)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def normalize_entry(entry: Entry) -> Entry:
    """The entry as stored: JSON round-tripped (plain types) with wall-clock fields set to ``None``."""
    out = json.loads(canonical_json(entry))
    for key in wall_clock_keys(out):
        out[key] = None
    return out


class Loader(SpecLoader):
    """Memoized model / topology / stack loading for one sweep (:class:`~tspsim.spec.loader.SpecLoader`)."""


def resolve_point(point: Point, loader: Loader | None = None) -> dict[str, int]:
    """Resolved degrees of ``point`` (the layout's ``degrees``), without building its graph.

    Raises:
        TspsimError: if the schedule, mode, degrees, sequence or batch do not fit.
    """
    from tspsim.schedules import SCHEDULES
    from tspsim.simulate.point import resolve_layout

    loader = loader or Loader()
    SCHEDULES.get(point.schedule)
    if point.mode not in SIMULATED_MODES:
        raise TspsimError(f"unknown mode {point.mode!r}: choose one of {', '.join(SIMULATED_MODES)}")
    if point.schedule == "tp+sp" and point.degree is not None and point.tp is None and point.sp is None:
        raise TspsimError("tp+sp takes --tp T and --sp S (not --degree)")
    topo, model = loader.topology(point.topology), loader.model(point.model)
    layout, _workload, _opts = resolve_layout(point, topo, model, loader)
    return dict(layout.degrees)


def point_record(point: Point) -> dict[str, Any]:
    """The point's fields as stored in a cache file and hashed into its key.

    Every field, except ``search_max_batch`` for ``train`` and ``forward`` points (it changes nothing
    there), so the keys of training points are those of tspsim versions before the field existed.
    """
    record = asdict(point)
    if point.mode not in INFERENCE_MODES:
        record.pop("search_max_batch", None)
    if point.pipeline == type(point.pipeline)():   # no pipeline: the keys of points from before pipelines existed
        record.pop("pipeline", None)
    return record


def point_key(point: Point, loader: Loader | None = None) -> str:
    """Stable SHA-256 of the point (:func:`point_record`), its definitions and tspsim's version.

    The definitions are the model, the topology and the resolved software stack (editing a stack file
    invalidates its points).
    """
    loader = loader or Loader()
    payload = {"cache_format": CACHE_FORMAT, "tspsim_version": __version__, "point": point_record(point),
               "model_sha256": loader.model(point.model).sha256,
               "topology_sha256": loader.topology(point.topology).source_sha256,
               "stack_sha256": loader.assumptions(dict(point.options)).stack.sha256}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


# ---------------------------------------------------------------------------------- cache
class PointCache:
    """Finished points, one JSON file each in ``directory`` (None: no cache, nothing is stored)."""

    def __init__(self, directory: str | Path | None, fresh: bool = False) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.fresh = fresh
        """Ignore existing files (they are overwritten as points finish)."""
        self.ignored: list[tuple[Path, str]] = []
        """Cache files that could not be trusted, with the reason (each point is recomputed)."""

    def path(self, key: str) -> Path | None:
        """File of ``key`` (None without a directory)."""
        return self.directory / f"{key}.json" if self.directory is not None else None

    def load(self, key: str, point: Point) -> tuple[Entry, float | None] | None:
        """(entry, wall seconds) of a finished point, or None if absent or not trustworthy."""
        path = self.path(key)
        if path is None or self.fresh or not path.exists():
            return None
        try:
            data = json.loads(read_regular(path, MAX_CACHE_FILE_BYTES).decode())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            if data.get("key") != key or data.get("point") != json.loads(canonical_json(point_record(point))):
                raise ValueError("written for another point")
            entry = data.get("entry")
            if not isinstance(entry, dict) or data.get("entry_sha256") != _checksum(entry):
                raise ValueError("entry does not match its checksum")
            wall = data.get("wall_s")
            wall_s = float(wall) if isinstance(wall, (int, float)) and not isinstance(wall, bool) else None
        except RecursionError:  # nested deeper than json (or the checksum) can follow
            self.ignored.append((path, "JSON nested too deeply"))
            return None
        except (OSError, UnicodeDecodeError, ValueError, OverflowError, FileShapeError) as exc:
            self.ignored.append((path, str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__))
            return None
        return entry, wall_s

    def store(self, key: str, point: Point, entry: Entry, wall_s: float | None) -> None:
        """Write one finished point atomically (no-op without a directory)."""
        from tspsim.core.files import write_text_atomic

        path = self.path(key)
        if path is None:
            return
        data = {"cache_format": CACHE_FORMAT, "key": key, "point": point_record(point), "entry": entry,
                "entry_sha256": _checksum(entry), "wall_s": wall_s}
        write_text_atomic(path, json.dumps(data, sort_keys=True, default=str) + "\n")

    def count(self) -> int:
        """Number of cache files present."""
        if self.directory is None or not self.directory.is_dir():
            return 0
        return sum(1 for _ in self.directory.glob("*.json"))


def _checksum(entry: Entry) -> str:
    return hashlib.sha256(canonical_json(entry).encode()).hexdigest()
