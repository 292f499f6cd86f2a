"""OWL (Yin et al., 2023): blocks with more activation outliers keep more weights (see :mod:`optimum_alpha.owl`)."""

from __future__ import annotations

from typing import Any

from ..owl import check_owl_lambda, check_owl_threshold, collect_outlier_ratios, owl_allocation
from .base import Allocated, Allocation, AllocationInputs, per_unit_to_matrices, register_allocation


@register_allocation("owl")
class OWLAllocation(Allocation):
    needs_calibration = True
    block_only = True

    @classmethod
    def score_name(cls, config: Any) -> str:
        return "outlier_ratio"

    @classmethod
    def check_config(cls, config: Any) -> None:
        check_owl_threshold(float(config.owl_threshold))
        check_owl_lambda(float(config.owl_lambda))

    def allocate(self, inputs: AllocationInputs) -> Allocated:
        """A dense sequential pass measures each block's outlier ratio, which sets its sparsity."""
        config = inputs.config
        calibration = inputs.calibration()
        block_matrices = [block.matrices for block in inputs.blocks]
        ratios = collect_outlier_ratios(inputs.block_modules, block_matrices, calibration, config.owl_threshold,
                                        inputs.show_progress)
        del calibration
        counts = [sum(m.numel for m in matrices) for matrices in block_matrices]
        sparsities = owl_allocation(ratios, counts, config.sparsity, config.owl_lambda, inputs.max_sparsity)
        return Allocated(per_unit_to_matrices(inputs, sparsities), list(ratios))

