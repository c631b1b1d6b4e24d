"""``tspsim validate``: published numbers vs simulated, with errors and declared tolerances."""

from __future__ import annotations

import click

from tspsim.commands.options import emit_json


@click.command("validate")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object {\"results\": [...]} on stdout.")
def validate(as_json: bool) -> None:
    """Compare simulated numbers with published ones (tspsim.explore.validation lists the rows and sources).

    Prints one row per check — published value, simulated value, error, declared tolerance, pass or
    MISS — and a summary line "N of M within tolerance". Exits 0 even when a row misses (it is a
    report); rows that cannot run in this build show n/a.

    \b
    Examples:
      tspsim validate
      tspsim validate --json
    """  # noqa: D301
    from tspsim.explore.validation import summary, table, validation_rows

    click.echo("validating (4 memory points at 128K, 3 collectives, 2 MFU points, 7 software-stack rows) ...",
               err=True)
    rows = validation_rows()
    if as_json:
        emit_json({"results": [r.to_json() for r in rows]})
        click.echo(summary(rows), err=True)
        return
    click.echo(table(rows))
    notes = sorted({r.note for r in rows if r.note and r.within is not None})
    for note in notes:
        click.echo(f"note: {note}")
    click.echo(summary(rows))
