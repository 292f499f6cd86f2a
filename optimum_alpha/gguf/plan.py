"""Every tensor of the file: its llama.cpp name, its GGUF type, and how its rows are ordered.

Types (llama.cpp's conventions, as its converter and ``llama-quantize`` do):

* 1-D tensors (norms, biases) stay F32;
* the token embedding and the output matrix take the requested type for f16/bf16/q8_0 and Q8_0 under the
  4/5-bit types and ``auto:B`` (``llama-quantize`` also keeps the output wider than the blocks);
* block matrices take the requested type, or under ``auto:B`` the type the spectra choose (:func:`choose_types`);
* a matrix whose rows do not split into the type's blocks of 32 weights falls back to F16, and is listed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, get_tensor_name_map
from torch import nn

from ..allocation import alpha_ratios, fit_to_budget
from ..errors import ConfigError, ModelStructureError
from .families import ExportShape
from .types import AUTO_CHOICES, TYPES, TensorType, TypeRequest, zero_survival

logger = logging.getLogger(__name__)

WIDE_TYPES = ("f16", "bf16", "q8_0")  # the embedding/output follow these; anything narrower -> q8_0
PRUNED_FRACTION = 0.01  # block weights that are exact zeros above which a model counts as pruned
EPSILON = 0.3  # AlphaPruning's ratio range 1 ± ε, here over bits


@dataclass
class TensorPlan:
    """One tensor as it goes into the file."""

    source: str  # state-dict name
    name: str  # llama.cpp name
    role: str  # "block", "embedding", "output" or "vector"
    kind: TensorType
    shape: tuple[int, ...]  # the model's, numpy order: (rows, row length)
    heads: int | None = None  # q/k: rows reordered per head for llama.cpp's RoPE
    requested: TensorType | None = None  # the type before a fallback
    file_shape: tuple[int, ...] | None = None  # larger than shape when FFN channels are padded with zeros

    def __post_init__(self) -> None:
        if self.file_shape is None:
            self.file_shape = self.shape

    @property
    def numel(self) -> int:
        return int(np.prod(self.file_shape))

    def padded(self, data: np.ndarray) -> np.ndarray:
        """``data`` (the model's tensor) with the zero rows/columns of padded FFN channels."""
        if self.file_shape == self.shape:
            return data
        out = np.zeros(self.file_shape, dtype=data.dtype)
        out[tuple(slice(0, n) for n in self.shape)] = data
        return out

    @property
    def nbytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.kind.ggml]
        return self.numel // block * size

    @property
    def fell_back(self) -> bool:
        return self.requested is not None and self.requested != self.kind


def tied_output(model: nn.Module) -> bool:
    """Whether the LM head shares the embedding's storage (llama.cpp then reuses ``token_embd``)."""
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    return head is None or head.weight.data_ptr() == embedding.weight.data_ptr()


def _heads(name: str, shape: ExportShape) -> int | None:
    if not name.startswith("blk."):
        return None
    width = shape.widths[int(name.split(".")[1])]
    if ".attn_q." in name:
        return width.num_attention_heads
    if ".attn_k." in name:
        return width.num_key_value_heads
    return None


def _file_shape(name: str, tensor: torch.Tensor, shape: ExportShape) -> tuple[int, ...]:
    """The tensor's shape in the file: FFN tensors follow the (possibly padded) FFN length of their block."""
    size = tuple(tensor.shape)
    if not name.startswith("blk."):
        return size
    ffn = shape.widths[int(name.split(".")[1])].intermediate_size
    if ".ffn_gate." in name or ".ffn_up." in name:
        return (ffn, *size[1:])
    if ".ffn_down.weight" in name:
        return (size[0], ffn)
    return size


def _role(name: str, tensor: torch.Tensor) -> str:
    if tensor.dim() == 1:
        return "vector"
    if name.startswith("token_embd."):
        return "embedding"
    if name.startswith("output."):
        return "output"
    if name.startswith("blk.") and tensor.dim() == 2:
        return "block"
    raise ModelStructureError(f"GGUF export does not know where tensor {name!r} ({tuple(tensor.shape)}) belongs.")


