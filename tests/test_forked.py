"""A function in a forked child process (:class:`tspsim.core.forked.ForkedCall`) and ``run --jobs``.

The default comparison's playbook search runs in a forked child beside the three schedules when ``--jobs`` ≥ 2;
the output must not depend on it.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest
from click.testing import CliRunner

from tspsim.cli import cli
from tspsim.core.errors import ConfigError, TspsimError
from tspsim.core.forked import ForkedCall, can_fork

pytestmark = pytest.mark.skipif(not can_fork(), reason="needs os.fork and a single thread")


def test_value_and_stderr_come_back():
    def work():
        print("progress line", file=sys.stderr)
        return {"pid": os.getpid(), "squares": [i * i for i in range(5)]}

    with ForkedCall(work) as call:
        value, err = call.result()
    assert value["squares"] == [0, 1, 4, 9, 16]
    assert value["pid"] != os.getpid()         # it ran in the child
    assert err == "progress line\n"
    assert call.pid is None                    # reaped


def test_exception_is_raised_here_after_its_stderr(capsys):
    def work():
        print("searching ... failed", file=sys.stderr)
        raise ConfigError("no such model 'x'; tspsim list models")

    with ForkedCall(work) as call, pytest.raises(ConfigError, match="no such model"):
        call.result()
    assert capsys.readouterr().err == "searching ... failed\n"


def test_unpicklable_exception_becomes_one_line():
    class Local(Exception):   # a local class cannot be pickled
        pass

    def work():
        raise Local("boom")

    with ForkedCall(work) as call, pytest.raises(TspsimError, match="Local: boom"):
        call.result()


def test_a_killed_child_is_a_clear_error():
    def work():
        os.kill(os.getpid(), signal.SIGKILL)

    with ForkedCall(work) as call, pytest.raises(TspsimError, match="--jobs 1"):
        call.result()


def test_close_ends_a_running_child():
    import time

    call = ForkedCall(lambda: time.sleep(60))
    pid = call.pid
    call.close()
    assert call.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)                         # gone and reaped


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import tiny_32_heads

    path = tmp_path_factory.mktemp("models") / "tiny.yaml"
    path.write_text(tiny_32_heads())
    return str(path)


def test_run_jobs_2_equals_jobs_1(tiny, forks):
    """The default comparison with the playbook search forked equals the serial run: stdout, JSON, stderr order."""
    base = ["run", "-t", "mi300x-1node", "--model", tiny, "--seq", "4k", "--no-timing"]
    runner = CliRunner()
    serial = runner.invoke(cli, [*base, "--jobs", "1"])
    assert serial.exit_code == 0, serial.output
    assert not forks
    forked_run = runner.invoke(cli, [*base, "--jobs", "2"])
    assert forked_run.exit_code == 0, forked_run.output
    assert len(forks) == 1                      # the search did run in a child
    assert forked_run.stdout == serial.stdout
    assert "playbooks: the last 2 columns were searched" in forked_run.stdout

    def lines(err: str) -> list[str]:           # progress lines in order, without their wall times
        return [line.split(" ... ")[0] for line in err.splitlines()]

    assert lines(forked_run.stderr) == lines(serial.stderr)
    assert any(line.startswith("searching the best ptd-p") for line in lines(serial.stderr))
    as_json = [json.loads(runner.invoke(cli, [*base, "--jobs", j, "--json"]).stdout) for j in ("1", "2")]
    assert as_json[0] == as_json[1] and len(as_json[0]["results"]) == 5


def test_run_with_outputs_searches_in_this_process(tiny, tmp_path, monkeypatch):
    """--save needs the playbook columns' timelines: no fork, and the file holds all five columns."""
    import tspsim.core.forked as forked

    def refuse(fn):
        raise AssertionError("forked although a timeline is written")

    monkeypatch.setattr(forked, "ForkedCall", refuse)
    out = tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["run", "-t", "mi300x-1node", "--model", tiny, "--seq", "4k", "--save", str(out)])
    assert res.exit_code == 0, res.output
    from tspsim.outputs.results_file import load_results

    assert len(load_results(out)) == 5


def test_an_error_in_the_forked_search_is_one_line(tiny, monkeypatch):
    import tspsim.commands.playbook_columns as columns

    def broken(*args, **kwargs):
        raise ConfigError("the playbook search failed: a test error; nothing to fix")

    monkeypatch.setattr(columns, "playbook_entries", broken)
    res = CliRunner().invoke(cli, ["run", "-t", "mi300x-1node", "--model", tiny, "--seq", "4k", "--jobs", "2"])
    assert res.exit_code == 2
    assert "the playbook search failed: a test error" in res.stderr and "Traceback" not in res.output


def test_no_fork_off_linux_or_with_threads(monkeypatch):
    import threading

    import tspsim.core.forked as forked

    assert forked.can_fork()
    monkeypatch.setattr(forked.sys, "platform", "darwin")
    assert not forked.can_fork()
    monkeypatch.setattr(forked.sys, "platform", "linux")
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert not forked.can_fork()
    finally:
        stop.set()
        t.join()


def _square_or_fail(x: int) -> int:
    if x == 3:
        raise ConfigError("three is refused")
    return x * x


@pytest.mark.parametrize("jobs", [1, 2])
def test_forked_map_keeps_order_and_returns_exceptions(jobs, forks):
    import tspsim.core.forked as forked

    items = list(range(7))
    out = forked.forked_map(_square_or_fail, items, [float(x) for x in items], jobs)
    assert [v for ok, v in out if ok] == [0, 1, 4, 16, 25, 36]
    (bad,) = [v for ok, v in out if not ok]
    assert isinstance(bad, ConfigError) and str(bad) == "three is refused" and out[3][0] is False
    assert len(forks) == (1 if jobs == 2 else 0)


def test_forked_map_splits_by_weight(monkeypatch):
    """Largest first to the lighter side: weights 512, 512, 64, 64 give one of each to each process."""
    import tspsim.core.forked as forked

    def whose(_x):
        return os.getpid()

    out = forked.forked_map(whose, ["1T-a", "175B-a", "1T-b", "175B-b"], [512.0, 64.0, 512.0, 64.0], 2)
    pids = [v for _ok, v in out]
    assert pids[0] != pids[2] and pids[1] != pids[3]       # the two heavy ones apart, the two light ones apart
    assert len(set(pids)) == 2


def test_a_commands_jobs_reach_forked_map(forks):
    """``processes(1)`` (run --jobs 1, a sweep or plan in this process) keeps forked_map in this process."""
    import tspsim.core.forked as forked

    with forked.processes(1):
        assert forked.process_count() == 1
        forked.forked_map(_square_or_fail, [1, 2], [1.0, 1.0])
    assert not forks
    with forked.processes(2):
        forked.forked_map(_square_or_fail, [1, 2], [1.0, 1.0])
    assert len(forks) == (1 if forked.can_fork() else 0)
    from tspsim.explore.runners import SerialRunner

    with SerialRunner():
        assert forked.process_count() == 1
    assert forked.process_count(3) == 3


@pytest.mark.parametrize("jobs", [1, 2])
def test_forked_map_progress_adds_up(jobs):
    """on_done hears of every item exactly once in all, never of all of them before the child is back."""
    import tspsim.core.forked as forked

    heard = []
    forked.forked_map(_square_or_fail, list(range(9)), [1.0] * 9, jobs, on_done=heard.append)
    assert sum(heard) == 9 and all(n > 0 for n in heard)
    assert sum(heard[:-1]) <= 8
