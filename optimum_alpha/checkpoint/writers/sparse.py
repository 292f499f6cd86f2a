"""``sparse``: the ``alpha_sparse`` bitmask checkpoint (kept values + packed mask per pruned matrix).

It loads only through our plug-in (``import optimum_alpha``), on purpose: without it a marker weight stops
transformers with a size mismatch instead of returning random weights (see docs/checkpoints.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import CheckpointError
from ..formats import SPARSE_QUANT_METHOD
from ..gguf_state import without_gguf_state
from ..sparse_files import compress_folder, compress_while_saving, stored_keys, write_quantization_config
from .base import CheckpointWriter, register_writer

RESAVE = "save it again with optimum_alpha.save_pruned (or re-download it)"


@register_writer("sparse")
class SparseWriter(CheckpointWriter):
    summary = "compressed bitmask checkpoint (loads after `import optimum_alpha`)"
    quant_method = SPARSE_QUANT_METHOD

    def write(self, model: Any, folder: Path, *, max_shard_size: str | int, data: dict[str, Any],
              tokenizer: Any = None) -> dict | None:
        with without_gguf_state(model), compress_while_saving(folder) as compressor:
            model.save_pretrained(folder, max_shard_size=max_shard_size)
        compressed = compress_folder(folder, compressor)
        data["compressed_modules"] = len(compressed)
        if not compressed:
            return None
        structure = data.get("sparsity_structure") or "unstructured"
        return write_quantization_config(folder, compressed, data.get("achieved_sparsity"), data["library_version"],
                                         structure)

    def load_section(self, repo_hint: str) -> str:
        return f"""The weights are stored in the `alpha_sparse` bitmask format (kept values + packed bit
mask per pruned Linear layer). **Loading needs `optimum-alpha`**: importing it registers the format
with transformers.

```python
import optimum_alpha  # registers quant_method "alpha_sparse" with transformers
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained("{repo_hint}")
# or: model = optimum_alpha.load_pruned("{repo_hint}")
```

> **Without `optimum-alpha` this checkpoint does not load**: transformers logs an unknown quantization
> type and stops with a size-mismatch error on one marker weight. Never pass `ignore_mismatched_sizes=True`
> to get past it: the Linear weights would be left randomly initialised.
"""

    def verify(self, folder: Path, quantization_config: dict[str, Any], tensor_names: set[str]) -> None:
        from ..verify import check_alpha_sparse_config

        for module in check_alpha_sparse_config(quantization_config):
            # A module weight is stored as <module>.<part>, a fused expert parameter as <key>.fused_<part>.
            layouts = (stored_keys(f"{module}.weight"), stored_keys(module))
            missing = min(([s for s, key in parts.items() if key not in tensor_names] for parts in layouts), key=len)
            if missing:
                raise CheckpointError(
                    f"sparse checkpoint {folder} lists module {module} but its files lack "
                    f"{', '.join(missing)}; the checkpoint is incomplete, {RESAVE}"
                )
