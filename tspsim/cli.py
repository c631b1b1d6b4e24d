"""Command line (click), design.md §4 — the command names and options here are **stable**.

Each command is a thin wrapper: parse options, call the library, print. Errors a user can cause
(:class:`~tspsim.core.errors.TspsimError`, click usage errors) become one line on stderr and exit code 2,
never a traceback. Progress goes to stderr; stdout stays clean for ``--json``.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from tspsim import __version__
from tspsim.commands import LazyCommands
from tspsim.core.errors import TspsimError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class TspsimGroup(LazyCommands):
    """Click group that turns user errors into one clean line and exit code 2."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """Run the CLI; usage errors print one ``error: …`` line (no usage banner) and exit 2."""
        bad = next((a for a in (args or ()) if isinstance(a, str) and "\x00" in a), None)
        if bad is not None:  # only possible in-process (argv cannot hold NUL); os.stat would raise ValueError
            click.echo(f"error: argument {bad!r} contains a NUL character", err=True)
            sys.exit(2)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # plain ``tspsim``: the help, not an error
            click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            sys.exit(0)
        except click.ClickException as exc:
            click.echo(f"error: {one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, mapping TspsimError to a one-line error."""
        try:
            return super().invoke(ctx)
        except TspsimError as exc:
            click.echo(f"error: {one_line(str(exc))}", err=True)
            ctx.exit(2)
        except (yaml_error_types()) as exc:  # pragma: no cover - loaders wrap these already
            click.echo(f"error: {one_line(str(exc))}", err=True)
            ctx.exit(2)


def one_line(message: str) -> str:
    """``message`` on one line: line breaks (e.g. from a file name) become spaces, nothing is dropped."""
    parts = [part.strip() for part in message.splitlines()]
    return " ".join(part for part in parts if part) or "unknown error"


def yaml_error_types() -> tuple[type[BaseException], ...]:
    """YAML errors that may escape third-party code paths."""
    import yaml

    return (yaml.YAMLError,)


@click.group(cls=TspsimGroup, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="tspsim")
def cli() -> None:
    """tspsim — discrete-event simulator of TSP, TP, SP and TP+SP schedules.

    \b
    Examples:
      tspsim run --topology mi300x-128node
      tspsim run --topology mi300x-1node --schedule tsp,tp --seq 64k --json
      tspsim collective --topology mi300x-1node --op all_reduce --group 8 --sizes 1k,1M,1G
      tspsim list topologies
    """


def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(prog_name="tspsim", standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover - interactive
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
