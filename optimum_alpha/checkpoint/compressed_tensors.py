"""The ``compressed-tensors`` checkpoint: integer weights packed by the compressed-tensors library.

The folder is what llm-compressor writes and vLLM serves: ``quantization_config`` with ``quant_method:
compressed-tensors``, ``format: pack-quantized``, one config group per bit width and every module kept in
float (``lm_head``, routers, ``ignore`` patterns) under ``ignore``. A process with transformers and the
``compressed-tensors`` package loads it with plain ``AutoModelForCausalLM.from_pretrained``; optimum-alpha is
not needed. Pruned weights are simply integer zeros inside the packed weights (compressed-tensors dropped
its sparse formats in 0.15), and transformers keeps one ``quantization_config`` per model, so our run
metadata goes to ``alpha_pruning.json`` and the model card, not into a second config.

Each shard is packed as ``save_pretrained`` writes it (the hook of :mod:`.sparse_files`): a quantised
``<module>.weight`` becomes ``weight_packed`` (int32), ``weight_scale`` and ``weight_shape``, through
``PackedQuantizationCompressor.compress`` with the very scales the quantiser used. Before packing, every
weight is checked to lie on its recorded grid, so the folder can never claim a width that the weights do
not have.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..quantization.spec import QuantSpec, dequantize_integers, quantize_integers
from ..quantization.state import MatrixGrid, recorded_grids
from .gguf_state import without_gguf_state

FORMAT = "compressed-tensors"
WEIGHT_SUFFIX = ".weight"


def _scheme(spec: QuantSpec, targets: list[str]):
    from compressed_tensors.quantization import QuantizationScheme

    return QuantizationScheme(targets=targets, weights=spec.args(), format="pack-quantized")


def quantized_modules(model: nn.Module) -> dict[str, MatrixGrid]:
    """Module name -> grid of every quantised ``nn.Linear`` of ``model``; refuses what the format cannot hold."""
    grids = recorded_grids(model)
    if not grids:
        raise CheckpointError(
            "format='compressed-tensors' stores integer weights and this model holds float ones; prune with "
            "bits=4 (sparsity=0 quantises without pruning) first, or save with format='sparse' or 'dense'."
        )
    modules = dict(model.named_modules())
    for name in grids:
        if not isinstance(modules.get(name), nn.Linear):
            raise CheckpointError(
                f"{name} is not an nn.Linear module (a fused expert slice or a Conv1D), and compressed-tensors "
                "packs Linear weights only; ignore those weights (ignore=[...]) or save without bits."
            )
    if getattr(getattr(model, "config", None), "alpha_block_widths", None):
        raise CheckpointError(NON_UNIFORM_WIDTHS)
    return grids


NON_UNIFORM_WIDTHS = (
    "blocks of different widths need the alpha_width loader, and a compressed-tensors folder has room for one "
    "quantization_config only; use allocation='uniform' with structure='width' (one width, a plain config), or "
    "save float weights (no bits) with format='dense' or 'sparse'."
)


def quantization_config(model: nn.Module, grids: dict[str, MatrixGrid]):
    """The compressed-tensors ``QuantizationConfig``: one group per width, every other Linear ignored."""
    from compressed_tensors.quantization import QuantizationConfig

    by_spec: dict[QuantSpec, list[str]] = {}
    for name, grid in grids.items():
        by_spec.setdefault(grid.spec, []).append(name)
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    ignore = [name for name in linear if name not in grids]
    single = len(by_spec) == 1
    groups = {
        f"group_{i}": _scheme(spec, ["Linear"] if single else sorted(names))
        for i, (spec, names) in enumerate(sorted(by_spec.items(), key=lambda item: item[0].bits))
    }
    return QuantizationConfig(config_groups=groups, format="pack-quantized", ignore=ignore,
                              quantization_status="compressed")


class PackingCompressor:
    """Packs the quantised weights of each shard (the interface :func:`.sparse_files.compress_folder` uses)."""

    def __init__(self, grids: dict[str, MatrixGrid]) -> None:
        self.grids = {name + WEIGHT_SUFFIX: grid for name, grid in grids.items()}
        self.compressed: list[str] = []
        self.written: dict[str, list[str]] = {}
        self.nbytes: dict[str, int] = {}

    def _pack(self, key: str, weight: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
        from compressed_tensors.compressors.pack_quantized import PackedQuantizationCompressor

        grid = self.grids[key]
        scales = grid.scales.to(device=weight.device)
        if scales.dtype != weight.dtype or not torch.equal(
                dequantize_integers(quantize_integers(weight, scales, grid.spec), scales, grid.spec), weight):
            raise CheckpointError(
                f"{key} is no longer on its {grid.spec.bits}-bit grid (changed or cast after quantisation); "
                "quantise again (prune with bits=...) before saving as compressed-tensors."
            )
        packed = PackedQuantizationCompressor.compress({"weight": weight, "weight_scale": scales},
                                                       _scheme(grid.spec, ["Linear"]))
        prefix = key[: -len(WEIGHT_SUFFIX)]
        for part, value in packed.items():
            out[f"{prefix}.{part}"] = value.contiguous()
        self.compressed.append(key)

    def compress(self, tensors: dict[str, torch.Tensor], shard: str) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for key, value in tensors.items():
            if key in self.grids:
                self._pack(key, value, out)
            else:
                out[key] = value
        self.written[shard] = list(out)
        self.nbytes[shard] = sum(t.numel() * t.element_size() for t in out.values())
        return out

    def late_members(self) -> dict[str, list[str]]:
        return {}

    def missing(self) -> list[str]:
        done = set(self.compressed)
        return [key for key in self.grids if key not in done]


def write_compressed_tensors(model: nn.Module, folder: Path, max_shard_size: str | int) -> tuple[dict, dict]:
    """Save ``model`` into ``folder`` in the pack-quantized layout; returns the ``quantization_config``
    written and what the metadata records."""
    from compressed_tensors.compressors.model_compressors.model_compressor import ModelCompressor

    from .sparse_files import compress_folder, compress_while_saving

    grids = quantized_modules(model)
    config = quantization_config(model, grids)  # built first: a bad config fails before any file is written
    compressor = PackingCompressor(grids)
    with without_gguf_state(model), compress_while_saving(folder, compressor=compressor):
        model.save_pretrained(folder, max_shard_size=max_shard_size)
    compress_folder(folder, compressor)
    missing = compressor.missing()
    if missing:
        raise CheckpointError(
            f"save_pretrained wrote no tensor named {missing[0]} (and {len(missing) - 1} more quantised weights); "
            "this model renames its weights on save, which the compressed-tensors writer does not support yet."
        )
    ModelCompressor(quantization_config=config).update_config(str(folder))
    written = json.loads((folder / "config.json").read_text())["quantization_config"]
    return written, {"packed_modules": len(compressor.compressed), "ignored_modules": list(config.ignore or [])}

