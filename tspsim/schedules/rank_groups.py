"""Each communication group of a set of ranks once: the walk every group-wide collective emission does."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

Group = tuple[int, ...]


def distinct_groups(ranks: Iterable[int], group_of: Callable[[int], Group],
                    members_of: Callable[[Group], list[int]]) -> Iterator[tuple[int, Group, list[int]]]:
    """(first rank, group, members) for each group of ``ranks`` once, in the order its first rank appears.

    ``group_of(rank)`` is the rank's group and ``members_of(group)`` the ranks of it that take part here (the
    simulated ones, or those among ``ranks``); a rank already seen as a member is skipped. Groups of one rank
    are yielded too: the caller decides what a lone rank does.
    """
    done: set[int] = set()
    for rank in ranks:
        if rank in done:
            continue
        group = group_of(rank)
        members = members_of(group)
        done.update(members)
        yield rank, group, members
