"""Mixed N:M sparsity (AlphaPruning appendix H.6, after DominoSearch): one N per unit, chosen by the allocation.

Every unit (block, or matrix with ``granularity="matrix"``) keeps N of every M consecutive input weights,
with its own N in [1, M − 1]. The continuous allocation (uniform, AlphaPruning or OWL) says how many
weights each unit should keep, (1 − sᵢ)·M per group; those are rounded to integers and then adjusted one
step at a time, most under-served unit first, until the parameter-weighted kept fraction is as close to
1 − S as whole N allow. It is exact when (1 − S)·M·(number of equal-sized units) is an integer, e.g.
S = 0.5, 0.625 or 0.75 with M = 8.
"""

from __future__ import annotations

from typing import Sequence

from .errors import ConfigError
from .matrices import PrunableMatrix
from .pruning.masks import check_nm_columns


def check_mixed_sparsity(sparsity: float, m: int) -> None:
    """Every unit keeps between 1 and M − 1 weights per group, so S must lie in [1/M, (M − 1)/M]."""
    if not 1 / m - 1e-12 <= sparsity <= (m - 1) / m + 1e-12:
        raise ConfigError(
            f"Mixed N:{m} keeps 1 to {m - 1} weights per group of {m}, so sparsity must be in "
            f"[{1 / m:.4f}, {(m - 1) / m:.4f}], got {sparsity}; change sparsity or M."
        )


def mixed_nm_counts(unit_sparsities: Sequence[float], param_counts: Sequence[int], sparsity: float,
                    m: int) -> list[int]:
    """N per unit following the continuous allocation, with the total kept fraction closest to 1 − S."""
    check_mixed_sparsity(sparsity, m)
    if len(unit_sparsities) != len(param_counts):
        raise ConfigError(f"Got {len(unit_sparsities)} sparsities but {len(param_counts)} parameter counts.")
    wanted = [(1.0 - s) * m for s in unit_sparsities]
    counts = [min(m - 1, max(1, round(w))) for w in wanted]
    target = (1.0 - sparsity) * m * sum(param_counts)  # Σ dᵢ·Nᵢ that the budget asks for
    current = sum(d * n for d, n in zip(param_counts, counts))
    while True:
        step = 1 if current < target else -1
        movable = [i for i, n in enumerate(counts) if 1 <= n + step <= m - 1
                   and abs(current + step * param_counts[i] - target) < abs(current - target)]
        if not movable:
            return counts
        # Raise the unit furthest below what it wanted (or lower the one furthest above).
        chosen = max(movable, key=lambda i: step * (wanted[i] - counts[i]))
        counts[chosen] += step
        current += step * param_counts[chosen]


def check_nm_divisible(matrices: Sequence[PrunableMatrix], m: int) -> None:
    """Fail before anything is pruned when a matrix's input dimension is not a multiple of M."""
    for matrix in matrices:
        check_nm_columns(matrix.shape[1], (1, m), matrix.name)
