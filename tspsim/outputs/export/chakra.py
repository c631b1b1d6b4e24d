"""Chakra execution traces (ET), one ``<prefix>.<rank>.et`` per rank, for ASTRA-sim (conventions.md (c)).

File format: a stream of length-delimited protobuf messages (varint size prefix, as chakra's
``protolib.encodeMessage``) — first a ``GlobalMetadata``, then one ``Node`` per op — in the schema of
mlcommons/chakra ``schema/protobuf/et_def.proto`` (package ``ChakraProtoMsg``). The few message types needed
are encoded here by hand (proto3 wire format, fields in field-number order, packed repeated scalars), so the
export needs no protobuf installation; the tests decode the files with :func:`read_et` and, when the
``mlc-chakra`` package is installed, check the bytes against its generated ``et_def_pb2``.

Mapping of one rank's ops:

* compute span → ``COMP_NODE`` with ``duration_micros`` (rounded), ``num_ops`` (FLOPs, int64),
  ``tensor_size`` (HBM bytes, uint64), ``is_cpu_op`` false;
* collective → ``COMM_COLL_NODE`` with ``comm_type`` (``CollectiveCommType``), ``comm_size`` (payload N·s in
  bytes, as nccl-tests counts it), ``pg_name`` (id of the rank group). ASTRA-sim's workload layer simulates
  only ALL_REDUCE, ALL_GATHER, REDUCE_SCATTER and ALL_TO_ALL: it rejects REDUCE and replays BROADCAST from
  the recorded duration instead of simulating it. So a **reduce** of N bytes over p ranks is written as a
  REDUCE_SCATTER of ⌈N·p/(p−1)⌉ bytes and a **broadcast** as an ALL_GATHER of ⌈N·p/(p−1)⌉ bytes: each
  rank then sends (p−1)/p · N·p/(p−1) = N bytes, exactly what a rank sends in the pipelined ring reduce or
  broadcast tspsim simulates (the root of a reduce sends nothing there, one more N here). The original
  kind, payload and root stay in the node's ``tspsim_kind``, ``tspsim_comm_size`` and ``tspsim_root``
  attributes (:func:`astra_collective`);
* send / recv → ``COMM_SEND_NODE`` / ``COMM_RECV_NODE`` with ``comm_src``, ``comm_dst``, ``comm_tag``,
  ``comm_size``;
* dependencies → ``data_deps`` (the only edges the ET feeder walks): the op's dependencies on the same rank
  plus the previous op of the same stream (streams run in issue order). Zero-cost ``memory`` ops are not
  exported; edges through them are kept transitively. Dependencies on other ranks' ops are dropped —
  ASTRA-sim pairs communication across ranks itself.

Node ids are tspsim op ids. ``pg_name`` values are ids into ``comm_groups.json``, written beside the traces
in ASTRA-sim's communicator-group format ``{"<id>": [ranks...]}``. Ids start at 1: ASTRA-sim reads
``pg_name`` "0" (or none) as "all ranks", which a tspsim group rarely is — a folded 1,024-GPU run simulates
one replica, and its groups name only some ranks.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tspsim import __version__
from tspsim.core.errors import TspsimError
from tspsim.core.files import write_bytes_atomic, write_text_atomic
from tspsim.engine.timeline import Timeline
from tspsim.opgraph import Op
from tspsim.outputs.export import select_ranks, span_category

SCHEMA_VERSION = "0.0.4"
"""Chakra schema version recorded in ``GlobalMetadata.version``."""

# NodeType and CollectiveCommType of et_def.proto.
INVALID_NODE, METADATA_NODE, MEM_LOAD_NODE, MEM_STORE_NODE, COMP_NODE, COMM_SEND_NODE, COMM_RECV_NODE, \
    COMM_COLL_NODE = range(8)
COMM_TYPES = {"all_reduce": 0, "reduce": 1, "all_gather": 2, "broadcast": 5, "all_to_all": 6,
              "reduce_scatter": 7}
"""tspsim collective kind → Chakra ``CollectiveCommType``."""
ASTRA_SIM_TYPES = frozenset({COMM_TYPES["all_reduce"], COMM_TYPES["all_gather"], COMM_TYPES["reduce_scatter"],
                             COMM_TYPES["all_to_all"]})
"""``CollectiveCommType`` values ASTRA-sim's workload layer simulates (the only ones the export writes)."""
_ASTRA_STAND_IN = {"reduce": "reduce_scatter", "broadcast": "all_gather"}
"""Kinds ASTRA-sim does not simulate → the collective written instead (same bytes per rank)."""


