"""Work shared with a forked child process: :class:`ForkedCall` (one function) and :func:`forked_map` (items).

Three places use it, each on independent work whose results do not depend on where it runs: ``tspsim run``'s
default comparison searches the best FSDP and PTD-P layouts (issue 14) in a child while it simulates its three
schedules; ``tspsim validate`` shares its four Table 5 simulations; decode steps replayed one by one are shared
(:class:`tspsim.simulate.decode_timer.DecodeTimer`). A forked child inherits the loaded specs and imported
modules, so it starts in milliseconds, not the ~0.4 s of a fresh interpreter. Its stderr (progress lines) is
captured and handed back with the result, for the caller to print where a serial run would have printed it.
Commands say how many processes they may use with :func:`processes` (their ``--jobs``); forking is refused off
Linux and in a process with other threads (:func:`can_fork`: pool workers run one), where everything is
computed in this process.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from tspsim.core.errors import TspsimError

_PROCESSES: contextvars.ContextVar[int | None] = contextvars.ContextVar("tspsim_processes", default=None)
"""The ``--jobs`` of the command running (None: not set), read by :func:`forked_map` when it is given none."""


@contextlib.contextmanager
def processes(jobs: int | None) -> Iterator[None]:
    """Within the block, :func:`forked_map` without ``jobs`` uses ``jobs`` (a command's ``--jobs``; 1: no fork)."""
    token = _PROCESSES.set(jobs)
    try:
        yield
    finally:
        _PROCESSES.reset(token)


def process_count(jobs: int | None = None) -> int:
    """``jobs``, else the enclosing :func:`processes` block's, else the CPU count."""
    return jobs or _PROCESSES.get() or os.cpu_count() or 1


def can_fork() -> bool:
    """True where :class:`ForkedCall` may fork: Linux and no other thread running.

    Forking a process with threads can leave the child holding a lock nobody will release; on macOS system
    libraries are not fork-safe (the reason ``multiprocessing`` spawns there since Python 3.8), so the caller
    computes in its own process instead.
    """
    return sys.platform.startswith("linux") and hasattr(os, "fork") and threading.active_count() == 1


class ForkedCall:
    """``fn()`` computed in a forked child process; :meth:`result` waits for its value.

    Use as a context manager: leaving the block (normally or by an exception, e.g. Ctrl-C) ends a child still
    running. The value must be picklable; the child writes nothing to this process's stdout.
    """

    def __init__(self, fn: Callable[[], Any]) -> None:
        """Fork now; the child runs ``fn`` with its stderr captured, sends (value or exception, stderr text), exits."""
        sys.stdout.flush()
        sys.stderr.flush()
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child (its coverage is not collected)
            os.close(read_fd)
            _child(fn, write_fd)
        os.close(write_fd)
        self.pid: int | None = pid
        """The child's process id (None once reaped)."""
        self._fd: int | None = read_fd

    def result(self) -> tuple[Any, str]:
        """(``fn()``'s value, the child's stderr text); re-raises ``fn``'s exception (after its stderr is printed).

        A child that ends without a result (killed, out of memory) is a :class:`~tspsim.core.errors.TspsimError`.
        """
        if self._fd is None:
            raise RuntimeError("ForkedCall.result() called twice")
        with os.fdopen(self._fd, "rb") as f:
            self._fd = None
            data = f.read()
        self._reap()
        if not data:
            raise TspsimError("the forked helper process ended without a result (killed or out of memory?); "
                              "run again with --jobs 1 to compute everything in this process")
        status, value, err = pickle.loads(data)  # noqa: S301 - our own child's bytes, through our own pipe
        if status == "raise":
            sys.stderr.write(err)
            raise value
        return value, err

    def close(self) -> None:
        """End the child if it is still running (a result no longer wanted) and reap it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._reap()

    def _reap(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = None

    def __enter__(self) -> ForkedCall:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _child(fn: Callable[[], Any], write_fd: int) -> None:  # pragma: no cover - runs in the child
    """The child's side: run ``fn``, send the outcome, and leave without running this process's exit handlers."""
    code = 0
    try:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                payload: tuple[str, Any, str] = ("ok", fn(), "")
        except BaseException as exc:  # noqa: BLE001 - every outcome goes back to the parent
            payload = ("raise", exc, "")
        payload = (payload[0], payload[1], err.getvalue())
        try:
            data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - an unpicklable exception still reaches the parent as one line
            data = pickle.dumps(("raise", TspsimError(f"{type(payload[1]).__name__}: {payload[1]} ({exc})"),
                                 payload[2]))
        with os.fdopen(write_fd, "wb") as f:
            f.write(data)
    except BaseException:  # noqa: BLE001 - parent gone (broken pipe) or interrupted: just leave
        code = 1
    finally:
        os._exit(code)


def forked_map(fn: Callable[[Any], Any], items: list[Any], weights: list[float], jobs: int | None = None,
               on_done: Callable[[int], None] | None = None) -> list[tuple[bool, Any]]:
    """``[(True, fn(x)) or (False, the exception fn(x) raised) for x in items]``, on two processes when possible.

    With :func:`process_count` (``jobs``) ≥ 2 and :func:`can_fork`, the items are split into two sides of near
    equal total ``weights`` (largest first, each to the lighter side) and one side is computed in a forked child
    while this process computes the other; otherwise all here, in order. Each item is computed by the same
    function on the same inputs either way, so the results do not depend on the split — provided ``fn`` is
    deterministic and does not depend on which items ran before it here. ``Exception``s are returned, not raised
    (the caller decides); a ``BaseException`` (Ctrl-C) ends the map. ``on_done(n)`` hears of n more items done,
    n in all: while forked, this process's items count for both processes (scaled by the sides' sizes, never
    reaching n before the child is back), the rest when the child returns.
    """
    reported = [0]

    def run(indices: list[int], report: bool, scale: float = 1.0) -> dict[int, tuple[bool, Any]]:
        out: dict[int, tuple[bool, Any]] = {}
        for i in indices:
            try:
                out[i] = (True, fn(items[i]))
            except Exception as exc:  # noqa: BLE001 - handed to the caller with the item's position
                out[i] = (False, exc)
            if report and on_done is not None:   # scaled: both processes are assumed to advance alike
                target = min(int(len(out) * scale), len(items) - 1)
                if target > reported[0]:
                    on_done(target - reported[0])
                    reported[0] = target
        return out

    if len(items) < 2 or process_count(jobs) < 2 or not can_fork():
        done = run(list(range(len(items))), True)
    else:
        sides: tuple[list[int], list[int]] = ([], [])
        load = [0.0, 0.0]
        for i in sorted(range(len(items)), key=lambda i: -weights[i]):
            side = 0 if load[0] <= load[1] else 1
            sides[side].append(i)
            load[side] += weights[i]
        with ForkedCall(lambda: run(sorted(sides[1]), False)) as child:
            done = run(sorted(sides[0]), True, len(items) / max(len(sides[0]), 1))
            theirs, err = child.result()
        sys.stderr.write(err)
        done.update(theirs)
    if on_done is not None and len(items) > reported[0]:
        on_done(len(items) - reported[0])
    return [done[i] for i in range(len(items))]
