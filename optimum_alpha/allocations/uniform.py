"""Uniform: every prunable matrix gets the global sparsity (the baseline every paper compares with)."""

from __future__ import annotations

from .base import Allocated, Allocation, AllocationInputs, register_allocation


@register_allocation("uniform")
class UniformAllocation(Allocation):
    def allocate(self, inputs: AllocationInputs) -> Allocated:
        sparsity = float(inputs.config.sparsity)
        return Allocated({m.name: sparsity for m in inputs.matrices}, [None] * len(inputs.blocks))
