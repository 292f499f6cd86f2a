"""``dense``: ordinary safetensors with the pruned entries stored as zeros; any transformers loads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..gguf_state import without_gguf_state
from .base import CheckpointWriter, register_writer


@register_writer("dense")
class DenseWriter(CheckpointWriter):
    summary = "plain safetensors any transformers can load"

    def write(self, model: Any, folder: Path, *, max_shard_size: str | int, data: dict[str, Any],
              tokenizer: Any = None) -> dict | None:
        with without_gguf_state(model):
            model.save_pretrained(folder, max_shard_size=max_shard_size)
        return None

    def load_section(self, repo_hint: str) -> str:
        return f"""The weights are ordinary safetensors with the pruned entries stored as zeros; nothing beyond
transformers is needed:

```python
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained("{repo_hint}")
```
"""
