"""The running input Gram matrix XᵀX that the second-order pruners (SparseGPT, ALPS) accumulate."""

from __future__ import annotations

import torch

from ..errors import ConfigError


def check_percdamp(percdamp: float) -> None:
    """The Hessian dampening of the second-order pruners (SparseGPT, ALPS) must be a non-negative fraction."""
    if not 0.0 <= percdamp:
        raise ConfigError(f"percdamp must be >= 0, got {percdamp}.")


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


def damped_hessian(gram: torch.Tensor, weight: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The Hessian preparation SparseGPT and ALPS share: a copy of XᵀX with dead inputs handled and
    ``percdamp`` × its mean diagonal added, and the weight with the dead inputs' columns zeroed (a copy).

    An input that is always zero carries no signal: its weights can go for free, and a unit diagonal keeps
    H positive definite without coupling that input to the others.
    """
    h = gram.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w = weight.clone()
    w[:, dead] = 0.0
    h.diagonal().add_(percdamp * torch.mean(torch.diag(h)))
    return h, w
