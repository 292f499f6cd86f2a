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

from typing import Sequence

import torch
from accelerate.utils import align_module_device
from torch import nn
from tqdm.auto import tqdm

from .allocation import check_sparsity, fit_to_budget
from .calibration import BlockInputs, run_block
from .configuration import check_owl_lambda
from .errors import ConfigError
from .model_utils import find_prunable_layers, weight_matrix


def _wanda_scores(layer: nn.Module, squared_norms: torch.Tensor) -> torch.Tensor:
    with align_module_device(layer):
        weight = weight_matrix(layer)
        return weight.abs().float() * squared_norms.to(weight.device).sqrt()[None, :]


def block_outlier_ratio(layers: dict[str, nn.Module], squared_norms: dict[str, torch.Tensor],
                        threshold: float) -> float:
    """Share of the block's Wanda scores (all layers pooled) above ``threshold`` × their mean.

    Scores are computed twice, once for the mean and once for the count, so that only one layer's scores
    exist at a time (a 70B block would otherwise need gigabytes for them).
    """
    total, count = 0.0, 0
    for name, layer in layers.items():
        scores = _wanda_scores(layer, squared_norms[name])
        total += float(scores.sum(dtype=torch.float64))
        count += scores.numel()
    cutoff = threshold * total / count
    above = sum(int((_wanda_scores(layer, squared_norms[name]) > cutoff).sum())
                for name, layer in layers.items())
    return above / count


@torch.no_grad()
def collect_outlier_ratios(blocks: Sequence[nn.Module], inputs: BlockInputs, threshold: float,
                           show_progress: bool = False) -> list[float]:
    """One dense pass: for each block, the outlier ratio D; ``inputs`` ends holding the last block's outputs."""
    ratios = []
    for index, block in enumerate(tqdm(blocks, desc="OWL outliers", unit="block", disable=not show_progress)):
        layers = find_prunable_layers(block, index)
        norms: dict[str, torch.Tensor] = {}

        def make_hook(name: str):
            def hook(module: nn.Module, args: tuple, output: object) -> None:
                x = args[0].detach()
                batch = x.reshape(-1, x.shape[-1]).float().pow(2).sum(dim=0)
                norms[name] = batch if name not in norms else norms[name] + batch

            return hook

        handles = [layer.register_forward_hook(make_hook(name)) for name, layer in layers.items()]
        try:
            outputs = run_block(block, inputs)
        finally:
            for handle in handles:
                handle.remove()
        ratios.append(block_outlier_ratio(layers, norms, threshold))
        inputs.hidden_states = outputs
    return ratios


def owl_allocation(outlier_ratios: Sequence[float], param_counts: Sequence[int], sparsity: float,
                   lam: float = 0.08, max_sparsity: float = 0.99) -> list[float]:
    """Block sparsities from outlier ratios: OWL's rule, then an exact parameter-weighted total within bounds."""
    check_sparsity(sparsity, max_sparsity)
    check_owl_lambda(lam)
    if len(outlier_ratios) == 0:
        raise ConfigError("Nothing to allocate: no blocks were given.")
    if sparsity == 0:
        return [0.0] * len(outlier_ratios)
    low, high = min(outlier_ratios), max(outlier_ratios)
    spread = [0.0 if high == low else (d - low) / (high - low) * 2 * lam for d in outlier_ratios]
    mean = sum(spread) / len(spread)
    owl = [sparsity + mean - d for d in spread]
    # A common offset (0 when blocks have equal sizes and no bound is hit, i.e. OWL's values exactly) makes
    # the parameter-weighted total exact; units past [0, max_sparsity] are pinned and the rest absorb it.
    return fit_to_budget(owl, param_counts, sparsity, max_sparsity, mode="shift")
