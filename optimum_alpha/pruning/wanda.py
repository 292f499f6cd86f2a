"""Wanda (Sun et al., 2023): score |W_ij|·‖X_j‖₂ and remove the lowest scores within each output row."""

from __future__ import annotations

import torch

from ..statistics import InputSquaredNorms
from .base import LayerPruner, register_pruner
from .masks import nm_mask, row_mask


@register_pruner("wanda")
class WandaPruner(LayerPruner):
    def __init__(self, name: str, **options: object) -> None:
        super().__init__(name)
        self.statistic = InputSquaredNorms()

    def add_batch(self, inputs: torch.Tensor) -> None:
        self.statistic.add_batch(inputs)

    def partial_sums(self, width: int) -> list[torch.Tensor]:
        return self.statistic.partial_sums(width)

    def load_sums(self, sums: list[torch.Tensor]) -> None:
        self.statistic.load_sums(sums)

    @property
    def calibrated(self) -> bool:
        return self.statistic.sums is not None

    def prune(self, weight: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> torch.Tensor:
        if not self.calibrated:
            raise RuntimeError(f"Wanda needs calibration inputs for {self.name}, but none were recorded.")
        scores = weight.abs().float() * self.statistic.norms(weight.device)[None, :]
        mask = nm_mask(scores, *nm) if nm else row_mask(scores, sparsity)
        return weight.masked_fill(mask, 0)

    def free(self) -> None:
        self.statistic = InputSquaredNorms()
