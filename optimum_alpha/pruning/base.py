"""The interface every within-layer pruning method implements, and the registry that names them."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError


class LayerPruner:
    """Prunes one Linear/Conv1D layer to a given sparsity.

    The pipeline calls :meth:`add_batch` with the layer's inputs for every calibration sample (only when
    ``needs_calibration``), then :meth:`prune` once. ``prune`` returns the new (out, in) weight matrix,
    which the pipeline writes back wherever the layer lives (in memory, CPU offload or disk offload).
    """

    needs_calibration: bool = True

    def __init__(self, layer: nn.Module, name: str) -> None:
        self.layer = layer
        self.name = name

    def add_batch(self, inputs: torch.Tensor) -> None:
        """Accumulate statistics of one batch of inputs, shape (..., in_features)."""

    def prune(self, weight: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> torch.Tensor:
        """Return the pruned copy of ``weight`` (out, in), same dtype."""
        raise NotImplementedError

    def free(self) -> None:
        """Drop accumulated statistics."""


PRUNERS: dict[str, type[LayerPruner]] = {}


def register_pruner(name: str) -> Callable[[type[LayerPruner]], type[LayerPruner]]:
    def decorator(cls: type[LayerPruner]) -> type[LayerPruner]:
        PRUNERS[name] = cls
        return cls

    return decorator


def get_pruner_class(name: str) -> type[LayerPruner]:
    if name not in PRUNERS:
        raise ConfigError(f"Unknown pruning method {name!r}; available: {', '.join(sorted(PRUNERS))}.")
    return PRUNERS[name]
