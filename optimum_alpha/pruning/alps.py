"""ALPS (Meng, Behdin, Wang & Mazumder, 2024): solve each layer's pruning problem

    min ‖ŴX − WX‖²  s.t. Ŵ has the wanted sparsity (k weights pruned, or N of every M kept)

by ADMM on the split Ŵ = D (D carries the sparsity constraint), with a penalty ρ that grows on a schedule
driven by how much the support still moves, then refit the kept weights on the final support with
preconditioned conjugate gradients (PCG).

With H = XᵀX (in, in) the objective of one output row w is (w − w₀) H (w − w₀)ᵀ. The steps, in the
coordinates normalised by the diagonal of the damped H (Hₙ = S⁻¹HS⁻¹, Wₙ = W·S, S = diag(H)^½; the
objective is unchanged, and |Wₙ| is the Wanda-like score used for the projections):

* W-update: W = (W₀Hₙ − V + ρD)(Hₙ + ρI)⁻¹. One float64 eigendecomposition Hₙ = QΛQᵀ per layer gives
  (Hₙ + ρI)⁻¹ = Q diag(1/(λ + ρ)) Qᵀ for every ρ, rebuilt only when ρ changes (every 3 iterations), so an
  iteration costs one (out, in) × (in, in) product;
* D-update: projection of W + V/ρ onto the sparsity set (the largest |.| of the whole matrix, or the N
  largest of every M consecutive inputs of a row);
* dual update: V += ρ(W − D);
* ρ schedule: every 3 iterations, ρ × 1.3 if more than 10 % of the kept positions changed since the last
  check, × 1.2 above 0.5 %, × 1.1 for any change; a support that barely moves before ρ ever grew means ρ₀
  was too large (ρ / 5, restart). Stop once the support no longer moves, or after 30 iterations once it
  moves by less than 0.03 %, or after ``max_iter`` iterations.

Then PCG solves, for every row at once, the normal equations restricted to the row's support,
(Hₙw)_S = (Hₙw₀)_S, starting from the ADMM solution; residuals and directions are masked to the support,
so no pruned weight becomes non-zero. CG on the normalised Hₙ is Jacobi-preconditioned CG on H (the Jacobi
preconditioner diag(H) is what the normalisation divides out). Defaults follow the paper's reference
setting: ρ₀ = 0.1, 300 iterations, 10 PCG iterations with relative tolerance 1e-4, damping 1 % of the mean
diagonal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import register_pruner
from .gram import GramPruner, check_percdamp, damped_hessian
from .masks import check_nm_columns, count_to_prune, matrix_mask, nm_mask

CHECK_EVERY = 3  # iterations between two support comparisons / ρ updates
MAX_RHO = 1e6
SETTLE_ITERATIONS = 30  # after this many iterations, a support moving by < SETTLED_CHANGE of k stops ADMM
SETTLED_CHANGE = 3e-4


def check_alps_options(rho: float, max_iter: int, pcg_iters: int, pcg_tol: float) -> None:
    """Reject option values the solver cannot use, naming the fix (shared with the config)."""
    if not rho > 0:
        raise ConfigError(f"alps_rho (ALPS's initial ADMM penalty ρ₀) must be > 0, got {rho}; the paper uses "
                          "0.1.")
    for field, value in (("alps_max_iter", max_iter), ("alps_pcg_iters", pcg_iters)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{field} must be a whole number, got {value!r}.")
    if max_iter < 1:
        raise ConfigError(f"alps_max_iter must be >= 1, got {max_iter}; the paper uses 300.")
    if pcg_iters < 0:
        raise ConfigError(f"alps_pcg_iters must be >= 0 (0 skips the refit), got {pcg_iters}; the paper "
                          "uses 10.")
    if not pcg_tol > 0:
        raise ConfigError(f"alps_pcg_tol must be > 0, got {pcg_tol}; the paper uses 1e-4.")


@register_pruner("alps")
class ALPSPruner(GramPruner):
    """Accumulates XᵀX over the calibration tokens, then prunes by ADMM + PCG (see the module docstring)."""

    options = ("percdamp", "alps_rho", "alps_max_iter", "alps_pcg_iters", "alps_pcg_tol")

    @classmethod
    def check_config(cls, config: object) -> None:
        check_percdamp(config.percdamp)  # type: ignore[attr-defined]
        check_alps_options(float(config.alps_rho), config.alps_max_iter, config.alps_pcg_iters,  # type: ignore[attr-defined]
                           float(config.alps_pcg_tol))  # type: ignore[attr-defined]

    def __init__(
        self,
        name: str,
        percdamp: float = 0.01,
        alps_rho: float = 0.1,
        alps_max_iter: int = 300,
        alps_pcg_iters: int = 10,
        alps_pcg_tol: float = 1e-4,
        **options: object,
    ) -> None:
        super().__init__(name)  # the values were validated by check_config
        self.percdamp = float(percdamp)
        self.rho = float(alps_rho)
        self.max_iter = int(alps_max_iter)
        self.pcg_iters = int(alps_pcg_iters)
        self.pcg_tol = float(alps_pcg_tol)
        self.last_iterations = 0  # ADMM iterations of the last prune (for benchmarks and tests)

    def prune(self, weight: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> torch.Tensor:
        if self.gram is None:
            raise RuntimeError(f"ALPS needs calibration inputs for {self.name}, but none were recorded.")
        rows, cols = weight.shape
        check_nm_columns(cols, nm, self.name)
        if nm is None and count_to_prune(rows * cols, sparsity) == 0:
            return weight.clone()
        w = weight.detach().to(device=self.gram.device, dtype=torch.float32)
        hessian, scale, w = self._normalise(w)
        project = (lambda x: nm_mask(x.abs(), *nm)) if nm else (lambda x: matrix_mask(x.abs(), sparsity))
        target = w @ hessian  # W₀Hₙ, the right-hand side of every solve
        kept = admm_support(hessian, target, w, project, self.rho, self.max_iter)
        self.last_iterations = kept.iterations
        refit = pcg_on_support(hessian, target, kept.weight, kept.mask, self.pcg_iters, self.pcg_tol)
        return (refit / scale).to(device=weight.device, dtype=weight.dtype)

    def _normalise(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Damped, diagonal-normalised XᵀX, the scale S, and the weight in the normalised coordinates."""
        h, w = damped_hessian(self.gram, w, self.percdamp)
        scale = torch.diag(h).sqrt()
        h = h / scale[:, None] / scale[None, :]
        return h, scale, w * scale[None, :]


