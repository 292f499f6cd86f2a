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

import re
from typing import Any

import torch
from transformers.core_model_loading import ConversionOps
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..errors import CheckpointError
from . import bitmask
from .formats import MARKER_KEY, SENTINEL_MESSAGE  # noqa: F401  (re-exported)
from .formats import SPARSE_FORMAT as FORMAT
from .formats import SPARSE_QUANT_METHOD as QUANT_METHOD
from .hf_registration import LoadOnlyQuantizer, register_method

_SOURCE_PATTERNS = {suffix: rf"\.{suffix}" for suffix in bitmask.SUFFIXES}
# A fused expert parameter ``<key>`` is stored as ``<key>.fused_<part>`` (see sparse_files.stored_keys).
_FUSED_PATTERNS = {suffix: rf"\.fused_{suffix}" for suffix in bitmask.SUFFIXES}


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
        from .verify import check_alpha_sparse_config

        check_alpha_sparse_config(
            {"format": format, "compressed_modules": compressed_modules or [], "sentinel": sentinel}
        )

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data.pop("dequantize", None)
        return data


class AlphaSparseDecompress(ConversionOps):
    """Load operation: bitmask parts -> dense tensors.

    It runs in three places: transformers' general converters for a module weight (``<module>.compressed``...
    -> ``<module>.weight``) and for a fused expert parameter (``<key>.fused_compressed``... -> ``<key>``),
    and first in a model's own converter that merges per-expert keys into a fused parameter
    (``experts.*.w1.compressed``... -> the dense ``experts.*.w1.weight`` list the merge expects).
    """

    def __init__(self, hf_quantizer: "AlphaSparseHfQuantizer") -> None:
        self.hf_quantizer = hf_quantizer  # its presence tells transformers not to cast the stored tensors

    def convert(
        self,
        input_dict: dict[str, Any],
        model: torch.nn.Module | None = None,
        full_layer_name: str | None = None,
        source_patterns: list[str] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        target_dtype = None
        if model is not None and full_layer_name is not None:
            try:
                target_dtype = model.get_parameter(full_layer_name).dtype
            except AttributeError:
                target_dtype = None
        try:
            for patterns in (_SOURCE_PATTERNS, _FUSED_PATTERNS):
                if patterns["compressed"] in input_dict:
                    parts = {suffix: _single(input_dict.get(pattern), suffix, full_layer_name)
                             for suffix, pattern in patterns.items()}
                    # transformers sorts checkpoint keys, so the marker `<module>.weight` (sparse_files.py) comes
                    # after `<module>.bitmask`... and joins this converter; it carries no data and is dropped here.
                    dense = bitmask.decompress(
                        parts["compressed"], parts["bitmask"], parts["shape"], dtype=target_dtype
                    )
                    self.hf_quantizer.record_restored(str(full_layer_name), 1)
                    return {full_layer_name: dense}
            sources = source_patterns or list(input_dict)
            output = _decompress_expert_lists(input_dict, sources)
        except (ValueError, TypeError, RuntimeError) as error:
            # transformers would only log a failed conversion and end with a generic RuntimeError: leave
            # the weight unloaded instead and let _check_every_module_restored raise with this cause (torch
            # raises TypeError/RuntimeError for tensors of the wrong dtype or shape).
            self.hf_quantizer.failures[str(full_layer_name)] = str(error).splitlines()[0] if str(error) else (
                type(error).__name__)
            return {}
        experts = sum(len(input_dict[p]) for p in sources if p.endswith(".compressed") and p in input_dict)
        self.hf_quantizer.record_restored(str(full_layer_name), experts)
        return output


def _single(value: Any, suffix: str, name: str | None) -> torch.Tensor:
    if value is None:
        raise ValueError(
            f"alpha_sparse checkpoint is missing '{suffix}' for {name}; the folder is incomplete, save it again "
            "with optimum_alpha.checkpoint.save_pruned"
        )
    return value[0] if isinstance(value, list) else value


def _decompress_expert_lists(input_dict: dict[str, Any], source_patterns: list[str]) -> dict[str, Any]:
    """In a per-expert merge: ``{"experts.*.w1.compressed": [...], ...}`` -> ``{"experts.*.w1.weight": [dense...]}``
    in the order of the model converter's sources (gate before up), lists kept in checkpoint order."""
    output: dict[str, Any] = {}
    for pattern in source_patterns:
        base, _, suffix = pattern.rpartition(".")
        weight_pattern = f"{base}.weight"
        if suffix == "weight" and pattern in input_dict:
            output[weight_pattern] = input_dict[pattern]
        elif suffix == "compressed" and pattern in input_dict:
            parts = {s: input_dict.get(f"{base}.{s}") for s in bitmask.SUFFIXES}
            if any(v is None or len(v) != len(parts["compressed"]) for v in parts.values()):
                raise ValueError(f"alpha_sparse checkpoint has incomplete bitmask parts for {weight_pattern}")
            output[weight_pattern] = [
                bitmask.decompress(c, b, s) for c, b, s in zip(parts["compressed"], parts["bitmask"], parts["shape"])
            ]
    return output


def _same_module(checkpoint_name: str, model_name: str) -> bool:
    """Names may differ by a prefix (the base model class loaded from a ``*ForCausalLM`` checkpoint)."""
    a, b = sorted((checkpoint_name, model_name), key=len)
    return a == b or b.endswith("." + a)


def _is_ours(conversion: Any) -> bool:
    return any(isinstance(op, AlphaSparseDecompress) for op in getattr(conversion, "operations", ()))


class AlphaSparseHfQuantizer(LoadOnlyQuantizer):
    """Loads ``alpha_sparse`` checkpoints; nothing is quantized, weights are only decompressed."""

    # Read by transformers' update_weight_conversions: a model converter that merges per-expert `.weight` keys
    # also collects their bitmask parts and runs AlphaSparseDecompress first.
    serialized_names = {"weight": ["weight", *bitmask.SUFFIXES]}

    def __init__(self, quantization_config: Any, **kwargs: Any) -> None:
        super().__init__(quantization_config, **kwargs)
        self.restored: set[str] = set()  # parameter names rebuilt from their bitmask tensors
        self.restored_count = 0  # checkpoint modules rebuilt (a per-expert merge rebuilds several at once)
        self.failures: dict[str, str] = {}  # parameter name -> why its tensors could not be decompressed

    def record_restored(self, parameter: str, modules: int) -> None:
        self.restored.add(parameter.removesuffix(".weight"))
        self.restored_count += modules

    def __deepcopy__(self, memo: dict) -> "AlphaSparseHfQuantizer":
        # transformers deep-copies the load operations of every layer, and with them this quantizer; all
        # copies must record into the one instance that checks the load at the end.
        return self

    def get_load_operations(self) -> dict:
        return {"deserialize": AlphaSparseDecompress, "dequantize": AlphaSparseDecompress}

    def get_weight_conversions(self) -> list:
        """Converters for what no model converter claims: module weights and fused expert parameters."""
        from transformers.core_model_loading import WeightConverter

        return [
            WeightConverter(list(_SOURCE_PATTERNS.values()), ".weight", [AlphaSparseDecompress(self)]),
            WeightConverter(list(_FUSED_PATTERNS.values()), "", [AlphaSparseDecompress(self)]),
        ]

    def _process_model_before_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        """A width-pruned model (``alpha_block_widths`` in its config) gets its block shapes first. The named
        marker (:data:`MARKER_KEY`) is for loaders without the plug-in: not an unexpected key here."""
        from ..structured.checkpoint import resize_from_config

        resize_from_config(model, required=False)
        ignored = set(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ())
        model._keys_to_ignore_on_load_unexpected = ignored | {re.escape(MARKER_KEY)}
        return model

    def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        """Forget our load-only converters: the model is dense now, and ``save_pretrained`` would
        otherwise try to reverse them (they have no reverse) when writing a new checkpoint."""
        for module in model.modules():
            conversions = getattr(module, "_weight_conversions", None)
            if conversions:
                module._weight_conversions = [c for c in conversions if not _is_ours(c)]
        self._check_every_module_restored()
        return model

    def _check_every_module_restored(self) -> None:
        """A listed module that was not decompressed would keep its random initialisation: refuse the model."""
        listed = self.quantization_config.compressed_modules
        if self.restored_count >= len(listed) and not self.failures:
            return
        # Name the first listed module that no rebuilt parameter matches (per-expert modules, merged into
        # fused parameters, have no name of their own after loading: they are only counted).
        missing = next((m for m in listed if not any(_same_module(m, r) for r in self.restored)), None)
        failures = {name.removesuffix(".weight"): why for name, why in self.failures.items()}
        cause = next((why for name, why in failures.items() if missing and _same_module(missing, name)), None)
        cause = cause or next(iter(failures.values()), None) or "no model weight matches its tensors"
        what = f"module {missing}" if missing else f"{len(listed) - self.restored_count} of {len(listed)} modules"
        raise CheckpointError(
            f"sparse checkpoint {what} was not restored ({cause}); the checkpoint is corrupt or does not "
            "match the model class, save it again with optimum_alpha.save_pruned"
        )


def register() -> None:
    """Register every loader of ours with transformers (idempotent): ``alpha_sparse`` here, and the others by
    importing their modules, which register themselves (see optimum_alpha/_registration.py)."""
    register_method(QUANT_METHOD, AlphaSparseConfig, AlphaSparseHfQuantizer)
    from .._registration import register_all

    register_all()


register_method(QUANT_METHOD, AlphaSparseConfig, AlphaSparseHfQuantizer)  # on import: see _registration.py
