"""Pipeline parallelism (issue 14): the bubble, memory per stage, transfers, the layout and its errors.

The exact bubble checks run the real pipeline driver (:mod:`tspsim.schedules.pipeline`) and engine with a
synthetic program whose passes are one memory-bound kernel each (t_f, t_b: dyadic seconds, so sums are exact)
on a topology without latencies or launch overheads: "uniform stages and no communication". The real-model
checks use the standard block.
"""

from __future__ import annotations

from typing import Any

import pytest

from tspsim.core.errors import ConfigError
from tspsim.engine.sim import replay
from tspsim.schedules.context import BuildContext
from tspsim.schedules.pipeline import run_step
from tspsim.schedules.pipeline_order import in_flight_peak, pass_order
from tspsim.simulate import Point, simulate
from tspsim.spec.assumptions import Assumptions
from tspsim.spec.layout import make_layout
from tspsim.spec.model import load_model
from tspsim.spec.pipeline_spec import PipelineSpec, parse_layer_split
from tspsim.spec.topology_file import load_topology
from tspsim.spec.workload import Workload

TF, TB = 2.0 ** -10, 2.0 ** -9      # forward and backward time of one stage per micro-batch, s (dyadic)
HBM_BPS = 1e12                      # the quiet topology's HBM: 1 TB/s at efficiency 1 → bytes = seconds · 1e12
ACT = 1 << 20                       # activation bytes a forward pass of one chunk keeps for its backward


@pytest.fixture(scope="module")
def quiet_topo(tmp_path_factory) -> str:
    """One 8-GPU node with no latency, launch overhead or compute slowdown anywhere (compute = bytes / 1 TB/s)."""
    path = tmp_path_factory.mktemp("pipe") / "quiet.yaml"
    path.write_text("name: quiet\ninherit: dgx-a100-1node\ngpu:\n  kernel_launch_us: 0\n  hbm_TBps: 1\n"
                    "  hbm_efficiency: 1.0\n  runtime_reserve_GB: 0\nintra:\n  hop_latency_us: 0\n"
                    "  direct_alpha_us: 0\n  ring_base_us: 0\n  ring_step_us: 0\n  compute_slowdown: 0\n")
    return str(path)


@pytest.fixture(scope="module")
def deep_model(model_yaml) -> str:
    """24 small blocks (divisible by 2, 3, 4, 6, 8, 12 stages)."""
    return model_yaml("pipe-deep", hidden=512, layers=24, q_heads=8, kv_heads=8, head_dim=64, ffn_hidden=2048,
                      vocab=1024)


