"""Shared fixtures. Keep this file small: one clearly named fixture per shared object."""

from __future__ import annotations

import pytest

from tspsim.spec.topology import Topology
from tspsim.spec.topology_file import load_topology


@pytest.fixture(scope="session")
def mi300x() -> Topology:
    """One MI300X node: 8 GPUs on an xGMI full mesh."""
    return load_topology("mi300x-1node")


@pytest.fixture(scope="session")
def mi300x_128() -> Topology:
    """128 MI300X nodes (1,024 GPUs), rails-only scale-out."""
    return load_topology("mi300x-128node")


@pytest.fixture(scope="session")
def h100() -> Topology:
    """One DGX H100: 8 GPUs on NVSwitch."""
    return load_topology("h100-dgx-1node")


@pytest.fixture(scope="session")
def h100_128() -> Topology:
    """128 DGX H100 nodes, rail-optimized fat tree."""
    return load_topology("h100-dgx-128node")


@pytest.fixture(scope="session")
def tiny5(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of a five-block, 32-head tiny model file (tiny_models.tiny_32_heads): planner probes and bounds."""
    from tiny_models import tiny_32_heads

    path = tmp_path_factory.mktemp("tiny5") / "tiny5.yaml"
    path.write_text(tiny_32_heads(layers=5))
    return str(path)


@pytest.fixture
def forks(monkeypatch: pytest.MonkeyPatch) -> list:
    """The function of every :class:`tspsim.core.forked.ForkedCall` made while the test runs (they still fork)."""
    import tspsim.core.forked as forked

    made: list = []
    real = forked.ForkedCall

    class Counting(real):   # type: ignore[misc,valid-type]
        def __init__(self, fn):  # noqa: ANN001
            made.append(fn)
            super().__init__(fn)

    monkeypatch.setattr(forked, "ForkedCall", Counting)
    return made


# ---------------------------------------------------------------------------- schedule-validation fixtures
@pytest.fixture(scope="session")
def mi300x_4node_yaml(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of a 4-node (32-GPU) MI300X topology YAML inheriting the 128-node preset."""
    path = tmp_path_factory.mktemp("topologies") / "mi300x-4node.yaml"
    path.write_text("name: mi300x-4node\ninherit: mi300x-128node\nnodes: 4\n")
    return str(path)


@pytest.fixture(scope="session")
def model_yaml(tmp_path_factory: pytest.TempPathFactory):
    """Factory: ``model_yaml(name, **fields)`` writes a model YAML (small SwiGLU defaults) and returns its path."""
    root = tmp_path_factory.mktemp("models")
    defaults = {"hidden": 1024, "layers": 2, "q_heads": 16, "kv_heads": 16, "head_dim": 64, "ffn_hidden": 4096,
                "gated_mlp": True, "vocab": 2048}

    def make(name: str, **fields: object) -> str:
        import yaml

        data = {"name": name, **defaults, **fields}
        path = root / f"{name}.yaml"
        text = yaml.safe_dump(data, sort_keys=False)
        if path.exists() and path.read_text() != text:
            raise ValueError(f"model_yaml: {name!r} already written with different fields")
        path.write_text(text)
        return str(path)

    return make


@pytest.fixture(scope="session")
def tp_run():
    """TP D=8 on one MI300X node, 4k tokens, with link series (shared by viewer and export tests)."""
    from tspsim.simulate import Point, simulate

    r = simulate(Point("tp", "mi300x-1node", seq_len=4096), record_links=True)
    return r.entry, r.timeline


@pytest.fixture(scope="session")
def tpsp_run():
    """TP inside a node × SP over two nodes of the 1,024-GPU cluster (folded: one replica of 16 ranks)."""
    from tspsim.simulate import Point, simulate

    r = simulate(Point("tp+sp", "mi300x-128node", seq_len=4096, tp=8, sp=2), record_links=True)
    return r.entry, r.timeline


@pytest.fixture(scope="session")
def validate_json() -> tuple[object, list]:
    """``tspsim validate --json`` run once for the session (~30 s): (the CliRunner result, the rows it computed).

    The golden test compares its stdout and ``tests/test_validate.py`` checks it and renders the text report from
    the same rows.
    """
    from click.testing import CliRunner

    import tspsim.explore.validation as v
    from tspsim.cli import cli

    computed: list = []
    real = v.validation_rows

    def record(jobs: int | None = None) -> list:
        computed.extend(real(jobs))
        return list(computed)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(v, "validation_rows", record)
        result = CliRunner().invoke(cli, ["validate", "--json"], catch_exceptions=False)
    return result, computed
