"""The unstructured (and N:M) block loop: per block, collect -> prune -> write -> replay.

Blocks are processed in order. Each block's new weights are all computed before any is written, so an
interruption (KeyboardInterrupt or error) leaves blocks ``0..k-1`` fully pruned and the others untouched;
``state.last_report`` then lists the completed blocks with ``completed=False``. A Ctrl-C that arrives while
a block is being written is held until that block is written and reported. See docs/guarantees.md.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from .allocations import get_allocation
from .calibration import run_block
from .distributed import Parallel, current as current_parallel
from .errors import DistributedRunError, ModelStructureError
from .interrupts import hold_interrupts
from .matrices import BlockWeights, PrunableMatrix, check_covered
from .model_utils import check_block_parameters, max_positions
from .pruning import LayerPruner, get_pruner_class
from .quantization.plan import plan_quantisation, quantization_summary
from .quantization.state import forget_quantization, record_quantized, recorded_grids
from .reconstruction import reconstruct_block
from .report import BlockReport, PruningReport, layer_sparsity
from .state import ModelState
from .statistics import collect_block_statistics
from .targets import compute_targets, sparsity_cap

logger = logging.getLogger(__name__)


def check_weights(state: ModelState, blocks: list[BlockWeights]) -> None:
    """Before block 0 is touched: every weight is accounted for and every block parameter is finite."""
    check_covered(blocks)
    if not any(block.matrices for block in blocks):
        raise ModelStructureError("Nothing to prune: every weight inside the blocks is ignored; shorten the ignore list.")
    check_block_parameters(state.blocks_path, state.blocks)


def new_report(config: Any, blocks: list[BlockWeights], targets: dict[str, float]) -> PruningReport:
    """The report of a run that is about to start: typed run semantics filled in from the config once."""
    allocation = get_allocation(config.allocation)
    return PruningReport(
        config=config.to_dict(), layer_targets=dict(targets),
        ignored={name: n for block in blocks for name, n in block.ignored.items()},
        sparsity_structure=config.sparsity_structure, sparsity_cap=sparsity_cap(config),
        score_name=allocation.score_name(config) if config.nm_pattern is None else "score",
    )


@torch.no_grad()
def prune_unstructured(state: ModelState, config: Any, show_progress: bool = True):
    """Allocate targets and prune every block of ``state.model`` in place; returns ``(model, report)``."""
    if config.nm_pattern is not None and abs(config.effective_sparsity - config.sparsity) > 1e-9:
        logger.info("N:M pattern %s sets the sparsity to %.4f; sparsity=%s is not used.",
                    config.nm, config.effective_sparsity, config.sparsity)
    start = time.perf_counter()
    if config.reconstruct == "block" and current_parallel().active:  # the same answer on every rank
        raise DistributedRunError("reconstruct='block' does not run under torchrun yet (its refit would see one "
                                  "rank's windows only); run it in one process, or drop reconstruct.")
    if config.bits is not None and current_parallel().active:
        raise DistributedRunError("bits does not run under torchrun yet (each rank would hold the scales of its "
                                  "own matrices only); quantise in one process, or drop bits.")
    blocks = state.block_weights(config)
    check_weights(state, blocks)
    model = state.model
    was_training = model.training
    model.eval()
    try:
        pruner_cls = get_pruner_class(config.method)
        forget_quantization(model)
        widths = None
        if config.bits is not None:  # prune, then quantise each matrix to its allocated width
            pruner_cls, widths = plan_quantisation(config, blocks, pruner_cls,
                                                   lambda: state.spectra(config, show_progress))
        if pruner_cls.needs_calibration or get_allocation(config.allocation).needs_calibration:
            config.resolve_seqlen(max_positions(model))  # a too-long seqlen fails before any analysis
        allocated = compute_targets(state, config, blocks, show_progress)
        targets = allocated.per_matrix
        report = new_report(config, blocks, targets)
        state.last_report = report
        inputs = None
        if pruner_cls.needs_calibration or config.reconstruct == "block":
            inputs, report.calibration = state.calibration_inputs(config)
        parallel = current_parallel()
        progress = tqdm(list(enumerate(state.blocks)), desc=f"Pruning ({config.method})", unit="block",
                        disable=not show_progress or not parallel.is_main)
        for index, block in progress:
            block_start = time.perf_counter()
            matrices = blocks[index].matrices
            pruners = {m.name: pruner_cls(m.name, **config.pruner_options(pruner_cls.options)) for m in matrices}
            if inputs is not None:
                with parallel.step(f"collecting the statistics of block {index}"):
                    collect_block_statistics(block, index, matrices, pruners, inputs)
                if pruner_cls.needs_calibration:
                    parallel.sum_statistics([(pruners[m.name], m.shape[1]) for m in matrices])
            owners = parallel.owners([solver_cost(m) for m in matrices])
            with parallel.step(f"pruning block {index}"):
                new_weights = prune_block(matrices, pruners, targets, config.nm_group, report,
                                          [owner == parallel.rank for owner in owners])
            share_weights(parallel, matrices, new_weights, owners)
            if config.reconstruct == "block" and inputs is not None:
                refit = reconstruct_block(block, index, matrices, new_weights, inputs, config.reconstruct_iters,
                                          config.reconstruct_damp)
                new_weights = refit.weights
                report.reconstruction_s += refit.seconds
            quantized = {name: p.quantized for name, p in pruners.items() if getattr(p, "quantized", None)}
            with hold_interrupts():  # a Ctrl-C here lands once the block is fully written and reported
                write_block(index, matrices, new_weights, targets, blocks[index], allocated.block_scores, report)
                record_quantized(model, quantized)  # the grids of exactly the weights just written
            if inputs is not None:
                with parallel.step(f"replaying block {index}"):
                    inputs.hidden_states = run_block(block, inputs, index)
            report.blocks[-1].seconds = time.perf_counter() - block_start
            report.elapsed_s = time.perf_counter() - start
    finally:
        model.train(was_training)
    report.completed = True
    if widths is not None:
        report.quantization = quantization_summary(config, widths, blocks, recorded_grids(model))
    _warn_about(report, config)
    logger.info("Pruned to %.4f total sparsity in %.1f s", report.total_sparsity, report.elapsed_s)
    return model, report


def solver_cost(matrix: PrunableMatrix) -> float:
    """Relative cost of pruning a matrix (out × in², the order of SparseGPT's and ALPS's solvers), which
    balances the matrices of a block over the ranks of a data-parallel run."""
    rows, cols = matrix.shape
    return float(rows) * cols * cols


def prune_block(matrices: list[PrunableMatrix], pruners: dict[str, LayerPruner], targets: dict[str, float],
                group: int | None, report: PruningReport,
                mine: list[bool] | None = None) -> dict[str, torch.Tensor]:
    """New values of every matrix of the block (of those ``mine`` selects: the others are another rank's),
    computed before any is written. A matrix that received no calibration input (an expert no token was
    routed to) is pruned by the pruner's fallback (magnitude; then round to nearest when quantising) and
    reported."""
    new_weights = {}
    for i, matrix in enumerate(matrices):
        pruner = pruners[matrix.name]
        if not pruner.calibrated:
            report.uncalibrated.append(matrix.name)
            pruner = pruners[matrix.name] = pruner.fallback()
        if mine is not None and not mine[i]:
            pruners[matrix.name].free()
            continue
        weight = matrix.read()  # finite: every block weight is checked before block 0
        target = targets[matrix.name]
        nm = (round((1.0 - target) * group), group) if group else None
        new_weights[matrix.name] = pruner.prune(weight, target, nm)
        pruners[matrix.name].free()
    return new_weights


def share_weights(parallel: Parallel, matrices: list[PrunableMatrix], new_weights: dict[str, torch.Tensor],
                  owners: list[int]) -> None:
    """Every rank receives the new weights its owners computed (nothing to do in one process)."""
    if not parallel.active:
        return
    for matrix, owner in zip(matrices, owners):
        if owner == parallel.rank:
            new_weights[matrix.name] = parallel.share(new_weights[matrix.name], owner)
        else:
            weight = matrix.read()
            new_weights[matrix.name] = parallel.share(torch.empty_like(weight), owner)


def write_block(index: int, matrices: list[PrunableMatrix], new_weights: dict[str, torch.Tensor],
                targets: dict[str, float], weights: BlockWeights, block_scores: list[float | None],
                report: PruningReport) -> None:
    """Write every new weight back and report the block: achieved over its pruned matrices, and over all its
    weights (ignored ones counted dense)."""
    zeros, params = 0.0, 0
    for matrix in matrices:
        weight = new_weights[matrix.name]
        matrix.write(weight)
        sparsity = layer_sparsity(weight)
        report.layers[matrix.name] = sparsity
        zeros += sparsity * weight.numel()
        params += weight.numel()
    wanted = sum(targets[m.name] * m.numel for m in matrices)
    report.blocks.append(BlockReport(
        index=index, score=block_scores[index], target_sparsity=wanted / params if params else 0.0,
        achieved_sparsity=zeros / params if params else 0.0, num_params=params, seconds=0.0,
        ignored_params=sum(weights.ignored.values()),
    ))


def _warn_about(report: PruningReport, config: Any) -> None:
    if report.pinned_blocks:
        logger.warning(
            "Blocks %s are pinned at the sparsity cap (max_sparsity=%s): the allocation wanted more there and "
            "gave the excess to other blocks; lower epsilon or raise max_sparsity to change that.",
            report.pinned_blocks, config.max_sparsity)
    if report.uncalibrated:
        logger.warning("%d expert matrices received no calibration token and were pruned by magnitude: %s",
                       len(report.uncalibrated), ", ".join(report.uncalibrated[:8]))
