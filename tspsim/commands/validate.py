"""``tspsim validate``: published numbers vs simulated — calibration points and independent checks."""

from __future__ import annotations

import click

from tspsim.commands.options import emit_json


@click.command("validate")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object {\"results\": [...]} on stdout.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Processes (default: CPU count): with 2 or more the four Table 5 steps are shared with a "
                   "second process; 1 = all in this process. Rows are the same.")
def validate(as_json: bool, jobs: int | None) -> None:
    """Compare simulated numbers with published ones, in two sections.

    Calibration points are numbers a preset constant was fitted to (the constant is named): they show the
    fit still holds. Independent checks are numbers nothing was fitted to: they test the model. Each row
    shows the published value (or band: a band is never reduced to its midpoint), the simulated value, the
    error, the declared tolerance, pass or MISS, and a numbered source, cited in full at the end. A summary
    line counts the rows within tolerance per section. Exits 0 even when a row misses (it is a report);
    rows that cannot run in this build show n/a. --json gives every row with "kind" ("calibration" or
    "independent"), "source" (the full citation) and "published_low"/"published_high" for bands.

    \b
    Examples:
      tspsim validate
      tspsim validate --json
    """  # noqa: D301
    from tspsim.core.progress import Progress
    from tspsim.explore.validation import summary, table, validation_rows
    from tspsim.explore.validation_row import reporting

    bar = Progress("validating")
    with reporting(lambda row: bar.advance(item=f"{row.kind}: {row.what} on {row.topology}")):
        rows = validation_rows(jobs)
    bar.close()
    if as_json:
        emit_json({"results": [r.to_json() for r in rows]})
        click.echo(summary(rows), err=True)
        return
    click.echo(table(rows))
    notes = sorted({r.note for r in rows if r.note and r.within is not None})
    for note in notes:
        click.echo(f"note: {note}")
    click.echo(summary(rows))
