import json

import pytest
from click.testing import CliRunner

from tspsim import __version__
from tspsim.cli import cli

ENTRY_KEYS = {"op", "group_size", "bytes", "algorithm", "time_s", "algbw_GBps", "busbw_GBps"}
"""design.md §4's stable keys; entries may add keys (protocol, channels, ranks, candidates)."""
ADDED_KEYS = {"protocol", "channels", "ranks", "candidates"}
PRESETS = ["b200-dgx-1node", "dgx-a100-128node", "dgx-a100-1node", "h100-dgx-128node", "h100-dgx-1node",
           "h200-dgx-128node", "mi300x-128node", "mi300x-1node", "mi355x-128node", "mi355x-1node"]


@pytest.fixture
def runner():
    return CliRunner()


def _run(runner, args):
    return runner.invoke(cli, args, catch_exceptions=False)


def test_collective_table(runner):
    result = _run(runner, ["collective", "--topology", "mi300x-1node", "--sizes", "1k,1G"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("# all_reduce on mi300x-1node, 8 ranks")
    assert "busbw (GB/s)" in lines[1]
    assert len(lines) == 4
    assert lines[1].split()[-3:] == ["algorithm", "protocol", "channels"]
    small, big = lines[2].split(), lines[3].split()
    assert (small[0], small[4], small[5]) == ("1024", "one_shot", "Simple")
    assert (big[0], big[4], big[5], big[6]) == (str(2**30), "ring", "Simple", "7")  # 7 Hamiltonian rings
    assert 280 < float(big[3]) < 350  # busbw column


def test_collective_json(runner):
    result = _run(runner, ["collective", "--topology", "mi300x-1node", "--op", "all_gather", "--group", "4",
                           "--sizes", "1M,64M", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc) == {"results"}
    assert [e["bytes"] for e in doc["results"]] == [2**20, 64 * 2**20]
    for entry in doc["results"]:
        assert set(entry) == ENTRY_KEYS | ADDED_KEYS
        assert entry["ranks"] == [0, 1, 2, 3]
        assert entry["candidates"] and all(c["considered"] for c in entry["candidates"])
        best = entry["candidates"][0]
        assert (best["algorithm"], best["protocol"]) == (entry["algorithm"], entry["protocol"])
        assert best["time_s"] == pytest.approx(entry["time_s"], rel=1e-9)
        assert entry["op"] == "all_gather"
        assert entry["group_size"] == 4
        assert entry["time_s"] > 0
        assert entry["algbw_GBps"] == pytest.approx(entry["bytes"] / entry["time_s"] / 1e9, rel=1e-9)
        assert entry["busbw_GBps"] == pytest.approx(entry["algbw_GBps"] * 3 / 4, rel=1e-9)
    assert [e["algorithm"] for e in doc["results"]] == ["direct", "ring"]


def test_collective_group_16_spans_two_nodes(runner):
    result = _run(runner, ["collective", "--topology", "mi300x-128node", "--group", "16", "--sizes", "1G",
                           "--json"])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)["results"]
    assert entry["group_size"] == 16
    assert (entry["algorithm"], entry["channels"]) == ("ring", 8)  # one ring channel per NIC
    # 8 NICs x 46 GB/s at most; at least the single node's order
    assert 300 < entry["busbw_GBps"] < 8 * 46


def test_collective_explicit_ranks_and_algorithm(runner):
    result = _run(runner, ["collective", "--topology", "mi300x-128node", "--ranks", "8,16,24,32",
                           "--sizes", "64M", "--algorithm", "ring", "--json"])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)["results"]
    assert (entry["group_size"], entry["algorithm"]) == (4, "ring")


def test_collective_ranks_may_include_rank_zero(runner):
    result = _run(runner, ["collective", "--topology", "mi300x-1node", "--ranks", "0,1", "--sizes", "1G",
                           "--json"])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)["results"]
    assert entry["group_size"] == 2