def astra_collective(kind: str, nbytes: int, group_size: int) -> tuple[int, int]:
    """(``comm_type``, ``comm_size``) to write for a tspsim collective, so ASTRA-sim simulates it.

    Reduce and broadcast become a reduce-scatter and an all-gather of ⌈N·p/(p−1)⌉ bytes (each rank sends
    N, as in the ring reduce / broadcast); every other kind is written as itself with its payload N. A
    group of one rank moves nothing: its collective is written as an all-reduce of N (0 bytes sent).
    """
    p = group_size
    if kind not in _ASTRA_STAND_IN:
        return COMM_TYPES.get(kind, COMM_TYPES["all_reduce"]), nbytes
    if p <= 1:
        return COMM_TYPES["all_reduce"], nbytes
    return COMM_TYPES[_ASTRA_STAND_IN[kind]], -(-nbytes * p // (p - 1))

# ------------------------------------------------------------------------------------- wire encoding
# AttributeProto oneof field numbers of et_def.proto, by the Python type we encode.
_ATTR_FIELD = {"double": 3, "int32": 7, "int64": 9, "uint64": 13, "bool": 27, "string": 29}


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int32/int64 negatives: ten-byte two's complement, as protobuf does
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _len_field(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _string(field: int, s: str) -> bytes:
    return _len_field(field, s.encode()) if s else b""


def _uint(field: int, n: int) -> bytes:
    return _key(field, 0) + _varint(n) if n else b""


def attribute(name: str, kind: str, value: Any) -> bytes:
    """Encode an ``AttributeProto`` (the oneof value is always written, even when zero)."""
    field = _ATTR_FIELD[kind]
    body = _string(1, name)
    if kind == "double":
        body += _key(field, 1) + struct.pack("<d", float(value))
    elif kind == "string":
        body += _len_field(field, str(value).encode())
    else:
        body += _key(field, 0) + _varint(int(value))
    return body


def global_metadata(version: str, attrs: Sequence[bytes] = ()) -> bytes:
    """Encode a ``GlobalMetadata`` message."""
    return _string(1, version) + b"".join(_len_field(2, a) for a in attrs)


def node(node_id: int, name: str, node_type: int, *, data_deps: Sequence[int] = (),
         ctrl_deps: Sequence[int] = (), start_us: int = 0, duration_us: int = 0,
         attrs: Sequence[bytes] = ()) -> bytes:
    """Encode a ``Node`` message (fields 1–7 and 10; inputs/outputs are not used)."""
    body = _uint(1, node_id) + _string(2, name) + _uint(3, node_type)
    for field, deps in ((4, ctrl_deps), (5, data_deps)):
        if deps:
            body += _len_field(field, b"".join(_varint(d) for d in deps))
    body += _uint(6, start_us) + _uint(7, duration_us)
    body += b"".join(_len_field(10, a) for a in attrs)
    return body


def delimited(message: bytes) -> bytes:
    """A message with its varint length prefix (chakra ``protolib.encodeMessage``)."""
    return _varint(len(message)) + message


# ------------------------------------------------------------------------------------- wire decoding
def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field, wire type, raw value) of every field of one message."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield field, wire, value


def _signed64(n: int) -> int:
    return n - (1 << 64) if n >= 1 << 63 else n


def decode_attribute(buf: bytes) -> tuple[str, Any]:
    """(name, value) of an encoded ``AttributeProto`` (the scalar kinds this module writes)."""
    name, value = "", None
    for field, _, raw in _fields(buf):
        if field == 1:
            name = raw.decode()
        elif field == 3:
            value = struct.unpack("<d", raw)[0]
        elif field in (7, 9):
            value = _signed64(raw)
        elif field == 13:
            value = raw
        elif field == 27:
            value = bool(raw)
        elif field == 29:
            value = raw.decode()
    return name, value


def decode_node(buf: bytes) -> dict[str, Any]:
    """An encoded ``Node`` as a dict: id, name, type, ctrl_deps, data_deps, start/duration µs, attr."""
    out: dict[str, Any] = {"id": 0, "name": "", "type": 0, "ctrl_deps": [], "data_deps": [],
                           "start_time_micros": 0, "duration_micros": 0, "attr": {}}
    for field, wire, raw in _fields(buf):
        if field == 1:
            out["id"] = raw
        elif field == 2:
            out["name"] = raw.decode()
        elif field == 3:
            out["type"] = raw
        elif field in (4, 5):
            key = "ctrl_deps" if field == 4 else "data_deps"
            if wire == 2:
                pos = 0
                while pos < len(raw):
                    v, pos = _read_varint(raw, pos)
                    out[key].append(v)
            else:
                out[key].append(raw)
        elif field == 6:
            out["start_time_micros"] = raw
        elif field == 7:
            out["duration_micros"] = raw
        elif field == 10:
            k, v = decode_attribute(raw)
            out["attr"][k] = v
    return out


def split_delimited(data: bytes) -> list[bytes]:
    """Split a length-delimited stream into message bytes."""
    msgs = []
    pos = 0
    while pos < len(data):
        n, pos = _read_varint(data, pos)
        if pos + n > len(data):
            raise ValueError("truncated message")
        msgs.append(data[pos:pos + n])
        pos += n
    return msgs


def read_et(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read an ``.et`` file (or .et.gz): (metadata {version, attr}, nodes as :func:`decode_node` dicts)."""
    import gzip

    data = Path(path).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    msgs = split_delimited(data)
    if not msgs:
        raise ValueError(f"{path}: empty execution trace")
    meta: dict[str, Any] = {"version": "", "attr": {}}
    for field, _, raw in _fields(msgs[0]):
        if field == 1:
            meta["version"] = raw.decode()
        elif field == 2:
            k, v = decode_attribute(raw)
            meta["attr"][k] = v
    return meta, [decode_node(m) for m in msgs[1:]]


# -------------------------------------------------------------------------------------------- export
def _group_ids(tl: Timeline) -> dict[tuple[int, ...], int]:
    """Collective rank groups → ``pg_name`` ids, from 1 (ASTRA-sim reads "0" as every rank)."""
    groups = sorted({op.group for op in tl.ops if op.is_comm and op.kind not in ("send", "recv")})
    return {g: i for i, g in enumerate(groups, start=1)}


def rank_nodes(tl: Timeline, rank: int, groups: dict[tuple[int, ...], int]) -> list[bytes]:
    """Encoded ``Node`` messages of one rank, in issue order."""
    ops = tl.ops
    span_of = {op_id: (a, b) for op_id, a, b in tl.spans}
    mine = [op for op in ops if op.rank == rank]
    exported = {op.id for op in mine if span_category(op) is not None}
    resolved: dict[int, list[int]] = {}

    def deps_of(op: Op) -> list[int]:
        """Same-rank exported dependencies of ``op``, looking through memory ops."""
        if op.id in resolved:
            return resolved[op.id]
        out: list[int] = []
        for d in op.deps:
            dep = ops[d]
            if dep.rank != rank:
                continue
            out.extend([d] if d in exported else deps_of(dep))
        resolved[op.id] = out
        return out

    last_on_stream: dict[str, int] = {}
    msgs = []
    for op in mine:
        prev = last_on_stream.get(op.stream)
        if op.id not in exported:
            # A memory op: later ops on this stream still follow whatever preceded it.
            resolved[op.id] = deps_of(op) + ([prev] if prev is not None else [])
            continue
        deps = list(dict.fromkeys(deps_of(op) + ([prev] if prev is not None else [])))
        last_on_stream[op.stream] = op.id
        a, b = span_of.get(op.id, (0.0, 0.0))
        start_us, dur_us = round(a * 1e6), round(b * 1e6) - round(a * 1e6)
        attrs = [attribute("is_cpu_op", "bool", False)]
        if op.is_compute:
            ntype = COMP_NODE
            attrs += [attribute("num_ops", "int64", int(op.flops)),
                      attribute("tensor_size", "uint64", int(op.hbm_bytes))]
        elif op.kind in ("send", "recv"):
            ntype = COMM_SEND_NODE if op.kind == "send" else COMM_RECV_NODE
            attrs += [attribute("comm_src", "int32", op.group[0]),
                      attribute("comm_dst", "int32", op.group[1]),
                      attribute("comm_tag", "int32", _stable_tag(op.coll)),
                      attribute("comm_size", "int64", op.nbytes)]
        else:
            ntype = COMM_COLL_NODE
            comm_type, comm_size = astra_collective(op.kind, op.nbytes, len(op.group))
            attrs += [attribute("comm_type", "int64", comm_type),
                      attribute("comm_size", "int64", comm_size),
                      attribute("pg_name", "string", str(groups[op.group]))]
            if op.kind in _ASTRA_STAND_IN:
                attrs += [attribute("tspsim_comm_size", "int64", op.nbytes),
                          attribute("tspsim_root", "int64", op.root if op.root is not None else -1)]
        attrs += [attribute("tspsim_kind", "string", op.kind), attribute("layer", "int64", op.layer),
                  attribute("phase", "string", op.phase)]
        msgs.append(node(op.id, op.name, ntype, data_deps=deps, start_us=start_us, duration_us=max(dur_us, 0),
                         attrs=attrs))
    return msgs


def _stable_tag(coll: str) -> int:
    """A deterministic int32 tag shared by a send and its recv (from the transfer id)."""
    digits = "".join(ch for ch in coll if ch.isdigit())
    return int(digits[-9:]) if digits else 0


def check_prefix(prefix: str) -> str:
    """``prefix`` if it is a plain file-name part, so ``<prefix>.<rank>.et`` stays in the output folder.

    Raises:
        TspsimError: a prefix that is empty, names a folder (a slash or backslash), is ``.`` or ``..``, starts with
            a dot or holds a control character.
    """
    bad = (not prefix or prefix in (".", "..") or prefix.startswith(".") or any(c in prefix for c in "/\\")
           or any(ord(c) < 32 or c == "\x7f" for c in prefix) or len(prefix) > 200)
    if bad:
        shown = prefix if len(prefix) <= 40 else prefix[:37] + "..."
        raise TspsimError(f"--prefix {shown!r}: give a plain file name part such as 'tspsim' (no folder, no "
                          "leading dot); the traces are written as <prefix>.<rank>.et inside the -o folder")
    return prefix


def write_traces(entry: dict[str, Any], timeline: Timeline, out_dir: str | Path,
                 ranks: Sequence[int] | None = None, prefix: str = "tspsim") -> list[Path]:
    """Write ``<prefix>.<rank>.et`` per rank and ``comm_groups.json`` into ``out_dir``; returns the ET files.

    Raises:
        TspsimError: a requested rank was not simulated, or a prefix that would leave ``out_dir``
            (:func:`check_prefix`).
    """
    out = Path(out_dir)
    check_prefix(prefix)
    groups = _group_ids(timeline)
    paths = []
    for r in select_ranks(timeline, ranks):
        meta = global_metadata(SCHEMA_VERSION, [
            attribute("generator", "string", f"tspsim {__version__}"),
            attribute("schedule", "string", str(entry.get("schedule", ""))),
            attribute("rank", "int64", r)])
        data = delimited(meta) + b"".join(delimited(m) for m in rank_nodes(timeline, r, groups))
        p = out / f"{prefix}.{r}.et"
        write_bytes_atomic(p, data)
        paths.append(p)
    write_text_atomic(out / "comm_groups.json",
                      json.dumps({str(i): list(g) for g, i in groups.items()}, indent=1))
    return paths
