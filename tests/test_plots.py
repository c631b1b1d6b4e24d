"""Sweep figures of inference points: axis names, log axes, one visible line per (schedule, D, batch)."""

from __future__ import annotations

from tspsim.explore.plots import metric_figure, throughput_figure, x_quantity, y_axis_type


def _entry(schedule: str, d: int, batch: int, seq: int, tpot: float, mode: str = "decode") -> dict:
    return {"status": "ok", "schedule": schedule, "degrees": {"D": d}, "seq_len": seq, "batch": batch,
            "topology": "mi300x-1node", "model": "m", "mode": mode, "step_time_s": tpot, "tokens_per_s": batch / tpot,
            "peak_memory_gb": 10.0, "hbm_gb": 192.0, "tpot_s": tpot, "ttft_s": None if mode == "decode" else 0.1,
            "decode_tokens_per_s": batch / tpot, "decode_tokens": 128}


DECODE = [_entry(s, 8, b, c, t) for s, t in (("tp", 0.002), ("tsp", 2.0)) for b in (1, 8)
          for c in (4096, 32768)]


def test_x_axis_names_what_seq_len_is():
    assert x_quantity([{"mode": "decode"}]) == "context"
    assert x_quantity([{"mode": "prefill"}, {"mode": "generate"}]) == "prompt length"
    assert x_quantity([{"mode": "train"}, {"mode": "forward"}]) == "sequence length"
    assert x_quantity([{"mode": "train"}, {"mode": "decode"}]) == "context (decode) / sequence length (train)"
    fig = metric_figure(DECODE, "tpot_s", "Time per output token", "TPOT (ms)", 1e3)
    assert fig.layout.title.text.startswith("Time per output token vs context")
    assert fig.layout.xaxis.title.text == "context (tokens cached when decoding starts)"
    gen = metric_figure([_entry("tp", 8, 1, 2048, 0.01, "generate")], "ttft_s", "Time to first token", "TTFT (ms)", 1e3)
    assert gen.layout.title.text.startswith("Time to first token vs prompt length")


def test_log_axis_when_values_span_decades():
    assert y_axis_type([0.002, 2.0]) == "log" and y_axis_type([1.0, 5.0]) == "linear" and y_axis_type([]) == "linear"
    fig = metric_figure(DECODE, "tpot_s", "Time per output token", "TPOT (ms)", 1e3)
    assert fig.layout.yaxis.type == "log" and "log scale" in fig.layout.yaxis.title.text
    tput = throughput_figure(DECODE)
    assert tput.layout.yaxis.type == "log"
    assert "generated tokens/s" in tput.layout.title.text and len(tput.layout.yaxis.title.text) < 40  # not clipped


def test_one_line_per_schedule_degree_and_batch_with_distinct_markers():
    fig = metric_figure(DECODE, "tpot_s", "Time per output token", "TPOT (ms)", 1e3)
    lines = [t for t in fig.data if not t.name.startswith("OOM")]
    assert sorted(t.name for t in lines) == ["tp D=8 · batch 1", "tp D=8 · batch 8", "tsp D=8 · batch 1",
                                             "tsp D=8 · batch 8"]
    symbols = [t.marker.symbol[0] if isinstance(t.marker.symbol, tuple) else t.marker.symbol for t in lines]
    assert len(set(symbols)) == 4  # lines that coincide (batch 1 and 8 of tsp have equal TPOT) stay visible
    dashes = {t.name: t.line.dash for t in lines}
    assert dashes["tp D=8 · batch 1"] == dashes["tsp D=8 · batch 1"] != dashes["tp D=8 · batch 8"]
