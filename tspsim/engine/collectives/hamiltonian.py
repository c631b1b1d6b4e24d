"""Hamiltonian cycles and paths of a complete graph: the channel orders of rings on a full mesh.

A ring channel on a full mesh uses one link per hop, so channels should use different links: a set of
arc-disjoint directed Hamiltonian cycles of the complete digraph K_m* (every ordered pair is a link).
All constructions here are explicit or iterative with a fixed step budget, so memory stays O(m²) and
nothing recurses (a recursive search overflowed the stack at m ≥ 28 and exhausted memory at m = 1000).

* **Walecki** (Lucas 1892; Alspach, *The wonderful Walecki construction*, 2008): for m = 2n the n
  zig-zag paths i, i+1, i−1, i+2, i−2, … (mod m), i = 0..n−1, decompose K_m into Hamiltonian
  paths; for odd m = 2n+1, a point ∞ joined to both ends of each zig-zag path of Z_2n gives n
  Hamiltonian cycles decomposing K_m. Orienting each both ways decomposes the digraph K_m*.
* **Even m**: K_m* has a Hamiltonian decomposition into m−1 cycles for every m ∉ {4, 6} (Tillson
  1980). For m ≤ :data:`SEARCH_MAX` (every real full-mesh node: 4, 8, 16 GPUs) a deterministic
  depth-first search with an explicit stack and a step budget finds one (for 4 and 6, where none
  exists, it finds 2(m−1) cycles covering every arc exactly twice). Above that, Walecki's
  decomposition of K_m minus a perfect matching gives m−2 arc-disjoint cycles; the m arcs of the
  matching carry no ring traffic (a bandwidth loss of 1/(m−1) for the ring, documented).
"""

from __future__ import annotations

from functools import cache

SEARCH_MAX = 16
"""Largest even m for which the exact decomposition is searched (bounded; see the module docstring)."""
SEARCH_STEPS = 200_000
"""Step budget of the search (deterministic)."""


def zigzag(start: int, modulus: int, length: int) -> list[int]:
    """start, start+1, start−1, start+2, start−2, … (mod ``modulus``), the first ``length`` terms."""
    out = [start % modulus]
    j = 1
    while len(out) < length:
        out.append((start + j) % modulus)
        if len(out) < length:
            out.append((start - j) % modulus)
        j += 1
    return out


def walecki_paths(m: int) -> list[list[int]]:
    """m/2 Hamiltonian paths decomposing K_m (m even): path i runs from i to i + m/2."""
    if m % 2:
        raise ValueError("walecki_paths needs an even m")
    return [zigzag(i, m, m) for i in range(m // 2)]


def walecki_cycles(m: int) -> list[list[int]]:
    """Undirected Hamiltonian cycles of Walecki's construction, as vertex orders.

    Odd m: (m−1)/2 cycles decomposing K_m (vertex m−1 is ∞). Even m: m/2 − 1 cycles decomposing K_m
    minus the perfect matching {i, m−2−i} ∪ {(m−2)/2, m−1} (∞ = m−1 on the circle Z_{m−1}).
    """
    if m < 3:
        return []
    inf = m - 1
    if m % 2:
        return [[inf, *zigzag(i, m - 1, m - 1)] for i in range((m - 1) // 2)]
    return [[inf, *zigzag(i, m - 1, m - 1)] for i in range(m // 2 - 1)]


@cache
def hamiltonian_channels(m: int) -> tuple[tuple[int, ...], ...]:
    """Directed Hamiltonian cycles of K_m* covering every arc equally often (see the module docstring).

    Odd m: m−1 arc-disjoint cycles (Walecki, both orientations). Even m ≤ :data:`SEARCH_MAX`: m−1
    arc-disjoint cycles (2(m−1) covering every arc twice for m = 4, 6). Larger even m: m−2
    arc-disjoint cycles that leave one perfect matching unused.
    """
    if m < 2:
        return ()
    if m == 2:
        return ((0, 1),)
    if m % 2:
        return _both_ways(walecki_cycles(m))
    if m <= SEARCH_MAX:
        # m = 4, 6: no decomposition exists (Tillson 1980); cover every arc twice instead
        found = _search_cover(m, 2 if m in (4, 6) else 1)
        if found is not None:
            return found
    return _both_ways(walecki_cycles(m))


def _both_ways(cycles: list[list[int]]) -> tuple[tuple[int, ...], ...]:
    out: list[tuple[int, ...]] = []
    for cyc in cycles:
        out.append(tuple(cyc))
        rev = [cyc[0], *reversed(cyc[1:])]
        out.append(tuple(rev))
    return tuple(out)


def _search_cover(m: int, mult: int) -> tuple[tuple[int, ...], ...] | None:
    """(m−1)·mult directed Hamiltonian cycles using every arc exactly ``mult`` times, or None.

    Depth-first over partial cycles, all starting at vertex 0, with an explicit stack. A frame is
    [path, successor options still to try, closed?]; successors whose arc has the most remaining
    budget come first. A full path is closed into a cycle (its arcs' budget consumed) and the search
    goes on with the next cycle; back-tracking over it restores the budget. At most
    :data:`SEARCH_STEPS` extensions are tried.
    """
    need = (m - 1) * mult
    budget = {(a, b): mult for a in range(m) for b in range(m) if a != b}
    cycles: list[tuple[int, ...]] = []

    def frame(path: list[int]) -> list:
        if len(path) == m:
            return [path, [], False]
        last, used = path[-1], set(path)
        cand = [n for n in range(m) if n not in used and budget[(last, n)] > 0]
        cand.sort(key=lambda n: (-budget[(last, n)], (n - last) % m), reverse=True)  # popped from the end
        return [path, cand, False]

    stack = [frame([0])]
    steps = 0
    while stack:
        top = stack[-1]
        path, opts, closed = top
        if len(path) == m:
            if closed:  # the search after this cycle failed: undo it
                done = cycles.pop()
                for a, b in zip(done, done[1:] + (0,)):
                    budget[(a, b)] += 1
                stack.pop()
                continue
            if budget[(path[-1], 0)] == 0:
                stack.pop()
                continue
            for a, b in zip(path, path[1:] + [0]):
                budget[(a, b)] -= 1
            cycles.append(tuple(path))
            if len(cycles) == need:
                return tuple(cycles)
            top[2] = True
            stack.append(frame([0]))
            continue
        if not opts:
            stack.pop()
            continue
        steps += 1
        if steps > SEARCH_STEPS:
            return None
        stack.append(frame(path + [opts.pop()]))
    return None
