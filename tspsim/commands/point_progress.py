"""Progress of one simulated point on stderr (``run``, ``generate`` and the playbook search of ``run``)."""

from __future__ import annotations

import time

import click


class PointProgress:
    """Progress of one point on stderr: ``simulating LABEL ... 2.1 s``.

    When the point reports steps (inference: prefill, decode steps, max-batch probes), a bar with ETA on
    a terminal or one line a second in a log (:mod:`tspsim.core.progress`).
    """

    def __init__(self, label: str) -> None:
        from tspsim.core.progress import Progress

        self.label = label
        self.bar = Progress(label, every_s=1.0)
        self.started = False
        self.t0 = time.perf_counter()
        click.echo(f"{label} ...", err=True, nl=False)

    def __call__(self, done: int, total: int, what: str) -> None:
        """A step finished (``total`` 0: unknown, e.g. max-batch probes)."""
        if not self.started:
            self.started = True
            if not self.bar.tty:
                click.echo("", err=True)  # end the "simulating …" line; step lines follow
        if total == 0 and done == 1:
            self.bar.reset(None)  # a new phase (max-batch probes): its first line is always shown
        self.bar.update(done, total or None, what)

    def finish(self, failed: bool = False) -> None:
        """End the point's progress: its wall time, or ``failed``."""
        tail = "failed" if failed else f"{time.perf_counter() - self.t0:.1f} s"
        if not self.started:
            click.echo(f" {tail}", err=True)
        elif self.bar.tty:
            self.bar.close(final=f"{self.label} ... {tail}")
        else:
            click.echo(f"{self.label}: {'failed' if failed else 'done in ' + tail}", err=True)
