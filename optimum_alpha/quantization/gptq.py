"""GPTQ (Frantar et al., 2023) that keeps a pruning mask, and SparseGPT's joint prune + quantise.

Both run the OBS column sweep of :func:`optimum_alpha.pruning.sparsegpt.obs_columns` with a
:class:`GridQuantiser`: every column is rounded onto its grid and its rounding error, divided by
[H⁻¹]_jj, is spread onto the columns not yet visited. A pruned weight is set to exactly 0 when its column is
visited and rounds to the integer 0 (symmetric grid), so the error of quantisation flows only into kept
weights and no pruned weight is ever revived. Scales of a group are fixed when the sweep reaches its first
column, from the group's current (already updated) kept weights, as in the GPTQ reference with groups.
"""

from __future__ import annotations

import torch

from ..pruning.sparsegpt import inverse_hessian_factor, obs_columns
from .spec import QuantizedMatrix, QuantSpec, group_scales


class GridQuantiser:
    """Rounds the columns of one (rows, cols) matrix during the sweep and keeps their integer codes."""

    def __init__(self, spec: QuantSpec, rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> None:
        self.spec = spec
        self.group_size = spec.group_size
        self.dtype = dtype  # scales are rounded to the dtype the model (and the checkpoint) stores them in
        self.codes = torch.zeros(rows, cols, dtype=torch.int8, device=device)
        self.scales = torch.zeros(rows, spec.groups(cols), dtype=dtype, device=device)
        self._float_scales = torch.zeros(rows, spec.groups(cols), dtype=torch.float32, device=device)
        self.low, self.high = -(2 ** (spec.bits - 1)), 2 ** (spec.bits - 1) - 1  # symmetric int grid
        self.pruned = torch.zeros(rows, cols, dtype=torch.bool, device=device)
        self.column_groups: torch.Tensor | None = None  # sweep position -> scale group (activation order)

    def start_group(self, column: int, values: torch.Tensor) -> None:
        if self.column_groups is not None:  # static scales, fixed before an activation-ordered sweep
            return
        group = column // self.group_size if self.group_size else 0
        self.scales[:, group:group + 1] = group_scales(values, QuantSpec(self.spec.bits, None), self.dtype)
        self._float_scales[:, group] = self.scales[:, group].float()

    def set_static_scales(self, scales: torch.Tensor, column_groups: torch.Tensor) -> None:
        """Every group's scale, fixed before the sweep; ``column_groups[j]`` is the group of sweep column j."""
        self.scales[:] = scales
        self._float_scales[:] = scales.float()
        self.column_groups = column_groups.tolist()

    def set_row_scales(self, scales: torch.Tensor) -> None:
        """One scale per row (``group_size=None``), fixed before the sweep."""
        self.scales[:] = scales
        self._float_scales[:] = scales.float()

    def quantise(self, column: int, values: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
        # Plain torch ops in the sweep's inner loop (compressed-tensors' per-call overhead would dominate);
        # the weight written is rebuilt from these codes by compressed-tensors' own dequantize afterwards.
        self.pruned[:, column] = pruned
        if self.column_groups is not None:
            group = self.column_groups[column]
        else:
            group = column // self.group_size if self.group_size else 0
        scale = self._float_scales[:, group]
        codes = torch.clamp(torch.round(values / scale), self.low, self.high)
        self.codes[:, column] = codes.to(torch.int8)
        return codes * scale

    def result(self) -> QuantizedMatrix:
        return QuantizedMatrix(self.spec, self.codes, self.scales, self.pruned)


def _start(weight: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec, percdamp: float, name: str,
           mask: torch.Tensor | None, act_order: bool,
           ) -> tuple[torch.Tensor, torch.Tensor, GridQuantiser, torch.Tensor | None]:
    """The working copy, the factor of H⁻¹ and the grid, in sweep order; with ``act_order`` the columns are
    visited by decreasing H_jj (the permutation is returned) and every group's scale is fixed beforehand."""
    w = weight.detach().to(device=hessian.device, dtype=torch.float32).clone()
    if mask is not None:
        w.masked_fill_(mask.to(w.device), 0.0)
    order = torch.argsort(torch.diag(hessian), descending=True, stable=True) if act_order else None
    if order is not None:
        hessian, w = hessian[order][:, order], w[:, order].contiguous()
    u = inverse_hessian_factor(hessian, w, percdamp, name)
    grid = GridQuantiser(spec, *w.shape, dtype=weight.dtype, device=w.device)
    if spec.group_size is None:  # one scale per row, from the whole (masked) row before any update
        grid.set_row_scales(group_scales(w, spec, weight.dtype))
    elif order is not None:  # groups stay runs of consecutive inputs, so the checkpoint needs no g_idx
        grid.set_static_scales(group_scales(_unpermute(w, order), spec, weight.dtype), order // spec.group_size)
    return w, u, grid, order


def _unpermute(values: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    restored = torch.empty_like(values)
    restored[:, order] = values
    return restored


def gptq(weight: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec, mask: torch.Tensor | None = None,
         percdamp: float = 0.01, blocksize: int = 128, name: str = "matrix", act_order: bool = True,
         ) -> QuantizedMatrix:
    """Quantise ``weight`` (out, in) with GPTQ on the Hessian ``hessian`` (in, in), keeping ``mask``
    (True = pruned) at exactly 0."""
    w, u, grid, order = _start(weight, hessian, spec, percdamp, name, mask, act_order)
    fixed = None
    if mask is not None:
        fixed = mask.to(w.device) if order is None else mask.to(w.device)[:, order]
    obs_columns(w, u, blocksize, fixed_mask=fixed, quantiser=grid)
    return _on(grid.result(), weight.device, order)


def joint_sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec, sparsity: float,
                    nm: tuple[int, int] | None, percdamp: float = 0.01, blocksize: int = 128,
                    name: str = "matrix") -> QuantizedMatrix:
    """SparseGPT's joint mode: one sweep chooses the pruned weights and rounds the kept ones, in SparseGPT's
    column order (its per-block mask choice and N:M groups assume consecutive inputs)."""
    w, u, grid, order = _start(weight, hessian, spec, percdamp, name, None, act_order=False)
    obs_columns(w, u, blocksize, sparsity, nm, quantiser=grid)
    return _on(grid.result(), weight.device, order)


def _on(result: QuantizedMatrix, device: torch.device, order: torch.Tensor | None) -> QuantizedMatrix:
    """The result in the matrix's own column order, on ``device``."""
    codes, pruned = result.codes, result.pruned
    if order is not None:
        codes = _unpermute(codes, order)
        pruned = _unpermute(pruned, order) if pruned is not None else None
    pruned = pruned.to(device) if pruned is not None else None
    return QuantizedMatrix(result.spec, codes.to(device), result.scales.to(device), pruned)
