"""``tspsim calibrate`` and ``tspsim check`` (issue 17): exactness of the fast path, recovery of known
parameters, prediction across node counts, verdicts on the shared logs, the commands."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from tspsim.cli import cli
from tspsim.core.errors import ConfigError
from tspsim.explore import calibrate_params as cp
from tspsim.explore.calibrate import calibrate, error_factor, mean_error
from tspsim.explore.fit import least_squares
from tspsim.explore.health import check_log
from tspsim.explore.measured import Predictor, host, host_topology, predict_s, replay
from tspsim.simulate.collective import busbw_factor, simulate_collective
from tspsim.spec.collective_log import read_collective_log
from tspsim.spec.topology import Topology
from tspsim.spec.topology_file import load_topology, preset_names

LOGS = Path(__file__).parent / "data" / "collective-logs"


def shared(prefix: str):
    return read_collective_log(str(next(LOGS.glob(f"{prefix}-*.txt"))))


TESTS = {"all_reduce": "all_reduce_perf", "all_gather": "all_gather_perf", "reduce_scatter": "reduce_scatter_perf",
         "all_to_all": "alltoall_perf", "broadcast": "broadcast_perf", "sendrecv": "sendrecv_perf"}


def synthetic_log(topo: Topology, nodes: int, path: Path, op: str = "all_reduce", low: int = 3, high: int = 34,
                  gpus: int = 8, slower: float = 1.0, step: int = 1) -> str:
    """An nccl-tests output of ``op`` on ``nodes`` × ``gpus`` GPUs of ``topo``, ``slower`` × the model's times
    (printed as nccl-tests prints them)."""
    n = nodes * gpus
    ranks = tuple(j * topo.gpus_per_node + i for j in range(nodes) for i in range(gpus))
    lines = [f"# Collective test starting: {TESTS[op]}", f"# nodes: {nodes}", f"# gpus_per_node: {gpus}",
             "#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw"
             "   busbw #wrong"]
    for k in range(low, high + 1, step):
        size = 2**k
        t = simulate_collective(topo, op, ranks, size)["time_s"] * 1e6 * slower
        algbw = size / t / 1e3
        busbw = algbw * busbw_factor(op, 2 if op == "sendrecv" else n)
        cells = f"{t:8.2f} {algbw:7.2f} {busbw:7.2f}      0"
        redop = "sum" if op in ("all_reduce", "reduce_scatter") else "none"
        root = 0 if op == "broadcast" else -1
        lines.append(f"{size:>12} {size // 4:>13}     float {redop:>7} {root:>7} {cells} {cells}")
    lines += ["# Out of bounds values : 0 OK", "# Avg bus bandwidth    : 1.0"]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# ------------------------------------------------------------------------------------- parameters, fast path
def test_every_preset_is_inside_the_plausible_ranges():
    for name in preset_names():
        topo = load_topology(name)
        for p in cp.PARAMETERS + cp.COMPUTE_PARAMETERS:
            assert p.source and p.lo < p.hi
            if cp.applicable(topo, p) and not p.scale:
                assert p.lo <= cp.base_value(topo, p.fabric, p.keys[0]) <= p.hi, (name, p.name)


CASES = [("h100-dgx-128node", 1, "all_reduce"), ("h100-dgx-128node", 2, "all_reduce"),
         ("h100-dgx-128node", 8, "all_gather"), ("mi300x-1node", 1, "all_reduce"),
         ("mi300x-128node", 2, "reduce_scatter"), ("h100-dgx-128node", 2, "all_to_all"),
         ("h100-dgx-128node", 4, "broadcast")]


@pytest.mark.parametrize(("name", "nodes", "op"), CASES, ids=[f"{n}-{k}-{o}" for n, k, o in CASES])
def test_predictor_equals_the_policy_on_random_parameters(name, nodes, op):
    """The fit's fast path gives exactly the policy's prediction (= the replay) for any parameter values."""
    from tspsim.explore.measured import Observation

    topo = host_topology(load_topology(name), nodes)
    ranks = tuple(range(nodes * topo.gpus_per_node))
    obs = [Observation("x", op, ranks, 2**k, "", "", 1.0, 1.0) for k in range(3, 35, 3)]
    fast = Predictor(topo, obs)
    params = tuple(p for p in cp.PARAMETERS if cp.applicable(topo, p))
    rng = np.random.default_rng(17)
    for _ in range(6):
        values = tuple(math.exp(rng.uniform(math.log(p.lo), math.log(p.hi))) if p.scale else rng.uniform(p.lo, p.hi)
                       for p in params)
        new = cp.key_values(topo, params, values)
        assert fast.predict_s(cp.with_values(topo, new)).tolist() == predict_s(cp.with_values(topo, new), obs).tolist()


def test_policy_prediction_equals_replay_on_a_log():
    log = shared("07")
    h = host(log, load_topology("h100-dgx-128node"))
    small = host_topology(load_topology("h100-dgx-128node"), h.nodes)
    obs = h.observations()
    assert predict_s(small, obs) == pytest.approx([e["time_s"] for e in replay(small, obs)], rel=1e-9)


def test_cut_topology_gives_the_full_clusters_times(tmp_path):
    full = load_topology("h100-dgx-128node")
    ranks = tuple(range(16))
    cut = host_topology(full, 2)
    assert cut.nodes == 2
    for size in (1024, 2**20, 2**30):
        assert simulate_collective(cut, "all_reduce", ranks, size)["time_s"] == pytest.approx(
            simulate_collective(full, "all_reduce", ranks, size)["time_s"], rel=1e-12)
    # across leaf groups the cut keeps whole groups, so the spine links are the same
    path = tmp_path / "small-leaves.yaml"
    path.write_text("name: small-leaves\ninherit: h100-dgx-128node\nnodes: 8\ninter:\n  nodes_per_leaf: 2\n")
    leafy = load_topology(str(path))
    assert host_topology(leafy, 3).nodes == 4
    ranks = tuple(range(24))
    for size in (2**16, 2**28):
        assert simulate_collective(host_topology(leafy, 3), "all_gather", ranks, size)["time_s"] == pytest.approx(
            simulate_collective(leafy, "all_gather", ranks, size)["time_s"], rel=1e-12)


# ------------------------------------------------------------------------------------------------- fitting
def test_least_squares_bounded_and_deterministic():
    target = np.array([0.3, 2.0, -1.0])

    def residuals(x):
        return np.array([x[0] - target[0], 10 * (x[1] - x[0] ** 2), x[2] - target[2], 0.1 * x[1]])

    lo, hi = np.array([-1.0, -1.0, -0.5]), np.array([1.0, 1.0, 1.0])
    a = least_squares(residuals, np.zeros(3), lo, hi)
    b = least_squares(residuals, np.zeros(3), lo, hi)
    assert a.x.tolist() == b.x.tolist()
    assert a.x[2] == -0.5  # held at its bound
    assert a.x[0] == pytest.approx(0.3, abs=2e-3) and a.x[1] == pytest.approx(0.09, abs=2e-3)
    assert a.cost < a.start_cost and a.evaluations <= 3000


PERTURBED = {"inter.nic_efficiency": 0.85, "intra.collective_efficiency": 0.90}
PERTURBED_SCALES = {"inter.ring_step_us ×": 1.3, "intra.ring_base_us ×": 1.25}


def test_calibration_recovers_known_parameters(tmp_path):
    """Logs generated from a perturbed H100 cluster (1, 2 and 4 nodes), fitted from the preset: the
    perturbation comes back within 2 % and everything else stays where it was."""
    base = load_topology("h100-dgx-128node")
    params = tuple(p for p in cp.PARAMETERS if p.name in {**PERTURBED, **PERTURBED_SCALES})
    truth = {**PERTURBED, **PERTURBED_SCALES}
    perturbed = cp.with_values(base, cp.key_values(base, params, tuple(truth[p.name] for p in params)))
    logs = [read_collective_log(synthetic_log(perturbed, k, tmp_path / f"{k}.txt")) for k in (1, 2, 4)]
    cal = calibrate(base, logs)
    fitted = {v.parameter.name: v for v in cal.values if v.determined}
    assert set(truth) <= set(fitted)
    for v in fitted.values():
        expect = truth.get(v.parameter.name, v.start)
        assert v.value == pytest.approx(expect, rel=0.02), v.parameter.name
    assert mean_error(cal.rows, after=True) < 0.005 < 0.05 < mean_error(cal.rows, after=False)


def test_refuses_logs_the_topology_cannot_host(tmp_path):
    log = shared("06")  # 16 GPUs on 2 nodes
    with pytest.raises(ConfigError, match="has 1 node of 8 GPUs.*'inter' section"):
        calibrate(load_topology("h100-dgx-1node"), [log])
    wide = tmp_path / "wide.txt"
    devices = "".join(f"#  Rank {r:2d} Group  0 Pid 1 on host{r // 16} device {r % 16:2d} [0x1b] NVIDIA H100\n"
                      for r in range(32))
    table = (LOGS / "07-h100-4node-8x400gIB-allreduce-default.txt").read_text()
    table = table[table.index("#       size"):]
    wide.write_text("# op: all_reduce_perf\n#  Using devices\n" + devices + table)
    with pytest.raises(ConfigError, match="whose nodes hold that many GPUs"):
        check_log(read_collective_log(str(wide)), load_topology("h100-dgx-128node"))
    result = CliRunner().invoke(cli, ["calibrate", "-t", "dgx-a100-1node", str(LOGS / "16-a100-40gb-oci-2node-roce-"
                                      "allreduce-default.txt"), "-o", str(tmp_path / "a100.yaml")])
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and "16 GPUs on 2 nodes of 8" in result.stderr


# ----------------------------------------------------------------------------------- across node counts
# Fitted to 07 (4 nodes, 8 B-16 GiB, healthy), predicting the other healthy H100 logs at 2 and 8 nodes.
# Mean over each log's sizes of max(model/measured, measured/model) - 1 (replayed). README: Calibrating to your cluster.
OTHER_HEALTHY = ("06", "09", "10", "11")


@pytest.fixture(scope="module")
def fitted_07():
    return calibrate(load_topology("h100-dgx-128node"), [shared("07")])


def _error(topo: Topology, log) -> float:
    h = host(log, topo)
    obs = h.observations()
    entries = replay(host_topology(topo, h.nodes), obs)
    return float(np.mean([error_factor(e["time_s"], o.measured_s) for e, o in zip(entries, obs)]))


def test_fit_to_one_h100_log_predicts_other_node_counts(fitted_07):
    preset = load_topology("h100-dgx-128node")
    before = {k: _error(preset, shared(k)) for k in OTHER_HEALTHY}
    after = {k: _error(fitted_07.fitted, shared(k)) for k in OTHER_HEALTHY}
    for k in OTHER_HEALTHY:
        if k == "10":  # Ring forced on NICs tuned to 0.98 of line rate: 07's slower NICs cannot know it
            assert after[k] < before[k] * 1.10, (k, before[k], after[k])
        else:
            assert after[k] < before[k], (k, before[k], after[k])
    assert sum(after.values()) < sum(before.values())
    assert mean_error(fitted_07.rows, True) < mean_error(fitted_07.rows, False)


def test_fitted_values_stay_in_their_plausible_ranges(fitted_07):
    for v in fitted_07.values:
        p = v.parameter
        assert p.lo <= v.value <= p.hi
        lo, hi = v.shown[2], v.shown[3]
        assert lo <= v.shown[1] <= hi
    assert {v.parameter.name for v in fitted_07.values if v.determined} >= {"inter.nic_efficiency"}


@pytest.mark.parametrize("op", sorted(TESTS))
def test_every_test_binary_checks_and_calibrates(tmp_path, op):
    """A cluster 10 % slower than the preset on every size, for each nccl-tests binary: check calls it healthy
    (inside ±15 %), calibration finds the NIC efficiency 10 % lower and reproduces the log."""
    base = load_topology("h100-dgx-128node")
    log = read_collective_log(synthetic_log(base, 2, tmp_path / f"{op}.txt", op, low=10, high=30, step=2,
                                            slower=1.1))
    assert check_log(log, base).verdict == "healthy"
    cal = calibrate(base, [log])
    nic = next(v for v in cal.values if v.parameter.name == "inter.nic_efficiency")
    assert nic.determined and nic.value == pytest.approx(0.92 / 1.1, rel=0.02)
    assert mean_error(cal.rows, after=True) < 0.01


# ------------------------------------------------------------------------------------------------- check
VERDICTS = [  # log, topology, verdict, words in the deciding reason
    ("14", "h100-dgx-128node", "under-performing", "NIC link rate"),
    ("15", "h100-dgx-128node", "under-performing", "NIC link rate"),
    ("17", "h100-dgx-128node", "under-performing", "NIC link rate"),
    ("07", "h100-dgx-128node", "healthy", "NIC-bound"),
    ("09", "h100-dgx-128node", "healthy", "NIC-bound"),
    ("10", "h100-dgx-128node", "healthy", "NIC-bound"),
    ("13", "h100-dgx-128node", "healthy", "NVLS"),
    ("06", "h100-dgx-128node", "healthy", "nvls_tree"),
    ("11", "h100-dgx-128node", "healthy", "nvls_tree"),
    ("18", "h200-dgx-128node", "healthy", "nvls_tree"),
    ("01", "mi300x-1node", "healthy", "xGMI"),
]


@pytest.mark.parametrize(("log", "topology", "verdict", "words"), VERDICTS, ids=[v[0] for v in VERDICTS])
def test_check_verdicts_on_the_shared_logs(log, topology, verdict, words):
    result = check_log(shared(log), load_topology(topology))
    assert result.verdict == verdict
    assert words in result.ranges[result.deciding].reason


def test_check_reports_how_much_slower():
    result = check_log(shared("15"), load_topology("h100-dgx-128node"))
    deciding = result.ranges[result.deciding]
    assert 3.5 < 1 / deciding.ratio < 4.5 and "4.07x slower" in deciding.reason


def test_check_command(tmp_path):
    runner = CliRunner()
    bad, good = str(LOGS / "14-h100-2node-ndr400-allreduce-default-UNDERPERF.txt"), str(
        LOGS / "07-h100-4node-8x400gIB-allreduce-default.txt")
    text = runner.invoke(cli, ["check", "-t", "h100-dgx-128node", good, bad])
    assert text.exit_code == 0, text.output
    assert "verdict: healthy" in text.stdout and "verdict: under-performing" in text.stdout
    out = runner.invoke(cli, ["check", "-t", "h100-dgx-128node", bad, "--json"])
    entry = json.loads(out.stdout)["results"][0]
    assert entry["verdict"] == "under-performing" and sum(r["decides"] for r in entry["ranges"]) == 1
    assert runner.invoke(cli, ["check", "-t", "h100-dgx-128node", bad, "--fail-on-unhealthy"]).exit_code == 1
    assert runner.invoke(cli, ["check", "-t", "h100-dgx-128node", good, "--fail-on-unhealthy"]).exit_code == 0


# --------------------------------------------------------------------------------------------- calibrate CLI
def test_calibrate_command_writes_an_inheriting_topology(tmp_path):
    out = tmp_path / "my-cluster.yaml"
    log = str(LOGS / "10-h100-2node-400gIB-allreduce-RING-minctas24-qps2.txt")
    result = CliRunner().invoke(cli, ["calibrate", "-t", "h100-dgx-128node", log, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "err before" in result.stdout and "fitted communication parameters" in result.stdout
    assert "wrote" in result.stdout and "done in" in result.stderr
    text = out.read_text()
    assert "10-h100-2node-400gIB-allreduce-RING-minctas24-qps2.txt" in text and "before" in text
    data = yaml.safe_load(text)
    assert data["inherit"] == "h100-dgx-128node" and data["name"] == "my-cluster"
    assert set(data) <= {"name", "description", "inherit", "intra", "inter", "gpu"}
    topo = load_topology(str(out))
    assert topo.nodes == 128 and topo.inter.nic_efficiency == data["inter"]["nic_efficiency"]
    run = CliRunner().invoke(cli, ["collective", "--topology", str(out), "--group", "16", "--sizes", "1G"])
    assert run.exit_code == 0, run.output


def test_calibrate_json_and_a_base_file(tmp_path):
    base = tmp_path / "topos" / "base.yaml"
    base.parent.mkdir()
    base.write_text("name: base\ninherit: h100-dgx-128node\nnodes: 4\n")
    out = tmp_path / "fitted" / "fit.yaml"
    log = str(LOGS / "07-h100-4node-8x400gIB-allreduce-default.txt")
    result = CliRunner().invoke(cli, ["calibrate", "-t", str(base), log, "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)["results"][0]
    assert entry["fitted"] and len(entry["rows"]) == 32
    assert all(p["lo"] <= p["after"] <= p["hi"] for p in entry["parameters"])
    assert yaml.safe_load(out.read_text())["inherit"] == "../topos/base.yaml"
    assert load_topology(str(out)).nodes == 4


def test_calibrate_output_must_be_yaml_and_not_base(tmp_path):
    log = str(LOGS / "13-h100-1node-nvls-allreduce-128M-4G.txt")
    result = CliRunner().invoke(cli, ["calibrate", "-t", "h100-dgx-1node", log, "-o", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and "give a .yaml file name" in result.stderr
    base = tmp_path / "base.yaml"
    base.write_text("name: base\ninherit: h100-dgx-1node\n")
    result = CliRunner().invoke(cli, ["calibrate", "-t", str(base), log, "-o", str(base)])
    assert result.exit_code == 2 and "is BASE itself" in result.stderr
    assert base.read_text() == "name: base\ninherit: h100-dgx-1node\n"


# ------------------------------------------------------------------------------------------------ compute
def bench_csv(gpu_topo: Topology, path: Path) -> str:
    """A micro-benchmark CSV whose times are the compute model's on ``gpu_topo``'s GPU."""
    from tspsim.engine.costs import compute_seconds
    from tspsim.explore.calibrate_compute import kernel_op
    from tspsim.spec.microbench import Kernel

    rows = ["# generated from a perturbed H100 (tests/test_calibrate.py)",
            "kind,m,n,k,batch,heads,seq,head_dim,causal,dtype,time_us"]
    shapes = [("gemm", (n, n, n, 1)) for n in (256, 512, 1024, 2048, 4096, 8192, 16384)]
    shapes += [("gemm", (m, 8192, 8192, 1)) for m in (1, 8, 32, 128)]
    shapes += [(kind, (2, 32, s, 128, 1)) for s in (1024, 4096, 16384) for kind in ("attention_fwd", "attention_bwd")]
    for kind, shape in shapes:
        t = compute_seconds(kernel_op(Kernel(0, kind, shape, 2, 1.0)), gpu_topo.gpu) * 1e6
        if kind == "gemm":
            m, n, k, _ = shape
            rows.append(f"gemm,{m},{n},{k},,,,,,bf16,{t:.3f}")
        else:
            b, h, s, d, c = shape
            rows.append(f"{kind},,,,{b},{h},{s},{d},{c},bf16,{t:.3f}")
    path.write_text("\n".join(rows) + "\n")
    return str(path)


GPU_TRUTH = {"gpu.gemm_efficiency": 0.74, "gpu.gemm_half_GFLOP": 7.0, "gpu.attn_fwd_efficiency": 0.62,
             "gpu.attn_bwd_efficiency": 0.44, "gpu.hbm_efficiency": 0.83}


def test_compute_calibration_recovers_known_efficiencies(tmp_path):
    from tspsim.explore.calibrate_compute import calibrate_compute
    from tspsim.spec.microbench import read_microbench

    base = load_topology("h100-dgx-1node")
    kernels = read_microbench(bench_csv(cp.with_values(base, GPU_TRUTH), tmp_path / "bench.csv"))
    cal = calibrate_compute(base, kernels)
    got = {f"gpu.{k.split('.', 1)[1]}": v for k, v in cal.keys.items()}
    for key, value in GPU_TRUTH.items():
        assert got[key] == pytest.approx(value, rel=0.02), key
    assert max(abs(r.error_after) for r in cal.rows) < 0.01 < max(abs(r.error_before) for r in cal.rows)


CSV_HEAD = "kind,m,n,k,batch,heads,seq,head_dim,causal,dtype,time_us\n"
BAD_CSV = {
    "no time column": ("kind,m,n,k\ngemm,1,2,3\n", "lacks 'time_us'"),
    "unknown column": ("kind,m,n,k,flavour,time_us\ngemm,1,2,3,x,5\n", "unknown column 'flavour'"),
    "unknown kind": (CSV_HEAD + "conv,1,1,1,,,,,,bf16,3\n", "is not one of gemm"),
    "fp8": (CSV_HEAD + "gemm,64,64,64,,,,,,fp8,3\n", "16-bit kernels"),
    "time not a number": (CSV_HEAD + "gemm,64,64,64,,,,,,bf16,fast\n", "time_us should be a number"),
    "negative time": (CSV_HEAD + "gemm,64,64,64,,,,,,bf16,-1\n", "must be in (0, 1e9]"),
    "missing m": (CSV_HEAD + "gemm,,64,64,,,,,,bf16,3\n", "column 'm' is empty"),
    "causal 2": (CSV_HEAD + "attention_fwd,,,,1,8,128,64,2,bf16,3\n", "causal should be 0 or 1"),
    "short row": (CSV_HEAD + "gemm,64,64\n", "cells for 11 columns"),
    "header only": (CSV_HEAD, "a header but no rows"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_bad_microbench_csv(tmp_path, case):
    from tspsim.spec.microbench import read_microbench

    text, needle = BAD_CSV[case]
    path = tmp_path / "bench.csv"
    path.write_text("# a comment line\n" + text)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        read_microbench(str(path))
    result = CliRunner().invoke(cli, ["calibrate", "-t", "h100-dgx-1node", str(path), "-o", str(tmp_path / "f.yaml")])
    assert result.exit_code == 2 and result.stderr.splitlines()[-1].startswith("error: ")


def test_calibrate_logs_and_kernels_together(tmp_path):
    base = load_topology("h100-dgx-128node")
    csv_path = bench_csv(cp.with_values(base, GPU_TRUTH), tmp_path / "bench.csv")
    log = str(LOGS / "13-h100-1node-nvls-allreduce-128M-4G.txt")
    out = tmp_path / "both.yaml"
    result = CliRunner().invoke(cli, ["calibrate", "-t", "h100-dgx-128node", log, csv_path, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "kernel micro-benchmarks" in result.stdout and "fitted GPU parameters" in result.stdout
    data = yaml.safe_load(out.read_text())
    assert data["gpu"]["gemm_efficiency"] == pytest.approx(0.74, rel=0.02)
    assert "nvls" in data["intra"]
    assert "bench.csv" in out.read_text()


def test_calibrate_is_deterministic(tmp_path):
    log = str(LOGS / "11-h100-2node-400gIB-allreduce-default.txt")
    texts = []
    for name in ("a", "b"):
        out = tmp_path / name / "fit.yaml"
        result = CliRunner().invoke(cli, ["calibrate", "-t", "h100-dgx-128node", log, "-o", str(out), "--json"])
        assert result.exit_code == 0, result.output
        texts.append((out.read_text(), result.stdout.replace(str(out), "OUT")))
    assert texts[0] == texts[1]


def test_algo_option_applies_to_logs_that_do_not_say():
    topo = load_topology("h100-dgx-128node")
    ring = check_log(shared("11"), topo, algo="Ring")
    assert all(r.choice.startswith("ring/") for rg in ring.ranges for r in rg.rows)
    kept = check_log(shared("10"), topo, algo="Tree")  # the log says Ring: the log wins
    assert kept.hosted.nccl_algo == "Ring" and all(r.choice.startswith("ring/") for rg in kept.ranges for r in rg.rows)
    nvlstree = check_log(shared("11"), topo, algo="NVLSTree")
    assert nvlstree.hosted.algorithm == "nvls_tree" and not nvlstree.hosted.notes
    assert all(r.choice.startswith("nvls_tree/") for rg in nvlstree.ranges for r in rg.rows)
    collnet = check_log(shared("11"), topo, algo="CollNetDirect")
    assert any("CollNetDirect" in n and "not modelled" in n for n in collnet.hosted.notes)
