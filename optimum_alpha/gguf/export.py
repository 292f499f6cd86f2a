"""Export any saved model (a folder of ours, a plain Hugging Face folder or Hub id, a .gguf) to one GGUF file."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import ModelStructureError
from .families import FAMILIES
from .types import parse_type
from .writer import GGUFSummary, check_target, write_gguf


def export_to_gguf(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    gguf_type: str = "q8_0",
    force: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
) -> GGUFSummary:
    """Load ``source`` (``alpha_sparse`` and ``alpha_width`` folders included) in float32 and write it as GGUF.

    The output, the type and (from ``config.json``) the family are checked before the weights are loaded.
    """
    from ..models import load_config, load_model

    parse_type(gguf_type)
    check_target(output, overwrite)
    config = load_config(str(source))
    model_type = getattr(config, "model_type", None)
    if config is not None and model_type not in FAMILIES:
        raise ModelStructureError(
            f"GGUF export supports the Llama family ({', '.join(sorted(FAMILIES))}; SmolLM2 is llama), not "
            f"{model_type!r} ({Path(str(source)).name}); nothing was loaded or written."
        )
    model, tokenizer = load_model(str(source), dtype=torch.float32)
    return write_gguf(model, output, tokenizer=tokenizer, gguf_type=gguf_type, force=force, overwrite=overwrite,
                      show_progress=show_progress)
