"""DLP (Chen et al., ICML 2025, "Dynamic Layerwise Pruning"): block sparsity from weights and input activations.

A block's *unimportance* U is the median, over all its prunable weights pooled, of the Wanda score
|W_ij|·‖X_j‖ (‖X_j‖: root-mean-square of input feature j over the calibration tokens of the dense model, as
the authors' ``scaler_row``). Its importance is I = 1 − U / Σ U over the blocks; with
I′ = (I − I_min)/(I_max − I_min)·2α the block sparsity is S + mean(I′) − I′ (the authors' rule; α = 0.15 their
default). So a block whose median score is *high* is pruned *more*. Here, as for OWL, the parameter-weighted
total is made exact and every block is bounded to [0, max_sparsity].

The scores come from one dense sequential pass over the blocks (each block sees the dense outputs of the one
before), the pass OWL uses.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .calibration import BlockInputs
from .errors import ConfigError
from .matrices import PrunableMatrix
from .owl import collect_block_scores, spread_allocation
from .options import default
from .statistics import InputSquaredNorms

DLP_ALPHA = default("dlp_alpha")  # the authors' default α (half-width of the sparsity spread)


def check_dlp_alpha(alpha: float) -> None:
    if not 0 <= alpha <= 0.5:
        raise ConfigError(f"dlp_alpha (half-width of DLP's sparsity spread) must be in [0, 0.5], got {alpha}; "
                          f"DLP uses {DLP_ALPHA}.")

def wanda_scores(matrix: PrunableMatrix, statistic: InputSquaredNorms) -> torch.Tensor:
    """|W|·‖X‖ with ‖X_j‖ the per-token RMS of input feature j (the authors' sqrt of ``scaler_row``)."""
    weight = matrix.read()
    rms = (statistic.sums.to(weight.device) / max(statistic.tokens, 1)).sqrt().float()  # type: ignore[union-attr]
    return weight.abs().float() * rms[None, :]


def block_unimportance(matrices: Sequence[PrunableMatrix], statistics: dict[str, InputSquaredNorms]) -> float:
    """The median Wanda score of the block (all matrices pooled). Expert matrices no calibration token reached
    have no statistic and are left out; a block with none scores 0."""
    seen = [m for m in matrices if statistics[m.name].sums is not None]
    if not seen:
        return 0.0
    pooled = torch.cat([wanda_scores(m, statistics[m.name]).flatten().cpu() for m in seen])
    return float(torch.median(pooled))


def collect_unimportance(blocks: Sequence[nn.Module], block_matrices: Sequence[Sequence[PrunableMatrix]],
                         inputs: BlockInputs, show_progress: bool = False) -> list[float]:
    """One dense pass: each block's unimportance U; ``inputs`` ends holding the last block's outputs."""
    return collect_block_scores(blocks, block_matrices, inputs, block_unimportance, "DLP scores", show_progress)


def dlp_importance(unimportance: Sequence[float]) -> list[float]:
    """I = 1 − U / Σ U (all equal when Σ U is 0)."""
    total = float(sum(unimportance))
    if total <= 0:
        return [1.0] * len(unimportance)
    return [1.0 - u / total for u in unimportance]


def dlp_allocation(unimportance: Sequence[float], param_counts: Sequence[int], sparsity: float,
                   alpha: float = DLP_ALPHA, max_sparsity: float = 0.99) -> list[float]:
    """Block sparsities from DLP's unimportance scores: the authors' rule, then an exact parameter-weighted total
    within [0, max_sparsity]."""
    check_dlp_alpha(alpha)
    if any(not u >= 0 for u in unimportance):
        raise ConfigError("DLP unimportance scores must be >= 0 (medians of |W|·‖X‖).")
    return spread_allocation(dlp_importance(unimportance), param_counts, sparsity, alpha, max_sparsity)
