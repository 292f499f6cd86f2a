"""The model being compressed and what every stage reads of it: blocks, tokenizer, cached spectra, last report.

Stages (:mod:`.targets`, :mod:`.unstructured`, :mod:`.structured`, :mod:`.epsilon_search`) take a
:class:`ModelState`, never the :class:`~optimum_alpha.AlphaPruner` facade, so the facade can stay thin and
the stages can call each other without an import cycle.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .calibration import BlockInputs, calibration_inputs
from .esd import ESDReport, analyze
from .matrices import BlockWeights, model_weights
from .model_utils import find_blocks
from .report import PruningReport


class ModelState:
    """A model, its tokenizer and source, its transformer blocks, the ESD analysis (computed on first use and
    recomputed when its settings or the matrices change) and the report of the last (possibly interrupted)
    prune."""

    def __init__(self, model: nn.Module, tokenizer: Any = None, source: str | None = None,
                 fix_finger: str = "reference", show_progress: bool = True) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.blocks_path, self.blocks = find_blocks(model)
        self.esd_report: ESDReport | None = None
        self.analysis_options: dict[str, Any] = {"fix_finger": fix_finger, "show_progress": show_progress}
        self.last_report: PruningReport | None = None

    def block_weights(self, config: Any = None) -> list[BlockWeights]:
        """Every block's weights sorted into prunable matrices, ignored (dense on purpose) and uncovered."""
        ignore = getattr(config, "ignore", None)
        prune_routers = bool(getattr(config, "prune_routers", False))
        return model_weights(self.model, ignore, prune_routers)[1]

    def analyze(self, fix_finger: str = "reference", show_progress: bool = True, block_score: str = "mean",
                config: Any = None) -> ESDReport:
        """Run the ESD analysis of the current weights over the prunable matrices ``config`` selects."""
        matrices = [m for block in self.block_weights(config) for m in block.matrices]
        sampling = {"esd_sampling": config.esd_sampling, "farms": config.farms_options} if config else {}
        self.esd_report = analyze(self.model, fix_finger=fix_finger, show_progress=show_progress,  # type: ignore[arg-type]
                                  matrices=matrices, block_score=block_score, **sampling)
        return self.esd_report

    def spectra(self, config: Any, show_progress: bool = False) -> ESDReport:
        """The ESD analysis matching ``config`` (fix-finger, block score, sampling, matrices), reused when it is
        current."""
        report = self.esd_report
        names = [m.name for block in self.block_weights(config) for m in block.matrices]
        if (report is None or not report.matches(config.fix_finger, config.block_score, config.esd_sampling,
                                                 config.farms_options)
                or [spectrum.name for spectrum in report.matrices] != names):
            report = self.analyze(fix_finger=config.fix_finger, show_progress=show_progress,
                                  block_score=config.block_score, config=config)
        return report

    def calibration_inputs(self, config: Any, purpose: str | None = None) -> tuple[BlockInputs, dict[str, Any]]:
        """Calibration windows of ``config``, captured at every block's input."""
        return calibration_inputs(self.model, self.blocks, self.tokenizer, config, purpose)
