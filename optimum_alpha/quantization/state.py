"""The quantisation a model carries after pruning: each quantised matrix's grid, recorded on the model.

The block pipeline records a block's grids when it writes the block (under held interrupts), so the record
always matches the weights: blocks ``0..k-1`` of an interrupted run are quantised and recorded, the others
neither. The compressed-tensors writer reads it to pack the integer codes with the very scales used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .spec import QuantizedMatrix, QuantSpec

ATTRIBUTE = "alpha_quantization"


@dataclass
class MatrixGrid:
    """The grid of one quantised matrix: its spec and scales (the codes are the weight divided by them)."""

    spec: QuantSpec
    scales: torch.Tensor


def record_quantized(model: nn.Module, quantized: dict[str, QuantizedMatrix]) -> None:
    """Remember the grids of matrices just written (keyed by matrix name)."""
    grids = model.__dict__.setdefault(ATTRIBUTE, {})
    for name, result in quantized.items():
        grids[name] = MatrixGrid(result.spec, result.scales)


def recorded_grids(model: nn.Module) -> dict[str, MatrixGrid]:
    """Matrix name -> grid of every quantised matrix of ``model`` (empty for a float model)."""
    return dict(model.__dict__.get(ATTRIBUTE, {}))


def forget_quantization(model: nn.Module) -> None:
    model.__dict__.pop(ATTRIBUTE, None)
