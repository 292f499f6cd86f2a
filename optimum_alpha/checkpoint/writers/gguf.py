"""``gguf``: one ``model.gguf`` for llama.cpp (tokenizer inside), next to the card and ``alpha_pruning.json``.

The file itself is written by :func:`optimum_alpha.gguf.write_gguf` (types, per-layer widths, atomic write);
this writer puts it into the staging folder of ``save_pruned``. ``gguf_type`` is ``f16``, ``bf16``, ``q8_0``,
``q5_0``, ``q4_0`` (``q5_1``/``q4_1`` with ``force_type=True`` on pruned models) or ``auto:B``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import CheckpointWriter, register_writer

GGUF_FILE = "model.gguf"


@register_writer("gguf")
class GGUFCheckpointWriter(CheckpointWriter):
    summary = "one model.gguf (tokenizer inside) for llama.cpp, tensor types from gguf_type (--gguf-type)"

    def __init__(self, gguf_type: str = "q8_0", force_type: bool = False, **unknown: Any) -> None:
        super().__init__(**unknown)
        from ...gguf.types import parse_type

        self.request = parse_type(gguf_type)  # a bad type is refused before any slow work
        self.force_type = force_type

    def check_request(self, model: Any = None, metadata: dict[str, Any] | None = None) -> None:
        if model is not None:
            from ...gguf.families import export_shape

            export_shape(model)

    def write(self, model: Any, folder: Path, *, max_shard_size: str | int, data: dict[str, Any],
              tokenizer: Any = None) -> dict | None:
        from ...gguf import write_gguf

        summary = write_gguf(model, folder / GGUF_FILE, tokenizer=tokenizer, gguf_type=self.request.text,
                             force=self.force_type)
        data["gguf"] = {"file": GGUF_FILE, "type": summary.request, "arch": summary.arch,
                        "block_types": summary.block_types, "block_bits_per_weight": summary.block_bits,
                        "per_layer_widths": summary.per_layer_widths, "f16_fallbacks": summary.fallbacks}
        return None

    def load_section(self, repo_hint: str) -> str:
        return f"""One GGUF file, `{GGUF_FILE}`, with the tokenizer inside, for llama.cpp:

```bash
llama-cli -m {GGUF_FILE} -p "The capital of France is" -n 32
```

transformers reads it too (dequantised to float32), unless its blocks have different widths (llama.cpp
architecture `deci`, which transformers does not read):

```python
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained("{repo_hint}", gguf_file="{GGUF_FILE}")
```
"""
