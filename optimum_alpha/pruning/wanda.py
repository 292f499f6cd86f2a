"""Wanda (Sun et al., 2023): score |W_ij|·‖X_j‖₂ and remove the lowest scores within each output row."""

from __future__ import annotations

import torch

from .base import LayerPruner, register_pruner
from .masks import nm_mask, row_mask


@register_pruner("wanda")
class WandaPruner(LayerPruner):
    def __init__(self, layer, name: str) -> None:
        super().__init__(layer, name)
        self.squared_norms: torch.Tensor | None = None  # Σ over calibration tokens of X_j², per input feature
        self.tokens = 0

    def add_batch(self, inputs: torch.Tensor) -> None:
        flat = inputs.reshape(-1, inputs.shape[-1]).float()
        batch = flat.pow(2).sum(dim=0)
        self.squared_norms = batch if self.squared_norms is None else self.squared_norms + batch
        self.tokens += flat.shape[0]

    def prune(self, weight: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> torch.Tensor:
        if self.squared_norms is None:
            raise RuntimeError(f"Wanda needs calibration inputs for {self.name}, but none were recorded.")
        norms = self.squared_norms.to(weight.device).sqrt()
        scores = weight.abs().float() * norms[None, :]
        mask = nm_mask(scores, *nm) if nm else row_mask(scores, sparsity)
        return weight.masked_fill(mask, 0)

    def free(self) -> None:
        self.squared_norms = None
