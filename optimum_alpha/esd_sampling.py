"""FARMS (arXiv 2506.06280): the ESD of a matrix estimated from fixed-aspect-ratio submatrices.

The ESD of an m x n matrix depends on its aspect ratio m/n (Marchenko-Pastur), so matrices of different shapes
get alphas that are not comparable, which biases an allocation built on them. FARMS removes the bias by
sampling submatrices of one shape, ``num_row_samples`` x ``q_ratio·num_row_samples`` (100 x 200 by default), on
a regular grid of ``ops_per_dim`` start positions per dimension, pooling all their eigenvalues into one
spectrum, and fitting the power law with ``xmin`` at the middle of that pooled spectrum (the authors'
``xmin_mid``: index ``N // 2`` of the ascending eigenvalues).

As in the authors' ``fixed_sampling``: the step between starts is ``(size - window) // (ops - 1)`` (at least
1), at most ``ops`` starts, each capped at ``size - window`` so that every window lies inside the matrix.
Unlike their driver, a matrix smaller than the window keeps the aspect ratio: the window shrinks to
``min(num_row_samples, rows, cols / q_ratio)`` rows (their code would slice a window of another shape).

Eigenvalues are those of the float64 Gram matrix of each window (the smaller side), all windows in one batched
``eigvalsh``, clamped at 0, like the full ESD of :func:`optimum_alpha.esd.matrix_eigenvalues`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .errors import ConfigError, ModelStructureError
from .options import ESD_SAMPLINGS  # noqa: F401  (the one list of choices, re-exported)
# The authors' fix-finger for FARMS: xmin is the eigenvalue at index N // FARMS_XMIN_POS.
FARMS_XMIN_POS = 2


@dataclass(frozen=True)
class FarmsOptions:
    """The sampling grid: windows of ``num_row_samples`` x ``int(q_ratio · num_row_samples)``, ``ops_per_dim``
    start positions per dimension (the authors' defaults: 100, 2.0, 10)."""

    num_row_samples: int = 100
    q_ratio: float = 2.0
    ops_per_dim: int = 10

    def __post_init__(self) -> None:
        if int(self.num_row_samples) < 3:
            raise ConfigError(
                f"farms_rows must be >= 3 (rows of each sampled submatrix), got {self.num_row_samples}; "
                "FARMS uses 100.")
        if not (math.isfinite(self.q_ratio) and self.q_ratio > 0):
            raise ConfigError(f"farms_q_ratio must be a positive number (columns/rows of each window), got "
                              f"{self.q_ratio}; FARMS uses 2.0.")
        if int(self.ops_per_dim) < 1:
            raise ConfigError(f"farms_ops_per_dim must be >= 1 (windows per dimension), got {self.ops_per_dim}; "
                              "FARMS uses 10.")

    def to_dict(self) -> dict:
        return asdict(self)


def check_esd_sampling(sampling: str) -> None:
    if sampling not in ESD_SAMPLINGS:
        raise ConfigError(f"Unknown esd_sampling {sampling!r}; use one of {', '.join(ESD_SAMPLINGS)}.")


def window_shape(rows: int, cols: int, options: FarmsOptions) -> tuple[int, int]:
    """(rows, cols) of every sampled window of an ``rows`` x ``cols`` matrix, aspect ratio kept."""
    height = min(int(options.num_row_samples), rows, int(cols / options.q_ratio))
    width = int(height * options.q_ratio)
    if height < 1 or width < 1 or min(height, width) < 3:
        raise ModelStructureError(
            f"A {rows} x {cols} matrix is too small for FARMS windows of aspect ratio {options.q_ratio} "
            "(each window needs at least 3 rows and columns); use esd_sampling='full' or another farms_q_ratio.")
    return height, width


def grid_starts(size: int, window: int, ops: int) -> list[int]:
    """Start offsets of the windows along one dimension (the authors' regular grid)."""
    room = size - window
    step = max(1, room // (ops - 1)) if ops > 1 else 1
    count = min(ops, max(1, room // step + 1))
    return [min(i * step, room) for i in range(count)]


def sampled_windows(weight: torch.Tensor, options: FarmsOptions) -> torch.Tensor:
    """Every window of the grid, as one (windows, height, width) float64 tensor."""
    rows, cols = int(weight.shape[0]), int(weight.shape[1])
    height, width = window_shape(rows, cols, options)
    device = weight.device
    row_index = torch.tensor(grid_starts(rows, height, options.ops_per_dim), device=device)[:, None] \
        + torch.arange(height, device=device)
    col_index = torch.tensor(grid_starts(cols, width, options.ops_per_dim), device=device)[:, None] \
        + torch.arange(width, device=device)
    windows = weight.detach()[row_index[:, None, :, None], col_index[None, :, None, :]]
    return windows.reshape(-1, height, width).to(torch.float64)


def farms_eigenvalues(weight: torch.Tensor, options: FarmsOptions | None = None) -> torch.Tensor:
    """The pooled eigenvalues (squared singular values) of every window, ascending, float64, clamped at 0."""
    if weight.ndim != 2:
        raise ModelStructureError(f"Expected a 2-D weight matrix, got shape {tuple(weight.shape)}.")
    windows = sampled_windows(weight, options or FarmsOptions())
    transposed = windows.transpose(1, 2)
    gram = windows @ transposed if windows.shape[1] <= windows.shape[2] else transposed @ windows
    return torch.sort(torch.linalg.eigvalsh(gram).clamp_(min=0.0).flatten()).values


def mid_hill_fit(eigenvalues: torch.Tensor, xmin_pos: int = FARMS_XMIN_POS) -> tuple[float, float, float, int]:
    """(alpha, xmin, KS distance, tail size) of the Hill fit with xmin at index ``N // xmin_pos`` of the
    ascending, non-zero ``eigenvalues`` (the authors' ``xmin_mid``)."""
    lam = eigenvalues.to(torch.float64)
    n_total = lam.numel()
    i = int(n_total / xmin_pos)
    tail = lam[i:]
    n = tail.numel()
    log_tail = torch.log(tail)
    alpha = 1.0 + n / float(log_tail.sum() - n * log_tail[0])
    fitted = 1.0 - torch.exp((1.0 - alpha) * (log_tail - log_tail[0]))
    empirical = torch.arange(n, dtype=torch.float64, device=lam.device) / n
    return alpha, float(tail[0]), float((fitted - empirical).abs().max()), n
