"""``dense``: ordinary safetensors with the pruned entries stored as zeros; any transformers loads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import CheckpointError
from ..gguf_state import without_gguf_state
from .base import CheckpointWriter, register_writer

TENSORS_KEY = "tensors"  # alpha_pruning.json: every tensor name the dense save wrote
RESAVE = "save it again with optimum_alpha.save_pruned (or re-download it)"


@register_writer("dense")
class DenseWriter(CheckpointWriter):
    summary = "plain safetensors any transformers can load"

    def write(self, model: Any, folder: Path, *, max_shard_size: str | int, data: dict[str, Any],
              tokenizer: Any = None) -> dict | None:
        from ..verify import stored_tensor_names

        with without_gguf_state(model):
            model.save_pretrained(folder, max_shard_size=max_shard_size)
        # Every tensor written, read back from the files: what a load of this folder must find (verify).
        data[TENSORS_KEY] = sorted(stored_tensor_names(folder))
        return None

    def verify(self, folder: Path, quantization_config: dict[str, Any], tensor_names: set[str]) -> None:
        """Refuse the folder when a tensor the save wrote (``alpha_pruning.json`` ``tensors``) is gone; folders
        saved before that list existed are checked after loading (:mod:`..load_check`)."""
        from ..load_check import written_by_us

        recorded = (written_by_us(folder) or {}).get(TENSORS_KEY)
        if not isinstance(recorded, list):
            return
        missing = sorted(set(map(str, recorded)) - tensor_names)
        if missing:
            shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
            raise CheckpointError(
                f"dense checkpoint {folder} is incomplete: its weight files lack {shown} "
                f"({len(missing)} of the {len(recorded)} tensors its save wrote); {RESAVE}"
            )

    def load_section(self, repo_hint: str) -> str:
        return f"""The weights are ordinary safetensors with the pruned entries stored as zeros; nothing beyond
transformers is needed:

```python
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained("{repo_hint}")
```
"""
