from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tspsim.core.errors import ConfigError
from tspsim.spec.topology_file import load_topology, preset_names

PRESETS = sorted([
    "mi300x-1node", "mi300x-128node", "mi355x-1node", "mi355x-128node", "h100-dgx-1node",
    "h100-dgx-128node", "h200-dgx-128node", "b200-dgx-1node", "dgx-a100-1node",
    "dgx-a100-128node",
])
REPO_TOPOLOGIES = Path(__file__).resolve().parent.parent / "topologies"


# --------------------------------------------------------------------------------------- presets
def test_preset_names_are_the_ten_presets():
    assert preset_names() == PRESETS
    assert sorted(p.stem for p in REPO_TOPOLOGIES.glob("*.yaml")) == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads(name):
    topo = load_topology(name)
    assert topo.name == name
    assert topo.description
    assert topo.gpus_per_node == 8
    expected_nodes = 128 if name.endswith("128node") else 1
    assert topo.nodes == expected_nodes
    assert topo.world_size == 8 * expected_nodes
    assert (topo.inter is None) == (expected_nodes == 1)
    assert len(topo.source_sha256) == 64
    assert all(link.capacity_Bps > 0 for link in topo.links)
    assert [link.index for link in topo.links] == list(range(len(topo.links)))


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_by_path_identically(name):
    by_path = load_topology(str(REPO_TOPOLOGIES / f"{name}.yaml"))
    assert by_path == load_topology(name)
    assert by_path.source_sha256 == load_topology(name).source_sha256


def test_inheritance_overrides_only_what_it_names():
    base = load_topology("mi300x-1node")
    child = load_topology("mi355x-1node")
    assert child.intra.link_GBps == 76.5
    assert child.intra.kind == "full_mesh"
    assert child.intra.ring_step_us == base.intra.ring_step_us
    assert child.gpu.runtime_reserve_GB == base.gpu.runtime_reserve_GB
    assert child.gpu.name == "mi355x"


# --------------------------------------------------------------------------------------- links
def test_mi300x_1node_has_56_directed_xgmi_links(mi300x):
    assert len(mi300x.links) == 56
    assert all(link.kind == "xgmi" for link in mi300x.links)
    pairs = {(link.src, link.dst) for link in mi300x.links}
    assert pairs == {(f"g{a}", f"g{b}") for a in range(8) for b in range(8) if a != b}
    # 64 GB/s per direction x 0.75 link efficiency (hardware.md: ~48 GB/s measured per pair)
    assert all(link.capacity_Bps == pytest.approx(48e9, rel=1e-12) for link in mi300x.links)
    assert mi300x.graph.number_of_nodes() == 8
    assert mi300x.graph.number_of_edges() == 56


def test_switch_node_has_one_port_pair_per_gpu(h100):
    # 8 up- and 8 down-ports, plus the switch's NVLS reduction engine (intra.nvls)
    assert len(h100.links) == 17
    kinds = sorted(link.kind for link in h100.links)
    assert kinds == ["nvlink_down"] * 8 + ["nvlink_up"] * 8 + ["nvls"]
    assert h100.graph.number_of_nodes() == 10  # 8 GPUs + the switch + its NVLS engine


def test_link_counts_of_clusters(mi300x_128, h100_128):
    # 128 nodes x 56 xGMI + 1024 GPUs x (2 PCIe + NIC up + NIC down)
    assert len(mi300x_128.links) == 128 * 56 + 1024 * 4
    # 128 nodes x 16 NVLink ports + 1024 x 4 + 8 rails x 4 leaf groups x (up + down) + 128 NVLS engines
    assert len(h100_128.links) == 128 * 16 + 1024 * 4 + 8 * 4 * 2 + 128
    spine = [link for link in h100_128.links if link.kind == "spine_up"]
    # 32 nodes per leaf x 50 GB/s x 0.92, non-blocking
    assert all(link.capacity_Bps == pytest.approx(32 * 50e9 * 0.92, rel=1e-12) for link in spine)


# --------------------------------------------------------------------------------------- routes
def _names(topo, route):
    return [(topo.links[i].src, topo.links[i].dst) for i in route]


