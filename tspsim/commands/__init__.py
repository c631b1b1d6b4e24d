"""One module per CLI command; :func:`register_all` attaches them to the ``tspsim`` group."""

from __future__ import annotations

import importlib

import click

# Module name → command attribute. Each module defines one click command.
COMMANDS = (
    ("list_cmd", "list_cmd"),
    ("collective", "collective"),
    ("run", "run"),
    ("generate", "generate"),
    ("replay", "replay_cmd"),
    ("validate", "validate"),
    ("view", "view"),
    ("export", "export"),
    ("sweep", "sweep"),
    ("plan", "plan"),
    ("calibrate", "calibrate"),
    ("check", "check"),
)


def register_all(group: click.Group) -> None:
    """Attach every command module that exists to ``group``."""
    for module, attr in COMMANDS:
        try:
            mod = importlib.import_module(f"tspsim.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"tspsim.commands.{module}":
                continue  # command not built yet
            raise
        group.add_command(getattr(mod, attr))
