"""Wanda (Sun et al., 2023): score |W_ij|·‖X_j‖₂ and remove the lowest scores within each output row."""

from __future__ import annotations

import torch

from ..statistics import InputSquaredNorms
from .base import StatisticPruner, register_pruner
from .masks import nm_mask, row_mask


@register_pruner("wanda")
class WandaPruner(StatisticPruner):
    """Scores need only Σx² per input (float64), so calibration costs one vector per matrix."""

    def new_statistic(self) -> InputSquaredNorms:
        return InputSquaredNorms()

    def prune(self, weight: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> torch.Tensor:
        if not self.calibrated:
            raise RuntimeError(f"Wanda needs calibration inputs for {self.name}, but none were recorded.")
        scores = weight.abs().float() * self.statistic.norms(weight.device)[None, :]
        mask = nm_mask(scores, *nm) if nm else row_mask(scores, sparsity)
        return weight.masked_fill(mask, 0)
