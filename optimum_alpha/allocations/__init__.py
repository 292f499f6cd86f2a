"""Allocations: how the global sparsity is spread over blocks (or matrices), one plug-in module each.

Add one by writing ``optimum_alpha/allocations/<name>.py`` with a class decorated
``@register_allocation("<name>")`` (see :mod:`.base` for the contract); nothing else lists it.
"""

from .base import (
    Allocated,
    Allocation,
    AllocationInputs,
    allocation_classes,
    allocation_names,
    get_allocation,
    register_allocation,
)

__all__ = ["Allocated", "Allocation", "AllocationInputs", "allocation_classes", "allocation_names", "get_allocation",
           "register_allocation"]
