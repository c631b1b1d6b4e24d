"""The CLI imports a command's module only when it runs, and its help lines are the commands' own."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from tspsim.commands import COMMANDS, load_command


def test_table_help_is_each_commands_own() -> None:
    for name, entry in COMMANDS.items():
        cmd = load_command(name)
        assert cmd.name == name
        assert cmd.get_short_help_str(limit=500) == entry.short_help, name


def test_list_schedules_table_is_the_registry() -> None:
    """``tspsim list schedules`` prints a static table (no schedule module imported); it must be the registry's."""
    from tspsim.commands.list_cmd import SCHEDULE_LINES
    from tspsim.schedules import SCHEDULES

    assert SCHEDULE_LINES == tuple((name, SCHEDULES.get(name).description) for name in SCHEDULES.names())
    code = ("import sys; from tspsim.cli import cli\n"
            "try:\n    cli.main(['list', 'schedules'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "print('imported=' + ','.join(m for m in sys.modules if m.startswith('tspsim.schedules')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "imported="


def test_help_lists_every_command() -> None:
    from tspsim.cli import cli

    out = CliRunner().invoke(cli, ["--help"]).output
    for name in COMMANDS:
        assert f"\n  {name} " in out


def test_help_and_version_import_no_heavy_module() -> None:
    code = ("import sys; from tspsim.cli import cli\n"
            "try:\n    cli.main(['--help'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "print('heavy=' + ','.join(m for m in ('numpy', 'networkx', 'plotly', 'simpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "heavy="


@pytest.mark.parametrize(("text", "limit", "short"), [
    ("Simulate one training step. More text here.", 40, "Simulate one training step."),
    ("Compare schedules across the topology grid and write results", 30, "Compare schedules across..."),
    ("short", 45, "short"),
    ("one two three four five six seven eight nine ten", 20, "one two three..."),
    ("First para\n\nSecond para.", 45, "First para"),
])
def test_short_help_rule_is_clicks(text: str, limit: int, short: str) -> None:
    """The restated click 8 short-help rule (click ≥ 8.5 deprecates its own helper)."""
    from tspsim.commands import _shorten

    assert _shorten(text, limit) == short
