"""The replay's clock: simpy's event queue for timed events, a FIFO for events due now.

simpy orders the events of one instant by priority, then by creation: every ``URGENT`` event (a
triggered event: an op that finished, a flow that completed, a process started) is processed before
any ``NORMAL`` one (a timeout), and the urgent ones in the order they were triggered. The engine keeps
exactly that order with less machinery: timed events are simpy-queued :class:`Timer` objects
(``NORMAL`` priority, processed by ``Environment.step``), and an event due now is a ``(function,
argument)`` pair appended to :attr:`Clock.due`, which the run loop drains, first in first out, after
every timed event — the order simpy would process them in, without creating a simpy event per op.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import simpy
from simpy.events import NORMAL


class Timer:
    """A timed event in simpy's queue: at its time, ``Environment.step`` calls ``fn(arg)``."""

    __slots__ = ("callbacks", "fn", "arg")
    _ok = True
    """Read by ``Environment.step`` (a timer never fails)."""

    def __init__(self, fn: Callable[[Any], None], arg: Any) -> None:
        self.fn = fn
        """Called with :attr:`arg` when the timer fires."""
        self.arg = arg
        """The argument."""
        self.callbacks: list[Callable[[Timer], None]] | None = [_fire]


def _fire(timer: Timer) -> None:
    timer.fn(timer.arg)


class Clock:
    """Simulated time of one replay: ``after`` (timed, in simpy's queue) and ``soon`` (due now, FIFO)."""

    __slots__ = ("env", "due")

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        """The simpy environment (its ``now`` is the simulated time)."""
        self.due: deque[tuple[Callable[[Any], None], Any]] = deque()
        """Events due at the current instant, in the order they were triggered."""

    def after(self, delay: float, fn: Callable[[Any], None], arg: Any) -> None:
        """Call ``fn(arg)`` at now + ``delay``, after every event due before it (simpy ``NORMAL`` order)."""
        self.env.schedule(Timer(fn, arg), NORMAL, delay)  # type: ignore[arg-type]

    def soon(self, fn: Callable[[Any], None], arg: Any) -> None:
        """Call ``fn(arg)`` at the current instant, after the events already due now (simpy ``URGENT``)."""
        self.due.append((fn, arg))
