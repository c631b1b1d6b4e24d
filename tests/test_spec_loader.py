"""SpecLoader: each file read once per loader, values equal to the plain loaders'."""

from __future__ import annotations

import pytest

from tspsim.core.errors import ConfigError
from tspsim.simulate.point import Point, resolve
from tspsim.spec.assumptions import Assumptions
from tspsim.spec.loader import SpecLoader
from tspsim.spec.model import load_model
from tspsim.spec.stack import DEFAULT_STACK, load_stack
from tspsim.spec.topology_file import load_topology


def test_loader_memoizes_and_equals_plain_loading():
    specs = SpecLoader()
    topo = specs.topology("mi300x-1node")
    assert topo is specs.topology("mi300x-1node") and topo == load_topology("mi300x-1node")
    assert specs.model("llama3-8b") is specs.model("llama3-8b") and specs.model("llama3-8b") == load_model("llama3-8b")
    assert specs.stack(DEFAULT_STACK) is specs.stack(DEFAULT_STACK) and specs.stack(DEFAULT_STACK) == load_stack(
        DEFAULT_STACK)
    for pairs in ({}, {"recompute": "full"}, {"stack": DEFAULT_STACK, "zero1": "true"}):
        assert specs.assumptions(pairs) == Assumptions.from_overrides(pairs)
    assert specs.assumptions({}).stack is specs.stack(DEFAULT_STACK)


def test_resolve_with_a_shared_loader_equals_a_fresh_one():
    specs = SpecLoader()
    for schedule, degree in (("tsp", 8), ("tp", 4)):
        point = Point(schedule, "mi300x-1node", "llama3-8b", "train", 4096, 1, degree)
        assert resolve(point, specs) == resolve(point)
    assert resolve(point, specs)[0] is resolve(point, specs)[0]


def test_loader_errors_are_the_plain_errors():
    specs = SpecLoader()
    with pytest.raises(ConfigError, match="unknown topology"):
        specs.topology("no-such-topology")
    with pytest.raises(ConfigError, match="unknown option"):
        specs.assumptions({"no_such_option": 1})