def test_same_node_mesh_route_is_one_link(mi300x, mi300x_128):
    for topo in (mi300x, mi300x_128):
        for a in range(8):
            for b in range(8):
                if a != b:
                    assert _names(topo, topo.route(a, b)) == [(f"g{a}", f"g{b}")]
    assert _names(mi300x_128, mi300x_128.route(1021, 1018)) == [("g1021", "g1018")]


def test_route_to_self_is_empty(mi300x, h100_128):
    assert mi300x.route(3, 3) == ()
    assert h100_128.route(700, 700) == ()


def test_switch_route_is_two_links(h100, h100_128):
    assert _names(h100, h100.route(0, 5)) == [("g0", "nvsw0"), ("nvsw0", "g5")]
    assert _names(h100_128, h100_128.route(9, 14)) == [("g9", "nvsw1"), ("nvsw1", "g14")]


def test_rails_only_same_rail_route(mi300x_128):
    assert _names(mi300x_128, mi300x_128.route(3, 11)) == [
        ("g3", "nic3"), ("nic3", "rail3"), ("rail3", "nic11"), ("nic11", "g11")]
    kinds = [mi300x_128.links[i].kind for i in mi300x_128.route(3, 1019)]
    assert kinds == ["pcie", "nic_up", "nic_down", "pcie"]


def test_rails_only_cross_rail_goes_over_xgmi_first(mi300x_128):
    # PXN: GPU 0 forwards to GPU 1 (the destination's rail on the source node), then rail 1.
    assert _names(mi300x_128, mi300x_128.route(0, 9)) == [
        ("g0", "g1"), ("g1", "nic1"), ("nic1", "rail1"), ("rail1", "nic9"), ("nic9", "g9")]
    assert [mi300x_128.links[i].kind for i in mi300x_128.route(17, 1022)] == [
        "xgmi", "pcie", "nic_up", "nic_down", "pcie"]


def test_fat_tree_same_leaf_stays_on_leaf(h100_128):
    # Nodes 0 and 31 share the leaf of scalable unit 0.
    assert _names(h100_128, h100_128.route(2, 31 * 8 + 2)) == [
        ("g2", "nic2"), ("nic2", "leaf2.0"), ("leaf2.0", "nic250"), ("nic250", "g250")]


def test_fat_tree_cross_leaf_uses_spine(h100_128):
    dst = 32 * 8 + 2  # node 32 = scalable unit 1, rail 2
    assert _names(h100_128, h100_128.route(2, dst)) == [
        ("g2", "nic2"), ("nic2", "leaf2.0"), ("leaf2.0", "spine"), ("spine", "leaf2.1"),
        ("leaf2.1", f"nic{dst}"), (f"nic{dst}", f"g{dst}")]


def test_fat_tree_cross_rail_forwards_over_nvswitch(h100_128):
    route = _names(h100_128, h100_128.route(0, 1023))
    assert route[:2] == [("g0", "nvsw0"), ("nvsw0", "g7")]
    assert route[2:] == [("g7", "nic7"), ("nic7", "leaf7.0"), ("leaf7.0", "spine"), ("spine", "leaf7.3"),
                         ("leaf7.3", "nic1023"), ("nic1023", "g1023")]


def _assert_connected_path(topo, src, dst):
    route = topo.route(src, dst)
    if src == dst:
        assert route == ()
        return
    assert route, "a route between distinct GPUs has links"
    g = topo.graph
    names = _names(topo, route)
    assert names[0][0] == f"g{src}"
    assert names[-1][1] == f"g{dst}"
    for (_, a_dst), (b_src, _) in zip(names, names[1:]):
        assert a_dst == b_src
    for i, (u, v) in zip(route, names):
        assert g.has_edge(u, v)
        assert g.edges[u, v]["link"] == i
    visited = [names[0][0]] + [v for _, v in names]
    assert len(visited) == len(set(visited)), f"route {src}->{dst} revisits a device: {visited}"
    # only GPUs at the two ends or as a PXN relay in the source node
    for dev in visited[1:-1]:
        if g.nodes[dev]["kind"] == "gpu":
            assert g.nodes[dev]["node"] == topo.node_of(src)


