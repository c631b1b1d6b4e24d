"""Progress of long work on stderr: a bar with ETA on a terminal, one line per finished unit otherwise.

Every command that can take more than a few seconds reports through :class:`Progress` — ``run`` per
simulated step of an inference point (and per max-batch probe), ``plan`` per configuration, ``sweep`` per
point, ``validate`` per check:

* on a terminal, one line redrawn in place (at most every ``refresh_s``):
  ``simulating tp D=8  [########------------]  412/1002  ETA 0:03  decode step 411 of 1000``;
* otherwise (a log file, a pipe, CI), one line per finished unit —
  ``simulating tp D=8: 412/1002 (ETA 3 s) decode step 411 of 1000`` — at most one per ``every_s``
  seconds (the last unit always gets its line), so a thousand millisecond-long decode steps do not flood
  a log while every slow unit (a sweep point, a planner configuration) still gets its own line.

The ETA is the mean time per finished unit times the units left. A total of ``None`` (unknown, e.g. the
probes of a max-batch search) shows a count and the elapsed time instead. Stdout is never touched.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 24
"""Characters of the bar on a terminal."""


def is_terminal(stream: TextIO) -> bool:
    """True when ``stream`` is an interactive terminal (bars), False for files, pipes and closed streams."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def format_duration(seconds: float) -> str:
    """``0:03``, ``12:05``, ``1:02:03`` (hours only when needed)."""
    s = max(0, int(round(seconds)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class Progress:
    """Progress of ``total`` units of work named ``label``, written to ``stream`` (default stderr).

    Call :meth:`update` (absolute) or :meth:`advance` (relative) as units finish and :meth:`close` at the
    end (a context manager does it). Nothing is shown before ``quiet_s`` seconds have passed, so work that
    ends sooner prints nothing. ``tty`` overrides the terminal detection; ``clock`` is injectable for tests.
    """

    def __init__(self, label: str, total: int | None = None, *, stream: TextIO | None = None,
                 tty: bool | None = None, every_s: float = 0.0, refresh_s: float = 0.1, quiet_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = is_terminal(self.stream) if tty is None else tty
        self.every_s = every_s
        self.refresh_s = refresh_s
        self.quiet_s = quiet_s
        self.clock = clock
        self.done = 0
        self.start = clock()
        self._last_out = -float("inf")
        self._drawn = False
        self._line_len = 0

    # ------------------------------------------------------------------------------------------ API
    def update(self, done: int, total: int | None = None, item: str = "") -> None:
        """``done`` units are finished (of ``total``, when it changes); ``item`` names the last one."""
        if total is not None:
            self.total = total
        self.done = done
        now = self.clock()
        if now - self.start < self.quiet_s:  # fast work stays silent
            return
        last = self.total is not None and done >= self.total
        interval = self.refresh_s if self.tty else self.every_s
        if not last and now - self._last_out < interval:
            return
        self._last_out = now
        if self.tty:
            self._draw(self._bar_text(now, item))
        else:
            self._write(self._line_text(now, item) + "\n")

    def reset(self, total: int | None) -> None:
        """Start a new phase of ``total`` units (None: unknown).

        Counts and the clock restart, and the next update is shown whatever the rate limit.
        """
        self.total, self.done, self.start = total, 0, self.clock()
        self._last_out = -float("inf")

    def advance(self, n: int = 1, item: str = "") -> None:
        """``n`` more units are finished."""
        self.update(self.done + n, item=item)

    def close(self, final: str = "") -> None:
        """End the bar's line (on a terminal: replace it by ``final`` when given)."""
        if self.tty and self._drawn:
            if final:
                self._draw(final)
            self._write("\n")
            self._drawn = False
        elif final:
            self._write(final + "\n")

    def clear(self) -> None:
        """Erase the bar (terminal only), e.g. before printing another line."""
        if self.tty and self._drawn:
            self._write("\r" + " " * self._line_len + "\r")
            self._drawn = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ text
    def eta_s(self, now: float | None = None) -> float | None:
        """Seconds left at the mean pace so far (None without a total or before the first unit)."""
        if self.total is None or self.done <= 0:
            return None
        elapsed = (self.clock() if now is None else now) - self.start
        return elapsed / self.done * max(0, self.total - self.done)

    def _bar_text(self, now: float, item: str) -> str:
        if self.total:
            filled = min(BAR_WIDTH, int(BAR_WIDTH * self.done / self.total))
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            eta = self.eta_s(now)
            head = f"{self.label}  [{bar}]  {self.done}/{self.total}  ETA {format_duration(eta or 0.0)}"
        else:
            head = f"{self.label}  {self.done} done  {format_duration(now - self.start)} elapsed"
        return f"{head}  {item}".rstrip()

    def _line_text(self, now: float, item: str) -> str:
        if self.total:
            eta = self.eta_s(now)
            head = f"{self.label}: {self.done}/{self.total} (ETA {eta:.0f} s)" if eta is not None else \
                f"{self.label}: {self.done}/{self.total}"
        else:
            head = f"{self.label}: {self.done} done ({now - self.start:.0f} s)"
        return f"{head} {item}".rstrip()

    def _draw(self, text: str) -> None:
        pad = max(0, self._line_len - len(text))
        self._write("\r" + text + " " * pad)
        self._line_len = len(text)
        self._drawn = True

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not stop the work
            pass
