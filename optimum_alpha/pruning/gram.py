"""The input Gram matrix XᵀX that the second-order pruners (SparseGPT, ALPS) accumulate."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import StatisticPruner


def check_percdamp(percdamp: float) -> None:
    """The Hessian dampening of the second-order pruners (SparseGPT, ALPS) must be a non-negative fraction."""
    if not 0.0 <= percdamp:
        raise ConfigError(f"percdamp must be >= 0, got {percdamp}.")


class GramSum:
    """Σ ``factor``·xxᵀ over the calibration tokens, summed in float64, and its mean.

    float64 products of float32 inputs are exact and their sums round at 1e-16, so the mean (float32, what
    the solvers use) does not depend on how the windows were batched or split across ranks beyond that
    rounding (a float32 accumulation differs at 1e-7, enough to move ALPS's support). The cost is a float64
    (in, in) matrix per pruned matrix while its block is calibrated.
    """

    def __init__(self, factor: float = 1.0) -> None:
        self.factor = float(factor)
        self.sum: torch.Tensor | None = None
        self.tokens = 0
        self._mean: torch.Tensor | None = None

    def add_batch(self, inputs: torch.Tensor) -> None:
        flat = inputs.reshape(-1, inputs.shape[-1]).double()
        if flat.shape[0] == 0:
            return
        if self.sum is None:
            self.sum = torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float64, device=flat.device)
        self.sum.addmm_(flat.T, flat)
        self.tokens += flat.shape[0]
        self._mean = None

    def mean(self) -> torch.Tensor | None:
        """``factor``·XᵀX / tokens, float32 (None before any token)."""
        if self.sum is None or self.tokens == 0:
            return None
        if self._mean is None:
            self._mean = (self.sum * (self.factor / self.tokens)).float()
        return self._mean

    def partial_sums(self, width: int) -> list[torch.Tensor]:
        """This process's sum (zeros when it saw no token) and token count, for a sum over ranks."""
        total = self.sum if self.sum is not None else torch.zeros(width, width, dtype=torch.float64)
        return [total, torch.tensor([float(self.tokens)], dtype=torch.float64)]

    def load_sums(self, sums: list[torch.Tensor]) -> None:
        self.tokens = int(round(float(sums[1])))
        device = self.sum.device if self.sum is not None else None
        self.sum = sums[0].to(device) if self.tokens else None
        self._mean = None


class GramPruner(StatisticPruner):
    """A pruner that calibrates on ``gram_factor``·XᵀX/n (SparseGPT's Hessian 2·XᵀX/n, ALPS's XᵀX/n)."""

    gram_factor: float = 1.0

    def new_statistic(self) -> GramSum:
        return GramSum(factor=self.gram_factor)

    @property
    def gram(self) -> torch.Tensor | None:
        """``gram_factor``·XᵀX/n over the n calibration tokens, float32, (in, in); None before any token."""
        return self.statistic.mean()

    def input_hessian(self) -> torch.Tensor | None:
        return self.gram


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
