"""Mask builders shared by the pruning methods: True marks a weight to remove.

Ties are broken by position (stable sort), so masks are deterministic across runs and thread counts.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError


def count_to_prune(total: int, sparsity: float) -> int:
    """Nearest whole number of weights to remove out of ``total``."""
    return int(round(total * sparsity))


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Remove the lowest-scoring ``sparsity`` fraction of every output row (Wanda's comparison group)."""
    k = count_to_prune(scores.shape[1], sparsity)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        order = torch.sort(scores, dim=1, stable=True).indices[:, :k]
        mask.scatter_(1, order, True)
    return mask


def matrix_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Remove the lowest-scoring ``sparsity`` fraction of the whole matrix (one threshold per matrix)."""
    k = count_to_prune(scores.numel(), sparsity)
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        order = torch.sort(scores.flatten(), stable=True).indices[:k]
        mask[order] = True
    return mask.view_as(scores)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest scores in every group of ``m`` consecutive input weights of a row."""
    rows, cols = scores.shape
    if not 0 < n < m:
        raise ConfigError(f"N:M needs 0 < N < M, got {n}:{m}.")
    if cols % m:
        raise ConfigError(
            f"N:M pattern {n}:{m} needs the input dimension to be a multiple of M, but it is {cols}; "
            "choose an M that divides it."
        )
    groups = scores.reshape(rows, cols // m, m)
    order = torch.sort(groups, dim=2, stable=True).indices[:, :, : m - n]
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, order, True)
    return mask.reshape(rows, cols)