@pytest.mark.parametrize("name", ["mi300x-1node", "h100-dgx-1node"])
def test_every_single_node_route_is_a_path(name):
    topo = load_topology(name)
    for a in range(8):
        for b in range(8):
            _assert_connected_path(topo, a, b)


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(["mi300x-128node", "h100-dgx-128node"]), src=st.integers(0, 1023),
       dst=st.integers(0, 1023))
def test_every_cluster_route_is_a_path(name, src, dst):
    _assert_connected_path(load_topology_cached(name), src, dst)


_CACHE = {}


def load_topology_cached(name):
    if name not in _CACHE:
        _CACHE[name] = load_topology(name)
    return _CACHE[name]


# --------------------------------------------------------------------------------------- folding
def _rank_of(name):
    for prefix in ("nic", "g"):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            return int(name[len(prefix):])
    return None


@pytest.mark.parametrize(("name", "replica_nodes"), [
    ("mi300x-128node", 1), ("mi300x-128node", 2), ("mi300x-128node", 16),
    ("h100-dgx-128node", 2), ("h100-dgx-128node", 32)])
def test_fold_link_maps_node_n_to_n_mod_replica(name, replica_nodes):
    topo = load_topology_cached(name)
    for link in topo.links:
        twin = topo.links[topo.fold_link(link.index, replica_nodes)]
        assert twin.node == link.node % replica_nodes
        assert twin.kind == link.kind
        assert twin.capacity_Bps == link.capacity_Bps
        shift = (link.node - twin.node) * topo.gpus_per_node
        for a, b in ((link.src, twin.src), (link.dst, twin.dst)):
            ra = _rank_of(a)
            if ra is not None:
                assert _rank_of(b) == ra - shift
                assert b.rstrip("0123456789") == a.rstrip("0123456789")
        if link.node < replica_nodes:
            assert twin.index == link.index


def test_fold_link_examples(mi300x_128):
    i = mi300x_128.link_between("g40", "g41")  # node 5
    assert mi300x_128.links[mi300x_128.fold_link(i, 2)].src == "g8"
    assert mi300x_128.links[mi300x_128.fold_link(i, 2)].dst == "g9"
    j = mi300x_128.link_between("nic1023", "rail7")  # node 127
    twin = mi300x_128.links[mi300x_128.fold_link(j, 4)]
    assert (twin.src, twin.dst) == ("nic31", "rail7")


# --------------------------------------------------------------------------------------- strict loader
def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _full_mapping():
    raw = dict(load_topology("mi300x-128node").resolved)
    raw.pop("inherit", None)
    return raw


def test_inherit_from_preset_with_override(tmp_path):
    path = _write(tmp_path, "mine.yaml", "inherit: mi300x-1node\nname: mine\nintra:\n  link_GBps: 32\n")
    topo = load_topology(path)
    assert topo.name == "mine"
    assert topo.intra.link_GBps == 32
    assert topo.links[0].capacity_Bps == pytest.approx(32e9 * 0.75)


def test_full_file_round_trip(tmp_path):
    path = _write(tmp_path, "full.yaml", yaml.safe_dump(_full_mapping()))
    topo = load_topology(path)
    assert topo.world_size == 1024
    assert topo.inter.topology == "rails_only"


def test_inherit_relative_to_file(tmp_path):
    _write(tmp_path, "parent.yaml", "inherit: mi300x-1node\nname: parent\nintra:\n  link_GBps: 40\n")
    child = _write(tmp_path, "child.yaml", "inherit: parent.yaml\nname: child\n")
    topo = load_topology(child)
    assert (topo.name, topo.intra.link_GBps) == ("child", 40)


