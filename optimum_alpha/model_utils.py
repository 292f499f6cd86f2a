"""Finding transformer blocks and their prunable layers in any decoder-only model.

Blocks are found structurally (the largest ``nn.ModuleList`` of identical block classes reachable from the
model), not by model name, so Llama, Mistral, Qwen2, OPT, GPT-2, GPT-NeoX and friends all work.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import align_module_device
from torch import nn

from .errors import ModelStructureError

try:  # GPT-2 style layers store the weight transposed: (in_features, out_features).
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers always has it today
    Conv1D = ()  # type: ignore[assignment,misc]

PRUNABLE_TYPES: tuple[type, ...] = (nn.Linear, Conv1D) if Conv1D else (nn.Linear,)

# Well-known attribute paths, tried first; the generic search below covers the rest.
KNOWN_BLOCK_PATHS = (
    "model.layers",
    "model.decoder.layers",
    "transformer.h",
    "gpt_neox.layers",
    "transformer.blocks",
    "model.language_model.layers",
)


def _get_attr_path(root: nn.Module, path: str) -> nn.Module | None:
    module: object = root
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module if isinstance(module, nn.Module) else None


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return ``(attribute_path, blocks)`` of the model's stack of transformer blocks."""
    for path in KNOWN_BLOCK_PATHS:
        candidate = _get_attr_path(model, path)
        if isinstance(candidate, nn.ModuleList) and len(candidate) > 0:
            return path, candidate
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(block) for block in module}) != 1:
            continue
        if not any(isinstance(m, PRUNABLE_TYPES) for m in module[0].modules()):
            continue
        if best is None or len(module) > len(best[1]):
            best = (name, module)
    if best is None:
        raise ModelStructureError(
            f"No transformer blocks found in {type(model).__name__}: tried the attribute paths "
            f"{', '.join(KNOWN_BLOCK_PATHS)} and every nn.ModuleList of identical modules holding Linear layers. "
            "Pass a decoder-only causal LM (for example one loaded with AutoModelForCausalLM)."
        )
    return best


def set_weight_matrix(layer: nn.Module, matrix: torch.Tensor) -> None:
    """Write an (out_features, in_features) matrix back into the layer, in its dtype and layout."""
    target = layer.weight.data
    if Conv1D and isinstance(layer, Conv1D):
        matrix = matrix.t()
    target.copy_(matrix.to(dtype=target.dtype, device=target.device))


def max_positions(model: Any) -> int | None:
    """The model's maximum sequence length as declared in its config, if any."""
    config = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_finite(matrix: torch.Tensor, name: str) -> None:
    """Raise a ModelStructureError naming the tensor when it holds NaN or Inf."""
    if not torch.isfinite(matrix).all():
        bad = int((~torch.isfinite(matrix)).sum())
        raise ModelStructureError(
            f"Weight {name} contains {bad} NaN/Inf values; the checkpoint is corrupt or was saved after a "
            "diverged run. Reload a healthy checkpoint before pruning."
        )


def check_block_parameters(blocks_path: str, blocks: nn.ModuleList) -> None:
    """Every parameter of every block is finite (norms too: a NaN anywhere poisons the statistics), checked
    before block 0 is touched; weights offloaded to CPU or disk are brought in one module at a time."""
    for index, block in enumerate(blocks):
        for local, module in block.named_modules():
            with align_module_device(module):
                for name, param in module.named_parameters(recurse=False):
                    full = ".".join(part for part in (blocks_path, str(index), local, name) if part)
                    check_finite(param.detach(), full)
