"""Reading and checking an op graph from a file: every field's type and range, and the structure.

A graph built by a schedule is correct by construction; one read from a trace file (``tspsim replay``) or
a result file is not, so :func:`parse_graph_document` checks every field and :func:`validate` the
structure (ids, ranks, dependencies, acyclicity, collective consistency) before the engine sees it.
Messages name the file and the JSON path: ``trace.json: ops[12].nbytes: …``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tspsim.core.errors import TraceError
from tspsim.core.units import format_ranks
from tspsim.opgraph.op import (
    ALGORITHMS,
    COLLECTIVE_KINDS,
    COMPUTE_KINDS,
    FORMAT,
    FORMAT_VERSION,
    MAX_FLOAT,
    MAX_INT,
    MAX_RANK,
    MEMORY_CATEGORIES,
    P2P_KINDS,
    Op,
)

if TYPE_CHECKING:  # imported where a graph is built: keeps `tspsim --help` and `list` fast
    import networkx as nx


class GraphLike(Protocol):
    """What :func:`validate` reads of an :class:`~tspsim.opgraph.graph.OpGraph`.

    Structural, so the graph module can call the checks without the checks importing it back.
    """

    ops: list[Op]
    ranks: tuple[int, ...]
    replica_nodes: int

    @property
    def graph(self) -> nx.DiGraph:
        """Dependency graph of the ops."""

    def streams(self) -> dict[tuple[int, str], list[Op]]:
        """Ops of each (rank, stream) in issue order."""


def parse_graph_document(doc: Any, where: str) -> tuple[list[Op], dict[str, Any], tuple[int, ...], int]:
    """(ops, meta, ranks, replica_nodes) of a saved graph's JSON form, every field checked.

    Raises:
        TraceError: ``WHERE: ops[3].rank: expected ..., got ...`` style messages.
    """
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise TraceError(f"{where}: not a tspsim op graph (missing \"format\": \"{FORMAT}\")")
    if doc.get("version") != FORMAT_VERSION:
        raise TraceError(f"{where}: op-graph version {doc.get('version')!r} is not supported "
                         f"(this tspsim reads version {FORMAT_VERSION}); regenerate it with tspsim generate")
    unknown = sorted(set(doc) - _DOC_KEYS)
    if unknown:
        raise TraceError(f"{where}: unknown key {unknown[0]!r}; an op graph has keys "
                         f"{', '.join(sorted(_DOC_KEYS))}")
    ops_raw = doc.get("ops")
    if not isinstance(ops_raw, list):
        raise TraceError(f"{where}: key 'ops' must be a list of ops, got {_show(ops_raw)}")
    ops = []
    for i, o in enumerate(ops_raw):
        try:
            ops.append(_parse_op(o))
        except _Bad as bad:
            sep = "" if not bad.field or bad.field.startswith("[") else "."
            raise TraceError(f"{where}: ops[{i}]{sep}{bad.field}: {bad}") from None
    meta = doc.get("meta", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise TraceError(f"{where}: key 'meta' must be a mapping, got {_show(meta)}")
    ranks_raw = doc.get("ranks") or []
    if not isinstance(ranks_raw, list):
        raise TraceError(f"{where}: key 'ranks' must be a list of ranks, got {_show(ranks_raw)}")
    try:
        ranks = tuple(_ints(ranks_raw, "ranks", 0, MAX_RANK - 1))
    except _Bad as bad:
        raise TraceError(f"{where}: {bad.field}: {bad}") from None
    if len(set(ranks)) != len(ranks):
        raise TraceError(f"{where}: key 'ranks' lists a rank twice")
    replica_nodes = doc.get("replica_nodes", 0)
    if replica_nodes is None:
        replica_nodes = 0
    if isinstance(replica_nodes, bool) or not isinstance(replica_nodes, int) or replica_nodes < 0:
        raise TraceError(f"{where}: key 'replica_nodes' must be a whole number ≥ 0, got {_show(replica_nodes)}")
    return ops, meta, ranks or tuple(sorted({o.rank for o in ops})), replica_nodes


_DOC_KEYS = {"format", "version", "meta", "ranks", "replica_nodes", "ops"}
_OP_KEYS = {"id", "rank", "stream", "kind", "name", "layer", "phase", "flops", "hbm_bytes", "shape", "nbytes",
            "group", "coll", "root", "algorithm", "mem", "deps", "host_us"}


def parse_json(text: str, path: Path, what: str, fix: str) -> Any:
    """``json.loads`` with one-line errors naming ``path`` (truncation, nesting, huge numbers).

    Raises:
        TraceError: the text is not valid JSON.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        cut = " — the file looks truncated" if exc.pos >= len(text.rstrip()) else ""
        raise TraceError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}){cut}; "
                         f"{fix}") from None
    except RecursionError:
        raise TraceError(f"{path}: JSON nested too deeply to be a {what}; {fix}") from None
    except ValueError as exc:  # e.g. an integer with thousands of digits
        raise TraceError(f"{path}: invalid JSON value ({str(exc).split(';')[0]}); {fix}") from None