BAD_OVERRIDES = [
    ("intra:\n  bogus_key: 1\n", ["intra", "unknown key 'bogus_key'"]),
    ("frobnicate: 3\n", ["unknown key 'frobnicate'"]),
    ("gpu:\n  peak_bf16_tflops: 1\n", ["gpu", "unknown key 'peak_bf16_tflops'"]),
    ("intra:\n  link_GBps: 0\n", ["intra.link_GBps", "positive"]),
    ("intra:\n  link_GBps: -64\n", ["intra.link_GBps", "positive"]),
    ("gpu:\n  hbm_TBps: 0\n", ["gpu.hbm_TBps", "positive"]),
    ("intra:\n  link_efficiency: 1.5\n", ["intra.link_efficiency", "[0.01, 1]"]),
    ("intra:\n  link_efficiency: 0\n", ["intra.link_efficiency", "[0.01, 1]"]),
    ("gpu:\n  gemm_efficiency: -0.1\n", ["gpu.gemm_efficiency", "[0.01, 1]"]),
    ("intra:\n  collective_efficiency: 1.0000001\n", ["intra.collective_efficiency", "[0.01, 1]"]),
    ("intra:\n  kind: torus\n", ["intra.kind", "full_mesh", "switch"]),
    ("intra:\n  link_GBps: fast\n", ["intra.link_GBps", "number"]),
    ("intra:\n  link_GBps: true\n", ["intra.link_GBps", "number"]),
    ("intra:\n  hop_latency_us: -1\n", ["intra.hop_latency_us", "≥ 0"]),
    ("nodes: 2.5\n", ["nodes", "whole number"]),
    ("nodes: 0\n", ["nodes", "≥ 1"]),
    ("nodes: 2\n", ["inter"]),
    ("gpu: 7\n", ["gpu", "mapping"]),
    ("name: 5\n", ["name", "text"]),
    ("inherit: [a, b]\n", ["inherit"]),
]


@pytest.mark.parametrize(("override", "needles"), BAD_OVERRIDES)
def test_bad_override_raises_config_error_naming_key(tmp_path, override, needles):
    path = _write(tmp_path, "bad.yaml", "inherit: mi300x-1node\n" + override)
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(tmp_path) in msg or "bad.yaml" in msg
    for needle in needles:
        assert needle in msg


@pytest.mark.parametrize(("section", "key"), [
    (None, "gpus_per_node"), (None, "name"), ("gpu", "hbm_GB"), ("intra", "link_efficiency"),
    ("inter", "nic_GBps")])
def test_missing_key(tmp_path, section, key):
    raw = _full_mapping()
    (raw if section is None else raw[section]).pop(key)
    path = _write(tmp_path, "missing.yaml", yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    msg = str(info.value)
    assert f"missing key {key!r}" in msg
    if section:
        assert f".{section}:" in msg


def test_unknown_key_in_full_file(tmp_path):
    raw = _full_mapping()
    raw["inter"]["nic_gbps"] = 50
    path = _write(tmp_path, "typo.yaml", yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"\.inter: unknown key 'nic_gbps'"):
        load_topology(path)


@pytest.mark.parametrize("text", ["name: [unclosed\n", "a: b: c\n", "key: 'open\n", "\tname: x\n"])
def test_malformed_yaml(tmp_path, text):
    path = _write(tmp_path, "broken.yaml", text)
    with pytest.raises(ConfigError, match="malformed YAML") as info:
        load_topology(path)
    assert "broken.yaml" in str(info.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", ""])
def test_non_mapping_yaml(tmp_path, text):
    path = _write(tmp_path, "list.yaml", text)
    with pytest.raises(ConfigError, match="mapping"):
        load_topology(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_topology(str(tmp_path / "nope.yaml"))


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError) as info:
        load_topology("mi999x-1node")
    msg = str(info.value)
    assert "mi999x-1node" in msg
    assert "mi300x-1node" in msg


def test_inherit_unknown_parent(tmp_path):
    path = _write(tmp_path, "orphan.yaml", "inherit: no-such-preset\n")
    with pytest.raises(ConfigError, match="no-such-preset"):
        load_topology(path)


def test_inherit_loop(tmp_path):
    _write(tmp_path, "a.yaml", "inherit: b.yaml\nname: a\n")
    b = _write(tmp_path, "b.yaml", "inherit: a.yaml\nname: b\n")
    with pytest.raises(ConfigError, match="loops"):
        load_topology(b)


def test_inherit_self_loop(tmp_path):
    path = _write(tmp_path, "self.yaml", "inherit: self.yaml\nname: self\n")
    with pytest.raises(ConfigError, match="loops"):
        load_topology(path)
