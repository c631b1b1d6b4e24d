"""From hops to links: the load a phase's flow puts on every link, with the protocol on the wire.

A hop's route (:func:`tspsim.spec.routes.route_arrays`) gives its links; hop i puts frac[i] bytes per
payload byte on each of them, times the link class's wire factor for the protocol
(:func:`~tspsim.engine.collectives.latency.wire_factors`: 1 / (collective efficiency · protocol
factor)). Summed per link, these are the flow's link weights (:mod:`tspsim.engine.network`). Alone on
the network the flow runs at min over its links of capacity / weight (:func:`solo_rate`), so a
phase of a collective of N bytes takes latency + N_eff / rate in isolation.

For a folded replay the hops sent by mirror ranks are dropped and every remaining link is replaced by
its twin inside the simulated replica (design.md §7, :meth:`Topology.fold_link`).
"""

from __future__ import annotations

import numpy as np

from tspsim.engine.collectives.latency import wire_factors
from tspsim.engine.collectives.plan import FlowSpec
from tspsim.spec import routes
from tspsim.spec.topology import Topology


def base_loads(topo: Topology, flow: FlowSpec, keep: np.ndarray | None = None,
               fold_to: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(link indices, payload bytes on each per payload byte) of one phase's hops, before the protocol.

    Args:
        topo: the topology (routes).
        flow: the phase's hops.
        keep: boolean mask of the hops to include (folding: hops sent by simulated ranks).
        fold_to: link → twin link table (:func:`tspsim.spec.routes.fold_array`), or None.
    """
    src, dst, frac = flow.src, flow.dst, flow.frac
    if keep is not None:
        src, dst, frac = src[keep], dst[keep], frac[keep]
    hop, link = routes.route_arrays(topo, src, dst)
    if fold_to is not None and len(link):
        link = fold_to[link]
    n_links = topo.link_count
    if 8 * len(link) < n_links:
        # few hops on many links (a folded replay): sum per touched link, never an array of every link (at 2,048
        # nodes zeroing one cost more than the rest); bincount adds each bin's weights in hop order either way,
        # so the sums are those of the dense branch bit for bit
        touched, inv = np.unique(link, return_inverse=True)
        load = np.bincount(inv, weights=frac[hop], minlength=len(touched))
        nonzero = load != 0
        return touched[nonzero], load[nonzero]
    load = np.bincount(link, weights=frac[hop], minlength=n_links)
    links = np.flatnonzero(load)
    return links, load[links]


def protocol_weights(topo: Topology, links: np.ndarray, base: np.ndarray, protocol: str) -> np.ndarray:
    """Wire bytes per payload byte on each link: the base loads times the link class's wire factor."""
    factors = np.asarray(wire_factors(topo, protocol), dtype=np.float64)
    return base * factors[routes.link_classes(topo)[links]]


def phase_links(topo: Topology, flow: FlowSpec, protocol: str, keep: np.ndarray | None = None,
                fold_to: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(link indices, weights) of one phase's flow: wire bytes on each link per payload byte.

    Args:
        topo: the topology (routes, link classes, efficiencies).
        flow: the phase's hops.
        protocol: wire protocol (its bandwidth factor is wire overhead on every link).
        keep: boolean mask of the hops to include (folding: hops sent by simulated ranks).
        fold_to: link → twin link table (:func:`tspsim.spec.routes.fold_array`), or None.
    """
    links, base = base_loads(topo, flow, keep, fold_to)
    return links, protocol_weights(topo, links, base, protocol)


def solo_rate(topo: Topology, links: np.ndarray, weights: np.ndarray) -> float:
    """Rate of the flow alone on the network (payload bytes/s): min over links of capacity / weight.

    The same arithmetic as :func:`tspsim.engine.network.max_min_rates` for one flow: one IEEE division per
    link, and the minimum picks one of those quotients (NumPy's ``min`` and Python's agree exactly: no NaN).
    """
    if not len(links):
        return float("inf")
    cap = routes.capacities(topo)[links]
    return float((cap / weights).min())
