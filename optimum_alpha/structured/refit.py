"""Least-squares refit of a consuming matrix after some of its inputs are removed.

Keeping input columns ``S`` of ``W``, the best replacement in the calibration least-squares sense solves
``min_V ‖W X − V X_S‖²``: ``V = W G[:, S] (G_SS + λI)⁻¹`` with ``G = X Xᵀ`` (the closed-form step of
ZipLM/OSSCAR-style structured pruning, without their iterative search). λ is a fraction of the mean diagonal
of ``G_SS`` (the same dampening SparseGPT uses), which keeps the solve well-posed for rare channels.
"""

from __future__ import annotations

import torch


def refit(weight: torch.Tensor, gram: torch.Tensor, keep: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """The (out, len(keep)) matrix that best reproduces ``weight @ x`` from the kept inputs alone."""
    g = gram.double()
    keep = keep.to(g.device)
    g_ss = g[keep][:, keep]
    ridge = damp * float(g_ss.diagonal().mean()) or 1e-8
    g_ss = g_ss + ridge * torch.eye(len(keep), dtype=g.dtype, device=g.device)
    rhs = weight.double().to(g.device) @ g[:, keep]  # (out, |S|)
    factor = torch.linalg.cholesky(g_ss)
    solved = torch.cholesky_solve(rhs.T, factor).T  # V = rhs · G_SS⁻¹ (G_SS symmetric)
    return solved.to(dtype=weight.dtype, device=weight.device)


def reconstruction_error(weight: torch.Tensor, gram: torch.Tensor, new_weight: torch.Tensor,
                         keep: torch.Tensor) -> float:
    """``‖W X − V X_S‖² / ‖W X‖²`` from the Gram matrix alone (no activations kept)."""
    g = gram.double()
    keep = keep.to(g.device)
    w, v = weight.double().to(g.device), new_weight.double().to(g.device)
    full = float(((w @ g) * w).sum())
    cross = float(((v @ g[keep]) * w).sum())
    kept = float(((v @ g[keep][:, keep]) * v).sum())
    return (full - 2 * cross + kept) / full if full > 0 else 0.0
