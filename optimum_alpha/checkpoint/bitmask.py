"""Bitmask compression of one sparse 2-D weight (or 3-D fused expert tensor), in pure torch.

The tensor layout follows the one compressed-tensors used for its ``sparse-bitmask`` format, so
tools that know that layout recognise our checkpoints: for a weight ``<module>.weight`` we store

* ``<module>.compressed``  - the kept values (every entry whose bits are not all zero), 1-D, in the
  weight's own dtype, row-major;
* ``<module>.bitmask``     - uint8 ``[rows, ceil(cols / 8)]``, one bit per element, little bit order;
* ``<module>.row_offsets`` - int64 ``[rows]``, index in ``compressed`` where each row starts;
* ``<module>.shape``       - int64 ``[2]``, the dense shape.

A 3-D tensor (transformers' fused MoE experts, ``[E, rows, cols]``) is stored the same way as its
``[E·rows, cols]`` view, with the 3-D ``shape``; its keys are ``<parameter key>.fused_<part>`` (see
``sparse_files.py``), because such a parameter has no ``.weight`` suffix to replace.

Everything runs on the tensor's own device (no numpy), so decompression also works on a GPU or
inside transformers' threaded loader.
"""

from __future__ import annotations

import torch

SUFFIXES: tuple[str, ...] = ("compressed", "bitmask", "row_offsets", "shape")
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)

_GATHER = 0x0102040810204080  # byte j holds 0x80 >> j


def module_prefix(weight_name: str) -> str:
    """``model.layers.0.mlp.up_proj.weight`` -> ``model.layers.0.mlp.up_proj`` (the layout's key prefix)."""
    return weight_name.removesuffix(".weight")


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Pack a boolean ``[rows, cols]`` mask into uint8 ``[rows, ceil(cols / 8)]`` (little bit order)."""
    rows, cols = mask.shape
    pad = (-cols) % 8
    if pad:
        mask = torch.nn.functional.pad(mask, (0, pad), value=False)
    # Read each group of 8 one-byte booleans as one int64; one multiply gathers byte i's low bit into
    # bit 56 + i (no carries, the partial products never overlap), the shift brings them down.
    as_int64 = mask.contiguous().view(torch.uint8).view(torch.int64)
    gathered = (as_int64 * _GATHER).bitwise_right_shift(56).bitwise_and(0xFF)
    return gathered.to(torch.uint8).reshape(rows, (cols + pad) // 8)


def unpack_mask(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """Inverse of :func:`pack_mask`: boolean ``[rows, cols]``."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = packed.unsqueeze(-1).bitwise_right_shift(shifts).bitwise_and(1).to(torch.bool)
    return bits.reshape(packed.shape[0], -1)[:, :cols]


_SAME_SIZE_INT = {4: torch.int32, 2: torch.int16, 1: torch.int8, 8: torch.int64}


def kept_mask(weight: torch.Tensor) -> torch.Tensor:
    """True where ``weight`` is not +0.0 bit for bit: pruned entries are +0.0, while ``-0.0`` (sign bit
    set) and NaN are kept, so decompression gives back every bit."""
    return weight.contiguous().view(_SAME_SIZE_INT[weight.element_size()]) != 0


def compressed_nbytes(weight: torch.Tensor, nonzero: int | None = None) -> int:
    """Bytes the bitmask layout needs for ``weight``: values + packed mask + row offsets + shape."""
    rows, cols = weight.shape
    if nonzero is None:
        nonzero = int(torch.count_nonzero(weight))
    return nonzero * weight.element_size() + rows * ((cols + 7) // 8) + rows * 8 + 2 * 8


def worth_compressing(weight: torch.Tensor, mask: torch.Tensor | None = None) -> bool:
    """True when ``weight`` is a supported 2-D float tensor whose bitmask form is smaller than dense.

    ``mask`` (:func:`kept_mask`) may be passed in to avoid computing it twice.
    """
    if weight.dim() not in (2, 3) or weight.dtype not in SUPPORTED_DTYPES or weight.numel() == 0:
        return False
    weight = weight.reshape(-1, weight.shape[-1])
    mask = mask.reshape(weight.shape) if mask is not None else None
    nonzero = int(torch.count_nonzero(kept_mask(weight) if mask is None else mask))
    return compressed_nbytes(weight, nonzero) < weight.numel() * weight.element_size()


def compress(weight: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Compress a 2-D weight; returns the four tensors keyed by their suffix (see module docstring).

    Entries equal to +0.0 bit for bit are the pruned ones; every other value (``-0.0`` and NaN included)
    is kept, so the round trip is bitwise.
    """
    if weight.dim() not in (2, 3):
        raise ValueError(f"bitmask compression needs a 2-D or 3-D weight, got shape {tuple(weight.shape)}")
    if weight.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"bitmask compression supports {SUPPORTED_DTYPES}, got {weight.dtype}")
    dense_shape = list(weight.shape)
    weight = weight.detach().contiguous().reshape(-1, weight.shape[-1])
    mask = mask.reshape(weight.shape) if mask is not None else None
    mask = kept_mask(weight) if mask is None else mask
    row_counts = torch.count_nonzero(mask, dim=1).to(torch.int64)
    return {
        "compressed": torch.masked_select(weight, mask),
        "bitmask": pack_mask(mask),
        "row_offsets": torch.cumsum(row_counts, 0) - row_counts,
        "shape": torch.tensor(dense_shape, dtype=torch.int64, device=weight.device),
    }


def decompress(
    compressed: torch.Tensor,
    bitmask: torch.Tensor,
    shape: torch.Tensor | tuple[int, int] | list[int],
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Rebuild the dense weight from its values and packed mask (``row_offsets`` is implied by the mask).

    ``dtype`` casts the result (e.g. to the dtype the model is being loaded in); by default the stored
    values' dtype is kept, which makes the round trip bitwise exact.
    """
    dims = [int(d) for d in (shape.tolist() if isinstance(shape, torch.Tensor) else shape)]
    if len(dims) not in (2, 3):
        raise ValueError(f"bitmask shape must have 2 or 3 dimensions, got {dims}")
    if any(d <= 0 for d in dims):
        raise ValueError(f"the stored dense shape {dims} has a dimension that is not positive")
    if bitmask.dtype != torch.uint8:
        raise ValueError(f"the bitmask is stored as {str(bitmask.dtype).removeprefix('torch.')}, not uint8")
    if compressed.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"the kept values are stored as {str(compressed.dtype).removeprefix('torch.')}, "
                         f"not one of {', '.join(str(d).removeprefix('torch.') for d in SUPPORTED_DTYPES)}")
    cols = dims[-1]
    rows = dims[0] * dims[1] if len(dims) == 3 else dims[0]
    if tuple(bitmask.shape) != (rows, (cols + 7) // 8):
        raise ValueError(f"bitmask of shape {tuple(bitmask.shape)} does not fit a dense shape {dims}")
    mask = unpack_mask(bitmask, cols).to(compressed.device)
    kept = int(torch.count_nonzero(mask))
    if kept != compressed.numel():
        raise ValueError(f"bitmask marks {kept} kept values but {compressed.numel()} values are stored")
    dense = torch.zeros((rows, cols), dtype=compressed.dtype, device=compressed.device)
    dense.masked_scatter_(mask, compressed)  # fills the kept positions in row-major order
    dense = dense.reshape(dims)
    return dense if dtype is None else dense.to(dtype)
