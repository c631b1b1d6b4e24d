"""Flow-level network: concurrent flows share directed links max-min fairly (design.md §2 rule 1).

A *flow* moves ``nbytes`` of progress over a set of link indices at one rate. Each link of a flow has
a **weight**: the bytes the flow puts on that link per byte of progress. A weight of 1 is a plain
transfer; a link listed twice (a ring whose two hops route over the same link) counts twice; a
collective's flow carries fractional weights (a pipelined hierarchical collective moves different
volumes over different stages) and the protocol's wire overhead (an LL flow puts two bytes on the
wire per byte of payload: weight 1/0.5). Because the overhead is a load on the link rather than a cap
on the flow, concurrency neither speeds it up nor counts it twice.

Rates are the weighted max-min fair allocation computed by **progressive filling** (Bertsekas &
Gallager, *Data Networks*, §6.5.2): raise every unfrozen flow's rate together until a link saturates
(Σ weight × rate = capacity) or a flow reaches its cap, freeze those flows, repeat
(:func:`max_min_rates`). The allocation is recomputed whenever a flow starts or finishes; changes at
the same simulated instant are coalesced into one recomputation. Between recomputations every flow
progresses linearly, and the next event is the earliest completion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import simpy

# A flow whose remaining bytes fall below this fraction of its size (or 1 byte) is complete: guards
# against floating-point residue when rates × times do not cancel exactly.
_DONE_REL = 1e-9

INF = float("inf")


class Flow:
    """One transfer in progress."""

    __slots__ = ("links", "weights", "nbytes", "remaining", "rate", "cap", "done", "arg", "tag")

    def __init__(self, links: tuple[int, ...], weights: tuple[float, ...], nbytes: float, cap: float,
                 done: Callable[[Any], None], arg: Any, tag: object) -> None:
        self.links = links
        self.weights = weights
        self.nbytes = nbytes
        self.remaining = float(nbytes)
        self.rate = 0.0
        self.cap = cap
        self.done = done
        """Called with ``arg`` when the last byte arrives."""
        self.arg = arg
        self.tag = tag


class Timers(Protocol):
    """Where the network schedules its timers: ``after(delay, fn, arg)`` calls ``fn(arg)`` ``delay`` s later."""

    def after(self, delay: float, fn: Callable[[Any], None], arg: Any) -> None:
        """Schedule ``fn(arg)`` at now + ``delay`` (after the events already due then)."""


class SimpyTimers:
    """:class:`Timers` on plain simpy timeouts (a network used on its own, with simpy processes)."""

    __slots__ = ("env",)

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env

    def after(self, delay: float, fn: Callable[[Any], None], arg: Any) -> None:
        """A simpy timeout whose callback is ``fn(arg)``."""
        self.env.timeout(delay).callbacks.append(lambda _e: fn(arg))


def max_min_rates(flows: Sequence[tuple[Sequence[int], Sequence[float], float]],
                  capacity: Sequence[float]) -> list[float]:
    """Weighted max-min fair rates of ``flows`` = [(links, weights, cap)] by progressive filling.

    A flow at rate r loads each of its links with weight × r. Every round raises all unfrozen rates by
    the largest step that keeps every link within capacity and every flow within its cap, then freezes
    the flows of the links that saturated (and the flows that reached their cap). A flow alone on its
    links gets min(cap, min over links of capacity / weight).

    Raises:
        RuntimeError: for a flow with no link and no cap (its rate would be unbounded).
    """
    n = len(flows)
    if n == 1:  # alone: min(cap, min over links of capacity / weight), repeated links adding up
        links, weights, cap = flows[0]
        load: dict[int, float] = {}
        for link, w in zip(links, weights):
            load[link] = load.get(link, 0.0) + w
        share = min((capacity[link] / w for link, w in load.items() if w > 0.0), default=INF)
        if min(share, cap) == INF:
            raise RuntimeError("flow with no link and no cap")
        return [min(share, cap)]
    rates = [-1.0] * n  # -1: unfrozen
    residual: dict[int, float] = {}
    weight: dict[int, float] = {}
    on_link: dict[int, list[int]] = {}
    for i, (links, weights, _cap) in enumerate(flows):
        for link, w in zip(links, weights):
            if link in residual:
                weight[link] += w
                on_link[link].append(i)
            else:
                residual[link] = capacity[link]
                weight[link] = w
                on_link[link] = [i]
    capped = [i for i in range(n) if flows[i][2] != INF]
    unfrozen = n
    level = 0.0
    while unfrozen:
        best = INF
        for link, w in weight.items():
            if w > 0.0:
                share = residual[link] / w
                if share < best:
                    best = share
        cap_step = min((flows[i][2] - level for i in capped if rates[i] < 0), default=INF)
        step = min(best, cap_step)
        if step == INF:
            raise RuntimeError("flow with no link and no cap")
        level += step
        frozen_now: list[int] = []
        saturated = []
        for link, w in weight.items():
            if w > 0.0:
                residual[link] -= step * w
                if residual[link] <= 1e-9 * capacity[link]:
                    saturated.append(link)
        for link in saturated:
            for i in on_link[link]:
                if rates[i] < 0:
                    rates[i] = level
                    frozen_now.append(i)
        if capped:
            tol = 1e-12 * max(level, 1.0)
            for i in capped:
                if rates[i] < 0 and flows[i][2] - level <= tol:
                    rates[i] = level
                    frozen_now.append(i)
        if not frozen_now:  # numerical corner: freeze the tightest link's flows
            link = min((lk for lk, w in weight.items() if w > 0.0), key=lambda lk: residual[lk] / weight[lk])
            for i in on_link[link]:
                if rates[i] < 0:
                    rates[i] = level
                    frozen_now.append(i)
        for i in frozen_now:
            unfrozen -= 1
            links, weights, _cap = flows[i]
            for link, w in zip(links, weights):
                weight[link] -= w
                if weight[link] < 1e-12:
                    weight[link] = 0.0
    return rates


def solo_rate(links: Sequence[int], weights: Sequence[float], capacity: Sequence[float]) -> float:
    """Rate of one flow alone on the network: min over its links of capacity / weight.

    Equal to :func:`max_min_rates` for a single uncapped flow whose links are listed once each (the
    collective planner aggregates its hops into such flows).
    """
    return min(capacity[link] / w for link, w in zip(links, weights))


class Network:
    """Max-min fair sharing of link capacities among active flows, driven by a simpy environment.

    Flows start with :meth:`transfer` (returns a simpy event) or :meth:`start` (calls back when done,
    used by the replay engine). Timers go through ``timers`` (simpy timeouts by default; the replay's
    clock otherwise), so the order of events at one instant is the same either way.
    """

    def __init__(self, env: simpy.Environment, capacities_Bps: Sequence[float],
                 on_rates: Callable[[float, list[Flow]], None] | None = None,
                 timers: Timers | None = None) -> None:
        """Create the network.

        Args:
            env: the simpy environment that owns simulated time.
            capacities_Bps: usable capacity of each directed link, bytes/s.
            on_rates: optional observer called with (time, active flows) after each recomputation
                (link-utilization recording).
            timers: where to schedule timers (default: simpy timeouts of ``env``).
        """
        self.env = env
        self.capacity = capacities_Bps if isinstance(capacities_Bps, list) else list(capacities_Bps)
        self.flows: list[Flow] = []
        self._last = 0.0
        self._version = 0
        self._pending = False
        self._on_rates = on_rates
        self._timers = timers if timers is not None else SimpyTimers(env)
        self.recomputations = 0

    def transfer(self, links: Sequence[int], nbytes: float, cap_Bps: float = INF,
                 tag: object = None, weights: Sequence[float] | None = None) -> simpy.Event:
        """Start a flow; the returned event succeeds when its last byte arrives.

        ``weights`` (one per link, default 1) are the bytes the flow puts on each link per byte of
        progress.
        """
        event = self.env.event()
        if nbytes <= 0 or not links:
            event.succeed()
            return event
        self.start(links, nbytes, _succeed, event, cap_Bps, tag, weights)
        return event

    def start(self, links: Sequence[int], nbytes: float, done: Callable[[Any], None], arg: Any,
              cap_Bps: float = INF, tag: object = None, weights: Sequence[float] | None = None) -> Flow:
        """Start a flow of ``nbytes`` > 0 over ``links`` (non-empty); ``done(arg)`` is called when it completes."""
        self._advance()
        w = tuple(weights) if weights is not None else (1.0,) * len(links)
        flow = Flow(tuple(links), w, float(nbytes), cap_Bps, done, arg, tag)
        self.flows.append(flow)
        if not self._pending:
            self._pending = True
            self._timers.after(0.0, self._recompute_cb, None)
        return flow

    # ------------------------------------------------------------------------------ internals
    def _advance(self) -> None:
        """Charge the time since the last update to every flow at its current rate."""
        now = self.env.now
        dt = now - self._last
        if dt > 0:
            for f in self.flows:
                f.remaining -= f.rate * dt
        self._last = now

    def _request_recompute(self) -> None:
        if not self._pending:
            self._pending = True
            self._timers.after(0.0, self._recompute_cb, None)

    def _recompute_cb(self, _arg: object) -> None:
        self._pending = False
        self._advance()
        self._complete_finished()
        self._allocate()
        self._schedule_next()

    def _complete_finished(self) -> None:
        # A flow is done when its remaining bytes are float residue, or when the time they need is below
        # the resolution of the clock (at large simulated times now + dt == now would never advance).
        tick = 4.0 * max(self.env.now, 1.0) * 2.0**-52
        done = None
        for f in self.flows:
            if f.remaining <= max(1.0, f.nbytes * _DONE_REL, f.rate * tick):
                if done is None:
                    done = [f]
                else:
                    done.append(f)
        if done:
            gone = set(map(id, done))
            self.flows = [f for f in self.flows if id(f) not in gone]
            for f in done:
                f.remaining = 0.0
                f.rate = 0.0
                f.done(f.arg)

    def _allocate(self) -> None:
        """Weighted progressive filling over the active flows (:func:`max_min_rates`)."""
        self.recomputations += 1
        flows = self.flows
        if flows:
            rates = max_min_rates([(f.links, f.weights, f.cap) for f in flows], self.capacity)
            for f, r in zip(flows, rates):
                f.rate = r
        if self._on_rates is not None:
            self._on_rates(self.env.now, flows)

    def _schedule_next(self) -> None:
        self._version += 1
        if not self.flows:
            return
        dt = min(f.remaining / f.rate for f in self.flows if f.rate > 0)
        self._timers.after(max(dt, 0.0), self._on_timer, self._version)

    def _on_timer(self, version: int) -> None:
        if version != self._version:
            return  # superseded by a later recomputation
        self._advance()
        self._complete_finished()
        self._request_recompute()


def _succeed(event: simpy.Event) -> None:
    event.succeed()
