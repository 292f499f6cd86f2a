"""Magnitude pruning: remove the smallest |W| with one threshold per matrix (as the AlphaPruning reference)."""

from __future__ import annotations

import torch

from .base import LayerPruner, register_pruner
from .masks import matrix_mask, nm_mask


@register_pruner("magnitude")
class MagnitudePruner(LayerPruner):
    needs_calibration = False

    def prune(self, weight: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> torch.Tensor:
        scores = weight.abs().float()
        mask = nm_mask(scores, *nm) if nm else matrix_mask(scores, sparsity)
        return weight.masked_fill(mask, 0)
