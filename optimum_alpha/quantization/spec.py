"""One matrix's integer grid: bit width, group size, scales; quantise and dequantise through compressed-tensors.

Every rounding, scale and dequantisation goes through the ``compressed_tensors`` functions that its
``pack-quantized`` loader uses (``calculate_qparams``, ``quantize``, ``dequantize``), so the weights we hold
in memory are bit for bit the weights a process loading the folder gets back. Scales are symmetric
(zero point 0): a pruned weight, exactly 0, maps to the integer 0 and back to exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError

BIT_RANGE = (2, 8)  # widths compressed-tensors' pack-quantized format packs (int4/int8 are what vLLM serves)


def check_bit_width(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not BIT_RANGE[0] <= bits <= BIT_RANGE[1]:
        raise ConfigError(f"bit widths must be whole numbers from {BIT_RANGE[0]} to {BIT_RANGE[1]}, got {bits!r}; "
                          "vLLM serves 4 and 8.")


@dataclass(frozen=True)
class QuantSpec:
    """Bit width and scale layout of one matrix: one scale per ``group_size`` inputs of a row, or one per
    row (``group_size=None``)."""

    bits: int
    group_size: int | None = 128

    def args(self):
        """The compressed-tensors ``QuantizationArgs`` of this grid (symmetric integers)."""
        from compressed_tensors.quantization import QuantizationArgs

        strategy = "group" if self.group_size is not None else "channel"
        return QuantizationArgs(num_bits=self.bits, type="int", symmetric=True, strategy=strategy,
                                group_size=self.group_size)

    def groups(self, columns: int) -> int:
        return 1 if self.group_size is None else columns // self.group_size

    def bits_per_weight(self, scale_bytes: int) -> float:
        """Stored bits per weight: the integer plus its share of the scale (symmetric: no zero point)."""
        share = 8 * scale_bytes / (self.group_size or 0) if self.group_size else 0.0
        return self.bits + share


def group_scales(values: torch.Tensor, spec: QuantSpec, dtype: torch.dtype) -> torch.Tensor:
    """Scales (rows, groups) of ``values`` (rows, columns of whole groups), rounded to ``dtype`` (the dtype
    they are stored and dequantised in). An all-zero group gets compressed-tensors' tiny non-zero scale."""
    from compressed_tensors.quantization.utils import calculate_qparams

    rows, columns = values.shape
    width = spec.group_size or columns
    grouped = values.to(dtype).reshape(rows, columns // width, width)
    scales, _ = calculate_qparams(grouped.amin(-1), grouped.amax(-1), spec.args())
    return scales.to(dtype)


def quantize_integers(values: torch.Tensor, scales: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """The int8 codes of ``values`` (rows, columns) on the grid of ``scales`` (rows, groups)."""
    from compressed_tensors.quantization.lifecycle.forward import quantize

    return quantize(values.to(scales.dtype), scales, torch.zeros_like(scales), spec.args(), dtype=torch.int8)


def dequantize_integers(codes: torch.Tensor, scales: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """The weights the compressed-tensors loader rebuilds from ``codes`` and ``scales`` (in the scales' dtype)."""
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    return dequantize(codes, scales, torch.zeros_like(scales), spec.args())


@dataclass
class QuantizedMatrix:
    """The result of quantising one matrix: its grid, integer codes and scales. ``weight()`` is what the
    model holds and what the checkpoint stores (packed)."""

    spec: QuantSpec
    codes: torch.Tensor  # int8, (out, in)
    scales: torch.Tensor  # (out, groups), the model dtype
    pruned: torch.Tensor | None = None  # True where the pruner removed the weight (kept at exactly 0)

    def weight(self) -> torch.Tensor:
        return dequantize_integers(self.codes, self.scales, self.spec)


def rtn(weight: torch.Tensor, spec: QuantSpec) -> QuantizedMatrix:
    """Round to nearest: scales from each group's largest magnitude, every weight rounded on its own."""
    scales = group_scales(weight, spec, weight.dtype)
    return QuantizedMatrix(spec, quantize_integers(weight, scales, spec), scales)


def check_group_size(name: str, columns: int, group_size: int | None, every: int | None = None) -> None:
    """compressed-tensors needs whole groups in every row: refuse a group size that does not divide
    ``columns``, suggesting one that divides ``every`` (the gcd of all the widths concerned)."""
    if group_size is not None and columns % group_size:
        raise ConfigError(
            f"group_size={group_size} does not divide the {columns} inputs of {name}; use a group size that "
            f"divides every matrix's inputs (e.g. {largest_dividing_group(every or columns, group_size)}) or "
            "group_size=None (one scale per row)."
        )


def largest_dividing_group(columns: int, wanted: int) -> int:
    """The largest power of two <= ``wanted`` that divides ``columns`` (a suggestion for error messages)."""
    size = 1
    while size * 2 <= wanted and columns % (size * 2) == 0:
        size *= 2
    return size
