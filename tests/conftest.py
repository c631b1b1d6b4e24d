"""Shared fixtures. Keep this file small: one clearly named fixture per shared object."""

from __future__ import annotations

import pytest

from tspsim.topology import Topology, load_topology


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
