"""Width-pruned checkpoints: per-block shapes in ``config.json`` and the ``alpha_width`` loader.

When every block has the same width the model config simply gets the new ``num_attention_heads``,
``num_key_value_heads`` and ``intermediate_size`` (``head_dim`` kept explicit): stock transformers loads it.
Otherwise the config keeps the original sizes, lists each block's width under ``alpha_block_widths`` and
names ``quant_method: alpha_width``; the plug-in below resizes every block before the weights are loaded.
Without optimum-alpha, transformers refuses the unknown quant method, and with the plug-in missing in any
other way the smaller weights do not fit the full-size modules: a size-mismatch error, never random weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..checkpoint.formats import WIDTH_QUANT_METHOD, WIDTHS_ATTRIBUTE
from ..checkpoint.hf_registration import LoadOnlyQuantizer, register_method
from ..errors import CheckpointError
from ..model_utils import find_blocks
from .apply import resize_blocks
from .layout import BlockWidth


def record_widths(model: nn.Module, widths: Sequence[BlockWidth], head_dim: int) -> None:
    """Write the blocks' widths into the model config (plain sizes when they are all equal)."""
    config = model.config
    config.head_dim = head_dim  # fixed: only the head counts change
    if len(set(widths)) == 1:
        width = widths[0]
        config.num_attention_heads = width.num_attention_heads
        config.num_key_value_heads = width.num_key_value_heads
        config.intermediate_size = width.intermediate_size
        if hasattr(config, WIDTHS_ATTRIBUTE):
            delattr(config, WIDTHS_ATTRIBUTE)
    else:
        setattr(config, WIDTHS_ATTRIBUTE, [w.to_dict() for w in widths])


def block_widths(config: Any) -> list[BlockWidth] | None:
    """The per-block widths a config lists, or None for a model with one width."""
    listed = getattr(config, WIDTHS_ATTRIBUTE, None)
    if listed is None:
        return None
    try:
        return [BlockWidth(**entry) for entry in listed]
    except TypeError as err:
        raise CheckpointError(f"config.{WIDTHS_ATTRIBUTE} is malformed ({err}); save the model again.") from err


def resize_from_config(model: nn.Module, required: bool = True) -> None:
    """Resize the (empty) model's blocks to the widths its config lists."""
    widths = block_widths(model.config)
    if widths is None:
        if required:
            raise CheckpointError(
                f"quant_method {WIDTH_QUANT_METHOD!r} needs config.{WIDTHS_ATTRIBUTE}; the checkpoint is incomplete."
            )
        return
    resize_blocks(find_blocks(model)[1], widths)


def add_width_quantization_config(folder: Path, version: str) -> bool:
    """Name the ``alpha_width`` loader in ``config.json`` when blocks differ in width and no other loader is
    named (an ``alpha_sparse`` checkpoint resizes the blocks itself). Returns whether it was added."""
    path = folder / "config.json"
    if not path.is_file():  # a format without config.json (gguf) states the widths itself
        return False
    config = json.loads(path.read_text())
    if WIDTHS_ATTRIBUTE not in config or "quantization_config" in config:
        return False
    config["quantization_config"] = {"quant_method": WIDTH_QUANT_METHOD, "version": version}
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return True


class AlphaWidthConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of a checkpoint whose blocks have different widths."""

    def __init__(self, version: str | None = None, **kwargs: Any) -> None:
        self.quant_method = WIDTH_QUANT_METHOD
        self.version = version
        self.dequantize = True  # an ordinary dense model once loaded: transformers drops this config

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data.pop("dequantize", None)
        return data


class AlphaWidthHfQuantizer(LoadOnlyQuantizer):
    """Gives each block its saved shape before loading; the weights themselves load unchanged."""

    def _process_model_before_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        resize_from_config(model)
        return model


register_method(WIDTH_QUANT_METHOD, AlphaWidthConfig, AlphaWidthHfQuantizer)  # on import: see _registration.py