def _show(value: Any) -> str:
    """A JSON value for messages, shortened."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"a number of about {int(value.bit_length() * 0.30103)} digits"
    text = json.dumps(value) if isinstance(value, (str, bool)) or value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Bad(Exception):
    """A field problem; the caller prefixes the location (kept out of the fast path)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _int(value: Any, field: str, minimum: int | None = None, maximum: int = MAX_INT) -> int:
    if type(value) is not int:  # bool is not accepted either
        raise _Bad(field, f"expected a whole number, got {_show(value)}")
    if minimum is not None and value < minimum:
        raise _Bad(field, f"must be ≥ {minimum}, got {value}")
    if abs(value) > maximum:
        raise _Bad(field, f"{_show(value)} is out of range (the limit is {maximum:,})")
    return value


def _rank(value: Any, field: str) -> int:
    return _int(value, field, 0, MAX_RANK - 1)


def _ints(value: Any, field: str, minimum: int, maximum: int = MAX_INT) -> list[int]:
    """A list of whole numbers in [minimum, maximum]; one pass when valid, a precise message when not."""
    if type(value) is not list:
        raise _Bad(field, f"expected a list, got {_show(value)}")
    if value and not (all(type(x) is int for x in value) and minimum <= min(value) and max(value) <= maximum):
        for j, x in enumerate(value):
            _int(x, f"{field}[{j}]", minimum, maximum)
    return value


def _number(value: Any, field: str) -> float:
    if type(value) is float:
        if math.isfinite(value) and 0.0 <= value <= MAX_FLOAT:
            return value
    elif type(value) is int and 0 <= value <= MAX_FLOAT:
        return float(value)
    if type(value) not in (int, float):
        raise _Bad(field, f"expected a number, got {_show(value)}")
    raise _Bad(field, f"expected a finite number in [0, {MAX_FLOAT:.0e}], got {_show(value)}")


def _text(value: Any, field: str, nonempty: bool = False) -> str:
    if type(value) is not str or (nonempty and not value):
        raise _Bad(field, f"expected {'non-empty ' if nonempty else ''}text, got {_show(value)}")
    return value


_ALL_KINDS = frozenset(COMPUTE_KINDS + COLLECTIVE_KINDS + P2P_KINDS)
_MEM_WHEN = frozenset(("start", "end"))
_MEM_CATS = frozenset(MEMORY_CATEGORIES)