@dataclass
class AdmmResult:
    """The ADMM solution projected on its final support, that support (True = kept), iterations run."""

    weight: torch.Tensor
    mask: torch.Tensor
    iterations: int


def admm_support(
    hessian: torch.Tensor, target: torch.Tensor, w0: torch.Tensor, project, rho: float, max_iter: int
) -> AdmmResult:
    """ADMM with the ρ schedule; returns the projected final iterate, its kept-mask and the iteration count.

    ``project(x)`` returns the mask of the entries of ``x`` to prune (True = pruned).
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(hessian.double())
    eigenvalues, eigenvectors = eigenvalues.float(), eigenvectors.float()

    def inverse(penalty: float) -> torch.Tensor:  # (Hₙ + ρI)⁻¹, rebuilt only when ρ changes
        return (eigenvectors / (eigenvalues + penalty)) @ eigenvectors.T

    pruned = project(w0)
    kept_count = max(int((~pruned).sum()), 1)
    d = w0.masked_fill(pruned, 0.0)
    v = torch.zeros_like(w0)
    w = w0
    start_rho, grown, checked = rho, False, pruned
    solve = inverse(rho)
    iterations = 0
    for step in range(1, max_iter + 1):
        iterations = step
        w = (target - v + rho * d) @ solve
        candidate = w + v / rho
        pruned = project(candidate)
        d = candidate.masked_fill(pruned, 0.0)
        v.add_(w - d, alpha=rho)
        if step % CHECK_EVERY:
            continue
        change = int((pruned ^ checked).sum()) / kept_count
        checked = pruned
        if change > 0.1:
            rho, grown = rho * 1.3, True
        elif change > 0.005:
            rho, grown = rho * 1.2, True
        elif change > 0:
            if grown:
                rho *= 1.1
            else:  # ρ₀ was so large that the support froze at once: start again from a smaller one
                rho = start_rho = start_rho / 5
                d, v = w0.masked_fill(project(w0), 0.0), torch.zeros_like(w0)
        elif grown:
            break
        else:
            rho = start_rho = start_rho / 5
        if step >= SETTLE_ITERATIONS and change < SETTLED_CHANGE:
            break
        rho = min(rho, MAX_RHO)
        solve = inverse(rho)
    final = project(w)
    return AdmmResult(w.masked_fill(final, 0.0), ~final, iterations)


def pcg_on_support(
    hessian: torch.Tensor, target: torch.Tensor, w: torch.Tensor, kept: torch.Tensor, iterations: int,
    tol: float,
) -> torch.Tensor:
    """Minimise every row's (w − w₀)Hₙ(w − w₀)ᵀ over its support by batched CG (one row = one system).

    Residuals and search directions are masked to the support, so the pruned entries stay exactly zero.
    Stops after ``iterations`` or when every row's residual is below ``tol`` × its right-hand side.
    """
    w = w.clone()
    if iterations == 0:
        return w
    mask = kept.to(w.dtype)
    limit = tol * torch.linalg.vector_norm(target * mask, dim=1)
    residual = (target - w @ hessian) * mask
    direction = residual.clone()
    energy = (residual * residual).sum(dim=1)
    for _ in range(iterations):
        if bool((energy.sqrt() <= limit).all()):
            break
        product = (direction @ hessian) * mask
        curvature = (direction * product).sum(dim=1)
        step = torch.where(curvature > 0, energy / curvature.clamp_min(1e-30), torch.zeros_like(curvature))
        w.add_(step[:, None] * direction)
        residual.sub_(step[:, None] * product)
        new_energy = (residual * residual).sum(dim=1)
        beta = torch.where(energy > 0, new_energy / energy.clamp_min(1e-30), torch.zeros_like(energy))
        direction = residual + beta[:, None] * direction
        energy = new_energy
    return w
