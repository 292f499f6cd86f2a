"""OWL (Yin et al., 2023) as an allocation: blocks with more activation outliers keep more weights.

Outlier ratio D of a block: over all its Linear layers together, the share of Wanda scores
|W_ij|·‖X_j‖₂ (X: the dense model's inputs to the layer) above M times their mean. With
D′ = (D − D_min)/(D_max − D_min)·2λ, block sparsity is S + mean(D′) − D′ (OWL's rule). OWL only matches the
unweighted mean and does not bound the result; here the parameter-weighted total is made exact and the
sparsities are bounded to [0, max_sparsity] with the same redistribution as the AlphaPruning allocation.

The statistics come from one sequential pass over the dense blocks (the design of the pruning pass), so no
second copy of the model is needed: each block sees the dense outputs of the block before it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .allocation import check_sparsity, fit_to_budget
from .calibration import BlockInputs
from .distributed import current as current_parallel
from .errors import ConfigError
from .matrices import PrunableMatrix
from .statistics import InputSquaredNorms, collect_block_statistics


def check_owl_threshold(threshold: float) -> None:
    if not threshold > 0:
        raise ConfigError(f"owl_threshold (OWL's M) must be > 0, got {threshold}; the OWL paper uses 5.")


def check_owl_lambda(lam: float) -> None:
    if not 0 <= lam <= 0.5:
        raise ConfigError(
            f"owl_lambda (half-width of OWL's sparsity spread) must be in [0, 0.5], got {lam}; OWL uses 0.08."
        )


def _wanda_scores(matrix: PrunableMatrix, statistic: InputSquaredNorms) -> torch.Tensor:
    weight = matrix.read()
    return weight.abs().float() * statistic.norms(weight.device)[None, :]


def block_outlier_ratio(matrices: Sequence[PrunableMatrix], statistics: dict[str, InputSquaredNorms],
                        threshold: float) -> float:
    """Share of the block's Wanda scores (all matrices pooled) above ``threshold`` × their mean.

    Scores are computed twice, once for the mean and once for the count, so that only one matrix's scores
    exist at a time (a 70B block would otherwise need gigabytes for them). Expert matrices that no
    calibration token reached have no activation statistic and are left out.
    """
    seen = [m for m in matrices if statistics[m.name].sums is not None]
    total, count = 0.0, 0
    for matrix in seen:
        scores = _wanda_scores(matrix, statistics[matrix.name])
        total += float(scores.sum(dtype=torch.float64))
        count += scores.numel()
    if count == 0:
        return 0.0
    cutoff = threshold * total / count
    above = sum(int((_wanda_scores(m, statistics[m.name]) > cutoff).sum()) for m in seen)
    return above / count


BlockScore = Callable[[Sequence[PrunableMatrix], dict[str, InputSquaredNorms]], float]


@torch.no_grad()
def collect_block_scores(blocks: Sequence[nn.Module], block_matrices: Sequence[Sequence[PrunableMatrix]],
                         inputs: BlockInputs, score: BlockScore, desc: str = "Block scores",
                         show_progress: bool = False) -> list[float]:
    """One dense pass: for each block, ``score(matrices, input statistics)``; ``inputs`` ends holding the last
    block's outputs. Shared by the allocations that score blocks from weights and activations (OWL, DLP)."""
    scores = []
    parallel = current_parallel()
    for index, block in enumerate(tqdm(blocks, desc=desc, unit="block",
                                       disable=not show_progress or not parallel.is_main)):
        statistics = {m.name: InputSquaredNorms() for m in block_matrices[index]}
        with parallel.step(f"scoring block {index}"):
            outputs = collect_block_statistics(block, index, block_matrices[index], statistics, inputs,
                                               keep_outputs=True)
        parallel.sum_statistics([(statistics[m.name], m.shape[1]) for m in block_matrices[index]])
        scores.append(score(block_matrices[index], statistics))
        inputs.hidden_states = outputs
    return scores


def collect_outlier_ratios(blocks: Sequence[nn.Module], block_matrices: Sequence[Sequence[PrunableMatrix]],
                           inputs: BlockInputs, threshold: float, show_progress: bool = False) -> list[float]:
    """One dense pass: for each block, the outlier ratio D; ``inputs`` ends holding the last block's outputs."""
    return collect_block_scores(blocks, block_matrices, inputs,
                                lambda matrices, stats: block_outlier_ratio(matrices, stats, threshold),
                                "OWL outliers", show_progress)


def spread_allocation(values: Sequence[float], param_counts: Sequence[int], sparsity: float, half_width: float,
                      max_sparsity: float = 0.99) -> list[float]:
    """OWL's rule on any per-block value v: with v′ = (v − v_min)/(v_max − v_min)·2λ, sparsity S + mean(v′) − v′
    (higher value, lower sparsity), then an exact parameter-weighted total within [0, max_sparsity]."""
    check_sparsity(sparsity, max_sparsity)
    if len(values) == 0:
        raise ConfigError("Nothing to allocate: no blocks were given.")
    if sparsity == 0:
        return [0.0] * len(values)
    low, high = min(values), max(values)
    spread = [0.0 if high == low else (v - low) / (high - low) * 2 * half_width for v in values]
    mean = sum(spread) / len(spread)
    levels = [sparsity + mean - v for v in spread]
    # A common offset (0 when blocks have equal sizes and no bound is hit, i.e. the rule's values exactly) makes
    # the parameter-weighted total exact; units past [0, max_sparsity] are pinned and the rest absorb it.
    return fit_to_budget(levels, param_counts, sparsity, max_sparsity, mode="shift")


def owl_allocation(outlier_ratios: Sequence[float], param_counts: Sequence[int], sparsity: float,
                   lam: float = 0.08, max_sparsity: float = 0.99) -> list[float]:
    """Block sparsities from outlier ratios: OWL's rule, then an exact parameter-weighted total within bounds."""
    check_owl_lambda(lam)
    return spread_allocation(outlier_ratios, param_counts, sparsity, lam, max_sparsity)