def _parse_op(o: Any) -> Op:
    """One op from its JSON form, every field checked; raises :class:`_Bad` naming the field."""
    if type(o) is not dict:
        raise _Bad("", f"expected an op (a mapping with the fields of tspsim.opgraph.Op), got {_show(o)}")
    if not o.keys() <= _OP_KEYS:
        unknown = sorted(set(o) - _OP_KEYS)[0]
        raise _Bad("", f"unknown field {unknown!r}; an op has fields {', '.join(sorted(_OP_KEYS))}")
    for key in ("id", "rank", "stream", "kind", "name"):
        if key not in o:
            raise _Bad("", f"missing field {key!r}")
    kind = o["kind"]
    if type(kind) is not str or kind not in _ALL_KINDS:
        if type(kind) is not str:
            raise _Bad("kind", f"expected text, got {_show(kind)}")
        raise _Bad("kind", f"unknown kind {_show(kind)}; choose one of "
                           f"{', '.join(COMPUTE_KINDS + COLLECTIVE_KINDS + P2P_KINDS)}")
    mem: tuple[tuple[str, str, int], ...] = ()
    if "mem" in o:
        raw = o["mem"]
        if type(raw) is not list:
            raise _Bad("mem", f"expected a list, got {_show(raw)}")
        out = []
        for j, m in enumerate(raw):
            ok = type(m) is list and len(m) == 3 and type(m[0]) is str and type(m[1]) is str
            if not ok or m[0] not in _MEM_WHEN or m[1] not in _MEM_CATS:
                if ok and m[0] in _MEM_WHEN:
                    raise _Bad(f"mem[{j}]", f"unknown memory category {_show(m[1])}; choose one of "
                                            f"{', '.join(MEMORY_CATEGORIES)}")
                raise _Bad(f"mem[{j}]", f"expected [\"start\"|\"end\", category, bytes], got {_show(m)}")
            out.append((m[0], m[1], _int(m[2], f"mem[{j}][2]")))
        mem = tuple(out)
    algorithm = _text(o.get("algorithm", ""), "algorithm")
    if algorithm:
        if algorithm not in ALGORITHMS:
            raise _Bad("algorithm", f"unknown algorithm {_show(algorithm)}; choose one of "
                                    f"{', '.join(ALGORITHMS)} or leave it out")
    return Op(id=_int(o["id"], "id"), rank=_rank(o["rank"], "rank"), stream=_text(o["stream"], "stream", True),
              kind=kind, name=_text(o["name"], "name"), layer=_int(o.get("layer", -1), "layer", -1),
              phase=_text(o.get("phase", "fwd"), "phase", True), flops=_number(o.get("flops", 0.0), "flops"),
              hbm_bytes=_number(o.get("hbm_bytes", 0.0), "hbm_bytes"),
              shape=tuple(_ints(o.get("shape", []), "shape", 0)), nbytes=_int(o.get("nbytes", 0), "nbytes", 0),
              group=tuple(_ints(o.get("group", []), "group", 0, MAX_RANK - 1)), coll=_text(o.get("coll", ""), "coll"),
              root=_int(o.get("root", -1), "root", -1), algorithm=algorithm, mem=mem,
              deps=list(_ints(o.get("deps", []), "deps", -MAX_INT)), host_us=_number(o.get("host_us", 0.0), "host_us"))


def _label(op: Op) -> str:
    return f"op {op.id} ({op.kind} {op.name!r} on rank {op.rank})"


def validate(graph: GraphLike, where: str = "op graph") -> None:
    """Check ids, ranks, dependencies, acyclicity and collective consistency.

    Raises:
        TraceError: on dangling dependencies, self-dependencies, cycles, ops on ranks the graph does not
            simulate, collectives whose participants disagree on kind, size, group or root, and
            collectives or transfers a simulated participant never issues (a certain deadlock).
    """
    for i, op in enumerate(graph.ops):
        if op.id != i:
            raise TraceError(f"{where}: op ids must be 0..n-1 in order; op at position {i} has id {op.id}")
    n = len(graph.ops)
    sim = set(graph.ranks)
    for op in graph.ops:
        if op.rank not in sim:
            raise TraceError(f"{where}: {_label(op)} runs on rank {op.rank}, which is not in the graph's 'ranks' "
                             f"({_ranges(sim)})")
        for d in op.deps:
            if not 0 <= d < n:
                raise TraceError(f"{where}: {_label(op)} depends on missing op {d} (ids are 0..{n - 1})")
            if d == op.id:
                raise TraceError(f"{where}: {_label(op)} depends on itself")
    import networkx as nx

    g = graph.graph
    # Issue order on a stream is an implicit dependency: add it before looking for cycles.
    for ops in graph.streams().values():
        for a, b in zip(ops, ops[1:]):
            g.add_edge(a.id, b.id)
    if not nx.is_directed_acyclic_graph(g):
        cycle = nx.find_cycle(g)
        names = " -> ".join(f"{u} {graph.ops[u].name!r}" for u, _ in cycle[:6])
        more = " -> ..." if len(cycle) > 6 else f" -> {cycle[0][0]}"
        raise TraceError(f"{where}: dependency cycle (ops can never start): {names}{more}; deps and the issue "
                         "order on each (rank, stream) must form a DAG")
    _validate_comm(graph, where, sim)


