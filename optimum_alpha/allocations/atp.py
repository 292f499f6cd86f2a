"""ATP (Huang et al., ICML 2025): sparsity rising with depth by one step β (see :mod:`optimum_alpha.atp`)."""

from __future__ import annotations

from typing import Any

from ..atp import atp_allocation, check_atp_options
from ..errors import ConfigError
from .base import Allocated, Allocation, AllocationInputs, per_unit_to_matrices, register_allocation


@register_allocation("atp")
class ATPAllocation(Allocation):
    block_only = True
    searched_option = ("atp_beta", "atp_beta_grid")

    @classmethod
    def score_name(cls, config: Any) -> str:
        return "depth"

    @classmethod
    def check_config(cls, config: Any) -> None:
        super().check_config(config)
        if isinstance(config.atp_beta, str):
            config.atp_beta = config.atp_beta.lower()
        config.atp_beta_grid = tuple(float(b) for b in config.atp_beta_grid)
        check_atp_options(config.atp_beta, config.atp_beta_grid)

    def allocate(self, inputs: AllocationInputs) -> Allocated:
        config = inputs.config
        if config.atp_beta == "auto":
            raise ConfigError("atp_beta='auto' is chosen by prune() on held-out windows; give allocate() a "
                              "number, e.g. atp_beta=0.005.")
        counts = [sum(m.numel for m in block.matrices) for block in inputs.blocks]
        sparsities = atp_allocation(counts, config.sparsity, float(config.atp_beta), inputs.max_sparsity)
        return Allocated(per_unit_to_matrices(inputs, sparsities), [float(i) for i in range(len(counts))])
