"""Simulated collectives against published measurements (shared/reference/hardware.md).

Tolerances are declared here, once, next to the measurement they check.
"""

import pytest

from tspsim.simulate.collective import simulate_collective

# hardware.md §6 (MI300X xGMI): rccl-tests all_reduce busbw on 8 GPUs is 312.9 GB/s at 4 GiB [S3b]
# and 316.8 GB/s at 8 GB (Azure ND MI300X v5) [S7]: "measured 313-317". 10% tolerance.
MI300X_ALLREDUCE_BUSBW_GBPS = 315.0
MI300X_ALLREDUCE_BUSBW_TOL = 0.10

# hardware.md §6/§8 latency: small all-reduce on 8 x MI300X measured 13.7-14.3 us for 1-64 KB [S8]
# (MSCCL/direct paths for small sizes [S22b]). 30% tolerance.
MI300X_SMALL_ALLREDUCE_S = 14e-6
MI300X_SMALL_ALLREDUCE_TOL = 0.30

# hardware.md §6 (NVSwitch): H200 8-GPU all_reduce busbw 16 GiB, ring with NVLS off: 367.6 GB/s [S3b]
# (H100 and H200 share the NVLink 4 / NVSwitch gen3 fabric). 10% tolerance.
H100_RING_ALLREDUCE_BUSBW_GBPS = 368.0
H100_RING_ALLREDUCE_BUSBW_TOL = 0.10

NODE = tuple(range(8))


@pytest.mark.parametrize("nbytes", [2**30, 4 * 2**30, 8 * 2**30], ids=["1GiB", "4GiB", "8GiB"])
def test_mi300x_allreduce_busbw(nbytes):
    r = simulate_collective("mi300x-1node", "all_reduce", NODE, nbytes)
    assert r["algorithm"] == "ring"
    assert r["busbw_GBps"] == pytest.approx(MI300X_ALLREDUCE_BUSBW_GBPS, rel=MI300X_ALLREDUCE_BUSBW_TOL)


@pytest.mark.parametrize("nbytes", [1024, 4096, 65536], ids=["1KiB", "4KiB", "64KiB"])
def test_mi300x_small_allreduce_latency(nbytes):
    r = simulate_collective("mi300x-1node", "all_reduce", NODE, nbytes)
    assert r["time_s"] == pytest.approx(MI300X_SMALL_ALLREDUCE_S, rel=MI300X_SMALL_ALLREDUCE_TOL)


def test_h100_ring_allreduce_busbw():
    r = simulate_collective("h100-dgx-1node", "all_reduce", NODE, 8 * 2**30, algorithm="ring")
    assert r["algorithm"] == "ring"
    assert r["busbw_GBps"] == pytest.approx(H100_RING_ALLREDUCE_BUSBW_GBPS, rel=H100_RING_ALLREDUCE_BUSBW_TOL)


def test_busbw_definition_matches_nccl_tests():
    r = simulate_collective("mi300x-1node", "all_reduce", NODE, 2**30)
    assert r["algbw_GBps"] == pytest.approx(2**30 / r["time_s"] / 1e9, rel=1e-12)
    assert r["busbw_GBps"] == pytest.approx(r["algbw_GBps"] * 2 * 7 / 8, rel=1e-12)
    g = simulate_collective("mi300x-1node", "all_gather", NODE, 2**30)
    assert g["busbw_GBps"] == pytest.approx(g["algbw_GBps"] * 7 / 8, rel=1e-12)
    b = simulate_collective("mi300x-1node", "broadcast", NODE, 2**30)
    assert b["busbw_GBps"] == pytest.approx(b["algbw_GBps"], rel=1e-12)


# ------------------------------------------------------------------------------------- across nodes
# hardware.md §5: 16 x MI355X on 2 nodes (Pollara 400G), rccl-tests small all-reduce ~40-47 us for
# 8 B-1 KB [S8]. The model takes RCCL's LL constants (base 12 us, xGMI tree step 0.9, network tree
# step 10.5 [S22]): the double binary tree's 12 + 2 (7 x 0.9 + 10.5) = 45.6 us. 30% tolerance around
# the middle of the measured range.
MI355X_2NODE_SMALL_S = 43.5e-6
MI355X_2NODE_SMALL_TOL = 0.30

# shared/data/collective-logs (nccl-tests on H100 clusters, 8 x 400G NICs per node); the network-bound
# references the README names: 10 = 2 nodes, NCCL_ALGO=Ring, 392.69 GB/s at 8 GiB; 07 = 4 nodes, default,
# 365.84 at 16 GiB; 09 = 8 nodes, tuned (NCCL_MIN_CTAS=24, 2 QPs), 391.37 at 8 GiB. Used to check, not to
# fit: the model's NICs run at the 46 GB/s point-to-point rate of hardware.md [S11] (these runs reach
# 48-49 per NIC). 10% tolerance.
H100_NETWORK_BOUND = [  # (log, nodes, bytes, forced algorithm, measured busbw GB/s)
    ("10-h100-2node-ring", 2, 8 * 2**30, "ring", 392.69),
    ("07-h100-4node-default", 4, 16 * 2**30, "", 365.84),
    ("09-h100-8node-tuned", 8, 8 * 2**30, "", 391.37),
]
H100_NETWORK_TOL = 0.10


@pytest.mark.parametrize("nbytes", [8, 1024])
def test_mi355x_two_node_small_allreduce_latency(nbytes):
    r = simulate_collective("mi355x-128node", "all_reduce", tuple(range(16)), nbytes)
    assert r["time_s"] == pytest.approx(MI355X_2NODE_SMALL_S, rel=MI355X_2NODE_SMALL_TOL)


@pytest.mark.parametrize(("log", "nodes", "nbytes", "algorithm", "busbw"), H100_NETWORK_BOUND,
                         ids=[c[0] for c in H100_NETWORK_BOUND])
def test_h100_network_bound_allreduce_against_collective_logs(log, nodes, nbytes, algorithm, busbw):
    r = simulate_collective("h100-dgx-128node", "all_reduce", tuple(range(8 * nodes)), nbytes, algorithm=algorithm)
    assert r["busbw_GBps"] == pytest.approx(busbw, rel=H100_NETWORK_TOL)


# The 2-node default runs (NVIDIA's maintainer in the thread of 06: multi-node default is NVLSTree; 18 is
# an H200 cluster on Spectrum-X) against the model's NVLS tree. Checks, not fits: the switch's NVLS engine
# runs at its measured single-node rate (intra.nvls.busbw_GBps). 10% tolerance, as above.
TWO_NODE_DEFAULT = [  # (log, topology, bytes, measured busbw GB/s)
    ("06-h100-2node-default", "h100-dgx-128node", 16 * 2**30, 469.21),
    ("11-h100-2node-default", "h100-dgx-128node", 8 * 2**30, 466.73),
    ("18-h200-2node-default", "h200-dgx-128node", 16 * 2**30, 485.66),
]


@pytest.mark.parametrize(("log", "topology", "nbytes", "busbw"), TWO_NODE_DEFAULT, ids=[c[0] for c in TWO_NODE_DEFAULT])
def test_two_node_default_allreduce_is_the_nvls_tree(log, topology, nbytes, busbw):
    r = simulate_collective(topology, "all_reduce", tuple(range(16)), nbytes)
    assert r["algorithm"] == "nvls_tree"
    assert r["busbw_GBps"] == pytest.approx(busbw, rel=H100_NETWORK_TOL)
