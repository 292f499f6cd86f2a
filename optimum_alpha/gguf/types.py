"""The GGUF tensor types we write, and the ``--type`` a user asks for.

``gguf.quantize`` (the Python package of llama.cpp) implements F16, BF16, Q8_0, Q5_0, Q4_0 and the
asymmetric Q5_1/Q4_1. The symmetric types scale each block of 32 weights by one factor, so a pruned 0 stays
exactly 0; Q5_1/Q4_1 add a per-block minimum and round almost every 0 away (0.3-0.5 % survive on SmolLM2),
so they are refused for pruned models unless forced (:func:`zero_survival` measures it on the model).
K-quants and IQ types need llama.cpp's C++ ``llama-quantize`` and are not offered.

``auto:B`` asks for an average of B bits per weight over the block matrices, the type of each matrix chosen
from its spectrum (:mod:`.plan`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType
from gguf import dequantize as gguf_dequantize
from gguf import quantize as gguf_quantize

from ..errors import ConfigError


@dataclass(frozen=True)
class TensorType:
    """One GGUF tensor type: its ggml id, bits per weight (scales included) and whether zeros survive."""

    name: str
    ggml: GGMLQuantizationType
    file_type: LlamaFileType
    keeps_zeros: bool

    @property
    def block_size(self) -> int:
        return GGML_QUANT_SIZES[self.ggml][0]

    @property
    def bits_per_weight(self) -> float:
        block, size = GGML_QUANT_SIZES[self.ggml]
        return 8.0 * size / block

    @property
    def quantized(self) -> bool:
        return self.block_size > 1

    def fits(self, row_length: int) -> bool:
        """Whether rows of ``row_length`` weights split into whole blocks of this type."""
        return row_length % self.block_size == 0


TYPES: dict[str, TensorType] = {
    t.name: t
    for t in (
        TensorType("f32", GGMLQuantizationType.F32, LlamaFileType.ALL_F32, True),
        TensorType("f16", GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16, True),
        TensorType("bf16", GGMLQuantizationType.BF16, LlamaFileType.MOSTLY_BF16, True),
        TensorType("q8_0", GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0, True),
        TensorType("q5_0", GGMLQuantizationType.Q5_0, LlamaFileType.MOSTLY_Q5_0, True),
        TensorType("q4_0", GGMLQuantizationType.Q4_0, LlamaFileType.MOSTLY_Q4_0, True),
        TensorType("q5_1", GGMLQuantizationType.Q5_1, LlamaFileType.MOSTLY_Q5_1, False),
        TensorType("q4_1", GGMLQuantizationType.Q4_1, LlamaFileType.MOSTLY_Q4_1, False),
    )
}
USER_TYPES = ("f16", "bf16", "q8_0", "q5_0", "q4_0", "q5_1", "q4_1")
AUTO_CHOICES = ("q4_0", "q5_0", "q8_0")  # what auto:B picks from, narrowest first
AUTO_PREFIX = "auto:"


@dataclass(frozen=True)
class TypeRequest:
    """What the user asked for: one type for every block matrix, or an average bit budget."""

    text: str
    uniform: TensorType | None = None
    budget: float | None = None

    @property
    def is_auto(self) -> bool:
        return self.budget is not None


def _type_help() -> str:
    return f"{', '.join(USER_TYPES)} or auto:B (e.g. auto:5.0)"


def parse_type(text: str) -> TypeRequest:
    """``"q8_0"`` or ``"auto:5.0"`` -> a :class:`TypeRequest`; one clear line for anything else."""
    if not isinstance(text, str):
        raise ConfigError(f"gguf_type must be a string such as 'q8_0', got {text!r}; choose {_type_help()}.")
    name = text.strip().lower()
    if name.startswith(AUTO_PREFIX):
        low, high = TYPES[AUTO_CHOICES[0]].bits_per_weight, TYPES[AUTO_CHOICES[-1]].bits_per_weight
        try:
            budget = float(name[len(AUTO_PREFIX):])
        except ValueError:
            budget = float("nan")
        if not low <= budget <= high:
            raise ConfigError(
                f"gguf type {text!r}: the budget of auto:B is an average of bits per weight between {low:g} "
                f"({AUTO_CHOICES[0]}) and {high:g} ({AUTO_CHOICES[-1]}), e.g. auto:5.0."
            )
        return TypeRequest(name, budget=budget)
    if name not in USER_TYPES:
        raise ConfigError(f"unknown gguf type {text!r}; choose {_type_help()}.")
    return TypeRequest(name, uniform=TYPES[name])


def quantize(weights: np.ndarray, kind: TensorType) -> np.ndarray:
    """The bytes (or f32/f16 values) that represent ``weights`` (float32) as ``kind`` in a GGUF file."""
    data = np.ascontiguousarray(weights, dtype=np.float32)
    if kind.ggml == GGMLQuantizationType.F32:
        return data
    return gguf_quantize(data, kind.ggml)


def dequantize(data: np.ndarray, kind: TensorType) -> np.ndarray:
    """float32 weights back from :func:`quantize`'s output (what every reader of the file computes)."""
    return np.asarray(gguf_dequantize(data, kind.ggml), dtype=np.float32)


def zero_survival(weights: np.ndarray, kind: TensorType) -> tuple[int, int]:
    """(zeros still exactly 0 after ``kind``'s round trip, zeros before) for one matrix."""
    zeros = weights == 0
    count = int(zeros.sum())
    if count == 0:
        return 0, 0
    restored = dequantize(quantize(weights, kind), kind)
    return int((restored[zeros] == 0).sum()), count
