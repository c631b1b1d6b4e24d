"""Errors a user can cause. The CLI turns each into one line on stderr and exit code 2."""

from __future__ import annotations


class TspsimError(Exception):
    """A problem with the user's input: the message names the problem and the fix."""


class ConfigError(TspsimError):
    """A topology, model or plan that cannot be used as written."""


class TraceError(TspsimError):
    """An op-graph or result file that cannot be read."""


class DeadlockError(TspsimError):
    """A replay in which some ranks can never finish (mismatched collectives, cycles)."""


class SimulationLimitError(TspsimError):
    """A replay that exceeded its event or wall-time limit."""
