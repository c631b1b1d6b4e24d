"""Where sweep points run: in this process, on a local process pool, or on a Dask ``distributed`` cluster.

Every runner executes the same pure function, :func:`run_point`, so results do not depend on where a
point ran. Each runner runs points whose op graphs are the same (:func:`graph_groups`: a hardware
what-if sweep over topologies that differ only in rates and efficiencies) one after the other in one process,
which builds each graph once (:class:`~tspsim.simulate.graph_memo.GraphMemo`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from tspsim.core.errors import TspsimError
from tspsim.explore.cache import normalize_entry
from tspsim.simulate import GraphMemo, Point
from tspsim.spec.loader import SpecLoader


def run_point(point: Point, specs: SpecLoader | None = None, graphs: GraphMemo | None = None) -> dict[str, Any]:
    """Simulate one point (the function every runner executes; picklable, never raises ``Exception``).

    ``graphs`` (kept across a group of points run one after the other) reuses an earlier point's graph where
    only what the replay reads differs. Returns ``{"status": "ok", "entry": <normalized entry>, "wall_s": s}``,
    or ``{"status": "invalid" | "error", "reason": one line, "wall_s": s}`` for a point the simulator rejects
    (:class:`~tspsim.core.errors.TspsimError`) or that fails unexpectedly.
    """
    from tspsim.explore.max_batch import simulate_with_max_batch

    t0 = time.perf_counter()
    try:
        entry = simulate_with_max_batch(point, specs=specs or SpecLoader(), graphs=graphs).entry
    except TspsimError as exc:
        return {"status": "invalid", "reason": str(exc), "wall_s": time.perf_counter() - t0}
    except Exception as exc:  # noqa: BLE001 - one failed point must not lose the others
        return {"status": "error", "reason": f"{type(exc).__name__}: {exc}".splitlines()[0],
                "wall_s": time.perf_counter() - t0}
    return {"status": "ok", "entry": normalize_entry(entry), "wall_s": time.perf_counter() - t0}


def run_points(points: Sequence[Point]) -> list[dict[str, Any]]:
    """:func:`run_point` of each point in order, sharing file reads and graphs: a pool task.

    The points are one group of :func:`graph_groups`.
    """
    specs, graphs = SpecLoader(), GraphMemo()
    return [run_point(p, specs, graphs) for p in points]


def graph_groups(points: Sequence[Point], specs: SpecLoader) -> list[list[int]]:
    """Indices of ``points`` grouped by the op graph they build, groups in order of first appearance.

    Two points are grouped when their :func:`~tspsim.simulate.graph_memo.graph_key` is equal (same schedule,
    model, layout, workload and assumptions on topologies of the same build structure; every mode: a decode
    point's steps are shared as private copies); a point that does not resolve is a group of its own, and so is
    every point when all name the same topology (a grid's points are distinct, so only topologies can make two
    graphs the same: a one-topology sweep of 100,000 points is not resolved once more for nothing).
    """
    from tspsim.simulate.graph_memo import graph_key
    from tspsim.simulate.point import resolve

    if len({p.topology for p in points}) < 2:
        return [[i] for i in range(len(points))]
    groups: dict[Any, list[int]] = {}
    for i, point in enumerate(points):
        key: Any = ("alone", i)
        try:
            topo, model, layout, workload, opts = resolve(point, specs)
        except TspsimError:
            pass
        else:
            key = graph_key(point.schedule, True, topo, model, layout, workload, opts)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def spread(groups: list[list[int]], workers: int) -> list[list[int]]:
    """``groups`` with the largest split in halves until there are at least ``workers`` (or all are single).

    Sharing a graph saves its build; idle workers would cost more.
    """
    out = [list(g) for g in groups]
    while len(out) < workers:
        big = max(range(len(out)), key=lambda j: len(out[j]), default=None)
        if big is None or len(out[big]) < 2:
            break
        g = out[big]
        out[big:big + 1] = [g[:len(g) // 2], g[len(g) // 2:]]
    return out


class Runner(Protocol):
    """Runs :func:`run_point` over points, yielding (position, result) as each finishes."""

    description: str

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc: Any) -> None: ...

    def run(self, points: Sequence[Point]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield (index in ``points``, :func:`run_point` result) in completion order."""
        ...


class SerialRunner:
    """Points one after the other in this process (``--jobs 1``)."""

    description = "in this process"

    def __enter__(self) -> SerialRunner:
        from tspsim.core.forked import processes

        self._specs = SpecLoader()  # every file read once for all the points of this process
        self._graphs = GraphMemo()  # and each op graph built once for the points that share it
        self._signals = terminate_as_interrupt()
        self._signals.__enter__()
        self._one = processes(1)   # "in this process": no forked helper either (tspsim.core.forked)
        self._one.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._one.__exit__(None, None, None)
        self._signals.__exit__(None, None, None)

    def run(self, points: Sequence[Point]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Simulate in order, points that share a graph one after the other (:func:`graph_groups`)."""
        for group in graph_groups(points, self._specs):
            self._graphs.clear()
            for i in group:
                yield i, run_point(points[i], self._specs, self._graphs)
        self._graphs.clear()


def _pool_context() -> Any:
    """``forkserver`` where available (safe with threads), else ``spawn``; nothing preloaded.

    Workers must import the tspsim this process runs, whatever the working directory holds. A worker
    sets its ``sys.path`` (and folder) from this process before unpickling its first task, so it does.
    The fork server does not: it starts as ``python -c …``, whose ``sys.path`` begins with the working
    directory, and Python ≤ 3.13 ignores the ``sys_path`` it is given — a preloaded ``tspsim`` would come
    from a ``tspsim/`` folder there (the parent of a clone) and every worker forked from it would inherit
    that package. So the server preloads nothing and each worker imports tspsim itself (once per worker).
    """
    import multiprocessing as mp

    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([])
        return ctx
    return mp.get_context("spawn")


def _result_of(fut: Any) -> dict[str, Any]:
    """A future's :func:`run_point` result; a lost worker (killed, out of memory) is an ``error`` result."""
    try:
        return fut.result()  # type: ignore[no-any-return]
    except Exception as exc:  # noqa: BLE001 - the point failed, the sweep goes on
        text = str(exc).splitlines()[0] if str(exc) else ""
        return {"status": "error", "reason": f"worker failed: {type(exc).__name__}: {text}".rstrip(": "),
                "wall_s": None}


def task_groups(points: Sequence[Point], workers: int) -> list[list[int]]:
    """The point groups a pool or cluster of ``workers`` runs, one :func:`run_points` task each.

    :func:`graph_groups` :func:`spread` over the workers, largest first (a shorter tail).
    """
    return sorted(spread(graph_groups(points, SpecLoader()), workers), key=len, reverse=True)


def _group_results(fut: Any, n: int) -> list[dict[str, Any]]:
    """The ``n`` results of a future of :func:`run_points`; a lost worker's error result for each point."""
    result = _result_of(fut)
    return list(result) if isinstance(result, list) else [result] * n


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP) received: stop like Ctrl-C, so workers are stopped and partial writes undone."""


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread.

    Their default action ends the process at once: pool workers would be left running and an atomic
    write its temporary file. As an exception, they unwind like Ctrl-C: the runner stops its workers
    and the write removes its temporary file. (SIGKILL cannot be caught: see :func:`_worker_init`.)
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:  # noqa: ARG001
        raise Terminated(signal.Signals(signum).name)

    wanted = [sig for sig in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if sig is not None]
    old = {sig: signal.signal(sig, handler) for sig in wanted}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def _worker_init(parent_pid: int) -> None:
    """Pool worker set-up: leave Ctrl-C to the parent; end this worker when the parent is gone.

    A worker holds the write end of its own task queue and of the fork server's liveness pipe, so once
    its parent dies without stopping it (SIGKILL), nothing would ever end it, the fork server or the
    resource tracker. A daemon thread waits for the parent to exit (a pidfd where Linux has one, else
    polling) and then ends the worker; the fork server and the resource tracker follow when their last
    client is gone.
    """
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), name="tspsim-parent-watch", daemon=True).start()


def _exit_with_parent(parent_pid: int) -> None:
    import select

    try:
        fd = os.pidfd_open(parent_pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])
    else:  # pragma: no cover - no pidfd (not Linux ≥ 5.3)
        while True:
            time.sleep(0.5)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                pass
    os._exit(1)


class PoolRunner:
    """A local process pool of ``jobs`` workers (the default)."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.description = f"on {jobs} local processes"
        self._executor: Any = None

    def __enter__(self) -> PoolRunner:
        from concurrent.futures import ProcessPoolExecutor

        self._signals = terminate_as_interrupt()
        self._signals.__enter__()
        self._executor = ProcessPoolExecutor(max_workers=self.jobs, mp_context=_pool_context(),
                                             initializer=_worker_init, initargs=(os.getpid(),))
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        try:
            self._stop(exc_type)
        finally:
            self._signals.__exit__(None, None, None)

    def _stop(self, exc_type: Any) -> None:
        ex, self._executor = self._executor, None
        if ex is None:
            return
        if exc_type is None:
            ex.shutdown(wait=True)
            return
        # Interrupted or failed: drop queued points and stop the workers now (finished points are cached).
        procs = list((getattr(ex, "_processes", None) or {}).values())
        ex.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout=5)

    def run(self, points: Sequence[Point]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Submit every point, yield results as they complete.

        Points that share a graph (:func:`graph_groups`) go to one worker as one task, as long as every
        worker still gets a task (:func:`task_groups`).
        """
        from concurrent.futures import as_completed

        futures = {self._executor.submit(run_points, [points[i] for i in group]): group
                   for group in task_groups(points, self.jobs)}
        for fut in as_completed(futures):
            group = futures[fut]
            yield from zip(group, _group_results(fut, len(group)))


class DaskRunner:
    """An existing Dask ``distributed`` cluster (``--scheduler tcp://HOST:PORT``).

    Workers need the same tspsim installed; model and topology YAML paths must be readable by them
    (presets always are). Finished points come back to this process, which writes the cache.
    """

    def __init__(self, address: str, timeout_s: float = 10.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.description = f"on the Dask cluster at {address}"
        self._client: Any = None
        self._futures: list[Any] = []

    def __enter__(self) -> DaskRunner:
        import re

        if not re.match(r"^((tcp|tls|ucx|ws|wss)://)?(\[[0-9A-Fa-f:.]+\]|[^:/\s\[\]]+):\d+$", self.address):
            raise TspsimError(f"--scheduler {self.address!r}: expected a scheduler address like tcp://HOST:PORT "
                              "(e.g. tcp://127.0.0.1:8786)")
        try:
            import distributed
        except ImportError:
            raise TspsimError("--scheduler needs the Dask 'distributed' package: pip install distributed "
                              "(or pip install 'tspsim[dask]')") from None
        probe_dask_scheduler(self.address, self.timeout_s)
        try:
            self._client = distributed.Client(self.address, timeout=self.timeout_s, set_as_default=False)
        except Exception as exc:  # noqa: BLE001 - any failure to connect is one user-facing line
            raise TspsimError(f"cannot connect to the Dask scheduler at {self.address}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if exc_type is not None and self._futures:
            try:
                client.cancel(self._futures)
            except Exception:  # noqa: BLE001 - best effort while shutting down
                pass
        client.close()

    def run(self, points: Sequence[Point]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Submit every point to the cluster, yield results as they complete.

        Points that share a graph go to one worker as one task, as on the local pool, while every worker
        thread of the cluster still gets a task.
        """
        import distributed

        groups = task_groups(points, sum(self._client.nthreads().values()) or 1)
        self._futures = [self._client.submit(run_points, [points[i] for i in g], pure=False) for g in groups]
        index = {f.key: g for f, g in zip(self._futures, groups)}
        with self._client.as_current():
            for fut in distributed.as_completed(self._futures):
                group = index[fut.key]
                yield from zip(group, _group_results(fut, len(group)))


def probe_dask_scheduler(address: str, timeout_s: float) -> None:
    """Check, within ``timeout_s``, that a Dask scheduler answers at a ``tcp://`` address.

    A Dask server sends its handshake as soon as a connection opens: a frame whose first two native
    uint64 are the message's byte count and its number of frames (``distributed.comm.tcp``). Anything
    else — an HTTP port that waits for a request (the client would wait for ever), an SSH or SMTP banner
    (whose first bytes, read as a length, ask for exabytes) — is refused here with one line, before
    ``distributed.Client`` is built. Other schemes (tls, ucx, ws) are left to ``distributed``.

    Raises:
        TspsimError: nothing listens, nothing answers in time, or what answers is not Dask.
    """
    import re
    import socket
    import struct

    match = re.match(r"^(?:tcp://)?(\[[0-9A-Fa-f:.]+\]|[^:/\s\[\]]+):(\d+)$", address)
    if match is None:
        return
    host, port = match.group(1).strip("[]"), int(match.group(2))
    deadline = time.monotonic() + timeout_s
    head = b""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            while len(head) < 16:
                sock.settimeout(max(deadline - time.monotonic(), 1e-3))
                chunk = sock.recv(16 - len(head))
                if not chunk:
                    break
                head += chunk
    except TimeoutError:
        if not head:
            raise TspsimError(f"--scheduler {address}: nothing answered like a Dask scheduler within {timeout_s:g} s "
                              "(a web server or dashboard waits for a request; the scheduler itself listens on "
                              "port 8786 by default)") from None
    except OSError as exc:
        raise TspsimError(f"cannot connect to the Dask scheduler at {address}: {exc.strerror or exc}") from None
    nbytes, nframes = struct.unpack("QQ", head) if len(head) == 16 else (0, 0)
    if not (16 <= nbytes <= 1 << 26 and 1 <= nframes <= 1024):
        shown = "".join(c if c.isprintable() else "." for c in head.decode("latin-1"))
        raise TspsimError(f"--scheduler {address}: the service there is not a Dask scheduler (it sent "
                          f"{shown!r}); give the scheduler's address, e.g. tcp://HOST:8786")


def map_tasks(runner: Any, fn: Any, items: Sequence[Any]) -> list[Any]:
    """``[fn(x) for x in items]``, on the runner's local worker processes when it has them (in order).

    ``fn`` must be a module-level function (pickled by name). Other runners compute here, in this process.
    """
    executor = getattr(runner, "_executor", None)
    if executor is None or len(items) < 2:
        return [fn(x) for x in items]
    return list(executor.map(fn, items))


def make_runner(jobs: int | None, scheduler: str | None, n_points: int) -> Runner:
    """The runner for a sweep of ``n_points`` points still to run.

    Dask when ``scheduler`` names one; else a pool of ``jobs`` (default: CPU count) processes, or
    this process when one job (or one point) is enough.
    """
    if scheduler and n_points > 0:
        return DaskRunner(scheduler)
    jobs = jobs or os.cpu_count() or 1
    jobs = min(jobs, max(n_points, 1))
    return SerialRunner() if jobs <= 1 else PoolRunner(jobs)
