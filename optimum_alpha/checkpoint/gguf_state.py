"""Saving a model transformers loaded from a GGUF file: its weights are already dequantized floats."""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def without_gguf_state(model: nn.Module) -> Iterator[None]:
    """Hide the GGUF loader state while saving: the weights are already dequantized floats.

    transformers refuses to ``save_pretrained`` a model it loaded from GGUF and would otherwise write
    a ``gguf`` quantization config that no safetensors loader accepts.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is None or str(getattr(method, "value", method)) != "gguf":
        yield
        return
    model_keys = ("hf_quantizer", "is_quantized", "quantization_method")
    config_keys = ("quantization_config", "_is_quantized")
    config = model.config
    saved_model = {key: getattr(model, key) for key in model_keys if hasattr(model, key)}
    saved_config = {key: getattr(config, key) for key in config_keys if hasattr(config, key)}
    for key in saved_model:
        if key == "is_quantized":
            model.is_quantized = False
        else:
            delattr(model, key)
    for key in saved_config:
        delattr(config, key)
    try:
        yield
    finally:
        for key, value in saved_model.items():
            setattr(model, key, value)
        for key, value in saved_config.items():
            setattr(config, key, value)
