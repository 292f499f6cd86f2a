"""Which heads and channels go: calibration statistics of the consuming matrix's inputs.

For a consumer ``W`` (``o_proj`` or ``down_proj``) with inputs ``X`` (one column per calibration token), the
Gram matrix ``G = X Xᵀ`` gives the energy each input group contributes to the block output exactly:
``‖W_S X_S‖²_F = trace(W_S G_SS W_Sᵀ)``. For one MLP channel that is ``‖x_c‖² · ‖W[:, c]‖²`` (the squared
activation-weighted norm); for a head it also counts the correlations inside the head. The same ``G``
drives the least-squares refit (:mod:`.refit`), so one pass over the dense block serves both.
"""

from __future__ import annotations

import torch
from torch import nn

from .layout import BlockLayout, WidthPlan


class GramCollector:
    """Accumulates ``Σ x xᵀ`` (float32) of a Linear layer's inputs through a forward hook."""

    def __init__(self, module: nn.Linear) -> None:
        self.gram: torch.Tensor | None = None
        self.tokens = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output: object) -> None:
        x = args[0].detach()
        x = x.reshape(-1, x.shape[-1]).float()
        batch = x.T @ x
        self.gram = batch if self.gram is None else self.gram.add_(batch)
        self.tokens += x.shape[0]

    def partial_sums(self, width: int) -> list[torch.Tensor]:
        """Σ x xᵀ (float64; zeros when no token was seen) and the token count, for a sum over ranks."""
        gram = self.gram.double() if self.gram is not None else torch.zeros(width, width, dtype=torch.float64)
        return [gram, torch.tensor([float(self.tokens)], dtype=torch.float64)]

    def load_sums(self, sums: list[torch.Tensor]) -> None:
        self.tokens = int(round(float(sums[1])))
        device = self.gram.device if self.gram is not None else None
        self.gram = sums[0].to(device=device, dtype=torch.float32) if self.tokens else None

    def close(self) -> None:
        """Stop collecting (the Gram matrix stays in ``gram``)."""
        self._handle.remove()


def group_energy(weight: torch.Tensor, gram: torch.Tensor, group: int) -> torch.Tensor:
    """``trace(W_g G_gg W_gᵀ)`` for every run of ``group`` consecutive input columns of ``weight``."""
    w = weight.float().to(gram.device)
    n = w.shape[1] // group
    energies = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        cols = slice(i * group, (i + 1) * group)
        wg = w[:, cols]
        energies[i] = float(((wg @ gram[cols, cols]) * wg).sum(dtype=torch.float64))
    return energies


def channel_energy(weight: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``‖x_c‖² · ‖W[:, c]‖²`` per input channel (the squared activation-weighted norm)."""
    return gram.diagonal().double().cpu() * weight.double().pow(2).sum(dim=0).cpu()


def top_sorted(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` largest scores, ascending (so kept heads stay in their groups' order)."""
    return torch.topk(scores, keep).indices.sort().values


def select_heads(layout: BlockLayout, plan: WidthPlan, o_weight: torch.Tensor, o_gram: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept query heads, kept key/value heads): the same count of the most salient heads in every group,
    or the most salient whole groups with ``plan.prune_kv_groups``."""
    g, kv = layout.group_size, layout.width.num_key_value_heads
    head_scores = group_energy(o_weight, o_gram, layout.head_dim)
    if plan.prune_kv_groups:
        group_scores = group_energy(o_weight, o_gram, layout.head_dim * g)
        kept_kv = top_sorted(group_scores, plan.width.num_key_value_heads)
        kept_q = (kept_kv[:, None] * g + torch.arange(g)[None, :]).flatten()
        return kept_q, kept_kv
    per_group = plan.width.num_attention_heads // kv
    kept = [top_sorted(head_scores[j * g:(j + 1) * g], per_group) + j * g for j in range(kv)]
    return torch.cat(kept), torch.arange(kv)


def head_columns(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Input columns (of ``o_proj``) or output rows (of ``q/k/v_proj``) of the given heads."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).flatten()
