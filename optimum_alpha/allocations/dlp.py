"""DLP (Chen et al., ICML 2025): a block whose median |W|·‖X‖ is higher is pruned more (see :mod:`optimum_alpha.dlp`)."""

from __future__ import annotations

from typing import Any

from ..dlp import check_dlp_alpha, collect_unimportance, dlp_allocation
from .base import Allocated, Allocation, AllocationInputs, per_unit_to_matrices, register_allocation


@register_allocation("dlp")
class DLPAllocation(Allocation):
    needs_calibration = True
    block_only = True

    @classmethod
    def score_name(cls, config: Any) -> str:
        return "dlp_unimportance"

    @classmethod
    def check_config(cls, config: Any) -> None:
        super().check_config(config)
        check_dlp_alpha(float(config.dlp_alpha))

    def allocate(self, inputs: AllocationInputs) -> Allocated:
        """A dense sequential pass measures each block's median Wanda score, which sets its sparsity."""
        config = inputs.config
        calibration = inputs.calibration()
        block_matrices = [block.matrices for block in inputs.blocks]
        scores = collect_unimportance(inputs.block_modules, block_matrices, calibration, inputs.show_progress)
        del calibration
        counts = [sum(m.numel for m in matrices) for matrices in block_matrices]
        sparsities = dlp_allocation(scores, counts, config.sparsity, config.dlp_alpha, inputs.max_sparsity)
        return Allocated(per_unit_to_matrices(inputs, sparsities), list(scores))
