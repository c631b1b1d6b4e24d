"""Parsing and formatting of sizes: ``8k`` tokens, ``1M`` bytes, ``2,4,8`` lists.

Suffixes are binary, as in nccl-tests' ``-b 1M`` and the usual sequence-length convention
(design.md §4): ``k`` = 2**10, ``M`` = 2**20, ``G`` = 2**30, ``T`` = 2**40. So ``128k`` tokens is
131072 and ``1G`` bytes is 1073741824. Suffixes are case-insensitive; ``B`` and ``iB`` endings are
accepted (``4MiB``, ``4MB`` both mean 4·2**20).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fractions import Fraction

from tspsim.core.errors import TspsimError

_SUFFIX = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SIZE_RE = re.compile(r"^\s*(\d{1,30}(?:\.\d{1,30})?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE | re.ASCII)

MAX_SIZE = 2**50
"""Largest size accepted (1 PiB of bytes, ~10^15 tokens); larger values are typos."""
MAX_LIST_VALUE = 10**9
"""Largest value in a comma list of whole numbers (degrees, ranks)."""


def parse_size(text: str | int, what: str = "size") -> int:
    """Parse ``'128k'`` → 131072, ``'1M'`` → 1048576, ``'64'`` → 64.

    Raises:
        TspsimError: naming ``what`` and the accepted forms when the text is not a size.
    """
    if isinstance(text, int):
        if text < 0:
            raise TspsimError(f"{what} must not be negative, got {text}")
        if text > MAX_SIZE:
            raise TspsimError(f"{what} {text} is larger than the limit {MAX_SIZE} (2^50)")
        return text
    match = _SIZE_RE.match(str(text))
    if not match:
        shown = repr(str(text)) if len(str(text)) <= 40 else repr(str(text)[:37] + "...")
        raise TspsimError(
            f"invalid {what} {shown}: use a whole number with an optional binary suffix "
            "k, M, G or T (e.g. 8k, 128k, 1M, 4G)"
        )
    value = Fraction(match.group(1)) * _SUFFIX[match.group(2).lower()]
    if value.denominator != 1:
        raise TspsimError(f"invalid {what} {text!r}: it is not a whole number of units")
    if value > MAX_SIZE:
        raise TspsimError(f"{what} {text!r} is larger than the limit {MAX_SIZE} (2^50 = 1024T)")
    return int(value)


def parse_size_list(text: str, what: str = "size") -> list[int]:
    """Parse a comma list of sizes: ``'16k,32k'`` → ``[16384, 32768]``; empty lists are errors."""
    items = [item for item in str(text).split(",") if item.strip()]
    if not items:
        raise TspsimError(f"empty {what} list {text!r}: give at least one value, e.g. 8k,16k")
    return [parse_size(item, what) for item in items]


def parse_int_list(text: str, what: str = "value", minimum: int = 1) -> list[int]:
    """Parse ``'2,4,8'`` → ``[2, 4, 8]`` (whole numbers ≥ ``minimum``, no suffixes)."""
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise TspsimError(f"empty {what} list {text!r}: give at least one value, e.g. 2,4,8")
    out = []
    for item in items:
        if not (item.isascii() and item.isdigit()) or len(item) > 10 or not minimum <= int(item) <= MAX_LIST_VALUE:
            kind = "a positive whole number" if minimum == 1 else f"a whole number ≥ {minimum}"
            shown = item if len(item) <= 20 else item[:17] + "..."
            raise TspsimError(f"invalid {what} {shown!r}: expected {kind} (at most {MAX_LIST_VALUE:,})")
        out.append(int(item))
    return out


def format_bytes(n: float) -> str:
    """Format a byte count the way nccl-tests prints sizes: ``1048576`` → ``'1M'``."""
    for suffix, scale in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if n >= scale and n % scale == 0:
            return f"{int(n // scale)}{suffix}"
    return f"{int(n)}"


def format_tokens(n: int) -> str:
    """Format a token count: ``131072`` → ``'128k'``."""
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}k"
    return str(n)


def format_ranks(ranks: Iterable[int], max_chars: int = 0) -> str:
    """``0-7,16`` style text for a set of ranks; cut to ``max_chars`` with ``...`` when > 0."""
    rs = sorted(set(ranks))
    parts: list[str] = []
    i = 0
    while i < len(rs):
        j = i
        while j + 1 < len(rs) and rs[j + 1] == rs[j] + 1:
            j += 1
        parts.append(f"{rs[i]}-{rs[j]}" if j > i else str(rs[i]))
        i = j + 1
    text = ",".join(parts)
    return text[: max_chars - 3] + "..." if 0 < max_chars < len(text) else text
