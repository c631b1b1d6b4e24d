"""Progress on stderr (tspsim/core/progress.py) and the commands that report it."""

from __future__ import annotations

import io

from click.testing import CliRunner

from tspsim.cli import cli
from tspsim.core.progress import Progress, format_duration


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_log_lines_one_per_unit_with_eta():
    out, clock = io.StringIO(), Clock()
    p = Progress("plan", 4, stream=out, tty=False, clock=clock)
    for i in range(4):
        clock.t += 2.0
        p.advance(item=f"config {i}")
    assert out.getvalue().splitlines() == ["plan: 1/4 (ETA 6 s) config 0", "plan: 2/4 (ETA 4 s) config 1",
                                           "plan: 3/4 (ETA 2 s) config 2", "plan: 4/4 (ETA 0 s) config 3"]


def test_log_lines_rate_limited_but_the_last_always_printed():
    out, clock = io.StringIO(), Clock()
    p = Progress("decode", 1000, stream=out, tty=False, every_s=1.0, clock=clock)
    for i in range(1000):
        clock.t += 0.01
        p.advance(item=f"step {i + 1}")
    lines = out.getvalue().splitlines()
    assert 9 <= len(lines) <= 11 and lines[-1].startswith("decode: 1000/1000")


def test_quiet_period_keeps_fast_work_silent():
    out, clock = io.StringIO(), Clock()
    fast = Progress("collective", 3, stream=out, tty=False, quiet_s=2.0, clock=clock)
    for _ in range(3):
        clock.t += 0.1
        fast.advance()
    fast.close()
    assert out.getvalue() == ""
    slow = Progress("collective", 3, stream=out, tty=False, quiet_s=2.0, clock=clock)
    for i in range(3):
        clock.t += 1.5
        slow.advance(item=f"size {i}")
    assert out.getvalue().splitlines() == ["collective: 2/3 (ETA 2 s) size 1", "collective: 3/3 (ETA 0 s) size 2"]


def test_collective_reports_slow_sizes_only():
    fast = CliRunner().invoke(cli, ["collective", "-t", "mi300x-1node", "--sizes", "1k,1M"])
    assert fast.exit_code == 0 and fast.stderr == ""


def test_replay_and_generate_say_what_they_did(tmp_path):
    """Off a terminal one closing line each (a terminal also gets a start line before the work)."""
    trace = tmp_path / "t.json"
    gen = CliRunner().invoke(cli, ["generate", "-t", "mi300x-1node", "--schedule", "tp", "--seq", "4k", "-o",
                                   str(trace)])
    assert gen.exit_code == 0 and "generated the train op graph of tp in " in gen.stderr
    rep = CliRunner().invoke(cli, ["replay", str(trace), "-t", "mi300x-1node"])
    assert rep.exit_code == 0 and rep.stderr.splitlines()[0].startswith(f"replayed {trace} (")


def test_terminal_bar_redrawn_in_place_with_eta():
    out, clock = io.StringIO(), Clock()
    p = Progress("simulating tp D=8", 10, stream=out, tty=True, refresh_s=0.0, clock=clock)
    clock.t = 3.0
    p.update(3, item="decode step 3")
    text = out.getvalue()
    assert text.startswith("\rsimulating tp D=8  [#######") and "3/10  ETA 0:07  decode step 3" in text
    assert "\n" not in text
    p.close(final="simulating tp D=8 ... 3.0 s")
    assert out.getvalue().endswith("simulating tp D=8 ... 3.0 s" + " " * (len(text) - 1 - 27) + "\n") or \
        out.getvalue().rstrip().endswith("simulating tp D=8 ... 3.0 s")
    unknown = Progress("probes", None, stream=io.StringIO(), tty=False, clock=clock)
    unknown.advance(item="B=64")
    assert unknown.stream.getvalue().startswith("probes: 1 done")


def test_duration_format():
    assert [format_duration(s) for s in (3, 65, 3725)] == ["0:03", "1:05", "1:02:05"]


def test_run_reports_inference_steps_off_a_terminal(tmp_path):
    model = tmp_path / "m.yaml"
    model.write_text("hidden: 512\nlayers: 2\nq_heads: 8\nkv_heads: 8\nhead_dim: 64\nffn_hidden: 2048\n"
                     "gated_mlp: true\nvocab: 1000\n")
    res = CliRunner().invoke(cli, ["run", "-t", "mi300x-1node", "--model", str(model), "--mode", "generate",
                                   "--seq", "1k", "--tokens", "3", "--schedule", "tp", "--json"])
    assert res.exit_code == 0, res.output
    err = res.stderr.splitlines()
    assert err[0] == "simulating tp D=8 ..."
    assert any(line.startswith("simulating tp D=8: 1/5") and "prefill step" in line for line in err)
    assert any("5/5" in line and "final decode step" in line for line in err)
    assert any("max-batch probe" in line for line in err) and err[-1].startswith("simulating tp D=8: done in")
    assert res.stdout.lstrip().startswith("{")  # stdout holds only the JSON