def test_list_topologies(runner):
    result = _run(runner, ["list", "topologies"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    names = [line.split()[0] for line in lines[1:]]
    assert names == PRESETS
    assert lines[0].split()[:2] == ["name", "GPUs"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["mi300x-128node"][1] == "1024"
    assert rows["mi300x-1node"][1] == "8"


def test_version(runner):
    result = _run(runner, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"tspsim, version {__version__}"


@pytest.mark.parametrize("args", [["-h"], ["--help"], ["collective", "-h"]])
def test_help(runner, args):
    result = _run(runner, args)
    assert result.exit_code == 0
    assert "Usage:" in result.stdout
    assert "Examples" in result.stdout


def test_help_lists_commands(runner):
    out = _run(runner, ["-h"]).stdout
    for command in ("collective", "list"):
        assert command in out


def _assert_one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    text = result.output  # stdout and stderr interleaved (click >= 8.2)
    assert "Traceback" not in text
    lines = text.strip("\n").splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("error:")
    assert result.stdout == ""
    assert result.stderr.startswith("error:")
    for needle in needles:
        assert needle in lines[0]


def test_unknown_topology(runner):
    result = _run(runner, ["collective", "--topology", "mi999x", "--sizes", "1M"])
    _assert_one_line_error(result, "mi999x", "mi300x-1node")


def test_malformed_yaml_topology(runner, tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed\nnodes: 1\n")
    result = _run(runner, ["collective", "--topology", str(bad), "--sizes", "1M"])
    _assert_one_line_error(result, "broken.yaml", "malformed YAML")


def test_bad_value_in_topology_file(runner, tmp_path):
    bad = tmp_path / "slow.yaml"
    bad.write_text("inherit: mi300x-1node\nintra:\n  link_GBps: -1\n")
    result = _run(runner, ["collective", "--topology", str(bad), "--sizes", "1M"])
    _assert_one_line_error(result, "intra.link_GBps")


def test_bad_size(runner):
    result = _run(runner, ["collective", "--topology", "mi300x-1node", "--sizes", "12q"])
    _assert_one_line_error(result, "12q")


def test_group_larger_than_topology(runner):
    result = _run(runner, ["collective", "--topology", "mi300x-1node", "--group", "16", "--sizes", "1M"])
    _assert_one_line_error(result, "16", "8 GPUs")


@pytest.mark.parametrize("args", [
    ["collective", "--topology", "mi300x-1node", "--ranks", "0,9", "--sizes", "1M"],
    ["collective", "--topology", "mi300x-1node", "--ranks", "0,0", "--sizes", "1M"],
    ["collective", "--topology", "mi300x-1node", "--op", "all_gather", "--algorithm", "tree",
     "--sizes", "1M"],
    ["collective", "--topology", "mi300x-1node", "--algorithm", "hier", "--sizes", "1M"],
    ["collective", "--topology", "mi300x-1node", "--algorithm", "nvls", "--sizes", "1M"],
    ["collective", "--topology", "h100-dgx-128node", "--group", "16", "--algorithm", "nvls", "--sizes", "1M"],
    ["collective", "--topology", "mi300x-1node", "--protocol", "LL128", "--sizes", "1M"],
    ["collective", "--topology", "mi300x-1node", "--algorithm", "nvls", "--protocol", "LL", "--sizes", "1M"],
    ["collective", "--topology", "mi300x-1node", "--op", "sendrecv", "--algorithm", "ring", "--sizes", "1M"],
    ["collective", "--topology", "mi300x-1node", "--chunk-bytes", "12", "--sizes", "1M"],
    ["collective", "--topology", "mi300x-1node", "--chunk-bytes", "1k,2k", "--sizes", "1M"],
    ["collective", "--topology", "mi300x-1node", "--op", "scatter"],
    ["collective"],
    ["list", "flavours"],
    ["frobnicate"],
])
def test_other_user_errors_are_one_line(runner, args):
    _assert_one_line_error(_run(runner, args))


def test_collective_explain_lists_every_candidate(runner):
    result = _run(runner, ["collective", "--topology", "mi300x-128node", "--group", "16", "--sizes", "1k",
                           "--explain"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    row = lines[2].split()
    assert (row[4], row[5], row[6]) == ("tree", "LL", "16")
    explained = [line.split() for line in lines[4:]]
    names = {(e[0], e[1]) for e in explained}
    assert {("tree", "LL"), ("ring", "LL"), ("ring", "Simple"), ("hier", "LL")} <= names
    chosen = [e for e in explained if "<-" in e]
    assert len(chosen) == 1 and chosen[0][:2] == ["tree", "LL"]
    assert any("forced only" in line for line in lines)
    times = [float(e[4]) for e in explained]
    assert times == sorted(times)  # fastest first


def test_collective_explain_json_marks_what_the_policy_may_pick(runner):
    result = _run(runner, ["collective", "--topology", "mi300x-1node", "--sizes", "1G", "--explain", "--json"])
    (entry,) = json.loads(result.stdout)["results"]
    cands = entry["candidates"]
    chosen = [c for c in cands if c["considered"]][0]
    assert (chosen["algorithm"], chosen["protocol"]) == (entry["algorithm"], entry["protocol"]) == ("ring", "Simple")
    skipped = {c["algorithm"]: c["note"] for c in cands if not c["considered"]}
    assert "direct_max_bytes" in skipped["two_shot"]  # faster, but above the direct kernels' limit
    assert "forced only" in skipped["rd"]


def test_sendrecv_across_nodes_pairs_rank_zero_with_another_node(runner):
    result = _run(runner, ["collective", "--topology", "mi300x-128node", "--op", "sendrecv", "--group", "16",
                           "--sizes", "1G"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "rank 0 (node 0) -> rank 8 (node 1)" in lines[0]
    busbw = float(lines[2].split()[3])
    assert 40 < busbw < 47  # one 400G NIC (46 GB/s), not an xGMI link
    doc = json.loads(_run(runner, ["collective", "--topology", "mi300x-128node", "--op", "sendrecv", "--group",
                                   "16", "--sizes", "1G", "--json"]).stdout)
    assert doc["results"][0]["ranks"] == [0, 8]
    inside = json.loads(_run(runner, ["collective", "--topology", "mi300x-128node", "--op", "sendrecv",
                                      "--sizes", "1G", "--json"]).stdout)
    assert inside["results"][0]["ranks"] == [0, 1]


def test_protocol_and_chunk_options(runner):
    def entry(*extra):
        result = _run(runner, ["collective", "--topology", "mi300x-128node", "--group", "32", "--sizes", "64M",
                               "--json", *extra])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["results"][0]

    ll = entry("--protocol", "LL", "--algorithm", "ring")
    simple = entry("--protocol", "Simple", "--algorithm", "ring")
    assert (ll["protocol"], simple["protocol"]) == ("LL", "Simple")
    assert ll["time_s"] > simple["time_s"]  # LL's flags halve the bandwidth of a large message
    big = entry("--algorithm", "hier", "--chunk-bytes", "4M")
    small = entry("--algorithm", "hier", "--chunk-bytes", "64k")
    assert big["algorithm"] == small["algorithm"] == "hier"
    assert big["time_s"] > small["time_s"]  # a bigger chunk fills the pipeline longer
