"""Within-layer pruning methods (which weights go), registered by name."""

from . import alps, magnitude, sparsegpt, wanda  # noqa: F401  (registration)
from .base import PRUNERS, LayerPruner, get_pruner_class, register_pruner

__all__ = ["PRUNERS", "LayerPruner", "get_pruner_class", "register_pruner"]
