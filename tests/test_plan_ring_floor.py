"""The planner's ring-attention op floor (tspsim.explore.static_memory.ring_ops_floor) is a lower bound of the
graph's ops, and the op-limit verdict it gives without a probe is the one the probes give."""

from __future__ import annotations

import pytest
from tiny_models import tiny_32_heads

from tspsim.core.errors import ConfigError
from tspsim.explore import static_memory
from tspsim.explore.ring_floor import ring_ops_floor
from tspsim.explore.static_memory import count_point, graph_too_large, refused_up_front, small_graphs
from tspsim.simulate import Point, build_graph


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ring_floor") / "tiny6.yaml"
    path.write_text(tiny_32_heads(layers=6))
    return str(path)


def _ring(options: tuple[tuple[str, object], ...] = ()) -> tuple[tuple[str, object], ...]:
    return tuple(sorted({"sp_attention": "ring", **dict(options)}.items()))


def _points(model: str) -> list[Point]:
    """Ring layouts: every Σ on one node, tp+sp, ZeRO stages, recomputation, forward, batches, a folded replica."""
    out = [Point("sp", "mi300x-1node", model, seq_len=4096, batch=b, degree=d, options=_ring())
           for d in (2, 4, 8) for b in (1, 2)]
    out += [Point("tp+sp", "mi300x-1node", model, seq_len=4096, tp=2, sp=4, options=_ring((("zero", z),)))
            for z in (0, 1, 3)]
    out += [Point("sp", "mi300x-1node", model, seq_len=4096, degree=4, options=_ring((("recompute", r),)))
            for r in ("full", "selective")]
    out += [Point("sp", "mi300x-1node", model, mode="forward", seq_len=4096, degree=8, options=_ring()),
            Point("tp+sp", "mi300x-128node", model, seq_len=4096, tp=8, sp=2, gpus=32, options=_ring()),
            Point("tp+sp", "mi300x-128node", model, seq_len=4096, tp=4, sp=4, gpus=64, options=_ring((("zero", 3),))),
            Point("tp+sp", "mi300x-128node", model, seq_len=4096, tp=2, sp=8, gpus=32, options=_ring((("zero", 1),))),
            Point("sp", "mi300x-1node", model, mode="forward", seq_len=4096, degree=4, options=_ring())]
    return out


def test_the_floor_is_below_the_full_graphs_ops_and_their_extrapolation(tiny: str) -> None:
    for point in _points(tiny):
        floor = ring_ops_floor(point)
        assert floor > 0, point
        graph = build_graph(point)[0]
        assert floor <= len(graph.ops), point
        small = small_graphs(point)
        assert small is not None
        assert floor <= small.op_count()[0], point   # what the op-count probe would compare with the limit


def test_no_floor_without_a_ring(tiny: str) -> None:
    for point in (Point("sp", "mi300x-1node", tiny, seq_len=4096, degree=4, options=(("sp_attention", "ulysses"),)),
                  Point("tp", "mi300x-1node", tiny, seq_len=4096, degree=4),
                  Point("sp", "mi300x-1node", tiny, mode="decode", seq_len=4096, degree=4, decode_tokens=2,
                        options=_ring())):
        assert ring_ops_floor(point) == 0, point


@pytest.mark.parametrize("limit_factor", [0.9, 0.999])
def test_the_verdict_without_a_probe_is_the_probes(tiny: str, monkeypatch: pytest.MonkeyPatch,
                                                   limit_factor: float) -> None:
    """With the op limit just below each floor, graph_too_large says what it says when it builds the probes."""
    shortcut = 0
    for point in _points(tiny):
        monkeypatch.delenv("TSPSIM_MAX_GRAPH_OPS", raising=False)
        limit = max(1, int(ring_ops_floor(point) * limit_factor))
        monkeypatch.setenv("TSPSIM_MAX_GRAPH_OPS", str(limit))
        fast: dict[Point, object] = {}
        quick = graph_too_large(point, fast)
        with monkeypatch.context() as m:
            m.setattr(static_memory, "ring_over_limit", lambda *_a: False)
            slow: dict[Point, object] = {}
            try:
                full = graph_too_large(point, slow)
            except ConfigError as exc:   # one block alone passes the limit: the probe quotes the builder
                full = str(exc)
                assert "passed" in full and "ops" in full
                continue
        assert quick == full and quick is not None, point
        assert fast == slow, point   # the same memo: None where the probe stopped at the limit
        if refused_up_front(point) is None:   # the builder's own estimate does not refuse it: the floor decided
            assert fast[count_point(point)] is None, point
            shortcut += 1
        with pytest.raises(ConfigError, match="ops"):   # and the simulation's build would stop at the limit
            build_graph(point)
    assert shortcut >= 4
