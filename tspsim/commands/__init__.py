"""One module per CLI command, imported only when that command runs (``tspsim --help`` imports none).

:data:`COMMANDS` names each command's module, attribute and one-line help; :class:`LazyCommands` gives
click the command list and the help lines from the table, and imports a command's module (with numpy,
networkx or plotly behind it) only when click needs the command itself. tests/test_cli_lazy.py checks
that the table's help lines are the commands' own.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import click


@dataclass(frozen=True)
class CommandEntry:
    """Where a command lives and what ``tspsim --help`` says about it."""

    module: str
    """Module under ``tspsim.commands``."""
    attr: str
    """Attribute of that module holding the click command."""
    short_help: str
    """The first line of the command's docstring (shown by ``tspsim --help``)."""


COMMANDS: dict[str, CommandEntry] = {
    "calibrate": CommandEntry("calibrate", "calibrate",
                              "Fit BASE's parameters to measurements and write a topology that inherits BASE."),
    "check": CommandEntry("check", "check", "Compare measured nccl-tests / rccl-tests logs with what TOPOLOGY "
                                            "predicts; a verdict per size range."),
    "collective": CommandEntry("collective", "collective",
                               "Benchmark a collective in the simulator, like nccl-tests / rccl-tests."),
    "export": CommandEntry("export", "export", "Export a result file's timeline to other tools."),
    "generate": CommandEntry("generate", "generate",
                             "Generate the op graph of one schedule and save it (replay it with tspsim replay)."),
    "list": CommandEntry("list_cmd", "list_cmd", "List the built-in topologies, models, schedules or software stacks."),
    "plan": CommandEntry("plan", "plan",
                         "Search schedules, degrees and micro-batch sizes; rank what fits in HBM by an objective."),
    "replay": CommandEntry("replay", "replay_cmd",
                           "Replay a saved op graph (tspsim generate, or a graph from elsewhere) on a topology."),
    "run": CommandEntry("run", "run", "Simulate schedules on a topology and compare them side by side."),
    "sweep": CommandEntry("sweep", "sweep", "Simulate every combination of the given values and plot the results."),
    "validate": CommandEntry("validate", "validate", "Compare simulated numbers with published ones, in two sections."),
    "view": CommandEntry("view", "view", "Write a self-contained interactive timeline (HTML, works offline) of a "
                                         "result file."),
}
"""Command name → its module, attribute and one-line help."""


def load_command(name: str) -> click.Command:
    """Import the module of command ``name`` and return the command."""
    entry = COMMANDS[name]
    mod = importlib.import_module(f"tspsim.commands.{entry.module}")
    return getattr(mod, entry.attr)


class LazyCommands(click.Group):
    """A click group whose commands come from :data:`COMMANDS`, imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Command names, sorted (no import)."""
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command ``cmd_name``, importing its module the first time."""
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self.add_command(load_command(cmd_name), cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The ``Commands:`` section of the help from the table's help lines (no import)."""
        rows = []
        limit = formatter.width - 6 - max(len(name) for name in self.list_commands(ctx))
        for name in self.list_commands(ctx):
            cmd = self.commands.get(name)
            text = cmd.get_short_help_str(limit) if cmd is not None else _shorten(COMMANDS[name].short_help, limit)
            rows.append((name, text))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters at a word boundary with ``...``, as click 8 shortens help.

    Click's own ``make_default_short_help`` (the rule ``Command.get_short_help_str`` applies) is deprecated
    from click 8.5 on, so its rule is restated: the first paragraph's words, ended at the first sentence end
    that fits, else cut to fit with ``...``; ``tests/test_cli_lazy.py`` checks it against the commands' own.
    """
    paragraph = text.split("\n\n", 1)[0]
    words = paragraph.split()
    if words and words[0] == "\b":
        words = words[1:]
    total, i = 0, 0
    for i, word in enumerate(words):
        total += len(word) + (i > 0)
        if total > limit:
            break
        if word.endswith("."):
            return " ".join(words[:i + 1])
        if total == limit and i != len(words) - 1:
            break
    else:
        return " ".join(words)
    total += 3
    while i > 0:
        total -= len(words[i]) + (i > 0)
        if total <= limit:
            break
        i -= 1
    return " ".join(words[:i]) + "..."
