"""``epsilon="auto"`` (and ATP's ``atp_beta="auto"``): choose AlphaPruning's ε by perplexity on held-out calibration-source windows.

The paper tunes ε (its τ) per model and method with a sweep (Table 8), scored on the test set. Here every
value of ``config.epsilon_grid`` is tried: the dense prunable weights are snapshotted, the model is pruned
with that ε, scored on ``config.heldout`` windows of the *calibration* source that share no token with the
calibration windows, and restored; then the model is pruned once more with the best ε. The evaluation set is
never read. Cost: len(epsilon_grid) + 1 prunes and len(epsilon_grid) held-out evaluations.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any, Callable

import torch

from .configuration import AlphaPruningConfig
from .data import sample_calibration
from .evaluate import window_perplexity
from .interrupts import hold_interrupts
from .model_utils import max_positions
from .report import PruningReport
from .state import ModelState

PruneOnce = Callable[[ModelState, AlphaPruningConfig, bool], tuple[Any, Any]]

logger = logging.getLogger(__name__)


def snapshot_weights(state: ModelState, config: AlphaPruningConfig) -> dict[str, torch.Tensor]:
    """A CPU copy of every prunable matrix (the only weights a prune changes)."""
    return {m.name: m.read().detach().to("cpu", copy=True) for block in state.block_weights(config)
            for m in block.matrices}


def restore_weights(state: ModelState, config: AlphaPruningConfig, copies: dict[str, torch.Tensor]) -> None:
    """Write the snapshotted matrices back wherever each one lives (GPU, CPU, offload map)."""
    for block in state.block_weights(config):
        for matrix in block.matrices:
            matrix.write(copies[matrix.name])


def search_epsilon(state: ModelState, config: AlphaPruningConfig, prune_once: PruneOnce,
                   show_progress: bool = True):
    """Sweep ``config.epsilon_grid`` with ``prune_once`` (the pipeline's prune for a fixed ε), keep the ε with
    the lowest held-out perplexity; ``(model, report)`` of the final prune, whose ``epsilon_search`` holds the
    whole sweep."""
    return search_on_heldout(state, config, "epsilon", config.epsilon_grid, prune_once, show_progress)


def search_on_heldout(state: ModelState, config: AlphaPruningConfig, field: str, grid: tuple[float, ...],
                      prune_once: PruneOnce, show_progress: bool = True):
    """One ``prune_once`` per value of ``grid`` for config ``field`` (alpha's ε, ATP's β), each scored on the
    held-out windows and undone; then the prune with the best value. ``report.epsilon_search`` holds the sweep
    (its ``parameter`` names the field)."""
    seqlen = config.resolve_seqlen(max_positions(state.model))
    sample = sample_calibration(state.tokenizer, config.calibration_dataset, config.nsamples, seqlen,
                                config.seed, config.calibration_sampling, heldout=config.heldout)
    # Pinning nsamples keeps every trial's calibration windows exactly the ones the held-out set avoids.
    base = replace(config, nsamples=int(sample.ids.shape[0]))
    snapshot = snapshot_weights(state, config)
    scores: list[float] = []
    try:
        for value in grid:
            prune_once(state, replace(base, **{field: value}), False)
            score = window_perplexity(state.model, sample.heldout)
            scores.append(score if math.isfinite(score) else math.inf)
            logger.info("%s=auto: %.4g -> held-out perplexity %.3f", field, value, score)
            with hold_interrupts():  # a Ctrl-C lands once the dense weights are back
                restore_weights(state, config, snapshot)
    except BaseException:
        with hold_interrupts(deliver=False):  # the exception is already on its way; restore whole
            restore_weights(state, config, snapshot)  # an interrupted sweep leaves the dense model, not a trial
            # The trial's report described weights that are gone: the model is dense, nothing is pruned.
            state.last_report = interrupted_report(config, grid, sample, scores, field)
        raise
    best = min(range(len(scores)), key=scores.__getitem__)
    chosen = grid[best]
    logger.info("%s=auto: chose %.4g of %s", field, chosen, list(grid))
    search = describe_search(grid, sample, scores, chosen, field)
    try:
        model, report = prune_once(state, replace(base, **{field: chosen}), show_progress)
    except BaseException:  # the final prune's partial report (blocks 0..k-1) stands; it also records the sweep
        if state.last_report is not None:
            state.last_report.epsilon_search = search
        raise
    report.config = {**report.config, field: getattr(config, field), "nsamples": config.nsamples}
    report.epsilon_search = search
    return model, report


def interrupted_report(config: AlphaPruningConfig, grid: tuple[float, ...], sample: Any, scores: list[float],
                       parameter: str = "epsilon") -> PruningReport:
    """The report after a sweep stopped during its trials: no block pruned, not completed, the scores so far."""
    return PruningReport(config=config.to_dict(), completed=False,
                         epsilon_search=describe_search(grid, sample, scores, None, parameter))


def describe_search(grid: tuple[float, ...], sample: Any, scores: list[float], chosen: float | None,
                    parameter: str = "epsilon") -> dict:
    """The sweep as the report, ``alpha_pruning.json`` and the model card record it (``chosen`` None and
    ``completed`` False: the sweep was interrupted)."""
    return {
        "parameter": parameter,
        "grid": list(grid),
        "heldout_perplexity": list(scores),
        "chosen": chosen,
        "heldout_windows": int(sample.heldout.shape[0]),
        "heldout_seqlen": int(sample.heldout.shape[1]),
        "heldout_source": sample.source,
        "prunes": len(grid) + 1,
        "completed": chosen is not None,
    }
