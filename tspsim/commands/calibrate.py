"""``tspsim calibrate``: fit a topology to the user's nccl-tests logs and kernel micro-benchmarks."""

from __future__ import annotations

import time
from pathlib import Path

import click

from tspsim.commands.options import WholeNumberType, emit_json
from tspsim.core.errors import TspsimError

_OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast", "reduce", "sendrecv")


@click.command("calibrate")
@click.option("--topology", "-t", required=True, help="BASE: preset name (tspsim list topologies) or YAML path.")
@click.argument("files", nargs=-1, required=True, metavar="LOG|CSV...")
@click.option("--output", "-o", required=True,
              help="Topology YAML to write (inherits BASE, overrides what was fitted).")
@click.option("--algo", default=None, help="NCCL_ALGO the logs ran with, when they do not say (Ring, Tree, NVLS, "
              "NVLSTree, ...).")
@click.option("--op", type=click.Choice(_OPS), default=None, help="Collective of logs that do not name their test.")
@click.option("--ranks", type=WholeNumberType(2), default=None, help="GPU count of logs that do not state it.")
@click.option("--name", default=None, help="Name of the fitted topology (default: the output file's stem).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object {\"results\": [...]} on stdout.")
def calibrate(topology: str, files: tuple[str, ...], output: str, algo: str | None, op: str | None,
              ranks: int | None, name: str | None, as_json: bool) -> None:
    """Fit BASE's parameters to measurements and write a topology that inherits BASE.

    Each file is an nccl-tests / rccl-tests output (all_reduce_perf, all_gather_perf, reduce_scatter_perf,
    alltoall_perf, sendrecv_perf, broadcast_perf, reduce_perf; MPI prefixes, wrapped rows and summaries
    are fine) or a kernel micro-benchmark CSV (a header naming kind, m, n, k, batch, heads, seq, head_dim,
    causal, dtype and time_us). Logs fit the communication parameters (NIC, link and protocol efficiencies, latencies),
    CSVs the GPU's efficiencies and small-kernel roll-off; only what the measurements determine is
    fitted, each value inside its plausible range. Prints the before / after table and the fitted
    values; the written YAML names the measurements and the fit error. README: Calibrating to your
    cluster.

    \b
    Examples:
      tspsim calibrate --topology h100-dgx-128node all_reduce_4node.txt -o my-cluster.yaml
      tspsim calibrate -t h100-dgx-128node ring_2node.txt tree_8node.txt gemm.csv -o fitted.yaml
      tspsim calibrate -t mi300x-1node rccl.log --ranks 8 --op all_reduce -o mi300x-fitted.yaml
      tspsim run --topology fitted.yaml
    """
    from tspsim import __version__
    from tspsim.core.files import write_text_atomic
    from tspsim.explore import calibrate_params as cp
    from tspsim.explore.calibrate import calibrate as fit_comm
    from tspsim.explore.calibrate_compute import calibrate_compute
    from tspsim.explore.calibrate_report import compute_table, table, yaml_comments
    from tspsim.explore.measured import host
    from tspsim.spec.collective_log import read_collective_logs
    from tspsim.spec.microbench import is_microbench, read_microbench
    from tspsim.spec.topology_file import load_topology
    from tspsim.spec.topology_writer import inherit_reference, inheriting_yaml

    base = load_topology(topology)
    out = Path(output)
    if out.is_dir():
        raise TspsimError(f"cannot write {output}: it is a folder; give a file name like fitted.yaml")
    if out.suffix not in (".yaml", ".yml"):
        raise TspsimError(f"--output {output}: give a .yaml file name (it is read back with --topology)")
    if Path(topology).exists() and out.exists() and out.resolve() == Path(topology).resolve():
        raise TspsimError(f"--output {output} is BASE itself; the fitted file inherits BASE, so write it elsewhere")
    logs, kernels, benches = [], [], []
    for path in files:
        if _is_csv(path, is_microbench):
            kernels.extend(read_microbench(path))
            benches.append(Path(path).name)
        else:
            logs.extend(read_collective_logs(path, op or "", ranks or 0))
    for log in logs:
        host(log, base, algo or "")  # a log BASE cannot host is refused before any work
    started = time.perf_counter()
    click.echo(f"calibrate: fitting {base.name} to {len(logs)} log(s), {len(kernels)} kernel(s) ...", err=True)
    comm = fit_comm(base, logs, algo or "") if logs else None
    compute = calibrate_compute(base, tuple(kernels)) if kernels else None
    keys = {**(comm.keys if comm else {}), **(compute.keys if compute else {})}
    evaluations = (comm.evaluations if comm else 0) + (compute.evaluations if compute else 0)
    click.echo(f"calibrate: done in {time.perf_counter() - started:.1f} s ({evaluations} model evaluations)",
               err=True)
    label = name or out.stem
    text = inheriting_yaml(label, f"{base.name} calibrated to {len(logs) + len(benches)} measurement file(s)",
                           inherit_reference(topology, out), cp.overrides(keys),
                           yaml_comments(base.name, comm, compute, benches, __version__))
    write_text_atomic(out, text)
    written = load_topology(str(out))  # read back through the loader's validation
    expected = cp.with_values(base, keys)
    if (written.intra, written.inter, written.gpu) != (expected.intra, expected.inter, expected.gpu):
        raise TspsimError(f"{out}: the written topology does not read back to the fitted values; please report this")
    if as_json:
        emit_json({"results": [_json(out, topology, keys, comm, compute)]})
        return
    lines = (table(comm) if comm else []) + ([""] if comm and compute else []) + (
        compute_table(compute, base.name) if compute else [])
    click.echo("\n".join(lines))
    click.echo(f"wrote {out} (inherits {inherit_reference(topology, out)}; use it with --topology {out})")


def _is_csv(path: str, is_microbench: object) -> bool:
    """True for a micro-benchmark CSV (by content); unreadable files go to the log reader for its message."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            head = fh.read(65536)
    except OSError:
        return False
    return bool(is_microbench(head))  # type: ignore[operator]


def _json(out: Path, base: str, keys: dict, comm: object, compute: object) -> dict:
    from tspsim.explore.calibrate import Calibration
    from tspsim.explore.calibrate_compute import ComputeCalibration

    entry: dict = {"output": str(out), "inherit": base, "fitted": keys, "parameters": [], "rows": [], "kernels": []}
    for cal in (comm, compute):
        if cal is None:
            continue
        assert isinstance(cal, (Calibration, ComputeCalibration))
        for v in cal.values:
            before, after, lo, hi = v.shown
            entry["parameters"].append({"name": v.parameter.name, "determined": v.determined, "before": before,
                                        "after": after, "lo": lo, "hi": hi, "at_bound": v.at_bound,
                                        "source": v.parameter.source})
    if isinstance(comm, Calibration):
        entry["rows"] = [{"log": r.log, "bytes": r.nbytes, "measured_s": r.measured_s, "before_s": r.before_s,
                          "after_s": r.after_s, "choice": r.choice} for r in comm.rows]
        entry["notes"] = list(comm.notes)
    if isinstance(compute, ComputeCalibration):
        entry["kernels"] = [{"kernel": r.kernel.label, "line": r.kernel.line, "measured_s": r.kernel.time_us * 1e-6,
                             "before_s": r.before_s, "after_s": r.after_s} for r in compute.rows]
    return entry
