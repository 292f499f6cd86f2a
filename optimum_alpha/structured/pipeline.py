"""Width pruning, one block at a time on calibration data (the design of the unstructured pipeline).

For each block: one pass of the dense block collects the Gram matrices of the ``o_proj`` and ``down_proj``
inputs; the plan's head and channel counts are filled with the most salient ones; ``o_proj``/``down_proj`` are
refitted on the kept inputs (or only sliced, the baseline); the block is rebuilt smaller; and the *pruned*
block is replayed so the next block calibrates on what it will really receive. Every plan is made, and every
bad input refused, before block 0 changes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from tqdm.auto import tqdm

from ..calibration import BlockInputs, run_block
from ..distributed import current as current_parallel
from ..configuration import AlphaPruningConfig
from ..errors import ConfigError, ModelStructureError
from ..interrupts import hold_interrupts
from ..model_utils import check_block_parameters
from ..pruning.masks import check_nm_columns
from ..report import BlockReport, PruningReport
from ..state import ModelState
from ..targets import compute_targets
from ..unstructured import prune_unstructured
from .apply import shrink_block
from .checkpoint import record_widths
from .layout import BlockLayout, WidthPlan, block_layout, max_fraction, plan_block
from .refit import reconstruction_error, refit
from .saliency import GramCollector, channel_energy, head_columns, select_heads, top_sorted


def _kv_groups(layout: BlockLayout, config: AlphaPruningConfig) -> bool:
    return layout.group_size == 1 if config.prune_kv_groups is None else bool(config.prune_kv_groups)


def width_bound(layouts: Sequence[BlockLayout], config: AlphaPruningConfig) -> float:
    """The largest fraction any block may lose, refusing a target no allocation can meet."""
    bound = min(max_fraction(layout, _kv_groups(layout, config), config.head_sparsity) for layout in layouts)
    if config.sparsity > bound:
        raise ConfigError(
            f"sparsity={config.sparsity} would remove all heads or all MLP channels of a block: width pruning "
            f"keeps one head per key/value group and one channel, so at most {bound:.3f} can go."
        )
    return min(config.max_sparsity, bound)


def block_fractions(state: ModelState, config: AlphaPruningConfig, bound: float, show_progress: bool = False
                    ) -> tuple[list[float], list[float | None]]:
    """Each block's share of its weights to remove, from the pipeline's own registered allocation (block
    granularity, every block bounded to ``bound``)."""
    allocation_config = replace(config.unstructured_stage(), sparsity=config.sparsity, max_sparsity=bound, nm=None)
    blocks = state.block_weights(allocation_config)
    allocated = compute_targets(state, allocation_config, blocks, show_progress)
    return [allocated.per_matrix[block.matrices[0].name] for block in blocks], allocated.block_scores


def _check_nm_after(plans: Sequence[WidthPlan], layouts: Sequence[BlockLayout], m: int) -> None:
    for index, (plan, layout) in enumerate(zip(plans, layouts)):
        for name, columns in (("o_proj", plan.width.num_attention_heads * layout.head_dim),
                              ("down_proj", plan.width.intermediate_size)):
            check_nm_columns(columns, (1, m), f"after width pruning block {index}'s {name}",
                             "choose another sparsity or M, or drop nm")


def _prune_block(block: torch.nn.Module, index: int, layout: BlockLayout, plan: WidthPlan,
                 inputs: BlockInputs, config: AlphaPruningConfig) -> dict[str, Any]:
    """Select, refit and shrink one block; returns its new width and reconstruction errors."""
    o_proj, down_proj = layout.attention.o_proj, layout.mlp.down_proj
    stats = GramCollector(o_proj), GramCollector(down_proj)
    parallel = current_parallel()
    try:
        with parallel.step(f"collecting the statistics of block {index}"):
            run_block(block, inputs, index, keep_outputs=False)
    finally:
        for collector in stats:
            collector.close()
    parallel.sum_statistics([(stats[0], o_proj.in_features), (stats[1], down_proj.in_features)])
    (o_gram, down_gram) = (collector.gram for collector in stats)
    o_weight, down_weight = o_proj.weight.data, down_proj.weight.data
    kept_q, kept_kv = select_heads(layout, plan, o_weight, o_gram)
    channels = top_sorted(channel_energy(down_weight, down_gram), plan.width.intermediate_size)
    o_columns = head_columns(kept_q, layout.head_dim)
    new = {}
    for name, weight, gram, keep in (("o_proj", o_weight, o_gram, o_columns),
                                     ("down_proj", down_weight, down_gram, channels)):
        if len(keep) == weight.shape[1]:  # nothing removed: the ridge would only perturb the weights
            new[name] = weight.clone()
        elif config.structured_refit:
            new[name] = refit(weight, gram, keep, config.structured_damp)
        else:
            new[name] = weight[:, keep.to(weight.device)]
        new[f"{name}_error"] = reconstruction_error(weight, gram, new[name], keep)
    with hold_interrupts():  # a Ctrl-C lands once the block is whole again
        width = shrink_block(layout, kept_q, kept_kv, channels, new["o_proj"], new["down_proj"])
    return {"index": index, "width": width.to_dict(), "params": layout.params(),
            "removed_fraction": 1.0 - layout.params(width) / layout.params(),
            "o_proj_error": new["o_proj_error"], "down_proj_error": new["down_proj_error"]}


@torch.no_grad()
def prune_widths(state: ModelState, config: AlphaPruningConfig, show_progress: bool = True) -> PruningReport:
    """Width-prune every block of ``state.model`` in place; the report's sparsities are removed fractions."""
    start = time.perf_counter()
    layouts = [block_layout(block, i) for i, block in enumerate(state.blocks)]
    if any(p.device.type == "meta" for block in state.blocks for p in block.parameters()):
        raise ModelStructureError(
            "Width pruning rebuilds the blocks' Linear layers, so the weights must be in memory; load the model "
            "without disk offload (device_map) for structure='width'."
        )
    # A NaN/Inf in any parameter of block k (norms too: they feed the Gram matrices) fails before block 0.
    check_block_parameters(state.blocks_path, state.blocks)
    bound = width_bound(layouts, config)
    fractions, scores = block_fractions(state, config, bound, show_progress)
    # An N:M pattern after width pruning needs down_proj's inputs (the kept channels) in whole groups of M.
    multiple = config.nm_group if config.sparsifies_after_width and config.nm_group is not None else 1
    plans = [plan_block(layout, fraction, i, config.prune_kv_groups, config.head_sparsity, multiple)
             for i, (layout, fraction) in enumerate(zip(layouts, fractions))]
    if config.sparsifies_after_width and config.nm_group is not None:
        _check_nm_after(plans, layouts, config.nm_group)
    from ..allocations import get_allocation

    report = PruningReport(config=config.to_dict(), sparsity_cap=float(config.max_sparsity), width_only=True,
                           score_name=get_allocation(config.allocation).score_name(config))
    state.last_report = report
    inputs, report.calibration = state.calibration_inputs(config, "Width pruning")
    progress = tqdm(list(enumerate(state.blocks)), desc="Width pruning", unit="block", disable=not show_progress)
    for index, block in progress:
        block_start = time.perf_counter()
        layout, plan = layouts[index], plans[index]
        outcome = _prune_block(block, index, layout, plan, inputs, config)
        record_widths(state.model, [block_layout(b, i).width for i, b in enumerate(state.blocks)],
                      layout.head_dim)
        report.structured.append({**outcome, "target_fraction": fractions[index]})
        report.blocks.append(BlockReport(index=index, score=scores[index], target_sparsity=fractions[index],
                                         achieved_sparsity=outcome["removed_fraction"],
                                         num_params=layout.params(), seconds=0.0))
        inputs.hidden_states = run_block(block, inputs, index)
        report.blocks[-1].seconds = time.perf_counter() - block_start
        report.elapsed_s = time.perf_counter() - start
    report.completed = True
    return report


def prune_structured(state: ModelState, config: AlphaPruningConfig, show_progress: bool = True):
    """``structure="width"``: width pruning, then (if asked) unstructured/N:M pruning of what is left.
    Returns ``(model, report)`` like :meth:`AlphaPruner.prune`; the report of a two-stage run is the second
    stage's, with the width stage under ``report.structured``."""
    width_report = prune_widths(state, config, show_progress)
    if not config.sparsifies_after_width:
        return state.model, width_report
    stage = config.unstructured_stage()
    state.esd_report = None  # stale: the spectra of the smaller matrices drive the second allocation
    # Until the second stage reports its first block, the run is not complete: no unstructured block yet,
    # the width stage's outcome kept.
    state.last_report = PruningReport(config=stage.to_dict(), structured=width_report.structured)
    try:
        model, report = prune_unstructured(state, stage, show_progress)
    except BaseException:
        if state.last_report is not None:
            state.last_report.structured = width_report.structured
        raise
    report.structured = width_report.structured
    return model, report
