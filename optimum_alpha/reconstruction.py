"""Block reconstruction (``reconstruct="block"``): after a block is pruned, refit its kept weights so that the
block reproduces what the dense block computes on the calibration inputs, the mask fixed.

The study of arXiv 2510.14444 finds that reconstructing attention and MLP separately per block, with the mask
fixed, is near-Pareto-optimal and cheap. Here every prunable matrix W (attention and MLP alike) is refitted,
in the order the block's forward pass reaches them, to

    min ‖W_d X_d − Ŵ X_p‖²   over the kept entries of Ŵ (pruned entries stay exactly 0),

with W_d the dense weight, X_d its input in the dense block and X_p its input in the pruned block *after* the
matrices before it were refitted (so o_proj / down_proj correct what q, k, v / gate, up still get wrong: the
attention and the MLP each reproduce the dense sub-module's output). Both blocks see the same block input.

**Closed form, solved iteratively.** Given X_p the objective is linear least squares in Ŵ, so it has a closed
form per output row i with support K_i: Ŵ_i,K = B_i,K (H_KK)⁻¹ with H = X_pᵀX_p and B = W_d X_dᵀX_p. The
supports differ per row (SparseGPT, N:M), so the exact solve would be one |K|³ factorisation per row; instead
all rows are solved at once by Jacobi-preconditioned conjugate gradients restricted to the support (the ALPS
refit, :func:`optimum_alpha.pruning.alps.pcg_on_support`), starting from the pruner's weights: an iteration
costs one (out, in) x (in, in) product. No optimiser steps are needed (nothing here is non-linear in Ŵ).

Statistics are float64 sums (order-independent); each calibration sample runs through a dense copy and a
pruned copy of the block in lockstep, so X_d and X_p of the same tokens meet without storing either.
Expert matrices see different routed tokens in the two blocks, so their target is W_d X_p (the dense expert
on the pruned routing: B = W_d H). The block itself is not touched: the refitted weights are returned and the
pipeline writes them, as it writes every pruner's result.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import nn

from .calibration import ArgumentStore, BlockInputs
from .errors import ConfigError
from .matrices import PrunableMatrix
from .offload import offload_hook
from .pruning.alps import pcg_on_support
from .statistics import collect_block_statistics

RECONSTRUCTIONS = ("none", "block")


def check_reconstruct(mode: str, iterations: int, damp: float) -> None:
    if mode not in RECONSTRUCTIONS:
        raise ConfigError(f"Unknown reconstruct {mode!r}; use 'none' or 'block'.")
    if int(iterations) < 1:
        raise ConfigError(f"reconstruct_iters must be >= 1 (conjugate-gradient steps per matrix), got {iterations}.")
    if not damp >= 0:
        raise ConfigError(f"reconstruct_damp must be >= 0 (ridge, fraction of the mean diagonal), got {damp}.")


class _DenseInputs:
    """Sink of the dense copy: keeps the last input of a matrix until the pruned copy asks for it."""

    def __init__(self) -> None:
        self.pending: list[torch.Tensor] = []

    def add_batch(self, inputs: torch.Tensor) -> None:
        self.pending.append(inputs.reshape(-1, inputs.shape[-1]))


class _PairedStatistics:
    """Sink of the pruned copy: H = Σ x_p x_pᵀ and Σ x_d x_pᵀ (float64), pairing each batch with the dense one.

    ``paired=False`` (experts, or rows that do not line up) uses x_d = x_p."""

    def __init__(self, dense: _DenseInputs, paired: bool) -> None:
        self.dense = dense
        self.paired = paired
        self.gram: torch.Tensor | None = None
        self.cross: torch.Tensor | None = None
        self.tokens = 0

    def add_batch(self, inputs: torch.Tensor) -> None:
        pruned = inputs.reshape(-1, inputs.shape[-1]).to(torch.float64)
        dense = self.dense.pending.pop(0).to(device=pruned.device, dtype=torch.float64) if self.dense.pending else None
        if not self.paired or dense is None or dense.shape != pruned.shape:
            self.paired = False
            dense = pruned
        if self.gram is None:
            size = pruned.shape[1]
            self.gram = torch.zeros(size, size, dtype=torch.float64, device=pruned.device)
            self.cross = torch.zeros_like(self.gram)
        self.gram.addmm_(pruned.T, pruned)
        self.cross.addmm_(dense.T, pruned)  # type: ignore[union-attr]
        self.tokens += pruned.shape[0]


def refit_on_support(dense_weight: torch.Tensor, weight: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor,
                     iterations: int, damp: float = 0.01, tol: float = 1e-6) -> torch.Tensor:
    """Ŵ minimising ‖W_d X_d − Ŵ X_p‖² on the support of ``weight`` (H = X_pᵀX_p, cross = X_dᵀX_p), from
    ``weight``; the zeros of ``weight`` stay zero."""
    h = gram.clone()
    dead = torch.diag(h) <= 0
    h[dead, dead] = 1.0  # an input that is always zero: its weights cannot matter; keeps H definite
    h.diagonal().add_(damp * torch.mean(torch.diag(h)))
    scale = torch.diag(h).sqrt()
    hessian = h / scale[:, None] / scale[None, :]
    kept = weight != 0
    target = (dense_weight.to(torch.float64) @ cross) / scale[None, :]
    start = weight.to(torch.float64) * scale[None, :]
    refit = pcg_on_support(hessian, target, start, kept, iterations, tol) / scale[None, :]
    refit[:, dead] = weight[:, dead].to(torch.float64)  # weights of dead inputs: nothing to fit, kept as they are
    return refit.masked_fill(~kept, 0.0).to(dtype=weight.dtype)


def one_sample(inputs: BlockInputs, block_index: int, sample: int) -> BlockInputs:
    """The calibration inputs of one sample only (its hidden states and its own block arguments)."""
    per_block = list(inputs.per_block)
    store = per_block[block_index]
    per_block[block_index] = ArgumentStore(store.extras, [store.extra_index[sample]])
    return BlockInputs([inputs.hidden_states[sample]], per_block)


def forward_levels(block: nn.Module, block_index: int, matrices: Sequence[PrunableMatrix],
                   inputs: BlockInputs) -> list[list[PrunableMatrix]]:
    """The matrices grouped by input, in the order the block's forward pass reaches them (q, k, v share one
    input; then o; then gate, up; then down). An experts module's gate/up share its input and its downs follow."""
    order: list[tuple[int, int, object]] = []  # (call index, sub-step, input key) per module
    keep_alive: list[torch.Tensor] = []
    seen: dict[int, tuple[int, object]] = {}
    modules = {id(m.module): m.module for m in matrices}

    def make_hook(module: nn.Module):
        def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            if id(mod) in seen:
                return
            hidden = args[0] if args else next(iter(kwargs.values()))
            keep_alive.append(hidden)
            seen[id(mod)] = (len(seen), id(hidden))
        return hook

    handles = [module.register_forward_pre_hook(make_hook(module), with_kwargs=True) for module in modules.values()]
    try:
        collect_block_statistics(block, block_index, [], {}, one_sample(inputs, block_index, 0))
    finally:
        for handle in handles:
            handle.remove()
    for matrix in matrices:
        call, key = seen.get(id(matrix.module), (len(seen), ("unreached", matrix.name)))
        down = matrix.is_expert and matrix.part is None and matrix.param_name != "up_proj"
        order.append((call, 1 if down else 0, ("down", id(matrix.module)) if down else key))
    ranked = sorted(range(len(matrices)), key=lambda i: (order[i][0], order[i][1]))
    levels: list[list[PrunableMatrix]] = []
    last_key: object = object()
    for i in ranked:
        if order[i][2] != last_key:
            levels.append([])
            last_key = order[i][2]
        levels[-1].append(matrices[i])
    return levels


