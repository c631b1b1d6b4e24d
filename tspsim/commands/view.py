"""``tspsim view``: write the interactive HTML timeline of a result file (design.md §4, §6)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tspsim.commands.options import WholeNumberType
from tspsim.core.errors import TspsimError
from tspsim.opgraph import MAX_RANK


class RankListType(click.ParamType):
    """Comma list of ranks, ranges allowed: ``0,1,2``, ``0-7,16``."""

    name = "ranks"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        """Parse or fail with a usage error naming the bad item."""
        if isinstance(value, list):
            return value
        out: list[int] = []
        for item in (part.strip() for part in str(value).split(",")):
            if not item:
                continue
            lo, sep, hi = item.partition("-")
            if not _is_rank(lo) or (sep and not _is_rank(hi)):
                shown = item if len(item) <= 20 else item[:17] + "..."
                self.fail(f"invalid rank {shown!r}: expected ranks (below {MAX_RANK:,}) like 0,1,2 or a range "
                          "like 0-7", param, ctx)
            first, last = int(lo), int(hi) if sep else int(lo)
            if last < first:
                self.fail(f"invalid rank range {item!r}: the end is before the start", param, ctx)
            if len(out) + last - first >= MAX_RANK:
                self.fail(f"rank list {value!r} is too long (more than {MAX_RANK:,} ranks)", param, ctx)
            out.extend(range(first, last + 1))
        if not out:
            self.fail(f"empty rank list {value!r}: give ranks like 0,1,2", param, ctx)
        return out


def _is_rank(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 7 and int(text) < MAX_RANK


def default_output(result: Path, suffix: str) -> Path:
    """``RESULT.json`` / ``RESULT.json.gz`` → ``RESULT<suffix>`` beside it."""
    name = result.name
    for ext in (".json.gz", ".json", ".gz"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return result.with_name(name + suffix)


def load_selected(result: Path, run: int | None, schedule: str | None) -> list[Any]:
    """Read a result file and apply ``--run`` / ``--schedule`` (all runs when neither is given)."""
    from tspsim.outputs.export import select_runs
    from tspsim.outputs.results_file import load_results

    return select_runs(load_results(result), run, schedule)


def note_missing(result: Path, runs: list[Any], consequence: dict[str, str]) -> None:
    """One ``note:`` line on stderr per part the selected runs lack, saying what the output will miss.

    ``consequence`` maps the first word of a missing part (``link``, ``memory``) to what it costs here.
    """
    from tspsim.outputs.export import in_run
    from tspsim.outputs.results_file import missing_parts

    for i, r in enumerate(runs):
        for part in missing_parts(r.timeline):
            effect = consequence.get(part.split()[0], "")
            click.echo(f"note: {in_run(len(runs), i, r.entry)}{result} has no {part}"
                       + (f"; {effect}" if effect else ""), err=True)


@click.command("view")
@click.argument("result", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write. Default: RESULT with .html instead of .json.")
@click.option("--ranks", type=RankListType(), default=None,
              help="Simulated ranks to show, e.g. 0,1,2 or 0-7. Default: the simulated ranks, at most 16.")
@click.option("--run", "run_index", type=WholeNumberType(0), default=None,
              help="Show only run N of the result file (0-based). Default: every run, with a run selector.")
@click.option("--schedule", default=None, help="Show only the run of this schedule.")
def view(result: Path, output: Path | None, ranks: list[int] | None, run_index: int | None,
         schedule: str | None) -> None:
    """Write a self-contained interactive timeline (HTML, works offline) of a result file.

    The page shows one lane per GPU stream (compute and each communication stream) on a shared time
    axis in milliseconds, spans coloured by category with op details on hover, the stacked memory of a
    chosen GPU with the HBM capacity line and its peak, and link utilisation (node fabric and NICs, mean
    and max per bin). Legend entries toggle categories; zooming acts on all panels and redraws the lanes
    and bins at the new resolution. A result file with several runs (several schedules) gets a run
    selector unless --run or --schedule picks one; each run's data is decoded only when selected. A note
    on stderr says what the file lacks (e.g. link rates, in files saved by older versions).

    \b
    Examples:
      tspsim run --topology mi300x-1node --schedule tp,sp --save result.json
      tspsim view result.json -o timeline.html
      tspsim view result.json --schedule sp --ranks 0-3 -o sp.html
    """  # noqa: D301
    from tspsim.outputs.viewer import write_html

    runs = load_selected(result, run_index, schedule)
    note_missing(result, runs, {"link": "the page has no link panel", "memory": "the page has no memory stack"})
    out = output or default_output(result, ".html")
    if out.resolve() == result.resolve():
        raise TspsimError(f"-o {out} would overwrite the result file; choose another name")
    write_html([(r.entry, r.timeline) for r in runs], out, ranks=ranks)
    click.echo(f"wrote {out} ({len(runs)} run{'s' if len(runs) != 1 else ''})", err=True)