def named_tensors(model: nn.Module, shape: ExportShape) -> list[tuple[str, str, torch.Tensor]]:
    """``(state-dict name, llama.cpp name, tensor)`` for everything the file holds; refuses unknown tensors."""
    names = get_tensor_name_map(shape.arch, len(shape.widths))
    skip = {"lm_head.weight"} if tied_output(model) else set()
    found = []
    for source, tensor in model.state_dict().items():
        if source in skip:
            continue
        name = names.get_name(source, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ModelStructureError(
                f"{source} has no llama.cpp tensor name under {shape.arch_name}; GGUF export covers the standard "
                f"{shape.family.model_type} layers only."
            )
        found.append((source, name, tensor))
    return found


def choose_types(scores: Sequence[float], counts: Sequence[int], budget: float,
                 choices: Sequence[str] = AUTO_CHOICES, epsilon: float = EPSILON) -> list[str]:
    """One type per matrix, lower α -> wider type, Σ counts·bits <= budget·Σ counts (never exceeded).

    The continuous part is AlphaPruning's allocation (:func:`~optimum_alpha.allocation.alpha_ratios`, exact
    budget by :func:`~optimum_alpha.allocation.fit_to_budget`) over the bits *saved* below the widest type;
    each matrix then takes the widest type at or below its share, and the budget left over goes, one step at a
    time, to the matrices furthest below their share (lowest α first on ties).
    """
    kinds = sorted((TYPES[c] for c in choices), key=lambda t: t.bits_per_weight)
    bits = [k.bits_per_weight for k in kinds]
    low, high = bits[0], bits[-1]
    if not low <= budget <= high:
        raise ConfigError(f"auto budget {budget} is outside [{low:g}, {high:g}] bits per weight.")
    saved = fit_to_budget(alpha_ratios(scores, epsilon), counts, (high - budget) / (high - low), max_sparsity=1.0)
    wanted = [high - s * (high - low) for s in saved]
    level = [max(i for i, b in enumerate(bits) if b <= w + 1e-9) for w in wanted]
    room = budget * sum(counts) - sum(bits[lv] * c for lv, c in zip(level, counts))
    while True:
        candidates = [
            (wanted[i] - bits[level[i]], -scores[i], -i) for i in range(len(level))
            if level[i] + 1 < len(bits) and (bits[level[i] + 1] - bits[level[i]]) * counts[i] <= room + 1e-6
        ]
        if not candidates:
            break
        i = -max(candidates)[2]
        room -= (bits[level[i] + 1] - bits[level[i]]) * counts[i]
        level[i] += 1
    return [kinds[lv].name for lv in level]


def _spectra_alphas(model: nn.Module, show_progress: bool) -> dict[str, float]:
    from ..esd import analyze

    report = analyze(model, metrics=["alpha_hill"], show_progress=show_progress)
    return {f"{m.name}.weight": m.metrics["alpha_hill"] for m in report.matrices}


def _is_pruned(block_tensors: Sequence[torch.Tensor]) -> tuple[int, int]:
    zeros = sum(int(t.numel() - torch.count_nonzero(t)) for t in block_tensors)
    return zeros, sum(t.numel() for t in block_tensors)


def check_zero_keeping(kind: TensorType, block_tensors: Sequence[torch.Tensor], force: bool) -> None:
    """Refuse a type that rounds pruned zeros away (q4_1/q5_1) on a pruned model, with the measured rate."""
    if kind.keeps_zeros or force:
        return
    zeros, total = _is_pruned(block_tensors)
    if total == 0 or zeros / total < PRUNED_FRACTION:
        return
    kept = seen = 0
    for tensor in block_tensors:  # a few matrices are enough to measure the rate, quickly
        survived, count = zero_survival(tensor.detach().float().cpu().numpy(), kind)
        kept, seen = kept + survived, seen + count
        if seen >= 1_000_000:
            break
    raise ConfigError(
        f"{kind.name} keeps only {100 * kept / max(seen, 1):.2f} % of this model's pruned zeros (measured on "
        f"{seen} of its {zeros} zeros: {100 * zeros / total:.1f} % of the block weights are 0), because it "
        "stores a per-block minimum; use q4_0, q5_0 or q8_0, which keep every zero, or force=True (CLI: --force-type)."
    )


def plan_tensors(model: nn.Module, shape: ExportShape, request: TypeRequest, *, force: bool = False,
                 show_progress: bool = True) -> list[TensorPlan]:
    """The plan of every tensor; checks (zeros kept, names known) happen here, before anything is written."""
    tensors = named_tensors(model, shape)
    roles = [_role(name, tensor) for _, name, tensor in tensors]
    blocks = [t for (_, _, t), role in zip(tensors, roles) if role == "block"]
    if request.uniform is not None:
        check_zero_keeping(request.uniform, blocks, force)
        block_types = {source: request.uniform for (source, _, _), role in zip(tensors, roles) if role == "block"}
        wide = request.uniform.name if request.uniform.name in WIDE_TYPES else "q8_0"
    else:
        block_types = _auto_types(model, tensors, roles, request.budget, show_progress, shape)
        wide = "q8_0"
    plans = []
    for (source, name, tensor), role in zip(tensors, roles):
        if role == "vector":
            wanted = TYPES["f32"]
        elif role == "block":
            wanted = block_types[source]
        else:
            wanted = TYPES[wide]
        file_shape = _file_shape(name, tensor, shape)
        kind = wanted if wanted.fits(file_shape[-1]) else TYPES["f16"]
        plans.append(TensorPlan(source, name, role, kind, tuple(tensor.shape),
                                _heads(name, shape) if shape.permutes_qk else None, wanted, file_shape))
    for plan in plans:
        if plan.fell_back:
            logger.warning("%s: rows of %d weights do not split into %s blocks of %d; written as F16.",
                           plan.name, plan.file_shape[-1], plan.requested.name, plan.requested.block_size)
    return plans


def _auto_types(model: nn.Module, tensors, roles, budget: float, show_progress: bool,
                shape: ExportShape) -> dict[str, TensorType]:
    """``auto:B``: the spectra's choice for every block matrix whose rows fit the narrowest type's blocks."""
    alphas = _spectra_alphas(model, show_progress)
    narrow = TYPES[AUTO_CHOICES[0]]
    chosen: dict[str, TensorType] = {}
    units = []
    for (source, name, tensor), role in zip(tensors, roles):
        if role != "block":
            continue
        if source not in alphas:
            raise ModelStructureError(f"auto types need the spectrum of {source}, which the ESD analysis skipped.")
        file_shape = _file_shape(name, tensor, shape)
        if narrow.fits(file_shape[-1]):
            units.append((source, alphas[source], int(np.prod(file_shape))))
        else:
            chosen[source] = TYPES["f16"]
    if units:
        names = choose_types([u[1] for u in units], [u[2] for u in units], budget)
        chosen.update({u[0]: TYPES[n] for u, n in zip(units, names)})
    return chosen


def block_bits(plans: Sequence[TensorPlan]) -> float:
    """The average bits per weight over the block matrices as written (fallbacks included)."""
    blocks = [p for p in plans if p.role == "block"]
    total = sum(p.numel for p in blocks)
    return sum(8 * p.nbytes for p in blocks) / total if total else 0.0


def type_counts(plans: Sequence[TensorPlan], role: str = "block") -> dict[str, int]:
    """Weights per type among the tensors of ``role``."""
    counts: dict[str, int] = {}
    for plan in plans:
        if plan.role == role:
            counts[plan.kind.name] = counts.get(plan.kind.name, 0) + plan.numel
    return counts
