"""Which Hugging Face families llama.cpp runs, under which llama.cpp architecture, with which metadata.

Llama, Mistral and SmolLM2 (``model_type`` llama) load as llama.cpp's ``llama``; Qwen2 and Qwen3 as
``qwen2`` / ``qwen3``. llama.cpp's ``llama`` graph rotates interleaved pairs (its "normal" RoPE) where
transformers rotates halves, so the q/k rows of every head are reordered on the way out (:func:`permute_rows`,
the order llama.cpp's own converter writes; transformers' GGUF reader undoes it); qwen2/qwen3 use the
NeoX RoPE of transformers and need nothing.

Width-pruned models whose blocks differ keep one head count and FFN length per layer. llama.cpp reads those
keys per layer for every architecture (``llama_hparams::n_head(il)``, ``n_ff(il)``), but its ``llama``,
``qwen2`` and ``qwen3`` tensor loaders and graphs use layer 0's values for every layer; only ``deci`` (built
for Nemotron-51B) sizes each layer's tensors and graph from its own values. So such models are written as
``deci``, whose graph is Llama's (normal RoPE, optional q/k/v biases) without q/k norms: Qwen3 with different
widths per block is refused. Uniform widths stay scalars under the family's own architecture.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES
from torch import nn

from ..errors import ModelStructureError
from ..model_utils import find_blocks
from ..structured.layout import BlockWidth, block_layout

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    """How one transformers ``model_type`` is written."""

    model_type: str
    arch: MODEL_ARCH  # blocks of one width
    per_layer_arch: MODEL_ARCH | None  # blocks of different widths (None: not possible)


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("llama", MODEL_ARCH.LLAMA, MODEL_ARCH.DECI),
        Family("mistral", MODEL_ARCH.LLAMA, MODEL_ARCH.DECI),
        Family("qwen2", MODEL_ARCH.QWEN2, MODEL_ARCH.DECI),
        Family("qwen3", MODEL_ARCH.QWEN3, None),
    )
}
NORMAL_ROPE_ARCHS = (MODEL_ARCH.LLAMA, MODEL_ARCH.DECI)


@dataclass(frozen=True)
class ExportShape:
    """What the file has to say about the model's shape: architecture, head size and every block's width."""

    family: Family
    arch: MODEL_ARCH
    head_dim: int
    widths: tuple[BlockWidth, ...]

    @property
    def arch_name(self) -> str:
        return MODEL_ARCH_NAMES[self.arch]

    @property
    def uniform(self) -> bool:
        return len(set(self.widths)) == 1

    @property
    def permutes_qk(self) -> bool:
        return self.arch in NORMAL_ROPE_ARCHS

    def per_layer(self, field: str) -> int | list[int]:
        """One value (all blocks alike) or one per block, as llama.cpp reads ``n_head(il)``/``n_ff(il)``."""
        values = [getattr(w, field) for w in self.widths]
        return values[0] if len(set(values)) == 1 else values


def _supported() -> str:
    return ", ".join(sorted(FAMILIES))


def rope_theta(config) -> float:
    """The RoPE base of a transformers 5 config (``rope_parameters``) or an older one (``rope_theta``)."""
    parameters = getattr(config, "rope_parameters", None) or {}
    if isinstance(parameters, dict) and "rope_theta" in parameters:
        return float(parameters["rope_theta"])
    return float(getattr(config, "rope_theta", 10000.0))


def _check_rope(config) -> None:
    parameters = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    kind = parameters.get("rope_type", parameters.get("type", "default")) if isinstance(parameters, dict) else None
    if kind not in (None, "default"):
        raise ModelStructureError(
            f"GGUF export writes plain RoPE only; this model uses rope_type {kind!r}. Save it with "
            "format='dense' and convert it with llama.cpp's convert_hf_to_gguf.py instead."
        )


def export_shape(model: nn.Module) -> ExportShape:
    """Check that llama.cpp can run ``model`` and say how; one clear line otherwise (nothing is written)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    family = FAMILIES.get(model_type)
    if family is None:
        raise ModelStructureError(
            f"GGUF export supports the Llama family ({_supported()}; SmolLM2 is llama), not {model_type!r}; "
            "save this model with format='dense' or 'sparse' instead."
        )
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        raise ModelStructureError(f"GGUF export needs the SiLU-gated MLP of {model_type}; this model uses {act!r}.")
    _check_rope(config)
    _, blocks = find_blocks(model)
    layouts = [block_layout(block, index) for index, block in enumerate(blocks)]
    head_dims = {layout.head_dim for layout in layouts}
    if len(head_dims) != 1:
        raise ModelStructureError(f"GGUF export needs one head_dim for every block, got {sorted(head_dims)}.")
    widths = tuple(layout.width for layout in layouts)
    arch = family.arch
    if len(set(widths)) > 1:
        if family.per_layer_arch is None:
            raise ModelStructureError(
                f"{model_type} blocks of different widths cannot be written: llama.cpp's only architecture that "
                "sizes every layer itself ('deci') has no q/k norms. Prune with allocation='uniform' for GGUF."
            )
        arch = family.per_layer_arch
    for name, window in (("sliding_window", getattr(config, "sliding_window", None)),):
        uses_window = window is not None and (model_type != "qwen2" or getattr(config, "use_sliding_window", False))
        if uses_window:
            logger.warning(
                "%s has %s=%s; llama.cpp's %s attends to the whole context, which matches only sequences of at "
                "most %s tokens.", model_type, name, window, MODEL_ARCH_NAMES[arch], window,
            )
    return ExportShape(family, arch, head_dims.pop(), widths)


def pad_ffn(shape: ExportShape, block: int) -> ExportShape:
    """The shape with every FFN length rounded up to whole quantisation blocks of ``block`` weights.

    ``ffn_down``'s rows are FFN-length long, and a width-pruned model keeps any number of channels; the
    added channels have zero gate, up and down weights, so they add exactly 0 to the block output.
    """
    widths = tuple(replace(w, intermediate_size=math.ceil(w.intermediate_size / block) * block)
                   for w in shape.widths)
    arch = shape.family.arch if len(set(widths)) == 1 else shape.arch
    return replace(shape, widths=widths, arch=arch)


def permute_rows(weights: np.ndarray, heads: int) -> np.ndarray:
    """Reorder each head's q/k rows (or bias entries) from halves to interleaved pairs (llama.cpp's RoPE)."""
    rows = weights.shape[0]
    if rows % (2 * heads):
        raise ModelStructureError(f"{rows} q/k rows do not split into {heads} heads of pairs.")
    split = weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:])
    return split.swapaxes(1, 2).reshape(weights.shape)