def _validate_comm(graph: GraphLike, where: str, sim: set[int]) -> None:
    first: dict[str, Op] = {}
    issued: dict[str, dict[int, Op]] = {}
    for op in graph.ops:
        if not op.is_comm:
            continue
        if not op.coll:
            raise TraceError(f"{where}: {_label(op)} has no 'coll' id (the id its participants share)")
        if not op.group:
            raise TraceError(f"{where}: {_label(op)} has an empty 'group'")
        if len(set(op.group)) != len(op.group):
            raise TraceError(f"{where}: {_label(op)} lists a rank twice in its group {list(op.group)[:16]}")
        f = first.setdefault(op.coll, op)
        if (f.kind in P2P_KINDS) != (op.kind in P2P_KINDS):
            raise TraceError(f"{where}: coll id {op.coll!r} is shared by {_label(f)} and {_label(op)}; a transfer "
                             "and a collective need different ids")
        if op.kind in P2P_KINDS:
            if len(op.group) != 2:
                raise TraceError(f"{where}: {_label(op)} needs group [src, dst], got {list(op.group)[:16]}")
            expected_rank = op.group[0] if op.kind == "send" else op.group[1]
            if op.rank != expected_rank:
                side = "source" if op.kind == "send" else "destination"
                raise TraceError(f"{where}: {_label(op)} must run on its {side} rank {expected_rank} "
                                 f"(group [src, dst] = {list(op.group)})")
            if (f.nbytes, f.group) != (op.nbytes, op.group):
                raise TraceError(f"{where}: transfer {op.coll!r}: {_label(op)} moves {op.nbytes} B on "
                                 f"{list(op.group)} but {_label(f)} moves {f.nbytes} B on {list(f.group)}")
        else:
            if (f.kind, f.nbytes, f.group, f.root) != (op.kind, op.nbytes, op.group, op.root):
                raise TraceError(
                    f"{where}: collective {op.coll!r}: rank {op.rank} issues {op.kind} of {op.nbytes} B on "
                    f"{list(op.group)[:16]} (root {op.root}) but rank {f.rank} issues {f.kind} of {f.nbytes} B "
                    f"on {list(f.group)[:16]} (root {f.root})")
            if op.rank not in op.group:
                raise TraceError(f"{where}: rank {op.rank} issues collective {op.coll!r} but is not in its group "
                                 f"{list(op.group)[:16]}")
            if op.root != -1 and op.root not in op.group:
                raise TraceError(f"{where}: {_label(op)} has root {op.root}, which is not in its group")
        per = issued.setdefault(op.coll, {})
        key = op.rank if op.kind not in P2P_KINDS else (0 if op.kind == "send" else 1)
        if key in per:
            what = f"rank {op.rank} issues collective {op.coll!r} twice" if op.kind not in P2P_KINDS else \
                f"transfer {op.coll!r} has two {op.kind} ops ({per[key].id} and {op.id})"
            raise TraceError(f"{where}: {what}; give each its own coll id")
        per[key] = op
    for coll, per in issued.items():
        f = first[coll]
        outside = [r for r in f.group if r not in sim]
        if outside and not graph.replica_nodes:
            raise TraceError(f"{where}: {_label(f)} names rank {outside[0]}, which this trace does not simulate "
                             "(no ops, not in 'ranks'); add its ops, or mark the trace as one replica of a larger "
                             "job with 'replica_nodes'")
        if f.kind in P2P_KINDS:
            src, dst = f.group
            for side, kind in ((src, "send"), (dst, "recv")):
                if side in sim and (0 if kind == "send" else 1) not in per:
                    other = next(iter(per.values()))
                    raise TraceError(f"{where}: deadlock: {_label(other)} has no matching {kind} on rank {side} "
                                     f"(coll {coll!r}); rank {other.rank} would wait forever")
        else:
            missing = sorted(r for r in f.group if r in sim and r not in per)
            if missing:
                waiting = sorted(per)
                raise TraceError(f"{where}: deadlock: collective {coll!r} ({f.kind} {f.name!r}) is issued by ranks "
                                 f"{_ranges(waiting)} but never by rank(s) {_ranges(missing)} of its group; "
                                 f"ranks {_ranges(waiting)} would wait forever")


def _ranges(ranks: Iterable[int]) -> str:
    """``0-7,16`` for a rank set (at most 80 characters)."""
    return format_ranks(ranks, max_chars=80)


