"""Per-matrix target sparsities: the registered allocation, then the N:M constraints on top.

A fixed ``nm="N:M"`` pattern sets every target to 1 - N/M (no allocation runs); ``nm="mixed:M"`` caps every
unit at (M-1)/M for the allocation and rounds its answer to one whole N per unit with the exact budget.
"""

from __future__ import annotations

from typing import Any, Sequence

from .allocations import Allocated, AllocationInputs, get_allocation
from .matrices import BlockWeights, PrunableMatrix
from .nm import check_nm_divisible, mixed_nm_counts
from .state import ModelState


def sparsity_cap(config: Any) -> float | None:
    """The most sparsity any unit may get: ``max_sparsity``, at most (M-1)/M under mixed N:M (one weight per
    group is kept), None under a fixed N:M pattern (the pattern decides)."""
    if config.nm_pattern is not None:
        return None
    m = config.nm_mixed_group
    return float(config.max_sparsity) if m is None else min(float(config.max_sparsity), (m - 1) / m)


def compute_targets(state: ModelState, config: Any, blocks: Sequence[BlockWeights] | None = None,
                    show_progress: bool = False) -> Allocated:
    """Target sparsity of every prunable matrix and the block scores behind them."""
    blocks = list(blocks) if blocks is not None else state.block_weights(config)
    matrices = [m for block in blocks for m in block.matrices]
    if config.nm_group is not None:
        check_nm_divisible(matrices, config.nm_group)
    if config.nm_pattern is not None:
        n, m = config.nm_pattern
        return Allocated({matrix.name: 1.0 - n / m for matrix in matrices}, [None] * len(state.blocks))
    allocation = get_allocation(config.allocation)
    purpose = f"The {config.allocation!r} allocation"
    inputs = AllocationInputs(
        config=config, blocks=blocks, block_modules=state.blocks, max_sparsity=sparsity_cap(config),
        show_progress=show_progress, spectra=lambda: state.spectra(config, show_progress),
        calibration=lambda: state.calibration_inputs(config, purpose)[0],
    )
    result = allocation().allocate(inputs)
    if config.nm_mixed_group is not None:
        result.per_matrix = round_to_mixed_nm(result.per_matrix, matrices, config)
    return result


def round_to_mixed_nm(targets: dict[str, float], matrices: Sequence[PrunableMatrix], config: Any) -> dict[str, float]:
    """Turn continuous targets into one whole N per unit (block or matrix) with the exact budget."""
    m = config.nm_mixed_group
    unit_of = {mat.name: (mat.block_index if config.granularity == "block" else mat.name) for mat in matrices}
    sizes: dict[Any, int] = {}
    wanted: dict[Any, float] = {}
    for matrix in matrices:
        unit = unit_of[matrix.name]
        sizes[unit] = sizes.get(unit, 0) + matrix.numel
        wanted.setdefault(unit, targets[matrix.name])
    units = list(sizes)
    counts = mixed_nm_counts([wanted[u] for u in units], [sizes[u] for u in units], config.sparsity, m)
    n_of = dict(zip(units, counts))
    return {matrix.name: 1.0 - n_of[unit_of[matrix.name]] / m for matrix in matrices}
