"""Bit widths per unit (block or matrix) under a parameter-weighted average budget that is never exceeded.

Every unit starts at the largest width of ``bit_choices`` that fits the budget; units are then raised to the
next width, one at a time in priority order, while the weighted average stays within ``bits``. The order is
what distinguishes the allocations:

* ``alpha``: lowest ESD score (α) first, so heavy-tailed, better-trained blocks get more bits (the
  AlphaPruning paper's appendix H.7 and its authors' rule: "higher precision for more important layers");
* ``uniform``: no preference. With ``bits`` one of the choices every unit gets exactly that width; with a
  budget between two widths, the raised units are spread evenly over the depth (golden-ratio order), the
  score-blind baseline at the same average.
"""

from __future__ import annotations

import math
from typing import Sequence

from ..errors import ConfigError
from ..options import BIT_ALLOCATIONS
from .spec import check_bit_width

GOLDEN = (math.sqrt(5) - 1) / 2


def check_bit_budget(bits: float, choices: Sequence[int], allocation: str) -> None:
    """Refuse a budget the choices cannot meet, before any slow work."""
    if not choices:
        raise ConfigError("bit_choices is empty; give the widths to choose from, e.g. (4, 8).")
    for width in choices:
        check_bit_width(width)
    if allocation not in BIT_ALLOCATIONS:
        raise ConfigError(f"Unknown bit_allocation {allocation!r}; choose one of {', '.join(BIT_ALLOCATIONS)}.")
    if not min(choices) <= bits <= max(choices):
        raise ConfigError(f"bits={bits} is outside bit_choices {tuple(choices)}; the average budget must lie "
                          f"between {min(choices)} and {max(choices)}.")


def priority(scores: Sequence[float] | None, count: int, allocation: str) -> list[int]:
    """Units in the order they are raised to more bits."""
    if allocation == "alpha":
        if scores is None:
            raise ValueError("the alpha bit allocation needs one score per unit")
        return sorted(range(count), key=lambda i: (scores[i], i))
    return sorted(range(count), key=lambda i: ((i * GOLDEN) % 1.0, i))


def allocate_bits(scores: Sequence[float] | None, counts: Sequence[int], bits: float, choices: Sequence[int],
                  allocation: str = "alpha") -> list[int]:
    """One width per unit; Σ counts·width <= bits·Σ counts exactly (integers, no rounding slack)."""
    check_bit_budget(bits, choices, allocation)
    widths = sorted(set(int(c) for c in choices))
    base = max(w for w in widths if w <= bits)
    higher = [w for w in widths if w > base]
    assigned = [base] * len(counts)
    if not higher:
        return assigned
    step = higher[0] - base
    total = sum(counts)
    # Integer arithmetic on bit counts: the budget in bits, rounded down, can never be exceeded.
    room = math.floor(bits * total + 1e-9) - base * total
    for unit in priority(scores, len(counts), allocation):
        cost = step * counts[unit]
        if cost <= room:
            assigned[unit] = higher[0]
            room -= cost
    return assigned


def average_bits(widths: Sequence[int], counts: Sequence[int]) -> float:
    total = sum(counts)
    return sum(w * c for w, c in zip(widths, counts)) / total if total else 0.0
