"""Flow-level network: concurrent flows share directed links max-min fairly (design.md §2 rule 1).

A *flow* moves ``nbytes`` over a list of link indices at one rate. A link listed twice (a ring whose
two hops route over the same link) counts twice against its capacity. A flow may also carry a rate
cap (a collective kernel's protocol efficiency).

Rates are the max-min fair allocation computed by **progressive filling** (Bertsekas & Gallager,
*Data Networks*, §6.5.2): raise every unfrozen flow's rate together until a link saturates or a flow
reaches its cap, freeze those flows, repeat. The allocation is recomputed whenever a flow starts or
finishes; changes at the same simulated instant are coalesced into one recomputation. Between
recomputations every flow progresses linearly, and the next event is the earliest completion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import simpy

# A flow whose remaining bytes fall below this fraction of its size (or 1 byte) is complete: guards
# against floating-point residue when rates × times do not cancel exactly.
_DONE_REL = 1e-9


class Flow:
    """One transfer in progress."""

    __slots__ = ("links", "nbytes", "remaining", "rate", "cap", "event", "tag")

    def __init__(self, links: tuple[int, ...], nbytes: float, cap: float, event: simpy.Event, tag: object) -> None:
        self.links = links
        self.nbytes = nbytes
        self.remaining = float(nbytes)
        self.rate = 0.0
        self.cap = cap
        self.event = event
        self.tag = tag


class Network:
    """Max-min fair sharing of link capacities among active flows, driven by a simpy environment."""

    def __init__(self, env: simpy.Environment, capacities_Bps: Sequence[float],
                 on_rates: Callable[[float, list[Flow]], None] | None = None) -> None:
        """Create the network.

        Args:
            env: the simpy environment that owns simulated time.
            capacities_Bps: usable capacity of each directed link, bytes/s.
            on_rates: optional observer called with (time, active flows) after each recomputation
                (link-utilization recording).
        """
        self.env = env
        self.capacity = list(capacities_Bps)
        self.flows: list[Flow] = []
        self._last = 0.0
        self._version = 0
        self._pending = False
        self._on_rates = on_rates
        self.recomputations = 0

    def transfer(self, links: Sequence[int], nbytes: float, cap_Bps: float = float("inf"),
                 tag: object = None) -> simpy.Event:
        """Start a flow; the returned event succeeds when its last byte arrives."""
        event = self.env.event()
        if nbytes <= 0 or not links:
            event.succeed()
            return event
        self._advance()
        self.flows.append(Flow(tuple(links), float(nbytes), cap_Bps, event, tag))
        self._request_recompute()
        return event

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
            ev = self.env.timeout(0)
            ev.callbacks.append(self._recompute_cb)

    def _recompute_cb(self, _event: simpy.Event) -> None:
        self._pending = False
        self._advance()
        self._complete_finished()
        self._allocate()
        self._schedule_next()

    def _complete_finished(self) -> None:
        # A flow is done when its remaining bytes are float residue, or when the time they need is below
        # the resolution of the clock (at large simulated times now + dt == now would never advance).
        tick = 4.0 * max(self.env.now, 1.0) * 2.0**-52

        def finished(f: Flow) -> bool:
            return f.remaining <= max(1.0, f.nbytes * _DONE_REL, f.rate * tick)

        done = [f for f in self.flows if finished(f)]
        if done:
            self.flows = [f for f in self.flows if not finished(f)]
            for f in done:
                f.remaining = 0.0
                f.rate = 0.0
                f.event.succeed()

    def _allocate(self) -> None:
        """Progressive filling with per-flow caps and link multiplicities."""
        self.recomputations += 1
        flows = self.flows
        if not flows:
            if self._on_rates is not None:
                self._on_rates(self.env.now, flows)
            return
        residual: dict[int, float] = {}
        weight: dict[int, int] = {}
        on_link: dict[int, list[Flow]] = {}
        for f in flows:
            f.rate = -1.0  # unfrozen marker
            for link in f.links:
                if link not in residual:
                    residual[link] = self.capacity[link]
                    weight[link] = 0
                    on_link[link] = []
                weight[link] += 1
                on_link[link].append(f)
        unfrozen = len(flows)
        level = 0.0
        while unfrozen:
            # Smallest increment that saturates a link or brings a flow to its cap.
            best = float("inf")
            for link, w in weight.items():
                if w:
                    share = residual[link] / w
                    if share < best:
                        best = share
            cap_step = min((f.cap - level for f in flows if f.rate < 0), default=float("inf"))
            step = min(best, cap_step)
            if step == float("inf"):
                raise RuntimeError("flow with no link and no cap")
            level += step
            tol = 1e-12 * max(level, 1.0)
            for link, w in weight.items():
                if w:
                    residual[link] -= step * w
            frozen_now = []
            for link, w in weight.items():
                if w and residual[link] <= 1e-9 * self.capacity[link]:
                    for f in on_link[link]:
                        if f.rate < 0:
                            f.rate = level
                            frozen_now.append(f)
            for f in flows:
                if f.rate < 0 and f.cap - level <= tol:
                    f.rate = level
                    frozen_now.append(f)
            if not frozen_now:  # numerical corner: freeze the tightest link's flows
                link = min((lk for lk, w in weight.items() if w), key=lambda lk: residual[lk] / weight[lk])
                for f in on_link[link]:
                    if f.rate < 0:
                        f.rate = level
                        frozen_now.append(f)
            for f in frozen_now:
                unfrozen -= 1
                for link in f.links:
                    weight[link] -= 1
        if self._on_rates is not None:
            self._on_rates(self.env.now, flows)

    def _schedule_next(self) -> None:
        self._version += 1
        if not self.flows:
            return
        dt = min(f.remaining / f.rate for f in self.flows if f.rate > 0)
        version = self._version
        ev = self.env.timeout(max(dt, 0.0))
        ev.callbacks.append(lambda _e: self._on_timer(version))

    def _on_timer(self, version: int) -> None:
        if version != self._version:
            return  # superseded by a later recomputation
        self._advance()
        self._complete_finished()
        self._request_recompute()
