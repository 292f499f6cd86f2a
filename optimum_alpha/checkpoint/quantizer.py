"""The ``alpha_sparse`` loader plugged into transformers' quantizer registry.

A sparse checkpoint's ``config.json`` carries ``quantization_config = {"quant_method": "alpha_sparse", ...}``.
Once :func:`register` has run (``import optimum_alpha`` does it), plain
``AutoModelForCausalLM.from_pretrained(path)`` picks :class:`AlphaSparseHfQuantizer`, whose load
operation turns each ``<module>.{compressed,bitmask,row_offsets,shape}`` group back into the dense
``<module>.weight`` bit for bit. The loaded model is an ordinary dense model: the quantization
config is dropped after loading (the ``dequantize`` path of transformers), so saving it again writes
a normal dense checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.core_model_loading import ConversionOps
from transformers.quantizers import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from . import bitmask

QUANT_METHOD = "alpha_sparse"
FORMAT = "sparse-bitmask"
SENTINEL_MESSAGE = (
    "alpha_sparse checkpoint: install optimum-alpha and run `import optimum_alpha` before from_pretrained"
)

_SOURCE_PATTERNS = {suffix: rf"\.{suffix}" for suffix in bitmask.SUFFIXES}


class AlphaSparseConfig(QuantizationConfigMixin):
    """The ``quantization_config`` block of a sparse checkpoint.

    ``compressed_modules`` lists the modules stored in bitmask form and ``sentinel`` names the one
    weight key holding a deliberately wrong-shaped marker (see ``docs/checkpoints.md``): without
    this plugin transformers stops on it with a size-mismatch error instead of returning random weights.
    """

    def __init__(
        self,
        format: str = FORMAT,
        sparsity_structure: str = "unstructured",
        global_sparsity: float | None = None,
        compressed_modules: list[str] | None = None,
        sentinel: str | None = None,
        version: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.quant_method = QUANT_METHOD
        self.format = format
        self.sparsity_structure = sparsity_structure
        self.global_sparsity = global_sparsity
        self.compressed_modules = list(compressed_modules or [])
        self.sentinel = sentinel
        self.version = version
        # Always decompress on load: transformers then removes the quantization config afterwards.
        self.dequantize = True
        if self.format != FORMAT:
            raise ValueError(f"alpha_sparse only knows the {FORMAT!r} format, got {self.format!r}")

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data.pop("dequantize", None)
        return data


class AlphaSparseDecompress(ConversionOps):
    """Load operation: the four bitmask tensors of one module -> its dense weight."""

    def __init__(self, hf_quantizer: "AlphaSparseHfQuantizer") -> None:
        self.hf_quantizer = hf_quantizer  # its presence tells transformers not to cast the stored tensors

    def convert(
        self,
        input_dict: dict[str, Any],
        model: torch.nn.Module | None = None,
        full_layer_name: str | None = None,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        parts = {}
        for suffix, pattern in _SOURCE_PATTERNS.items():
            value = input_dict.get(pattern)
            if value is None:
                raise ValueError(
                    f"alpha_sparse checkpoint is missing '{suffix}' for {full_layer_name}; the folder is "
                    "incomplete, save it again with optimum_alpha.checkpoint.save_pruned"
                )
            parts[suffix] = value[0] if isinstance(value, list) else value
        # transformers sorts checkpoint keys, so the marker `<module>.weight` (see sparse_files.py) comes
        # after `<module>.bitmask`... and joins this converter; it carries no data and is dropped here.
        target_dtype = None
        if model is not None and full_layer_name is not None:
            try:
                target_dtype = model.get_parameter(full_layer_name).dtype
            except AttributeError:
                target_dtype = None
        dense = bitmask.decompress(parts["compressed"], parts["bitmask"], parts["shape"], dtype=target_dtype)
        return {full_layer_name: dense}


def _is_ours(conversion: Any) -> bool:
    return any(isinstance(op, AlphaSparseDecompress) for op in getattr(conversion, "operations", ()))


class LoadOnlyQuantizer(HfQuantizer):
    """Base of optimum-alpha's loaders: nothing is quantized, checkpoints only load in a special way."""

    requires_calibration = True  # a dense model cannot be "quantized" to these formats on load

    def param_needs_quantization(self, model: Any, param_name: str, **kwargs: Any) -> bool:
        return False

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_compileable(self) -> bool:
        return True


class AlphaSparseHfQuantizer(LoadOnlyQuantizer):
    """Loads ``alpha_sparse`` checkpoints; nothing is quantized, weights are only decompressed."""

    serialized_names = {".weight": list(_SOURCE_PATTERNS.values())}

    def get_load_operations(self) -> dict:
        return {"deserialize": AlphaSparseDecompress, "dequantize": AlphaSparseDecompress}

    def _process_model_before_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        """A width-pruned model (``alpha_block_widths`` in its config) gets its block shapes first."""
        from ..structured.checkpoint import resize_from_config

        resize_from_config(model, required=False)
        return model

    def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        """Forget our load-only converters: the model is dense now, and ``save_pretrained`` would
        otherwise try to reverse them (they have no reverse) when writing a new checkpoint."""
        for module in model.modules():
            conversions = getattr(module, "_weight_conversions", None)
            if conversions:
                module._weight_conversions = [c for c in conversions if not _is_ours(c)]
        return model


def _already_registered(method: str, config_cls: type, quantizer_cls: type) -> bool:
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

    return (
        AUTO_QUANTIZATION_CONFIG_MAPPING.get(method) is config_cls
        and AUTO_QUANTIZER_MAPPING.get(method) is quantizer_cls
    )


def register_method(method: str, config_cls: type, quantizer_cls: type) -> None:
    """Register a config and quantizer with transformers under ``quant_method=method``.

    Idempotent: transformers' ``register_*`` helpers refuse a second registration, so we check first.
    """
    if _already_registered(method, config_cls, quantizer_cls):
        return
    from transformers.quantizers.auto import (
        AUTO_QUANTIZATION_CONFIG_MAPPING,
        AUTO_QUANTIZER_MAPPING,
        register_quantization_config,
        register_quantizer,
    )

    if method not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(method)(config_cls)
    if method not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(method)(quantizer_cls)
    if not _already_registered(method, config_cls, quantizer_cls):
        raise RuntimeError(
            f"another package registered quant_method {method!r} with transformers; "
            "optimum-alpha cannot load its checkpoints alongside it"
        )


def register() -> None:
    """Register ``alpha_sparse`` (bitmask weights) and ``alpha_width`` (per-block widths) with transformers."""
    from ..structured.checkpoint import AlphaWidthConfig, AlphaWidthHfQuantizer, WIDTH_QUANT_METHOD

    register_method(QUANT_METHOD, AlphaSparseConfig, AlphaSparseHfQuantizer)
    register_method(WIDTH_QUANT_METHOD, AlphaWidthConfig, AlphaWidthHfQuantizer)
