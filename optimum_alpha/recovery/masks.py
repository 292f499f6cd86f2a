"""The pruned zeros as masks, enforced while the kept weights train.

A mask covers one parameter tensor that holds prunable matrices (a Linear/Conv1D weight, or a fused 3-D expert
parameter): True where the weight is kept. It is enforced twice, because either alone leaks: a gradient hook
zeroes the gradient of every pruned entry (so clipping norms and Adam's moments never see it), and after every
optimizer step the pruned entries are written to +0.0 again (so weight decay, momentum or a kernel's rounding
can never move one). N:M patterns are kept because the zero set itself is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..matrices import model_weights

# A dense checkpoint can hold a few exact zeros (dequantized GGUF, padding): below this share it is not pruned.
PRUNED_SHARE = 0.01


@dataclass
class SparsityMasks:
    """Keep-masks of every prunable parameter that has pruned (zero) entries, by parameter name."""

    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    params: dict[str, nn.Parameter] = field(default_factory=dict)
    zeros: int = 0  # pruned entries over all masked parameters
    prunable: int = 0  # entries of every prunable parameter, masked or not
    _hooks: list = field(default_factory=list)

    @classmethod
    def from_model(cls, model: nn.Module, ignore: list[str] | None = None) -> "SparsityMasks":
        """Masks of the current zeros of every parameter that holds a prunable matrix (experts included)."""
        _, blocks = model_weights(model, ignore)
        by_id = {id(p): name for name, p in model.named_parameters(remove_duplicate=False)}
        found = cls()
        seen: set[int] = set()
        for block in blocks:
            for matrix in block.matrices:
                param = getattr(matrix.module, matrix.param_name)
                if id(param) in seen:
                    continue
                seen.add(id(param))
                found.prunable += param.numel()
                keep = param.detach() != 0
                pruned = param.numel() - int(keep.sum())
                if pruned:
                    name = by_id[id(param)]
                    found.masks[name] = keep
                    found.params[name] = param
                    found.zeros += pruned
        return found

    @property
    def sparsity(self) -> float:
        """Share of pruned entries over every prunable parameter."""
        return self.zeros / self.prunable if self.prunable else 0.0

    @property
    def is_pruned(self) -> bool:
        return self.sparsity >= PRUNED_SHARE

    def hook_gradients(self) -> None:
        """Zero the gradient of every pruned entry as it is computed."""
        self.remove_hooks()
        for name, param in self.params.items():
            if param.requires_grad:
                keep = self.masks[name]
                self._hooks.append(param.register_hook(lambda grad, keep=keep: grad * keep.to(grad.dtype)))

    def remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    @torch.no_grad()
    def apply(self) -> None:
        """Write +0.0 into every pruned entry (``masked_fill_``: no -0.0 from a sign, no NaN from 0 x inf)."""
        for name, param in self.params.items():
            keep = self.masks[name]
            if keep.device != param.device:
                keep = self.masks[name] = keep.to(param.device)
            param.data.masked_fill_(~keep, 0.0)

    def violations(self) -> int:
        """Pruned entries that are not exactly zero now (0 after every step of a recovery)."""
        return sum(int((param.detach()[~self.masks[name].to(param.device)] != 0).sum())
                   for name, param in self.params.items())
