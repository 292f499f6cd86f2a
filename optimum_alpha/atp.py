"""ATP (Huang et al., ICML 2025, "Determining Layer-wise Sparsity for LLMs Through a Theoretical Perspective").

Pruning errors of early blocks propagate and grow through the later ones ("reconstruction error explosion"),
so block sparsity should increase monotonically with depth, as an arithmetic progression: block l (0-based)
gets S + β·(l − c), one common difference β for the model, c such that the total is S. β is the method's only
hyper-parameter, searched on held-out data (``atp_beta="auto"``, like ``epsilon="auto"``).

Here c is solved so that the *parameter-weighted* total is exactly S (for blocks of equal size that is the
paper's (L − 1)/2), and blocks past [0, max_sparsity] are pinned to the bound with the others moved by a common
offset: the sparsities stay non-decreasing with depth and the budget stays exact.
"""

from __future__ import annotations

import math
from typing import Sequence

from .allocation import check_sparsity, fit_to_budget
from .errors import ConfigError
from .options import AUTO, default

ATP_BETA_GRID = default("atp_beta_grid")


def check_atp_options(beta: float | str, grid: tuple[float, ...]) -> None:
    """``atp_beta`` is a step in [0, 1) or ``"auto"``, and ``atp_beta_grid`` holds at least one step."""
    if beta != AUTO:
        if isinstance(beta, str):
            raise ConfigError(f"atp_beta must be a number in [0, 1) or 'auto', got {beta!r}.")
        check_atp_beta(float(beta))
    if not grid:
        raise ConfigError("atp_beta_grid is empty; give at least one β, e.g. (0.0025, 0.005, 0.01).")
    for value in grid:
        check_atp_beta(float(value))


def check_atp_beta(beta: float) -> None:
    if not (math.isfinite(beta) and 0 <= beta < 1):
        raise ConfigError(f"atp_beta (ATP's common difference between consecutive blocks) must be in [0, 1), got "
                          f"{beta}; e.g. 0.005, or 'auto' to search atp_beta_grid on held-out data.")


def atp_allocation(param_counts: Sequence[int], sparsity: float, beta: float,
                   max_sparsity: float = 0.99) -> list[float]:
    """Block sparsities S + β·l + c in block order, c making the parameter-weighted total exact."""
    check_sparsity(sparsity, max_sparsity)
    check_atp_beta(beta)
    if len(param_counts) == 0:
        raise ConfigError("Nothing to allocate: no blocks were given.")
    if sparsity == 0:
        return [0.0] * len(param_counts)
    return fit_to_budget([beta * index for index in range(len(param_counts))], param_counts, sparsity,
                         max_sparsity, mode="shift")
