"""``tspsim export``: convert a result file for Perfetto, Holistic Trace Analysis or Chakra (design.md §6)."""

from __future__ import annotations

from pathlib import Path

import click

from tspsim.commands.options import WholeNumberType
from tspsim.commands.view import RankListType, load_selected, note_missing
from tspsim.core.errors import TspsimError
from tspsim.outputs.export import FORMATS, in_run, safe_file_part


@click.command("export")
@click.argument("result", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="perfetto", show_default=True,
              help="perfetto: one Chrome trace JSON (.gz → gzip); hta: a folder of per-rank Kineto "
                   "traces; chakra: a folder of per-rank <prefix>.<rank>.et execution traces.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Trace file (perfetto) or folder (hta, chakra).")
@click.option("--ranks", type=RankListType(), default=None,
              help="Simulated ranks to export, e.g. 0-7. Default: every simulated rank.")
@click.option("--run", "run_index", type=WholeNumberType(0), default=None,
              help="Export only run N of the result file (0-based). Default: every run.")
@click.option("--schedule", default=None, help="Export only the run of this schedule.")
@click.option("--no-links", is_flag=True, help="perfetto: leave out the link-bandwidth counters.")
@click.option("--prefix", default="tspsim", show_default=True,
              help="chakra: file name prefix (<prefix>.<rank>.et), a plain name: no folder, '.' or '..'.")
def export(result: Path, fmt: str, output: Path, ranks: list[int] | None, run_index: int | None,
           schedule: str | None, no_links: bool, prefix: str) -> None:
    """Export a result file's timeline to other tools.

    \b
    perfetto  Chrome trace-event JSON for ui.perfetto.dev / chrome://tracing: one process per GPU,
              one thread per stream, memory counters, P2P flow arrows. Several runs go into one file,
              one block of processes each.
    hta       One Kineto-style trace per rank (rank<R>.pt.trace.json) for Holistic Trace Analysis:
              TraceAnalysis(trace_dir=DIR).get_comm_comp_overlap() matches tspsim's overlap_pct.
    chakra    Chakra execution traces <prefix>.<rank>.et plus comm_groups.json, for ASTRA-sim: reduce and
              broadcast (which ASTRA-sim does not simulate) are written as a reduce-scatter and an
              all-gather of N·p/(p−1) bytes — the same N bytes sent per rank — and communicator ids
              start at 1 ("0" means every rank to ASTRA-sim).

    A note on stderr says what the result file lacks (e.g. link rates: no bandwidth counters).

    With several runs and no --run/--schedule, hta and chakra write one subfolder per run (N-SCHEDULE).

    \b
    Examples:
      tspsim export result.json --format perfetto -o trace.json.gz
      tspsim export result.json --format hta -o hta_traces/
      tspsim export result.json --format chakra --schedule tp -o et/
    """  # noqa: D301
    if fmt == "chakra":
        from tspsim.outputs.export.chakra import check_prefix

        check_prefix(prefix)
    runs = load_selected(result, run_index, schedule)
    if fmt == "perfetto" and not no_links:
        note_missing(result, runs, {"link": "the trace has no bandwidth counters",
                                    "memory": "the trace has no memory counters"})
    if fmt == "perfetto":
        from tspsim.outputs.export.perfetto import write_trace

        if output.is_dir():
            raise click.BadParameter(f"{output} is a folder; perfetto writes one file, e.g. "
                                     f"{output}/trace.json", param_hint="-o")
        write_trace([(r.entry, r.timeline) for r in runs], output, ranks=ranks, links=not no_links)
        click.echo(f"wrote {output}", err=True)
        return
    if output.exists() and not output.is_dir():
        raise click.BadParameter(f"{output} is a file; --format {fmt} writes a folder", param_hint="-o")
    from tspsim.outputs.export import chakra, hta

    for i, r in enumerate(runs):
        folder = output
        if len(runs) > 1:
            folder = output / safe_file_part(f"{i}-{r.entry.get('schedule', 'run')}")
        try:
            if fmt == "hta":
                files = hta.write_traces(r.entry, r.timeline, folder, ranks=ranks)
            else:
                files = chakra.write_traces(r.entry, r.timeline, folder, ranks=ranks, prefix=prefix)
        except TspsimError as exc:
            raise TspsimError(f"{in_run(len(runs), i, r.entry)}{exc}") from None
        plural = "s" if len(files) != 1 else ""
        extra = " and comm_groups.json" if fmt == "chakra" else ""
        names = f" ({files[0].name} … {files[-1].name})" if len(files) > 1 else f" ({files[0].name})" if files else ""
        click.echo(f"wrote {len(files)} {fmt} trace file{plural}{names}{extra} to {folder}", err=True)
