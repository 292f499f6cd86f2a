"""Structured width pruning: remove attention heads and MLP channels for a smaller dense model."""

from .checkpoint import AlphaWidthConfig, AlphaWidthHfQuantizer, block_widths
from .layout import BlockWidth, block_layout
from .pipeline import prune_structured, prune_widths

__all__ = ["AlphaWidthConfig", "AlphaWidthHfQuantizer", "BlockWidth", "block_layout", "block_widths",
           "prune_structured", "prune_widths"]
