"""``compressed-tensors``: integer weights (``bits=...``) packed by the compressed-tensors library.

The folder llm-compressor writes and vLLM serves (``quant_method: compressed-tensors``, ``format:
pack-quantized``); plain transformers loads it with the ``compressed-tensors`` package installed, without
optimum-alpha. The packing itself is in :mod:`optimum_alpha.checkpoint.compressed_tensors`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import CheckpointError, ConfigError
from ..compressed_tensors import NON_UNIFORM_WIDTHS, quantized_modules, write_compressed_tensors
from .base import CheckpointWriter, register_writer

PACKED_PARTS = ("weight_scale", "weight_shape")


@register_writer("compressed-tensors")
class CompressedTensorsWriter(CheckpointWriter):
    summary = "packed integer weights (with --bits) that transformers and vLLM load without optimum-alpha"
    quant_method = "compressed-tensors"
    stores_integers = True

    def check_config(self, config: Any) -> None:
        if config.bits is None:
            raise ConfigError("format 'compressed-tensors' stores integer weights; add bits (--bits 4; with "
                              "sparsity 0 it quantises without pruning), or save float weights as 'sparse'/'dense'.")
        if config.nm is not None:
            raise ConfigError(
                f"nm={config.nm!r} cannot be kept by compressed-tensors (its 2:4 sparse formats were removed in "
                "0.15, pack-quantized records no N:M structure); drop nm, or save float weights (no bits) with "
                "format 'sparse', which records the pattern."
            )
        if config.structure == "width" and config.allocation != "uniform":
            raise ConfigError(NON_UNIFORM_WIDTHS)

    def check_model(self, model: Any, config: Any) -> None:
        check_packable(model, config.ignore, config.prune_routers)

    def check_request(self, model: Any = None, metadata: dict[str, Any] | None = None) -> None:
        if model is not None:
            quantized_modules(model)  # quantised, every quantised matrix an nn.Linear, one block width

    def write(self, model: Any, folder: Path, *, max_shard_size: str | int, data: dict[str, Any],
              tokenizer: Any = None) -> dict | None:
        quantization_config, recorded = write_compressed_tensors(model, folder, max_shard_size)
        data["compressed_tensors"] = recorded
        return quantization_config

    def load_section(self, repo_hint: str) -> str:
        return f"""The block weights are integers packed in the compressed-tensors `pack-quantized` format (the one
llm-compressor writes and vLLM serves); pruned weights are integer zeros inside them. **optimum-alpha is not
needed**: transformers loads it once the `compressed-tensors` package is installed.

```python
# pip install transformers compressed-tensors
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained("{repo_hint}")
```
"""

    def verify(self, folder: Path, quantization_config: dict[str, Any], tensor_names: set[str]) -> None:
        for name in tensor_names:
            if name.endswith(".weight_packed"):
                module = name[: -len(".weight_packed")]
                missing = [part for part in PACKED_PARTS if f"{module}.{part}" not in tensor_names]
                if missing:
                    raise CheckpointError(f"compressed-tensors checkpoint {folder} packs {module} but lacks "
                                          f"{', '.join(missing)}; the checkpoint is incomplete, save it again")


def check_packable(model: Any, ignore: list[str] | None, prune_routers: bool) -> None:
    """Every matrix a run would quantise is an ``nn.Linear`` weight (not a fused expert slice or a Conv1D)."""
    from ...matrices import model_weights
    from ...model_utils import Conv1D

    for block in model_weights(model, ignore, prune_routers)[1]:
        for matrix in block.matrices:
            if matrix.is_expert or (Conv1D is not None and isinstance(matrix.module, Conv1D)):
                kind = "fused expert parameters" if matrix.is_expert else "a Conv1D weight"
                raise ConfigError(
                    f"{matrix.name} is one of {kind}, which compressed-tensors cannot pack (it packs nn.Linear "
                    "weights); keep them float with ignore (e.g. --ignore 're:.*experts.*'), or prune without "
                    "bits and save with format 'sparse' or 'dense', which hold them."
                )
