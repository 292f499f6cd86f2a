"""Mask builders shared by the pruning methods: True marks a weight to remove.

Ties are broken by position, so masks are deterministic across runs and thread counts.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError


def count_to_prune(total: int, sparsity: float) -> int:
    """Nearest whole number of weights to remove out of ``total``."""
    return int(round(total * sparsity))


def _lowest_per_row(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the ``k`` lowest scores of every row, ties taken in position order.

    Same result as a stable sort's first ``k``, but through a selection (``kthvalue``, linear time): the
    ``k``-th value is the threshold, everything strictly below it goes, and the remaining slots go to the
    first entries equal to it.
    """
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    threshold = _kth_smallest(scores, k)
    below = scores < threshold
    ties = scores == threshold
    slots = k - below.sum(dim=1, keepdim=True)
    if bool((ties.sum(dim=1, keepdim=True) == slots).all()):  # usual case: no tie to split, skip the scan
        return below | ties
    return below | (ties & (torch.cumsum(ties, dim=1) <= slots))


def _kth_smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th smallest score of every row, shape (rows, 1). On CPU NumPy's introselect is several times
    faster than ``torch.kthvalue`` (ALPS projects a whole matrix every iteration)."""
    if scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.float64):
        values = np.partition(scores.detach().numpy(), k - 1, axis=1)[:, k - 1 : k]
        return torch.from_numpy(np.ascontiguousarray(values))
    return torch.kthvalue(scores, k, dim=1, keepdim=True).values


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Remove the lowest-scoring ``sparsity`` fraction of every output row (Wanda's comparison group)."""
    return _lowest_per_row(scores, count_to_prune(scores.shape[1], sparsity))


def matrix_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Remove the lowest-scoring ``sparsity`` fraction of the whole matrix (one threshold per matrix)."""
    flat = scores.reshape(1, -1)
    return _lowest_per_row(flat, count_to_prune(flat.shape[1], sparsity)).view_as(scores)


def check_nm_columns(columns: int, nm: tuple[int, int] | None, name: str,
                     fix: str = "choose an M that divides it (4 and 8 fit most models)") -> None:
    """Fail before any work when an input dimension cannot hold whole groups of M (the one N:M divisibility
    check: layer pruners, the pipeline before block 0 and width pruning followed by N:M all call it)."""
    if nm is not None and columns % nm[1]:
        raise ConfigError(
            f"N:M with M = {nm[1]} needs the input dimension to be a multiple of M, but {name} has {columns}; {fix}."
        )


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest scores in every group of ``m`` consecutive input weights of a row."""
    rows, cols = scores.shape
    if not 0 < n < m:
        raise ConfigError(f"N:M needs 0 < N < M, got {n}:{m}.")
    check_nm_columns(cols, (n, m), "it")
    groups = scores.reshape(rows, cols // m, m)
    order = torch.sort(groups, dim=2, stable=True).indices[:, :, : m - n]
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, order, True)
    return mask.reshape(rows, cols)