def _twin(block: nn.Module, matrices: Sequence[PrunableMatrix]) -> tuple[nn.Module, list[PrunableMatrix]]:
    """An in-memory copy of the block and its matrices, pointing into the copy."""
    twin = copy.deepcopy(block)
    mapping = {id(a): b for a, b in zip(block.modules(), twin.modules())}
    return twin, [replace(m, module=mapping[id(m.module)]) for m in matrices]


@dataclass
class Reconstruction:
    """Refitted weights (same zeros as the pruner's), and the seconds it took."""

    weights: dict[str, torch.Tensor]
    seconds: float
    levels: int


@torch.no_grad()
def reconstruct_block(block: nn.Module, block_index: int, matrices: Sequence[PrunableMatrix],
                      pruned: dict[str, torch.Tensor], inputs: BlockInputs, iterations: int = 20,
                      damp: float = 0.01) -> Reconstruction:
    """Refit the kept weights of ``pruned`` (one new weight per matrix, the block itself still dense) so that
    the pruned block reproduces the dense block on ``inputs``; returns the new weights, the block untouched."""
    start = time.perf_counter()
    offloaded = [m.name for m in matrices if offload_hook(m.module) is not None]
    if offloaded:
        raise ConfigError(f"reconstruct='block' needs the block's weights in memory, and {offloaded[0]} is "
                          "offloaded; load the model without disk/CPU offload or use reconstruct='none'.")
    dense_block, dense_matrices = _twin(block, matrices)
    pruned_block, pruned_matrices = _twin(block, matrices)
    for matrix in pruned_matrices:
        matrix.write(pruned[matrix.name])
    dense_of = {m.name: d for m, d in zip(matrices, dense_matrices)}
    by_name = {m.name: m for m in pruned_matrices}
    levels = forward_levels(pruned_block, block_index, pruned_matrices, inputs)
    for level in levels:
        dense_sinks = {m.name: _DenseInputs() for m in level}
        paired = {m.name: _PairedStatistics(dense_sinks[m.name], paired=not m.is_expert) for m in level}
        dense_level = [dense_of[m.name] for m in level]
        for sample in range(len(inputs)):
            single = one_sample(inputs, block_index, sample)
            collect_block_statistics(dense_block, block_index, dense_level, dense_sinks, single)
            collect_block_statistics(pruned_block, block_index, level, paired, single)
        for matrix in level:
            stats = paired[matrix.name]
            if stats.gram is None:  # an expert no calibration token reached: nothing to fit
                continue
            new = refit_on_support(dense_of[matrix.name].read(), by_name[matrix.name].read(),
                                   stats.gram / stats.tokens, stats.cross / stats.tokens, iterations, damp)
            matrix.write(new)
    weights = {m.name: m.read().detach().clone() for m in pruned_matrices}
    return Reconstruction(weights, time.perf_counter() - start, len(levels))