class Uniform:
    """A program whose chunk passes are one kernel of t_f/V or t_b/V with an activation of ACT/V in between."""

    name = "uniform"

    def __init__(self, ctx: BuildContext) -> None:
        self.ctx = ctx
        self.v = ctx.layout.virtual_stages

    def local_params(self, rank: int) -> float:
        return 0.0

    def set_micro_batch(self, mb: int, tagged: bool) -> None:
        self.mb = mb

    def forward(self, stage: int, chunk: int) -> None:
        c = self.ctx
        for r in c.ranks:
            c.elementwise(r, "F", TF / self.v * HBM_BPS, phase="fwd", after=[c.last[r]],
                          mem=[("end", "activations", ACT // self.v)])

    def backward(self, stage: int, chunk: int) -> None:
        c = self.ctx
        for r in c.ranks:
            c.elementwise(r, "B", TB / self.v * HBM_BPS, phase="bwd", after=[c.last[r]],
                          mem=[("end", "activations", -(ACT // self.v))])

    def boundary(self) -> tuple[float, bool]:
        return 0.0, False

    def tp_group(self, rank: int) -> tuple[int, ...]:
        return (rank,)

    def word_embedding_grads(self) -> float:
        return 0.0

    def meta(self) -> dict[str, Any]:
        return {}


def _uniform(topo_path: str, model_path: str, P: int, m: int, schedule: str = "", V: int = 1,
             mode: str = "train"):
    topo, model = load_topology(topo_path), load_model(model_path)
    workload = Workload(mode, 1024, 1)
    opts = Assumptions.from_overrides({})
    layout = make_layout("tp", topo, model, workload, degree=1, gpus=P, opts=opts,
                         pipeline=PipelineSpec(stages=P, virtual_stages=V, schedule=schedule, global_batch=m))
    ctx = BuildContext(model, topo, layout, workload, opts, fold=False)
    graph = run_step(ctx, Uniform(ctx))
    return replay(graph, topo)


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
@pytest.mark.parametrize(("P", "m"), [(2, 1), (2, 4), (4, 4), (4, 8), (8, 3), (8, 16)])
def test_flush_schedule_step_is_m_plus_p_minus_1_slots(quiet_topo, deep_model, schedule, P, m):
    tl = _uniform(quiet_topo, deep_model, P, m, schedule)
    assert tl.end_s == (m + P - 1) * (TF + TB)          # exact: Narayanan et al. 2021 §2.2


@pytest.mark.parametrize(("P", "m", "V"), [(2, 4, 2), (4, 8, 2), (4, 8, 3), (2, 6, 3), (4, 16, 2)])
def test_interleaving_shrinks_the_bubble_by_v(quiet_topo, deep_model, P, m, V):
    tl = _uniform(quiet_topo, deep_model, P, m, V=V)
    assert tl.end_s == pytest.approx(m * (TF + TB) + (P - 1) * (TF + TB) / V, rel=1e-12)
    assert tl.end_s < _uniform(quiet_topo, deep_model, P, m).end_s


def test_gpipe_and_1f1b_same_time_different_memory(quiet_topo, deep_model):
    P, m = 4, 8
    gpipe, one = _uniform(quiet_topo, deep_model, P, m, "gpipe"), _uniform(quiet_topo, deep_model, P, m, "1f1b")
    assert gpipe.end_s == one.end_s
    for stage in range(P):      # GPipe holds all m micro-batches; 1F1B stage s at most P − s
        assert gpipe.peak_memory(stage)[0] == m * ACT
        assert one.peak_memory(stage)[0] == (P - stage) * ACT


@pytest.mark.parametrize(("P", "m", "V"), [(2, 4, 2), (4, 8, 2), (4, 8, 3)])
def test_interleaved_memory_follows_its_order(quiet_topo, deep_model, P, m, V):
    tl = _uniform(quiet_topo, deep_model, P, m, V=V)
    for stage in range(P):
        chunks = in_flight_peak(pass_order("interleaved", P, stage, m, V))
        assert tl.peak_memory(stage)[0] == chunks * (ACT // V)


def test_forward_only_pipeline_takes_m_plus_p_minus_1_forwards(quiet_topo, deep_model):
    tl = _uniform(quiet_topo, deep_model, 4, 6, mode="forward")
    assert tl.end_s == (6 + 4 - 1) * TF


# ------------------------------------------------------------------------------------------ real model
def _run(model: str, topo: str = "h100-dgx-1node", schedule: str = "tp", **kw: Any) -> dict:
    pipe = kw.pop("pipeline")
    return simulate(Point(schedule, topo, model=model, seq_len=kw.pop("seq", 2048), pipeline=pipe, **kw)).entry


def test_real_model_gpipe_vs_1f1b(deep_model):
    P, m = 4, 8
    one = _run(deep_model, degree=2, gpus=8, pipeline=PipelineSpec(stages=P, global_batch=m))
    gpipe = _run(deep_model, degree=2, gpus=8, pipeline=PipelineSpec(stages=P, global_batch=m, schedule="gpipe"))
    assert gpipe["step_time_s"] == pytest.approx(one["step_time_s"], rel=0.02)
    act = [s["peak_memory_gb"] for s in one["pipeline"]["per_stage"]]
    act_g = [s["peak_memory_gb"] for s in gpipe["pipeline"]["per_stage"]]
    assert all(g > o for g, o in zip(act_g, act))
    assert act[1] > act[2]            # middle stages: P − s micro-batches in flight, fewer down the pipe


def test_pipeline_keys_and_degrees(deep_model):
    e = _run(deep_model, degree=2, gpus=8, batch=2, pipeline=PipelineSpec(stages=2, virtual_stages=2, global_batch=8))
    assert e["degrees"] == {"D": 2, "PP": 2, "V": 2, "DP": 2}
    assert e["micro_batches"] == 2 and e["global_batch"] == 8 and e["batch"] == 2
    pipe = e["pipeline"]
    assert pipe["schedule"] == "interleaved" and pipe["stages"] == 2 and pipe["virtual_stages"] == 2
    assert [s["layers"] for s in pipe["per_stage"]] == [12, 12]
    assert 0 < e["bubble_pct"] == pipe["bubble_pct"] < 100
    assert e["tokens_per_s"] == pytest.approx(8 * 2048 / e["step_time_s"])
    for s in pipe["per_stage"]:
        assert s["busy_s"] + s["idle_s"] == pytest.approx(pipe["window_s"])


def test_no_pipeline_entry_has_null_bubble(deep_model):
    e = _run(deep_model, degree=8, pipeline=PipelineSpec())
    assert e["pipeline"] is None and e["bubble_pct"] is None
    assert e["micro_batches"] == 1 and e["global_batch"] == 1


def test_pipeline_transfer_bytes_are_the_activation_slices(deep_model):
    """Every stage boundary moves each micro-batch's activation forward and its gradient back: per rank
    (B·S·h·s)/T with scatter/gather over T, so the mean over P stages is m · 2(P − 1)/P · B·S·h·s/T."""
    P, m, T, S = 4, 6, 2, 2048
    e = _run(deep_model, degree=T, gpus=8, seq=S, pipeline=PipelineSpec(stages=P, global_batch=m))
    per = m * 2 * (P - 1) / P * S * 512 * 2 / T
    assert e["comm_bytes_per_rank"]["send"] == pytest.approx(per, rel=1e-12)
    whole = _run(deep_model, degree=T, gpus=8, seq=S, options=(("pp_scatter_gather", False),),
                 pipeline=PipelineSpec(stages=P, global_batch=m))
    assert whole["comm_bytes_per_rank"]["send"] == pytest.approx(per * T, rel=1e-12)


def test_sequence_sharded_boundary_is_not_gathered(deep_model):
    """satp-seq's residual is already split over T: each rank sends its shard and nothing is gathered."""
    P, m, T, S = 2, 4, 4, 2048
    e = _run(deep_model, schedule="satp-seq", degree=T, gpus=8, seq=S, pipeline=PipelineSpec(stages=P, global_batch=m))
    assert e["comm_bytes_per_rank"]["send"] == pytest.approx(m * 2 * (P - 1) / P * S * 512 * 2 / T, rel=1e-12)


@pytest.mark.parametrize("overlap", [True, False])
def test_receive_posting_and_blocking_sends(deep_model, overlap):
    """Overlapped: a receive is posted when the pass before starts and no pass waits for a send. Blocking
    (Megatron-LM 2022): posted when the pass before ends, and every pass begins after the previous pass's sends."""
    res = simulate(Point("tp", "h100-dgx-1node", model=deep_model, seq_len=1024, degree=2, gpus=8,
                         options=(("pp_overlap_p2p", overlap),), pipeline=PipelineSpec(stages=4, global_batch=8)))
    ops = res.timeline.ops
    begins = [op for op in ops if op.name.endswith(".begin")]
    waits_on_send = [op for op in begins if any(ops[d].kind == "send" for d in op.deps)]
    assert bool(waits_on_send) is (not overlap)
    for op in ops:
        if op.kind == "recv" and op.deps:
            posted = ops[op.deps[-1]]
            assert posted.rank == op.rank and posted.stream == "compute"
            assert posted.name.endswith(".begin") is overlap


def test_uneven_layer_split(deep_model):
    e = _run(deep_model, degree=2, gpus=8, pipeline=PipelineSpec(stages=4, global_batch=4, layers=(4, 7, 7, 6)))
    assert [s["layers"] for s in e["pipeline"]["per_stage"]] == [4, 7, 7, 6]
    assert e["pipeline"]["per_stage"][1]["forward_s"] > e["pipeline"]["per_stage"][0]["forward_s"]


def test_tied_embedding_gradient_is_all_reduced_between_first_and_last_stage(model_yaml):
    tied = model_yaml("pipe-tied", hidden=512, layers=8, q_heads=8, kv_heads=8, head_dim=64, ffn_hidden=2048,
                      vocab=1024, tied_embeddings=True)
    res = simulate(Point("tp", "h100-dgx-1node", model=tied, seq_len=1024, degree=2, gpus=8,
                         pipeline=PipelineSpec(stages=4, global_batch=4)))
    ops = [op for op in res.timeline.ops if op.name == "pp.embedding_grad_all_reduce"]
    assert ops and all(len(op.group) == 2 and op.nbytes == 1024 * 512 / 2 * 4 for op in ops)
    stages = {res.layout.stage_of(r) for op in ops for r in op.group}
    assert stages == {0, 3}


# ------------------------------------------------------------------------------------------ layout and errors
def test_placement_orders(deep_model):
    topo, model = load_topology("h100-dgx-128node"), load_model(deep_model)
    w = Workload("train", 2048, 1)
    outer = make_layout("tp", topo, model, w, degree=8, gpus=64, pipeline=PipelineSpec(stages=4))
    assert outer.stage_ranks(1, 0) == tuple(range(16, 24))          # stage 1 after both replicas of stage 0
    assert outer.dp_group(3) == (3, 11)
    inner = make_layout("tp", topo, model, w, degree=8, gpus=64, pipeline=PipelineSpec(stages=4, placement="mp-pp-dp"))
    assert inner.stage_ranks(1, 0) == tuple(range(8, 16))
    assert inner.dp_group(3) == (3, 35)
    for lay in (outer, inner):
        for r in range(64):
            assert lay.rank_of(*lay.coords(r)) == r


@pytest.mark.parametrize(("kw", "words"), [
    ({"pipeline": PipelineSpec(stages=5), "gpus": 5}, "do not split evenly"),
    ({"pipeline": PipelineSpec(stages=2, virtual_stages=2, global_batch=3)}, "multiple of"),
    ({"pipeline": PipelineSpec(stages=2, global_batch=3), "gpus": 8, "degree": 2}, "not a whole number of micro"),
    ({"pipeline": PipelineSpec(stages=16), "degree": 8}, "needs 128 GPUs"),
    ({"pipeline": PipelineSpec(stages=2, layers=(10, 10))}, "adds up to 20"),
    ({"pipeline": PipelineSpec(stages=2, layers=(12,))}, "gives 1 numbers"),
    ({"pipeline": PipelineSpec(stages=2, virtual_stages=2, schedule="1f1b")}, "interleaved schedule"),
    ({"pipeline": PipelineSpec(virtual_stages=2)}, "need a pipeline"),
    ({"pipeline": PipelineSpec(stages=2, schedule="interleaved")}, "--virtual-stages V ≥ 2"),
    ({"pipeline": PipelineSpec(stages=1, virtual_stages=1, schedule="gpipe")}, "need a pipeline"),
    ({"pipeline": PipelineSpec(stages=2, placement="pp-mp-dp")}, "--layout"),
    ({"pipeline": PipelineSpec(stages=2), "mode": "decode"}, "--pp applies to --mode train and forward"),
])
def test_bad_pipelines_are_one_line(deep_model, kw, words):
    topo, model = load_topology("h100-dgx-1node"), load_model(deep_model)
    w = Workload(kw.pop("mode", "train"), 2048, 1)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")) as exc:
        make_layout("tp", topo, model, w, degree=kw.pop("degree", 1), gpus=kw.pop("gpus", 8), **kw)
    assert "\n" not in str(exc.value)


def test_layer_split_parser():
    assert parse_layer_split("3, 4,4,3") == (3, 4, 4, 3)
    assert parse_layer_split("") == ()
    for bad in ("3,x", "0,4", "-1", "3,,4"):
        with pytest.raises(ConfigError, match="--pp-layers"):
            parse_layer_split(bad)


def test_tsp_x_pp_x_dp_on_128_nodes_is_the_sum_of_its_parts(model_yaml):
    """TSP × PP × DP on 1,024 MI300X (D = 8 inside a node, PP = 2, DP = 64, m = 4 micro-batches per replica)
    simulates, and its bytes per rank, by kind, are its parts' formulas, exactly:

    * TSP's own collectives and ring sends: one micro-batch of TSP alone on a node (all L blocks) × m / P (each
      stage runs L/P blocks of every micro-batch);
    * the pipeline's p2p sends: m · 2(P − 1)/P · (S/D)·h·s (TSP's boundary is already sequence-sharded);
    * the data-parallel gradient all-reduce, ring over DP: 2(DP − 1)/DP · local parameters · grad_bytes, the
      local parameters of a rank being TSP's 1/D of every weight plus the replicated norms, its stage's half.
    """
    tiny = model_yaml("tiny4-compose", hidden=512, layers=4, q_heads=32, kv_heads=32, head_dim=16, ffn_hidden=2048,
                      vocab=1000)
    S, D, P, DP, m, h, s = 4096, 8, 2, 64, 4, 512, 2
    alone = simulate(Point("tsp", "mi300x-128node", model=tiny, seq_len=S, degree=D, gpus=D)).entry
    both = simulate(Point("tsp", "mi300x-128node", model=tiny, seq_len=S, degree=D, gpus=D * P * DP,
                          pipeline=PipelineSpec(stages=P, global_batch=m * DP))).entry
    assert both["degrees"] == {"D": D, "PP": P, "DP": DP} and both["micro_batches"] == m
    got, tsp = both["comm_bytes_per_rank"], alone["comm_bytes_per_rank"]
    assert set(got) == set(tsp) | {"all_reduce"} and "all_reduce" not in tsp
    for kind in ("all_gather", "broadcast", "reduce", "reduce_scatter"):
        assert got[kind] == pytest.approx(tsp[kind] * m / P, rel=1e-12), kind
    assert got["send"] == pytest.approx(tsp["send"] * m / P + m * 2 * (P - 1) / P * (S // D) * h * s, rel=1e-12)
    norms = 4 * 2 * h + h                                            # two per block and the final one, replicated
    weights = 2 * 1000 * h + 4 * (4 * h * h + 3 * h * 2048)          # embedding, head, attention and gated MLP
    local = (weights / D + norms) / P                                # mean over the two stages' ranks
    assert got["all_reduce"] == pytest.approx(2 * (DP - 1) / DP * local * 4, rel=1e-12)


@pytest.mark.parametrize(("name", "h", "layers", "heads", "billions"),
                         [("gpt3-175b", 12288, 96, 96, 174.6), ("megatron-1t", 25600, 128, 160, 1008.0)])
def test_table5_model_presets_are_megatron_gpts(name, h, layers, heads, billions):
    """GPT-3 175B and the 1T model as Megatron-LM runs them (Korthikanti et al. 2022 Table 5; Narayanan et al. 2021
    Table 1): GeLU MLP 4h, vocabulary 51200, tied embeddings, biases, learned positions. Their parameters are
    Narayanan et al.'s P = 12·l·h²·(1 + 13/(12h) + (V + s)/(12·l·h)), plus the final LayerNorm (2h) the formula
    leaves out; to one decimal, the paper's Table 1 (174.6 B; 1008.0 B)."""
    m = load_model(name)
    assert (m.hidden, m.layers, m.q_heads, m.kv_heads, m.head_dim * m.q_heads) == (h, layers, heads, heads, h)
    assert (m.ffn_hidden, m.gated_mlp, m.vocab, m.tied_embeddings, m.biases, m.position_embeddings) == \
        (4 * h, False, 51200, True, True, 2048)
    V, s = 51200, 2048
    assert m.total_params == 12 * layers * h * h + 13 * layers * h + (V + s) * h + 2 * h
    assert round(m.total_params / 1e9, 1) == billions
