"""The running input Gram matrix XᵀX that the second-order pruners (SparseGPT, ALPS) accumulate."""

from __future__ import annotations

import torch


def update_gram(gram: torch.Tensor | None, tokens: int, inputs: torch.Tensor,
                factor: float = 1.0) -> tuple[torch.Tensor | None, int]:
    """Fold a batch of inputs (..., in) into the running mean of ``factor``·xxᵀ over ``tokens`` tokens.

    A running mean (rescale, then add the new share) keeps the matrix bounded however many tokens are
    seen. Returns the new ``(gram, tokens)``; float32, on the inputs' device.
    """
    flat = inputs.reshape(-1, inputs.shape[-1]).float()
    count = flat.shape[0]
    if count == 0:
        return gram, tokens
    if gram is None:
        gram = torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float32, device=flat.device)
    total = tokens + count
    gram.mul_(tokens / total)
    gram.addmm_(flat.T, flat, alpha=factor / total)
    return gram, total
