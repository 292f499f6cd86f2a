"""Bitmask compression of one sparse 2-D weight, in pure torch.

The tensor layout follows the one compressed-tensors used for its ``sparse-bitmask`` format, so
tools that know that layout recognise our checkpoints: for a weight ``<module>.weight`` we store

* ``<module>.compressed``  - the kept (non-zero) values, 1-D, in the weight's own dtype, row-major;
* ``<module>.bitmask``     - uint8 ``[rows, ceil(cols / 8)]``, one bit per element, little bit order;
* ``<module>.row_offsets`` - int64 ``[rows]``, index in ``compressed`` where each row starts;
* ``<module>.shape``       - int64 ``[2]``, the dense shape.

Everything runs on the tensor's own device (no numpy), so decompression also works on a GPU or
inside transformers' threaded loader.
"""

from __future__ import annotations

import torch

SUFFIXES: tuple[str, ...] = ("compressed", "bitmask", "row_offsets", "shape")
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)

_BIT_WEIGHTS_CACHE: dict[torch.device, torch.Tensor] = {}


def _bit_weights(device: torch.device) -> torch.Tensor:
    """Return ``[1, 2, 4, ..., 128]`` as uint8 on ``device`` (bit ``i`` is element ``i`` of a byte)."""
    if device not in _BIT_WEIGHTS_CACHE:
        _BIT_WEIGHTS_CACHE[device] = (2 ** torch.arange(8, dtype=torch.int32)).to(torch.uint8).to(device)
    return _BIT_WEIGHTS_CACHE[device]


def module_prefix(weight_name: str) -> str:
    """``model.layers.0.mlp.up_proj.weight`` -> ``model.layers.0.mlp.up_proj`` (the layout's key prefix)."""
    return weight_name.removesuffix(".weight")


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Pack a boolean ``[rows, cols]`` mask into uint8 ``[rows, ceil(cols / 8)]`` (little bit order)."""
    rows, cols = mask.shape
    pad = (-cols) % 8
    if pad:
        mask = torch.nn.functional.pad(mask, (0, pad), value=False)
    groups = mask.reshape(rows, -1, 8).to(torch.uint8)
    return (groups * _bit_weights(mask.device)).sum(dim=-1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """Inverse of :func:`pack_mask`: boolean ``[rows, cols]``."""
    bits = packed.unsqueeze(-1).bitwise_and(_bit_weights(packed.device)).ne(0)
    return bits.reshape(packed.shape[0], -1)[:, :cols]


def compressed_nbytes(weight: torch.Tensor, nonzero: int | None = None) -> int:
    """Bytes the bitmask layout needs for ``weight``: values + packed mask + row offsets + shape."""
    rows, cols = weight.shape
    if nonzero is None:
        nonzero = int(torch.count_nonzero(weight))
    return nonzero * weight.element_size() + rows * ((cols + 7) // 8) + rows * 8 + 2 * 8


def worth_compressing(weight: torch.Tensor) -> bool:
    """True when ``weight`` is a supported 2-D float tensor whose bitmask form is smaller than dense."""
    if weight.dim() != 2 or weight.dtype not in SUPPORTED_DTYPES or weight.numel() == 0:
        return False
    return compressed_nbytes(weight) < weight.numel() * weight.element_size()


def compress(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """Compress a 2-D weight; returns the four tensors keyed by their suffix (see module docstring).

    Exact zeros (including ``-0.0``) are the pruned entries; every other value, NaN included, is
    kept bit for bit.
    """
    if weight.dim() != 2:
        raise ValueError(f"bitmask compression needs a 2-D weight, got shape {tuple(weight.shape)}")
    if weight.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"bitmask compression supports {SUPPORTED_DTYPES}, got {weight.dtype}")
    weight = weight.detach().contiguous()
    mask = weight != 0
    # `-0.0 != 0` is False, so negative zeros are dropped and come back as +0.0: both are pruned entries.
    row_counts = mask.sum(dim=1, dtype=torch.int64)
    return {
        "compressed": weight[mask],
        "bitmask": pack_mask(mask),
        "row_offsets": torch.cumsum(row_counts, 0) - row_counts,
        "shape": torch.tensor(list(weight.shape), dtype=torch.int64, device=weight.device),
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
    if len(dims) != 2:
        raise ValueError(f"bitmask shape must have 2 dimensions, got {dims}")
    rows, cols = dims
    if tuple(bitmask.shape) != (rows, (cols + 7) // 8):
        raise ValueError(f"bitmask of shape {tuple(bitmask.shape)} does not fit a dense shape {dims}")
    mask = unpack_mask(bitmask, cols)
    kept = int(mask.sum())
    if kept != compressed.numel():
        raise ValueError(f"bitmask marks {kept} kept values but {compressed.numel()} values are stored")
    dense = torch.zeros((rows, cols), dtype=compressed.dtype, device=compressed.device)
    dense[mask.to(compressed.device)] = compressed
    return dense if dtype is None else dense.to(dtype)
