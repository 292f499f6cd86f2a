"""Saving, loading and pushing pruned checkpoints (dense safetensors or the ``alpha_sparse`` bitmask)."""

from .hub import push_folder_to_hub
from .load import load_pruned
from .quantizer import AlphaSparseConfig, AlphaSparseHfQuantizer, register
from .save import save_pruned

__all__ = [
    "AlphaSparseConfig",
    "AlphaSparseHfQuantizer",
    "load_pruned",
    "push_folder_to_hub",
    "register",
    "save_pruned",
]
