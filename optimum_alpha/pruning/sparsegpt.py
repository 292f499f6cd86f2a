"""SparseGPT (Frantar & Alistarh, 2023): prune column by column and update the remaining columns to
compensate, using the inverse Hessian H⁻¹ of the layer-wise reconstruction loss ‖WX − ŴX‖².

For a Linear layer, H = 2·XᵀX/n over the n calibration tokens. Going over the columns j in order, the
error of zeroing weights in column j, divided by [H⁻¹]_jj, is spread onto the columns not yet visited
through row j of the upper Cholesky factor of H⁻¹ (the paper's OBS update). Which weights go is chosen
adaptively per block of ``blocksize`` columns by the OBS saliency w²/[H⁻¹]²_jj of the already updated
weights; updates to later blocks are applied lazily, once per block.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..errors import ConfigError
from .base import register_pruner
from .gram import GramPruner, check_percdamp, damped_hessian
from .masks import check_nm_columns, count_to_prune, nm_mask


@register_pruner("sparsegpt")
class SparseGPTPruner(GramPruner):
    """Accumulates the layer Hessian over the calibration tokens, then prunes with OBS updates."""

    options = ("percdamp", "blocksize")
    gram_factor = 2.0  # the Hessian H = 2·XᵀX/n
    joint_quantisation = True  # its sweep can round the kept weights as it goes (``joint_quantisation=True``)

    @classmethod
    def check_config(cls, config: object) -> None:
        check_percdamp(config.percdamp)  # type: ignore[attr-defined]
        if config.blocksize < 1:  # type: ignore[attr-defined]
            raise ConfigError(f"blocksize must be >= 1, got {config.blocksize}.")  # type: ignore[attr-defined]

    def __init__(self, name: str, percdamp: float = 0.01, blocksize: int = 128, **options: object) -> None:
        super().__init__(name)
        self.percdamp = float(percdamp)
        self.blocksize = int(blocksize)
    @property
    def hessian(self) -> torch.Tensor | None:
        """H = 2·XᵀX/n over the n calibration tokens, float32, (in, in)."""
        return self.gram

    def prune(self, weight: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> torch.Tensor:
        if self.hessian is None:
            raise RuntimeError(f"SparseGPT needs calibration inputs for {self.name}, but none were recorded.")
        rows, cols = weight.shape
        check_nm_columns(cols, nm, self.name)
        w = weight.detach().to(device=self.hessian.device, dtype=torch.float32).clone()
        inverse_factor = inverse_hessian_factor(self.hessian, w, self.percdamp, self.name)
        pruned = obs_columns(w, inverse_factor, self.blocksize, sparsity, nm)
        return pruned.to(device=weight.device, dtype=weight.dtype)


class ColumnQuantiser(Protocol):
    """Rounds each column onto an integer grid during the OBS sweep (joint prune + quantise, or GPTQ)."""

    group_size: int | None

    def start_group(self, column: int, values: torch.Tensor) -> None:
        """Fix the scales of the group starting at ``column`` from its current kept ``values``."""

    def quantise(self, column: int, values: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
        """The dequantised value of column ``column`` (float32; ``pruned`` entries are already 0)."""


def inverse_hessian_factor(hessian: torch.Tensor, w: torch.Tensor, percdamp: float, name: str) -> torch.Tensor:
    """Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU), after handling dead inputs and dampening H; the
    working copy ``w`` loses the dead inputs' columns too."""
    h, dampened = damped_hessian(hessian, w, percdamp)
    w.copy_(dampened)
    try:
        lower = torch.linalg.cholesky(h)
    except torch.linalg.LinAlgError as err:
        raise ConfigError(
            f"The Hessian of {name} is not positive definite even after dampening with "
            f"percdamp={percdamp}; raise percdamp (e.g. 0.1) or use more calibration samples."
        ) from err
    h_inv = torch.cholesky_inverse(lower)
    return torch.linalg.cholesky(h_inv, upper=True)


def obs_columns(
    w: torch.Tensor, u: torch.Tensor, blocksize: int, sparsity: float = 0.0, nm: tuple[int, int] | None = None,
    fixed_mask: torch.Tensor | None = None, quantiser: ColumnQuantiser | None = None,
) -> torch.Tensor:
    """The OBS column sweep of SparseGPT (and GPTQ): each column's pruning (and rounding) error, divided by
    [H⁻¹]_jj, is spread onto the columns not yet visited.

    Which weights go is chosen per block by saliency (``sparsity`` / ``nm``), or given by ``fixed_mask``
    (True = pruned; GPTQ after Wanda or magnitude). A pruned weight is set to 0 when its column is visited,
    so updates never revive it. With ``quantiser`` each kept column is rounded onto its grid before its
    error is propagated: SparseGPT's joint prune + quantise, or mask-preserving GPTQ.
    """
    rows, cols = w.shape
    block = blocksize
    for unit in (nm[1] if nm else None, quantiser.group_size if quantiser else None):
        if unit:  # N:M groups and scale groups must not straddle two blocks
            block = -(-block // unit) * unit
    total_to_prune = count_to_prune(rows * cols, sparsity)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        w_block = w[:, start:end].clone()
        u_block = u[start:end, start:end]
        diag = torch.diag(u_block)
        errors = torch.zeros_like(w_block)
        mask = torch.zeros_like(w_block, dtype=torch.bool)
        if fixed_mask is not None:
            mask = fixed_mask[:, start:end].clone()
        elif nm is None:
            # Per-block counts from a cumulative rounding, so the blocks add up to the exact total.
            before = count_to_prune(rows * start, sparsity) if start else 0
            after = total_to_prune if end == cols else count_to_prune(rows * end, sparsity)
            mask = _lowest(w_block.pow(2) / diag.pow(2)[None, :], after - before)
        for j in range(end - start):
            if fixed_mask is None and nm is not None and j % nm[1] == 0:
                group = slice(j, j + nm[1])
                saliency = w_block[:, group].pow(2) / diag[group].pow(2)[None, :]
                mask[:, group] = nm_mask(saliency, *nm)
            column = w_block[:, j]
            kept = column.masked_fill(mask[:, j], 0.0)
            if quantiser is not None:
                size = quantiser.group_size
                if size and (start + j) % size == 0:
                    group = slice(j, j + size)
                    quantiser.start_group(start + j, w_block[:, group].masked_fill(mask[:, group], 0.0))
                kept = quantiser.quantise(start + j, kept, mask[:, j])
            error = (column - kept) / diag[j]
            # OBS update of the columns to the right of j within the block.
            w_block[:, j:].sub_(error[:, None] * u_block[j, j:][None, :])
            w_block[:, j] = kept
            errors[:, j] = error
        w[:, start:end] = w_block
        # Lazy batch update of every later column with this block's accumulated errors.
        w[:, end:].sub_(errors @ u[start:end, end:])
    return w


def _lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Mask of the ``count`` lowest scores of the matrix (ties broken by position)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if count > 0:
        mask[torch.sort(scores.flatten(), stable=True).indices[:count]] = True
    return mask.view_as(scores)
