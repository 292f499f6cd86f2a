"""Which stages a config runs: ε search around a fixed-ε prune; width pruning, or unstructured/N:M pruning.

The facade (:class:`~optimum_alpha.AlphaPruner`) calls :func:`prune_model`; the stages never call the facade.
"""

from __future__ import annotations

from typing import Any

from .epsilon_search import search_on_heldout
from .report import PruningReport
from .state import ModelState
from .structured import prune_structured
from .unstructured import prune_unstructured


def start_report(state: ModelState, config: Any) -> None:
    """Before anything runs, the report says so: no block pruned, not completed. An interruption before
    block 0 (ESD analysis, allocation, calibration capture) leaves exactly that, never an earlier run's."""
    state.last_report = PruningReport(config=config.to_dict(), completed=False)


def prune_with_fixed_epsilon(state: ModelState, config: Any, show_progress: bool = True):
    """One prune: heads and channels first with ``structure="width"`` (then, optionally, unstructured)."""
    start_report(state, config)
    if config.structure == "width":
        return prune_structured(state, config, show_progress)
    return prune_unstructured(state, config, show_progress)


def prune_model(state: ModelState, config: Any, show_progress: bool = True):
    """Prune ``state.model`` in place as ``config`` says; returns ``(model, PruningReport)``."""
    start_report(state, config)
    search = config.heldout_search  # alpha's ε or ATP's β = "auto": one prune per grid value, then the best
    if search is not None:
        return search_on_heldout(state, config, *search, prune_with_fixed_epsilon, show_progress)
    return prune_with_fixed_epsilon(state, config, show_progress)
