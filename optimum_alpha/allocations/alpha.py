"""AlphaPruning (paper eq. 4): heavy-tailed units (low ESD metric) are pruned less."""

from __future__ import annotations

from typing import Any

from ..allocation import alpha_allocation
from .base import Allocated, Allocation, AllocationInputs, register_allocation


@register_allocation("alpha")
class AlphaAllocation(Allocation):
    needs_esd = True
    searched_option = ("epsilon", "epsilon_grid")

    @classmethod
    def score_name(cls, config: Any) -> str:
        return config.metric

    def allocate(self, inputs: AllocationInputs) -> Allocated:
        config = inputs.config
        report = inputs.spectra()
        scores, counts = report.scores(config.metric, config.granularity)
        sparsities = alpha_allocation(scores, counts, config.sparsity, epsilon=config.epsilon,
                                      max_sparsity=inputs.max_sparsity)
        by_block = {b.index: b.metrics[config.metric] for b in report.blocks}
        block_scores = [by_block.get(i) for i in range(len(inputs.blocks))]
        if config.granularity == "block":
            unit_of = {b.index: s for b, s in zip(report.blocks, sparsities)}
            return Allocated({m.name: unit_of[m.block_index] for m in inputs.matrices}, block_scores)
        by_name = {spectrum.name: s for spectrum, s in zip(report.matrices, sparsities)}
        return Allocated({m.name: by_name[m.name] for m in inputs.matrices}, block_scores)
