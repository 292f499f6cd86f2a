"""Block spectra after pruning beside those before: the AlphaPruning paper's own diagnostic (its Figure 5,
where AlphaPruning leaves a lower mean alpha than uniform pruning at the same sparsity).

The after-analysis reads the same matrices with the same fix-finger mode and block score as the before one,
so the two lists differ only by what pruning did to the weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from ..esd import ESDReport, analyze, canonical_metric
from ..matrices import model_weights


@dataclass
class SpectraComparison:
    """Per-block ``metric`` before and after pruning, with their plain means over blocks."""

    metric: str
    before: list[float]
    after: list[float]
    fix_finger: str = "reference"
    block_score: str = "mean"

    @property
    def mean_before(self) -> float:
        return sum(self.before) / len(self.before)

    @property
    def mean_after(self) -> float:
        return sum(self.after) / len(self.after)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean_before": self.mean_before, "mean_after": self.mean_after}

    def rows(self) -> list[list[Any]]:
        """``[block, before, after, change]`` per block, for a table."""
        return [[i, b, a, a - b] for i, (b, a) in enumerate(zip(self.before, self.after))]


def compare_spectra(before: ESDReport, after: ESDReport, metric: str = "alpha_hill") -> SpectraComparison:
    metric = canonical_metric(metric)
    return SpectraComparison(metric, before.scores(metric)[0], after.scores(metric)[0], before.fix_finger,
                             before.block_score)


def analyze_like(model: nn.Module, before: ESDReport, show_progress: bool = False) -> ESDReport:
    """The ESD analysis of ``model``'s current weights over the matrices, metrics and options of ``before``."""
    names = {m.name for m in before.matrices}
    matrices = [m for block in model_weights(model)[1] for m in block.matrices if m.name in names]
    metrics = list(before.matrices[0].metrics) if before.matrices else None
    return analyze(model, metrics=metrics, fix_finger=before.fix_finger, show_progress=show_progress,  # type: ignore[arg-type]
                   matrices=matrices, block_score=before.block_score)


def spectra_after_pruning(model: nn.Module, before: ESDReport, metric: str = "alpha_hill",
                          show_progress: bool = False) -> tuple[ESDReport, SpectraComparison]:
    """Re-analyse the pruned ``model`` like ``before`` (its analysis before pruning) and compare ``metric``."""
    after = analyze_like(model, before, show_progress)
    return after, compare_spectra(before, after, metric)
